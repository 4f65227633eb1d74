"""One converter per ONNX op family, registered in ``CONVERTERS``.

A converter receives the :class:`~certkit.onnx.importer.Context`, the ONNX
node, its inputs (``Var`` for variable tensors, numpy arrays for constants,
``None`` for omitted optional inputs) and its attributes, and returns one
entry per node output. It raises :class:`~certkit.onnx.importer.Unsupported`
with a reason when a variant is not supported.

Data-movement ops (Transpose, Slice, Gather, Split, Expand, Tile, Squeeze,
Reshape, ...) share one converter: the op is run by the reference evaluator on
a tensor of element indices, which yields the static index map of a
:class:`~certkit.graph.ops.Select` (or an alias, for pure reshapes). Pad
computes its index map itself (constant fill, negative pads). Values are
float64 in the IR, so Cast to float/double, Identity and inference-mode
Dropout are aliases.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import onnx

from ..errors import ModelError
from ..graph import ops
from .importer import Context, Unsupported, Var, _fold

Converter = Callable[[Context, object, list, dict], list]
CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str):
    """Register ``fn`` as the converter of ``op_types`` (each op type at most once)."""
    def deco(fn: Converter) -> Converter:
        for t in op_types:
            if t in CONVERTERS:
                raise ValueError(f"duplicate converter for ONNX op {t}")
            CONVERTERS[t] = fn
        return fn
    return deco


def _var(x, what: str = "the data input") -> Var:
    if not isinstance(x, Var):
        raise Unsupported(f"{what} must be the variable tensor (a constant {what} with variable "
                          "parameters is not linear or not supported)")
    return x


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


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
_HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


@converter("Identity")
def _identity(ctx: Context, node, ins: list, attrs: dict) -> list:
    return [_var(ins[0])]


@converter("Cast", "CastLike")
def _cast(ctx: Context, node, ins: list, attrs: dict) -> list:
    """A cast to float or double is the identity on the float64 IR values."""
    _var(ins[0])
    if node.op_type == "Cast":
        to = int(attrs.get("to", 0))
    else:
        if isinstance(ins[1], Var):
            to = onnx.TensorProto.FLOAT  # a float model's variable tensor
        else:
            to = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(ins[1]).dtype)
    if to in _HALF_TYPES:
        raise Unsupported("cast to float16/bfloat16: the rounding is not modelled")
    if to not in _FLOAT_TYPES:
        raise Unsupported(f"cast of a variable tensor to a non-float type "
                          f"({onnx.TensorProto.DataType.Name(to) if to else 'unknown'})")
    return [ins[0]]


@converter("Dropout")
def _dropout(ctx: Context, node, ins: list, attrs: dict) -> list:
    """Inference-mode Dropout is the identity."""
    _var(ins[0])
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
    # element k of the input holds k + 1, so 0 never stands for an element
    data = np.arange(1, v.size + 1, dtype=np.float64).reshape(v.shape)
    results = _fold(node, [data] + list(ins[1:]), ctx.opset)
    # an empty output nobody reads (a zero-size part of a Split) is not a tensor certkit must hold
    return [None if np.size(r) == 0 and not ctx.uses(o) else
            _select_from_index(ctx, v, np.rint(np.asarray(r, np.float64)).astype(np.int64) - 1)
            for o, r in zip([o for o in node.output if o], results)]


def _select_from_index(ctx: Context, v: Var, idx: np.ndarray, fill_value: float = 0.0) -> Var:
    """``y[i] = v[idx[i]]`` (``idx`` shaped like the output; -1 for the constant ``fill_value``)."""
    shape = idx.shape
    flat = idx.reshape(-1)
    if len(flat) == v.size and np.array_equal(flat, np.arange(v.size)):
        return _alias(v, shape)
    fill = None
    if (flat < 0).any() and fill_value != 0.0:
        fill = np.where(flat < 0, float(fill_value), 0.0)
    return ctx.add(ops.Select(flat.astype(np.int64), v.size, fill), [v], shape)


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
        pads = np.asarray(_const(ins[1], "Pad pads"), np.int64).reshape(-1)
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
    return [_select_from_index(ctx, v, out, value)]


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
        return [_alias(parts[0], out.shape)]
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
            return [_scale(ctx, y, None, cb, out_shape)]
    return [ctx.add(ops.Dense(w, bias, rows), [a], out_shape)]


@converter("MatMul")
def _matmul(ctx: Context, node, ins: list, attrs: dict) -> list:
    """``x @ W`` for a constant ``W`` (numpy matmul semantics, incl. vector and batched ``W``)."""
    a, b = ins
    if isinstance(b, Var):
        raise Unsupported("MatMul with a variable right operand")
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
        out_shape = _bshape(a_batch, w.shape[:-2]) + m + (w.shape[-1],)
    rows = a.size // k
    return [ctx.add(ops.Dense(w2.T.copy(), None, rows), [a], out_shape)]


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
        if (c == 0).any():
            raise Unsupported("division by zero constant")
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
    return [_scale(ctx, _var(ins[0]), -1.0, None)]


@converter("BatchNormalization")
def _batchnorm(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = _var(ins[0])
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
    gamma, beta, mean, var = (np.asarray(_const(v, "BatchNormalization parameters"), np.float64) for v in ins[1:5])
    eps = float(attrs.get("epsilon", 1e-5))
    den = (var + eps).reshape(-1)
    bad = np.flatnonzero(~(den > 0))  # NaN included; onnxruntime then outputs inf or NaN
    if bad.size:
        raise ModelError(f"BatchNormalization node {ctx.node_name}: var + epsilon = {den[bad[0]]:g} "
                         f"is not positive in channel {int(bad[0])} ({bad.size} channel(s) in all)")
    a = gamma / np.sqrt(var + eps)
    c = beta - mean * a
    bshape = (1, -1) + (1,) * (len(x.shape) - 2)
    y = _scale(ctx, x, a.reshape(bshape), c.reshape(bshape), x.shape)
    # onnxruntime computes (x - mean) * inv_std * gamma + beta: its intermediate magnitudes are
    # |a| (|x| + |mean|) and |beta|, not |a x| and |c| (mean * a and beta may cancel in c), and the
    # factor a itself is rounded a few times (sqrt, division, product): certkit.bounds.fperror
    magnitude = _flat((np.abs(a * mean) + np.abs(beta)).reshape(bshape), x.shape)
    node_ = ctx.nodes[y.node]
    ctx.nodes[y.node] = dataclasses.replace(node_, op=dataclasses.replace(node_.op, fp_extra=4, fp_bias=magnitude))
    return [y] + [None] * (len(node.output) - 1)


def _conv_geometry(in_hw, k, strides, dil, pads, auto_pad, ceil_mode=0, pool=False):
    """ONNX padding and output sizes of a convolution or pooling window.

    Returns ``(pads, outs)`` with ``pads`` in ONNX order (all begins, then all
    ends). With ``ceil_mode``, a window that would start in the end padding is
    dropped (ONNX pooling semantics, as onnxruntime and PyTorch do it).
    """
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    n = len(in_hw)
    if len(k) != n or len(strides) != n or len(dil) != n or (pads and len(pads) != 2 * n):
        raise ModelError(f"kernel {k}, strides {strides}, dilations {dil} or pads {pads} "
                         f"do not fit {n} spatial dimension(s)")
    if min(strides) < 1 or min(dil) < 1 or min(k) < 1:
        raise ModelError(f"non-positive kernel {k}, strides {strides} or dilations {dil}")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(d != 1 for d in dil):
            # the ONNX spec pads for the dilated window, onnxruntime for the undilated one
            raise Unsupported(f"auto_pad={auto_pad} with dilations {list(dil)} (ambiguous padding)")
        pads_b, pads_e = [], []
        for i in range(n):
            out = -(-in_hw[i] // strides[i])
            total = (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - in_hw[i]
            if total < 0 and pool:
                # onnxruntime's AveragePool crops (negative pads), its MaxPool refuses
                raise Unsupported(f"auto_pad={auto_pad} with strides {list(strides)} > kernel "
                                  f"{list(k)} leaving input unread (runtimes disagree)")
            total = max(0, total)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto_pad == "SAME_UPPER" else big)
            pads_e.append(big if auto_pad == "SAME_UPPER" else small)
        pads = pads_b + pads_e
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    elif auto_pad != "NOTSET":
        raise Unsupported(f"auto_pad={auto_pad!r}")
    pads = [int(p) for p in pads] if pads else [0] * (2 * n)
    if min(pads) < 0:
        raise Unsupported("negative pads")
    outs = []
    for i in range(n):
        span = in_hw[i] + pads[i] + pads[i + n] - ((k[i] - 1) * dil[i] + 1)
        if span < 0:
            raise Unsupported(f"window {k} (dilations {dil}) larger than the padded input {in_hw}")
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= in_hw[i] + pads[i]:
            o -= 1
        outs.append(o)
    return pads, outs


def _undilate(w: np.ndarray, dil) -> np.ndarray:
    """The kernel of a dilated convolution spread out with zeros (dilation 1, same function).

    torch has no fast float64 CPU kernel for dilated convolutions (about 100x slower than
    the plain one), and the IR runs convolutions in float64.
    """
    dh, dw = dil
    if dh == dw == 1:
        return w
    kh, kw = w.shape[2:]
    out = np.zeros(w.shape[:2] + ((kh - 1) * dh + 1, (kw - 1) * dw + 1))
    out[:, :, ::dh, ::dw] = w
    return out


@converter("Conv")
def _conv(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = _var(ins[0])
    if any(isinstance(v, Var) for v in ins[1:]):
        raise Unsupported("a variable weight or bias")
    w = np.asarray(ins[1], np.float64)
    b = None if len(ins) < 3 or ins[2] is None else np.asarray(ins[2], np.float64).reshape(-1)
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-D convolution")
    if len(x.shape) != nd + 2 or x.shape[0] != 1:
        raise Unsupported(f"input of shape {x.shape} (needs (1, C, ...) with {nd} spatial dims)")
    groups = int(attrs.get("group", 1))
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ModelError(f"Conv node {ctx.node_name}: weight {w.shape} with group={groups} "
                         f"does not fit input {x.shape}")
    k = list(w.shape[2:])
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != k:
        raise ModelError(f"Conv node {ctx.node_name}: kernel_shape {attrs['kernel_shape']} != weight {k}")
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads, outs = _conv_geometry(list(x.shape[2:]), k, strides, dil, attrs.get("pads"), attrs.get("auto_pad", "NOTSET"))
    if nd == 1:  # lower 1-D to 2-D with H = 1
        w = w[:, :, None, :]
        in_shape = (x.shape[1], 1, x.shape[2])
        out3 = (w.shape[0], 1, outs[0])
        strides, dil, pads4 = (1, strides[0]), (1, dil[0]), (0, pads[0], 0, pads[1])
    else:
        in_shape = tuple(x.shape[1:])
        out3 = (w.shape[0], outs[0], outs[1])
        strides, dil, pads4 = tuple(strides), tuple(dil), (pads[0], pads[1], pads[2], pads[3])
    op = ops.Conv(_undilate(w, dil), b, in_shape, out3, tuple(strides), pads4, (1, 1), groups)
    out_shape = (1, w.shape[0]) + tuple(outs)
    return [ctx.add(op, [x], out_shape)]


def _pool_common(x: Var, attrs: dict, global_: bool):
    _var(x)
    if x.shape[0] != 1 or len(x.shape) not in (3, 4):
        raise Unsupported("pooling needs an input of shape (1, C, H, W) or (1, C, L)")
    hw = list(x.shape[2:])
    nd = len(hw)
    k = hw if global_ else list(attrs["kernel_shape"])
    strides = [1] * nd if global_ else list(attrs.get("strides", [1] * nd))
    dil = [1] * nd if global_ else list(attrs.get("dilations", [1] * nd))
    pads, outs = _conv_geometry(hw, k, strides, dil, None if global_ else attrs.get("pads"),
                                "NOTSET" if global_ else attrs.get("auto_pad", "NOTSET"),
                                0 if global_ else attrs.get("ceil_mode", 0), pool=True)
    return hw, k, strides, dil, pads, outs


def _as_2d(hw, k, strides, dil, pads, outs):
    """Pooling geometry of a 1-D pool as a 2-D one with H = 1."""
    if len(hw) == 2:
        return list(hw), list(k), list(strides), list(dil), list(pads), list(outs)
    return [1] + list(hw), [1] + list(k), [1] + list(strides), [1] + list(dil), \
        [0, pads[0], 0, pads[1]], [1] + list(outs)


def _window_index(C: int, hw, k, strides, dil, pads, outs) -> np.ndarray:
    """Index matrix (C*prod(outs), prod(k)) of each pooling window.

    Entries are input element indices, -1 for the padding and -2 for positions
    past the end padding (only reachable with ``ceil_mode``).
    """
    (H, W), k, strides, dil, pads, outs = hw, k, strides, dil, pads, outs
    idx = np.arange(C * H * W).reshape(C, H, W)
    padded = np.pad(idx, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=-1)
    # windows that run past the end padding (ceil_mode) read -2
    over_h = max(0, (outs[0] - 1) * strides[0] + (k[0] - 1) * dil[0] + 1 - padded.shape[1])
    over_w = max(0, (outs[1] - 1) * strides[1] + (k[1] - 1) * dil[1] + 1 - padded.shape[2])
    padded = np.pad(padded, ((0, 0), (0, over_h), (0, over_w)), constant_values=-2)
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
    if len(node.output) > 1 and ctx.uses(node.output[1]):
        raise Unsupported("the Indices output")
    if attrs.get("storage_order", 0):
        raise Unsupported("storage_order=1")
    x = ins[0]
    geo = _pool_common(x, attrs, node.op_type == "GlobalMaxPool")
    outs = geo[-1]
    idx = _window_index(x.shape[1], *_as_2d(*geo))
    if (idx < 0).all(axis=1).any():
        raise Unsupported("a pooling window lies entirely in the padding")
    idx = np.where(idx < 0, -1, idx)
    y = ctx.add(ops.MaxGroup(idx), [x], (1, x.shape[1]) + tuple(outs))
    return [y] + [None] * (len(node.output) - 1)


@converter("AveragePool", "GlobalAveragePool")
def _avgpool(ctx: Context, node, ins: list, attrs: dict) -> list:
    """A depthwise all-ones convolution (the window sums) and a :class:`Scale` by 1/count.

    ``count`` is the number of window positions inside the input, or with
    ``count_include_pad`` inside the padded input (as onnxruntime counts it).
    """
    x = ins[0]
    global_ = node.op_type == "GlobalAveragePool"
    geo = _pool_common(x, attrs, global_)
    outs = geo[-1]
    (H, W), k, strides, dil, pads, outs2 = _as_2d(*geo)
    C = x.shape[1]
    idx = _window_index(C, (H, W), k, strides, dil, pads, outs2)
    if (idx < 0).all(axis=1).any():
        raise Unsupported("a pooling window lies entirely in the padding")
    count = (idx >= -1 if attrs.get("count_include_pad", 0) else idx >= 0).sum(axis=1)
    # end padding that covers exactly the windows (zeros do not change the sums)
    pe = [max(0, (outs2[i] - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - hw - pads[i])
          for i, hw in enumerate((H, W))]
    w = _undilate(np.ones((C, 1, k[0], k[1])), dil)
    conv = ops.Conv(w, None, (C, H, W), (C, outs2[0], outs2[1]), tuple(strides), (pads[0], pads[1], pe[0], pe[1]),
                    (1, 1), C)
    out_shape = (1, C) + tuple(outs)
    y = ctx.add(conv, [x], out_shape)
    return [ctx.add(ops.Scale(1.0 / count.astype(np.float64), None), [y], out_shape)]


@converter("ReduceSum", "ReduceMean")
def _reduce(ctx: Context, node, ins: list, attrs: dict) -> list:
    """A :class:`Select` moving the reduced axes last, then a row-wise all-ones :class:`Dense`."""
    x = _var(ins[0])
    axes = attrs.get("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = [int(a) for a in np.asarray(_const(ins[1], "axes")).reshape(-1)]
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
    v = _select_from_index(ctx, x, moved)
    w = np.full((1, n_red), 1.0 / n_red if node.op_type == "ReduceMean" else 1.0)
    out_shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape)) if keep else \
        tuple(x.shape[i] for i in kept)
    return [ctx.add(ops.Dense(w, None, x.size // n_red), [v], out_shape)]


# --------------------------------------------------------------------------- activations


def _unary(op_factory):
    def conv(ctx: Context, node, ins: list, attrs: dict) -> list:
        x = _var(ins[0])
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
    a = np.asarray(_const(v, f"Clip {what}"), np.float64)
    if a.ndim > 1 or a.size != 1:  # onnxruntime: "min should be a scalar" (rank 0, or 1-D of size 1)
        raise ModelError(f"Clip node {ctx.node_name}: {what} of shape {a.shape} is not a scalar")
    return a.reshape(())


@converter("Clip")
def _clip(ctx: Context, node, ins: list, attrs: dict) -> list:
    """``min(max(x, lo), hi)``. With ``lo > hi`` onnxruntime returns ``hi`` everywhere (opset >= 11;
    before, it refuses the model): the IR gets ``lo := min(lo, hi)``, the same function, so that
    every relaxation may assume ``lo <= hi``."""
    x = _var(ins[0])
    if ctx.opset < 11:
        lo, hi = np.float64(attrs.get("min", -np.inf)), np.float64(attrs.get("max", np.inf))
        if lo > hi:
            raise ModelError(f"Clip node {ctx.node_name}: min {lo:g} > max {hi:g} "
                             f"(onnxruntime refuses it before opset 11)")
    else:
        lo = _clip_bound(ins[1] if len(ins) > 1 else None, -np.inf, "min", ctx)
        hi = _clip_bound(ins[2] if len(ins) > 2 else None, np.inf, "max", ctx)
    return [ctx.add(ops.Clip(_flat(np.minimum(lo, hi), x.shape), _flat(hi, x.shape)), [x], x.shape)]


@converter("Max", "Min")
def _maxmin(ctx: Context, node, ins: list, attrs: dict) -> list:
    is_max = node.op_type == "Max"
    variables = [v for v in ins if isinstance(v, Var)]
    consts = [np.asarray(v, np.float64) for v in ins if not isinstance(v, Var)]
    shape = _bshape(*[v.shape for v in variables], *[c.shape for c in consts])
    variables = [_expand(ctx, v, shape) for v in variables]
    if len(variables) > 1:  # min(x, y) = -max(-x, -y)
        if not is_max:
            variables = [_scale(ctx, v, -1.0, None) for v in variables]
        n = variables[0].size
        cat = ctx.add(ops.Concat(tuple(n for _ in variables)), variables, (1, len(variables) * n))
        idx = np.stack([np.arange(n) + k * n for k in range(len(variables))], axis=1).astype(np.int64)
        y = ctx.add(ops.MaxGroup(idx), [cat], shape)
        if not is_max:
            y = _scale(ctx, y, -1.0, None)
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
    x = _var(ins[0])
    a, b = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    y = _scale(ctx, x, a, b)
    return [ctx.add(ops.Clip(np.zeros(y.size), np.ones(y.size)), [y], y.shape)]
