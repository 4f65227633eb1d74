"""DeepPoly time per call at depth, beside auto_LiRPA's CROWN (issue 12).

Usage: python benchmarks/deeppoly_speed.py [--repeat N] [--no-agreement] [--conv [--slow]] [--alpha] [--windows]
[--fold]

For every instance of ../shared/benchmarks/instances.csv (ACAS Xu, mnistfc 256x2, ERAN) it times
``deeppoly_lower`` (pure CROWN: ``intersect=False``; the spec's C folded in, one input box, one
thread, median of N calls after a warm-up) and prints the median per benchmark. Then the deeper
MLPs: ``models/mnist_mlp_4x256.onnx`` and ``mnist_mlp_6x256.onnx`` (``scripts/train_deep_mlps.py``
writes them) and paper 002's ``mnist_relu_8_100``/``8_200`` (../shared/data/vnn_models), each over the
L_inf ball of radius 0.03 (0.02 for paper 002's nets) around the first test image of
../shared/data/mnist.npz, rows ``y_label - y_j``.

The auto_LiRPA column is the figures of issue 12 (auto_LiRPA 0.7.1 CROWN, float32, one core),
not measured here: auto_LiRPA is not installable on this machine. Where the issue gives a range
(ACAS Xu: 16-31 ms over 3 instances) the speed-up is against its low end. ``-``: no figure.
It also checks the bounds against ../shared/benchmarks/reference_bounds, and prints the gap of the spec-row
bounds of certify's DeepPoly stages (the best of ``deeppoly``, ``deeppoly+interval`` and
``deeppoly+reference`` per row, sound float32 bounds) to auto_LiRPA's CROWN there.

``--alpha``: alpha-CROWN (20 iterations, real arithmetic as auto_LiRPA's figures are) on the spec rows of
every ../shared/benchmarks/reference_bounds instance beside the stored auto_LiRPA alpha-CROWN bounds (the
largest and smallest difference per instance, > 0: certkit tighter), and on ACAS Xu 3_5 prop_1 beside the
issue's figure (auto_LiRPA -512.2 on its worst row).

``--conv``: the wild conv nets (the first instance of each model of :data:`CONV_BENCHMARKS` in
../shared/benchmarks/wild; ``--slow`` adds :data:`SLOW_CONV_BENCHMARKS`, 1-3 minutes a call), one call
each after a warm-up, the spec rows with ``intersect=True`` as certify runs them, with the bound
products (certkit.bounds.products32) in float64 and in the default arithmetic ``auto`` (convolutions
in float32): both times, the speed-up, and what the float32 products cost in the bounds (the largest
loss of a spec-row lower bound) beside what the model's own float32 rounding costs (float64
products, precision ``exact`` against ``float32``).

``--windows``: windowed rows through convolutions (certkit/bounds/windows.py) against the dense rows, in
the same run: the spec rows of the first instance of each wild conv model (of cifar_biasfield's nine
nets of one architecture the first; ``intersect=True``, one call each after a warm-up), both times and the largest difference of a spec-row lower bound; then the
intermediate bounds of carvana's 31x47 U-Net conv stack (unet_simp_small: every conv layer's unstable
neurons, the rows DeepPoly needs before the pixel margins), the dense rows stopped after
:data:`DENSE_CAP` seconds.

``--fold``: the rounding error of a Conv feeding a ReLU alone charged in the ReLU's fast step
(``RowSavings._folds_below``) against charged at the Conv (``|A| err``: an ``abs`` of the rows and a
product), on the same models as ``--windows``, in the same run (a warm-up, then the two alternated twice,
the faster call of each), with the allocator set as the CLI sets it (:mod:`certkit.malloc`; the other
tables run with glibc's defaults): both times and the largest difference of a spec-row lower bound.
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
from certkit.bounds.backends import BACKENDS  # noqa: E402
from certkit.bounds.deeppoly import deeppoly_lower, deeppoly_output_bounds  # noqa: E402
from certkit.bounds.fperror import with_precision  # noqa: E402
from certkit.bounds.products32 import with_arithmetic  # noqa: E402
from certkit.graph import ops  # noqa: E402
from certkit.onnx.importer import load_onnx  # noqa: E402
from certkit.spec.sets import InputSet  # noqa: E402
from certkit.spec.vnnlib import parse_vnnlib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "benchmarks"))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
#: auto_LiRPA CROWN per call, ms (issue 12's table, measured elsewhere; the low end of a range)
REFERENCE_MS = {"acasxu": 16.0, "mnistfc_2021": 10.7, "mnistfc_2022": 10.7, "eran_2021": None,
                "mlp_4x256": 18.5, "mlp_6x256": 37.1, "relu_8_100": None, "relu_8_200": None}
#: the DeepPoly stages of certify's auto plan, whose best bound per row it keeps
AUTO_DEEPPOLY = ("deeppoly", "deeppoly+interval", "deeppoly+reference")
#: the deeper MLPs: name -> (onnx path, L_inf radius)
MLPS = {"mlp_4x256": (os.path.join(ROOT, "models", "mnist_mlp_4x256.onnx"), 0.03),
        "mlp_6x256": (os.path.join(ROOT, "models", "mnist_mlp_6x256.onnx"), 0.03),
        "relu_8_100": (os.path.join(DATA, "vnn_models", "mnist_relu_8_100.onnx"), 0.02),
        "relu_8_200": (os.path.join(DATA, "vnn_models", "mnist_relu_8_200.onnx"), 0.02)}


def time_call(graph, inputs, C, repeat: int) -> float:
    deeppoly_lower(graph, inputs, C, intersect=False)  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        with torch.no_grad():
            deeppoly_lower(graph, inputs, C, intersect=False)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def mlp_case(path: str, eps: float):
    """The L_inf ball of radius ``eps`` around the first MNIST test image, rows ``y_label - y_j``."""
    d = np.load(os.path.join(DATA, "mnist.npz"))
    x = d["x_test"][0].reshape(-1).astype(np.float64) / 255.0
    y = int(d["y_test"][0])
    C = torch.zeros(9, 10, dtype=torch.float64)
    for r, j in enumerate(k for k in range(10) if k != y):
        C[r, y], C[r, j] = 1.0, -1.0
    return load_onnx(path), InputSet.box(np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)), C


#: wild benchmarks with conv nets timed by --conv
CONV_BENCHMARKS = ("oval21", "metaroom_2023", "sri_resnet_a", "sri_resnet_b", "dist_shift_2023")
#: ... and with --slow (one to three minutes a call)
SLOW_CONV_BENCHMARKS = ("cifar_biasfield", "traffic_signs_recognition_2023", "cgan_2023")


def conv_table(slow: bool) -> None:
    """The ``--conv`` table (module docstring)."""
    wild = os.path.join(SHARED, "wild")
    chosen = CONV_BENCHMARKS + (SLOW_CONV_BENCHMARKS if slow else ())
    seen: set[str] = set()
    print(f"\n{'wild conv net':<44}{'float64 s':>10}{'auto s':>10}{'speed-up':>9}"
          f"{'products cost':>15}{'model cost':>12}{'worst lower':>13}")
    for r in csv.DictReader(open(os.path.join(wild, "instances.csv"))):
        if r["benchmark"] not in chosen or r["onnx"] in seen:
            continue
        seen.add(r["onnx"])
        g = load_onnx(os.path.join(wild, r["onnx"]))
        spec = parse_vnnlib(os.path.join(wild, r["vnnlib"]), g.n_inputs, g.n_outputs)
        prop = spec.properties[0]
        C = torch.as_tensor(prop.stacked()[0])
        S = InputSet.box(prop.lower, prop.upper)
        times, lows = {}, {}
        for name, graph in (("float64", with_arithmetic(g, "float64")), ("auto", with_arithmetic(g, "auto")),
                            ("exact", with_arithmetic(with_precision(g, "exact"), "float64"))):
            with torch.no_grad():
                if name != "exact":
                    deeppoly_lower(graph, S, C)  # warm-up
                t = time.perf_counter()
                lows[name] = deeppoly_lower(graph, S, C)
                times[name] = time.perf_counter() - t
        cost = float((lows["float64"] - lows["auto"]).max())
        model = float((lows["exact"] - lows["float64"]).max())
        label = f"{r['benchmark']}/{os.path.basename(r['onnx'])}"[:43]
        print(f"{label:<44}{times['float64']:>10.3f}{times['auto']:>10.3f}"
              f"{times['float64'] / times['auto']:>8.2f}x{cost:>15.2e}{model:>12.2e}"
              f"{float(lows['float64'].min()):>13.4g}", flush=True)
    print("(auto: the default arithmetic, convolutions' products in float32; products cost: the largest float64 - "
          "auto spec-row lower bound; model cost: the same for the model's float32 rounding, exact - float64)")


#: seconds the dense rows get on carvana's conv stack in ``--windows``
DENSE_CAP = 300.0


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _spec_rows_models():
    """``(label, graph, input set, C)`` for the first spec of each wild conv model the ``--windows`` and
    ``--fold`` tables time (of cifar_biasfield's nine nets of one architecture the first; not cgan's 64x64
    nets, minutes a dense call)."""
    wild = os.path.join(SHARED, "wild")
    seen: set[str] = set()
    for r in csv.DictReader(open(os.path.join(wild, "instances.csv"))):
        key = r["benchmark"] if r["benchmark"] == "cifar_biasfield" else r["onnx"]
        if r["benchmark"] not in CONV_BENCHMARKS + ("cifar_biasfield", "cgan_2023") or key in seen \
                or "imgSz64" in r["onnx"]:
            continue
        seen.add(key)
        g = load_onnx(os.path.join(wild, r["onnx"]))
        prop = parse_vnnlib(os.path.join(wild, r["vnnlib"]), g.n_inputs, g.n_outputs).properties[0]
        label = f"{r['benchmark']}/{os.path.basename(r['onnx'])}"[:51]
        yield label, g, InputSet.box(prop.lower, prop.upper), torch.as_tensor(prop.stacked()[0])


def windows_table() -> None:
    """The ``--windows`` table (module docstring)."""
    from certkit.bounds import windows
    from certkit.bounds.deeppoly import BoundState
    from certkit.verify.query import Budget, BudgetExpired

    def dense(self, j, start=(1, 1)):
        return None

    plan = windows.WindowRows._window_plan
    wild = os.path.join(SHARED, "wild")
    print(f"\n{'wild conv net (spec rows)':<52}{'dense s':>9}{'windows s':>10}{'speed-up':>9}{'max |diff|':>12}")
    for label, g, S, C in _spec_rows_models():
        times, lows = {}, {}
        for name in ("dense", "windows"):
            windows.WindowRows._window_plan = dense if name == "dense" else plan
            try:
                with torch.no_grad():
                    deeppoly_lower(g, S, C)  # warm-up
                    times[name], lows[name] = _timed(lambda: deeppoly_lower(g, S, C))
            finally:
                windows.WindowRows._window_plan = plan
        print(f"{label:<52}{times['dense']:>9.3f}{times['windows']:>10.3f}{times['dense'] / times['windows']:>8.2f}x"
              f"{float((lows['dense'] - lows['windows']).abs().max()):>12.2e}", flush=True)
    r = next(r for r in csv.DictReader(open(os.path.join(wild, "instances.csv"))) if "unet_simp" in r["onnx"])
    g = load_onnx(os.path.join(wild, r["onnx"]))
    prop = parse_vnnlib(os.path.join(wild, r["vnnlib"]), g.n_inputs, g.n_outputs).properties[0]
    S = InputSet.box(prop.lower, prop.upper)
    relus = [i for i, n in enumerate(g.nodes) if isinstance(n.op, ops.Relu) and isinstance(g.nodes[n.inputs[0]].op, ops.Conv)]
    print(f"\ncarvana {os.path.basename(r['onnx'])} ({os.path.basename(r['vnnlib'])}): DeepPoly's intermediate "
          f"bounds of the {len(relus)} conv layers")
    for name in ("windows", "dense"):
        windows.WindowRows._window_plan = dense if name == "dense" else plan
        st = BoundState(g, S, budget=Budget.of(DENSE_CAP) if name == "dense" else None)
        t0, done = time.perf_counter(), []
        try:
            with torch.no_grad():
                for i in relus:
                    st.relaxation(i)
                    lo, hi = st.bounds[g.nodes[i].inputs[0]]
                    done.append(f"{int(((lo < 0) & (hi > 0)).sum())}/{lo.numel()} unstable "
                                f"at {time.perf_counter() - t0:.1f} s")
            print(f"  {name:<8} {time.perf_counter() - t0:8.1f} s: " + ", ".join(done), flush=True)
        except BudgetExpired:
            print(f"  {name:<8} not finished in {DENSE_CAP:.0f} s: " + (", ".join(done) or "no layer done"), flush=True)
        finally:
            windows.WindowRows._window_plan = plan


def fold_table() -> None:
    """The ``--fold`` table (module docstring)."""
    from certkit import malloc
    from certkit.bounds.deeppoly import BoundState

    malloc.tune(dedicated=True)  # as the CLI runs (certkit.malloc): the rest of this process too

    folds = BoundState._folds_below
    print(f"\n{'wild conv net (spec rows)':<52}{'at conv s':>10}{'folded s':>10}{'speed-up':>9}{'max |diff|':>12}")
    for label, g, S, C in _spec_rows_models():
        times: dict[str, list[float]] = {"conv": [], "folded": []}
        lows = {}
        with torch.no_grad():
            deeppoly_lower(g, S, C)  # warm-up
            for _ in range(2):  # alternated, the faster of two calls each
                for name in ("conv", "folded"):
                    BoundState._folds_below = folds if name == "folded" else (lambda self, *a: False)
                    try:
                        dt, lows[name] = _timed(lambda: deeppoly_lower(g, S, C))
                    finally:
                        BoundState._folds_below = folds
                    times[name].append(dt)
        t_conv, t_fold = min(times["conv"]), min(times["folded"])
        print(f"{label:<52}{t_conv:>10.3f}{t_fold:>10.3f}{t_conv / t_fold:>8.2f}x"
              f"{float((lows['conv'] - lows['folded']).abs().max()):>12.2e}", flush=True)
    print("(at conv: a Conv's rounding error charged at the Conv, |A| err, as before; folded: in the fast step of "
          "the ReLU it feeds alone, RowSavings._folds_below)")


def alpha_table() -> None:
    """The ``--alpha`` table (module docstring)."""
    from certkit.bounds.alpha import LR, LR_DECAY, alpha_lower

    print(f"\nalpha-CROWN (lr {LR}, decay {LR_DECAY}/step, 20 iterations, real arithmetic) - auto_LiRPA's stored "
          "alpha-CROWN spec-row lower bounds (> 0: certkit tighter):")
    for f in sorted(glob.glob(os.path.join(SHARED, "reference_bounds", "*.npz"))):
        ref = np.load(f)
        bench, net, spec = os.path.basename(f)[:-4].split("__")
        g = with_precision(load_onnx(os.path.join(SHARED, bench, "onnx", net + ".onnx")), "exact")
        S = InputSet.box(ref["x_lb"].reshape(-1), ref["x_ub"].reshape(-1))
        t = time.perf_counter()
        low = alpha_lower(g, S, torch.as_tensor(ref["C"], dtype=torch.float64))[0].detach().numpy()
        d = low - ref["alpha-CROWN_spec_lb"]
        gain = float(np.max(ref["alpha-CROWN_spec_lb"] - ref["CROWN_spec_lb"]))
        print(f"  {bench}/{net}/{spec}: min {d.min():+.3g} max {d.max():+.3g} (auto_LiRPA's gain over CROWN "
              f"{gain:.3g}; {time.perf_counter() - t:.2f} s)")
    acas = os.path.join(SHARED, "acasxu")
    g = load_onnx(os.path.join(acas, "onnx", "ACASXU_run2a_3_5_batch_2000.onnx"))
    prop = parse_vnnlib(os.path.join(acas, "vnnlib", "prop_1.vnnlib"), 5, 5).properties[0]
    low = alpha_lower(with_precision(g, "exact"), InputSet.box(prop.lower, prop.upper),
                      torch.as_tensor(prop.stacked()[0]))
    print(f"  acasxu 3_5 prop_1 worst row: certkit {float(low.min()):.1f}, auto_LiRPA -512.2 (issue 12's figure)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-agreement", action="store_true", help="skip the check against reference_bounds")
    ap.add_argument("--conv", action="store_true", help="also time the wild conv nets in both arithmetics")
    ap.add_argument("--alpha", action="store_true", help="also alpha-CROWN beside auto_LiRPA's stored bounds")
    ap.add_argument("--slow", action="store_true", help="with --conv: also SLOW_CONV_BENCHMARKS (minutes per call)")
    ap.add_argument("--windows", action="store_true", help="windowed against dense rows on the wild conv nets")
    ap.add_argument("--fold", action="store_true", help="conv errors charged in the ReLU step against at the conv")
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
    for name, (path, eps) in MLPS.items():
        if not os.path.exists(path):
            print(f"({name}: {path} missing; python scripts/train_deep_mlps.py writes the trained MLPs)")
            continue
        g, S, C = mlp_case(path, eps)
        per[name] = [time_call(g, S, C, a.repeat)]
    print(f"{'benchmark':<14}{'calls':>6}{'median ms':>11}{'mean ms':>9}{'max ms':>8}{'auto_LiRPA ms':>15}{'speed-up':>10}")
    for b, ts in per.items():
        med = 1000 * statistics.median(ts)
        ref = REFERENCE_MS.get(b)
        print(f"{b:<14}{len(ts):>6}{med:>11.2f}{1000 * statistics.mean(ts):>9.2f}{1000 * max(ts):>8.2f}"
              f"{ref if ref else '-':>15}{(f'{ref / med:.1f}x' if ref else '-'):>10}")
    print("(auto_LiRPA: issue 12's figures, not measured in this run)")
    if a.conv:
        conv_table(a.slow)
    if a.alpha:
        alpha_table()
    if a.windows:
        windows_table()
    if a.fold:
        fold_table()
    if a.no_agreement:
        return
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
        # certify's bound stages (the best of DeepPoly, deeppoly+interval and deeppoly+reference per
        # row, sound float32 bounds) on the spec rows, against auto_LiRPA's CROWN: > 0 is tighter
        C = torch.as_tensor(ref["C"], dtype=torch.float64)
        low = torch.stack([BACKENDS[n].lower(g32, inputs, C) for n in AUTO_DEEPPOLY]).amax(dim=0).numpy()[0]
        gap = low - ref["CROWN_spec_lb"].reshape(-1)
        print(f"  {bench}/{net}/{spec}: exact {cells[0]:.2e}   float32 {cells[1]:.2e} "
              f"({'contains' if wider else 'does NOT contain'} CROWN's bounds); auto's DeepPoly stages on "
              f"the spec rows: gap {gap.min():+.3g} .. {gap.max():+.3g} (> 0: tighter than CROWN)")


if __name__ == "__main__":
    main()
