"""One small interface over the MILP solvers certkit can use: HiGHS (default) and Gurobi.

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

The tolerances the solvers are run with are set here (``INT_TOL``, ``FEAS_TOL``)
and reported by :func:`tolerances` so that callers can account for them.

Solver problems become :class:`certkit.errors.BackendError` with a one-line
message: HiGHS missing, gurobipy missing, or no Gurobi licence / the
size-limited licence that ships with the pip wheel (error 10010, "Model too
large for size-limited license"). Callers may then fall back to HiGHS
(``solver="auto"`` does so). The native status and message are kept in
``MipResult.native_status``/``message``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..errors import BackendError

#: MIP feasibility/integrality tolerance for both solvers: HiGHS's default and tuned value.
#: HiGHS runs the LP relaxations of its MIP with this primal tolerance and a tenth of it as
#: dual tolerance, whatever the LP options say. Do not tighten it: with 1e-8 HiGHS 1.16 was
#: seen to report a wrong optimum (too high) and with 1e-9 a feasible ACAS Xu MILP as
#: infeasible (presolve off) -- exactly the kind of error a proof cannot absorb.
INT_TOL = 1e-6
#: Primal/dual feasibility tolerance of pure LPs (HiGHS) and of Gurobi's LPs.
FEAS_TOL = 1e-7


def tolerances(solver: str) -> tuple[float, float]:
    """``(dual_tol, primal_tol)`` the solver effectively works with in branch and bound: the
    error of a reduced cost / row multiplier sign, and the violation of a row or of
    integrality it accepts (see :mod:`certkit.verify.milp` for how they enter the margin)."""
    if solver == "highs":
        return 0.1 * INT_TOL, INT_TOL
    if solver == "gurobi":
        return FEAS_TOL, max(FEAS_TOL, INT_TOL)
    return max(tolerances("highs")[0], tolerances("gurobi")[0]), max(tolerances("highs")[1], tolerances("gurobi")[1])


SOLVERS = ("highs", "gurobi")

#: Gurobi error codes that mean "no usable licence".
_GUROBI_LICENCE_ERRORS = {10009: "no Gurobi licence found", 10010: "size-limited licence",
                          10030: "licence expired or invalid"}


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
    """What a solver established.

    ``status``: optimal | infeasible | bound_reached (stopped: dual bound > stop_bound) |
    stopped (on_solution asked to stop) | time_limit | error | other.
    """

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


def _below(cutoff: float) -> float:
    """The bound a cutoff proof establishes: the solver prunes against the cutoff up to its
    feasibility tolerance."""
    return float(cutoff) - INT_TOL * (1.0 + abs(float(cutoff)))


SolutionCallback = Callable[[np.ndarray, float], bool]


_HIGHS_QUIET = False


def new_highs():
    """A silent ``highspy.Highs``. HiGHS prints a banner to the process's stdout (C level)
    when the first instance is built, before any option can be set; it is swallowed here so
    that it cannot mix with certkit's own output."""
    global _HIGHS_QUIET
    try:
        import highspy
    except ImportError as e:  # pragma: no cover - highspy is a dependency
        raise BackendError("the MILP backend needs HiGHS: pip install highspy") from e
    if _HIGHS_QUIET:
        h = highspy.Highs()
    else:
        import os
        import sys

        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _HIGHS_QUIET = True
    h.setOptionValue("output_flag", False)
    return h


def solver_available(name: str) -> bool:
    """True when the solver's Python package can be imported (says nothing about licences)."""
    try:
        if name == "highs":
            import highspy  # noqa: F401
        elif name == "gurobi":
            import gurobipy  # noqa: F401
        else:
            return False
    except ImportError:
        return False
    return True


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
    if solver == "auto":
        if solver_available("gurobi"):
            try:
                return _solve_gurobi(problem, time_limit, threads, stop_bound, on_solution, cutoff, verbose, options)
            except BackendError as e:
                res = _solve_highs(problem, time_limit, threads, stop_bound, on_solution, cutoff, verbose, options)
                res.message = f"{res.message}; fell back to HiGHS: {e}".lstrip("; ")
                return res
        return _solve_highs(problem, time_limit, threads, stop_bound, on_solution, cutoff, verbose, options)
    if solver == "highs":
        return _solve_highs(problem, time_limit, threads, stop_bound, on_solution, cutoff, verbose, options)
    if solver == "gurobi":
        return _solve_gurobi(problem, time_limit, threads, stop_bound, on_solution, cutoff, verbose, options)
    raise BackendError(f"unknown MILP solver '{solver}' (choose from: highs, gurobi, auto)")


# --------------------------------------------------------------------------- HiGHS


def _solve_highs(p: MipProblem, time_limit, threads, stop_bound, on_solution, cutoff, verbose,
                 options=None) -> MipResult:
    t0 = time.monotonic()
    h = new_highs()
    import highspy

    h.setOptionValue("output_flag", bool(verbose))
    if threads and threads > 0:
        h.setOptionValue("threads", int(threads))
    if time_limit is not None:
        h.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("primal_feasibility_tolerance", FEAS_TOL)
    h.setOptionValue("dual_feasibility_tolerance", FEAS_TOL)
    h.setOptionValue("mip_feasibility_tolerance", INT_TOL)  # also the MIP's LP tolerances
    h.setOptionValue("random_seed", 0)
    for k, v in (options or {}).items():
        h.setOptionValue(k, v)

    lp = highspy.HighsLp()
    n, m = p.n_cols, p.n_rows
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = np.asarray(p.c, dtype=np.float64)
    inf = highspy.kHighsInf
    lp.col_lower_ = np.where(np.isfinite(p.lb), p.lb, -inf).astype(np.float64)
    lp.col_upper_ = np.where(np.isfinite(p.ub), p.ub, inf).astype(np.float64)
    lp.row_lower_ = np.where(np.isfinite(p.row_lo), p.row_lo, -inf).astype(np.float64)
    lp.row_upper_ = np.where(np.isfinite(p.row_hi), p.row_hi, inf).astype(np.float64)
    lp.offset_ = float(p.offset)
    A = sp.csc_matrix(p.A)
    A.sort_indices()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, m
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(np.float64)
    if p.n_int:
        lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                           for b in p.integer]
    status = h.passModel(lp)
    if status == highspy.HighsStatus.kError:
        return MipResult("error", solver="highs", native_status="passModel error",
                         message="HiGHS rejected the model", time=time.monotonic() - t0)
    if cutoff is not None and math.isfinite(cutoff):
        h.setOptionValue("objective_bound", float(cutoff))

    state = {"stop": False, "why": ""}

    if stop_bound is not None:
        def _interrupt(e) -> None:
            if state["stop"]:
                e.interrupt()
                return
            db = e.data_out.mip_dual_bound
            if db is not None and db > stop_bound:
                state["stop"], state["why"] = True, "bound"
                e.interrupt()

        h.cbMipInterrupt.subscribe(_interrupt)
    if on_solution is not None:
        def _improving(e) -> None:
            if state["stop"]:
                return
            x = np.array(e.data_out.mip_solution, dtype=np.float64)
            obj = float(e.data_out.objective_function_value)
            if on_solution(x, obj):
                state["stop"], state["why"] = True, "solution"

        def _interrupt2(e) -> None:
            if state["stop"]:
                e.interrupt()

        h.cbMipImprovingSolution.subscribe(_improving)
        h.cbMipInterrupt.subscribe(_interrupt2)

    run_status = h.run()
    ms = h.getModelStatus()
    info = h.getInfo()
    native = h.modelStatusToString(ms)
    res = MipResult("other", solver="highs", native_status=native, time=time.monotonic() - t0,
                    nodes=int(info.mip_node_count) if info.mip_node_count >= 0 else 0)
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    if has_sol:
        res.x = np.asarray(h.getSolution().col_value, dtype=np.float64)
        res.objective = float(info.objective_function_value)
    MS = highspy.HighsModelStatus
    db = float(info.mip_dual_bound) if p.n_int else float(info.objective_function_value)
    if ms == MS.kOptimal:
        res.status = "optimal"
        res.bound = db if p.n_int else res.objective
        if not math.isfinite(res.bound):  # e.g. presolve solved everything
            res.bound = res.objective
        # an optimal LP/MIP: the dual bound can never be above the optimum found
        res.bound = min(res.bound, res.objective)
    elif ms == MS.kInfeasible:
        res.status = "infeasible"
        res.bound = math.inf if cutoff is None else _below(cutoff)
    elif ms == MS.kObjectiveBound:
        res.status = "infeasible"  # no solution below the cutoff
        res.bound = _below(cutoff) if cutoff is not None else db
    elif ms == MS.kInterrupt:
        res.status = {"bound": "bound_reached", "solution": "stopped"}.get(state["why"], "other")
        res.bound = db
    elif ms == MS.kTimeLimit:
        res.status, res.bound = "time_limit", db
    elif ms in (MS.kUnbounded, MS.kUnboundedOrInfeasible):
        res.status, res.bound = "other", -math.inf
    elif ms in (MS.kLoadError, MS.kModelError, MS.kPresolveError, MS.kSolveError, MS.kPostsolveError,
                MS.kMemoryLimit):
        res.status, res.bound = "error", -math.inf
    else:
        res.bound = db if p.n_int else -math.inf
    if not (res.bound == res.bound):  # NaN
        res.bound = -math.inf
    if cutoff is not None and res.bound > cutoff:  # pruning at the cutoff proves no more than it
        res.bound = _below(cutoff)
    res.message = f"HiGHS {native} (run status {run_status.name if hasattr(run_status, 'name') else run_status})"
    res.tolerance = tolerances("highs")[0]
    return res


# --------------------------------------------------------------------------- Gurobi


def _gurobi_error(e) -> BackendError:
    code = getattr(e, "errno", None)
    if code == 10010:
        return BackendError("Gurobi: model too large for the size-limited licence bundled with the "
                            "gurobipy wheel (at most 2000 variables and 2000 constraints); install a full "
                            "Gurobi licence (gurobi.com, free for academics) or use --solver highs")
    if code in _GUROBI_LICENCE_ERRORS:
        return BackendError(f"Gurobi: {_GUROBI_LICENCE_ERRORS[code]} (error {code}: {str(e).strip()}); "
                            "install a Gurobi licence or use the HiGHS solver")
    return BackendError(f"Gurobi failed (error {code}): {str(e).strip()}")


def _solve_gurobi(p: MipProblem, time_limit, threads, stop_bound, on_solution, cutoff, verbose,
                  options=None) -> MipResult:
    try:
        import gurobipy as gp
        from gurobipy import GRB
    except ImportError as e:
        raise BackendError("solver 'gurobi' needs gurobipy and a licence: pip install gurobipy "
                           "(its bundled licence is limited to 2000 variables/constraints)") from e
    t0 = time.monotonic()
    try:
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 1 if verbose else 0)
        env.start()
        m = gp.Model(env=env)
        m.Params.Threads = int(threads) if threads else 0
        if time_limit is not None:
            m.Params.TimeLimit = float(max(time_limit, 1e-3))
        m.Params.MIPGap = 0.0
        m.Params.MIPGapAbs = 0.0
        m.Params.FeasibilityTol = FEAS_TOL
        m.Params.OptimalityTol = FEAS_TOL
        m.Params.IntFeasTol = INT_TOL
        m.Params.Seed = 0
        if stop_bound is not None:  # Gurobi stops at ObjBound >= value; we need > stop_bound
            m.Params.BestBdStop = float(stop_bound) + 1e-9 * (1.0 + abs(float(stop_bound)))
        if cutoff is not None and math.isfinite(cutoff):
            m.Params.Cutoff = float(cutoff)
        for k, v in (options or {}).items():
            m.setParam(k, v)
        vtype = np.where(p.integer, GRB.INTEGER, GRB.CONTINUOUS)
        lb = np.where(np.isfinite(p.lb), p.lb, -GRB.INFINITY)
        ub = np.where(np.isfinite(p.ub), p.ub, GRB.INFINITY)
        x = m.addMVar(p.n_cols, lb=lb, ub=ub, vtype=vtype)
        A = sp.csr_matrix(p.A)
        eq = np.isfinite(p.row_lo) & np.isfinite(p.row_hi) & (p.row_lo == p.row_hi)
        lo_only = np.isfinite(p.row_lo) & ~eq
        hi_only = np.isfinite(p.row_hi) & ~eq
        for mask, sense, rhs in ((eq, "=", p.row_lo), (lo_only, ">", p.row_lo), (hi_only, "<", p.row_hi)):
            if mask.any():
                m.addMConstr(A[np.flatnonzero(mask)], x, sense, rhs[mask])
        m.setMObjective(None, np.asarray(p.c, dtype=np.float64), float(p.offset), xc=x, sense=GRB.MINIMIZE)
        m.update()
        state = {"stop": False}
        vars_ = x.tolist()

        def _cb(model, where):
            if where == GRB.Callback.MIPSOL and on_solution is not None and not state["stop"]:
                sol = np.asarray(model.cbGetSolution(vars_), dtype=np.float64)
                obj = float(model.cbGet(GRB.Callback.MIPSOL_OBJ))
                if on_solution(sol, obj):
                    state["stop"] = True
                    model.terminate()

        m.optimize(_cb if on_solution is not None else None)
    except gp.GurobiError as e:
        raise _gurobi_error(e) from e
    st = m.Status
    names = {GRB.OPTIMAL: "OPTIMAL", GRB.INFEASIBLE: "INFEASIBLE", GRB.INF_OR_UNBD: "INF_OR_UNBD",
             GRB.UNBOUNDED: "UNBOUNDED", GRB.CUTOFF: "CUTOFF", GRB.TIME_LIMIT: "TIME_LIMIT",
             GRB.INTERRUPTED: "INTERRUPTED", GRB.USER_OBJ_LIMIT: "USER_OBJ_LIMIT",
             GRB.NUMERIC: "NUMERIC", GRB.SUBOPTIMAL: "SUBOPTIMAL"}
    native = names.get(st, f"status {st}")
    res = MipResult("other", solver="gurobi", native_status=native, time=time.monotonic() - t0,
                    message=f"Gurobi {native}")
    try:
        res.nodes = int(m.NodeCount) if p.n_int else 0
    except (gp.GurobiError, AttributeError):
        pass
    if m.SolCount > 0:
        res.x = np.asarray(x.X, dtype=np.float64)
        res.objective = float(m.ObjVal)

    def _objbound() -> float:
        try:
            return float(m.ObjBound) if p.n_int else float(m.ObjVal)
        except (gp.GurobiError, AttributeError):
            return -math.inf

    if st == GRB.OPTIMAL:
        res.status = "optimal"
        res.bound = min(_objbound(), res.objective)
    elif st == GRB.INFEASIBLE:
        res.status, res.bound = "infeasible", math.inf
    elif st == GRB.CUTOFF:
        res.status, res.bound = "infeasible", _below(cutoff)
    elif st == GRB.USER_OBJ_LIMIT:
        res.status, res.bound = "bound_reached", _objbound()
    elif st == GRB.INTERRUPTED:
        res.status = "stopped" if state["stop"] else "other"
        res.bound = _objbound()
    elif st == GRB.TIME_LIMIT:
        res.status, res.bound = "time_limit", _objbound()
    elif st == GRB.NUMERIC:
        res.status, res.bound = "error", -math.inf
    else:
        res.bound = _objbound() if st != GRB.INF_OR_UNBD else -math.inf
    if cutoff is not None and res.bound > cutoff:
        res.bound = _below(cutoff)
    res.tolerance = tolerances("gurobi")[0]
    m.dispose()
    env.dispose()
    return res
