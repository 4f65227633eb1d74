"""Unary elementwise nonlinear ops beyond the activations of :mod:`certkit.graph.ops`: Exp, Log,
Reciprocal, Sqrt, Pow with a constant exponent, Sin, Cos, Erf, Sign and Floor.

Each is an :class:`~certkit.graph.ops.Activation` whose ``forward`` is the float64 reference of
the ONNX op as onnxruntime defines it, including its values off the real domain: ``Log(0) =
-inf``, ``Log(x < 0) = Sqrt(x < 0) = NaN``, ``Reciprocal(+-0) = +-inf``, ``Sign(0) = 0``.

``interval`` is the exact image of a box, with the convention the bound backends rely on: where
the op may give NaN or an infinite value on the box (a domain error, a pole), the bound on that
side is infinite -- never NaN, never a finite number -- so that no verdict can rest on it
(:mod:`certkit.verify.gate` only admits finite bounds). Their linear relaxations are in
:mod:`certkit.bounds.relax_elementwise`, their floating-point error rules there too.

``slope_max(lo, hi)`` bounds ``|f'|`` over ``[lo, hi]`` (``inf`` where f is unbounded or jumps):
the propagation of input errors (:func:`certkit.bounds.fperror.propagated_error`) uses it. Ops
with a slope bound independent of the region (Sin, Cos, Erf) also declare ``slope_bounds()`` for
the Lipschitz code; the others have none, and Lipschitz methods refuse them.
``needs_bounds(l, u)`` says which neurons' relaxation depends on their bounds (DeepPoly refines
only those).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .ops import Activation, register_op

Tensor = torch.Tensor
INF = float("inf")


def _inf_like(x: Tensor, sign: float = 1.0) -> Tensor:
    return torch.full_like(x, sign * INF)


@dataclass(frozen=True, eq=False)
class Unary(Activation):
    """Base of the ops of this module: monotone ops map the end points (interval of a box)."""

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        """(b, n) mask of neurons whose relaxation depends on their bounds: all of them."""
        return torch.ones_like(l, dtype=torch.bool)


@register_op
@dataclass(frozen=True, eq=False)
class Exp(Unary):
    """``e^x`` (ONNX Exp): convex and increasing; ``inf`` above ~709 in float64 (~88.7 in float32,
    where the error rule makes the bound infinite)."""

    kind: ClassVar[str] = "exp"

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.exp(hi)


@register_op
@dataclass(frozen=True, eq=False)
class Log(Unary):
    """Natural logarithm (ONNX Log): concave and increasing on ``x > 0``; ``-inf`` at 0, NaN below.
    Interval: ``[log lo, log hi]`` for ``lo >= 0``, ``(-inf, inf)`` where ``lo < 0`` (NaN possible)."""

    kind: ClassVar[str] = "log"

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(x)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        bad = ~(lo >= 0)  # NaN bounds count as bad too
        return (torch.where(bad, _inf_like(lo, -1), torch.log(lo.clamp(min=0))),
                torch.where(bad | ~(hi >= 0), _inf_like(hi), torch.log(hi.clamp(min=0))))

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.where(lo > 0, 1.0 / lo.clamp(min=1e-300), _inf_like(lo))


@register_op
@dataclass(frozen=True, eq=False)
class Reciprocal(Unary):
    """``1 / x`` (ONNX Reciprocal; also ``c / x``): decreasing and convex on ``x > 0``, decreasing and
    concave on ``x < 0``, a pole at 0 (``1/+0 = inf``, ``1/-0 = -inf``). A box containing 0 (end
    points included: the computed value may be ``-0``) has the image ``(-inf, inf)``."""

    kind: ClassVar[str] = "reciprocal"
    monotone: ClassVar[bool] = False

    def forward(self, x: Tensor) -> Tensor:
        return torch.reciprocal(x)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        ok = (lo > 0) | (hi < 0)  # False for NaN
        one = torch.ones_like(lo)
        return (torch.where(ok, 1.0 / torch.where(ok, hi, one), _inf_like(lo, -1)),
                torch.where(ok, 1.0 / torch.where(ok, lo, one), _inf_like(hi)))

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        ok = (lo > 0) | (hi < 0)
        m = torch.minimum(lo.abs(), hi.abs())
        return torch.where(ok, 1.0 / torch.where(ok, m, torch.ones_like(m)) ** 2, _inf_like(lo))


@register_op
@dataclass(frozen=True, eq=False)
class Sqrt(Unary):
    """``sqrt(x)`` (ONNX Sqrt): concave and increasing on ``x >= 0``, NaN below 0 (``sqrt(-0) = -0``).
    Interval: ``[sqrt lo, sqrt hi]`` for ``lo >= 0``, ``(-inf, inf)`` where ``lo < 0``."""

    kind: ClassVar[str] = "sqrt"

    def forward(self, x: Tensor) -> Tensor:
        return torch.sqrt(x)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        bad = ~(lo >= 0)
        return (torch.where(bad, _inf_like(lo, -1), torch.sqrt(lo.clamp(min=0))),
                torch.where(bad | ~(hi >= 0), _inf_like(hi), torch.sqrt(hi.clamp(min=0))))

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.where(lo > 0, 0.5 / torch.sqrt(lo.clamp(min=1e-300)), _inf_like(lo))

