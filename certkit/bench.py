"""``certkit bench``: run every instance of a VNN-COMP instances CSV and score the verdicts.

The CSV is either a VNN-COMP benchmark's ``instances.csv`` (``onnx,vnnlib,timeout``,
no header) or a CSV with a header naming at least ``onnx``, ``vnnlib`` and
``timeout`` (or ``timeout_s``), optionally ``benchmark`` and ``expected``; other
columns are carried over to the output. Paths are relative to the CSV's folder;
``.gz`` files are accepted, and a path that does not exist but whose ``.gz``
does is read from the ``.gz`` (VNN-COMP benchmark repositories ship them so).

Each instance runs in a fresh worker process (``forkserver`` context where the
platform has it, else ``spawn``; :func:`run_instance`) with ``--threads`` torch threads (default:
the usable CPUs divided by the instances run at once, so ``--jobs 1`` uses the whole machine as the
competition's tools do, and one per worker on a remote cluster), with the
row's timeout times ``timeout_scale``: one after the other in this process, or as
one task each on a Dask cluster (``--cluster``; ``--jobs N`` > 1 is a local
cluster of N workers; :mod:`certkit.cluster`), rows appended as they finish and
``--resume`` running only the instances an earlier results CSV has no row for.
A worker still running 10 s past its timeout is killed and its row reported
``timeout``; an exception in one
instance gives an ``error`` row with a one-line message and the run goes on.
A ``sat``/``unsat`` answer that arrives after the timeout counts as ``timeout``
(as in the competition). ``time_s`` is the time spent in the worker on loading
the model and spec and certifying, without the process start and imports.

Scoring (against ``expected`` when it is ``sat`` or ``unsat``): +10 per correct
``sat``/``unsat``, -150 per wrong one, 0 otherwise; the competition's per-year
time bonuses are not included.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, TextIO

from .bounds import ARITHMETICS
from .cli_paths import output_path
from .cluster import parse_cluster, threads_per_job
from .errors import DataError, UsageError
from .log import progress

#: Columns of the results CSV, in this order; the input CSV's other columns follow.
COLUMNS = ("benchmark", "onnx", "vnnlib", "timeout", "expected", "verdict", "stage", "time_s", "wrong", "message")
#: Tasks submitted per cluster worker at a time (the rest wait here, in order).
IN_FLIGHT = 2
#: Seconds a worker may run past its timeout before it is killed.
GRACE = 10.0
SCORE_CORRECT, SCORE_WRONG = 10, -150
SCORE_NOTE = ("score: +10 per correct sat/unsat, -150 per wrong one, 0 otherwise, over the rows whose expected "
              "verdict is sat or unsat (the competition's per-year time bonuses are not included)")

_TIMEOUT_NAMES = ("timeout", "timeout_s", "timeout_sec", "timeout_secs", "timeout_seconds")
_EXPECTED_ALIASES = {"sat": "sat", "unsat": "unsat", "violated": "sat", "holds": "unsat",
                     "counterexample": "sat", "verified": "unsat"}


@dataclass
class Instance:
    """One row of the instances CSV."""

    line: int  # line number in the CSV (1-based)
    benchmark: str
    onnx: str  # as written in the CSV
    vnnlib: str
    onnx_path: str  # resolved against the CSV's folder
    vnnlib_path: str
    timeout: float  # the row's timeout, before scaling
    expected: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's arguments (the backend list is checked at run time)."""
    p.add_argument("instances", help="instances CSV: onnx,vnnlib,timeout (no header, as in VNN-COMP), "
                                     "or with a header naming onnx, vnnlib, timeout[_s], [benchmark, expected]")
    p.add_argument("--backend", default="auto", help="certify backend for every instance (default auto)")
    p.add_argument("--timeout-scale", type=float, default=1.0, metavar="F",
                   help="run each instance with its timeout times F (default 1)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="instances run at once (default 1); N > 1 is --cluster local:N")
    p.add_argument("--cluster", metavar="local[:N]|tcp://HOST:PORT",
                   help="run the instances as tasks on a Dask cluster: a local one of N workers, or a running "
                        "scheduler (needs the extra .[dask]; README section 'Running on a cluster')")
    p.add_argument("--resume", action="store_true",
                   help="with --out: keep the rows already in RESULTS.csv and run only the instances not in it")
    p.add_argument("--out", metavar="RESULTS.csv", type=output_path,
                   help="write one row per instance here (flushed per row)")
    p.add_argument("--filter", metavar="SUBSTR", help="only rows whose benchmark, onnx or vnnlib contains SUBSTR")
    p.add_argument("--expected", choices=("sat", "unsat"),
                   help="only rows whose expected verdict is this one (e.g. sat: measure the falsifier)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N rows (after --filter)")
    p.add_argument("--timeout-cap", type=float, metavar="S",
                   help="each instance's timeout at most S seconds, after --timeout-scale")
    p.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    p.add_argument("--arithmetic", default="auto", choices=ARITHMETICS,
                   help="arithmetic of the bound products (certify --arithmetic; default auto)")
    p.add_argument("--junit", metavar="FILE", type=output_path,
                   help="write JUnit XML here at the end: one testcase per row (wrong verdict: failure, error: "
                        "error, unknown/timeout: skipped; certkit.junit)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------- reading the CSV

def _resolve(base: str, p: str) -> str:
    path = p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        return path + ".gz"
    return path


def normalise_expected(v: str) -> str:
    """``sat``/``unsat`` for a known expected verdict, else ``""`` (``unknown``, empty, anything else)."""
    return _EXPECTED_ALIASES.get(v.strip().lower(), "")


def read_instances(path: str) -> tuple[list[Instance], list[str]]:
    """The rows of an instances CSV and the names of its extra columns. Raises DataError (exit 4)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read instances CSV: {getattr(e, 'strerror', None) or e}", path) from e
    base = os.path.dirname(os.path.abspath(path))
    try:
        lines = [(n, [c.strip() for c in cells]) for n, cells in enumerate(csv.reader(io.StringIO(text)), 1)]
    except csv.Error as e:
        raise DataError(f"not a readable CSV: {e}", path) from e
    lines = [(n, c) for n, c in lines if any(c) and not c[0].startswith("#")]
    if not lines:
        raise DataError("no instances in the CSV", path)
    first = [c.lower() for c in lines[0][1]]
    if "onnx" in first or "vnnlib" in first:  # a header
        missing = [name for name in ("onnx", "vnnlib") if name not in first]
        t_col = next((first.index(t) for t in _TIMEOUT_NAMES if t in first), None)
        if t_col is None:
            missing.append("timeout")
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)} in the header "
                            f"(need onnx, vnnlib, timeout or timeout_s)", path, lines[0][0])
        cols = {"onnx": first.index("onnx"), "vnnlib": first.index("vnnlib"), "timeout": t_col}
        for opt in ("benchmark", "expected"):
            if opt in first:
                cols[opt] = first.index(opt)
        header = lines[0][1]
        extra_idx = [i for i in range(len(header)) if i not in cols.values()]
        extra_names = [header[i] for i in extra_idx]
        body = lines[1:]
    else:  # VNN-COMP: onnx,vnnlib,timeout
        cols = {"onnx": 0, "vnnlib": 1, "timeout": 2}
        width = max(len(c) for _, c in lines)
        extra_idx = list(range(3, width))
        extra_names = [f"col{i + 1}" for i in extra_idx]
        body = lines
    default_bench = os.path.basename(base) or "instances"
    need = max(cols.values()) + 1
    out = []
    for n, cells in body:
        if len(cells) < need:
            raise DataError(f"{len(cells)} column(s), need at least {need}", path, n)
        t_raw = cells[cols["timeout"]]
        try:
            t = float(t_raw)
        except ValueError:
            t = float("nan")
        if not (t > 0 and math.isfinite(t)):
            raise DataError(f"bad timeout '{t_raw}' (need a positive number of seconds)", path, n)
        onnx, vnnlib = cells[cols["onnx"]], cells[cols["vnnlib"]]
        if not onnx or not vnnlib:
            raise DataError("empty onnx or vnnlib path", path, n)
        out.append(Instance(
            line=n, benchmark=cells[cols["benchmark"]] if "benchmark" in cols else default_bench,
            onnx=onnx, vnnlib=vnnlib, onnx_path=_resolve(base, onnx), vnnlib_path=_resolve(base, vnnlib),
            timeout=t, expected=cells[cols["expected"]] if "expected" in cols else "",
            extra={name: (cells[i] if i < len(cells) else "") for name, i in zip(extra_names, extra_idx)}))
    return out, extra_names


def select(instances: list[Instance], substr: str | None, limit: int | None,
           expected: str | None = None) -> list[Instance]:
    if substr:
        instances = [r for r in instances if substr in r.benchmark or substr in r.onnx or substr in r.vnnlib]
    if expected:
        instances = [r for r in instances if normalise_expected(r.expected) == expected]
    return instances if limit is None else instances[:limit]


# --------------------------------------------------------------------------------------------- the worker

def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}".rstrip(": ")[:300]


def _worker(conn, owner, onnx: str, vnnlib: str, backend: str, timeout: float, seed: int,
            arithmetic: str = "auto", threads: int = 1) -> None:
    """Runs in a fresh process: load, certify, send one dict back. ``owner``: the read end of a pipe
    whose only write end the process that started this one holds (:func:`_exit_with_owner`)."""
    t0 = time.monotonic()
    _die_with_parent()
    _exit_with_owner(owner)
    from .malloc import tune

    tune(dedicated=True)  # a fork of a cluster worker's fork server inherits Dask's allocator settings
    try:
        import torch

        torch.set_num_threads(threads)
        from . import api

        t0 = time.monotonic()
        model = api.load_model(onnx, arithmetic)
        spec = api.load_spec(vnnlib, model)
        t_load = time.monotonic() - t0
        res = api.certify(model, spec, backend, max(timeout - t_load, 1e-3), seed)
        msg = res.reason
        if res.verdict == "sat" and res.witness is not None:
            msg = f"counterexample in input region {res.witness.property_index} (validated with onnxruntime)"
        out = {"verdict": res.verdict, "stage": res.stage, "time_s": time.monotonic() - t0, "message": msg}
    except BaseException as e:  # noqa: BLE001 - every failure is one error row
        out = {"verdict": "error", "stage": "", "time_s": time.monotonic() - t0, "message": _one_line(e)}
    try:
        conn.send(out)
    finally:
        conn.close()


def _die_with_parent() -> None:
    """Linux: be killed by the kernel when the fork server that forked this process ends -- a backstop
    beside :func:`_exit_with_owner` (which needs this process's Python to run: a C routine holding the
    GIL delays it), not a replacement: the fork server can outlive the process that asked for this one."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent ended before the request was made
        os._exit(1)


def _exit_with_owner(owner) -> None:
    """End this process as soon as the process that started it (:func:`run_instance`'s, e.g. a Dask
    worker) ends, however it ends: a daemon thread blocks reading ``owner``, a pipe nothing is ever
    written to, whose one write end that process holds; its end (even by SIGKILL) closes it, the read
    gives EOF and the thread ends the process, whatever its main thread is doing (blocked reading a
    FIFO, deep in a bound computation). ``_die_with_parent`` alone is not enough: the parent of a
    forkserver child is the fork server, which can outlive a killed worker, so a killed task's
    instance ran on until its timeout beside the task's retry."""
    def watch() -> None:
        try:
            owner.recv()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="certkit-owner-watch", daemon=True).start()


def _context():
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # the server imports certkit (and torch) once; each instance is a fresh fork of it
        ctx.set_forkserver_preload(["certkit.api"])
        return ctx
    return mp.get_context("spawn")


# --------------------------------------------------------------------------------------------- running

@dataclass
class _Running:
    inst: Instance
    proc: object
    conn: object
    start: float
    timeout: float


def _row(inst: Instance, timeout: float, verdict: str, stage: str, time_s: float, message: str) -> dict:
    expected = normalise_expected(inst.expected)
    if verdict in ("sat", "unsat") and time_s > timeout:
        message = f"answered {verdict} after the timeout ({time_s:.2f} s > {timeout:g} s)"
        verdict, stage = "timeout", ""
    wrong = int(expected != "" and verdict in ("sat", "unsat") and verdict != expected)
    row = {"benchmark": inst.benchmark, "onnx": inst.onnx, "vnnlib": inst.vnnlib, "timeout": f"{timeout:g}",
           "expected": inst.expected, "verdict": verdict, "stage": stage, "time_s": f"{time_s:.3f}",
           "wrong": str(wrong), "message": " ".join(str(message).split())}
    for k, v in inst.extra.items():
        row.setdefault(k, v)
    return row


def run_instance(inst: Instance, timeout: float, backend: str = "auto", seed: int = 0, arithmetic: str = "auto",
                 files: tuple | None = None, threads: int = 1) -> dict:
    """One instance in a fresh process (a fork of a server that imported certkit once; ``threads``
    torch threads), killed :data:`GRACE` seconds past ``timeout``; its result row. Runs in this process or
    as a cluster task (``files``: the model's and spec's bytes, :func:`certkit.cluster.ship`, for a
    worker that does not share this file system)."""
    from .cluster import DAEMON_HINT, daemonic, materialise

    if files is not None:
        inst = replace(inst, onnx_path=materialise(inst.onnx_path, files[0]),
                       vnnlib_path=materialise(inst.vnnlib_path, files[1]))
    missing = [p for p in (inst.onnx_path, inst.vnnlib_path) if not os.path.exists(p)]
    if missing:
        return _row(inst, timeout, "error", "", 0.0, f"no such file: {missing[0]}")
    if daemonic():
        return _row(inst, timeout, "error", "", 0.0, DAEMON_HINT)
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    owner_r, owner_w = ctx.Pipe(duplex=False)  # the instance ends when this process does (_exit_with_owner)
    proc = ctx.Process(target=_worker, args=(send, owner_r, inst.onnx_path, inst.vnnlib_path, backend, timeout, seed,
                                             arithmetic, threads), name=f"certkit-bench-{inst.line}")
    r = _Running(inst, proc, recv, time.monotonic(), timeout)
    try:
        try:
            proc.start()
        except Exception as e:  # noqa: BLE001 - e.g. out of processes: this row only
            return _row(inst, timeout, "error", "", 0.0, f"cannot start worker: {_one_line(e)}")
        finally:
            send.close()
            owner_r.close()
        while True:
            wait_s = r.start + r.timeout + GRACE - time.monotonic()
            mp.connection.wait([r.conn, proc.sentinel], timeout=min(max(wait_s, 0.0), 5.0))
            row = _poll(r)
            if row is not None:
                return row
    finally:  # interrupted (Ctrl-C, SIGTERM, a cancelled task): leave no process behind
        _kill(r)
        owner_w.close()


def run(instances: list[Instance], backend: str = "auto", timeout_scale: float = 1.0, jobs: int = 1,
        on_row: Callable[[dict, int], None] | None = None, seed: int = 0, arithmetic: str = "auto",
        cluster: str | None = None, log: TextIO | None = None, threads: int | None = None) -> list[dict]:
    """Run every instance, each in a fresh process (:func:`run_instance`): one after the other in
    this process, or as one Dask task each on ``cluster`` (``--jobs N`` > 1: a local cluster of N
    workers; :mod:`certkit.cluster`). ``threads``: torch threads per instance; None: the usable CPUs
    shared among the instances run at once on this machine (:func:`certkit.cluster.threads_per_job`,
    :func:`task_threads`). ``on_row(row, k)`` is called as rows finish, in the order they finish."""
    rows: list[dict] = []

    def finish(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row, len(rows))

    previous = _terminate_as_interrupt()
    try:
        if cluster is None and jobs == 1:
            t = threads_per_job(threads, 1)
            for inst in instances:
                finish(run_instance(inst, inst.timeout * timeout_scale, backend, seed, arithmetic, threads=t))
        else:
            _run_on_cluster(instances, cluster or f"local:{jobs}", finish, log, backend=backend,
                            timeout_scale=timeout_scale, seed=seed, arithmetic=arithmetic, threads=threads)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return rows


def task_threads(spec, threads: int | None) -> int:
    """torch threads of one instance run as a task on the cluster ``spec``: ``threads`` when given, else
    the usable CPUs shared among a local cluster's workers, and one on a remote cluster (its machines'
    CPUs are not this one's)."""
    return threads_per_job(threads, spec.workers) if spec.local else (threads or 1)


def _run_on_cluster(instances: list[Instance], cluster: str, finish: Callable[[dict], None], log: TextIO | None,
                    backend: str, timeout_scale: float, seed: int, arithmetic: str,
                    threads: int | None = None) -> None:
    """One task per instance on the cluster, at most :data:`IN_FLIGHT` per worker submitted at a time
    (a stopped run leaves little queued; a remote cluster's files are read as their turn comes);
    rows as the tasks finish. A task whose worker died twice (:class:`distributed.KilledWorker`) or
    that failed is an ``error`` row naming why."""
    from .cluster import open_cluster, shares_files, ship, worker_count

    spec = parse_cluster(cluster)
    per = task_threads(spec, threads)
    with open_cluster(spec, log) as client:
        from dask.distributed import as_completed

        local = shares_files(spec)
        shipped: dict[str, object] = {}  # path -> future of its bytes (scattered once)

        def files(inst: Instance):
            if local:
                return None
            out = []
            for p in (inst.onnx_path, inst.vnnlib_path):
                if p not in shipped:
                    shipped[p] = client.scatter(ship(p), hash=True) if os.path.exists(p) else None
                out.append(shipped[p])
            return tuple(out)

        of: dict[str, tuple[Instance, float]] = {}
        todo = list(enumerate(instances))[::-1]

        def submit():
            k, inst = todo.pop()
            t = inst.timeout * timeout_scale
            fut = client.submit(run_instance, inst, t, backend, seed, arithmetic, files(inst), per, pure=False,
                                key=f"certkit-bench-{k}-{inst.line}-{uuid.uuid4().hex[:8]}")
            of[fut.key] = (inst, t)
            return fut

        pool = as_completed([submit() for _ in range(min(len(todo), IN_FLIGHT * worker_count(client)))])
        for fut in pool:
            inst, t = of.pop(fut.key)
            try:
                row = fut.result()
            except Exception as e:  # noqa: BLE001 - KilledWorker, a failed task: this row only
                why = "its worker died twice" if type(e).__name__ == "KilledWorker" else _one_line(e)
                row = _row(inst, t, "error", "", 0.0, f"cluster task failed: {why}")
            fut.release()
            if todo:
                pool.add(submit())
            finish(row)


def _terminate_as_interrupt():
    """SIGTERM (``kill``, a CI job cancelled) ends the run as Ctrl-C does, through ``run``'s cleanup,
    which kills the running workers; by default it would end this process alone and leave them running.
    Only from the main thread (where Python delivers signals); returns the handler to put back after
    the run (None where nothing was changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, stop)


def _kill(r: _Running) -> None:
    if r.proc.pid is not None:  # None: interrupted before it started
        if r.proc.is_alive():
            r.proc.kill()
        r.proc.join(5)
    r.conn.close()


def _poll(r: _Running) -> dict | None:
    """The finished row of a running worker, or None while it may still run."""
    alive = r.proc.is_alive()  # read before the pipe: a result sent just before exiting is still seen
    got = None
    if r.conn.poll():
        try:
            got = r.conn.recv()
        except (EOFError, OSError):  # closed without a result: the worker died
            alive = False
    elapsed = time.monotonic() - r.start
    if got is not None:
        r.proc.join(5)
        _kill(r)
        return _row(r.inst, r.timeout, got["verdict"], got["stage"], got["time_s"], got["message"])
    if not alive:
        r.proc.join(5)
        code = r.proc.exitcode
        _kill(r)
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return _row(r.inst, r.timeout, "error", "", elapsed, f"worker died without a result ({why})")
    if elapsed > r.timeout + GRACE:
        _kill(r)
        return _row(r.inst, r.timeout, "timeout", "", elapsed,
                    f"killed: still running {GRACE:g} s past the timeout")
    return None


# --------------------------------------------------------------------------------------------- summary

#: the instances CSV's column of alpha-beta-CROWN's published time (VNN-COMP results), when it has one
REFERENCE = "abcrown_time_s"


def summary(rows: list[dict]) -> list[str]:
    """Per-benchmark and overall counts, times and score, as printable lines; beside them, when the
    instances carry :data:`REFERENCE`, alpha-beta-CROWN's published solved count and total time
    over the same rows within the same timeouts (its times are from the competition's machines)."""
    head, body = stats_table(rows)
    ref = "abcrown_solved" in head
    table = [head] + body
    width = [max(len(str(t[i])) for t in table) for i in range(len(head))]
    lines = []
    for k, t in enumerate(table):
        if k == len(table) - 1:
            lines.append("-" * len(lines[0]))
        lines.append("  ".join([str(t[0]).ljust(width[0])] + [str(v).rjust(width[i]) for i, v in enumerate(t) if i]))
    lines.append(SCORE_NOTE)
    if ref:
        lines.append("abcrown_solved, abcrown_s: alpha-beta-CROWN's published results (the instances CSV's "
                     f"{REFERENCE}) on the same rows, counted when within each row's timeout as run here")
    return lines


def stats_table(rows: list[dict]) -> tuple[tuple, list[tuple]]:
    """The summary's header and rows: one per benchmark (in order of first appearance), then ``all``."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["benchmark"], []).append(r)
    head = ("benchmark", "instances", "solved", "unsat", "sat", "unknown", "timeout", "error", "wrong",
            "total_s", "median_s", "score", "max")
    ref = any(REFERENCE in r for r in rows)
    if ref:
        head += ("abcrown_solved", "abcrown_s")
    return head, [_stats(name, rs, ref) for name, rs in groups.items()] + [_stats("all", rows, ref)]


def _reference(rs: list[dict]) -> tuple[int, float]:
    """alpha-beta-CROWN's solved rows (published time within the row's timeout as run) and their time."""
    times = []
    for r in rs:
        try:
            t = float(r.get(REFERENCE) or "nan")
        except ValueError:
            continue
        if t <= float(r["timeout"]):
            times.append(t)
    return len(times), sum(times)


def _stats(name: str, rs: list[dict], ref: bool = False) -> tuple:
    n = {v: sum(r["verdict"] == v for r in rs) for v in ("unsat", "sat", "unknown", "timeout", "error")}
    wrong = sum(r["wrong"] == "1" for r in rs)
    times = [float(r["time_s"]) for r in rs]
    score = scored = 0
    for r in rs:
        exp = normalise_expected(r["expected"])
        if not exp:
            continue
        scored += 1
        if r["verdict"] == exp:
            score += SCORE_CORRECT
        elif r["wrong"] == "1":
            score += SCORE_WRONG
    med = statistics.median(times) if times else 0.0
    out = (name, len(rs), n["unsat"] + n["sat"], n["unsat"], n["sat"], n["unknown"], n["timeout"], n["error"],
           wrong, f"{sum(times):.1f}", f"{med:.2f}", score, SCORE_CORRECT * scored)
    if ref:
        k, t = _reference(rs)
        out += (k, f"{t:.1f}")
    return out


# --------------------------------------------------------------------------------------------- the CLI

def resume(path: str, chosen: list[Instance], fields: list[str]) -> tuple[list[dict], list[Instance]]:
    """``--resume``: the complete rows of an earlier run's results CSV and the instances it has no
    row for (an instance listed twice needs two rows). The file is rewritten with its complete rows
    only (a run killed while writing can leave a partial last line), ready to be appended to."""
    if not os.path.exists(path):
        return [], chosen
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            have = list(reader.fieldnames or [])
            old = [r for r in reader if None not in r.values() and None not in r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the results to resume: {getattr(e, 'strerror', None) or e}", path) from e
    if have and have[:len(COLUMNS)] != list(COLUMNS):
        raise DataError("not a results CSV of certkit bench (its columns differ); --resume keeps such rows only", path)
    old = [r for r in old if r.get("verdict")]
    tmp = f"{path}.resume-tmp"
    with open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(old)
    os.replace(tmp, path)
    done: dict[tuple[str, str], int] = {}
    for r in old:
        done[(r["onnx"], r["vnnlib"])] = done.get((r["onnx"], r["vnnlib"]), 0) + 1
    rest = []
    for inst in chosen:
        key = (inst.onnx, inst.vnnlib)
        if done.get(key, 0) > 0:
            done[key] -= 1
        else:
            rest.append(inst)
    return old, rest


def run_cli(a, stdout: TextIO | None = None) -> int:
    """``certkit bench``: see the module docstring. Returns 0 when the run completed."""
    from .verify.certify import STAGES

    stdout = stdout or sys.stdout
    if a.backend not in STAGES:
        raise UsageError(f"unknown backend '{a.backend}' (choose from: {', '.join(STAGES)})")
    if a.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if not (a.timeout_scale > 0 and math.isfinite(a.timeout_scale)):
        raise UsageError("--timeout-scale must be a positive number")
    if a.limit is not None and a.limit < 0:
        raise UsageError("--limit must be >= 0")
    if a.timeout_cap is not None and not (a.timeout_cap > 0 and math.isfinite(a.timeout_cap)):
        raise UsageError("--timeout-cap must be a positive number of seconds")
    if a.resume and not a.out:
        raise UsageError("--resume needs --out RESULTS.csv (the rows to keep)")
    cluster = a.cluster
    if cluster is not None:
        parse_cluster(cluster)  # a bad value is a usage error before anything runs
    instances, extra = read_instances(a.instances)
    chosen = select(instances, a.filter, a.limit, a.expected)
    if a.timeout_cap is not None:  # Instance.timeout is before scaling
        chosen = [replace(i, timeout=min(i.timeout, a.timeout_cap / a.timeout_scale)) for i in chosen]
    fields = list(COLUMNS) + [c for c in extra if c not in COLUMNS]
    kept: list[dict] = []
    if a.resume:
        kept, chosen = resume(a.out, chosen, fields)
    out_f = None
    if a.out:
        try:
            out_f = open(a.out, "a" if a.resume else "w", newline="")
        except OSError as e:
            raise UsageError(f"cannot write --out {a.out}: {e.strerror or e}") from e
    rows: list[dict] = []
    try:
        writer = None
        if out_f is not None:
            writer = csv.DictWriter(out_f, fieldnames=fields, extrasaction="ignore")
            if not a.resume:
                writer.writeheader()
            out_f.flush()
        threads = getattr(a, "threads", None)
        how = (f"cluster {cluster}, {task_threads(parse_cluster(cluster), threads)} thread(s) per instance" if cluster
               else f"{a.jobs} job(s), {threads_per_job(threads, a.jobs)} thread(s) each")
        print(f"bench: {len(chosen)} of {len(instances)} instance(s) from {a.instances}, backend {a.backend}, "
              f"timeout x{a.timeout_scale:g}, {how}" + (f", results to {a.out}" if a.out else "")
              + (f"; {len(kept)} kept from the earlier run" if a.resume else ""), file=stdout, flush=True)
        total = len(chosen)
        w = len(str(total))
        solved = [0]
        bar = progress(total, "instance")  # tqdm on a terminal (ETA; the solved count in its postfix), else None

        def on_row(row: dict, k: int) -> None:
            if writer is not None:
                writer.writerow(row)
                out_f.flush()
            solved[0] += row["verdict"] in ("sat", "unsat")
            exp = normalise_expected(row["expected"])
            tail = f"  expected {exp}" if exp else ""
            if row["wrong"] == "1":
                tail += "  WRONG"
            if row["verdict"] in ("error", "timeout") and row["message"]:
                tail += f"  ({row['message']})"
            line = (f"[{k:>{w}}/{total}] {row['verdict']:<7} {row['stage'] or '-':<18} {float(row['time_s']):8.2f} s  "
                    f"{row['benchmark']}  {os.path.basename(row['onnx'])}  {os.path.basename(row['vnnlib'])}{tail}")
            if bar is None:
                print(line, file=stdout, flush=True)
                return
            bar.write(line, file=stdout)  # above the bar, which is redrawn below it
            stdout.flush()
            bar.set_postfix_str(f"solved {solved[0]}/{k}", refresh=False)
            bar.update(1)

        try:
            rows = run(chosen, a.backend, a.timeout_scale, a.jobs, on_row, a.seed, a.arithmetic, cluster, stdout,
                       threads)
        finally:
            if bar is not None:
                bar.close()
    finally:
        if out_f is not None:
            out_f.close()
    rows = kept + rows
    if (a.filter or a.expected) and not chosen:
        print("no instance matches" + (f" --filter {a.filter!r}" if a.filter else "")
              + (f" --expected {a.expected}" if a.expected else ""), file=stdout)
    print(file=stdout)
    for line in summary(rows):
        print(line, file=stdout)
    stdout.flush()
    if a.junit:
        from .cli_paths import write_outputs
        from .junit import write_bench

        write_outputs([("--junit", a.junit, lambda p: write_bench(rows, p))])
        print(f"JUnit XML: {a.junit}", file=stdout)
    return 0
