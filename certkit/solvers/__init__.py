"""One small interface over the solvers certkit can use: HiGHS (default) and Gurobi.

A :class:`MipProblem` is a minimisation ``min c.x + offset`` subject to
``row_lo <= A x <= row_hi``, ``lb <= x <= ub`` and ``x_j`` integer where
``integer[j]``. :func:`solve_mip` runs a solver on it and returns a
:class:`MipResult` whose ``bound`` is the solver's **dual bound** (the best
proven lower bound on the minimum when the solver stopped; ``+inf`` when the
problem was proven infeasible, ``-inf`` when nothing was proven) -- the number
a proof must use -- and whose ``objective``/``x`` are the best primal solution
found, if any (a candidate only: it satisfies the constraints up to the
solver's feasibility tolerances, see :mod:`certkit.verify.milp`).

Two early stops make the MILP a decision procedure rather than an optimiser:

* ``stop_bound``: stop as soon as the dual bound exceeds this value (the
  question "is the optimum above tau?" is answered); with HiGHS through the
  MIP interrupt callback, with Gurobi through ``BestBdStop``;
* ``on_solution(x, obj) -> bool``: called with every improving solution; when it
  returns True the solve stops (e.g. once a counterexample is confirmed).

LPs reach HiGHS through the same model builder in two ways: :func:`lp_session` loads a
problem once (integrality dropped) for many objectives in a row, warm-started, with the row
duals of each solve (the MILP backend's rigorous LP bounds); :func:`solve_lp` is a one-shot
LP in :func:`scipy.optimize.linprog`'s terms.

The tolerances the solvers are run with are set in :mod:`certkit.solvers.problem`
(``INT_TOL``, ``FEAS_TOL``) and reported by :func:`tolerances` so that callers can account
for them.

Solver problems become :class:`certkit.errors.BackendError` with a one-line
message: HiGHS missing, gurobipy missing, or no Gurobi licence / the
size-limited licence that ships with the pip wheel (error 10010, "Model too
large for size-limited license"). Callers may then fall back to HiGHS
(``solver="auto"`` does so). The native status and message are kept in
``MipResult.native_status``/``message``.

This package is on the ground floor: numpy, scipy, :mod:`certkit.errors` and, lazily, the
solvers' own packages; never torch.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import BackendError
from .base import Backend
from .gurobi import Gurobi
from .highs import Highs, HighsLpSession
from .problem import (FEAS_TOL, INT_TOL, LINPROG_STATUS, STATUSES, LpResult, MipProblem, MipResult,
                      SolutionCallback)

__all__ = ["AUTO", "BACKENDS", "FEAS_TOL", "INT_TOL", "SOLVERS", "STATUSES", "Backend", "HighsLpSession",
           "LpResult", "MipProblem", "MipResult", "SolutionCallback", "backend", "lp_session", "solve_lp",
           "solve_mip", "solver_available", "tolerances"]

#: The solver backends by name.
BACKENDS: dict[str, Backend] = {}


def _register(b: Backend) -> None:
    if b.name in BACKENDS:
        raise ValueError(f"solver backend '{b.name}' registered twice")
    BACKENDS[b.name] = b


for _b in (Highs(), Gurobi()):
    _register(_b)

SOLVERS = tuple(BACKENDS)
#: ``solver="auto"``: the first of these that is installed and accepts the model (a licence
#: refusal passes on to the next; the last one's error is raised).
AUTO = ("gurobi", "highs")


def backend(name: str) -> Backend:
    """The backend called ``name``."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown MILP solver '{name}' (choose from: {', '.join(SOLVERS)}, auto)") from None


def solver_available(name: str) -> bool:
    """True when the solver's Python package can be imported (says nothing about licences)."""
    return name in BACKENDS and BACKENDS[name].available()


def tolerances(solver: str) -> tuple[float, float]:
    """``(dual_tol, primal_tol)`` the solver effectively works with in branch and bound: the
    error of a reduced cost / row multiplier sign, and the violation of a row or of
    integrality it accepts (see :mod:`certkit.verify.milp` for how they enter the margin).
    For ``auto``, the larger of the candidates'."""
    if solver == "auto":
        tols = [BACKENDS[n].tolerances for n in AUTO]
        return max(t[0] for t in tols), max(t[1] for t in tols)
    return backend(solver).tolerances


def solve_mip(problem: MipProblem, solver: str = "highs", time_limit: float | None = None,
              threads: int = 1, stop_bound: float | None = None,
              on_solution: SolutionCallback | None = None, cutoff: float | None = None,
              verbose: bool = False, options: dict | None = None) -> MipResult:
    """Minimise ``problem`` with ``solver`` (``highs``, ``gurobi``, or ``auto``: Gurobi when it
    is installed and licensed for the model's size, else HiGHS).

    ``cutoff``: only solutions with objective below it are of interest; nodes whose bound
    exceeds it are pruned (a proof that the minimum is >= cutoff then shows as status
    ``infeasible`` with ``bound`` just below the cutoff). ``options``: extra native solver
    options (HiGHS option names or Gurobi parameter names), for tuning.
    """
    if time_limit is not None and time_limit <= 0:
        return MipResult("time_limit", solver=solver, message="no time left before the solve")
    kw = dict(time_limit=time_limit, threads=threads, stop_bound=stop_bound, on_solution=on_solution,
              cutoff=cutoff, verbose=verbose, options=options)
    if solver != "auto":
        return backend(solver).solve_mip(problem, **kw)
    refused: list[str] = []
    for name in AUTO:
        b, last = BACKENDS[name], name == AUTO[-1]
        if not last and not b.available():
            continue
        try:
            res = b.solve_mip(problem, **kw)
        except BackendError as e:
            if last:
                raise
            refused.append(str(e))
            continue
        if refused:
            res.message = f"{res.message}; fell back to {b.title}: {'; '.join(refused)}".lstrip("; ")
        return res
    raise AssertionError("unreachable: the last AUTO backend returns or raises")  # pragma: no cover


def lp_session(problem: MipProblem, solver: str = "highs") -> HighsLpSession:
    """A warm-startable LP session over ``problem`` with integrality dropped: change the
    objective (``set_objective``), ``solve``, read ``x()``, ``row_duals()``, ``objective()``
    and ``status`` (:class:`certkit.solvers.highs.HighsLpSession`)."""
    return backend(solver).lp_session(problem)


def _column_bounds(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    """linprog-style ``bounds`` (one ``(lo, hi)`` per variable, None for infinite, or an
    ``(n, 2)`` array) as two float arrays."""
    pairs = list(bounds)
    if len(pairs) != n:
        raise ValueError(f"solve_lp: {len(pairs)} bounds for {n} variables")
    lb = np.array([-np.inf if lo is None else float(lo) for lo, _ in pairs], dtype=np.float64)
    ub = np.array([np.inf if hi is None else float(hi) for _, hi in pairs], dtype=np.float64)
    return lb, ub


def solve_lp(c, A_ub, b_ub, bounds, time_limit: float | None = None, solver: str = "highs") -> LpResult:
    """``min c.x`` s.t. ``A_ub x <= b_ub``, ``bounds[j][0] <= x_j <= bounds[j][1]``, as
    ``scipy.optimize.linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")`` would
    answer it: ``status`` 0 optimal, 1 time limit, 2 infeasible, 3 unbounded, 4 other trouble;
    ``marginals`` its ``ineqlin.marginals`` (``<= 0``; ``-marginals`` are the row
    multipliers). ``bounds`` has no default: unlike linprog's, there is no implicit ``x >= 0``.
    """
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    n = c.shape[0]
    A = sp.csr_matrix(np.asarray(A_ub, dtype=np.float64).reshape(-1, n) if not sp.issparse(A_ub) else A_ub)
    b = np.asarray(b_ub, dtype=np.float64).reshape(-1)
    if A.shape != (b.shape[0], n):
        raise ValueError(f"solve_lp: A_ub is {A.shape}, b_ub has {b.shape[0]} entries, c has {n}")
    lb, ub = _column_bounds(bounds, n)
    p = MipProblem(c, lb, ub, np.zeros(n, dtype=bool), A, np.full(b.shape[0], -np.inf), b)
    s = backend(solver).lp_session(p)
    status = s.solve(time_limit)
    code = LINPROG_STATUS.get(status, 4)
    msg = f"{backend(solver).title} {s.native_status}"
    if code != 0:
        return LpResult(code, None, float("nan"), None, s.native_status, msg)
    return LpResult(0, s.x(), s.objective(), s.row_duals(), s.native_status, msg)
