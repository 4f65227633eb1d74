"""Suites on a Dask cluster (issue 14): ``certkit bench --cluster``/``--jobs N``, ``--resume``,
a worker killed mid-run. The clusters are ``LocalCluster``s of 2 worker processes started here."""
from __future__ import annotations

import csv
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from certkit import bench
from certkit.cluster import DASK_CONFIG, ClusterSpec, parse_cluster, ship
from certkit.errors import UsageError

from tests.helpers.examples import FC, SAT, UNSAT
from tests.test_bench import read_out, run, summary_row, write_csv

distributed = pytest.importorskip("dask.distributed", reason="the cluster tests need the extra .[dask]")


@pytest.fixture
def local_cluster():
    """A LocalCluster of 2 single-threaded worker processes, with certkit's Dask settings."""
    import dask

    with dask.config.set(DASK_CONFIG):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                      silence_logs=logging.ERROR) as c:
            yield c


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "instances.csv", [
        ["digits", str(FC), str(UNSAT), 60, "unsat", "a"],
        ["digits", str(FC), str(SAT), 60, "sat", "b"],
        ["digits", str(FC), str(UNSAT), 60, "unsat", "a2"],  # the same instance twice: two rows
        ["broken", "no_such_model.onnx", str(UNSAT), 60, "unsat", "c"],
    ])


def verdicts(path: Path) -> dict[str, str]:
    return {r["note"]: r["verdict"] for r in read_out(path)[1]}


@pytest.mark.parametrize("text, want", [("local:3", ClusterSpec(None, 3)), ("local", ClusterSpec(None, 5)),
                                        ("tcp://10.0.0.1:8786", ClusterSpec("tcp://10.0.0.1:8786", 0))])
def test_parse_cluster(text, want, monkeypatch):
    monkeypatch.setattr("certkit.cluster.usable_cpus", lambda: 5)  # local: one worker per usable CPU
    assert parse_cluster(text) == want


@pytest.mark.parametrize("text", ["local:0", "local:x", "remote", "10.0.0.1:8786", ""])
def test_parse_cluster_refuses(text):
    with pytest.raises(UsageError, match="--cluster"):
        parse_cluster(text)


def test_suite_on_a_local_cluster_matches_one_process(suite: Path, tmp_path: Path, capsys):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert run(capsys, "bench", suite, "--out", one)[0] == 0
    rc, stdout, _ = run(capsys, "bench", suite, "--out", two, "--cluster", "local:2")
    assert rc == 0
    assert verdicts(one) == verdicts(two) == {"a": "unsat", "b": "sat", "a2": "unsat", "c": "error"}
    assert any("local cluster: 2 worker(s), dashboard http" in line for line in stdout), stdout
    progress = [line for line in stdout if line.startswith("[")]
    assert len(progress) == 4 and progress[-1].startswith("[4/4]")  # (the solved count: the tqdm bar's)
    assert summary_row(stdout, "all")["solved"] == "3"


def test_remote_cluster_gets_the_files_shipped(suite: Path, tmp_path: Path, capsys, local_cluster, monkeypatch):
    """A scheduler elsewhere (here: one taken for remote): the instances' files go to the workers as
    bytes (written there under their SHA-256), and the verdicts are those of one process."""
    import certkit.cluster

    monkeypatch.setattr(certkit.cluster, "shares_files", lambda spec: False)
    out = tmp_path / "r.csv"
    rc, stdout, _ = run(capsys, "bench", suite, "--out", out, "--cluster", local_cluster.scheduler_address)
    assert rc == 0 and any(f"cluster {local_cluster.scheduler_address}: 2 worker(s)" in line for line in stdout)
    assert verdicts(out) == {"a": "unsat", "b": "sat", "a2": "unsat", "c": "error"}


@pytest.mark.parametrize("address, shared", [("tcp://127.0.0.1:8786", True), ("tcp://localhost:1", True),
                                             ("tcp://[::1]:8786", True), ("tcp://10.1.2.3:8786", False)])
def test_files_are_shipped_beyond_this_machine(address, shared):
    from certkit.cluster import shares_files

    assert shares_files(parse_cluster(address)) is shared and shares_files(parse_cluster("local:2"))


def test_run_instance_from_shipped_bytes(tmp_path: Path):
    inst = bench.Instance(1, "b", "m.onnx", "s.vnnlib", str(tmp_path / "gone.onnx"), str(tmp_path / "gone.vnnlib"), 60.0)
    row = bench.run_instance(inst, 60.0, files=(ship(str(FC)), ship(str(UNSAT))))
    assert row["verdict"] == "unsat", row


def test_resume_runs_only_the_rest(suite: Path, tmp_path: Path, capsys):
    out = tmp_path / "r.csv"
    assert run(capsys, "bench", suite, "--out", out)[0] == 0
    full = read_out(out)[1]
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # one complete row, then a partial line (a kill)
    rc, stdout, _ = run(capsys, "bench", suite, "--out", out, "--resume", "--jobs", "2")
    assert rc == 0
    assert any("3 of 4 instance(s)" in line and "1 kept from the earlier run" in line for line in stdout), stdout
    assert len([line for line in stdout if line.startswith("[")]) == 3
    again = read_out(out)[1]
    assert sorted((r["note"], r["verdict"]) for r in again) == sorted((r["note"], r["verdict"]) for r in full)
    assert summary_row(stdout, "all")["instances"] == "4"
    rc, stdout, _ = run(capsys, "bench", suite, "--out", out, "--resume")  # nothing left
    assert rc == 0 and any("0 of 4 instance(s)" in line for line in stdout) and len(read_out(out)[1]) == 4


def test_resume_needs_out(suite: Path, capsys):
    rc, _, err = run(capsys, "bench", suite, "--resume")
    assert rc == 2 and "--resume needs --out" in err[0]


def test_bad_cluster_value_is_a_usage_error(suite: Path, capsys):
    rc, _, err = run(capsys, "bench", suite, "--cluster", "nowhere")
    assert rc == 2 and len(err) == 1 and "--cluster nowhere" in err[0]


def test_worker_killed_mid_run_loses_nothing(tmp_path: Path, capsys, local_cluster):
    """One instance blocks reading a FIFO; its worker is killed (SIGKILL) while the rows of the
    others are already written. The task is retried on a worker started in its place, the FIFO is
    fed, and the run completes with every row, each once, and the one-process verdicts."""
    import signal

    fifo = tmp_path / "slow.vnnlib"
    os.mkfifo(fifo)
    path = write_csv(tmp_path / "i.csv", [["digits", str(FC), str(UNSAT), 60, "unsat", "a"],
                                          ["digits", str(FC), str(SAT), 60, "sat", "b"],
                                          ["digits", str(FC), str(fifo), 60, "unsat", "slow"]])
    out = tmp_path / "r.csv"
    result: dict = {}
    addr = local_cluster.scheduler_address
    t = threading.Thread(target=lambda: result.setdefault("rc", run(capsys, "bench", path, "--out", out,
                                                                    "--cluster", addr)[0]))
    t.start()
    client = distributed.Client(addr)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the two quick rows written, the slow one running
            done = len(read_out(out)[1]) if out.exists() else 0
            busy = [w for w, tasks in client.processing().items() if tasks]
            if done == 2 and busy:
                break
            time.sleep(0.2)
        assert done == 2 and busy, "the quick rows never finished"
        pid = client.run(os.getpid, workers=busy)[busy[0]]
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        stop = threading.Event()

        def feed():  # the retried task reads the spec from the FIFO
            text = Path(UNSAT).read_text()
            while not stop.is_set():
                try:
                    with open(fifo, "w") as f:
                        f.write(text)
                except OSError:
                    pass
                time.sleep(0.1)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        t.join(120)
        stop.set()
        try:  # unblock the feeder if it waits for a reader
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
    finally:
        client.close()
    assert not t.is_alive() and result.get("rc") == 0
    rows = read_out(out)[1]
    assert sorted(r["note"] for r in rows) == ["a", "b", "slow"]
    assert {r["note"]: r["verdict"] for r in rows} == {"a": "unsat", "b": "sat", "slow": "unsat"}
    with open(out, newline="") as f:
        assert len(list(csv.reader(f))) == 4  # the header and three rows: nothing lost, nothing twice


# --------------------------------------------------------------------------------------------- data sets

def test_dataset_on_a_cluster_matches_one_process(local_cluster):
    """The same batches and seeds: every sample's verdict, stage and margin bound as in one process."""
    import numpy as np

    from certkit import api
    from certkit.verify.dataset import certify_dataset, load_dataset
    from tests.helpers.examples import CONV, DATA_CONV

    model = api.load_model(str(CONV))
    x, y = load_dataset(str(DATA_CONV), model)
    x, y = x[:40], y[:40]
    one = certify_dataset(model, x, y, 0.02, batch_size=8)
    two = certify_dataset(model, x, y, 0.02, batch_size=8, cluster=local_cluster.scheduler_address)
    assert [s.index for s in two.samples] == list(range(40))
    assert [(s.verdict, s.stage) for s in one.samples] == [(s.verdict, s.stage) for s in two.samples]
    np.testing.assert_array_equal([s.margin_lower for s in one.samples], [s.margin_lower for s in two.samples])
    assert {"verified", "falsified"} <= {s.verdict for s in two.samples}
    for s in two.samples:
        if s.verdict == "falsified":  # the witness was confirmed on the worker: it violates here too
            assert np.abs(s.witness - x[s.index]).max() <= 0.02 + 1e-6
            assert s.witness_output.argmax() != y[s.index]


def test_dataset_cli_on_a_cluster_writes_a_checkable_certificate(tmp_path: Path, capsys, local_cluster):
    from certkit.cli import main
    from tests.helpers.examples import CONV, DATA_CONV

    cert = tmp_path / "c.json"
    rc = main(["certify", str(CONV), "--dataset", str(DATA_CONV), "--eps", "0.02", "--limit", "40",
               "--batch-size", "8", "--json", str(cert), "--cluster", local_cluster.scheduler_address])
    out = capsys.readouterr().out
    assert rc == 0 and "certified:" in out
    assert main(["check", str(cert)]) == 0, capsys.readouterr()


def test_dataset_lipschitz_on_a_cluster(local_cluster):
    from certkit import api
    from certkit.verify.dataset import certify_dataset, load_dataset
    from tests.helpers.examples import DATA, FC

    model = api.load_model(str(FC))
    x, y = load_dataset(str(DATA), model)
    one = certify_dataset(model, x[:30], y[:30], 0.01, "l2", backend="lipschitz", batch_size=8)
    two = certify_dataset(model, x[:30], y[:30], 0.01, "l2", backend="lipschitz", batch_size=8,
                          cluster=local_cluster.scheduler_address)
    assert [(s.verdict, s.radius) for s in one.samples] == [(s.verdict, s.radius) for s in two.samples]


# --------------------------------------------------------------------------------------------- branch and bound

def _split_query(seed: int, tmp_path: Path, margin: float):
    import numpy as np

    from certkit.spec.spec import Disjunct, Property
    from certkit.verify.query import Query
    from tests.helpers.onnx_builders import saved_model, tiny_relu_onnx
    from tests.test_complete import grid_top

    model = saved_model(tiny_relu_onnx(seed, hidden=(16, 16)), tmp_path, f"m{seed}.onnx")
    top, spread = grid_top(model)
    t = top + margin * spread
    prop = Property(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), (Disjunct(np.array([[-1.0]]), np.array([-t])),))
    return model, Query.of_property(model.graph, prop, 0, model.runner), t


@pytest.mark.parametrize("seed", range(3))
def test_input_split_on_a_cluster_agrees_with_the_grid_and_rechecks(seed, tmp_path: Path, local_cluster, monkeypatch):
    """Parts of the box on 2 workers, open domains handed on whenever a worker is idle (MIN_SLICE 0):
    the verdict of the 401 x 401 grid, and an assembled proof tree that replays from the root box."""
    from certkit.cluster import active, use
    from certkit.verify import distributed as dist
    from certkit.verify.input_split import recheck
    from certkit.verify.query import Budget

    monkeypatch.setattr(dist, "MIN_SLICE", 0.0)
    for margin, expect in ((0.02, "verified"), (-0.02, "falsified")):
        model, q, t = _split_query(seed, tmp_path, margin)
        with use(local_cluster.scheduler_address, model.path, None):
            out = dist.split_on_cluster(q, Budget.of(120), active())
        assert out.status == expect, (seed, margin, out.message)
        if expect == "falsified":
            assert out.witness is not None and float(out.witness.y[0]) >= t  # confirmed here with onnxruntime
            continue
        assert out.tree.well_formed() and out.tree.meta["parts"] == 4
        rep = recheck(q, out.tree)
        assert rep.failed == 0 and rep.leaves == len(out.tree.leaf_values)


def test_assemble_grafts_holes_in_preorder():
    from certkit.verify.distributed import assemble

    filled = {"top": [("split", 0, 1), ("hole", 1), ("hole", 2)],
              1: [("split", 0, 0), ("leaf", -1, 0.5), ("hole", 3)], 2: [("leaf", -2, 0.25)], 3: [("leaf", -1, 0.75)]}
    tree = assemble("top", filled, ("deeppoly", "alpha"), {})
    assert tree.codes.tolist() == [[0, 1], [0, 0], [-1, -1], [-1, -1], [-2, -1]]
    assert tree.leaf_values.tolist() == [0.5, 0.75, 0.25] and tree.well_formed()


def test_certify_cli_on_a_cluster_writes_a_checkable_proof(tmp_path: Path, capsys, local_cluster):
    from certkit.cli import main

    model, q, t = _split_query(0, tmp_path, 0.02)
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (>= X_0 -1.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 -1.0))\n(assert (<= X_1 1.0))\n"
                    f"(assert (>= Y_0 {float(t)!r}))\n")
    cert = tmp_path / "c.json"
    rc = main(["certify", model.path, str(spec), "--backend", "bab", "--json", str(cert),
               "--cluster", local_cluster.scheduler_address])
    out = capsys.readouterr()
    assert rc == 0 and out.out.splitlines()[0] == "unsat", out
    assert main(["check", str(cert)]) == 0


@pytest.mark.parametrize("margin, expect", [(0.05, "unsat"), (-0.05, "sat")])
def test_relu_split_disjuncts_on_a_cluster(margin, expect, tmp_path: Path, capsys, local_cluster):
    """20 inputs (ReLU splitting), two disjuncts (y >= t1 or y <= t2) decided by tasks on 2 workers:
    the verdict of the exact MILP maximum and minimum, a proof that ``certkit check`` accepts, or a
    counterexample re-run in onnxruntime."""
    pytest.importorskip("highspy")
    import numpy as np

    from certkit.cli import main
    from certkit.verify.milp import milp_bound
    from tests.helpers.onnx_builders import saved_model, tiny_relu_onnx

    model = saved_model(tiny_relu_onnx(7, n_in=20, hidden=(12, 12)), tmp_path)
    lo, hi = -0.2 * np.ones(20), 0.2 * np.ones(20)
    top = -milp_bound(model.graph, (lo, hi), np.array([-1.0]), time_limit=30)
    bottom = milp_bound(model.graph, (lo, hi), np.array([1.0]), time_limit=30)
    t1, t2 = top + margin * (top - bottom), bottom - 0.1 * (top - bottom)
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(20)) + "(declare-const Y_0 Real)\n"
    text += "".join(f"(assert (>= X_{i} -0.2))\n(assert (<= X_{i} 0.2))\n" for i in range(20))
    text += f"(assert (or (and (>= Y_0 {float(t1)!r})) (and (<= Y_0 {float(t2)!r}))))\n"
    spec = tmp_path / "p.vnnlib"
    spec.write_text(text)
    cert = tmp_path / "c.json"
    rc = main(["certify", model.path, str(spec), "--backend", "bab", "--timeout", "60", "--json", str(cert),
               "--cluster", local_cluster.scheduler_address])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[0] == expect, out
    assert main(["check", str(cert)]) == 0


def test_dataset_batch_that_fails_is_recorded_unknown(local_cluster, monkeypatch, capsys):
    """A batch whose task fails (here: it raises on the worker) costs its samples an ``unknown`` and a
    line on stderr; the other batches' results stand."""
    from certkit import api
    from certkit.verify import distributed as dist
    from certkit.verify.dataset import certify_dataset, load_dataset
    from tests.helpers.examples import DATA, FC

    model = api.load_model(str(FC))
    x, y = load_dataset(str(DATA), model)
    real = dist._dataset_task

    def flaky(graph, path, shipped, job, xs, ys, idx, start, *rest):
        if start == 0:
            raise RuntimeError("boom")
        return real(graph, path, shipped, job, xs, ys, idx, start, *rest)

    monkeypatch.setattr(dist, "_dataset_task", flaky)
    res = certify_dataset(model, x[:24], y[:24], 0.01, batch_size=8, cluster=local_cluster.scheduler_address)
    one = certify_dataset(model, x[:24], y[:24], 0.01, batch_size=8)
    assert "a batch of 8 sample(s) failed (RuntimeError: boom)" in capsys.readouterr().err
    todo = [k for k, s in enumerate(one.samples) if s.verdict != "misclassified"]
    first = set(todo[:8])
    for k, (a, b) in enumerate(zip(one.samples, res.samples)):
        assert b.verdict == ("unknown" if k in first else a.verdict)


def test_without_dask_a_cluster_is_exit_5(suite: Path, capsys, monkeypatch):
    """Dask is an optional extra: --cluster (or --jobs 2) without it says what to install (exit 5),
    and --jobs 1 runs as before."""
    import sys

    monkeypatch.setitem(sys.modules, "dask", None)
    for args in (["--cluster", "local:2"], ["--jobs", "2"]):
        rc, _, err = run(capsys, "bench", suite, *args)
        assert rc == 5 and len(err) == 1 and "pip install 'certkit[dask]'" in err[0], err
    rc, stdout, _ = run(capsys, "bench", suite)
    assert rc == 0 and summary_row(stdout, "all")["solved"] == "3"


def test_tasks_lost_past_the_deadline_end_as_timeout():
    """A search whose tasks do not report back before its deadline (workers lost for good) ends as a
    timeout, never as a proof."""
    from certkit.verify.distributed import _within
    from certkit.verify.input_split import SplitOutcome

    def pool():
        yield "first"
        raise TimeoutError

    out = SplitOutcome("verified")
    assert list(_within(pool(), out)) == ["first"]
    assert out.status == "timeout" and "deadline" in out.message
