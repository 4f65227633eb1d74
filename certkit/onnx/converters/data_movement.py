"""Converters of the ops that move or copy elements without arithmetic.

Data-movement ops (Transpose, Slice, Gather, Split, Expand, Tile, Squeeze,
Reshape, ...) share one converter: the op is run by the reference evaluator on
a tensor of element indices, which yields the static index map of a
:class:`~certkit.graph.ops.Select` (or an alias, for pure reshapes). Pad
computes its index map itself (constant fill, negative pads). Values are
float64 in the IR, so Cast to float/double, Identity and inference-mode
Dropout are aliases.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Unsupported, Var, _fold
from ..proto import TensorProto
from .base import alias, constant, converter, select_from_index, variable


_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)
_HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


@converter("Identity")
def _identity(ctx: Context, node, ins: list, attrs: dict) -> list:
    return [variable(ins[0])]


@converter("Cast", "CastLike")
def _cast(ctx: Context, node, ins: list, attrs: dict) -> list:
    """A cast to float or double is the identity on the float64 IR values; to a signed integer or
    bool, :func:`~certkit.onnx.converters.tails.cast_to_integer`."""
    variable(ins[0])
    if node.op_type == "Cast":
        to = int(attrs.get("to", 0))
    else:
        if isinstance(ins[1], Var):
            to = TensorProto.FLOAT  # a float model's variable tensor
        else:
            from onnx.helper import np_dtype_to_tensor_dtype  # rare: the full onnx package

            to = np_dtype_to_tensor_dtype(np.asarray(ins[1]).dtype)
    if to in _HALF_TYPES:
        raise Unsupported("cast to float16/bfloat16: the rounding is not modelled")
    if to not in _FLOAT_TYPES:
        if not to:
            raise Unsupported("cast of a variable tensor to an unknown type")
        from .tails import cast_to_integer  # integer and bool casts: exact steps (tails.py)

        return [cast_to_integer(ctx, ins[0], to)]
    return [ins[0]]


@converter("Dropout")
def _dropout(ctx: Context, node, ins: list, attrs: dict) -> list:
    """Inference-mode Dropout is the identity."""
    variable(ins[0])
    if ctx.opset < 7 and not attrs.get("is_test", 0):
        raise Unsupported("is_test=0 (training mode) before opset 7")
    if attrs.get("training_mode"):
        raise Unsupported("training mode")
    if len(ins) > 2 and ins[2] is not None:
        if isinstance(ins[2], Var):
            raise Unsupported("a variable training_mode")
        if bool(np.asarray(ins[2]).reshape(-1)[0]):
            raise Unsupported("training mode")
    if len(node.output) > 1 and ctx.uses(node.output[1]):
        raise Unsupported("the mask output")
    return [ins[0]] + [None] * (len(node.output) - 1)


@converter("Transpose", "Slice", "Gather", "Split", "Expand", "Tile", "Squeeze", "Unsqueeze",
           "Reshape", "Flatten", "DepthToSpace", "SpaceToDepth", "GatherElements", "ReverseSequence")
def _data_movement(ctx: Context, node, ins: list, attrs: dict) -> list:
    v = ins[0]
    if not isinstance(v, Var) or any(isinstance(x, Var) for x in ins[1:]):
        raise Unsupported("only the data input may be variable")
    shape = _reshaped(node.op_type, v.shape, ins[1:], attrs, ctx.opset)
    if shape is not None:
        return [alias(v, shape)]
    # element k of the input holds k + 1, so 0 never stands for an element
    data = np.arange(1, v.size + 1, dtype=np.float64).reshape(v.shape)
    results = _fold(node, [data] + list(ins[1:]), ctx.opset)
    # an empty output nobody reads (a zero-size part of a Split) is not a tensor certkit must hold
    return [None if np.size(r) == 0 and not ctx.uses(o) else
            select_from_index(ctx, v, np.rint(np.asarray(r, np.float64)).astype(np.int64) - 1)
            for o, r in zip([o for o in node.output if o], results)]


def _reshaped(op: str, shape: tuple[int, ...], args: list, attrs: dict, opset: int) -> tuple[int, ...] | None:
    """The output shape of a pure reshape (Flatten, Reshape, Squeeze, Unsqueeze), which keeps every
    element in place; None for any other op, and for arguments out of the ordinary (the reference
    evaluator then runs the op and decides). Computed here because the common Flatten of a model's
    input would otherwise import the reference evaluator, and with it the whole onnx package
    (:mod:`certkit.onnx.proto`)."""
    r, size = len(shape), int(np.prod(shape, dtype=np.int64))

    def ints(k: int) -> list[int] | None:  # the k-th constant argument after the data
        return None if len(args) <= k or args[k] is None else [int(a) for a in np.asarray(args[k]).reshape(-1)]

    if op == "Flatten":
        axis = int(attrs.get("axis", 1))
        if not (-r if opset >= 11 else 0) <= axis <= r:
            return None
        axis = axis + r if axis < 0 else axis
        return int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))
    if op == "Reshape":
        target = ints(0)
        if opset < 5 or target is None or min(target, default=0) < -1 or target.count(-1) > 1:
            return None
        if not attrs.get("allowzero", 0):
            if any(t == 0 and k >= r for k, t in enumerate(target)):
                return None
            target = [shape[k] if t == 0 else t for k, t in enumerate(target)]
        if -1 in target:
            known = int(np.prod([t for t in target if t != -1], dtype=np.int64))
            if known <= 0 or size % known:
                return None
            target[target.index(-1)] = size // known
        return tuple(target) if int(np.prod(target, dtype=np.int64)) == size else None
    if op in ("Squeeze", "Unsqueeze"):
        if opset < 13:  # axes: an attribute, then an input
            axes = [int(a) for a in attrs["axes"]] if "axes" in attrs else None
        else:
            axes = ints(0)
        if op == "Squeeze" and axes is None:
            return tuple(d for d in shape if d != 1)
        rank = r if op == "Squeeze" else r + len(axes or ())
        if axes is None or any(not (-rank if opset >= 11 else 0) <= a < rank for a in axes):
            return None
        axes = [a % rank for a in axes]
        if len(set(axes)) != len(axes) or (opset < 13 and axes != sorted(axes)):
            return None  # before opset 13 the reference evaluator refuses unsorted axes: it still decides
        if op == "Squeeze":
            return None if any(shape[a] != 1 for a in axes) else tuple(d for k, d in enumerate(shape) if k not in axes)
        rest = iter(shape)
        return tuple(1 if k in axes else next(rest) for k in range(rank))
    return None


@converter("Pad")
def _pad(ctx: Context, node, ins: list, attrs: dict) -> list:
    v = ins[0]
    if not isinstance(v, Var) or any(isinstance(x, Var) for x in ins[1:]):
        raise Unsupported("only the data input may be variable")
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    r = len(v.shape)
    if ctx.opset < 11:
        pads = np.asarray(attrs.get("pads", attrs.get("paddings", [])), np.int64)
        value = float(attrs.get("value", 0.0))
        axes = list(range(r))
    else:
        pads = np.asarray(constant(ins[1], "Pad pads"), np.int64).reshape(-1)
        cv = ins[2] if len(ins) > 2 else None
        value = 0.0 if cv is None or np.asarray(cv).size == 0 else float(np.asarray(cv).reshape(-1)[0])
        ax = ins[3] if len(ins) > 3 else None
        axes = list(range(r)) if ax is None else [int(a) % r for a in np.asarray(ax).reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise ModelError(f"Pad node {ctx.node_name}: {len(pads)} pads for {len(axes)} axes")
    begin, end = [0] * r, [0] * r
    for k, a in enumerate(axes):
        begin[a], end[a] = int(pads[k]), int(pads[k + len(axes)])
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise Unsupported(f"mode {mode!r}")
    if mode != "constant" and min(begin + end) < 0:
        raise Unsupported(f"negative pads with mode {mode!r}")
    idx = np.arange(v.size).reshape(v.shape)
    idx = idx[tuple(slice(max(0, -b), s - max(0, -e)) for b, e, s in zip(begin, end, v.shape))]
    widths = [(max(0, b), max(0, e)) for b, e in zip(begin, end)]
    if mode == "constant":
        out = np.pad(idx, widths, constant_values=-1)
    else:
        if mode == "reflect" and any(w > s - 1 for (wb, we), s in zip(widths, idx.shape) for w in (wb, we)):
            raise Unsupported("reflect padding wider than the axis")
        if any(w and s == 0 for (wb, we), s in zip(widths, idx.shape) for w in (wb, we)):
            raise Unsupported(f"{mode} padding of an empty axis")
        out = np.pad(idx, widths, mode=mode)
    return [select_from_index(ctx, v, out, value)]


@converter("Concat")
def _concat(ctx: Context, node, ins: list, attrs: dict) -> list:
    axis = attrs["axis"]
    parts = []
    for x in ins:
        if isinstance(x, Var):
            parts.append(x)
        else:  # a constant part: a Select with only fill entries on the first variable
            c = np.asarray(x, dtype=np.float64)
            anchor = next(v for v in ins if isinstance(v, Var))
            if c.size == 0:
                continue
            parts.append(ctx.add(ops.Select(np.full(c.size, -1, np.int64), anchor.size, c.reshape(-1)),
                                 [anchor], c.shape))
    out = np.concatenate([np.arange(p.size).reshape(p.shape) + off
                          for p, off in zip(parts, np.cumsum([0] + [p.size for p in parts[:-1]]))], axis=axis)
    perm = out.reshape(-1)
    perm_arg = None if np.array_equal(perm, np.arange(perm.size)) else perm.astype(np.int64)
    if len(parts) == 1 and perm_arg is None:
        return [alias(parts[0], out.shape)]
    return [ctx.add(ops.Concat(tuple(p.size for p in parts), perm_arg), parts, out.shape)]
