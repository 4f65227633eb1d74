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


Slopes = ElementSlopes | GroupSlopes

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


def slopes_of(op) -> Slopes | None:
    """The slope range of ``op``; an elementwise op without an entry here may still declare
    ``slope_bounds() -> (lo, hi)`` itself."""
    fn = SLOPES.get(op.kind)
    if fn is not None:
        return fn(op)
    if hasattr(op, "slope_bounds"):
        return ElementSlopes(*op.slope_bounds())
    return None
