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

import math
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



@register_op
@dataclass(frozen=True, eq=False)
class Pow(Unary):
    """``x^p`` for a constant exponent ``p`` (ONNX Pow with a constant scalar exponent, stored as the
    float32 value onnxruntime uses), ``p`` not 0 or 1 (the converter makes those a constant and the
    identity). C ``pow`` semantics: an integer ``p`` is defined on all reals (even: ``|x|^p``; odd:
    sign-preserving), a non-integer ``p`` only on ``x >= 0`` (NaN below); ``p < 0`` has a pole at 0.
    Interval: the extremes are at the end points and at 0 (when inside and ``p > 0``); a box
    reaching a pole or the NaN region gets ``(-inf, inf)``."""

    kind: ClassVar[str] = "pow"
    monotone: ClassVar[bool] = False
    exponent: float = 2.0

    @property
    def integer(self) -> bool:
        return float(self.exponent).is_integer()

    def forward(self, x: Tensor) -> Tensor:
        return torch.pow(x, self.exponent)

    def valid(self, lo: Tensor, hi: Tensor) -> Tensor:
        """(b, n) mask of boxes on which ``x^p`` is finite and real (no pole, no NaN region)."""
        if self.exponent > 0:
            return ~torch.isnan(lo + hi) if self.integer else lo >= 0
        return ((lo > 0) | (hi < 0)) if self.integer else lo > 0

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        ok = self.valid(lo, hi)
        a, b = self.forward(lo), self.forward(hi)
        low, up = torch.minimum(a, b), torch.maximum(a, b)
        if self.exponent > 0:
            inside = (lo < 0) & (hi > 0)
            low = torch.where(inside, torch.minimum(low, torch.zeros_like(low)), low)
        return torch.where(ok, low, _inf_like(lo, -1)), torch.where(ok, up, _inf_like(hi))

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        p = self.exponent
        ok = self.valid(lo, hi)
        far = torch.maximum(lo.abs(), hi.abs())
        near = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        # |f'| = |p| |x|^(p-1): largest at the far end for p >= 1, at the near end for p < 1
        s = abs(p) * (far ** (p - 1) if p >= 1 else near ** (p - 1))
        return torch.where(ok, s, _inf_like(lo))


@dataclass(frozen=True, eq=False)
class _Periodic(Unary):
    """Sin and Cos: 2 pi periodic, values in [-1, 1], slopes in [-1, 1]. The interval of a box is
    exact: an extreme of the box is +-1 when a peak (trough) lies in it, else at an end point.
    Peak positions ``phase + 2 pi n`` are computed in float64 and tested with a margin of a few
    ulps of the box (a peak wrongly counted in only widens the bound)."""

    monotone: ClassVar[bool] = False
    #: where the maximum and the minimum are, modulo 2 pi
    peak: ClassVar[float] = 0.0
    trough: ClassVar[float] = math.pi

    def _contains(self, lo: Tensor, hi: Tensor, phase: float) -> Tensor:
        two_pi = 2 * math.pi
        n = torch.ceil((lo - phase) / two_pi)
        p = phase + two_pi * n
        tol = 8 * 2.0 ** -53 * (lo.abs() + hi.abs() + two_pi)
        return (p - tol <= hi) | (p - two_pi + tol >= lo)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self.forward(lo), self.forward(hi)
        wide = ~(hi - lo < 2 * math.pi)  # also NaN and infinite boxes
        one = torch.ones_like(lo)
        up = torch.where(wide | self._contains(lo, hi, self.peak), one, torch.maximum(a, b))
        low = torch.where(wide | self._contains(lo, hi, self.trough), -one, torch.minimum(a, b))
        return low, up

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.ones_like(lo)

    def slope_bounds(self) -> tuple[float, float]:
        """Range of the derivative over all reals (Lipschitz bounds)."""
        return (-1.0, 1.0)


@register_op
@dataclass(frozen=True, eq=False)
class Sin(_Periodic):
    """``sin x`` (ONNX Sin)."""

    kind: ClassVar[str] = "sin"
    peak: ClassVar[float] = math.pi / 2
    trough: ClassVar[float] = -math.pi / 2

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.cos(x)


@register_op
@dataclass(frozen=True, eq=False)
class Cos(_Periodic):
    """``cos x`` (ONNX Cos)."""

    kind: ClassVar[str] = "cos"
    peak: ClassVar[float] = 0.0
    trough: ClassVar[float] = math.pi

    def forward(self, x: Tensor) -> Tensor:
        return torch.cos(x)

    def derivative(self, x: Tensor) -> Tensor:
        return -torch.sin(x)


#: erf'(0) = 2 / sqrt(pi), the largest slope of erf
ERF_SLOPE = 2.0 / math.sqrt(math.pi)


@register_op
@dataclass(frozen=True, eq=False)
class Erf(Unary):
    """The error function (ONNX Erf): increasing, S-shaped (convex below 0, concave above), values
    in (-1, 1), slopes in (0, 2 / sqrt(pi)]."""

    kind: ClassVar[str] = "erf"

    def forward(self, x: Tensor) -> Tensor:
        return torch.erf(x)

    def derivative(self, x: Tensor) -> Tensor:
        return ERF_SLOPE * torch.exp(-x * x)

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.full_like(lo, ERF_SLOPE)

    def slope_bounds(self) -> tuple[float, float]:
        return (0.0, ERF_SLOPE)


@register_op
@dataclass(frozen=True, eq=False)
class Sign(Unary):
    """``sign x`` (ONNX Sign): -1, 0 (at +-0, as onnxruntime) or 1; nondecreasing, a jump at 0. Its
    bounds come from the bounds of the *computed* input (every backend widens a node's bounds by
    its rounding error before the next op sees them), so a rounding that moves the input across 0
    is covered."""

    kind: ClassVar[str] = "sign"
    #: the input is integer-valued by construction (an index, a count, a difference of those: the
    #: lowered non-arithmetic tails of :mod:`certkit.onnx.converters.tails`): every bound on it may be
    #: rounded inward to integers first (:meth:`box`), which decides ``sign(i - k)`` at ``i = k``
    integer_input: bool = False

    def forward(self, x: Tensor) -> Tensor:
        return torch.sign(x)

    def box(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """The bounds the relaxations use: ``[ceil l, floor u]`` for an integer-valued input (sound:
        the computed input is an integer -- float32 sums and whole multiples of integers are integers,
        exact below 2^24 and integers above), unchanged otherwise or where that box is empty."""
        if not self.integer_input:
            return l, u
        a, b = torch.ceil(l), torch.floor(u)
        ok = a <= b  # False for NaN: keep those bounds as they are
        return torch.where(ok, a, l), torch.where(ok, b, u)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = self.box(lo, hi)
        return torch.sign(lo), torch.sign(hi)

    def surrogate(self, x: Tensor) -> Tensor:
        """``sign x`` with the gradient of ``tanh(x / s)`` (a smooth stand-in, as BPDA attacks
        binarised nets: Athalye et al. 2018), ``s`` = :data:`SIGN_TEMPERATURE` times the mean ``|x|``
        of each sample: the gradient favours the units near their switching point, which the
        identity's gradient (straight-through) does not (on the binarised traffic-sign nets of
        VNN-COMP 2023 PGD then stalled at its best random sample). For attacks only."""
        dims = tuple(range(1, x.dim())) or None
        s = SIGN_TEMPERATURE * (x.detach().abs().mean(dim=dims, keepdim=True) if dims else x.detach().abs().mean())
        soft = torch.tanh(x / s.clamp(min=1e-30))
        return torch.sign(x).detach() + (soft - soft.detach())  # the value exactly sign(x)

    def constant_on(self, l: Tensor, u: Tensor) -> Tensor:
        """(b, n) mask of boxes on which sign is constant."""
        l, u = self.box(l, u)
        return (l > 0) | (u < 0) | ((l == 0) & (u == 0))

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        return ~self.constant_on(l, u)

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.where(self.constant_on(lo, hi), torch.zeros_like(lo), _inf_like(lo))


#: the temperature of :meth:`Sign.surrogate`, relative to the mean ``|x|`` (0.03-1 measured on the three
#: traffic-sign instances of ../shared/benchmarks/wild: 0.3 finds all three, 0.1 and 1 one, 0.03 none)
SIGN_TEMPERATURE = 0.3


@register_op
@dataclass(frozen=True, eq=False)
class Floor(Unary):
    """``floor x`` (ONNX Floor): nondecreasing, jumps at the integers, exact in floating point.
    ``x - 1 < floor x <= x``; constant on a box inside one ``[n, n + 1)``. As for :class:`Sign`, the
    bounds come from those of the computed input."""

    kind: ClassVar[str] = "floor"

    def forward(self, x: Tensor) -> Tensor:
        return torch.floor(x)

    def surrogate(self, x: Tensor) -> Tensor:
        """``floor x`` with the identity's gradient (straight-through); for attacks only."""
        return torch.floor(x).detach() + (x - x.detach())  # the value exactly floor(x)

    def constant_on(self, l: Tensor, u: Tensor) -> Tensor:
        return torch.floor(l) == torch.floor(u)

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        return ~self.constant_on(l, u)

    def slope_max(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.where(self.constant_on(lo, hi), torch.zeros_like(lo), _inf_like(lo))
