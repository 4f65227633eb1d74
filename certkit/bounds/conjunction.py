"""Conjunctions of rows bounded together: a weighted sum of a disjunct's rows (DESIGN.md section 3).

A disjunct of a counterexample spec is a conjunction ``C_i y <= d_i`` for its rows ``i``; a region is
free of it when some row is violated everywhere, ``min_x max_i g_i(x) > 0`` with
``g_i = C_i y - d_i - m_i`` (``m_i`` the float64 error of evaluating the row,
:func:`~certkit.bounds.fperror.row_margin`). Bounding each row on its own proves only
``max_i min_x g_i > 0``; but for any weights ``lam >= 0`` (not all zero)

    max_i g_i(x) >= sum_i lam_i g_i(x) / sum_i lam_i,

so a positive lower bound of the single row ``sum_i lam_i g_i`` proves the disjunct away too. It is
the dual of the LP ``min t s.t. t >= g_i``: where the rows are each satisfiable on the region but not
together (reach_prob_density's robot: ``|Y1| <= r``, ``|Y2| <= r`` and ``Y0 >= c``), it closes what no
row alone does. On 1024 sub-boxes of that property, DeepPoly's rows closed 525, the weighted row
(weights from the rows' linear bounds, one more back-substitution) 661.

The weights maximise ``min_{x in box} sum_i lam_i (a_i x + c_i)`` over the simplex, ``a_i x + c_i`` the
rows' linear lower bounds from the back-substitution already done: a concave piecewise-linear function
of ``lam``, raised by exponentiated-gradient steps (its supergradient is ``g_i`` at the box vertex that
minimises the weighted sum). The weighted row ``C~ = fl(sum_i lam_i C_i)`` is then back-substituted
(its relaxations chosen for it, at least as tight as the weighted sum of the rows' bounds when the
lower slopes are the same), and the rounding of forming ``C~`` and ``sum_i lam_i (d_i + m_i)`` is
charged on the output's bounds, so the bound holds for the exact weighted sum.
"""
from __future__ import annotations

import torch

from ..tolerances import COMPUTE_SAFETY, U64, gamma

Tensor = torch.Tensor

#: exponentiated-gradient steps on the weights
STEPS = 30
#: step size of those steps, relative to the largest |g_i| at the minimising vertex
RATE = 0.5


def weights(A: Tensor, c: Tensor, lo: Tensor, hi: Tensor, owner: Tensor, K: int,
            steps: int = STEPS) -> Tensor:
    """Weights ``lam`` (b, s), summing to 1 over each disjunct's rows, that (approximately) maximise
    ``min_{lo <= x <= hi} sum_{i in k} lam_i (A_i x + c_i)`` for every disjunct ``k``; ``A`` (b, s, n),
    ``c`` (b, s), the box (b, n). Rows whose ``A_i`` or ``c_i`` is not finite get weight 0. The best
    iterate is kept, from equal weights on."""
    b, s, n = A.shape
    ok = torch.isfinite(c) & torch.isfinite(A).all(dim=-1)
    A = torch.where(ok[..., None], A, torch.zeros_like(A))
    c = torch.where(ok, c, torch.zeros_like(c))  # such rows keep weight 0 and g = 0 (no say in the step)

    def value(lam: Tensor) -> tuple[Tensor, Tensor]:
        """(b, K) the weighted sums' minima over the box, (b, s) each row at its group's minimiser."""
        Ak = torch.zeros(b, K, n, dtype=A.dtype).index_add_(1, owner, lam[..., None] * A)
        ck = torch.zeros(b, K, dtype=A.dtype).index_add_(1, owner, lam * c)
        x = torch.where(Ak >= 0, lo[:, None, :], hi[:, None, :])  # (b, K, n) the minimising vertex
        v = ck + (Ak * x).sum(-1)
        g = torch.where(ok, (A * x[:, owner, :]).sum(-1) + c, torch.zeros_like(c))
        return v, g

    lam = ok.to(A.dtype)
    lam = lam / _group_sum(lam, owner, K).clamp(min=1e-300)
    best_lam, best_v = lam, value(lam)[0]
    for _ in range(steps):
        v, g = value(lam)
        better = v > best_v
        best_v = torch.where(better, v, best_v)
        best_lam = torch.where(better[:, owner], lam, best_lam)
        scale = torch.zeros(b, K, dtype=A.dtype).scatter_reduce(1, owner.expand(b, -1), g.abs(), "amax")
        step = RATE * g / scale[:, owner].clamp(min=1e-300)
        lam = lam * torch.exp(step.clamp(-50, 50))  # ascent: weight moves to the rows large at the minimiser
        lam = torch.where(ok, lam, torch.zeros_like(lam))
        lam = lam / _group_sum(lam, owner, K).clamp(min=1e-300)
    return best_lam


def _group_sum(lam: Tensor, owner: Tensor, K: int) -> Tensor:
    tot = torch.zeros(lam.shape[0], K, dtype=lam.dtype).index_add_(1, owner, lam)
    return tot[:, owner]


def combined_rows(C: Tensor, d: Tensor, margin: Tensor, lam: Tensor, owner: Tensor, K: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The weighted rows ``C~`` (b, K, m) = fl(sum lam_i C_i), their constants ``D`` (b, K) = fl(sum lam_i
    (d_i + m_i)), and the float64 rounding allowance's coefficients: ``W`` (b, K, m) = sum lam_i |C_i| and
    ``E`` (b, K) = sum lam_i (|d_i| + m_i) (:func:`charge`)."""
    onehot = torch.nn.functional.one_hot(owner, K).to(C.dtype)
    Ct = torch.einsum("bs,sk,sm->bkm", lam, onehot, C)
    W = torch.einsum("bs,sk,sm->bkm", lam, onehot, C.abs())
    D = torch.einsum("bs,sk,bs->bk", lam, onehot, d + margin)
    E = torch.einsum("bs,sk,bs->bk", lam, onehot, d.abs() + margin)
    return Ct, D, W, E


def charge(low: Tensor, D: Tensor, W: Tensor, E: Tensor, y_lo: Tensor, y_hi: Tensor, s: int) -> Tensor:
    """A lower bound (b, K) of the exact ``sum_i lam_i (C_i y - d_i - m_i)`` for every output ``y`` in
    ``[y_lo, y_hi]`` from ``low`` <= ``C~ y``: ``low - D`` less the rounding of ``C~`` and ``D`` (each
    entry a sum of at most ``s`` products: error <= gamma_s of the sum of magnitudes), of ``low - D``
    itself, and of the allowance's own arithmetic (``COMPUTE_SAFETY``). NaN (an infinite output bound)
    gives ``-inf``: nothing is proven."""
    mag = torch.maximum(y_lo.abs(), y_hi.abs())  # (b, m)
    terms = torch.einsum("bkm,bm->bk", W, mag) + E + low.abs() + D.abs()
    v = low - D - COMPUTE_SAFETY * float(gamma(s + W.shape[-1] + 4, U64)) * terms
    return torch.nan_to_num(v, nan=float("-inf"), posinf=float("-inf"), neginf=float("-inf"))


def weighted_bound(backsub, inputs, C: Tensor, d: Tensor, margin: Tensor, y_lo: Tensor, y_hi: Tensor,
                   owner: Tensor, K: int, A: Tensor, c: Tensor) -> Tensor:
    """Per domain and disjunct (b, K): a lower bound of a weighted sum of the disjunct's
    ``C_i y - d_i - m_i`` (:func:`charge`), with the weights of :func:`weights`. ``backsub(Ct)``
    back-substitutes rows ``Ct`` (b, K, m) to the input, giving ``(A, const)``; ``A`` (b, s, n) and ``c``
    (b, s) are the rows' own linear bounds (``c`` with ``d + m`` taken off). (Measured and not kept: 5
    Adam steps on the weights through the weighted row's own bound closed 666 of robot_6's 1024
    sub-boxes instead of 631, but input splitting took 36 s instead of 28.)"""
    lam = weights(A, c, inputs.lower, inputs.upper, owner, K)
    Ct, D, W, E = combined_rows(C, d.expand(lam.shape[0], -1), margin, lam, owner, K)
    A_k, c_k = backsub(Ct)
    s = int(torch.bincount(owner, minlength=K).max())
    return charge(inputs.concretize_lower(A_k, c_k), D, W, E, y_lo, y_hi, s)
