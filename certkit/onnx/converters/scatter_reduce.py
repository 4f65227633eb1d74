"""Converters of ScatterND (constant indices), Where and ReduceMax/ReduceMin (a Where with a variable
condition is :func:`.tails.where_variable`'s).

ScatterND and Where only route elements: each output element is a copy of one element of one
of their inputs, chosen by constants. Their converter numbers the elements of all the inputs
consecutively, computes which one every output element copies (ScatterND by the ONNX reference
evaluator on the numbers, as the data-movement converter does; Where by ``numpy.where`` on the
broadcast numbers), and emits one :class:`~certkit.graph.ops.Select` reading the variable inputs
(a :class:`~certkit.graph.ops.Concat` of them when there are several), with the copies of
constant inputs as its constant fill.

ReduceMax is a :class:`~certkit.graph.ops.MaxGroup` with one row of input positions per output
element; ReduceMin is ``-max(-x)`` (as Min of tensors, :mod:`.activations`).
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Unsupported, Var, _fold
from .base import alias, constant, converter, scale
from .tails import where_variable


def _route(ctx: Context, parts: list, src: np.ndarray) -> Var:
    """The tensor whose element ``i`` is element ``src[i]`` of the inputs ``parts`` (variables or
    constants) numbered one after the other; ``src`` is shaped like the output."""
    sizes = [p.size if isinstance(p, Var) else int(np.size(p)) for p in parts]
    offsets = np.cumsum([0] + sizes[:-1])
    variables = [p for p in parts if isinstance(p, Var)]
    # position of each numbered element in the concatenation of the variables (-1: a constant)
    pos, values = [], []
    v_off = 0
    for p, n in zip(parts, sizes):
        if isinstance(p, Var):
            pos.append(np.arange(n) + v_off)
            values.append(np.zeros(n))
            v_off += n
        else:
            pos.append(np.full(n, -1))
            values.append(np.asarray(p, np.float64).reshape(-1))
    pos, values = np.concatenate(pos), np.concatenate(values)
    flat = src.reshape(-1)
    if (flat < 0).any() or (flat >= offsets[-1] + sizes[-1]).any():
        raise ModelError(f"node {ctx.node_name}: an element index out of range")
    index, fill = pos[flat].astype(np.int64), values[flat]
    if len(variables) == 1:
        x = variables[0]
    else:
        x = ctx.add(ops.Concat(tuple(v.size for v in variables)), variables, (1, sum(v.size for v in variables)))
    if (index >= 0).all() and index.size == x.size and np.array_equal(index, np.arange(x.size)):
        return alias(x, src.shape)
    has_fill = (index < 0).any() and np.any(fill[index < 0] != 0)
    return ctx.add(ops.Select(index, x.size, np.where(index < 0, fill, 0.0) if has_fill else None), [x], src.shape)


def _numbers(parts: list) -> list[np.ndarray]:
    """Element numbers of ``parts`` (1-based, so that 0 never stands for an element), shaped as they are."""
    out, k = [], 1
    for p in parts:
        shape = p.shape if isinstance(p, Var) else np.shape(p)
        n = int(np.prod(shape, dtype=np.int64))
        out.append(np.arange(k, k + n, dtype=np.float64).reshape(shape))
        k += n
    return out


@converter("ScatterND")
def _scatter_nd(ctx: Context, node, ins: list, attrs: dict) -> list:
    data, indices, updates = ins[:3]
    if isinstance(indices, Var):
        raise Unsupported("variable indices")
    red = attrs.get("reduction", b"none")
    red = red.decode() if isinstance(red, bytes) else red
    if red != "none":
        raise Unsupported(f"reduction={red!r} (only 'none' is a pure copy)")
    idx = np.asarray(indices, np.int64)
    shape = data.shape if isinstance(data, Var) else np.shape(data)
    k = idx.shape[-1] if idx.ndim else 0
    if idx.ndim == 0 or k > len(shape):
        raise ModelError(f"ScatterND node {ctx.node_name}: indices of shape {idx.shape} for data {tuple(shape)}")
    rows = idx.reshape(-1, k) % np.asarray(shape[:k], np.int64) if k else idx.reshape(-1, 0)
    if len({tuple(r) for r in rows.tolist()}) != len(rows):
        raise Unsupported("duplicate indices (onnxruntime's result is then unspecified)")
    nd, nu = _numbers([data, updates])
    out = _fold(node, [nd, idx, nu], ctx.opset)[0]
    return [_route(ctx, [data, updates], np.rint(np.asarray(out, np.float64)).astype(np.int64) - 1)]


@converter("Where")
def _where(ctx: Context, node, ins: list, attrs: dict) -> list:
    cond, a, b = ins
    if isinstance(cond, Var):
        return [where_variable(ctx, cond, a, b)]
    c = np.asarray(constant(cond, "condition")).astype(bool)
    na, nb = _numbers([a, b])
    src = np.where(c, na, nb)
    return [_route(ctx, [a, b], src.astype(np.int64) - 1)]


@converter("ReduceMax", "ReduceMin")
def _reduce_max(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = ins[0]
    if not isinstance(x, Var) or any(isinstance(v, Var) for v in ins[1:]):
        raise Unsupported("only the data input may be variable")
    axes = attrs.get("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = [int(a) for a in np.asarray(constant(ins[1], "axes")).reshape(-1)]
    r = len(x.shape)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(r))
    if any(not -r <= int(a) < r for a in axes):
        raise ModelError(f"{node.op_type} node {ctx.node_name}: axes {list(axes)} for rank {r}")
    axes = sorted({int(a) % r for a in axes})
    kept = [i for i in range(r) if i not in axes]
    groups = np.transpose(np.arange(x.size).reshape(x.shape), kept + axes)
    n_red = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    index = groups.reshape(-1, n_red).astype(np.int64)
    out_shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape)) if attrs.get("keepdims", 1) else \
        tuple(x.shape[i] for i in kept)
    if node.op_type == "ReduceMax":
        return [ctx.add(ops.MaxGroup(index), [x], out_shape)]
    neg = scale(ctx, x, -1.0, None)  # min(x) = -max(-x)
    return [scale(ctx, ctx.add(ops.MaxGroup(index), [neg], out_shape), -1.0, None)]
