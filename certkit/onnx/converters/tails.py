"""Output tails that are not arithmetic: ArgMax/ArgMin, OneHot, comparisons, logic ops, casts to
integers and booleans -- lowered exactly onto step functions of the real-valued tensors they read.

A segmentation net that counts its correctly classified pixels (VNN-COMP's carvana U-Nets:
Softmax -> ArgMax -> OneHot -> Equal with a mask -> ReduceSum) is a sum of indicators of linear
inequalities between its logits. Every such op is a piecewise-constant function, and the IR
already has the step it needs, :class:`~certkit.graph.elementwise.Sign` (-1, 0, 1; exact in
floating point), so each lowers *exactly* -- the same function of the computed inputs, ties
included -- onto Sign, ReLU, Abs, MaxGroup and linear maps:

* strict step ``[t > 0] = relu(sign t)``; non-strict ``[t >= 0] = 1 - relu(sign(-t))``;
  equality ``[a == b] = 1 - |sign(a - b)|`` (for floats too: ``a - b == 0`` iff ``a == b``);
* ArgMax over ``k`` entries (the first maximal index, as ONNX; ``select_last_index`` the last):
  ``I_j = min_i c_ji`` with ``c_ji = [x_j > x_i]`` for ``i < j`` and ``[x_j >= x_i]`` for ``i > j``
  (strictness swapped for the last index), all from the ``k(k-1)/2`` signs of ``x_j - x_i``; the index
  is ``sum_j j I_j``. ArgMin is ArgMax of ``-x``;
* OneHot of an integer-valued tensor: ``off + (on - off)([i == k] + [i == k - depth])`` (negative
  indices wrap, out-of-range ones give ``off`` everywhere, as the ONNX operator);
* Greater/Less/GreaterOrEqual/LessOrEqual by the steps; Not/And/Or/Xor of booleans (0/1 values:
  every boolean variable tensor comes from one of these lowerings) as ``1 - a``, ``relu(a + b - 1)``,
  ``1 - relu(1 - a - b)``, ``|a - b|``;
* Cast of a variable to a signed integer type: the identity on an integer-valued tensor (by the IR's
  structure, :func:`integral`), else truncation toward zero, ``floor(relu x) - floor(relu(-x))``;
  to bool, ``|sign x|``. Assumed: the value fits the integer type (onnxruntime's out-of-range
  float-to-int cast is undefined behaviour in C++; no count or index tail comes near 2^31).

Every backend bounds these through Sign's and Floor's relaxations (one-sided limits: an indicator is
decided where its inequality is proven on the region). The rounding of the tensors compared is
covered as for any node (bounds of computed values), so a tie that onnxruntime's rounding could
make or break is never decided wrongly. TopK, NonZero, IsNaN and IsInf stay refused, with a reason
naming the tensor to state the property on.
"""
from __future__ import annotations

import numpy as np

from ...graph import ops
from ..importer import Context, Unsupported, Var
from ..proto import TensorProto
from .base import broadcast_shape, constant, converter, expand, scale, select_from_index, variable
from .products import product

#: op type -> what it computes; refused on a variable tensor (``certkit ops`` lists them apart)
_WHAT = {
    "TopK": "the k largest values and their indices", "NonZero": "the indices of the nonzero entries",
    "IsNaN": "a boolean mask", "IsInf": "a boolean mask",
}

REFUSED_TAILS = frozenset(_WHAT)

_SIGNED_INTS = (TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64)
_INTEGRAL_LINEAR = (ops.Scale, ops.Dense, ops.Sum, ops.Select, ops.Concat, ops.SparseLinear)


@converter(*_WHAT)
def _tail(ctx: Context, node, ins: list, attrs: dict) -> list:
    src = next((name for name, v in zip(node.input, ins) if isinstance(v, Var)), node.input[0])
    raise Unsupported(f"a non-arithmetic output tail ({_WHAT[node.op_type]} of a variable tensor, a piecewise "
                      f"constant function without a lowering): state the property on the tensor '{src}' this "
                      "node reads (e.g. the logits) instead")


def _whole(a) -> bool:
    return a is None or bool(np.all(np.asarray(a) == np.round(np.asarray(a))))


def integral(ctx: Context, v: Var) -> bool:
    """Is every value of ``v`` an integer, by the IR's structure? Sign and Floor produce integers;
    ReLU, Abs, MaxGroup and copies keep them; a linear map keeps them when its coefficients and
    constants are integers."""
    memo = ctx.__dict__.setdefault("_integral", {})
    stack = [v.node]
    while stack:
        i = stack[-1]
        if i in memo:
            stack.pop()
            continue
        node = ctx.nodes[i]
        op = node.op
        if isinstance(op, (ops.Sign, ops.Floor)):
            memo[i] = True
        elif isinstance(op, (ops.Relu, ops.Abs, ops.MaxGroup)) or (
                isinstance(op, _INTEGRAL_LINEAR) and _whole(getattr(op, "scale", None))
                and _whole(getattr(op, "shift", None)) and _whole(getattr(op, "weight", None))
                and _whole(getattr(op, "bias", None)) and _whole(getattr(op, "coeffs", None))
                and _whole(getattr(op, "fill", None))):
            todo = [j for j in node.inputs if j not in memo]
            if todo:
                stack.extend(todo)
                continue
            memo[i] = all(memo[j] for j in node.inputs)
        else:
            memo[i] = False
        stack.pop()
    return memo[v.node]


# -- the steps ---------------------------------------------------------------------------------
def _sign(ctx: Context, t: Var) -> Var:
    return ctx.add(ops.Sign(integer_input=integral(ctx, t)), [t], t.shape)


def _relu(ctx: Context, t: Var) -> Var:
    return ctx.add(ops.Relu(), [t], t.shape)


def _abs(ctx: Context, t: Var) -> Var:
    return ctx.add(ops.Abs(), [t], t.shape)


def _combine(ctx: Context, a, b, k: float) -> Var:
    """``a + k b`` with broadcasting (at least one variable)."""
    if isinstance(a, Var) and isinstance(b, Var):
        shape = broadcast_shape(a.shape, b.shape)
        return ctx.add(ops.Sum((1.0, k)), [expand(ctx, a, shape), expand(ctx, b, shape)], shape)
    if isinstance(a, Var):
        return scale(ctx, a, None, k * np.asarray(b, dtype=np.float64))
    return scale(ctx, b, k, np.asarray(a, dtype=np.float64))


def _difference(ctx: Context, a, b) -> Var:
    """``a - b`` with broadcasting (at least one variable)."""
    return _combine(ctx, a, b, -1.0)


def strict_step(ctx: Context, t: Var) -> Var:
    """``[t > 0]``."""
    return _relu(ctx, _sign(ctx, t))


def equal(ctx: Context, a, b) -> Var:
    """``[a == b] = 1 - |sign(a - b)|``."""
    return scale(ctx, _abs(ctx, _sign(ctx, _difference(ctx, a, b))), -1.0, 1.0)


@converter("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")
def _compare(ctx: Context, node, ins: list, attrs: dict) -> list:
    a, b = ins
    t = node.op_type
    if t == "Equal":
        return [equal(ctx, a, b)]
    if t in ("Greater", "Less"):
        return [strict_step(ctx, _difference(ctx, a, b) if t == "Greater" else _difference(ctx, b, a))]
    # a >= b is not (b > a)
    d = _difference(ctx, b, a) if t == "GreaterOrEqual" else _difference(ctx, a, b)
    return [scale(ctx, strict_step(ctx, d), -1.0, 1.0)]


@converter("Not", "And", "Or", "Xor")
def _logic(ctx: Context, node, ins: list, attrs: dict) -> list:
    """Logic on booleans (0/1): ``1 - a``, ``relu(a + b - 1)``, ``1 - relu(1 - a - b)``, ``|a - b|``."""
    t = node.op_type
    if t == "Not":
        return [scale(ctx, variable(ins[0]), -1.0, 1.0)]
    a, b = ins
    if t == "Xor":
        return [_abs(ctx, _difference(ctx, a, b))]
    total = _combine(ctx, a, b, 1.0)
    if t == "And":
        return [_relu(ctx, scale(ctx, total, None, -1.0))]
    return [scale(ctx, _relu(ctx, scale(ctx, total, -1.0, 1.0)), -1.0, 1.0)]


def where_variable(ctx: Context, c: Var, a, b) -> Var:
    """``Where(c, a, b)`` for a variable boolean ``c`` (0/1, as every boolean variable tensor is):
    ``c a + (1 - c) b``, the same value for ``c`` in {0, 1} (of the two terms one is exactly 0, so no
    cancellation of large values). A variable branch is a :class:`~certkit.graph.bilinear.Product` with
    ``c`` or ``1 - c`` (McCormick planes over ``c`` in [0, 1] are exact at its ends); a constant one is
    linear in ``c``; two constants give one affine map, ``b + c (a - b)``. An infinite constant is
    refused (``0 * inf`` is not 0)."""
    consts = [np.asarray(v, dtype=np.float64) for v in (a, b) if not isinstance(v, Var)]
    if any(not np.all(np.isfinite(k)) for k in consts):
        raise Unsupported("an infinite or NaN constant selected by a variable condition (write a large "
                          "finite value instead: 0 * inf is NaN)")
    shape = broadcast_shape(c.shape, *[v.shape if isinstance(v, Var) else np.shape(v) for v in (a, b)])
    if not isinstance(a, Var) and not isinstance(b, Var):
        ka, kb = (np.broadcast_to(np.asarray(v, np.float64), shape) for v in (a, b))
        return scale(ctx, c, ka - kb, kb, shape)
    terms = []
    for v, on in ((a, True), (b, False)):
        if isinstance(v, Var):
            w = c if on else scale(ctx, c, -1.0, 1.0)
            terms.append(product(ctx, expand(ctx, w, shape), expand(ctx, v, shape)))
        else:
            k = np.broadcast_to(np.asarray(v, np.float64), shape)
            terms.append(scale(ctx, c, k, None, shape) if on else scale(ctx, c, -k, k, shape))
    return _combine(ctx, terms[0], terms[1], 1.0)


# -- casts -------------------------------------------------------------------------------------
def cast_to_integer(ctx: Context, x: Var, to: int) -> Var:
    """Cast of a variable to ``to`` (a signed integer type or bool), see the module docstring."""
    if to == TensorProto.BOOL:
        return _abs(ctx, _sign(ctx, x))
    if to not in _SIGNED_INTS:
        raise Unsupported(f"cast of a variable tensor to {TensorProto.DataType.Name(to)} (signed integer and "
                          "bool casts are lowered; an unsigned cast wraps negative values)")
    if integral(ctx, x):
        return x
    up = ctx.add(ops.Floor(), [_relu(ctx, x)], x.shape)
    down = ctx.add(ops.Floor(), [_relu(ctx, scale(ctx, x, -1.0, None))], x.shape)
    return ctx.add(ops.Sum((1.0, -1.0)), [up, down], x.shape)


# -- ArgMax / ArgMin ---------------------------------------------------------------------------
@converter("ArgMax", "ArgMin")
def _argmax(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = variable(ins[0])
    r = len(x.shape)
    axis = int(attrs.get("axis", 0))
    if not -r <= axis < r:
        raise Unsupported(f"axis {axis} for a tensor of rank {r}")
    axis %= r
    k = x.shape[axis]
    out_shape = tuple(1 if a == axis else s for a, s in enumerate(x.shape)) if attrs.get("keepdims", 1) else \
        tuple(s for a, s in enumerate(x.shape) if a != axis)
    last = bool(attrs.get("select_last_index", 0))
    lines = np.moveaxis(np.arange(x.size).reshape(x.shape), axis, -1).reshape(-1, k)  # (P, k)
    P = lines.shape[0]
    if k == 1:
        return [np.zeros(out_shape, dtype=np.int64)]
    pairs = [(i, j) for j in range(k) for i in range(j)]  # i < j
    pos = {p: n for n, p in enumerate(pairs)}
    # d_ij = x_j - x_i (ArgMin: x_i - x_j), one SparseLinear row per position and pair
    index = np.stack([np.stack([lines[:, j], lines[:, i]], axis=1) for i, j in pairs], axis=1).reshape(-1, 2)
    w = np.tile(np.array([1.0, -1.0] if node.op_type == "ArgMax" else [-1.0, 1.0]), (index.shape[0], 1))
    d = ctx.add(ops.SparseLinear(index.astype(np.int64), w, x.size), [x], (P, len(pairs)))
    # first index: R = [d > 0], c_ji = R_ij (i < j), 1 - R_ji (i > j); last index: R = [d < 0],
    # c_ji = 1 - R_ij (i < j), R_ji (i > j)
    R = strict_step(ctx, scale(ctx, d, -1.0, None) if last else d)
    src = np.zeros((P, k, k - 1), dtype=np.int64)
    sgn = np.zeros((k, k - 1))
    off = np.zeros((k, k - 1))
    for j in range(k):
        for m, i in enumerate(c for c in range(k) if c != j):
            src[:, j, m] = np.arange(P) * len(pairs) + pos[(min(i, j), max(i, j))]
            direct = (i < j) != last
            sgn[j, m], off[j, m] = (1.0, 0.0) if direct else (-1.0, 1.0)
    # -c (so that min_i c = -max_i(-c)), positions x (j, i) flattened
    neg = scale(ctx, select_from_index(ctx, R, src.reshape(P, k * (k - 1))),
                np.broadcast_to(-sgn.reshape(-1), (P, k * (k - 1))), np.broadcast_to(-off.reshape(-1), (P, k * (k - 1))))
    if k > 2:
        neg = ctx.add(ops.MaxGroup(np.arange(P * k * (k - 1), dtype=np.int64).reshape(P * k, k - 1)), [neg], (P, k))
    # index = sum_j j I_j = sum_j -j * max_i(-c_ji)
    rows = np.arange(P * k).reshape(P, k)[:, 1:]
    weights = np.broadcast_to(-np.arange(1, k, dtype=np.float64), rows.shape).copy()
    return [ctx.add(ops.SparseLinear(rows.astype(np.int64), weights, P * k), [neg], out_shape)]


# -- OneHot ------------------------------------------------------------------------------------
@converter("OneHot")
def _onehot(ctx: Context, node, ins: list, attrs: dict) -> list:
    idx = variable(ins[0], "the indices")
    depth = int(np.asarray(constant(ins[1], "depth")).reshape(-1)[0])
    values = np.asarray(constant(ins[2], "values"), dtype=np.float64).reshape(-1)
    if depth < 1 or values.size != 2:
        raise Unsupported(f"depth {depth} and {values.size} values (need depth >= 1 and [off, on])")
    if not integral(ctx, idx):
        raise Unsupported("OneHot of a variable tensor that is not integer-valued by construction (its indices "
                          "must come from ArgMax, a comparison or an integer cast)")
    r = len(idx.shape) + 1
    axis = int(attrs.get("axis", -1))
    if not -r <= axis < r:
        raise Unsupported(f"axis {axis} for an output of rank {r}")
    axis %= r
    n = idx.size
    # t[p, k] = idx_p - k, t[p, depth + k] = idx_p - (k - depth)
    src = np.repeat(np.arange(n), 2 * depth).reshape(n, 2 * depth)
    shift = -np.concatenate([np.arange(depth), np.arange(depth) - depth]).astype(np.float64)
    t = scale(ctx, select_from_index(ctx, idx, src), None, np.broadcast_to(shift, (n, 2 * depth)))
    a = _abs(ctx, _sign(ctx, t))  # 1 - [idx == c]
    # out = off + (on - off) (2 - a_k - a_{depth + k}), laid out as idx.shape with depth at ``axis``
    lay = np.moveaxis(np.arange(n * depth).reshape(idx.shape + (depth,)), -1, axis)
    p, kk = np.divmod(lay.reshape(-1), depth)
    rows = np.stack([p * 2 * depth + kk, p * 2 * depth + depth + kk], axis=1)
    span = values[1] - values[0]
    summed = ctx.add(ops.SparseLinear(rows.astype(np.int64), np.full(rows.shape, -span), n * 2 * depth), [a],
                     lay.shape)
    return [scale(ctx, summed, None, np.full(lay.shape, values[0] + 2.0 * span))]
