"""Converters of the unary elementwise nonlinear ops of :mod:`certkit.graph.elementwise`: Exp, Log,
Reciprocal, Sqrt, Sin, Cos, Erf, Sign, Floor, and Pow with a constant scalar exponent.

Pow lowerings (each the same function as onnxruntime's ``pow`` on float32): exponent 1 is the
identity (no node), exponent 0 the constant 1 (a Scale ``0 x + 1``: onnxruntime gives 1 for every
x), -1 a Reciprocal, anything else an :class:`~certkit.graph.elementwise.Pow` of the exponent's
float32 value. A variable exponent, a non-scalar one, or an integer base is refused.
"""
from __future__ import annotations

import numpy as np

from ...graph import ops
from ..importer import Context, Unsupported, Var
from .base import converter, scale, variable


def _unary(op_factory):
    def conv(ctx: Context, node, ins: list, attrs: dict) -> list:
        x = variable(ins[0])
        return [ctx.add(op_factory(), [x], x.shape)]
    return conv


for _name, _cls in (("Exp", ops.Exp), ("Log", ops.Log), ("Reciprocal", ops.Reciprocal), ("Sqrt", ops.Sqrt),
                    ("Sin", ops.Sin), ("Cos", ops.Cos), ("Erf", ops.Erf), ("Sign", ops.Sign),
                    ("Floor", ops.Floor)):
    converter(_name)(_unary(_cls))


@converter("Pow")
def _pow(ctx: Context, node, ins: list, attrs: dict) -> list:
    """``x ^ p`` for a variable ``x`` and a constant scalar ``p`` (ONNX Pow broadcasts ``p``)."""
    x, p = ins
    x = variable(x, "the base of Pow")
    if isinstance(p, Var):
        raise Unsupported("Pow with a variable exponent (only a constant scalar exponent is supported)")
    e = np.asarray(p)
    if e.size != 1:
        raise Unsupported(f"Pow with a non-scalar exponent of shape {e.shape} (only a constant scalar "
                          "exponent is supported)")
    # the broadcast of a one-element exponent may add leading axes to the result
    shape = tuple(int(s) for s in np.broadcast_shapes(x.shape, e.shape))
    if shape != x.shape:
        raise Unsupported(f"Pow whose exponent of shape {e.shape} broadcasts the base {x.shape} to {shape}")
    if e.dtype.kind in "fiu":
        v = float(e.reshape(()))  # the stored value (a float32 exponent is exact in float64)
    else:
        raise Unsupported(f"Pow with an exponent of type {e.dtype}")
    if not np.isfinite(v):
        raise Unsupported(f"Pow with a non-finite exponent {v}")
    if v == 1.0:
        return [x]
    if v == 0.0:
        return [scale(ctx, x, 0.0, 1.0)]
    if v == -1.0:
        return [ctx.add(ops.Reciprocal(), [x], x.shape)]
    return [ctx.add(ops.Pow(v), [x], x.shape)]
