"""Solving the VNN LPs: HiGHS or Gurobi behind :func:`certkit.solvers.solve_mip`,
with the fall-back policy, clean-up of tiny coefficients and a process pool for the
per-unit LPs (paper 002, section 2.5; DESIGN.md section 7).

Gurobi's pip wheel ships a size-limited licence (2000 variables and constraints): a larger
LP fails with error 10010, which :func:`certkit.solvers.solve_mip` turns into a
:class:`BackendError` saying so. ``fallback="highs"`` then solves that LP with HiGHS and
records why; ``fallback="stop"`` stops with the error.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError, UsageError
from ..solvers import MipProblem, solve_mip, solver_available

#: Entries below this (relative to the unit's largest) are solver noise: set to exact 0
#: when the rows still hold (see :func:`clean`).
ZERO_TOL = 1e-9
#: Row tolerance of the checks: violation relative to 1 + |bound| (HiGHS/Gurobi solve to 1e-7
#: absolute).
ROW_TOL = 1e-6


@dataclass(frozen=True)
class SolverOptions:
    name: str = "highs"  # highs | gurobi
    fallback: str = "stop"  # stop | highs: what to do when Gurobi is missing or too small
    threads: int = 1  # processes for the per-unit LPs
    time_limit: float | None = None  # per LP
    method: str = "auto"  # simplex | ipm | auto (simplex, ipm for LPs above IPM_COLS columns)


#: From this many columns on, ``method="auto"`` uses the interior-point method (with crossover,
#: so the solution is still a vertex): on the coupled LP of the 2x50 net's first layer (64000
#: columns) HiGHS's IPM took 160 s where its dual simplex had not finished after 6 minutes; on
#: the second layer (14900 columns) the simplex took 2 s and the IPM 10 s.
IPM_COLS = 40000


def _native_options(solver: str, method: str, n_cols: int) -> dict:
    m = method if method != "auto" else ("ipm" if n_cols >= IPM_COLS else "simplex")
    if solver == "highs":
        return {"solver": m}
    return {"Method": 2 if m == "ipm" else 1}


@dataclass
class LpOutcome:
    """One LP's solution (``x`` None on failure) with the native status and message."""

    status: str
    x: np.ndarray | None
    objective: float
    time: float
    solver: str
    native_status: str
    message: str
    rows: int
    cols: int
    nnz: int


def check_solver(opts: SolverOptions) -> None:
    """Fail early (before any work) for an unknown or missing solver."""
    if opts.name not in ("highs", "gurobi"):
        raise BackendError(f"unknown LP solver '{opts.name}' (choose highs or gurobi)")
    if opts.fallback not in ("stop", "highs"):
        raise UsageError(f"unknown fall-back '{opts.fallback}' (choose stop or highs)")
    if opts.method not in ("auto", "simplex", "ipm"):
        raise UsageError(f"unknown LP method '{opts.method}' (choose auto, simplex or ipm)")
    if opts.threads < 1:
        raise UsageError(f"--threads must be at least 1 (got {opts.threads})")
    if not solver_available(opts.name):
        if opts.name == "gurobi" and opts.fallback == "highs" and solver_available("highs"):
            return
        hint = "pip install highspy" if opts.name == "highs" else \
            "pip install gurobipy (its bundled licence is limited to 2000 variables/constraints)"
        raise BackendError(f"LP solver '{opts.name}' is not installed: {hint}")


def solve_lp(problem: MipProblem, opts: SolverOptions) -> LpOutcome:
    """Solve one LP; on a Gurobi licence/installation problem fall back to HiGHS or raise."""
    name, note = opts.name, ""
    if name == "gurobi" and not solver_available("gurobi"):
        name, note = "highs", "gurobipy not installed; fell back to HiGHS"
    t0 = time.monotonic()
    try:
        res = solve_mip(problem, name, time_limit=opts.time_limit, threads=1,
                        options=_native_options(name, opts.method, problem.n_cols))
    except BackendError as e:
        if name != "gurobi":
            raise
        if opts.fallback != "highs":
            raise BackendError(f"{e} (or --fallback highs to solve such LPs with HiGHS)") from e
        note = f"{e}; fell back to HiGHS"
        res = solve_mip(problem, "highs", time_limit=opts.time_limit, threads=1,
                        options=_native_options("highs", opts.method, problem.n_cols))
    ok = res.status == "optimal" and res.x is not None
    msg = f"{res.message}; {note}" if note else res.message
    return LpOutcome(res.status, res.x if ok else None, res.objective if ok else float("nan"),
                     time.monotonic() - t0, res.solver, res.native_status, msg,
                     problem.n_rows, problem.n_cols, int(problem.A.nnz))


def clean(v: np.ndarray, A: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, bool]:
    """Set entries below ``ZERO_TOL * max|v|`` to exact 0 when the rows still hold to
    ``ROW_TOL``; return the vector kept and whether it was cleaned."""
    from .lp import row_violation

    scale = float(np.abs(v).max()) if v.size else 0.0
    tiny = (np.abs(v) <= ZERO_TOL * max(scale, 1.0)) & (v != 0)
    if not tiny.any():
        return v, False
    w = np.where(tiny, 0.0, v)
    if row_violation(A, w, lo, hi).max(initial=0.0) <= ROW_TOL:
        return w, True
    return v, False


# --------------------------------------------------------------------------- per-unit pool

_JOB: dict = {}


def _solve_units(units: list[int]) -> list[tuple[int, LpOutcome, np.ndarray | None]]:
    from .lp import unit_lp

    system, lo, hi, opts = _JOB["system"], _JOB["lo"], _JOB["hi"], _JOB["opts"]
    out = []
    for u in units:
        A = system.matrix(u)
        idx = system.out_index(u)
        lo_u, hi_u = lo[:, idx].reshape(-1), hi[:, idx].reshape(-1)
        lp = unit_lp(A, lo_u, hi_u, _JOB["cols"][int(system.unit_group[u])])
        res = solve_lp(lp.problem, opts)
        v = None
        if res.x is not None:
            v, _ = clean(lp.params(res.x), A, lo_u, hi_u)
        out.append((u, res, v))
    return out


def solve_units(system, lo: np.ndarray, hi: np.ndarray, opts: SolverOptions) -> list[tuple[int, LpOutcome, np.ndarray | None]]:
    """Solve every unit's LP (``lo``/``hi``: (S, n_out) row bounds), in ``opts.threads``
    processes (fork: the design matrices are shared, not pickled)."""
    from .lp import live_columns

    _JOB.update(system=system, lo=lo, hi=hi, opts=opts,
                cols=[live_columns(A) for A in system.group_matrix])
    units = list(range(system.n_units))
    try:
        if opts.threads <= 1 or len(units) < 2 or not hasattr(os, "fork"):
            return _solve_units(units)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n = min(opts.threads, len(units))
        chunks = [units[k::n * 4] for k in range(n * 4) if units[k::n * 4]]
        with ProcessPoolExecutor(n, mp_context=mp.get_context("fork")) as pool:
            parts = list(pool.map(_solve_units, chunks))
        return sorted((r for p in parts for r in p), key=lambda r: r[0])
    finally:
        _JOB.clear()
