"""Linear relaxation and floating-point error rule of :class:`~certkit.graph.bilinear.Product`.

**McCormick planes** (McCormick 1976; the bilinear relaxation of CROWN for transformers, Shi et al.
2020, "Robustness verification for transformers", and auto_LiRPA's ``BoundMul``). For ``y = x1 x2``
with ``x1 in [l1, u1]``, ``x2 in [l2, u2]``, the products of two nonnegative factors

    (x1 - l1)(x2 - l2) >= 0,   (u1 - x1)(u2 - x2) >= 0,   (x1 - l1)(u2 - x2) >= 0,   (u1 - x1)(x2 - l2) >= 0

give two lower and two upper planes, each of the form ``a1 x1 + a2 x2 - a1 a2``:

    lower  (a1, a2) = (l2, l1)  or  (u2, u1);      upper  (a1, a2) = (u2, l1)  or  (l2, u1).

Each plane is exact at three corners of the box and off by ``(u1 - l1)(u2 - l2)`` at the fourth, so
the choice per neuron is the plane whose weak corner matters least: the lower plane ``(l2, l1)`` is
weak at ``(u1, u2)`` and is taken when ``u1 u2 >= l1 l2`` (the weak corner is not the minimum), else
``(u2, u1)``; the upper plane ``(u2, l1)`` is weak at ``(u1, l2)`` and is taken when
``u1 l2 <= l1 u2``, else ``(l2, u1)``. Any choice is sound; this one makes the concretisation of the
plane over the box as tight as a single plane allows. In back-substitution a nonnegative coefficient
on ``y`` takes the lower plane and a negative one the upper plane (as :class:`PairRelax` does, the
relaxation returns one coefficient tensor per input plus a constant).

**alpha-CROWN** (:meth:`McCormick.backsub_mixed`; auto_LiRPA optimises its ``BoundMul`` the same way):
any convex combination ``a lo1 + (1 - a) lo2`` of the two lower planes is a lower plane, and likewise
above, so per row and neuron the weights ``a``, ``b`` in [0, 1] are free parameters; they start at
the choice above (0 or 1) and are optimised with the slopes. On vit_2023's pgd_2_3_16 they (with the
softmax's tangent points) took the worst row of img 7700 from -0.23 to +0.51.

**The same variable on both inputs** (``x * x``, e.g. a variance): McCormick stays sound (its lower
planes are the tangents at ``l`` and ``u``), but a square has better ones: below, the tangent at the
point ``t`` of ``[l, u]`` nearest 0, ``x^2 >= 2 t x - t^2``, whose minimum over the box is the
square's own (``t^2``), so a sum of squares (a variance feeding a square root) keeps a lower bound
``>= 0`` through back-substitution -- the tangent at the midpoint encloses less area but may go
below 0 at an end of the box; above, the chord ``x^2 <= (l + u) x - l u``. Half of each coefficient
goes to either (identical) input.

**Unbounded factors**: where a bound of either input is infinite or NaN (or a plane's constant
overflows), no plane exists; such a neuron gets zero coefficients, and every row that reaches it
with a nonzero coefficient gets the constant ``-inf`` (no bound), never NaN.

**Floating point** (:mod:`certkit.bounds.fperror`): onnxruntime rounds the product once, so the
model error is ``u |x1 x2| + tiny`` (``tiny`` covers an underflow or a flushed denormal); the terms
back-substitution forms at the node are at most ``|A| (|l2| |x1| + |l1| |x2| + |l1 l2|) <= 3 |A|
m1 m2`` (``m`` the inputs' magnitudes), charged with the float64 allowance as every other node.
"""
from __future__ import annotations

import torch

from ..graph import ops
from .fperror import Precision, fp_error, magnitude
from .relaxations import relaxation

Tensor = torch.Tensor


class McCormick:
    """The relaxation of one :class:`~certkit.graph.bilinear.Product` node for given input bounds
    (see module docstring): ``lo``/``up`` are ``(a1, a2, c)`` tensors (b, n) of the lower and upper
    planes ``y >=/<= a1 x1 + a2 x2 + c``; ``wild`` (b, n) marks the neurons without planes."""

    def __init__(self, b1: tuple[Tensor, Tensor], b2: tuple[Tensor, Tensor], same: bool = False) -> None:
        (l1, u1), (l2, u2) = (tuple(t.detach() for t in b) for b in (b1, b2))
        zero = torch.zeros_like(l1)
        wild = ~(torch.isfinite(l1) & torch.isfinite(u1) & torch.isfinite(l2) & torch.isfinite(u2))
        l1, u1, l2, u2 = (torch.where(wild, zero, t) for t in (l1, u1, l2, u2))
        self.same = same
        # both planes of each side, for alpha-CROWN's convex combinations (backsub_mixed)
        self.lo_planes = ((l2, l1, -l1 * l2), (u2, u1, -u1 * u2))
        self.up_planes = ((u2, l1, -l1 * u2), (l2, u1, -u1 * l2))
        self.pick_lo = (u1 * u2 >= l1 * l2).to(l1.dtype)
        self.pick_up = (u1 * l2 <= l1 * u2).to(l1.dtype)
        if same:
            m = torch.minimum(torch.maximum(zero, l1), u1)  # the point of [l, u] nearest 0
            lo = (m, m, -m * m)
            h = (l1 + u1) / 2
            up = (h, h, -l1 * u1)
        else:
            lo = tuple(torch.where(self.pick_lo > 0, p, q) for p, q in zip(*self.lo_planes))
            up = tuple(torch.where(self.pick_up > 0, p, q) for p, q in zip(*self.up_planes))
        wild = wild | ~(torch.isfinite(lo[2]) & torch.isfinite(up[2]))
        for planes in (self.lo_planes, self.up_planes):
            wild = wild | ~(torch.isfinite(planes[0][2]) & torch.isfinite(planes[1][2]))
        self.lo = tuple(torch.where(wild, zero, t) for t in lo)
        self.up = tuple(torch.where(wild, zero, t) for t in up)
        self.wild = wild

    @staticmethod
    def _mix(planes, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``w * planes[0] + (1 - w) * planes[1]``, per coefficient (``w`` broadcast against them; torch's
        lerp is exact at ``w`` 0 and 1, McCormick's own planes)."""
        return tuple(torch.lerp(q, p, w) for p, q in zip(*planes))  # type: ignore[return-value]

    def backsub(self, A: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """``A`` (b, s, n) on the output -> ``((A1, A2), const)`` with ``A y >= A1 x1 + A2 x2 + const``
        for every point of the input box. Written as ``A * up + max(A, 0) * (lo - up)`` (one clamp,
        the rest in place): the back-substitution of a transformer's attention spends most of its
        time here."""
        pos = A.clamp(min=0)
        (la1, la2, lc), (ua1, ua2, uc) = self.lo, self.up
        A1 = (A * ua1[:, None, :]).addcmul_(pos, (la1 - ua1)[:, None, :])
        A2 = (A * ua2[:, None, :]).addcmul_(pos, (la2 - ua2)[:, None, :])
        const = torch.bmm(A, uc[:, :, None])[..., 0] + torch.bmm(pos, (lc - uc)[:, :, None])[..., 0]
        return (A1, A2), self._wild_const(A, const)

    def backsub_mixed(self, A: Tensor, a: Tensor, b: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """As :meth:`backsub` with per row planes (alpha-CROWN): the lower plane ``a lo1 + (1 - a) lo2``
        where a coefficient is >= 0, the upper ``b up1 + (1 - b) up2`` where it is < 0; ``a``, ``b``
        (b, s or 1, n) are clamped into [0, 1], so each plane is a convex combination of two sound
        ones (and its terms stay within the magnitudes :func:`_product_error` charges)."""
        a, b = a.clamp(0.0, 1.0), b.clamp(0.0, 1.0)
        ok = ~self.wild[:, None, :]
        lo = [torch.where(ok, t, torch.zeros_like(t)) for t in self._mix(_rows3(self.lo_planes), a)]
        up = [torch.where(ok, t, torch.zeros_like(t)) for t in self._mix(_rows3(self.up_planes), b)]
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        A1 = pos * lo[0] + neg * up[0]
        A2 = pos * lo[1] + neg * up[1]
        const = (pos * lo[2] + neg * up[2]).sum(-1)
        return (A1, A2), self._wild_const(A, const)

    def _wild_const(self, A: Tensor, const: Tensor) -> Tensor:
        if bool(self.wild.any()):
            hit = ((A != 0) & self.wild[:, None, :]).any(-1)
            const = torch.where(hit, torch.full_like(const, -float("inf")), const)
        return const


def _rows3(planes):
    """The planes' (b, n) tensors with a row axis, (b, 1, n)."""
    return tuple(tuple(t[:, None, :] for t in p) for p in planes)


@relaxation(ops.Product)
def _product(op: ops.Product, boxes: list[tuple[Tensor, Tensor]], same: bool = False) -> McCormick:
    """McCormick planes of ``x1 * x2`` (``same``: both inputs are the same variable)."""
    return McCormick(boxes[0], boxes[1], same or op.square)


@fp_error(ops.Product)
def _product_error(op: ops.Product, ins, mag_out: Tensor, p: Precision):
    m1, m2 = magnitude(*ins[0], p), magnitude(*ins[1], p)
    return p.u * mag_out + p.tiny, 4.0 * (3.0 * m1 * m2 + mag_out)
