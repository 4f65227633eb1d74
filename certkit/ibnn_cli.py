"""``certkit ibnn MODEL.onnx [--input X.npy | --dataset D.npz --index I] [--json OUT.json]`` (paper 003;
the analysis is :mod:`certkit.ibnn`)."""
from __future__ import annotations

import argparse
import json

from .cli_paths import output_path
from .errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model with implicit-bias layers (certkit.nn.IBNNLinear / IBNNConv2d)")
    p.add_argument("--input", metavar="X.npy", help="a model input: report each layer's fixed point there, "
                   "with a certified enclosure")
    p.add_argument("--dataset", metavar="D.npz", help="take the input from this data set (x, y) ...")
    p.add_argument("--index", type=int, default=0, help="... at this index (default 0)")
    p.add_argument("--json", metavar="OUT.json", type=output_path, help="write the report as JSON")


def _input(a, n_inputs: int):
    import numpy as np

    if a.input and a.dataset:
        raise UsageError("give --input or --dataset, not both")
    if not a.input and not a.dataset:
        return None
    path = a.input or a.dataset
    try:
        x = np.load(path) if a.input else np.load(path)["x"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{path}: cannot read {'the input' if a.input else 'x from the data set'} "
                         f"({type(e).__name__}: {e})") from None
    if a.dataset:
        if not 0 <= a.index < len(x):
            raise UsageError(f"{path}: --index {a.index} is outside 0..{len(x) - 1}")
        x = x[a.index]
    x = np.asarray(x, np.float64).reshape(-1)
    if x.size != n_inputs:
        raise UsageError(f"{path}: the input has {x.size} values, the model takes {n_inputs}")
    return x


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def run_cli(a) -> int:
    from .ibnn import analyse
    from .model import load_model

    m = load_model(a.model)
    x = _input(a, m.graph.n_inputs)
    rep = analyse(m.graph, a.model, x)
    print(f"model: {a.model}  ({len(rep.layers)} implicit-bias layer(s))")
    for name, why in rep.inlined.items():
        print(f"  function {name}: analysed op by op as onnxruntime runs it, not as an implicit layer: {why}")
    for L in rep.layers:
        print(f"  layer {L.name} (node '{L.node}'): {L.groups} x {L.m}, kernel {L.kernel or '?'}; lambda {L.lam:.4g}, "
              f"sigma = {L.beta:.4g} tanh({L.alpha:.4g} t) (c = {L.c:.4g}); {L.K} steps, eta {L.eta:g} "
              f"(recorded tol {L.tol:.3g})")
        print(f"    q = 2|c| alpha max r = {L.q:.4g} (max r = {L.r_max:.4g}), q_E = |c| alpha Lambda = {_g(L.q_energy)}; "
              f"thresholds |lambda| < {L.lam_contraction:.4g} (contraction), lambda < {_g(L.lam_energy)} (energy)")
        for c in L.conclusions:
            print(f"    => {c}")
        print(f"    Lipschitz of a -> z_K: {L.lipschitz_inf:.4g} (L_inf), {L.lipschitz_2:.4g} (L_2)")
        f = L.at_input
        if f is not None:
            kr = (f"Krawczyk: the only fixed point in z~ +- {f.krawczyk_box:.3g}, within {f.radius_krawczyk:.3g}"
                  if f.radius_krawczyk is not None else "Krawczyk: test failed")
            print(f"    at the input: z~ after {f.iterations} iterations, ||G(z~) - z~|| = {f.residual:.3g}; "
                  f"|z~ - z*| <= {_g(f.radius_contraction)} (contraction); {kr}; the file's z_K is "
                  f"{f.file_distance:.3g} from z~")
    if not rep.layers and not rep.inlined:
        print("  no implicit-bias layer (certkit recognises the layers certkit.nn exports)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rep.to_dict(), fh, indent=1)
    return 0
