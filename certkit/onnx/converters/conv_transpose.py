"""Converter of ConvTranspose (1-D and 2-D) to :class:`~certkit.graph.conv_transpose.ConvTranspose`.

The output geometry is onnxruntime's (``ConvTransposeAttributes::ComputeTransposePadAndOutputShape``,
as onnxruntime 1.32 runs it, found by probing every branch with odd total paddings). Per spatial axis, with ``full = (in - 1) stride + (k - 1) dilation + 1 + output_padding``:

* ``output_shape`` given: the total padding is ``max(0, full - out)`` (an ``out`` beyond ``full``
  adds zeros at the end); ``SAME_UPPER`` puts the smaller half at the beginning, every other
  ``auto_pad`` (``NOTSET`` included) the larger half;
* ``auto_pad`` ``SAME_UPPER``/``SAME_LOWER`` without ``output_shape``: the total padding is
  ``max(0, full - in * stride)``, split as above, ``out = full - total``; ``VALID``: no padding,
  ``out = full``;
* else ``pads`` (begin, end) and ``out = full - begin - end``.

A dilated kernel is spread out with zeros (the same map; torch's float64 kernels are much slower
for dilated convolutions).
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Unsupported, Var
from .base import converter, variable
from .conv_pool import _undilate


def _str(v, default: str) -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


def transpose_geometry(in_hw, k, strides, dil, out_pad, pads, auto_pad: str, output_shape):
    """``(begin, out)`` per spatial axis: the offset of the output window in the full transposed
    convolution (without ``output_padding``) and the output size, as onnxruntime computes them."""
    n = len(in_hw)
    if len(k) != n or len(strides) != n or len(dil) != n or len(out_pad) != n or (pads and len(pads) != 2 * n):
        raise ModelError(f"kernel {k}, strides {strides}, dilations {dil}, output_padding {out_pad} or "
                         f"pads {pads} do not fit {n} spatial dimension(s)")
    if min(strides) < 1 or min(dil) < 1 or min(k) < 1 or min(out_pad) < 0:
        raise ModelError(f"non-positive kernel {k}, strides {strides} or dilations {dil}, "
                         f"or negative output_padding {out_pad}")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise Unsupported(f"auto_pad={auto_pad!r}")
    pads = [int(p) for p in pads] if pads else [0] * (2 * n)
    if auto_pad == "NOTSET" and not output_shape and min(pads) < 0:
        raise Unsupported("negative pads")
    if output_shape:
        output_shape = list(output_shape)
        if len(output_shape) == n + 2:
            output_shape = output_shape[2:]
        if len(output_shape) != n:
            raise ModelError(f"output_shape {output_shape} does not fit {n} spatial dimension(s)")
    begin, outs = [], []
    for i in range(n):
        full = (in_hw[i] - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 + out_pad[i]
        if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, full - (int(output_shape[i]) if output_shape else in_hw[i] * strides[i]))
            # an output_shape beyond the full size extends it with zeros; SAME never does
            out = int(output_shape[i]) if output_shape else full - total
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            out, head = full, 0
        else:
            head, out = pads[i], full - pads[i] - pads[i + n]
        if out <= 0:
            raise ModelError(f"ConvTranspose output size {out} along spatial axis {i} is not positive")
        begin.append(int(head))
        outs.append(int(out))
    return begin, outs


@converter("ConvTranspose")
def _conv_transpose(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = variable(ins[0])
    if any(isinstance(v, Var) for v in ins[1:]):
        raise Unsupported("a variable weight or bias")
    w = np.asarray(ins[1], np.float64)
    b = None if len(ins) < 3 or ins[2] is None else np.asarray(ins[2], np.float64).reshape(-1)
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-D transposed convolution")
    if len(x.shape) != nd + 2 or x.shape[0] != 1:
        raise Unsupported(f"input of shape {x.shape} (needs (1, C, ...) with {nd} spatial dims)")
    groups = int(attrs.get("group", 1))
    c_in = x.shape[1]
    if groups < 1 or w.shape[0] != c_in or c_in % groups:
        raise ModelError(f"ConvTranspose node {ctx.node_name}: weight {w.shape} with group={groups} "
                         f"does not fit input {x.shape}")
    c_out = w.shape[1] * groups
    if b is not None and b.shape != (c_out,):
        raise ModelError(f"ConvTranspose node {ctx.node_name}: bias of shape {b.shape} for {c_out} channels")
    k = list(w.shape[2:])
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != k:
        raise ModelError(f"ConvTranspose node {ctx.node_name}: kernel_shape {attrs['kernel_shape']} != weight {k}")
    strides = [int(s) for s in attrs.get("strides", [1] * nd)]
    dil = [int(d) for d in attrs.get("dilations", [1] * nd)]
    out_pad = [int(p) for p in attrs.get("output_padding", [0] * nd)]
    begin, outs = transpose_geometry(list(x.shape[2:]), k, strides, dil, out_pad, attrs.get("pads"),
                                     _str(attrs.get("auto_pad"), "NOTSET"), attrs.get("output_shape"))
    if nd == 1:  # 1-D as 2-D with H = 1
        w = w[:, :, None, :]
        in_shape = (c_in, 1, x.shape[2])
        out3 = (c_out, 1, outs[0])
        strides2, dil2, begin2 = (1, strides[0]), (1, dil[0]), (0, begin[0])
    else:
        in_shape = tuple(x.shape[1:])
        out3 = (c_out, outs[0], outs[1])
        strides2, dil2, begin2 = tuple(strides), tuple(dil), tuple(begin)
    op = ops.ConvTranspose(_undilate(w, dil2), b, in_shape, out3, strides2, begin2, (1, 1), groups)
    return [ctx.add(op, [x], (1, c_out) + tuple(outs))]
