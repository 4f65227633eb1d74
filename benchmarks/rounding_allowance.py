"""The rounding allowance at one point (issue 13): certkit's bounds on the computed output over a box that
pins every free input of a query to one value, beside the float32 output onnxruntime gives there.

Usage: python benchmarks/rounding_allowance.py [--model M.onnx --spec S.vnnlib --region K --set I=V ...]
Exit codes: 0, 2 (a bad --region or --set), 3 (a model certkit cannot read), 4 (a missing model or spec,
or one certkit cannot read).

The box keeps the query's pinned inputs as certkit bounds them (a decimal with no float32 is the interval
between its two float32 neighbours) and pins each free one to the value given by ``--set`` (else its
box's centre). Where the property's margin there (``C y - d`` of the float32 output, the worst disjunct's
best row) is smaller than the bounds' gap below that output, no sound proof over the box can close it: the
gap is the allowance for the float32 rounding of the model's operations. The default is the README's case,
nn4sys's ``cardinality_1_120_128_dual`` (region 11, inputs 207 and 221 at 0.9999) from ../shared.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
NN4SYS = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "benchmarks", "wild", "nn4sys"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(NN4SYS, "onnx", "mscn_128d_dual.onnx"))
    ap.add_argument("--spec", default=os.path.join(NN4SYS, "vnnlib", "cardinality_1_120_128_dual.vnnlib"))
    ap.add_argument("--region", type=int, default=11, help="the input region (query) of the spec")
    ap.add_argument("--set", action="append", default=None, metavar="I=V",
                    help="pin free input I to V (repeatable; default for the README's case: 207=0.9999 221=0.9999)")
    a = ap.parse_args(argv)
    for path in (a.model, a.spec):
        if not os.path.exists(path):
            print(f"rounding_allowance: {path} is missing (the default needs ../shared)", file=sys.stderr)
            return 4
    from certkit.api import load_model, load_spec
    from certkit.bounds.deeppoly import deeppoly_lower
    from certkit.bounds.fperror import row_margin
    from certkit.bounds.interval import interval_bounds
    from certkit.spec.sets import InputSet
    from certkit.verify.certify import queries_of
    from certkit.verify.gate import domain_value

    from certkit.errors import CertkitError

    try:
        model = load_model(a.model)
        queries = queries_of(model, load_spec(a.spec, model))
    except CertkitError as e:  # a model or spec certkit cannot read: its one line and exit code
        print(f"rounding_allowance: {e}", file=sys.stderr)
        return e.exit_code
    if not 0 <= a.region < len(queries):
        print(f"rounding_allowance: --region {a.region}: the spec has regions 0..{len(queries) - 1}", file=sys.stderr)
        return 2
    q = queries[a.region]
    S = q.bound_set()
    lo, hi = S.lower.clone(), S.upper.clone()
    given = q.upper > q.lower  # the inputs the spec leaves free
    sets = a.set if a.set is not None else (["207=0.9999", "221=0.9999"] if a.model.endswith("mscn_128d_dual.onnx")
                                            else [])
    x = (lo + hi)[0] / 2
    for item in sets:
        try:
            i, v = item.split("=")
            x[int(i)] = float(v)
        except (ValueError, IndexError):
            print(f"rounding_allowance: --set {item}: expected INPUT=VALUE with INPUT in 0..{x.numel() - 1}",
                  file=sys.stderr)
            return 2
    free = torch.as_tensor(given)
    lo[0, free], hi[0, free] = x[free], x[free]
    box = InputSet(lo, hi)
    xf = np.where(given, x.numpy(), q.lower).astype(np.float32)[None]
    y = np.asarray(q.runner(xf), np.float64)
    C, d = torch.as_tensor(q.C), torch.as_tensor(q.d)
    own = torch.as_tensor(q.owner)
    yt = torch.as_tensor(y)
    at_point = float(domain_value((yt @ C.T) - d, row_margin(C, d, yt, yt), own, q.n_disjuncts)[0])
    y_lo, y_hi = interval_bounds(model.graph, box)[model.graph.output]
    low = deeppoly_lower(model.graph, box, C)
    bound = float(domain_value(low - d, row_margin(C, d, y_lo, y_hi), own, q.n_disjuncts)[0])
    print(f"region {a.region}: {int(given.sum())} free input(s) {np.flatnonzero(given).tolist()} pinned to "
          f"{[round(float(x[i]), 6) for i in np.flatnonzero(given)]}")
    print(f"onnxruntime output there: {np.array2string(y[0], precision=8)}")
    print(f"interval bounds of the computed output over the box: [{np.array2string(y_lo[0].numpy(), precision=8)}, "
          f"{np.array2string(y_hi[0].numpy(), precision=8)}]")
    print(f"property margin at the point (float32 output): {at_point:.4g}")
    print(f"sound DeepPoly bound of that margin over the box: {bound:.4g}")
    print("provable there" if bound > 0 else "not provable by sound bounds: the rounding allowance exceeds the margin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
