"""Gurobi (gurobipy), when installed and licensed.

The pip wheel ships a size-limited licence (2000 variables and 2000 constraints): a larger
model fails with error 10010, which becomes a :class:`BackendError` saying so; callers may
then fall back to HiGHS (``solver="auto"`` does).
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

from ..errors import BackendError
from .base import Backend, StopReason
from .problem import FEAS_TOL, INT_TOL, MipProblem, MipResult, SolutionCallback, proven_bound

#: Gurobi's optimisation status codes (``GRB.Status``; stable across versions) by name.
NATIVE_NAMES = {1: "LOADED", 2: "OPTIMAL", 3: "INFEASIBLE", 4: "INF_OR_UNBD", 5: "UNBOUNDED", 6: "CUTOFF",
                7: "ITERATION_LIMIT", 8: "NODE_LIMIT", 9: "TIME_LIMIT", 10: "SOLUTION_LIMIT",
                11: "INTERRUPTED", 12: "NUMERIC", 13: "SUBOPTIMAL", 14: "INPROGRESS", 15: "USER_OBJ_LIMIT",
                16: "WORK_LIMIT", 17: "MEM_LIMIT"}

#: Gurobi error codes that mean "no usable licence".
LICENCE_ERRORS = {10009: "no Gurobi licence found", 10010: "size-limited licence",
                  10030: "licence expired or invalid"}


def _gurobi_error(e) -> BackendError:
    code = getattr(e, "errno", None)
    if code == 10010:
        return BackendError("Gurobi: model too large for the size-limited licence bundled with the "
                            "gurobipy wheel (at most 2000 variables and 2000 constraints); install a full "
                            "Gurobi licence (gurobi.com, free for academics) or use --solver highs")
    if code in LICENCE_ERRORS:
        return BackendError(f"Gurobi: {LICENCE_ERRORS[code]} (error {code}: {str(e).strip()}); "
                            "install a Gurobi licence or use the HiGHS solver")
    return BackendError(f"Gurobi failed (error {code}): {str(e).strip()}")


class Gurobi(Backend):
    name = "gurobi"
    title = "Gurobi"
    module = "gurobipy"
    missing = ("solver 'gurobi' needs gurobipy and a licence: pip install gurobipy "
               "(its bundled licence is limited to 2000 variables/constraints)")
    tolerances = (FEAS_TOL, max(FEAS_TOL, INT_TOL))
    #: ``GRB.Status`` code -> status word. ``INTERRUPTED`` becomes ``stopped`` when
    #: ``on_solution`` asked for it, else ``other``.
    STATUS_MAP = {
        2: "optimal",  # OPTIMAL
        3: "infeasible",  # INFEASIBLE
        6: "infeasible",  # CUTOFF: nothing below the cutoff
        15: "bound_reached",  # USER_OBJ_LIMIT (BestBdStop)
        11: "stopped",  # INTERRUPTED
        9: "time_limit",  # TIME_LIMIT
        5: "unbounded",  # UNBOUNDED
        4: "unbounded",  # INF_OR_UNBD
        12: "error",  # NUMERIC
    }

    def solve_mip(self, p: MipProblem, time_limit: float | None, threads: int, stop_bound: float | None,
                  on_solution: SolutionCallback | None, cutoff: float | None, verbose: bool,
                  options: dict | None) -> MipResult:
        gp = self._import()
        GRB = gp.GRB
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
            stop = StopReason()
            vars_ = x.tolist()

            def _cb(model, where):
                if where == GRB.Callback.MIPSOL and on_solution is not None and not stop.reason:
                    sol = np.asarray(model.cbGetSolution(vars_), dtype=np.float64)
                    obj = float(model.cbGet(GRB.Callback.MIPSOL_OBJ))
                    if on_solution(sol, obj):
                        stop.reason = "stopped"
                        model.terminate()

            m.optimize(_cb if on_solution is not None else None)
        except gp.GurobiError as e:
            raise _gurobi_error(e) from e
        st = m.Status
        native = NATIVE_NAMES.get(st, f"status {st}")
        res = MipResult("other", solver=self.name, native_status=native, time=time.monotonic() - t0,
                        message=f"Gurobi {native}")
        try:
            res.nodes = int(m.NodeCount) if p.n_int else 0
        except (gp.GurobiError, AttributeError):
            pass
        if m.SolCount > 0:
            res.x = np.asarray(x.X, dtype=np.float64)
            res.objective = float(m.ObjVal)
        try:
            dual = float(m.ObjBound) if p.n_int else float(m.ObjVal)
        except (gp.GurobiError, AttributeError):
            dual = -math.inf
        word = self.STATUS_MAP.get(st, "other")
        res.status = (stop.reason or "other") if word == "stopped" else word
        if not p.n_int and word != "optimal":  # an unfinished LP's objective bounds nothing
            dual = -math.inf
        res.bound = proven_bound(res.status, dual, res.objective, cutoff)
        res.tolerance = self.tolerances[0]
        m.dispose()
        env.dispose()
        return res
