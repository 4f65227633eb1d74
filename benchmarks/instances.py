"""Run certkit on every row of ../shared/benchmarks/instances.csv and count verdicts.

Usage: python benchmarks/instances.py [--backend deeppoly] [--timeout-scale 1.0] [--filter acasxu]

A verdict that contradicts `expected` (unsat where a counterexample exists, or
sat where the property holds) is counted as WRONG; `unknown` is allowed.
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from certkit.model import load_model  # noqa: E402
from certkit.spec.vnnlib import parse_vnnlib  # noqa: E402
from certkit.verify.certify import certify  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                       "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="deeppoly")
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--filter", default="", help="substring of the benchmark, onnx or vnnlib column")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [r for r in csv.DictReader(open(os.path.join(SHARED, "instances.csv"))) if a.filter in r["benchmark"] + " " + r["onnx"] + " " + r["vnnlib"]]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    times: dict[str, list[float]] = collections.defaultdict(list)
    wrong = 0
    for r in rows:
        t = time.perf_counter()
        model = load_model(os.path.join(SHARED, r["onnx"]))
        spec = parse_vnnlib(os.path.join(SHARED, r["vnnlib"]), model.n_inputs, model.n_outputs)
        res = certify(model, spec, a.backend, float(r["timeout_s"]) * a.timeout_scale)
        dt = time.perf_counter() - t
        bad = (res.verdict, r["expected"]) in (("unsat", "sat"), ("sat", "unsat"))
        wrong += bad
        counts[r["benchmark"]][res.verdict] += 1
        times[r["benchmark"]].append(dt)
        print(f"{r['benchmark']:<13} {os.path.basename(r['onnx']):<34} {os.path.basename(r['vnnlib']):<40} "
              f"expected {r['expected']:<8} got {res.verdict:<8} {dt:7.2f} s {'WRONG' if bad else ''}", flush=True)
    print(f"\n{'benchmark':<14}{'n':>4}{'unsat':>7}{'sat':>5}{'unknown':>9}{'timeout':>9}{'median s':>10}{'total s':>9}")
    for b, c in counts.items():
        n = sum(c.values())
        print(f"{b:<14}{n:>4}{c['unsat']:>7}{c['sat']:>5}{c['unknown']:>9}{c['timeout']:>9}"
              f"{statistics.median(times[b]):>10.2f}{sum(times[b]):>9.1f}")
    print(f"wrong verdicts: {wrong}")


if __name__ == "__main__":
    main()
