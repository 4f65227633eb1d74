"""Converters of convolutions and pooling (Conv, MaxPool, AveragePool and their global
forms), with the window geometry they share (ONNX padding, ``auto_pad``, ``ceil_mode``).
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Unsupported, Var
from .base import converter, variable


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
    x = variable(ins[0])
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
    variable(x)
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
