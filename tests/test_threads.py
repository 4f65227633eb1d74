"""``--threads``: a count or ``auto`` (the default): every CPU the process may use, shared among the
instances ``certkit bench`` runs at once (certkit.cluster.threads_per_job)."""
from __future__ import annotations

import os

import pytest
import torch

from certkit import bench, cluster
from certkit.cli import main

from tests.conftest import REAL_USABLE_CPUS
from tests.helpers.examples import FC, UNSAT


def test_usable_cpus_follows_the_affinity_mask():
    n = REAL_USABLE_CPUS()
    assert n >= 1
    if hasattr(os, "sched_getaffinity"):
        assert n == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("threads, jobs, cpus, want", [
    (None, 1, 8, 8), (None, 2, 8, 4), (None, 3, 8, 2), (None, 16, 8, 1), (3, 2, 8, 3), (None, 1, 1, 1)])
def test_threads_per_job(threads, jobs, cpus, want, monkeypatch):
    monkeypatch.setattr(cluster, "usable_cpus", lambda: cpus)
    assert cluster.threads_per_job(threads, jobs) == want


@pytest.mark.parametrize("argv, want", [([], 6), (["--threads", "auto"], 6), (["--threads", "AUTO"], 6),
                                        (["--threads", "2"], 2), (["ops", "--threads", "3"], 3)])
def test_cli_sets_torch_threads(argv, want, monkeypatch):
    monkeypatch.setattr(cluster, "usable_cpus", lambda: 6)
    seen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    assert main(argv if "ops" in argv else [*argv, "ops"]) == 0
    assert seen == [want]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "", "100000"])
def test_bad_thread_counts_are_usage_errors(value, capsys):
    assert main(["--threads", value, "ops"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("threads, want", [(None, 4), (3, 3)])
def test_bench_one_job_gives_an_instance_every_cpu(threads, want, monkeypatch):
    monkeypatch.setattr(cluster, "usable_cpus", lambda: 4)
    got: list[int] = []
    monkeypatch.setattr(bench, "run_instance", lambda *a, threads=1, **k: got.append(threads) or {})
    inst = bench.Instance(1, "digits", str(FC), str(UNSAT), str(FC), str(UNSAT), 10.0, "unsat")
    bench.run([inst, inst], threads=threads)
    assert got == [want, want]


@pytest.mark.parametrize("where, threads, want", [("local:4", None, 1), ("local:2", None, 2), ("local:3", None, 1),
                                                  ("local:2", 3, 3), ("tcp://10.0.0.1:8786", None, 1),
                                                  ("tcp://10.0.0.1:8786", 2, 2)])
def test_bench_tasks_share_the_cpus(where, threads, want, monkeypatch):
    monkeypatch.setattr(cluster, "usable_cpus", lambda: 4)
    assert bench.task_threads(cluster.parse_cluster(where), threads) == want


def test_bench_instance_runs_with_two_threads():
    """The whole path: a worker process given two threads certifies the shipped example."""
    inst = bench.Instance(1, "digits", str(FC), str(UNSAT), str(FC), str(UNSAT), 60.0, "unsat")
    row = bench.run_instance(inst, 60.0, threads=2)
    assert row["verdict"] == "unsat"
