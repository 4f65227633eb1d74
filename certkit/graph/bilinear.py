"""Nonlinear ops of several variable inputs: the elementwise product ``y = x1 * x2``.

A :class:`Bilinear` op is neither a :class:`~certkit.graph.ops.LinearOp` nor a single-input
:class:`~certkit.graph.ops.Activation`: its value depends nonlinearly on several inputs of the
same size. Each provides ``forward(*xs)`` and ``interval(*boxes)`` (the exact image of a box, with
infinite sides wherever the computed value may be infinite or NaN). Its linear relaxation for
back-substitution (McCormick planes, per input a coefficient tensor plus a constant, as
:class:`~certkit.bounds.relaxations.PairRelax`) and its floating-point error rule live in
:mod:`certkit.bounds.relax_bilinear`.

ONNX ops lowered to :class:`Product` (:mod:`certkit.onnx.converters.products`): ``Mul`` of two
variable tensors, ``Div`` by a variable tensor (``x * Reciprocal(y)``), ``MatMul`` of two variable
tensors (both operands copied to the pairwise layout, a Product, then a summing Dense), the
variance and the normalisation of ``LayerNormalization``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .ops import Op, register_op

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class Bilinear(Op):
    """Base of the nonlinear ops of several same-size inputs (``arity`` of them)."""

    arity: ClassVar[int] = 2

    def interval(self, *boxes: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Exact image of the box ``boxes`` (one ``(lo, hi)`` per input), elementwise."""
        raise NotImplementedError


def _corner_products(l1: Tensor, u1: Tensor, l2: Tensor, u2: Tensor) -> Tensor:
    """The four corner products ``(4, ...)``; ``inf * 0`` gives NaN there (see :meth:`Product.interval`)."""
    return torch.stack([l1 * l2, l1 * u2, u1 * l2, u1 * u2])


def _square_interval(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]`` under ``x^2``: ``[0 or min(l^2, u^2), max(l^2, u^2)]``; ``(-inf, inf)`` for NaN bounds."""
    a, b = l * l, u * u
    lo = torch.where((l <= 0) & (u >= 0), torch.zeros_like(l), torch.minimum(a, b))
    hi = torch.maximum(a, b)
    bad = torch.isnan(l) | torch.isnan(u)
    inf = torch.full_like(l, float("inf"))
    big = torch.finfo(l.dtype).max
    return torch.where(bad, -inf, torch.where(lo == inf, big, lo)), torch.where(bad, inf, hi)


@register_op
@dataclass(frozen=True, eq=False)
class Product(Bilinear):
    """``y_i = x1_i * x2_i`` (ONNX Mul of two variable tensors, after broadcasting).

    ``interval``: a bilinear function on a box takes its extremes at the corners, so the image is
    ``[min, max]`` of the four corner products. A corner ``inf * 0`` (an infinite bound meeting a
    zero one) is NaN: it stands for products that may be anything (the computed factor may be
    infinite, and onnxruntime's ``inf * 0`` is NaN), so it counts as ``-inf`` for the minimum and
    ``+inf`` for the maximum; NaN bounds of an input do the same. A lower bound above the float64
    range (finite factors whose product overflows) becomes the largest finite number, an upper bound
    below it the most negative one. ``square`` (set when both inputs are one node, ``x * x``): the
    image of the square, ``[0, max]`` when the box contains 0.
    """

    kind: ClassVar[str] = "product"
    #: both inputs are one node (``x * x``): the image of a box is that of the square, ``>= 0``
    square: bool = False

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1 * x2

    def interval(self, b1: tuple[Tensor, Tensor], b2: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if self.square:
            return _square_interval(*b1)
        c = _corner_products(b1[0], b1[1], b2[0], b2[1])
        bad = torch.isnan(c)
        inf = torch.full_like(c, float("inf"))
        lo, hi = torch.where(bad, -inf, c).amin(0), torch.where(bad, inf, c).amax(0)
        # a finite product beyond the float64 range: its real bound is replaced by the largest finite
        # number (sound), so that widening by an infinite error gives (-inf, inf), never inf - inf
        big = torch.finfo(lo.dtype).max
        return torch.where(lo == inf[0], big, lo), torch.where(hi == -inf[0], -big, hi)
