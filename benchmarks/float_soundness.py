"""Floating-point soundness: trap nets per backend, the activation error budgets, and what the
error terms cost (issue "Trust"; certkit.bounds.fperror).

Usage:
    python benchmarks/float_soundness.py [--seeds 5] [--timeout 10] [--backends interval,deeppoly,...]
                                         [--tightness] [--solved acasxu|mnistfc|...] [--timeout-scale 1]

1. **Traps** (tests/helpers/fp_traps.py): nets whose real-valued output is identically 0 on the box
   while onnxruntime's float32 (float64) output reaches a threshold -- cancelling pairs of large
   neurons, the same amplified through a deep narrow chain, a large-kernel convolution, a float64
   net -- in several sizes and seeds. Per backend: traps tried, `unsat` (wrong: must be 0), `sat`
   (the counterexample, confirmed by onnxruntime), other. The column `exact` is certkit's DeepPoly
   *without* the model's error terms: it says `unsat` on the traps, which is what a real-arithmetic
   verifier does.
2. **Activation budgets**: onnxruntime's Sigmoid/Tanh/Softplus against float64 references on
   random float32 inputs, beside the budget certkit charges (16 ulp + 2^-20).
3. **Tightness** (`--tightness`, needs ../shared): DeepPoly output bounds with and without the error
   terms on every shared benchmark instance of a few families: the worst relative change of the
   bound (in units of the bound's width) and its median.
4. **Solved counts** (`--solved FILTER`, needs ../shared): `certify --backend auto` with and
   without the error terms on the instances.csv rows matching FILTER, in one run.
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import certkit  # noqa: E402
from certkit.bounds.deeppoly import deeppoly_output_bounds  # noqa: E402
from certkit.bounds.fperror import input_set, with_precision  # noqa: E402
from certkit.model import Model  # noqa: E402
from tests.helpers.fp_traps import make_trap  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                       "benchmarks"))

#: (family, keyword arguments): the sizes tried per family.
TRAP_KINDS = [
    ("cancel", {}), ("cancel", {"pairs": 16, "n_in": 4}), ("cancel", {"scale_w": 1e5, "bias": 1e6}),
    ("deep", {}), ("deep", {"layers": 12, "gain": 4.0}),
    ("conv", {}), ("conv", {"side": 12, "kernel": 9}),
    ("float64", {}),
]


def traps(seeds: int, timeout: float, backends: list[str]) -> int:
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    tried = 0
    wrong_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for family, kw in TRAP_KINDS:
            for seed in range(seeds):
                trap = make_trap(family, seed, samples=1000, **kw)
                if trap is None:
                    continue
                tried += 1
                path = os.path.join(tmp, f"{trap.name}.onnx")
                with open(path, "wb") as f:
                    f.write(trap.model.SerializeToString())
                spec_path = os.path.join(tmp, f"{trap.name}.vnnlib")
                with open(spec_path, "w") as f:
                    f.write(trap.vnnlib())
                model = certkit.load_model(path)
                spec = certkit.load_spec(spec_path, model)
                exact = Model(with_precision(model.graph, "exact"), path)
                rows["exact"][certkit.certify(exact, spec, "deeppoly", timeout).verdict] += 1
                for b in backends:
                    v = certkit.certify(model, spec, b, timeout).verdict
                    rows[b][v] += 1
                    if v == "unsat":
                        wrong_total += 1
                        print(f"  WRONG: {b} says unsat on {trap.name} {kw} (onnxruntime: {trap.output} >= "
                              f"{trap.threshold})", flush=True)
    print(f"\n1. Trap nets: {tried} traps ({', '.join(sorted({f for f, _ in TRAP_KINDS}))}; "
          f"{seeds} seed(s) x {len(TRAP_KINDS)} sizes), timeout {timeout:g} s")
    print(f"   {'backend':<10}{'tried':>7}{'unsat (wrong)':>15}{'sat':>6}{'other':>7}")
    for b in backends + ["exact"]:
        c = rows[b]
        label = b if b != "exact" else "exact*"
        print(f"   {label:<10}{tried:>7}{c['unsat']:>15}{c['sat']:>6}{tried - c['unsat'] - c['sat']:>7}")
    print("   * DeepPoly without the model's error terms (a real-arithmetic analysis): its 'unsat' are the "
          "wrong answers the traps provoke")
    return wrong_total


def activation_budgets(n: int = 2_000_000) -> None:
    import onnx.helper as h
    import onnxruntime as ort

    def session(op):
        g = h.make_graph([h.make_node(op, ["x"], ["y"])], "t", [h.make_tensor_value_info("x", 1, [None])],
                         [h.make_tensor_value_info("y", 1, [None])])
        return ort.InferenceSession(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]).SerializeToString(),
                                    providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(-40, 40, n), rng.standard_normal(n // 2)]).astype(np.float32)
    ref = {"Sigmoid": lambda x: 0.5 * (1 + np.tanh(x / 2)), "Tanh": np.tanh, "Softplus": lambda x: np.logaddexp(x, 0)}
    print(f"\n2. Activation budgets ({len(xs)} float32 inputs; budget 16 ulp(|y|) + 2^-20):")
    print(f"   {'op':<10}{'max |err|':>12}{'max err/ulp':>13}{'budget used':>13}")
    for op, f in ref.items():
        y = session(op).run(None, {"x": xs})[0].astype(np.float64)
        r = f(xs.astype(np.float64))
        err = np.abs(y - r)
        ulp = np.spacing(np.abs(r).astype(np.float32)).astype(np.float64)
        budget = 16 * 2 * 2.0 ** -24 * np.abs(r) + 2.0 ** -20
        print(f"   {op:<10}{err.max():>12.3g}{(err / ulp).max():>13.3g}{(err / budget).max():>12.1%}")


def _rows(filt: str):
    with open(os.path.join(SHARED, "instances.csv")) as f:
        return [r for r in csv.DictReader(f) if filt in r["benchmark"] + " " + r["onnx"] + " " + r["vnnlib"]]


def tightness(per_family: int = 12) -> None:
    torch.set_num_threads(1)
    print("\n3. Tightness: DeepPoly output bounds, float32 error terms vs none, relative to the bound's width")
    print(f"   {'benchmark':<14}{'n':>4}{'worst':>12}{'median':>12}{'time x':>9}")
    by: dict[str, list] = collections.defaultdict(list)
    for r in _rows(""):
        if len(by[r["benchmark"]]) >= per_family:
            continue
        m = certkit.load_model(os.path.join(SHARED, r["onnx"]))
        if m.n_inputs > 1000:
            continue
        spec = certkit.load_spec(os.path.join(SHARED, r["vnnlib"]), m)
        p = spec.properties[0]
        res = {}
        for prec in ("exact", "float32"):
            g = with_precision(m.graph, prec)
            S = input_set(g, p.lower, p.upper)
            with torch.no_grad():
                deeppoly_output_bounds(g, S, intersect=True)  # warm-up
                t = time.perf_counter()
                lo, hi = deeppoly_output_bounds(g, S, intersect=True)
            res[prec] = (lo, hi, time.perf_counter() - t)
        w = (res["exact"][1] - res["exact"][0]).clamp(min=1e-12)
        ch = torch.maximum(res["exact"][0] - res["float32"][0], res["float32"][1] - res["exact"][1])
        by[r["benchmark"]].append((float((ch / w).max()), res["float32"][2] / max(res["exact"][2], 1e-9)))
    for b, v in by.items():
        rel = [x for x, _ in v]
        print(f"   {b:<14}{len(v):>4}{max(rel):>12.2e}{statistics.median(rel):>12.2e}"
              f"{statistics.median([t for _, t in v]):>9.2f}")


def solved(filt: str, scale: float) -> None:
    torch.set_num_threads(1)
    counts = {p: collections.Counter() for p in ("exact", "float32")}
    totals = {p: 0.0 for p in counts}
    wrong = collections.Counter()
    rows = _rows(filt)
    for r in rows:
        m = certkit.load_model(os.path.join(SHARED, r["onnx"]))
        spec = certkit.load_spec(os.path.join(SHARED, r["vnnlib"]), m)
        line = []
        for prec in counts:
            mm = Model(with_precision(m.graph, prec), m.path)
            t = time.perf_counter()
            v = certkit.certify(mm, spec, "auto", float(r["timeout_s"]) * scale).verdict
            dt = time.perf_counter() - t
            totals[prec] += dt
            counts[prec][v] += 1
            if (v, r["expected"]) in (("unsat", "sat"), ("sat", "unsat")):
                wrong[prec] += 1
            line.append(f"{prec} {v:<8}{dt:7.2f} s")
        print(f"   {os.path.basename(r['onnx']):<34} {os.path.basename(r['vnnlib']):<36} expected {r['expected']:<6} "
              + "  ".join(line), flush=True)
    print(f"\n4. Solved counts on '{filt}' ({len(rows)} instances, timeouts x{scale:g}, one thread):")
    for prec, c in counts.items():
        print(f"   {prec + ' error terms' if prec == 'float32' else 'no error terms':<22} unsat {c['unsat']:>4}  "
              f"sat {c['sat']:>4}  other {len(rows) - c['unsat'] - c['sat']:>4}  wrong {wrong[prec]}  "
              f"total {totals[prec]:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--backends", default="interval,deeppoly,alpha,bab,milp,auto")
    ap.add_argument("--tightness", action="store_true")
    ap.add_argument("--solved", default=None, metavar="FILTER")
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    a = ap.parse_args()
    wrong = traps(a.seeds, a.timeout, a.backends.split(","))
    activation_budgets()
    if a.tightness or a.solved:
        if not os.path.isdir(SHARED):
            print(f"\n{SHARED} is absent: tightness and solved counts skipped")
            return
    if a.tightness:
        tightness()
    if a.solved is not None:
        solved(a.solved, a.timeout_scale)
    print(f"\nwrong verdicts on traps: {wrong}")


if __name__ == "__main__":
    main()
