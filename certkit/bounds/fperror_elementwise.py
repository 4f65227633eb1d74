"""Floating-point error rules of the unary elementwise ops of :mod:`certkit.graph.elementwise`
(the contract is :mod:`certkit.bounds.fperror`'s: the computed value is the exact image of the
computed input plus ``e``, ``|e| <= err``).

* **Model error** (onnxruntime, float32 or float64): ``ulps * ulp(|y|) + abs + flush`` with the
  measured budgets of :mod:`certkit.tolerances` (``ELEMENTWISE_ULPS`` for Exp, Log, Pow, Sin, Cos,
  Erf, with ``ACT_ABS`` also for Sin, Cos and Erf; ``ROUNDED_ULPS`` for Sqrt and Reciprocal,
  which onnxruntime rounds correctly), ``ulp(|y|) <= 2 u |y|`` for a normal ``y`` and ``tiny``
  for an underflow. Flushing a subnormal input to zero (the denormals-are-zero mode onnxruntime
  can be asked for) moves Sqrt by at most ``sqrt(tiny)``, ``x^p`` (``0 < p < 1``) by ``tiny^p``,
  a negative power to infinity (error ``inf`` where ``|x|`` may be below ``tiny``), and flips
  Sign and Floor on ``(-tiny, 0)`` and ``(0, tiny)`` by 1: charged where the box meets those.
  Reciprocal of a subnormal is above ``2^126`` and gets an infinite error from the overflow rule.
  Sign and Floor round nothing otherwise: the jumps a rounding of their *input* causes are in
  the input's bounds already (every backend bounds the computed input, widened by its error).
* **Overflow**: an image beyond the largest finite number (Exp above ~88.7 in float32), a pole or
  a NaN region (infinite interval) makes the magnitudes infinite, so :func:`fperror._finish`
  returns ``err = inf`` there.
* **certkit's float64 arithmetic**: the terms a relaxation line forms are at most
  ``|k| |x| + |f|`` (:func:`certkit.bounds.relax_elementwise.line_cap` bounds ``|k| |x|``); an
  input that may be infinite or NaN makes them infinite (``Sin(inf)`` is NaN).
"""
from __future__ import annotations

import math

import torch

from ..graph import elementwise as ew
from ..tolerances import ACT_ABS, ELEMENTWISE_ULPS, ROUNDED_ULPS
from .fperror import COMPUTED_HULLS, Precision, fp_error, magnitude
from .relax_elementwise import line_cap

Tensor = torch.Tensor


def _terms(op, ins, mag_out: Tensor, p: Precision) -> Tensor:
    """``4 (|k| |x| + |f|)`` bounds the terms of the relaxation lines; ``inf`` where the input may
    be infinite or NaN (Sin(inf) is NaN although the image of a wide box is [-1, 1])."""
    lo, hi = ins[0]
    terms = 4.0 * (line_cap(op, lo, hi) + mag_out)
    return torch.where(magnitude(lo, hi, p) <= p.max, terms, torch.full_like(terms, float("inf")))


def _ulps(n: float, mag_out: Tensor, p: Precision) -> Tensor:
    return n * 2.0 * p.u * mag_out + p.tiny


@fp_error(ew.Exp, ew.Log)
def _exp_log(op, ins, mag_out: Tensor, p: Precision):
    return _ulps(ELEMENTWISE_ULPS, mag_out, p), _terms(op, ins, mag_out, p)


@fp_error(ew.Sin, ew.Cos, ew.Erf)
def _bounded(op, ins, mag_out: Tensor, p: Precision):
    # ACT_ABS is stated for float32 and scales with u; erf(x) ~ 1.13 x below tiny: 2 tiny
    model = _ulps(ELEMENTWISE_ULPS, mag_out, p) + ACT_ABS * (p.u / 2.0 ** -24) + p.tiny
    return model, _terms(op, ins, mag_out, p)


@fp_error(ew.Sqrt)
def _sqrt(op, ins, mag_out: Tensor, p: Precision):
    return _ulps(ROUNDED_ULPS, mag_out, p) + math.sqrt(p.tiny), _terms(op, ins, mag_out, p)


@fp_error(ew.Reciprocal)
def _reciprocal(op, ins, mag_out: Tensor, p: Precision):
    return _ulps(ROUNDED_ULPS, mag_out, p), _terms(op, ins, mag_out, p)


@fp_error(ew.Pow)
def _pow(op: ew.Pow, ins, mag_out: Tensor, p: Precision):
    e = op.exponent
    model = _ulps(ELEMENTWISE_ULPS, mag_out, p)
    if 0 < e < 1:
        model = model + p.tiny ** e
    elif e < 0 and p.tiny > 0:
        lo, hi = ins[0]
        near = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        model = torch.where(near < p.tiny, torch.full_like(model, float("inf")), model)
    return model, _terms(op, ins, mag_out, p)


def _step_hull(op, box: tuple[Tensor, Tensor], p: Precision) -> tuple[Tensor, Tensor]:
    """Sign's and Floor's computed output over the computed input ``box``: the step's image of the
    box, widened to the step's value at 0 where a flush of a subnormal input to zero may apply (the
    only rounding these ops have, :func:`_step`): an enclosure without the jump-sized error."""
    lo, hi = op.box(*box) if isinstance(op, ew.Sign) else box
    zero = torch.zeros((), dtype=lo.dtype)
    near = (lo < p.tiny) & (hi > -p.tiny) if p.tiny > 0 else torch.zeros_like(lo, dtype=torch.bool)
    a, b = op.interval(torch.where(near, torch.minimum(lo, zero), lo), torch.where(near, torch.maximum(hi, zero), hi))
    return a, b


@fp_error(ew.Sign, ew.Floor)
def _step(op, ins, mag_out: Tensor, p: Precision):
    lo, hi = op.box(*ins[0]) if isinstance(op, ew.Sign) else ins[0]  # an integer input is never subnormal
    if p.tiny == 0:
        return None, _terms(op, ins, mag_out, p)
    below = (lo < 0) & (hi > -p.tiny)  # the box meets (-tiny, 0): Floor -1 -> 0, Sign -1 -> 0
    above = (lo < p.tiny) & (hi > 0)  # meets (0, tiny): Sign 1 -> 0 (Floor is 0 either way)
    flips = below | above if isinstance(op, ew.Sign) else below
    model = torch.where(flips, torch.ones_like(lo), torch.zeros_like(lo))
    return model, _terms(op, ins, mag_out, p)


def _relative_hull(ulps: int):
    """The computed output's range for a monotone op whose model error is relative (``ulps ulp(|y|) +
    tiny`` with ``ulp(|y|) <= 2 u |y|``): at each point the computed value is within ``y - r |y| - tiny``
    and ``y + r |y| + tiny`` (``r = 2 ulps u``), both increasing in ``y``, so over the box they are
    taken at the ends of the exact image (``op.interval``). Tighter than the image widened by the
    box's largest error (an Exp over [-20, 20] has the error of ``e^20`` everywhere: ``-2969`` below
    ``e^-20``; a softmax's small entries then leave its comparisons undecided). The ends are float64
    values, ``2^-50`` relative added for their own rounding; beyond the largest finite number the
    computed value may be infinite, and a Reciprocal of an input that may be subnormal (flushed to 0
    under denormals-are-zero) too."""

    def hull(op, box: tuple[Tensor, Tensor], p: Precision) -> tuple[Tensor, Tensor]:
        lo, hi = op.interval(*box)
        r = 2.0 * ulps * p.u + 2.0 ** -50
        a, b = lo - r * lo.abs() - p.tiny, hi + r * hi.abs() + p.tiny
        over, under = ~(b <= p.max), ~(a >= -p.max)
        if isinstance(op, ew.Reciprocal) and p.tiny > 0:  # a flushed +-subnormal input gives +-inf
            over = over | ((box[1] > 0) & (box[0] < p.tiny))
            under = under | ((box[0] < 0) & (box[1] > -p.tiny))
        return (torch.where(under, torch.full_like(a, -float("inf")), a),
                torch.where(over, torch.full_like(b, float("inf")), b))

    return hull


COMPUTED_HULLS[ew.Sign] = _step_hull
COMPUTED_HULLS[ew.Floor] = _step_hull
COMPUTED_HULLS[ew.Exp] = _relative_hull(ELEMENTWISE_ULPS)
COMPUTED_HULLS[ew.Reciprocal] = _relative_hull(ROUNDED_ULPS)
