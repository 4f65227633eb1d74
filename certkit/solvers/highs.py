"""HiGHS (highspy): the default MILP solver, and the LP sessions.

Every HiGHS model certkit solves is built by :func:`build_lp`, whether a MIP
(:meth:`Highs.solve_mip`), the warm-started LP relaxations of the MILP backend
(:class:`HighsLpSession`) or a one-shot LP (:func:`certkit.solvers.solve_lp`).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Mapping

import numpy as np
import scipy.sparse as sp

from ..errors import BackendError
from ..quiet import without_stdout
from .base import Backend, StopReason
from .problem import FEAS_TOL, INT_TOL, MipProblem, MipResult, SolutionCallback, proven_bound

#: The options every MIP solve runs with: no gap (a proof needs the bound, not a good
#: solution), the tolerances of :mod:`certkit.solvers.problem` (``mip_feasibility_tolerance``
#: also sets the tolerances of the MIP's LPs), a fixed seed.
MIP_OPTIONS = {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0, "primal_feasibility_tolerance": FEAS_TOL,
               "dual_feasibility_tolerance": FEAS_TOL, "mip_feasibility_tolerance": INT_TOL, "random_seed": 0}


#: the thread count HiGHS's process-wide task scheduler was started with (None: not started yet)
_SCHEDULER = {"threads": None}
_SCHEDULER_LOCK = threading.Lock()


def set_threads(highspy, h, threads: int) -> None:
    """Run ``h`` on ``threads`` threads. HiGHS starts one task scheduler per process, with the thread
    count of the first solve, and then refuses any other count (``kError`` at ``run()``: found by a
    2-thread MILP after a 1-thread LP in the same process, which ended "open" with no node solved):
    a different count restarts the scheduler first. 0 is HiGHS's own choice."""
    threads = int(threads)
    with _SCHEDULER_LOCK:
        if _SCHEDULER["threads"] not in (None, threads):
            highspy.Highs.resetGlobalScheduler(True)
        _SCHEDULER["threads"] = threads
    h.setOptionValue("threads", threads)


def build_lp(highspy, p: MipProblem, integrality: bool = True):
    """``p`` as a ``highspy.HighsLp`` (column-wise matrix; infinite bounds as HiGHS's
    infinity); ``integrality=False`` drops the integer restrictions (the LP relaxation)."""
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
    if integrality and p.n_int:
        lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                           for b in p.integer]
    return lp


class Highs(Backend):
    name = "highs"
    title = "HiGHS"
    module = "highspy"
    missing = "the MILP backend needs HiGHS: pip install highspy"
    #: HiGHS solves the LPs of its MIP with dual tolerance mip_feasibility_tolerance / 10
    tolerances = (0.1 * INT_TOL, INT_TOL)
    #: ``HighsModelStatus`` member name -> status word (names, so that the map needs no import
    #: and survives renumbering). ``kInterrupt`` becomes the reason we interrupted for.
    STATUS_MAP = {
        "kOptimal": "optimal",
        "kInfeasible": "infeasible",
        "kObjectiveBound": "infeasible",  # nothing below the cutoff
        "kInterrupt": "stopped",
        "kTimeLimit": "time_limit",
        "kUnbounded": "unbounded",
        "kUnboundedOrInfeasible": "unbounded",
        "kLoadError": "error",
        "kModelError": "error",
        "kPresolveError": "error",
        "kSolveError": "error",
        "kPostsolveError": "error",
        "kMemoryLimit": "error",
    }

    def __init__(self) -> None:
        #: HiGHS has printed its start-up banner in this process (see :meth:`new`)
        self.quiet = False

    def new(self, highspy=None):
        """A silent ``highspy.Highs``. HiGHS prints a banner to the process's stdout (C level)
        when the first instance is built, before any option can be set; it is swallowed here so
        that it cannot mix with certkit's own output."""
        highspy = highspy or self._import()
        if self.quiet:
            h = highspy.Highs()
        else:
            h = without_stdout(highspy.Highs)
            self.quiet = True
        h.setOptionValue("output_flag", False)
        return h

    def solve_mip(self, p: MipProblem, time_limit: float | None, threads: int, stop_bound: float | None,
                  on_solution: SolutionCallback | None, cutoff: float | None, verbose: bool,
                  options: dict | None) -> MipResult:
        t0 = time.monotonic()
        highspy = self._import()
        h = self.new(highspy)
        h.setOptionValue("output_flag", bool(verbose))
        set_threads(highspy, h, threads if threads and threads > 0 else 0)
        if time_limit is not None:
            h.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
        for k, v in MIP_OPTIONS.items():
            h.setOptionValue(k, v)
        for k, v in (options or {}).items():
            if k == "objective_bound":
                raise BackendError("set HiGHS's objective bound with cutoff=, not as an option")
            if h.setOptionValue(k, v) == highspy.HighsStatus.kError:
                raise BackendError(f"HiGHS refused the option {k}={v!r}")
        if h.passModel(build_lp(highspy, p)) == highspy.HighsStatus.kError:
            return MipResult("error", solver=self.name, native_status="passModel error",
                             message="HiGHS rejected the model", time=time.monotonic() - t0)
        if cutoff is not None and math.isfinite(cutoff):
            h.setOptionValue("objective_bound", float(cutoff))

        stop = StopReason()
        if stop_bound is not None:
            def _interrupt(e) -> None:
                if stop.reason:
                    e.interrupt()
                    return
                db = e.data_out.mip_dual_bound
                if db is not None and db > stop_bound:
                    stop.reason = "bound_reached"
                    e.interrupt()

            h.cbMipInterrupt.subscribe(_interrupt)
        if on_solution is not None:
            def _improving(e) -> None:
                if stop.reason:
                    return
                x = np.array(e.data_out.mip_solution, dtype=np.float64)
                obj = float(e.data_out.objective_function_value)
                if on_solution(x, obj):
                    stop.reason = "stopped"

            def _interrupt2(e) -> None:
                if stop.reason:
                    e.interrupt()

            h.cbMipImprovingSolution.subscribe(_improving)
            h.cbMipInterrupt.subscribe(_interrupt2)

        run_status = h.run()
        ms = h.getModelStatus()
        info = h.getInfo()
        native = h.modelStatusToString(ms)
        res = MipResult("other", solver=self.name, native_status=native, time=time.monotonic() - t0,
                        nodes=int(info.mip_node_count) if info.mip_node_count >= 0 else 0)
        if info.primal_solution_status == 2:  # kSolutionStatusFeasible
            res.x = np.asarray(h.getSolution().col_value, dtype=np.float64)
            res.objective = float(info.objective_function_value)
        word = self.STATUS_MAP.get(ms.name, "other")
        res.status = (stop.reason or "other") if word == "stopped" else word
        # an LP's objective value bounds the minimum only once the LP is solved to optimality: a
        # simplex stopped early (time limit, interrupt) may report a primal value above it
        dual = float(info.mip_dual_bound) if p.n_int else float(info.objective_function_value)
        if not p.n_int and word != "optimal":
            dual = -math.inf
        res.bound = proven_bound(res.status, dual, res.objective, cutoff)
        res.message = f"HiGHS {native} (run status {getattr(run_status, 'name', run_status)})"
        res.tolerance = self.tolerances[0]
        return res

    def lp_session(self, problem: MipProblem) -> "HighsLpSession":
        return HighsLpSession(self, problem)


class HighsLpSession:
    """The LP relaxation of a :class:`MipProblem` (integrality dropped) in one HiGHS instance,
    for many objectives in a row: each :meth:`solve` starts from the previous basis.

    Runs on one thread with HiGHS's default LP tolerances (1e-7). Read the answer with
    :meth:`x`, :meth:`row_duals` and :meth:`objective` after :meth:`solve` said ``optimal``;
    the row duals ``y`` are HiGHS's: ``c - A^T y`` are the reduced costs, ``y_i > 0`` only at
    an active lower row bound and ``y_i < 0`` only at an active upper one (minimisation).
    """

    def __init__(self, backend: Highs, problem: MipProblem, threads: int = 1) -> None:
        highspy = backend._import()
        self.problem = problem
        self._h = backend.new(highspy)
        set_threads(highspy, self._h, threads)
        self._loaded = self._h.passModel(build_lp(highspy, problem, integrality=False)) != highspy.HighsStatus.kError
        self._cost = {int(j): float(problem.c[j]) for j in np.flatnonzero(problem.c)}
        self._map = backend.STATUS_MAP
        #: the status word of the last solve ("" before the first), and HiGHS's own
        self.status = ""
        self.native_status = ""

    def set_objective(self, cost: Mapping[int, float]) -> None:
        """Minimise ``sum_j cost[j] x_j`` from now on (every other cost 0)."""
        for j in self._cost:
            if j not in cost:
                self._h.changeColCost(j, 0.0)
        for j, v in cost.items():
            self._h.changeColCost(j, float(v))
        self._cost = dict(cost)

    def solve(self, time_limit: float | None = None) -> str:
        """Solve for the current objective within ``time_limit`` seconds; the status word."""
        if not self._loaded:
            self.status, self.native_status = "error", "passModel error"
            return self.status
        self._h.setOptionValue("time_limit", math.inf if time_limit is None else max(time_limit, 1e-3))
        self._h.run()
        ms = self._h.getModelStatus()
        self.status, self.native_status = self._map.get(ms.name, "other"), self._h.modelStatusToString(ms)
        return self.status

    def x(self) -> np.ndarray | None:
        """The primal point of the last solve (None unless it was optimal)."""
        if self.status != "optimal":
            return None
        return np.asarray(self._h.getSolution().col_value, dtype=np.float64)

    def row_duals(self) -> np.ndarray | None:
        """The row duals of the last solve (None unless it was optimal)."""
        if self.status != "optimal":
            return None
        return np.asarray(self._h.getSolution().row_dual, dtype=np.float64)

    def objective(self) -> float:
        """The objective value of the last solve (NaN unless it was optimal)."""
        if self.status != "optimal":
            return math.nan
        return float(self._h.getInfo().objective_function_value)
