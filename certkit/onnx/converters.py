"""One converter per ONNX op family, registered in ``CONVERTERS``.

A converter receives the :class:`~certkit.onnx.importer.Context`, the ONNX
node, its inputs (``Var`` for variable tensors, numpy arrays for constants,
``None`` for omitted optional inputs) and its attributes, and returns one
entry per node output. It raises :class:`~certkit.onnx.importer.Unsupported`
with a reason when a variant is not supported.

Data-movement ops (Transpose, Slice, Gather, Pad, Split, Expand, Tile,
Squeeze, Reshape, ...) share one converter: the op is run by the reference
evaluator on a tensor of element indices, which yields the static index map of
a :class:`~certkit.graph.ops.Select` (or an alias, for pure reshapes).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..graph import ops
from .importer import Context, Unsupported, Var, _fold

Converter = Callable[[Context, object, list, dict], list]
CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str):
    def deco(fn: Converter) -> Converter:
        for t in op_types:
            CONVERTERS[t] = fn
        return fn
    return deco


def _const(x, what: str) -> np.ndarray:
    if isinstance(x, Var):
        raise Unsupported(f"{what} must be a constant")
    return np.asarray(x)


def _flat(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a constant to ``shape`` and flatten it (float64)."""
    return np.broadcast_to(np.asarray(a, dtype=np.float64), shape).reshape(-1).copy()


def _alias(v: Var, shape: tuple[int, ...]) -> Var:
    return Var(v.node, tuple(int(s) for s in shape))


def _expand(ctx: Context, v: Var, shape: tuple[int, ...]) -> Var:
    """Broadcast a variable tensor to ``shape``."""
    shape = tuple(int(s) for s in shape)
    if v.shape == shape:
        return v
    idx = np.broadcast_to(np.arange(v.size).reshape(v.shape), shape).reshape(-1)
    if len(idx) == v.size and np.array_equal(idx, np.arange(v.size)):
        return _alias(v, shape)
    return ctx.add(ops.Select(idx.astype(np.int64), v.size), [v], shape)


def _bshape(*shapes) -> tuple[int, ...]:
    return tuple(int(s) for s in np.broadcast_shapes(*[tuple(s) for s in shapes]))


def _scale(ctx: Context, v: Var, a, c, out_shape=None) -> Var:
    """``a * v + c`` with constants broadcast to the output shape."""
    a_arr = np.asarray(1.0 if a is None else a, dtype=np.float64)
    c_arr = None if c is None else np.asarray(c, dtype=np.float64)
    shape = out_shape or _bshape(v.shape, a_arr.shape, () if c_arr is None else c_arr.shape)
    v = _expand(ctx, v, shape)
    return ctx.add(ops.Scale(_flat(a_arr, shape), None if c_arr is None else _flat(c_arr, shape)), [v], shape)


# --------------------------------------------------------------------------- data movement


@converter("Transpose", "Slice", "Gather", "Pad", "Split", "Expand", "Tile", "Squeeze", "Unsqueeze",
           "Reshape", "Flatten", "Identity", "Dropout", "DepthToSpace", "SpaceToDepth", "GatherElements",
           "ReverseSequence", "Cast", "CastLike")
def _data_movement(ctx: Context, node, ins: list, attrs: dict) -> list:
    if node.op_type == "Dropout" and attrs.get("training_mode"):
        raise Unsupported("training mode")
    if node.op_type in ("Cast", "CastLike"):
        to = attrs.get("to", 1)
        if node.op_type == "Cast" and to not in (1, 10, 11, 16):
            raise Unsupported("cast of a variable tensor to a non-float type")
    v = ins[0]
    if not isinstance(v, Var) or any(isinstance(x, Var) for x in ins[1:]):
        raise Unsupported("only the data input may be variable")
    data = np.arange(1, v.size + 1, dtype=np.float64).reshape(v.shape)
    others = list(ins[1:])
    fill_value = 0.0
    if node.op_type == "Pad":
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode == "constant":
            if ctx.opset >= 11:
                if len(others) >= 2 and others[1] is not None:
                    fill_value = float(np.asarray(others[1]).reshape(-1)[0]) if np.asarray(others[1]).size else 0.0
                    others[1] = np.array(0.0)
            else:
                fill_value = float(attrs.get("value", 0.0))
    results = _fold(node, [data] + others, ctx.opset)
    if node.op_type == "Dropout":
        results = results[:1]
    outs = []
    for r in results:
        r = np.asarray(r, dtype=np.float64)
        shape = r.shape
        idx = np.rint(r.reshape(-1)).astype(np.int64) - 1  # -1 marks constant fill
        if len(idx) == v.size and np.array_equal(idx, np.arange(v.size)):
            outs.append(_alias(v, shape))
            continue
        fill = None if (idx >= 0).all() else np.where(idx < 0, fill_value, 0.0)
        outs.append(ctx.add(ops.Select(idx, v.size, fill), [v], shape))
    return outs


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
    shapes = [p.shape for p in parts]
    out = np.concatenate([np.arange(p.size).reshape(p.shape) + off
                          for p, off in zip(parts, np.cumsum([0] + [p.size for p in parts[:-1]]))], axis=axis)
    perm = out.reshape(-1)
    perm_arg = None if np.array_equal(perm, np.arange(perm.size)) else perm.astype(np.int64)
    return [ctx.add(ops.Concat(tuple(p.size for p in parts), perm_arg), parts, out.shape)]


# --------------------------------------------------------------------------- affine


@converter("Gemm")
def _gemm(ctx: Context, node, ins: list, attrs: dict) -> list:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if not isinstance(a, Var) or isinstance(b, Var) or isinstance(c, Var):
        raise Unsupported("Gemm needs a variable A and constant B, C")
    if attrs.get("transA", 0):
        raise Unsupported("transA=1 on a variable input")
    w = np.asarray(b, dtype=np.float64)
    w = w if attrs.get("transB", 0) else w.T  # (n_out, n_in)
    w = alpha * w
    rows = a.shape[0] if len(a.shape) == 2 else 1
    out_shape = (a.shape[0], w.shape[0])
    bias = None
    if c is not None:
        cb = beta * np.broadcast_to(np.asarray(c, dtype=np.float64), out_shape)
        if (cb == cb[:1]).all():
            bias = cb[0].copy()
        else:
            y = ctx.add(ops.Dense(w, None, rows), [a], out_shape)
            return [_scale(ctx, y, None, cb, out_shape)]
    return [ctx.add(ops.Dense(w, bias, rows), [a], out_shape)]


@converter("MatMul")
def _matmul(ctx: Context, node, ins: list, attrs: dict) -> list:
    a, b = ins
    if isinstance(b, Var):
        raise Unsupported("MatMul with a variable right operand")
    w = np.asarray(b, dtype=np.float64)
    if w.ndim != 2:
        raise Unsupported("MatMul with a constant operand of rank != 2")
    shape = a.shape if len(a.shape) > 1 else (1,) + a.shape
    out_shape = tuple(a.shape[:-1]) + (w.shape[1],)
    rows = int(np.prod(shape[:-1]))
    return [ctx.add(ops.Dense(w.T.copy(), None, rows), [a], out_shape)]


@converter("Add", "Sub", "Mul", "Div")
def _arith(ctx: Context, node, ins: list, attrs: dict) -> list:
    x, y = ins
    t = node.op_type
    if isinstance(x, Var) and isinstance(y, Var):
        if t in ("Mul", "Div"):
            raise Unsupported(f"{t} of two variable tensors is not linear")
        shape = _bshape(x.shape, y.shape)
        x, y = _expand(ctx, x, shape), _expand(ctx, y, shape)
        return [ctx.add(ops.Sum((1.0, 1.0 if t == "Add" else -1.0)), [x, y], shape)]
    if isinstance(x, Var):
        c = np.asarray(y, dtype=np.float64)
        if t == "Add":
            return [_scale(ctx, x, None, c)]
        if t == "Sub":
            return [_scale(ctx, x, None, -c)]
        if t == "Mul":
            return [_scale(ctx, x, c, None)]
        if np.asarray(y).dtype.kind in "iu":
            raise Unsupported("integer division")
        return [_scale(ctx, x, 1.0 / c, None)]
    c = np.asarray(x, dtype=np.float64)
    if t == "Add":
        return [_scale(ctx, y, None, c)]
    if t == "Sub":
        return [_scale(ctx, y, -1.0, c)]
    if t == "Mul":
        return [_scale(ctx, y, c, None)]
    raise Unsupported("division by a variable tensor is not linear")


@converter("Neg")
def _neg(ctx: Context, node, ins: list, attrs: dict) -> list:
    return [_scale(ctx, ins[0], -1.0, None)]


@converter("BatchNormalization")
def _batchnorm(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = ins[0]
    if attrs.get("training_mode"):
        raise Unsupported("training mode")
    gamma, beta, mean, var = (np.asarray(_const(v, "BatchNormalization parameters"), np.float64) for v in ins[1:5])
    eps = float(attrs.get("epsilon", 1e-5))
    a = gamma / np.sqrt(var + eps)
    c = beta - mean * a
    bshape = (1, -1) + (1,) * (len(x.shape) - 2)
    return [_scale(ctx, x, a.reshape(bshape), c.reshape(bshape), x.shape)]


def _conv_geometry(in_hw, k, strides, dil, pads, auto_pad, ceil_mode=0):
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    n = len(in_hw)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(n):
            out = -(-in_hw[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - in_hw[i])
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto_pad == "SAME_UPPER" else big)
            pads_e.append(big if auto_pad == "SAME_UPPER" else small)
        pads = pads_b + pads_e
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    pads = list(pads) if pads else [0] * (2 * n)
    outs = []
    for i in range(n):
        span = in_hw[i] + pads[i] + pads[i + n] - ((k[i] - 1) * dil[i] + 1)
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        outs.append(o)
    return pads, outs


@converter("Conv")
def _conv(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = ins[0]
    w = np.asarray(_const(ins[1], "Conv weight"), np.float64)
    b = None if len(ins) < 3 or ins[2] is None else np.asarray(_const(ins[2], "Conv bias"), np.float64)
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-D convolution")
    if x.shape[0] != 1:
        raise Unsupported("batch dimension other than 1")
    k = list(w.shape[2:])
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads, outs = _conv_geometry(list(x.shape[2:]), k, strides, dil, attrs.get("pads"), attrs.get("auto_pad", "NOTSET"))
    groups = int(attrs.get("group", 1))
    if nd == 1:  # lower 1-D to 2-D with H = 1
        w = w[:, :, None, :]
        in_shape = (x.shape[1], 1, x.shape[2])
        out3 = (w.shape[0], 1, outs[0])
        strides, dil, pads4 = (1, strides[0]), (1, dil[0]), (0, pads[0], 0, pads[1])
    else:
        in_shape = tuple(x.shape[1:])
        out3 = (w.shape[0], outs[0], outs[1])
        strides, dil, pads4 = tuple(strides), tuple(dil), (pads[0], pads[1], pads[2], pads[3])
    op = ops.Conv(w, b, in_shape, out3, tuple(strides), pads4, tuple(dil), groups)
    out_shape = (1, w.shape[0]) + tuple(outs)
    return [ctx.add(op, [x], out_shape)]


def _pool_common(x: Var, attrs: dict, global_: bool):
    if x.shape[0] != 1 or len(x.shape) not in (3, 4):
        raise Unsupported("pooling needs an input of shape (1, C, H, W) or (1, C, L)")
    hw = list(x.shape[2:])
    nd = len(hw)
    k = hw if global_ else list(attrs["kernel_shape"])
    strides = [1] * nd if global_ else list(attrs.get("strides", [1] * nd))
    dil = [1] * nd if global_ else list(attrs.get("dilations", [1] * nd))
    pads, outs = _conv_geometry(hw, k, strides, dil, None if global_ else attrs.get("pads"),
                                "NOTSET" if global_ else attrs.get("auto_pad", "NOTSET"),
                                0 if global_ else attrs.get("ceil_mode", 0))
    return hw, k, strides, dil, pads, outs


def _window_index(C: int, hw, k, strides, dil, pads, outs) -> np.ndarray:
    """Index matrix (C*prod(outs), prod(k)) of each pooling window; -1 for padding."""
    if len(hw) == 1:
        hw, k, strides, dil, outs = [1] + hw, [1] + k, [1] + strides, [1] + dil, [1] + outs
        pads = [0, pads[0], 0, pads[1]]
    H, W = hw
    idx = np.arange(C * H * W).reshape(C, H, W)
    # enough padding on the end for ceil_mode windows
    pe_h = max(pads[2], (outs[0] - 1) * strides[0] + (k[0] - 1) * dil[0] + 1 - H - pads[0])
    pe_w = max(pads[3], (outs[1] - 1) * strides[1] + (k[1] - 1) * dil[1] + 1 - W - pads[1])
    padded = np.pad(idx, ((0, 0), (pads[0], pe_h), (pads[1], pe_w)), constant_values=-1)
    rows = []
    for i in range(k[0]):
        for j in range(k[1]):
            hs = i * dil[0]
            ws = j * dil[1]
            rows.append(padded[:, hs:hs + (outs[0] - 1) * strides[0] + 1:strides[0],
                               ws:ws + (outs[1] - 1) * strides[1] + 1:strides[1]].reshape(-1))
    return np.stack(rows, axis=1).astype(np.int64)


@converter("MaxPool", "GlobalMaxPool")
def _maxpool(ctx: Context, node, ins: list, attrs: dict) -> list:
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("the Indices output")
    if attrs.get("storage_order", 0):
        raise Unsupported("storage_order=1")
    x = ins[0]
    hw, k, strides, dil, pads, outs = _pool_common(x, attrs, node.op_type == "GlobalMaxPool")
    idx = _window_index(x.shape[1], hw, k, strides, dil, pads, outs)
    if (idx < 0).all(axis=1).any():
        raise Unsupported("a pooling window lies entirely in the padding")
    return [ctx.add(ops.MaxGroup(idx), [x], (1, x.shape[1]) + tuple(outs))]


@converter("AveragePool", "GlobalAveragePool")
def _avgpool(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = ins[0]
    global_ = node.op_type == "GlobalAveragePool"
    hw, k, strides, dil, pads, outs = _pool_common(x, attrs, global_)
    C = x.shape[1]
    idx = _window_index(C, hw, k, strides, dil, pads, outs)
    count = (idx >= 0).sum(axis=1) if not attrs.get("count_include_pad", 0) else np.full(len(idx), idx.shape[1])
    if attrs.get("ceil_mode", 0) and attrs.get("count_include_pad", 0):
        raise Unsupported("ceil_mode with count_include_pad")
    n_in = x.size
    w = np.zeros((len(idx), n_in))
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    cols = idx.reshape(-1)
    ok = cols >= 0
    np.add.at(w, (rows[ok], cols[ok]), 1.0)
    w /= count[:, None]
    return [ctx.add(ops.Dense(w, None, 1), [x], (1, C) + tuple(outs))]


@converter("ReduceSum", "ReduceMean")
def _reduce(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = ins[0]
    axes = attrs.get("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = list(np.asarray(_const(ins[1], "axes")).reshape(-1))
    r = len(x.shape)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(r))
    axes = sorted(int(a) % r for a in axes)
    keep = attrs.get("keepdims", 1)
    idx = np.arange(x.size).reshape(x.shape)
    moved = np.moveaxis(idx, axes, list(range(r - len(axes), r)))
    groups = moved.reshape(-1, int(np.prod([x.shape[a] for a in axes])))
    w = np.zeros((groups.shape[0], x.size))
    np.put_along_axis(w, groups, 1.0, axis=1)
    if node.op_type == "ReduceMean":
        w /= groups.shape[1]
    out_shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape)) if keep else \
        tuple(s for i, s in enumerate(x.shape) if i not in axes)
    return [ctx.add(ops.Dense(w, None, 1), [x], out_shape)]


# --------------------------------------------------------------------------- activations


def _unary(op_factory):
    def conv(ctx: Context, node, ins: list, attrs: dict) -> list:
        x = ins[0]
        return [ctx.add(op_factory(attrs, x), [x], x.shape)]
    return conv


CONVERTERS["Relu"] = _unary(lambda a, x: ops.Relu())
CONVERTERS["LeakyRelu"] = _unary(lambda a, x: ops.LeakyRelu(float(a.get("alpha", 0.01))))
CONVERTERS["Sigmoid"] = _unary(lambda a, x: ops.Sigmoid())
CONVERTERS["Tanh"] = _unary(lambda a, x: ops.Tanh())
CONVERTERS["Softplus"] = _unary(lambda a, x: ops.Softplus())
CONVERTERS["Abs"] = _unary(lambda a, x: ops.Abs())


@converter("Clip")
def _clip(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = ins[0]
    if ctx.opset < 11:
        lo, hi = attrs.get("min", -np.inf), attrs.get("max", np.inf)
    else:
        lo = -np.inf if len(ins) < 2 or ins[1] is None else _const(ins[1], "Clip min")
        hi = np.inf if len(ins) < 3 or ins[2] is None else _const(ins[2], "Clip max")
    return [ctx.add(ops.Clip(_flat(lo, x.shape), _flat(hi, x.shape)), [x], x.shape)]


@converter("Max", "Min")
def _maxmin(ctx: Context, node, ins: list, attrs: dict) -> list:
    is_max = node.op_type == "Max"
    variables = [v for v in ins if isinstance(v, Var)]
    consts = [np.asarray(v, np.float64) for v in ins if not isinstance(v, Var)]
    shape = _bshape(*[v.shape for v in variables], *[c.shape for c in consts])
    variables = [_expand(ctx, v, shape) for v in variables]
    if len(variables) > 1:
        sign = 1.0 if is_max else -1.0
        if not is_max:
            variables = [_scale(ctx, v, -1.0, None) for v in variables]
        n = variables[0].size
        cat = ctx.add(ops.Concat(tuple(n for _ in variables)), variables, (len(variables) * n,))
        idx = np.stack([np.arange(n) + k * n for k in range(len(variables))], axis=1).astype(np.int64)
        y = ctx.add(ops.MaxGroup(idx), [cat], shape)
        if not is_max:
            y = _scale(ctx, y, -1.0, None)
        del sign
    else:
        y = variables[0]
    if consts:
        c = consts[0]
        for other in consts[1:]:
            c = np.maximum(c, other) if is_max else np.minimum(c, other)
        lo = _flat(c, shape) if is_max else np.full(y.size, -np.inf)
        hi = np.full(y.size, np.inf) if is_max else _flat(c, shape)
        y = ctx.add(ops.Clip(lo, hi), [y], shape)
    return [y]


@converter("HardSigmoid")
def _hardsigmoid(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = ins[0]
    a, b = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    y = _scale(ctx, x, a, b)
    return [ctx.add(ops.Clip(np.zeros(y.size), np.ones(y.size)), [y], y.shape)]
