"""The rows of each op in the MILP, and the builder they are written into.

Every IR node value has one continuous variable per entry, boxed by its intermediate
bounds (:mod:`certkit.verify.milp.encoding`), widened outward by ``BOUND_WIDEN * (1 + |b|)``
against rounding.

* **Linear ops** are rows ``c - err <= y - sum_k M_k x_k <= c + err`` (``err``: the node's
  floating-point error bound; 0 for copies). ``M`` is the weight
  for a Dense, ``diag(scale)`` for a Scale, a 0/1 matrix for a Select; for every
  other linear op (Conv, Sum, Concat) it is read off ``op.backward`` applied to
  identity rows, in chunks, into a ``scipy.sparse`` matrix.
* **Two-piece activations** (ReLU, LeakyReLU with any slope, Abs, and each side of
  a Clip) ``f(x) = s_lo x + c_lo`` for ``x <= theta``, ``s_hi x + c_hi`` for
  ``x >= theta``: a stable entry (``u <= theta`` or ``l >= theta``, or equal
  slopes) is one linear row. An unstable entry gets a binary ``z`` and the
  disaggregated (convex-hull, i.e. the tightest single-neuron) big-M form: with
  ``x - theta = p + q`` and ``y = f(theta) + s_hi p + s_lo q``,
  ``0 <= p <= (u - theta) z`` and ``(l - theta)(1 - z) <= q <= 0``, where ``p`` and
  ``q`` are eliminated (they are affine in x and y). For the ReLU this is exactly
  ``y >= x, y >= 0, y <= x - l(1 - z), y <= u z``.
* **Clip** is ``min(max(x, lo), hi)``: two two-piece layers (an intermediate
  variable; one binary per unstable side, none for an infinite side).
* **MaxGroup** ``y = max_j x_j``: candidates whose upper bound is not above the
  largest lower bound are dropped; with one left, ``y = x_j``; otherwise binaries
  ``sum_j z_j = 1``, ``y >= x_j``, ``y <= x_j + M_j (1 - z_j)`` with
  ``M_j = max_{k != j} u_k - l_j``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ...graph import ops
from ...solvers import MipProblem

#: Relative outward widening of every intermediate bound (float64 rounding in the bounds).
BOUND_WIDEN = 1e-9
#: Identity rows pushed through ``op.backward`` at a time when reading off a linear map.
_CHUNK = 512


def linear_matrices(op: ops.LinearOp, in_sizes: list[int], n_out: int) -> list[sp.csr_matrix]:
    """The exact matrices ``M_k`` with ``y = sum_k M_k x_k + c`` (c = ``op.bias_vector()``)."""
    if isinstance(op, ops.Dense):
        w = sp.csr_matrix(np.asarray(op.weight, dtype=np.float64))
        return [w if op.rows == 1 else sp.kron(sp.identity(op.rows, format="csr"), w, format="csr")]
    if isinstance(op, ops.Scale):
        return [sp.diags(np.broadcast_to(np.asarray(op.scale, dtype=np.float64), (n_out,)).copy(), format="csr")]
    if isinstance(op, ops.Select):
        valid = np.asarray(op.index) >= 0
        rows = np.flatnonzero(valid)
        return [sp.csr_matrix((np.ones(len(rows)), (rows, np.asarray(op.index)[valid])), shape=(n_out, op.n_in))]
    if isinstance(op, ops.SparseLinear):
        return [op.matrix()]
    # generic: rows of M are backward(e_i)
    parts: list[list[sp.csr_matrix]] = [[] for _ in in_sizes]
    for s in range(0, n_out, _CHUNK):
        k = min(_CHUNK, n_out - s)
        eye = torch.zeros(1, k, n_out, dtype=torch.float64)
        eye[0, torch.arange(k), torch.arange(s, s + k)] = 1.0
        with torch.no_grad():
            outs = op.backward(eye)
        for j, o in enumerate(outs):
            parts[j].append(sp.csr_matrix(o[0].numpy()))
    return [sp.vstack(p, format="csr") for p in parts]


class MipBuilder:
    """A :class:`MipProblem` under construction: columns and rows accumulated in COO form,
    column bounds overridable afterwards (LP tightening); no objective."""

    def __init__(self) -> None:
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.int: list[np.ndarray] = []
        self.n = 0
        self.rr: list[np.ndarray] = []
        self.cc: list[np.ndarray] = []
        self.vv: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.m = 0
        self.overrides: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def cols(self, lb, ub, integer: bool = False) -> np.ndarray:
        lb = np.atleast_1d(np.asarray(lb, dtype=np.float64))
        ub = np.atleast_1d(np.asarray(ub, dtype=np.float64))
        k = len(lb)
        self.lb.append(lb)
        self.ub.append(ub)
        self.int.append(np.full(k, integer))
        idx = np.arange(self.n, self.n + k)
        self.n += k
        return idx

    def rows(self, r: np.ndarray, c: np.ndarray, v: np.ndarray, lo, hi, k: int) -> None:
        """``k`` new rows; ``r`` is the local row index (0..k-1) of each (c, v) entry."""
        if k == 0:
            return
        keep = np.asarray(v) != 0
        self.rr.append(np.asarray(r)[keep] + self.m)
        self.cc.append(np.asarray(c)[keep])
        self.vv.append(np.asarray(v, dtype=np.float64)[keep])
        self.lo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (k,)).copy())
        self.hi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (k,)).copy())
        self.m += k

    def set_bounds(self, idx: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> None:
        self.overrides.append((np.asarray(idx), np.asarray(lb, np.float64), np.asarray(ub, np.float64)))

    def problem(self) -> MipProblem:
        cat = (lambda xs, dt=np.float64: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        A = sp.csr_matrix((cat(self.vv), (cat(self.rr, np.int64), cat(self.cc, np.int64))), shape=(self.m, self.n))
        A.sum_duplicates()
        lb, ub = cat(self.lb), cat(self.ub)
        for idx, l, u in self.overrides:
            lb[idx], ub[idx] = l, u
        return MipProblem(np.zeros(self.n), lb, ub, cat(self.int, bool), A, cat(self.lo), cat(self.hi))


def widen(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[l, u]`` widened outward by ``BOUND_WIDEN * (1 + |b|)`` against float64 rounding."""
    return l - BOUND_WIDEN * (1 + np.abs(l)), u + BOUND_WIDEN * (1 + np.abs(u))


def two_piece(mdl: MipBuilder, xc: np.ndarray, yc: np.ndarray, l: np.ndarray, u: np.ndarray,
               raw: tuple[np.ndarray, np.ndarray],
               theta: np.ndarray, s_lo: np.ndarray, c_lo: np.ndarray, s_hi: np.ndarray, c_hi: np.ndarray,
               lo_always: np.ndarray, hi_always: np.ndarray) -> int:
    """Encode ``y = f(x)`` per entry for a continuous two-piece linear ``f`` (see the module docstring).

    ``l``/``u`` are the (widened) bounds of ``x`` used as big-M constants; ``raw`` the
    unwidened ones, which decide stability (an entry whose bound touches the breakpoint
    only through rounding is linear). ``lo_always``/``hi_always`` force an entry onto one
    piece (e.g. an infinite breakpoint). Returns the number of binaries added.
    """
    rl, ru = raw
    lo_lin = lo_always | (~hi_always & (ru <= theta))
    hi_lin = ~lo_lin & (hi_always | (rl >= theta))
    same = ~lo_lin & ~hi_lin & (s_lo == s_hi)
    hi_lin = hi_lin | same
    unstable = ~lo_lin & ~hi_lin
    # linear entries: y - s x = c
    for mask, s, c in ((lo_lin, s_lo, c_lo), (hi_lin, s_hi, c_hi)):
        k = int(mask.sum())
        if k:
            r = np.arange(k)
            mdl.rows(np.concatenate([r, r]), np.concatenate([yc[mask], xc[mask]]),
                     np.concatenate([np.ones(k), -s[mask]]), c[mask], c[mask], k)
    k = int(unstable.sum())
    if k == 0:
        return 0
    xs, ys = xc[unstable], yc[unstable]
    L, U, th = l[unstable], u[unstable], theta[unstable]
    sl, sh, ch = s_lo[unstable], s_hi[unstable], c_hi[unstable]
    f_th = sh * th + ch
    D = sh - sl
    alpha, beta, gamma = 1.0 / D, -sl / D, (-f_th + sl * th) / D
    z = mdl.cols(np.zeros(k), np.ones(k), integer=True)
    r = np.arange(k)
    # (1) p >= 0
    mdl.rows(np.r_[r, r], np.r_[ys, xs], np.r_[alpha, beta], -gamma, np.inf, k)
    # (2) p - (u - theta) z <= 0
    mdl.rows(np.r_[r, r, r], np.r_[ys, xs, z], np.r_[alpha, beta, -(U - th)], -np.inf, -gamma, k)
    # (3) q <= 0
    mdl.rows(np.r_[r, r], np.r_[ys, xs], np.r_[-alpha, 1 - beta], -np.inf, th + gamma, k)
    # (4) q >= (l - theta)(1 - z)
    mdl.rows(np.r_[r, r, r], np.r_[ys, xs, z], np.r_[-alpha, 1 - beta, L - th], gamma + L, np.inf, k)
    return k


def pieces(op, n: int):
    """(theta, s_lo, c_lo, s_hi, c_hi) for a ReLU-like op, as arrays."""
    z, o = np.zeros(n), np.ones(n)
    if isinstance(op, ops.Relu):
        return z, z, z, o, z
    if isinstance(op, ops.LeakyRelu):
        return z, np.full(n, float(op.slope)), z, o, z
    if isinstance(op, ops.Abs):
        return z, -o, z, o, z
    raise TypeError(op)


def max_group(mdl: MipBuilder, op: ops.MaxGroup, xc: np.ndarray, yc: np.ndarray, l: np.ndarray,
               u: np.ndarray) -> int:
    nb = 0
    for i, row in enumerate(np.asarray(op.index)):
        cand = np.unique(row[row >= 0])
        L = l[cand].max()
        top = cand[int(np.argmax(l[cand]))]
        keep = np.union1d(cand[u[cand] > L], [top])  # the others can never exceed x_top
        if len(keep) == 1:
            mdl.rows(np.array([0, 0]), np.array([yc[i], xc[keep[0]]]), np.array([1.0, -1.0]), 0.0, 0.0, 1)
            continue
        k = len(keep)
        z = mdl.cols(np.zeros(k), np.ones(k), integer=True)
        nb += k
        mdl.rows(np.zeros(k, dtype=np.int64), z, np.ones(k), 1.0, 1.0, 1)  # sum z = 1
        r = np.arange(k)
        mdl.rows(np.r_[r, r], np.r_[np.full(k, yc[i]), xc[keep]], np.r_[np.ones(k), -np.ones(k)], 0.0, np.inf, k)
        uk = u[keep]
        top2 = np.sort(uk)[-2:]
        other_max = np.where(uk == top2[-1], top2[0], top2[-1])  # max over the others
        M = np.maximum(other_max - l[keep], 0.0)
        # y - x_j + M_j z_j <= M_j
        mdl.rows(np.r_[r, r, r], np.r_[np.full(k, yc[i]), xc[keep], z], np.r_[np.ones(k), -np.ones(k), M],
                 -np.inf, M, k)
    return nb
