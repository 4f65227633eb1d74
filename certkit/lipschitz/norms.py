"""Operator norms with sound upper ends (DESIGN.md section 4).

* :func:`nonneg_norm2` -- ``||P||_2`` for an entrywise nonnegative operator given by
  ``P v`` and ``u^T P``: power iteration on ``G = P^T P`` for the lower end, and the
  Collatz-Wielandt bound ``lambda_max(G) <= max_i (G v)_i / v_i`` (valid for any ``v > 0``
  because ``G >= 0``) for the upper end.
* :func:`nonneg_norm_inf` -- ``||P||_inf = max_i (P 1)_i``, exact for ``P >= 0``.
* :func:`matrix_norm` -- ``||M||_2`` / ``||M||_inf`` of an explicit signed matrix (eigenvalues
  of the smaller Gram matrix, with a bound on the rounding error).
* :func:`conv_norm2` -- ``||Conv||_2 <= max_w sigma_max(K^(w))`` over the DFT grid of a
  circular convolution large enough to contain the zero-padded one (the padded
  convolution is a compression of the circular one; striding and cropping are selections).

Every upper end is multiplied by ``1 + REL_SAFETY`` for floating-point error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..graph.ops import Conv

Tensor = torch.Tensor

#: Relative margin on every computed upper bound (float64 sums of nonnegative terms over
#: networks of realistic width err by far less than this).
REL_SAFETY = 1e-9
EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class NormBound:
    """``lower <= ||operator|| <= upper``; ``iterations`` of the power method (0 if exact)."""

    lower: float
    upper: float
    iterations: int = 0


def nonneg_norm2(fwd: Callable[[Tensor], Tensor], vjp: Callable[[Tensor], Tensor], n_in: int,
                 rtol: float = 1e-9, max_iter: int = 5000, time_limit: float = 30.0) -> NormBound:
    """``||P||_2`` of a nonnegative operator: Rayleigh quotient below, Collatz-Wielandt above.

    Stops when the bounds on ``||P||_2^2`` agree to ``rtol`` (relative), after
    ``max_iter`` iterations, or after ``time_limit`` seconds; the upper end is sound
    whenever it stops.
    """
    v = torch.ones(1, n_in, dtype=torch.float64)
    lo_sq, up_sq = 0.0, float("inf")
    t0 = time.monotonic()
    it = 0
    tiny = torch.finfo(torch.float64).tiny
    for it in range(1, max_iter + 1):
        w = vjp(fwd(v))
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError("the nonnegative product overflows float64")
        ratio = torch.where(w > 0, w / torch.clamp(v, min=tiny), torch.zeros_like(w))
        up_sq = min(up_sq, float(ratio.max()))
        nv = float((v * v).sum())
        lo_sq = max(lo_sq, float((v * w).sum()) / nv)
        nw = float(w.norm())
        if nw == 0.0:  # P = 0
            return NormBound(0.0, 0.0, it)
        if up_sq - lo_sq <= rtol * up_sq or time.monotonic() - t0 > time_limit:
            break
        v = w / nw
    return NormBound(float(np.sqrt(lo_sq)), float(np.sqrt(up_sq)) * (1 + REL_SAFETY), it)


def nonneg_norm_inf(fwd: Callable[[Tensor], Tensor], n_in: int) -> NormBound:
    """``||P||_inf = max row sum = max (P 1)``, exact for a nonnegative operator."""
    r = float(fwd(torch.ones(1, n_in, dtype=torch.float64)).max())
    return NormBound(r, r * (1 + REL_SAFETY), 0)


def matrix_norm(m: np.ndarray, p: float) -> NormBound:
    """``||M||_p`` (p = 2 or inf) of an explicit matrix, with a sound upper end.

    For p = 2, ``lambda_max`` of the smaller Gram matrix ``H`` by ``eigvalsh``; the error
    of forming ``H`` is at most ``n eps (|M|^T |M|)`` entrywise (norm <= its max row sum)
    and eigvalsh is backward stable (error ``<= c n eps ||H||``).
    """
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0:
        return NormBound(0.0, 0.0)
    if p == float("inf"):
        r = float(np.abs(m).sum(axis=1).max())
        return NormBound(r, r * (1 + REL_SAFETY + m.shape[1] * EPS64))
    if m.shape[0] < m.shape[1]:
        m = m.T
    n = m.shape[0]  # the summed dimension
    h = m.T @ m
    lam = float(np.linalg.eigvalsh(h)[-1])
    a = np.abs(m)
    gram_err = n * EPS64 * float((a.T @ (a @ np.ones(a.shape[1]))).max())
    up_sq = lam + gram_err + 16 * h.shape[0] * EPS64 * abs(lam)
    return NormBound(float(np.sqrt(max(lam, 0.0))), float(np.sqrt(up_sq)) * (1 + REL_SAFETY))


def conv_norm2(op: Conv) -> NormBound:
    """``||Conv||_2`` upper bound from the DFT of the kernel (see the module docstring);
    the lower end is 0 (not computed)."""
    w = np.asarray(op.weight, np.float64)
    c_out, c_in_g, kh, kw = w.shape
    dh, dw = op.dilations
    C, H, W = op.in_shape
    t, l, b, r = op.pads
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    nh, nw = H + t + b + eh, W + l + r + ew  # no wrap-around for the full linear convolution
    k = np.zeros((c_out, c_in_g, nh, nw))
    k[:, :, :eh:dh, :ew:dw] = w
    f = np.fft.fft2(k, axes=(2, 3))  # (c_out, c_in_g, nh, nw)
    g = op.groups
    per = c_out // g
    best = 0.0
    for gi in range(g):
        blk = f[gi * per:(gi + 1) * per].transpose(2, 3, 0, 1).reshape(-1, per, c_in_g)
        s = np.linalg.svd(blk, compute_uv=False)
        best = max(best, float(s.max()))
    fft_err = 1e3 * EPS64 * np.log2(nh * nw + 1) * float(np.abs(w).sum())
    return NormBound(0.0, (best + fft_err) * (1 + REL_SAFETY))
