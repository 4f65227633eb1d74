"""Converters of the elementwise nonlinear ops: Relu, LeakyRelu, Sigmoid, Tanh, Softplus, Abs,
Clip, Max/Min and HardSigmoid.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Var
from .base import broadcast_shape, constant, converter, expand, flat, scale, variable


def _unary(op_factory):
    def conv(ctx: Context, node, ins: list, attrs: dict) -> list:
        x = variable(ins[0])
        return [ctx.add(op_factory(attrs, x), [x], x.shape)]
    return conv


converter("Relu")(_unary(lambda a, x: ops.Relu()))
converter("LeakyRelu")(_unary(lambda a, x: ops.LeakyRelu(float(a.get("alpha", 0.01)))))
converter("Sigmoid")(_unary(lambda a, x: ops.Sigmoid()))
converter("Tanh")(_unary(lambda a, x: ops.Tanh()))
converter("Softplus")(_unary(lambda a, x: ops.Softplus()))
converter("Abs")(_unary(lambda a, x: ops.Abs()))


def _clip_bound(v, default: float, what: str, ctx: Context) -> np.ndarray:
    if v is None:
        return np.float64(default)
    a = np.asarray(constant(v, f"Clip {what}"), np.float64)
    if a.ndim > 1 or a.size != 1:  # onnxruntime: "min should be a scalar" (rank 0, or 1-D of size 1)
        raise ModelError(f"Clip node {ctx.node_name}: {what} of shape {a.shape} is not a scalar")
    return a.reshape(())


@converter("Clip")
def _clip(ctx: Context, node, ins: list, attrs: dict) -> list:
    """``min(max(x, lo), hi)``. With ``lo > hi`` onnxruntime returns ``hi`` everywhere (opset >= 11;
    before, it refuses the model): the IR gets ``lo := min(lo, hi)``, the same function, so that
    every relaxation may assume ``lo <= hi``."""
    x = variable(ins[0])
    if ctx.opset < 11:
        lo, hi = np.float64(attrs.get("min", -np.inf)), np.float64(attrs.get("max", np.inf))
        if lo > hi:
            raise ModelError(f"Clip node {ctx.node_name}: min {lo:g} > max {hi:g} "
                             f"(onnxruntime refuses it before opset 11)")
    else:
        lo = _clip_bound(ins[1] if len(ins) > 1 else None, -np.inf, "min", ctx)
        hi = _clip_bound(ins[2] if len(ins) > 2 else None, np.inf, "max", ctx)
    return [ctx.add(ops.Clip(flat(np.minimum(lo, hi), x.shape), flat(hi, x.shape)), [x], x.shape)]


@converter("Max", "Min")
def _maxmin(ctx: Context, node, ins: list, attrs: dict) -> list:
    is_max = node.op_type == "Max"
    variables = [v for v in ins if isinstance(v, Var)]
    consts = [np.asarray(v, np.float64) for v in ins if not isinstance(v, Var)]
    shape = broadcast_shape(*[v.shape for v in variables], *[c.shape for c in consts])
    variables = [expand(ctx, v, shape) for v in variables]
    if len(variables) > 1:  # min(x, y) = -max(-x, -y)
        if not is_max:
            variables = [scale(ctx, v, -1.0, None) for v in variables]
        n = variables[0].size
        cat = ctx.add(ops.Concat(tuple(n for _ in variables)), variables, (1, len(variables) * n))
        idx = np.stack([np.arange(n) + k * n for k in range(len(variables))], axis=1).astype(np.int64)
        y = ctx.add(ops.MaxGroup(idx), [cat], shape)
        if not is_max:
            y = scale(ctx, y, -1.0, None)
    else:
        y = variables[0]
    if consts:
        c = consts[0]
        for other in consts[1:]:
            c = np.maximum(c, other) if is_max else np.minimum(c, other)
        lo = flat(c, shape) if is_max else np.full(y.size, -np.inf)
        hi = np.full(y.size, np.inf) if is_max else flat(c, shape)
        y = ctx.add(ops.Clip(lo, hi), [y], shape)
    return [y]


@converter("HardSigmoid")
def _hardsigmoid(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = variable(ins[0])
    a, b = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    y = scale(ctx, x, a, b)
    return [ctx.add(ops.Clip(np.zeros(y.size), np.ones(y.size)), [y], y.shape)]
