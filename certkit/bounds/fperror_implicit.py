"""The error rule of :class:`~certkit.graph.implicit.ImplicitLayer` (paper 003; the contract is
:mod:`certkit.bounds.fperror`'s).

The op's linear part is the identity; its "error" is the deviation ``z_K - a`` of the K computed
steps from their input, enclosed over the input box by :meth:`ImplicitLayer.deviation` with the
model's roundings (float32 steps: the two roundings of each tanh argument, the tanh budget
``ACT_ULPS ulp + ACT_ABS``, the product by ``w``, the sum of ``m`` terms, the product by ``c``, the
subtraction and the damping). It is charged in **every** precision, ``exact`` included: the
deviation is the layer's function, not a rounding. Bounds then hold as for any node of (1):
``z^ = a^ + e``, ``|e| <= err``.
"""
from __future__ import annotations

import torch

from ..graph.implicit import ImplicitLayer
from ..tolerances import ACT_ABS, ACT_ULPS
from .fperror import Precision, fp_error, magnitude

Tensor = torch.Tensor


@fp_error(ImplicitLayer)
def _implicit(op: ImplicitLayer, ins, mag_out: Tensor | None, p: Precision):
    lo, hi = ins[0]
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    safe_lo = torch.where(finite, lo, torch.zeros_like(lo))
    safe_hi = torch.where(finite, hi, torch.zeros_like(hi))
    elo, ehi = op.deviation(safe_lo, safe_hi, u=p.u, tiny=p.tiny, act_abs=ACT_ABS * (p.u / 2.0 ** -24),
                            act_ulps=ACT_ULPS)
    err = torch.maximum(elo.abs(), ehi.abs())
    err = torch.where(finite.all(-1, keepdim=True).expand_as(err), err, torch.full_like(err, float("inf")))
    return err, 4.0 * (magnitude(lo, hi, p) + err)
