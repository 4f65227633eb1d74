"""The problems and results every solver backend speaks, and the tolerances they run with.

A :class:`MipProblem` is a minimisation ``min c.x + offset`` subject to
``row_lo <= A x <= row_hi``, ``lb <= x <= ub`` and ``x_j`` integer where
``integer[j]`` (an LP when no column is integer). A :class:`MipResult` carries the
solver's **dual bound** (the best proven lower bound on the minimum when the solver
stopped; ``+inf`` when the problem was proven infeasible, ``-inf`` when nothing was
proven) -- the number a proof must use -- and the best primal solution found, if any (a
candidate only: it satisfies the constraints up to the solver's feasibility
tolerances, see :mod:`certkit.verify.milp`). An :class:`LpResult` is the one-shot LP
answer of :func:`certkit.solvers.solve_lp`, in :func:`scipy.optimize.linprog`'s terms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

#: MIP feasibility/integrality tolerance for both solvers: HiGHS's default and tuned value.
#: HiGHS runs the LP relaxations of its MIP with this primal tolerance and a tenth of it as
#: dual tolerance, whatever the LP options say. Do not tighten it: with 1e-8 HiGHS 1.16 was
#: seen to report a wrong optimum (too high) and with 1e-9 a feasible ACAS Xu MILP as
#: infeasible (presolve off) -- exactly the kind of error a proof cannot absorb.
INT_TOL = 1e-6
#: Primal/dual feasibility tolerance of pure LPs (HiGHS) and of Gurobi's LPs.
FEAS_TOL = 1e-7

#: What :attr:`MipResult.status` can say. ``bound_reached``: stopped because the dual bound
#: exceeded ``stop_bound``; ``stopped``: ``on_solution`` asked to stop; ``unbounded``: the
#: solver found the problem unbounded or could not tell unbounded from infeasible (nothing
#: proven); ``other``: any other stop (iteration limits, unknown), see ``native_status``.
STATUSES = ("optimal", "infeasible", "bound_reached", "stopped", "time_limit", "unbounded", "error", "other")

#: ``on_solution(x, objective) -> stop?``, called with every improving MIP solution.
SolutionCallback = Callable[[np.ndarray, float], bool]


@dataclass
class MipProblem:
    """``min c.x + offset`` s.t. ``row_lo <= A x <= row_hi``, ``lb <= x <= ub``, integrality."""

    c: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integer: np.ndarray  # bool (n,)
    A: sp.csr_matrix  # (m, n)
    row_lo: np.ndarray
    row_hi: np.ndarray
    offset: float = 0.0

    @property
    def n_cols(self) -> int:
        return int(self.c.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.A.shape[0])

    @property
    def n_int(self) -> int:
        return int(np.count_nonzero(self.integer))


@dataclass
class MipResult:
    """What a solver established; ``status`` is one of :data:`STATUSES`."""

    status: str
    bound: float = -math.inf  # dual bound on the minimum (includes offset)
    objective: float = math.inf  # best primal objective (includes offset)
    x: np.ndarray | None = None
    nodes: int = 0
    time: float = 0.0
    solver: str = ""
    native_status: str = ""
    message: str = ""
    tolerance: float = FEAS_TOL  # the dual tolerance it ran with
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LpResult:
    """One LP's answer in :func:`scipy.optimize.linprog`'s terms.

    ``status``: 0 optimal, 1 time or iteration limit, 2 infeasible, 3 unbounded, 4 other
    trouble (:data:`LINPROG_STATUS`). ``x``, ``objective`` and ``marginals`` are set only when
    optimal (else None / NaN / None). ``marginals`` are linprog's ``ineqlin.marginals``: the
    sensitivity of the optimum to each ``b_ub`` entry, so ``<= 0`` for a minimisation, and
    ``-marginals`` are the nonnegative multipliers ``y`` of the rows ``A_ub x <= b_ub`` with
    ``c + A_ub^T y`` the reduced costs.
    """

    status: int
    x: np.ndarray | None
    objective: float
    marginals: np.ndarray | None
    native_status: str = ""
    message: str = ""


#: :attr:`LpResult.status` from the status words of :data:`STATUSES` (scipy's linprog codes).
LINPROG_STATUS = {"optimal": 0, "time_limit": 1, "infeasible": 2, "unbounded": 3}


def below_cutoff(cutoff: float) -> float:
    """The bound a cutoff proof establishes: the solver prunes against the cutoff up to its
    feasibility tolerance."""
    return float(cutoff) - INT_TOL * (1.0 + abs(float(cutoff)))


def proven_bound(status: str, dual: float, objective: float, cutoff: float | None) -> float:
    """The lower bound on the minimum a result with ``status`` proves, given the solver's
    ``dual`` bound and best ``objective``: the optimum for ``optimal`` (never above the
    solution found), ``+inf`` for ``infeasible``, nothing for ``unbounded`` and ``error``, else
    the dual bound. Pruning at a ``cutoff`` proves no more than the cutoff (less its
    tolerance)."""
    if status == "optimal":
        bound = min(dual if math.isfinite(dual) else objective, objective)
    elif status == "infeasible":
        bound = math.inf
    elif status in ("unbounded", "error"):
        bound = -math.inf
    else:
        bound = dual
    if not (bound == bound):  # NaN
        bound = -math.inf
    if cutoff is not None and bound > cutoff:
        bound = below_cutoff(cutoff)
    return bound
