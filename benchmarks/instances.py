"""Run certkit on every row of ../shared/benchmarks/instances.csv and count verdicts.

Usage: python benchmarks/instances.py [--backend deeppoly] [--timeout-scale 1.0] [--filter acasxu]
       python benchmarks/instances.py --suite wild [--cap 120] [--backend auto] [--filter vit]

A verdict that contradicts `expected` (unsat where a counterexample exists, or
sat where the property holds) is counted as WRONG; `unknown` is allowed.

``--suite wild`` runs ../shared/benchmarks/wild/instances.csv (conv nets, transformers, U-Nets, ...)
as VNN-COMP runs them: one fresh ``certkit certify MODEL SPEC --timeout T`` process per instance,
``T`` the competition timeout capped at ``--cap`` seconds (start-up included, as in the reference
times); a process that is still running at ``T + 30`` s is killed and counted as ``timeout``, one that
fails to load the model as ``error`` (its reason printed). The summary prints, per benchmark, certkit's
solved count beside alpha-beta-CROWN's (``abcrown_time_s`` of the CSV at most ``T``).
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from certkit.model import load_model  # noqa: E402
from certkit.spec.vnnlib import parse_vnnlib  # noqa: E402
from certkit.verify.certify import certify  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                       "benchmarks"))


def run_fresh(root: str, r: dict, backend: str, timeout: float) -> tuple[str, str]:
    """One instance as a fresh ``certkit certify`` process: (verdict, note)."""
    cmd = [sys.executable, "-m", "certkit", "certify", os.path.join(root, r["onnx"]),
           os.path.join(root, r["vnnlib"]), "--timeout", f"{timeout:g}", "--backend", backend]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, env=env)
    except subprocess.TimeoutExpired:
        return "timeout", "killed at T + 30 s"
    lines = p.stdout.strip().splitlines()
    verdict = lines[0].strip() if lines else ""
    if verdict not in ("unsat", "sat", "unknown", "timeout"):
        err = (p.stderr.strip().splitlines() or lines or ["no output"])[-1]
        return "error", err[:160]
    return verdict, ""


def main_wild(a: argparse.Namespace) -> None:
    root = os.path.join(SHARED, "wild")
    if not os.path.exists(os.path.join(root, "instances.csv")):
        sys.exit(f"skipped: {root}/instances.csv is absent (the shared benchmarks are not beside the repo)")
    rows = [r for r in csv.DictReader(open(os.path.join(root, "instances.csv")))
            if a.filter in r["benchmark"] + " " + r["onnx"] + " " + r["vnnlib"]]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    times: dict[str, list[float]] = collections.defaultdict(list)
    wrong = 0
    for r in rows:
        cap = min(float(r["timeout_s"].split("/")[0]), a.cap)
        t = time.perf_counter()
        verdict, note = run_fresh(root, r, a.backend, cap)
        dt = time.perf_counter() - t
        bad = (verdict, r["expected"]) in (("unsat", "sat"), ("sat", "unsat"))
        wrong += bad
        c = counts[r["benchmark"]]
        c[verdict] += 1
        c["solved"] += verdict in ("sat", "unsat") and not bad
        ref = r["abcrown_time_s"]
        c["abcrown"] += ref not in ("", "-") and float(ref) <= cap
        times[r["benchmark"]].append(dt)
        print(f"{r['benchmark']:<22} {os.path.basename(r['onnx'])[:34]:<34} {os.path.basename(r['vnnlib'])[:40]:<40} "
              f"expected {r['expected']:<8} got {verdict:<8} {dt:7.2f} s (abcrown {ref or '-'}) "
              f"{'WRONG' if bad else ''}{note}", flush=True)
    print(f"\n{'benchmark':<32}{'n':>4}{'unsat':>7}{'sat':>5}{'unknown':>9}{'timeout':>9}{'error':>7}"
          f"{'solved':>8}{'abcrown':>9}{'total s':>9}")
    tot = collections.Counter()
    for b, c in counts.items():
        n = len(times[b])
        tot.update({k: v for k, v in c.items()})
        tot["n"] += n
        print(f"{b:<32}{n:>4}{c['unsat']:>7}{c['sat']:>5}{c['unknown']:>9}{c['timeout']:>9}{c['error']:>7}"
              f"{c['solved']:>8}{c['abcrown']:>9}{sum(times[b]):>9.1f}")
    print(f"{'total':<32}{tot['n']:>4}{tot['unsat']:>7}{tot['sat']:>5}{tot['unknown']:>9}{tot['timeout']:>9}"
          f"{tot['error']:>7}{tot['solved']:>8}{tot['abcrown']:>9}")
    print(f"wrong verdicts: {wrong}   (alpha-beta-CROWN: its published times, at most the same cap of "
          f"{a.cap:g} s; certkit here on this machine, one thread, start-up included)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default=None, help="default: deeppoly (shared), auto (wild)")
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--filter", default="", help="substring of the benchmark, onnx or vnnlib column")
    ap.add_argument("--suite", choices=("shared", "wild"), default="shared")
    ap.add_argument("--cap", type=float, default=120.0, help="--suite wild: timeout cap in seconds")
    a = ap.parse_args()
    if a.suite == "wild":
        a.backend = a.backend or "auto"
        return main_wild(a)
    a.backend = a.backend or "deeppoly"
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
