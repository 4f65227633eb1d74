"""Converters of Resize (opsets 10-19) and Upsample (opsets 7-9) with constant scales or sizes.

Both are separable: along every axis whose scale is not 1, output coordinate ``o`` reads input
coordinate(s) computed from ``o``; the other axes are copied. The index maps and weights are
computed here the way onnxruntime computes them (``upsamplebase.h``, ``upsample.cc``), in float32,
because a coordinate computed in float64 can land on the other side of a rounding boundary:

* the scale of an axis is the given float32 scale, or ``float(out) / float(in)`` for given sizes
  (``keep_aspect_ratio_policy`` applied); the output size is ``int(scale * in)`` for given scales;
* the original coordinate ``x`` of output index ``o`` per ``coordinate_transformation_mode``
  (float32 arithmetic, in onnxruntime's order of operations; ``asymmetric`` before opset 11);
* ``nearest``: ``x`` rounded per ``nearest_mode`` (before opset 11: truncated when upsampling,
  ceiled when downsampling), clamped to the axis: a :class:`~certkit.graph.ops.Select`;
* ``linear``: ``x`` clamped to ``[0, in - 1]``, ``i1 = int(x)``, ``i2 = min(i1 + 1, in - 1)``,
  weights ``i2 - x`` on ``i1`` and ``x - i1`` on ``i2`` (0.5 each when ``i1 = i2``); the
  product over the interpolated axes: a :class:`~certkit.graph.sparse.SparseLinear` with
  nonnegative weights summing to 1, one row entry per corner (``2^m`` for ``m`` axes).

onnxruntime holds these weights in float32 (each factor at most one rounding off the value
computed here in float64 from the same float32 coordinate, and ``m - 1`` roundings for their
product): ``SparseLinear.weight_error`` carries that relative error into the floating-point
model, whatever precision the model computes in (:mod:`certkit.bounds.fperror`).

Refused with a reason: ``cubic`` mode, ``antialias``, ``tf_crop_and_resize`` (a region of
interest with extrapolation), variable scales or sizes, and linear resizes onnxruntime itself
refuses (scales other than 1 on the batch and channel axes of a 4-D or 5-D tensor).
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ...tolerances import gamma
from ..importer import Context, Unsupported, Var
from .base import converter, select_from_index, variable

f32 = np.float32


def _str(v, default: str) -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


def original_coordinate(mode: str, o: np.ndarray, scale: float, n_out: int, n_in: int) -> np.ndarray:
    """onnxruntime's float32 original coordinate of the output indices ``o`` along one axis."""
    x, s, lo, li = o.astype(f32), f32(scale), f32(n_out), f32(n_in)
    half = f32(0.5)
    if mode == "asymmetric":
        return x / s
    if mode == "half_pixel":
        return (x + half) / s - half
    if mode == "pytorch_half_pixel":
        return (x + half) / s - half if n_out > 1 else np.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / s
    if mode == "align_corners":
        return np.zeros_like(x) if n_out == 1 else x * (li - f32(1)) / (lo - f32(1))
    if mode == "half_pixel_symmetric":
        adjustment = lo / (s * li)
        offset = (li / f32(2)) * (f32(1) - adjustment)
        # onnxruntime adds the double constant 0.5 here: this part is computed in float64
        return (np.float64(offset) + (x.astype(np.float64) + 0.5) / np.float64(s) - 0.5).astype(f32)
    raise Unsupported(f"coordinate_transformation_mode {mode!r}")


def nearest_index(mode: str, x: np.ndarray, scale: float, n_in: int) -> np.ndarray:
    """The input index onnxruntime reads for float32 coordinates ``x`` (clamped to the axis)."""
    x64 = x.astype(np.float64)  # exact: float32 values
    half_away = np.where(x64 >= 0, np.floor(x64 + 0.5), np.ceil(x64 - 0.5))  # std::round
    if mode == "round_prefer_floor":
        idx = np.where(x == (np.trunc(x64).astype(f32) + f32(0.5)), np.floor(x64), half_away)
    elif mode == "round_prefer_ceil":
        idx = half_away
    elif mode == "floor":
        idx = np.floor(x64)
    elif mode == "ceil":
        idx = np.ceil(x64)
    elif mode == "simple":  # before opset 11
        idx = np.ceil(x64) if f32(scale) < 1 else np.trunc(x64)
    else:
        raise Unsupported(f"nearest_mode {mode!r}")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def exact_coordinate(mode: str, o: int, scale: float, n_out: int, n_in: int):
    """The original coordinate of output index ``o`` in exact rational arithmetic (the scale as the
    float32 number it is)."""
    from fractions import Fraction

    s, x, half = Fraction(float(np.float32(scale))), Fraction(o), Fraction(1, 2)
    if mode == "asymmetric":
        return x / s
    if mode in ("half_pixel", "pytorch_half_pixel"):
        return (x + half) / s - half if mode == "half_pixel" or n_out > 1 else Fraction(0)
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / s
    if mode == "align_corners":
        return Fraction(0) if n_out == 1 else x * (n_in - 1) / (n_out - 1)
    return Fraction(n_in, 2) * (1 - Fraction(n_out) / (s * n_in)) + (x + half) / s - half


def _check_nearest_boundaries(mode: str, nearest_mode: str, x: np.ndarray, scale: float, n_out: int,
                              n_in: int) -> None:
    """Refuse a nearest resize with a coordinate within a few ulps of a rounding boundary where
    the two sides give different input indices, unless the coordinate is computed exactly.
    onnxruntime's nearest path rounds such coordinates differently from the float32 formula its
    linear path uses (which this module reproduces): measured with onnxruntime 1.32 on 2372
    random 1-D index maps, 4 differ, each at a coordinate one ulp from a half-integer that is not
    its exact value; exactly computed boundaries (integer and power-of-two scales) agree."""
    from fractions import Fraction

    x64 = x.astype(np.float64)
    wiggle = 2.0 ** -18 * np.maximum(1.0, np.abs(x64))
    lo = nearest_index(nearest_mode, (x64 - wiggle).astype(f32), scale, n_in)
    hi = nearest_index(nearest_mode, (x64 + wiggle).astype(f32), scale, n_in)
    for o in np.flatnonzero(lo != hi):
        if exact_coordinate(mode, int(o), scale, n_out, n_in) != Fraction(float(x64[o])):
            raise Unsupported(f"nearest resize ({mode}, {nearest_mode}): the coordinate of output index "
                              f"{int(o)} ({float(x64[o])!r}) lies within rounding of a boundary "
                              "(onnxruntime's choice there is not reproduced)")


def linear_taps(x: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index (n, 2), weight (n, 2))`` of 1-D linear interpolation at float32 coordinates ``x``."""
    xc = np.minimum(np.maximum(x, f32(0)), f32(n_in - 1)).astype(np.float64)
    i1 = np.minimum(xc.astype(np.int64), n_in - 1)
    i2 = np.minimum(i1 + 1, n_in - 1)
    w1, w2 = i2 - xc, xc - i1
    same = i1 == i2
    w1, w2 = np.where(same, 0.5, w1), np.where(same, 0.5, w2)
    return np.stack([i1, i2], axis=1), np.stack([w1, w2], axis=1)


def _scales_and_sizes(node, ins: list, attrs: dict, opset: int, shape: tuple[int, ...]):
    """``(scales (float32, per axis), output shape)`` as onnxruntime derives them."""
    r = len(shape)
    if node.op_type == "Upsample" and opset < 9:
        scales, sizes = attrs.get("scales"), None
    elif node.op_type == "Upsample" or opset == 10:
        scales, sizes = (ins[1] if len(ins) > 1 else None), None
    else:
        scales = ins[2] if len(ins) > 2 else None
        sizes = ins[3] if len(ins) > 3 else None
    if isinstance(scales, Var) or isinstance(sizes, Var):
        raise Unsupported("variable scales or sizes")
    scales = None if scales is None or np.size(scales) == 0 else np.asarray(scales, f32).reshape(-1)
    sizes = None if sizes is None or np.size(sizes) == 0 else np.asarray(sizes, np.int64).reshape(-1)
    if (scales is None) == (sizes is None):
        raise ModelError(f"{node.op_type} node: exactly one of scales and sizes must be given")
    axes = [int(a) % r for a in attrs.get("axes", [])] if opset >= 18 else []
    given = scales if scales is not None else sizes
    if axes and len(axes) != len(given) or not axes and len(given) != r:
        raise ModelError(f"{node.op_type} node: {len(given)} scales/sizes for rank {r} (axes {axes or 'all'})")
    axes = axes or list(range(r))
    if scales is not None:
        full = np.ones(r, f32)
        full[axes] = scales
        out = [int(full[i] * f32(shape[i])) for i in range(r)]
        return full, tuple(out)
    out = list(shape)
    for a, s in zip(axes, sizes):
        out[a] = int(s)
    full = np.array([f32(o) / f32(i) for o, i in zip(out, shape)], f32)
    policy = _str(attrs.get("keep_aspect_ratio_policy"), "stretch") if opset >= 18 else "stretch"
    if policy != "stretch":
        if policy not in ("not_larger", "not_smaller"):
            raise Unsupported(f"keep_aspect_ratio_policy {policy!r}")
        pick = min if policy == "not_larger" else max
        s = pick(full[a] for a in axes)
        full = np.ones(r, f32)
        for a in axes:
            full[a] = s
            out[a] = int(np.round(np.float64(f32(s * f32(shape[a])))))  # std::round: halves away from 0
    return full, tuple(out)


def _flat_index(per_axis: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Flat input index of every (output position, corner): ``per_axis[a]`` is (out_a, k_a)."""
    strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
    r = len(shape)
    total = 0
    for a, (idx, st) in enumerate(zip(per_axis, strides)):
        view = [1] * (2 * r)
        view[a], view[r + a] = idx.shape
        total = total + idx.reshape(view) * st
    return total


@converter("Resize", "Upsample")
def _resize(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = variable(ins[0])
    if any(isinstance(v, Var) for v in ins[1:]):
        raise Unsupported("variable roi, scales or sizes")
    opset, shape = ctx.opset, x.shape
    mode = _str(attrs.get("mode"), "nearest")
    if mode == "bilinear" and node.op_type == "Upsample":
        mode = "linear"
    if mode == "cubic":
        raise Unsupported("mode 'cubic' (bicubic interpolation is not lowered)")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode {mode!r}")
    if opset >= 18 and int(attrs.get("antialias", 0)):
        raise Unsupported("antialias=1")
    ctm = _str(attrs.get("coordinate_transformation_mode"), "half_pixel") if opset >= 11 and \
        node.op_type == "Resize" else "asymmetric"
    if ctm == "tf_crop_and_resize":
        raise Unsupported("coordinate_transformation_mode 'tf_crop_and_resize' (region of interest)")
    nearest_mode = _str(attrs.get("nearest_mode"), "round_prefer_floor") if opset >= 11 and \
        node.op_type == "Resize" else "simple"
    scales, out_shape = _scales_and_sizes(node, ins, attrs, opset, shape)
    if node.op_type == "Upsample" and (scales < 1).any():
        raise ModelError(f"Upsample node {ctx.node_name}: scales {scales.tolist()} below 1")
    if (scales <= 0).any() or min(out_shape) <= 0:
        raise ModelError(f"{node.op_type} node {ctx.node_name}: scales {scales.tolist()} give output {out_shape}")
    if out_shape == shape:  # onnxruntime copies the input
        return [x]
    r = len(shape)
    if mode == "linear":
        s = scales
        ok = r in (2, 3) or (r == 4 and s[0] == 1 and (s[1] == 1 or s[3] == 1)) or (r == 5 and s[0] == s[1] == 1)
        if not ok:
            raise Unsupported(f"linear resize of a rank-{r} tensor with scales {s.tolist()} "
                              "(onnxruntime interpolates 2 or 3 axes only)")
    per_idx, per_w, m = [], [], 0
    for a in range(r):
        o = np.arange(out_shape[a])
        if scales[a] == 1:  # onnxruntime copies such an axis (in bilinear mode too)
            per_idx.append(o[:, None])
            per_w.append(np.ones((out_shape[a], 1)))
            continue
        xa = original_coordinate(ctm, o, float(scales[a]), out_shape[a], shape[a])
        if mode == "nearest":
            _check_nearest_boundaries(ctm, nearest_mode, xa, float(scales[a]), out_shape[a], shape[a])
            per_idx.append(nearest_index(nearest_mode, xa, float(scales[a]), shape[a])[:, None])
            per_w.append(np.ones((out_shape[a], 1)))
        else:
            i, w = linear_taps(xa, shape[a])
            per_idx.append(i)
            per_w.append(w)
            m += 1
    idx = _flat_index(per_idx, shape)
    n_out = int(np.prod(out_shape))
    if mode == "nearest" or m == 0:
        return [select_from_index(ctx, x, idx.reshape(out_shape))]
    wt = _weights(per_w, r)
    k = idx.size // n_out
    op = ops.SparseLinear(idx.reshape(n_out, k).astype(np.int64), wt.reshape(n_out, k), x.size,
                          weight_error=gamma(2 * m - 1, 2.0 ** -24))
    return [ctx.add(op, [x], out_shape)]


def _weights(per_w: list[np.ndarray], r: int) -> np.ndarray:
    """The product over the axes of each corner's weights, shaped like :func:`_flat_index`."""
    total = 1.0
    for a, w in enumerate(per_w):
        view = [1] * (2 * r)
        view[a], view[r + a] = w.shape
        total = total * w.reshape(view)
    return np.asarray(total, np.float64)

