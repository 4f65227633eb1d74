"""DeepPoly time per call on ACAS Xu and mnistfc nets, beside auto_LiRPA's CROWN.

Usage: python benchmarks/deeppoly_speed.py [--repeat N]

For every instance of ../shared/benchmarks/instances.csv of the listed
benchmarks it times ``deeppoly_lower`` (the spec's C folded in, one input box,
one thread) and prints the median per benchmark next to the reference figures
of issue 2 (auto_LiRPA CROWN on this kind of machine, one thread).
It also checks the bounds against ../shared/benchmarks/reference_bounds.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from certkit.bounds.deeppoly import deeppoly_lower, deeppoly_output_bounds  # noqa: E402
from certkit.bounds.fperror import with_precision  # noqa: E402
from certkit.onnx.importer import load_onnx  # noqa: E402
from certkit.spec.sets import InputSet  # noqa: E402
from certkit.spec.vnnlib import parse_vnnlib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "benchmarks"))
REFERENCE_MS = {"acasxu": 30.0, "mnistfc_2021": 11.0, "mnistfc_2022": 11.0, "eran_2021": None}


def time_call(graph, inputs, C, repeat: int) -> float:
    deeppoly_lower(graph, inputs, C, intersect=False)  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        with torch.no_grad():
            deeppoly_lower(graph, inputs, C, intersect=False)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if not os.path.isdir(SHARED):
        sys.exit(f"{SHARED} not found: this benchmark needs the shared benchmark folder")
    rows = list(csv.DictReader(open(os.path.join(SHARED, "instances.csv"))))
    per: dict[str, list[float]] = {}
    graphs: dict[str, object] = {}
    for r in rows:
        g = graphs.setdefault(r["onnx"], load_onnx(os.path.join(SHARED, r["onnx"])))
        spec = parse_vnnlib(os.path.join(SHARED, r["vnnlib"]), g.n_inputs, g.n_outputs)
        for prop in spec.properties:
            C, d, _ = prop.stacked()
            t = time_call(g, InputSet.box(prop.lower, prop.upper), torch.as_tensor(C), a.repeat)
            per.setdefault(r["benchmark"], []).append(t)
    print(f"{'benchmark':<14}{'calls':>6}{'median ms':>11}{'mean ms':>9}{'max ms':>8}{'auto_LiRPA ms':>15}{'speed-up':>10}")
    for b, ts in per.items():
        med = 1000 * statistics.median(ts)
        ref = REFERENCE_MS.get(b)
        print(f"{b:<14}{len(ts):>6}{med:>11.2f}{1000 * statistics.mean(ts):>9.2f}{1000 * max(ts):>8.2f}"
              f"{ref if ref else '-':>15}{(f'{ref / med:.1f}x' if ref else '-'):>10}")
    print("\nagreement with auto_LiRPA CROWN (reference_bounds/, real arithmetic), max |diff| / max bound width:")
    print("  'exact': certkit without the float32 error terms (the same relaxation as CROWN); 'float32': the")
    print("  sound bounds certkit decides with (wider by the model's rounding error, never narrower than CROWN's)")
    for f in sorted(glob.glob(os.path.join(SHARED, "reference_bounds", "*.npz"))):
        ref = np.load(f)
        bench, net, spec = os.path.basename(f)[:-4].split("__")
        g32 = load_onnx(os.path.join(SHARED, bench, "onnx", net + ".onnx"))
        inputs = InputSet.box(ref["x_lb"].reshape(-1), ref["x_ub"].reshape(-1))
        w = float((ref["CROWN_out_ub"] - ref["CROWN_out_lb"]).max())
        cells = []
        for g in (with_precision(g32, "exact"), g32):
            lo, hi = deeppoly_output_bounds(g, inputs, intersect=False)
            d_lo = lo.numpy() - ref["CROWN_out_lb"].reshape(1, -1)
            d_hi = hi.numpy() - ref["CROWN_out_ub"].reshape(1, -1)
            cells.append(max(float(np.abs(d_lo).max()), float(np.abs(d_hi).max())) / w)
            wider = bool((d_lo <= 1e-9 * w).all() and (d_hi >= -1e-9 * w).all())
        print(f"  {bench}/{net}/{spec}: exact {cells[0]:.2e}   float32 {cells[1]:.2e} "
              f"({'contains' if wider else 'does NOT contain'} CROWN's bounds)")


if __name__ == "__main__":
    main()
