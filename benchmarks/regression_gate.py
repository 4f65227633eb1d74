"""A no-regression gate for changes to bounds and searches: re-run a fixed set of instances and compare
each verdict with the one recorded at the last accepted run.

Usage: python benchmarks/regression_gate.py [--sets acas186,shared,wild-sat] [--jobs 2] [--update]

Falsification by input splitting's candidate points and ReLU splitting's per-disjunct order is path
dependent: a tighter bound or fewer optimiser steps can move a needle counterexample out of reach on
instances the change was never measured on (three such regressions were found only by bisecting, see
CHANGELOG 0.2.x). The gate runs, through ``certkit bench`` (each instance a fresh process):

- ``acas186``: the 186 ACAS Xu instances of VNN-COMP 2021 (45 nets x prop_1-4, prop_5-10 on their nets),
  116 s each;
- ``shared``: the other rows of ../shared/benchmarks/instances.csv (ERAN, mnistfc), capped at 30 s;
- ``wild-sat``: the sat rows of ../shared/benchmarks/wild/instances.csv, capped at 60 s.

It prints every instance whose verdict changed against ``benchmarks/gate_baseline.csv`` and exits 1 when a
verdict contradicts the expected one or the baseline's (sat against unsat: one of them is wrong), or when
an instance the baseline decided in under half its timeout is no longer decided (a *lost* one; those the
baseline decided near the timeout are printed as *marginal*, since the machine's speed varies). ``--update``
writes this run's verdicts as the new baseline. About 10-14 minutes on 2 cores. Needs ../shared (exit 2
without it).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from certkit import bench  # noqa: E402
from certkit.errors import CertkitError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "benchmarks"))
BASELINE = os.path.join(HERE, "gate_baseline.csv")
SETS = ("acas186", "shared", "wild-sat")
#: VNN-COMP 2021's ACAS Xu properties 5-10 and the one network each is checked on
ACAS_LATER = (("1_1", 5), ("1_1", 6), ("1_9", 7), ("2_9", 8), ("3_3", 9), ("4_5", 10))
FIELDS = ("set", "onnx", "vnnlib", "verdict", "time_s", "timeout")
DECIDED = ("sat", "unsat")


def acas186(known: dict[tuple[str, str], str]) -> list[bench.Instance]:
    """The 186 instances: every net with prop_1-4, then prop_5-10 on their nets; expected where known."""
    pairs = [(f"{a}_{b}", p) for a in range(1, 6) for b in range(1, 10) for p in range(1, 5)]
    pairs += list(ACAS_LATER)
    out = []
    for k, (net, p) in enumerate(pairs):
        onnx, spec = f"acasxu/onnx/ACASXU_run2a_{net}_batch_2000.onnx", f"acasxu/vnnlib/prop_{p}.vnnlib"
        out.append(bench.Instance(line=k + 1, benchmark="acasxu", onnx=onnx, vnnlib=spec,
                                  onnx_path=os.path.join(SHARED, onnx), vnnlib_path=os.path.join(SHARED, spec),
                                  timeout=116.0, expected=known.get((onnx, spec), "")))
    return out


def instances(which: list[str]) -> list[tuple[str, bench.Instance, float]]:
    """(set, instance, timeout) for the chosen sets, in the order they run."""
    shared, _ = bench.read_instances(os.path.join(SHARED, "instances.csv"))
    known = {(r.onnx, r.vnnlib): r.expected for r in shared}
    out: list[tuple[str, bench.Instance, float]] = []
    if "acas186" in which:
        out += [("acas186", r, r.timeout) for r in acas186(known)]
    if "shared" in which:
        out += [("shared", r, min(r.timeout, 30.0)) for r in shared if r.benchmark != "acasxu"]
    if "wild-sat" in which:
        wild, _ = bench.read_instances(os.path.join(SHARED, "wild", "instances.csv"))
        out += [("wild-sat", r, min(r.timeout, 60.0)) for r in bench.select(wild, None, None, "sat")]
    return out


def key(s: str, r: dict | bench.Instance) -> tuple[str, str, str]:
    get = r.get if isinstance(r, dict) else lambda f: getattr(r, f)
    return s, get("onnx"), get("vnnlib")


def read_baseline(path: str) -> dict[tuple[str, str, str], dict]:
    """The baseline's rows by (set, onnx, vnnlib); {} when there is none. ValueError: not a gate baseline."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a gate baseline (no column {', '.join(missing)})")
        rows = list(reader)
    try:
        for r in rows:
            float(r["time_s"]), float(r["timeout"])
    except ValueError as e:
        raise ValueError(f"{path}: not a gate baseline ({e})") from None
    return {key(r["set"], r): r for r in rows}


def compare(rows: list[tuple[str, dict]], base: dict) -> tuple[list[str], list[str], list[str]]:
    """(failures, marginal losses, gains) of this run's rows against the baseline's."""
    fail, marginal, gained = [], [], []
    for s, r in rows:
        name = f"{s} {r['onnx']} {r['vnnlib']}"
        v, b = r["verdict"], base.get(key(s, r))
        if r["wrong"] == "1":
            fail.append(f"WRONG   {name}: {v}, expected {r['expected']}")
            continue
        if b is None:
            continue
        bv, bt = b["verdict"], float(b["time_s"])
        if v in DECIDED and bv in DECIDED and v != bv:
            fail.append(f"CONTRA  {name}: {v} now, {bv} in the baseline")
        elif bv in DECIDED and v not in DECIDED:
            lost = bt < 0.5 * float(b["timeout"])  # decided well inside its timeout before: not the machine's speed
            (fail if lost else marginal).append(f"{'LOST    ' if lost else 'MARGINAL '}{name}: {v} at "
                                                f"{float(r['time_s']):.1f} s, {bv} in {bt:.1f} s in the baseline")
        elif v in DECIDED and bv not in DECIDED:
            gained.append(f"GAINED  {name}: {v} in {float(r['time_s']):.1f} s ({bv} in the baseline)")
    return fail, marginal, gained


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {', '.join(SETS)}")
    ap.add_argument("--jobs", type=int, default=2, help="instances run at once (default 2)")
    ap.add_argument("--baseline", default=BASELINE, help="baseline CSV (default benchmarks/gate_baseline.csv)")
    ap.add_argument("--filter", metavar="SUBSTR", help="only instances whose onnx or vnnlib contains SUBSTR")
    ap.add_argument("--update", action="store_true", help="write this run's verdicts as the new baseline")
    a = ap.parse_args()
    which = [s.strip() for s in a.sets.split(",") if s.strip()]
    bad = [s for s in which if s not in SETS]
    if bad or not which:
        print(f"regression_gate: unknown set(s) {', '.join(bad) or '(none)'}; choose from {', '.join(SETS)}",
              file=sys.stderr)
        return 2
    if a.jobs < 1:
        print("regression_gate: --jobs must be at least 1", file=sys.stderr)
        return 2
    if not os.path.isdir(SHARED):
        print(f"regression_gate: {SHARED} not found (the gate runs the shared benchmarks)", file=sys.stderr)
        return 2
    chosen = instances(which)
    if a.filter:
        chosen = [(s, r, t) for s, r, t in chosen if a.filter in r.onnx or a.filter in r.vnnlib]
    runs = []
    for s, r, t in chosen:  # bench runs each row at its own timeout; its rows carry the extra columns
        r.timeout = t
        r.extra["set"] = s
        runs.append(r)
    try:
        base = read_baseline(a.baseline)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        print(f"regression_gate: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()

    def on_row(row: dict, k: int) -> None:
        print(f"\r{k}/{len(runs)} instances", end="", file=sys.stderr, flush=True)

    try:
        out_rows = bench.run(runs, jobs=a.jobs, on_row=on_row)
    except CertkitError as e:  # e.g. --jobs 2 without Dask
        print(f"\nregression_gate: {e}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    rows = [(r["set"], r) for r in out_rows]
    order = {key(s, r): i for i, (s, r, _) in enumerate(chosen)}
    rows.sort(key=lambda sr: order[key(*sr)])
    wall = time.monotonic() - t0

    print(f"{'set':10s} {'instances':>9s} {'decided':>8s} {'baseline':>8s} {'wrong':>6s} {'time_s':>8s}")
    for s in which:
        rs = [r for t, r in rows if t == s]
        dec = sum(r["verdict"] in DECIDED for r in rs)
        bdec = sum(base[key(s, r)]["verdict"] in DECIDED for r in rs if key(s, r) in base)
        wrong = sum(r["wrong"] == "1" for r in rs)
        print(f"{s:10s} {len(rs):9d} {dec:8d} {bdec if base else '-':>8} {wrong:6d} "
              f"{sum(float(r['time_s']) for r in rs):8.1f}")
    print(f"wall time {wall:.1f} s, {a.jobs} job(s)")
    fail, marginal, gained = compare(rows, base)
    for line in fail + marginal + gained:
        print(line)
    if not base:
        print(f"no baseline at {a.baseline}: nothing compared")
    if a.update:
        kept = dict(base)  # rows not run this time (other sets, --filter) stay as they were
        kept.update({key(s, r): {"set": s, "onnx": r["onnx"], "vnnlib": r["vnnlib"], "verdict": r["verdict"],
                                 "time_s": r["time_s"], "timeout": r["timeout"]} for s, r in rows})
        tmp = tempfile.NamedTemporaryFile("w", newline="", delete=False, dir=os.path.dirname(a.baseline) or ".")
        with tmp as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(sorted(kept.values(), key=lambda b: (SETS.index(b["set"]), order.get(key(b["set"], b), 0))))
        os.replace(tmp.name, a.baseline)
        print(f"baseline written: {a.baseline}")
    print("gate: FAIL" if fail else "gate: pass")
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
