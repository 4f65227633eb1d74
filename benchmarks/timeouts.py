"""Is ``--timeout`` honoured? Fresh ``certkit certify --timeout T`` processes on hard instances.

Usage: python benchmarks/timeouts.py [--timeout 10] [--backends auto,bab,milp,alpha,deeppoly]
                                     [--per-benchmark 1] [--dataset-samples 20]

For the first instance(s) of every benchmark in ../shared/benchmarks/instances.csv and
../shared/benchmarks/wild/instances.csv that certkit loads, and every backend, it runs
``certkit certify MODEL SPEC --backend B --timeout T`` as a new process and measures the wall time
from process start to exit (imports included, as VNN-COMP measures it). The contract: every run ends
by ``T + 1`` s. It prints the overshoot ``wall - T`` per run and the worst per backend; then the same
for data-set mode (``--timeout`` per sample, ``--total-timeout``) on the shipped digits model.
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "benchmarks"))


def rows(per_benchmark: int) -> list[tuple[str, str, str]]:
    out = []
    for folder in (SHARED, os.path.join(SHARED, "wild")):
        path = os.path.join(folder, "instances.csv")
        if not os.path.exists(path):
            continue
        seen: collections.Counter = collections.Counter()
        with open(path) as f:
            for r in csv.DictReader(f):
                if seen[r["benchmark"]] < per_benchmark:
                    seen[r["benchmark"]] += 1
                    out.append((r["benchmark"], os.path.join(folder, r["onnx"]), os.path.join(folder, r["vnnlib"])))
    return out


def run(args: list[str]) -> tuple[float, str]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "certkit.cli", *args], capture_output=True, text=True)
    wall = time.monotonic() - t
    first = (p.stdout.strip().splitlines() or ["(no output)"])[0]
    if p.returncode not in (0,):
        first = f"exit {p.returncode}: " + (p.stderr.strip().splitlines() or [""])[0][:80]
    return wall, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--backends", default="auto,bab,milp,alpha,deeppoly")
    ap.add_argument("--per-benchmark", type=int, default=1)
    ap.add_argument("--dataset-samples", type=int, default=20)
    a = ap.parse_args()
    T = a.timeout
    worst: dict[str, float] = {}
    if not os.path.isdir(SHARED):
        print(f"{SHARED} is absent: only the data-set part runs")
    for bench, onnx, spec in rows(a.per_benchmark):
        for b in a.backends.split(","):
            wall, verdict = run(["certify", onnx, spec, "--backend", b, "--timeout", str(T)])
            if verdict.startswith("exit 3"):  # the model does not load: no budget to honour
                print(f"{bench:<28} {b:<9} (model not loaded: {verdict[8:60]})")
                break
            worst[b] = max(worst.get(b, -1e9), wall - T)
            flag = "" if wall <= T + 1 else "  OVER T + 1 s"
            print(f"{bench:<28} {b:<9} {verdict[:40]:<42} wall {wall:6.2f} s  overshoot {wall - T:+6.2f} s{flag}",
                  flush=True)
    data = os.path.join(ROOT, "models", "digits_test.npz")
    model = os.path.join(ROOT, "models", "digits_fc.onnx")
    per = 1.0
    total = per * a.dataset_samples
    for b in ("bab", "auto"):
        wall, verdict = run(["certify", model, "--dataset", data, "--eps", "0.08", "--domain", "0", "1",
                             "--limit", str(a.dataset_samples), "--backend", b, "--timeout", str(per),
                             "--total-timeout", str(total)])
        worst[f"dataset {b}"] = wall - total
        print(f"data set digits_fc x{a.dataset_samples} {b:<5} --timeout {per:g} --total-timeout {total:g}: "
              f"wall {wall:.2f} s ({verdict[:60]})")
    print(f"\nworst overshoot of T (the contract: <= +1 s, start-up included), timeout {T:g} s:")
    for b, w in worst.items():
        print(f"  {b:<14} {w:+.2f} s")


if __name__ == "__main__":
    main()
