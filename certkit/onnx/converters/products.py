"""Converters of products of variable tensors: ``Mul`` and ``Div`` of two variable tensors (called
from :mod:`.affine`, which handles their linear cases), ``MatMul`` with a variable right operand
(a variable left operand gives products; a constant one, a linear map).

Lowerings (each the same function as the ONNX op):

* ``x * y`` -> both operands broadcast by a :class:`~certkit.graph.ops.Select` (``expand``), then a
  :class:`~certkit.graph.bilinear.Product`; ``x * x`` is a Product of one node with itself (its
  relaxation knows it is a square).
* ``x / y`` -> ``x * Reciprocal(y)``, ``c / y`` -> ``c * Reciprocal(y)``. Floating point: onnxruntime
  rounds the quotient once; the IR's exact ``x * (1 / y)`` is the exact quotient, and the product's
  (or the scale's) error rule covers that one rounding, so the reciprocal's own error is slack.
* ``A @ B`` with both variable -> ``A`` and ``B`` copied to the pairwise layout ``(..., m, n, k)``
  (two Selects; a copy that keeps every element in place is an alias), their Product, and a
  row-wise all-ones :class:`~certkit.graph.ops.Dense` summing over ``k``: ``(batch, m, n, k)``
  products, which is small for the attention of a vision transformer (3 heads x 17 x 17 x 16).
  Floating point: onnxruntime's dot products (any order, FMA or not) round each product at most
  once (the Product's rule) and each partial sum once (the Dense's rule).
* ``C @ B`` with ``C`` constant -> ``B`` with its last two axes swapped (a Select, an alias when
  ``B`` has one column), a :class:`~certkit.graph.ops.Dense` of weight ``C`` applied per column,
  and the axes swapped back.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Unsupported, Var
from .base import alias, broadcast_shape, expand, scale, select_from_index


def product(ctx: Context, x: Var, y: Var) -> Var:
    """``x * y`` of two variable tensors (numpy broadcasting)."""
    shape = broadcast_shape(x.shape, y.shape)
    if x.node == y.node and x.shape == y.shape:
        x = expand(ctx, x, shape)  # one node on both inputs: a square
        return ctx.add(ops.Product(square=True), [x, x], shape)
    x, y = expand(ctx, x, shape), expand(ctx, y, shape)
    return ctx.add(ops.Product(), [x, y], shape)


def reciprocal(ctx: Context, y: Var) -> Var:
    return ctx.add(ops.Reciprocal(), [y], y.shape)


def divide(ctx: Context, x, y: Var) -> Var:
    """``x / y`` for a variable ``y`` and a variable or constant ``x``."""
    r = reciprocal(ctx, y)
    if isinstance(x, Var):
        return product(ctx, x, r)
    c = np.asarray(x)
    if c.dtype.kind in "iu":
        raise Unsupported("integer division")
    return scale(ctx, r, c.astype(np.float64), None)


def _as_matrices(a_shape: tuple[int, ...], b_shape: tuple[int, ...], where: str):
    """numpy matmul shapes: a vector operand is a row (left) or a column (right) whose axis is
    dropped from the result. Returns ``(a2, b2, batch, out_shape)``."""
    if not a_shape or not b_shape:
        raise ModelError(f"MatMul node {where}: a scalar operand")
    a2 = a_shape if len(a_shape) > 1 else (1,) + tuple(a_shape)
    b2 = b_shape if len(b_shape) > 1 else tuple(b_shape) + (1,)
    if a2[-1] != b2[-2]:
        raise ModelError(f"MatMul node {where}: shapes {a_shape} and {b_shape} do not match")
    try:
        batch = broadcast_shape(a2[:-2], b2[:-2])
    except ValueError:
        raise ModelError(f"MatMul node {where}: batch dimensions of {a_shape} and {b_shape} do not broadcast")
    out = batch + ((a2[-2],) if len(a_shape) > 1 else ()) + ((b2[-1],) if len(b_shape) > 1 else ())
    return tuple(a2), tuple(b2), batch, out


def matmul(ctx: Context, a, b: Var) -> Var:
    """``a @ b`` for a variable ``b`` (numpy matmul semantics, batch dimensions broadcast)."""
    if not isinstance(a, Var):
        return _constant_left(ctx, np.asarray(a, dtype=np.float64), b)
    a2, b2, batch, out_shape = _as_matrices(a.shape, b.shape, ctx.node_name)
    m, k, n = a2[-2], a2[-1], b2[-1]
    pair = batch + (m, n, k)
    ia = np.broadcast_to(np.arange(a.size).reshape(a2), batch + (m, k))[..., :, None, :]
    ib = np.swapaxes(np.broadcast_to(np.arange(b.size).reshape(b2), batch + (k, n)), -1, -2)[..., None, :, :]
    xa = select_from_index(ctx, a, np.broadcast_to(ia, pair).copy())
    xb = select_from_index(ctx, b, np.broadcast_to(ib, pair).copy())
    p = product(ctx, xa, xb)
    rows = int(np.prod(pair[:-1], dtype=np.int64))
    return ctx.add(ops.Dense(np.ones((1, k)), None, rows), [p], out_shape)


def _constant_left(ctx: Context, c: np.ndarray, b: Var) -> Var:
    """``C @ B`` for a constant ``C``: linear, a Dense of weight ``C`` on the columns of ``B``."""
    a2, b2, batch, out_shape = _as_matrices(c.shape, b.shape, ctx.node_name)
    if any(d != 1 for d in a2[:-2]):
        raise Unsupported("a constant left operand with batch dimensions other than 1")
    w = c.reshape(a2[-2:])  # (m, k)
    m, k, n = w.shape[0], w.shape[1], b2[-1]
    cols = np.swapaxes(np.broadcast_to(np.arange(b.size).reshape(b2), batch + (k, n)), -1, -2)  # (..., n, k)
    bt = select_from_index(ctx, b, cols.copy())
    rows = int(np.prod(batch + (n,), dtype=np.int64))
    y = ctx.add(ops.Dense(w.copy(), None, rows), [bt], batch + (n, m))
    back = np.swapaxes(np.arange(y.size).reshape(batch + (n, m)), -1, -2)  # (..., m, n)
    return alias(select_from_index(ctx, y, back.copy()), out_shape)
