"""LP relaxations of the MILP whose minima are rigorous, whatever the LP solver's tolerances.

Any row multipliers ``y`` give a valid lower bound of ``min c.x`` over
``{row_lo <= A x <= row_hi, lb <= x <= ub}``:
``c.x = y.(Ax) + (c - A^T y).x``, and each term is minimised over its own range,
``min_{Ax in rows} y.Ax + min_{x in box} (c - A^T y).x`` (Neumaier & Shcherbina, Math. Prog.
99, 2004). With the duals of an optimal LP solve this is the LP minimum up to the dual
tolerance's effect; with any other ``y`` it is still sound, only weaker. So a solver
tolerance can weaken an LP bound but never make it too tight: an intermediate bound
tightened this way (:mod:`certkit.verify.milp.encoding`) and the LP stage of a decision
(:mod:`certkit.verify.milp.decide`) are rigorous up to float64 rounding.

The LPs are solved in a warm-started session of :mod:`certkit.solvers` (HiGHS), one per
problem, for many objectives in a row.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

from ...solvers import MipProblem, lp_session


def safe_lp_min(p: MipProblem, A_T: sp.csr_matrix, c: np.ndarray, y: np.ndarray) -> float:
    """A valid lower bound of ``min c.x`` over the LP ``p`` from any row multipliers ``y``
    (Neumaier-Shcherbina): ``c.x = y.(Ax) + r.x`` with ``r = c - A^T y``, each term minimised
    over its range. Multipliers pointing at an infinite row side are dropped (set to 0)."""
    y = np.where(((y > 0) & ~np.isfinite(p.row_lo)) | ((y < 0) & ~np.isfinite(p.row_hi)), 0.0, y)
    r = c - A_T @ y
    with np.errstate(invalid="ignore"):
        row_part = np.where(y > 0, y * np.where(np.isfinite(p.row_lo), p.row_lo, 0.0),
                            y * np.where(np.isfinite(p.row_hi), p.row_hi, 0.0)).sum()
        col_part = np.where(r > 0, r * p.lb, r * p.ub)
    col_part = np.where(r == 0, 0.0, col_part)
    return float(row_part + col_part.sum())


class LpRelaxation:
    """The LP relaxation of a :class:`MipProblem` (integrality dropped) in one solver session,
    for many objectives in a row (warm-started), each minimum made rigorous from the row
    duals (:func:`safe_lp_min`)."""

    def __init__(self, p: MipProblem) -> None:
        self.p = p
        self.A_T = sp.csr_matrix(p.A.T)
        self.session = lp_session(p)

    def minimum(self, cost: dict[int, float], deadline: float | None = None) -> float:
        """Rigorous lower bound of ``min sum_j cost[j] x_j`` (``-inf`` if the LP fails or
        runs out of time)."""
        self.session.set_objective(cost)
        if self.session.solve(None if deadline is None else deadline - time.monotonic()) != "optimal":
            return -math.inf
        c = np.zeros(self.p.n_cols)
        for j, v in cost.items():
            c[j] = v
        return safe_lp_min(self.p, self.A_T, c, self.session.row_duals())

    def x(self) -> np.ndarray | None:
        """The primal point of the last solve (None if it failed)."""
        return self.session.x()

    def tighten(self, cols: np.ndarray, deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Rigorous LP bounds ``(lo, hi)`` of the columns ``cols`` (-inf/inf where not solved)."""
        lo = np.full(len(cols), -np.inf)
        hi = np.full(len(cols), np.inf)
        for t, col in enumerate(cols):
            if deadline is not None and time.monotonic() > deadline:
                break
            lo[t] = self.minimum({int(col): 1.0}, deadline)
            hi[t] = -self.minimum({int(col): -1.0}, deadline)
        return lo, hi
