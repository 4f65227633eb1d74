"""Converters of the affine ops: Gemm, MatMul, elementwise arithmetic with constants, Neg,
BatchNormalization (inference mode) and ReduceSum/ReduceMean.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Unsupported, Var
from . import normalize, products
from .base import broadcast_shape, constant, converter, expand, flat, scale, select_from_index, variable


@converter("Gemm")
def _gemm(ctx: Context, node, ins: list, attrs: dict) -> list:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if not isinstance(a, Var) or isinstance(b, Var) or isinstance(c, Var):
        raise Unsupported("Gemm needs a variable A and constant B, C")
    if attrs.get("transA", 0):
        raise Unsupported("transA=1 on a variable input")
    if len(a.shape) != 2:
        raise ModelError(f"Gemm node {ctx.node_name}: input A has rank {len(a.shape)}, not 2")
    w = np.asarray(b, dtype=np.float64)
    w = w if attrs.get("transB", 0) else w.T  # (n_out, n_in)
    w = alpha * w
    if w.ndim != 2 or w.shape[1] != a.shape[1]:
        raise ModelError(f"Gemm node {ctx.node_name}: B of shape {np.shape(b)} does not fit A {a.shape}")
    rows = a.shape[0]
    out_shape = (a.shape[0], w.shape[0])
    bias = None
    if c is not None:
        cb = beta * np.broadcast_to(np.asarray(c, dtype=np.float64), out_shape)
        if (cb == cb[:1]).all():
            bias = cb[0].copy()
        else:
            y = ctx.add(ops.Dense(w, None, rows), [a], out_shape)
            return [scale(ctx, y, None, cb, out_shape)]
    return [ctx.add(ops.Dense(w, bias, rows), [a], out_shape)]


@converter("MatMul")
def _matmul(ctx: Context, node, ins: list, attrs: dict) -> list:
    """``x @ W`` for a constant ``W`` (numpy matmul semantics, incl. vector and batched ``W``)."""
    a, b = ins
    if isinstance(b, Var):  # products of variables, or a constant left operand (products.py)
        return [products.matmul(ctx, a, b)]
    w = np.asarray(b, dtype=np.float64)
    k = a.shape[-1] if a.shape else 0
    if w.ndim == 0 or w.shape[-2 if w.ndim > 1 else 0] != k:
        raise ModelError(f"MatMul node {ctx.node_name}: shapes {a.shape} and {w.shape} do not match")
    if w.ndim == 1:  # matrix-vector product: the last axis disappears
        w2, out_shape = w[:, None], tuple(a.shape[:-1])
    elif w.ndim == 2:
        w2, out_shape = w, tuple(a.shape[:-1]) + (w.shape[1],)
    else:
        if any(d != 1 for d in w.shape[:-2]):
            raise Unsupported("a batched constant operand with a batch dimension other than 1")
        w2 = w.reshape(w.shape[-2:])
        a_batch, m = (tuple(a.shape[:-2]), (a.shape[-2],)) if len(a.shape) > 1 else ((), ())
        out_shape = broadcast_shape(a_batch, w.shape[:-2]) + m + (w.shape[-1],)
    rows = a.size // k
    return [ctx.add(ops.Dense(w2.T.copy(), None, rows), [a], out_shape)]


@converter("Add", "Sub", "Mul", "Div")
def _arith(ctx: Context, node, ins: list, attrs: dict) -> list:
    x, y = ins
    t = node.op_type
    if isinstance(x, Var) and isinstance(y, Var):
        if t in ("Mul", "Div"):  # not linear: products.py
            return [products.product(ctx, x, y) if t == "Mul" else products.divide(ctx, x, y)]
        shape = broadcast_shape(x.shape, y.shape)
        x, y = expand(ctx, x, shape), expand(ctx, y, shape)
        return [ctx.add(ops.Sum((1.0, 1.0 if t == "Add" else -1.0)), [x, y], shape)]
    if isinstance(x, Var):
        c = np.asarray(y, dtype=np.float64)
        if t == "Add":
            return [scale(ctx, x, None, c)]
        if t == "Sub":
            return [scale(ctx, x, None, -c)]
        if t == "Mul":
            return [scale(ctx, x, c, None)]
        if np.asarray(y).dtype.kind in "iu":
            raise Unsupported("integer division")
        if (c == 0).any():
            raise Unsupported("division by zero constant")
        return [scale(ctx, x, 1.0 / c, None)]
    c = np.asarray(x, dtype=np.float64)
    if t == "Add":
        return [scale(ctx, y, None, c)]
    if t == "Sub":
        return [scale(ctx, y, -1.0, c)]
    if t == "Mul":
        return [scale(ctx, y, c, None)]
    return [products.divide(ctx, np.asarray(x), y)]  # c / y: not linear (products.py)


@converter("Neg")
def _neg(ctx: Context, node, ins: list, attrs: dict) -> list:
    return [scale(ctx, variable(ins[0]), -1.0, None)]


@converter("BatchNormalization")
def _batchnorm(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = variable(ins[0])
    if attrs.get("training_mode"):
        raise Unsupported("training mode")
    if ctx.opset < 7 and not attrs.get("is_test", 0):
        raise Unsupported("is_test=0 (training mode) before opset 7")
    if ctx.opset < 9 and not attrs.get("spatial", 1):
        raise Unsupported("spatial=0 (per-element statistics)")
    if any(ctx.uses(o) for o in node.output[1:]):
        raise Unsupported("the training-mode outputs (running mean/variance)")
    if len(x.shape) < 2:
        raise ModelError(f"BatchNormalization node {ctx.node_name}: input of rank {len(x.shape)}")
    gamma, beta, mean, var = (np.asarray(constant(v, "BatchNormalization parameters"), np.float64) for v in ins[1:5])
    eps = float(attrs.get("epsilon", 1e-5))
    den = (var + eps).reshape(-1)
    bad = np.flatnonzero(~(den > 0))  # NaN included; onnxruntime then outputs inf or NaN
    if bad.size:
        raise ModelError(f"BatchNormalization node {ctx.node_name}: var + epsilon = {den[bad[0]]:g} "
                         f"is not positive in channel {int(bad[0])} ({bad.size} channel(s) in all)")
    a = gamma / np.sqrt(var + eps)
    c = beta - mean * a
    bshape = (1, -1) + (1,) * (len(x.shape) - 2)
    y = scale(ctx, x, a.reshape(bshape), c.reshape(bshape), x.shape)
    # onnxruntime computes (x - mean) * inv_std * gamma + beta: its intermediate magnitudes are
    # |a| (|x| + |mean|) and |beta|, not |a x| and |c| (mean * a and beta may cancel in c), and the
    # factor a itself is rounded a few times (sqrt, division, product): certkit.bounds.fperror
    magnitude = flat((np.abs(a * mean) + np.abs(beta)).reshape(bshape), x.shape)
    node_ = ctx.nodes[y.node]
    ctx.nodes[y.node] = dataclasses.replace(node_, op=dataclasses.replace(node_.op, fp_extra=4, fp_bias=magnitude))
    return [y] + [None] * (len(node.output) - 1)


@converter("ReduceSum", "ReduceMean")
def _reduce(ctx: Context, node, ins: list, attrs: dict) -> list:
    """A :class:`Select` moving the reduced axes last, then a row-wise all-ones :class:`Dense`."""
    x = variable(ins[0])
    axes = attrs.get("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = [int(a) for a in np.asarray(constant(ins[1], "axes")).reshape(-1)]
    r = len(x.shape)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(r))
    axes = sorted({int(a) % r for a in axes})
    keep = attrs.get("keepdims", 1)
    kept = [i for i in range(r) if i not in axes]
    moved = np.transpose(np.arange(x.size).reshape(x.shape), kept + axes)
    n_red = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    v = select_from_index(ctx, x, moved)
    w = np.full((1, n_red), 1.0 / n_red if node.op_type == "ReduceMean" else 1.0)
    out_shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape)) if keep else \
        tuple(x.shape[i] for i in kept)
    y = ctx.add(ops.Dense(w, None, x.size // n_red), [v], out_shape)
    if node.op_type == "ReduceMean":  # a variance onnxruntime fuses into its LayerNorm kernel (normalize.py)
        y = normalize.variance_budget(ctx, x, moved, n_red, y)
    return [y]
