"""The layer-wise VNN linear programs (paper 002, eqs. 8-11; DESIGN.md section 7).

For a layer with units ``u`` (see :mod:`certkit.sparsify.layers`) and reference
pre-activations ``z`` on the correctly classified validation samples, the LP is

    minimise  sum_u ||v_u||_1        (v_u = p_u - q_u, p_u, q_u >= 0: the L1 relaxation, eq. 8)
    s.t.      lo_r <= (A_u v_u)_r <= hi_r   for every row r of every unit (eqs. 9 and 5)

with ``[lo, hi]`` from :func:`row_bounds`: the ReLU state kept (``>= 0`` if ``z > 0``,
``<= 0`` otherwise) intersected with the closeness constraint, additive (eq. 5, on the
post-activation) or relative (the public code and Fig. 4, on the pre-activation). Units
are independent, so it decomposes into one small LP per unit (:func:`unit_lp`).

With downstream constraints (eq. 11) the layer's new pre-activations ``z~`` become
variables tied to ``v`` by ``z~ = A v`` (their bounds are the rows' ``[lo, hi]``), and the
later layers' pre-activations and the logits are affine in ``x~ = D z~`` (``D`` the kept
active states) with the later states fixed (:mod:`certkit.sparsify.downstream`): rows
keep every later state and a margin on the predicted class (:func:`coupled_lp`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..solvers import MipProblem


@dataclass(frozen=True)
class LpOptions:
    """Closeness ``eps`` (``additive`` or ``relative``) and the class margin ``M`` (eq. 11)."""

    eps: float = 0.0
    mode: str = "relative"
    margin: float = 0.0
    downstream: bool = False

    @property
    def exact(self) -> bool:
        """eps = 0 keeps the layer's outputs ``x~ = x`` on every sample: later layers see the
        same values, so the downstream constraints hold by themselves (eq. 11 is implied)."""
        return self.eps == 0.0


def row_bounds(z: np.ndarray, opts: LpOptions, active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi]`` for new pre-activations with reference ``z`` and ReLU states ``active``
    (default ``z > 0``; the original net's states when given, so that a reference exactly at 0
    cannot flip a state).

    additive (eq. 5 on x = relu(z)): active ``max(0, z - eps) <= z~ <= z + eps``, inactive
    ``z~ <= 0`` (the output stays 0); relative: active ``max(0, (1-eps) z) <= z~ <= (1+eps) z``,
    inactive ``(1+eps) z <= z~ <= min(0, (1-eps) z)`` (the public code's rows).
    """
    z = np.asarray(z, dtype=np.float64)
    act = z > 0 if active is None else np.asarray(active, dtype=bool)
    e = float(opts.eps)
    if opts.mode == "additive":
        lo = np.where(act, np.maximum(0.0, z - e), -np.inf)
        hi = np.where(act, z + e, 0.0)
    else:
        lo = np.where(act, np.maximum(0.0, (1 - e) * z), (1 + e) * z)
        hi = np.where(act, (1 + e) * z, np.minimum(0.0, (1 - e) * z))
    return lo, hi


@dataclass
class UnitLp:
    """One unit's LP over the columns ``cols`` of its design matrix (the others are 0 on every
    sample: the L1 objective sets their weights to 0)."""

    problem: MipProblem
    cols: np.ndarray
    n_vars: int

    def params(self, x: np.ndarray) -> np.ndarray:
        """The unit's full parameter vector from the LP's (p, q) solution."""
        k = len(self.cols)
        v = np.zeros(self.n_vars)
        v[self.cols] = x[:k] - x[k:2 * k]
        return v


def live_columns(A: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.any(A != 0, axis=0))


def unit_lp(A: np.ndarray, lo: np.ndarray, hi: np.ndarray, cols: np.ndarray | None = None) -> UnitLp:
    """``min |v|_1 s.t. lo <= A v <= hi`` in split form ``v = p - q``."""
    cols = live_columns(A) if cols is None else cols
    Ac = sp.csr_matrix(A[:, cols])
    k = len(cols)
    M = sp.hstack([Ac, -Ac], format="csr")
    prob = MipProblem(np.ones(2 * k), np.zeros(2 * k), np.full(2 * k, np.inf), np.zeros(2 * k, bool),
                      M, lo.astype(np.float64), hi.astype(np.float64))
    return UnitLp(prob, cols, A.shape[1])


@dataclass
class CoupledLp:
    """The layer's LP with downstream rows: columns ``[p_u, q_u for each unit] + [z~]``."""

    problem: MipProblem
    unit_cols: list[np.ndarray]
    n_vars: int
    offsets: list[int]  # start column of p_u

    def params(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(self.unit_cols), self.n_vars))
        for u, (cols, o) in enumerate(zip(self.unit_cols, self.offsets)):
            k = len(cols)
            out[u, cols] = x[o:o + k] - x[o + k:o + 2 * k]
        return out


def coupled_lp(system, z: np.ndarray, opts: LpOptions, tail, active: np.ndarray | None = None) -> CoupledLp:
    """The coupled LP of eq. 11 for a :class:`~certkit.sparsify.layers.LayerSystem`.

    ``z`` (S, n_out) are the reference pre-activations; ``tail`` a
    :class:`~certkit.sparsify.downstream.TailRows`: rows ``lo_t <= sum_i G[s, t, i] x~_{s,i}
    + g[s, t] <= hi_t`` per sample over the layer's outputs ``x~``.
    """
    S, n_out = z.shape
    blocks, unit_cols, offsets = [], [], []
    col = 0
    n_z = S * n_out
    # z~ columns come after every unit's (p, q); z~ index = s * n_out + out
    rows_link = []
    for u in range(system.n_units):
        A = system.matrix(u)
        cols = live_columns(A)
        unit_cols.append(cols)
        offsets.append(col)
        k = len(cols)
        Ac = sp.csr_matrix(A[:, cols])
        rows_link.append((u, Ac, col, k))
        col += 2 * k
    n_cols = col + n_z
    act = z > 0 if active is None else np.asarray(active, dtype=bool)
    lo_z, hi_z = row_bounds(z.reshape(-1), opts, act.reshape(-1))
    # linking rows: A_u (p - q) - z~ = 0, one per (sample, position) of each unit
    link = []
    for u, Ac, o, k in rows_link:
        idx = system.out_index(u)  # (P,)
        zcol = (np.arange(S)[:, None] * n_out + idx[None, :]).reshape(-1)  # rows are (s, position)
        m = Ac.shape[0]
        Z = sp.csr_matrix((-np.ones(m), (np.arange(m), zcol)), shape=(m, n_z))
        left = sp.csr_matrix((m, o))
        right = sp.csr_matrix((m, col - o - 2 * k))
        link.append(sp.hstack([left, Ac, -Ac, right, Z], format="csr"))
    blocks.extend(link)
    row_lo = [np.zeros(sum(b.shape[0] for b in link))]
    row_hi = [np.zeros_like(row_lo[0])]
    # downstream rows: G[s] (D_s z~_s) + g[s] in [lo, hi]
    if tail is not None and tail.n_rows:
        r_idx, c_idx, vals = [], [], []
        lo_d, hi_d = [], []
        r = 0
        for s in range(S):
            Gs = tail.G[s] * act[s][None, :]
            keep = np.flatnonzero(np.any(Gs != 0, axis=1))
            if not len(keep):
                continue
            coo = sp.coo_matrix(Gs[keep])
            r_idx.append(coo.row + r)
            c_idx.append(coo.col + col + s * n_out)
            vals.append(coo.data)
            lo_d.append(tail.lo[s, keep] - tail.g[s, keep])
            hi_d.append(tail.hi[s, keep] - tail.g[s, keep])
            r += len(keep)
        if r:
            D = sp.csr_matrix((np.concatenate(vals), (np.concatenate(r_idx), np.concatenate(c_idx))),
                              shape=(r, n_cols))
            blocks.append(D)
            row_lo.append(np.concatenate(lo_d))
            row_hi.append(np.concatenate(hi_d))
    A_all = sp.vstack(blocks, format="csr")
    c = np.concatenate([np.ones(col), np.zeros(n_z)])
    lb = np.concatenate([np.zeros(col), lo_z])
    ub = np.concatenate([np.full(col, np.inf), hi_z])
    prob = MipProblem(c, lb, ub, np.zeros(n_cols, bool), A_all, np.concatenate(row_lo), np.concatenate(row_hi))
    return CoupledLp(prob, unit_cols, system.n_vars, offsets)


def violation(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far ``y`` lies outside ``[lo, hi]``, relative to ``1 + |bound|`` (0 inside)."""
    lo_f = np.where(np.isfinite(lo), lo, 0.0)
    hi_f = np.where(np.isfinite(hi), hi, 0.0)
    below = np.where(np.isfinite(lo), (lo_f - y) / (1.0 + np.abs(lo_f)), 0.0)
    above = np.where(np.isfinite(hi), (y - hi_f) / (1.0 + np.abs(hi_f)), 0.0)
    return np.maximum(0.0, np.maximum(below, above))


def row_violation(A: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """:func:`violation` of ``A v``."""
    return violation(A @ v, lo, hi)
