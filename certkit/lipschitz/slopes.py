"""Slope ranges of the IR's nonlinear ops, the only thing the Lipschitz bounds need from them.

An elementwise activation ``y_i = f_i(x_i)`` is characterised by ``[s_min, s_max]``, with
``s_min <= (f(a) - f(b)) / (a - b) <= s_max`` for all ``a != b`` (so every Clarke
derivative lies in the range). The Jacobian of a net at any point is then
``L_m D_{m-1} ... D_1 L_1`` with diagonal ``D_i`` in ``[s_min, s_max]`` (DESIGN.md section 4).

*Group* ops (``max_group``, and ``max_min`` = MaxMin / GroupSort(2)) are not elementwise: their
Jacobian is a 0/1 selection matrix ``J`` with one 1 per row, entrywise ``<= G``, the
0/1 matrix of the groups. :class:`GroupSlopes` records ``G`` (as index rows) and the
operator norms of ``J`` that hold at every point.

``SLOPES`` maps an op ``kind`` to a function ``op -> ElementSlopes | GroupSlopes``; a kind
that is not in it is refused by every Lipschitz method (named in the error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ElementSlopes:
    """Every slope of the activation lies in ``[lo, hi]`` (scalars or flat arrays)."""

    lo: np.ndarray | float
    hi: np.ndarray | float

    @property
    def abs_max(self) -> np.ndarray | float:
        """``max |s|``: the entrywise bound ``|D| <= abs_max`` used by the signed bounds."""
        return np.maximum(np.abs(self.lo), np.abs(self.hi))

    @property
    def nonnegative(self) -> bool:
        return bool(np.all(np.asarray(self.lo) >= 0))

    def norm(self, p: float) -> float:
        """Operator norm bound of ``D`` (any p): ``max |s|``."""
        return float(np.max(self.abs_max))


@dataclass(frozen=True)
class GroupSlopes:
    """Jacobian ``J`` is a selection with one 1 per row among ``index[i]`` (``-1`` = padding).

    ``|J| <= G`` entrywise with ``G[i, index[i, k]] = 1``. ``norm2``/``norm_inf`` bound
    ``||J||`` at every point (for a row selection, ``||J||_2^2`` is the largest number of
    rows that pick the same input, at most the largest column count of ``G``;
    ``||J||_inf = 1``).
    """

    index: np.ndarray  # int64 (n_out, k)
    norm2: float
    norm_inf: float = 1.0

    @property
    def nonnegative(self) -> bool:
        return True

    def norm(self, p: float) -> float:
        return self.norm_inf if p == float("inf") else self.norm2


@dataclass(frozen=True)
class MatrixSlopes:
    """Jacobian ``J`` bounded entrywise by a nonnegative block-diagonal ``G`` (``groups`` copies of
    the ``m x m`` block), with operator norms ``norms[p]`` that hold at every point: the implicit-
    bias layer (paper 003, :class:`~certkit.graph.implicit.ImplicitLayer`), ``|J| <= (I - B)^-1``."""

    block: np.ndarray  # (m, m), >= 0
    groups: int
    norms: dict

    @property
    def nonnegative(self) -> bool:
        return False

    def norm(self, p: float) -> float:
        return self.norms[float(p)] if float(p) in self.norms else self.norms[2.0]


Slopes = ElementSlopes | GroupSlopes | MatrixSlopes

SLOPES: dict[str, Callable[[object], Slopes]] = {}


def slopes_for(*kinds: str):
    """Decorator: register the slope function of one or more op kinds."""
    def deco(fn: Callable[[object], Slopes]) -> Callable[[object], Slopes]:
        for k in kinds:
            SLOPES[k] = fn
        return fn
    return deco


# --- elementwise activations of the base IR ------------------------------------------
slopes_for("relu", "softplus", "tanh")(lambda op: ElementSlopes(0.0, 1.0))
slopes_for("sigmoid")(lambda op: ElementSlopes(0.0, 0.25))
slopes_for("abs")(lambda op: ElementSlopes(-1.0, 1.0))


@slopes_for("leaky_relu")
def _leaky(op) -> ElementSlopes:
    a = float(op.slope)
    return ElementSlopes(min(a, 1.0), max(a, 1.0))


@slopes_for("clip")
def _clip(op) -> ElementSlopes:
    # slope 1 inside [lo, hi], 0 outside; exactly 0 where lo == hi, exactly 1 where unbounded
    lo, hi = np.asarray(op.lo, np.float64), np.asarray(op.hi, np.float64)
    s_hi = np.where(lo < hi, 1.0, 0.0)
    s_lo = np.where(np.isinf(lo) & np.isinf(hi), 1.0, 0.0)
    return ElementSlopes(s_lo, s_hi)


@slopes_for("max_group")
def _max_group(op) -> GroupSlopes:
    idx = np.asarray(op.index)
    valid = idx[idx >= 0]
    counts = np.bincount(valid) if valid.size else np.zeros(1)
    return GroupSlopes(idx, float(np.sqrt(counts.max())), 1.0)


# --- activations of papers 000 and 004 (certkit.graph.ops) ---------------------------
@slopes_for("capped_leaky_relu")
def _capped(op) -> ElementSlopes:
    """Capped symmetric leaky ReLU (paper 000, eq. 20): slopes alpha and alpha + gamma (= 1)."""
    return ElementSlopes(*op.slope_bounds())


@slopes_for("n_activation")
def _nact(op) -> ElementSlopes:
    """N-activation (paper 004): slopes +1, -1, +1 (1-Lipschitz, not monotone)."""
    return ElementSlopes(-1.0, 1.0)


@slopes_for("max_min")
def _maxmin(op) -> GroupSlopes:
    """MaxMin / GroupSort(2): pair ``(a_k, b_k)`` -> (max, min). At every point where it is
    differentiable the max and the min of a pair select different inputs, so an input in
    ``c`` pairs is selected at most ``c`` times: ``||J||_2 <= sqrt(max c)`` (1 when the pairs
    partition the input: a permutation), ``||J||_inf = 1``; ``|J| <= [[1, 1], [1, 1]]`` per pair."""
    a, b = np.asarray(op.a, np.int64), np.asarray(op.b, np.int64)
    pmax, pmin = op.positions()
    idx = np.empty((2 * len(a), 2), np.int64)
    idx[pmax] = np.stack([a, b], axis=1)
    idx[pmin] = np.stack([a, b], axis=1)
    counts = np.bincount(np.concatenate([a, b]))
    return GroupSlopes(idx, float(np.sqrt(counts.max())) if counts.size else 0.0, 1.0)


@slopes_for("implicit_bias")
def _implicit(op) -> MatrixSlopes | None:
    """The implicit-bias layer's K steps ``a -> z_K`` (paper 003; DESIGN.md section 8). With
    ``B = |c| alpha (|W| + diag(r))`` (off-diagonal ``W``, ``r`` its row sums) every step's
    ``|c ds/dz| <= B``, and by induction on ``D_{k+1} = (1 - eta) D_k + eta (I - c ds/dz D_k)``,
    ``D_0 = I``: ``|D_k| <= (I - B)^-1`` entrywise when ``||B||_inf = q < 1`` (Neumann series);
    the norms are :meth:`~certkit.graph.implicit.ImplicitLayer.lipschitz` (``1 / (1 - q_p)``).
    None (refused) when ``q >= 1``."""
    if op.q("inf") >= 1.0:
        return None
    w = np.abs(np.asarray(op.w, np.float64))
    np.fill_diagonal(w, 0.0)
    B = abs(op.c) * op.alpha * (w + np.diag(w.sum(1)))
    block = np.linalg.inv(np.eye(op.m) - B)
    block = np.maximum(block, 0.0) * (1 + 1e-9) + 1e-300  # >= 0 in real arithmetic: rounding only
    norms = {float("inf"): min(op.lipschitz("inf"), float(block.sum(1).max())),
             1.0: min(op.lipschitz("1"), float(block.sum(0).max())),
             2.0: op.lipschitz("2")}
    norms[2.0] = min(norms[2.0], float(np.sqrt(norms[1.0] * norms[float("inf")])))
    return MatrixSlopes(block, op.groups, norms)


def slopes_of(op) -> Slopes | None:
    """The slope range of ``op``; an elementwise op without an entry here may still declare
    ``slope_bounds() -> (lo, hi)`` itself."""
    fn = SLOPES.get(op.kind)
    if fn is not None:
        return fn(op)
    if hasattr(op, "slope_bounds"):
        return ElementSlopes(*op.slope_bounds())
    return None
