"""Rewrite passes on the IR. Each preserves the function exactly (tests check it on
random inputs against onnxruntime); they only make the graph smaller.

* dead-node elimination;
* recognition of the paper activations (N-activation, capped leaky ReLU, MaxMin) in their
  lowered form, one IR op each (:mod:`certkit.onnx.patterns`);
* fusion of elementwise affine maps (:class:`Scale`) into neighbouring
  :class:`Dense`/:class:`Conv`/:class:`Scale` nodes (input normalisation,
  bias Adds, BatchNormalization after a convolution or a transposed one; a per-channel
  normalisation before a convolution when the padding allows it).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..bounds.fperror import bias_magnitude, own_steps
from ..graph.graph import Graph, Node
from ..graph.ops import Conv, ConvTranspose, Dense, Scale
from .patterns import recognise_activations


def _single_consumer(g: Graph, i: int) -> bool:
    return len(g.consumers[i]) == 1 and i != g.output


def _fuse_pair(prev, nxt):
    """Return an op equal to ``nxt(prev(x))`` (with the floating-point bookkeeping of both, see
    :func:`_with_fp`) or None."""
    fused = _fuse_exact(prev, nxt)
    return None if fused is None else _with_fp(prev, nxt, fused)


def _with_fp(prev, nxt, fused):
    """``fused`` carrying the roundings of both ops and the magnitude ``|M2| beta1 + beta2`` of
    their constants before cancellation (:mod:`certkit.bounds.fperror`: the error of ``nxt o prev``
    is at most ``gamma_{S1+S2} (|M| |x| + |M2| beta1 + beta2)`` when one of them is diagonal, as
    every fusion here is)."""
    steps = own_steps(prev) + own_steps(nxt)
    base = own_steps(dataclasses.replace(fused, fp_extra=0))
    b1, b2 = bias_magnitude(prev), bias_magnitude(nxt)
    beta = None
    if b1 is not None:
        with torch.no_grad():
            beta = nxt.apply_abs(torch.as_tensor(b1, dtype=torch.float64)[None])[0].numpy()
    if b2 is not None:
        beta = b2 if beta is None else beta + b2
    return dataclasses.replace(fused, fp_extra=steps - base, fp_bias=beta)


def _fuse_exact(prev, nxt):
    """Return an op equal to ``nxt(prev(x))`` in real arithmetic, or None."""
    if isinstance(prev, Scale) and isinstance(nxt, Scale):
        a = prev.scale * nxt.scale
        c = None
        if prev.shift is not None or nxt.shift is not None:
            c = (0 if prev.shift is None else prev.shift * nxt.scale) + (0 if nxt.shift is None else nxt.shift)
            c = np.asarray(c, dtype=np.float64)
        return Scale(a, c)
    if isinstance(prev, Dense) and prev.rows == 1 and isinstance(nxt, Scale):
        w = prev.weight * nxt.scale[:, None]
        b = nxt.scale * (0 if prev.bias is None else prev.bias) + (0 if nxt.shift is None else nxt.shift)
        return Dense(w, np.asarray(b, dtype=np.float64) if np.ndim(b) else None, 1)
    if isinstance(prev, Scale) and isinstance(nxt, Dense) and nxt.rows == 1:
        w = nxt.weight * prev.scale[None, :]
        b = nxt.bias
        if prev.shift is not None:
            b = (0 if b is None else b) + nxt.weight @ prev.shift
        return Dense(w, b, 1)
    if isinstance(prev, Scale) and isinstance(nxt, Conv):
        return _scale_into_conv(prev, nxt)
    if isinstance(prev, Conv) and isinstance(nxt, Scale):
        C, H, W = prev.out_shape
        a = nxt.scale.reshape(C, H * W)
        c = np.zeros((C, H * W)) if nxt.shift is None else nxt.shift.reshape(C, H * W)
        if not ((a == a[:, :1]).all() and (c == c[:, :1]).all()):
            return None
        a, c = a[:, 0], c[:, 0]
        w = prev.weight * a[:, None, None, None]
        b = c + a * (0 if prev.bias is None else prev.bias)
        return Conv(w, b, prev.in_shape, prev.out_shape, prev.strides, prev.pads, prev.dilations, prev.groups)
    if isinstance(prev, ConvTranspose) and isinstance(nxt, Scale):
        return prev.then_scale(nxt.scale, nxt.shift)
    return None


def _scale_into_conv(prev: Scale, conv: Conv):
    """``conv(a * x + c)`` as one convolution when ``a``, ``c`` are constant per input channel.

    The scale always folds into the weights (the zero padding stays zero); the shift only
    when there is no padding (a padded border would otherwise see ``c`` instead of 0).
    """
    C, H, W = conv.in_shape
    a = prev.scale.reshape(C, H * W)
    if not (a == a[:, :1]).all():
        return None
    a = a[:, 0]
    c = None
    if prev.shift is not None and np.any(prev.shift != 0):
        c = prev.shift.reshape(C, H * W)
        if any(conv.pads) or not (c == c[:, :1]).all():
            return None
        c = c[:, 0]
    c_out, c_in_g = conv.weight.shape[:2]
    # input channel read by weight[o, j]: group (o // (c_out / groups)), offset j
    chan = (np.arange(c_out)[:, None] // (c_out // conv.groups)) * c_in_g + np.arange(c_in_g)[None, :]
    w = conv.weight * a[chan][:, :, None, None]
    b = conv.bias
    if c is not None:
        b = (0 if b is None else b) + (conv.weight * c[chan][:, :, None, None]).sum(axis=(1, 2, 3))
    return Conv(w, b, conv.in_shape, conv.out_shape, conv.strides, conv.pads, conv.dilations, conv.groups)


def fuse_affine(g: Graph) -> Graph:
    """Fuse chains ``Scale``/``Dense``/``Conv`` where the first node has one consumer."""
    while True:
        for i, n in enumerate(g.nodes):
            if i not in g.live or len(n.inputs) != 1 or n.inputs[0] == 0:
                continue
            j = n.inputs[0]
            if not _single_consumer(g, j):
                continue
            fused = _fuse_pair(g.nodes[j].op, n.op)
            if fused is None:
                continue
            nodes = list(g.nodes)
            nodes[i] = Node(n.name, fused, g.nodes[j].inputs)
            g = prune(Graph(tuple(nodes), g.shapes, g.output, g.input_name, g.output_name,
                            g.source, g.sha256, g.meta))
            break
        else:
            return g


def prune(g: Graph) -> Graph:
    """Drop nodes the output does not depend on and renumber."""
    keep = sorted(g.live | {0})
    new_of = {old: k for k, old in enumerate(keep)}
    nodes = tuple(Node(g.nodes[i].name, g.nodes[i].op, tuple(new_of[j] for j in g.nodes[i].inputs)) for i in keep)
    shapes = tuple(g.shapes[i] for i in keep)
    return Graph(nodes, shapes, new_of[g.output], g.input_name, g.output_name, g.source, g.sha256, g.meta)


def simplify(g: Graph) -> Graph:
    return prune(fuse_affine(prune(recognise_activations(prune(g)))))
