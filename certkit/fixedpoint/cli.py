"""``certkit fixedpoint MODEL.onnx [--json OUT.json]`` (paper 001; DESIGN.md section 6)."""
from __future__ import annotations

import argparse
import json

from ..cli_paths import output_path
from ..errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model mapping R^k -> R^k (e.g. an autoencoder)")
    p.add_argument("--json", metavar="OUT.json", type=output_path,
                   help="write the full report (fixed point included) as JSON")
    p.add_argument("--max-iter", type=int, default=100000, help="iterations from 0 at most (default 100000)")
    p.add_argument("--tol", type=float, default=1e-10, help="stop when ||T(x) - x||_inf <= TOL (default 1e-10)")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def run_cli(a) -> int:
    from ..model import load_model
    from .analysis import analyse

    if a.max_iter < 1 or not a.tol > 0:
        raise UsageError("--max-iter must be >= 1 and --tol > 0")
    m = load_model(a.model)
    rep = analyse(m.graph, a.model, a.max_iter, a.tol)
    print(f"model: {a.model}  (R^{rep.k} -> R^{rep.k}, {len(rep.layers)} layers)")
    for lay in rep.layers:
        ok = "monotone" if lay.monotone else "NOT monotone"
        ok += ", weakly scalable" if lay.weakly_scalable else ", not weakly scalable"
        print(f"  layer {lay.index}: {lay.n_in} -> {lay.n_out}, {lay.activation}; min weight {lay.min_weight:.3g}, "
              f"min bias {lay.min_bias:.3g}: {ok}" + (f" ({'; '.join(lay.reasons)})" if lay.reasons else ""))
    print(f"T: monotone {rep.monotone}, weakly scalable {rep.weakly_scalable}, scalable {rep.scalable}")
    if rep.rho_upper is not None:
        print(f"rho(T_inf): in [{_fmt(rep.rho_lower)}, {_fmt(rep.rho_upper)}] (Collatz-Wielandt; tail factor "
              f"{rep.tail_factor:g})")
    if rep.norm_product is not None:
        print(f"prod_i ||W_i||_2 = {rep.norm_product:.6g}   ||W_n ... W_1||_2 = {rep.product_norm:.6g}   "
              f"(layer norms {', '.join(f'{v:.4g}' for v in rep.layer_norms)})")
    for c in rep.conclusions:
        print(f"=> {c}")
    if rep.fixed_point is not None:
        state = "converged" if rep.converged else "NOT converged"
        print(f"iteration from 0: {state} after {rep.iterations} steps; ||T(x) - x||_inf = {rep.residual_inf:.3g}, "
              f"||T(x) - x||_2 = {rep.residual_2:.3g}; ||x||_inf = {max(map(abs, rep.fixed_point)):.6g}, "
              f"sum x = {sum(rep.fixed_point):.6g}")
    for n in rep.notes:
        print(f"note: {n}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rep.to_dict(), f, indent=1)
    return 0
