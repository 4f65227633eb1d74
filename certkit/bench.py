"""``certkit bench``: run every instance of a VNN-COMP instances CSV and score the verdicts.

The CSV is either a VNN-COMP benchmark's ``instances.csv`` (``onnx,vnnlib,timeout``,
no header) or a CSV with a header naming at least ``onnx``, ``vnnlib`` and
``timeout`` (or ``timeout_s``), optionally ``benchmark`` and ``expected``; other
columns are carried over to the output. Paths are relative to the CSV's folder;
``.gz`` files are accepted, and a path that does not exist but whose ``.gz``
does is read from the ``.gz`` (VNN-COMP benchmark repositories ship them so).

Each instance runs in a fresh worker process (``forkserver`` context where the
platform has it, else ``spawn``; one torch thread), at most ``jobs`` at once,
with the row's timeout times ``timeout_scale``. A worker still running 10 s past
its timeout is killed and its row reported ``timeout``; an exception in one
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
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, TextIO

from .bounds import ARITHMETICS
from .cli_paths import output_path
from .errors import DataError, UsageError

#: Columns of the results CSV, in this order; the input CSV's other columns follow.
COLUMNS = ("benchmark", "onnx", "vnnlib", "timeout", "expected", "verdict", "stage", "time_s", "wrong", "message")
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
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="instances run at once (default 1)")
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


def _worker(conn, onnx: str, vnnlib: str, backend: str, timeout: float, seed: int,
            arithmetic: str = "auto") -> None:
    """Runs in a fresh process: load, certify, send one dict back."""
    t0 = time.monotonic()
    try:
        import torch

        torch.set_num_threads(1)
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


def run(instances: list[Instance], backend: str = "auto", timeout_scale: float = 1.0, jobs: int = 1,
        on_row: Callable[[dict, int], None] | None = None, seed: int = 0, arithmetic: str = "auto") -> list[dict]:
    """Run every instance, each in a fresh process; ``on_row(row, k)`` is called as rows finish."""
    ctx = _context()
    pending = deque(instances)
    running: list[_Running] = []
    rows: list[dict] = []

    def finish(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row, len(rows))

    previous = _terminate_as_interrupt()
    try:
        while pending or running:
            while pending and len(running) < jobs:
                inst = pending.popleft()
                timeout = inst.timeout * timeout_scale
                missing = [p for p in (inst.onnx_path, inst.vnnlib_path) if not os.path.exists(p)]
                if missing:
                    finish(_row(inst, timeout, "error", "", 0.0, f"no such file: {missing[0]}"))
                    continue
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(send, inst.onnx_path, inst.vnnlib_path, backend,
                                                         timeout, seed, arithmetic),
                                   name=f"certkit-bench-{inst.line}")
                # listed before it starts: an interrupt (SIGTERM) inside start() must still find the
                # worker to kill, or the interpreter's exit would wait for it forever
                running.append(_Running(inst, proc, recv, time.monotonic(), timeout))
                try:
                    proc.start()
                except Exception as e:  # noqa: BLE001 - e.g. out of processes: this row only
                    running.pop()
                    recv.close()
                    send.close()
                    finish(_row(inst, timeout, "error", "", 0.0, f"cannot start worker: {_one_line(e)}"))
                    continue
                send.close()
            if not running:
                continue
            now = time.monotonic()
            wait_s = min(r.start + r.timeout + GRACE - now for r in running)
            objs = [r.conn for r in running] + [r.proc.sentinel for r in running]
            mp.connection.wait(objs, timeout=min(max(wait_s, 0.0), 5.0))
            still = []
            for r in running:
                row = _poll(r)
                if row is None:
                    still.append(r)
                else:
                    finish(row)
            running = still
    finally:
        for r in running:  # interrupted (Ctrl-C, SIGTERM): leave no worker behind
            _kill(r)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return rows


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
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["benchmark"], []).append(r)
    head = ("benchmark", "instances", "solved", "unsat", "sat", "unknown", "timeout", "error", "wrong",
            "total_s", "median_s", "score", "max")
    ref = any(REFERENCE in r for r in rows)
    if ref:
        head += ("abcrown_solved", "abcrown_s")
    table = [head] + [_stats(name, rs, ref) for name, rs in groups.items()] + [_stats("all", rows, ref)]
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
    instances, extra = read_instances(a.instances)
    chosen = select(instances, a.filter, a.limit, a.expected)
    if a.timeout_cap is not None:  # Instance.timeout is before scaling
        chosen = [replace(i, timeout=min(i.timeout, a.timeout_cap / a.timeout_scale)) for i in chosen]
    fields = list(COLUMNS) + [c for c in extra if c not in COLUMNS]
    out_f = None
    if a.out:
        try:
            out_f = open(a.out, "w", newline="")
        except OSError as e:
            raise UsageError(f"cannot write --out {a.out}: {e.strerror or e}") from e
    try:
        writer = None
        if out_f is not None:
            writer = csv.DictWriter(out_f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            out_f.flush()
        print(f"bench: {len(chosen)} of {len(instances)} instance(s) from {a.instances}, backend {a.backend}, "
              f"timeout x{a.timeout_scale:g}, {a.jobs} job(s)" + (f", results to {a.out}" if a.out else ""),
              file=stdout, flush=True)
        total = len(chosen)
        w = len(str(total))

        def on_row(row: dict, k: int) -> None:
            if writer is not None:
                writer.writerow(row)
                out_f.flush()
            exp = normalise_expected(row["expected"])
            tail = f"  expected {exp}" if exp else ""
            if row["wrong"] == "1":
                tail += "  WRONG"
            if row["verdict"] in ("error", "timeout") and row["message"]:
                tail += f"  ({row['message']})"
            print(f"[{k:>{w}}/{total}] {row['verdict']:<7} {row['stage'] or '-':<18} {float(row['time_s']):8.2f} s  "
                  f"{row['benchmark']}  {os.path.basename(row['onnx'])}  {os.path.basename(row['vnnlib'])}{tail}",
                  file=stdout, flush=True)

        rows = run(chosen, a.backend, a.timeout_scale, a.jobs, on_row, a.seed, a.arithmetic)
    finally:
        if out_f is not None:
            out_f.close()
    if (a.filter or a.expected) and not chosen:
        print("no instance matches" + (f" --filter {a.filter!r}" if a.filter else "")
              + (f" --expected {a.expected}" if a.expected else ""), file=stdout)
    print(file=stdout)
    for line in summary(rows):
        print(line, file=stdout)
    stdout.flush()
    return 0
