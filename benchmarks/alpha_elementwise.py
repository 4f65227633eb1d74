"""alpha-CROWN on the S-shaped, periodic and step ops whose line slopes it moves (issue 13: alpha for every
activation; :func:`certkit.bounds.relax_elementwise.moved_lines`): the spec-row lower bounds of DeepPoly, of
alpha-CROWN with those ops' lines fixed at DeepPoly's (as before they had parameters) and of alpha-CROWN
moving them, summed over 20 random nets per op and the rows of each; and, when ../shared is there, the
same on ml4acopf_2024's 14_ieee_ml4acopf net (Sin, Cos, Pow, Sigmoid) with the times.

    python benchmarks/alpha_elementwise.py [--seeds 20] [--radius 0.3]     # about a minute

Each net: x (4) -> Dense 16 -> op -> Dense 16 -> op -> Dense 3, weights N(0, 0.9), 5 random spec rows, a box
of the given half-width around a random centre in [-1, 1]^4. Higher is tighter; every figure is sound
(tests/test_alpha_nonlinear.py samples onnxruntime's outputs against them). Exit codes: 0, 2 (bad arguments).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from onnx import helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from certkit.bounds import alpha as alpha_mod, deeppoly as dp_mod  # noqa: E402
from certkit.bounds.alpha import alpha_lower  # noqa: E402
from certkit.bounds.deeppoly import deeppoly_lower  # noqa: E402
from certkit.bounds.fperror import input_set  # noqa: E402
from certkit.bounds.relax_elementwise import FAMILIES  # noqa: E402
from certkit.bounds.relaxations import ALPHA_PARAMS  # noqa: E402
from certkit.onnx.importer import import_model  # noqa: E402
from tests.helpers.onnx_builders import X, graph_model  # noqa: E402

OPS = (("Erf", ()), ("Sin", ()), ("Cos", ()), ("Pow", (np.float32(3.0),)), ("Sign", ()), ("Floor", ()))


@contextlib.contextmanager
def lines_fixed():
    """alpha-CROWN without the moved lines' parameters: those ops keep DeepPoly's lines."""
    saved = {cls: ALPHA_PARAMS.pop(cls) for cls in FAMILIES}
    ops_before = dp_mod.ALPHA_OPS, alpha_mod.ALPHA_OPS
    dp_mod.ALPHA_OPS = alpha_mod.ALPHA_OPS = tuple(ALPHA_PARAMS)
    try:
        yield
    finally:
        ALPHA_PARAMS.update(saved)
        dp_mod.ALPHA_OPS, alpha_mod.ALPHA_OPS = ops_before


def net(op: str, extra: tuple, seed: int):
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(0, 0.9, s).astype(np.float32)  # noqa: E731
    consts = {"W1": w(4, 16), "W2": w(16, 16), "W3": w(16, 3)}
    ins = [f"e{k}" for k in range(len(extra))]
    consts.update(dict(zip(ins, extra)))
    nodes = [helper.make_node("MatMul", [X, "W1"], ["a"]), helper.make_node(op, ["a", *ins], ["b"]),
             helper.make_node("MatMul", ["b", "W2"], ["c"]), helper.make_node(op, ["c", *ins], ["d"]),
             helper.make_node("MatMul", ["d", "W3"], ["Y"])]
    return graph_model(nodes, (1, 4), consts=consts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--radius", type=float, default=0.3)
    a = ap.parse_args(argv)
    if a.seeds < 1 or not a.radius > 0:
        ap.error("--seeds must be >= 1 and --radius > 0")
    torch.set_num_threads(1)
    print(f"{'op':<6} {'DeepPoly':>10} {'alpha, lines fixed':>19} {'alpha, lines moved':>19} {'rows tighter':>13}")
    for op, extra in OPS:
        tot = np.zeros(3)
        tighter = rows = 0
        for seed in range(a.seeds):
            g = import_model(net(op, extra, seed))
            rng = np.random.default_rng(1000 + seed)
            c = rng.uniform(-1, 1, 4)
            S = input_set(g, (c - a.radius)[None], (c + a.radius)[None])
            C = torch.tensor(rng.normal(size=(5, 3)))
            dp = deeppoly_lower(g, S, C, intersect=True)
            with lines_fixed():
                fixed = alpha_lower(g, S, C)
            moved = alpha_lower(g, S, C)
            tot += [float(dp.sum()), float(fixed.sum()), float(moved.sum())]
            tighter += int((moved > fixed + 1e-9).sum())
            rows += moved.numel()
        print(f"{op:<6} {tot[0]:10.2f} {tot[1]:19.2f} {tot[2]:19.2f} {tighter:>6} of {rows}")
    shared = ROOT.parent / "shared" / "benchmarks" / "wild" / "ml4acopf_2024"
    if shared.is_dir():
        import certkit
        from certkit.verify.certify import queries_of
        q = queries_of(certkit.load_model(shared / "onnx" / "14_ieee_ml4acopf.onnx"),
                       certkit.load_spec(shared / "vnnlib" / "14_ieee_prop6.vnnlib"))[0]
        for name, ctx in (("lines fixed", lines_fixed), ("lines moved", contextlib.nullcontext)):
            with ctx():
                t = time.perf_counter()
                low = alpha_lower(q.graph, q.region, torch.as_tensor(q.C)[None])
                print(f"ml4acopf 14_ieee_ml4acopf prop6, alpha, {name}: spec rows {np.round(low.numpy()[0], 8)}, "
                      f"{time.perf_counter() - t:.2f} s")
    else:
        print(f"ml4acopf: {shared} not found (skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
