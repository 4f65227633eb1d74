"""Deciding a property, and sound minima of linear objectives, on the network's MILP.

Deciding a property
-------------------
A disjunct ``C y <= d`` is unreachable iff ``t* = min_x max_i (C_i y(x) - d_i) > 0``.
For each disjunct, cheapest first:

1. DeepPoly: some row's lower bound on ``C_i y - d_i`` exceeds the floating-point
   margin (exactly the certifier's test);
2. the LP relaxation of ``min t s.t. t >= C_i y - d_i, x in box, y = f(x)``, its
   bound made rigorous from the duals (:mod:`certkit.verify.milp.lp`), exceeds the
   floating-point margin. Its optimal input is also tried as a counterexample;
3. the MILP itself, with two early stops: the solver's **dual bound** exceeds the
   tolerance ``tau`` below (ruled out), or an improving solution with ``t <= tau``
   has an input that onnxruntime confirms (:func:`certkit.verify.witness.validate`;
   only that makes ``falsified``). Nodes above the cutoff ``2 tau`` are pruned:
   nothing above it matters for the decision.

The property is ``verified`` when every disjunct is ruled out, ``falsified`` on
the first confirmed witness; otherwise ``timeout`` (deadline; each solve gets
the remaining time as its time limit) or ``unknown`` with the reason.

Soundness tolerance (why ``dual bound > tau`` is taken as a proof)
------------------------------------------------------------------
The MILP is exact in real arithmetic; the solver works in floating point with
tolerances. ``tau = tau_fp + tau_lp``:

1. *Primal tolerances cannot fake a proof.* The solver accepts points that
   violate rows by its feasibility tolerance and integrality by its integrality
   tolerance. That enlarges the feasible set and can only lower the minimum, so
   a dual bound of the relaxed problem bounds the exact one. It is also why a
   primal solution is never trusted -- it is a candidate for onnxruntime -- and
   why the proof is the **dual (MIP) bound**, never a primal objective value.
2. *A dual bound carries the LP's dual-feasibility error.* Every branch-and-bound
   node bound is an LP dual objective built from multipliers whose reduced costs
   may have the wrong sign by the dual tolerance ``eps_d``. With every variable
   boxed, the rigorous bound (Neumaier & Shcherbina, Math. Prog. 99, 2004)
   differs from the computed one by at most
   ``eps_d * (sum_j (u_j - l_j) + sum_{inequality rows i} |A_i| (u - l))``: each
   wrong-signed reduced cost or row multiplier costs at most ``eps_d`` times the
   range of its column or row activity. HiGHS solves the LPs of its MIP with
   ``eps_d = mip_feasibility_tolerance / 10`` and ``eps_p = mip_feasibility_tolerance``
   (1e-6, see :mod:`certkit.solvers`); Gurobi with ``OptimalityTol``. Bound
   propagation, presolve and cuts work at the primal tolerance ``eps_p``; a point
   cut off by at most ``eps_p`` in a big-M row moves the output by about ``eps_p``
   times the big-M magnitude ``M = max_j |bound_j|``. Hence
   ``tau_lp = SOLVER_SAFETY * (eps_d * (sum of ranges) + eps_p * M) + SOLVER_ABS``,
   with ``SOLVER_SAFETY = 4`` for scaling and round-off. Both terms grow with the
   big-M constants (the bound widths): tight intermediate bounds matter for
   soundness as well as for speed. On ACAS Xu ``tau_lp`` is 1e-4..1e-3 for the small
   boxes of properties 3/4 and ~0.1-2 for the full boxes of properties 1/2, where
   hidden pre-activation bounds reach the thousands.
3. *The model runs in float32, the MILP in real arithmetic*: the encoding is of
   the computed network (:mod:`certkit.bounds.fperror`): every affine node's
   equality row is a ranged row ``c - err <= y - M x <= c + err`` (a bounded slack
   per neuron), every intermediate bound carries the error terms, and the input
   box is rounded outward to the model's precision. ``tau_fp`` is then only the
   float64 error of evaluating the rows on the output
   (:func:`certkit.bounds.fperror.row_margin`).

This is a tolerance argument, not a certificate checkable in exact arithmetic:
it covers the errors the solvers are designed to make, not bugs. (Tightening
HiGHS 1.16's MIP tolerance below 1e-7 produced outright wrong answers -- a
feasible MILP reported infeasible, an optimum reported too high -- which is why
the default 1e-6 is used and accounted for instead.) Stages 1 and 2 above are
rigorous up to float64 rounding.

A disjunct is ruled out only when ``dual bound > tau``. A bound in
``(-inf, tau]`` without a confirmed witness gives ``unknown`` (or ``timeout``)
with the bound in the message; a MILP solution with ``t <= tau`` whose input
onnxruntime does not confirm (float32 rounding, solver tolerance) gives
``unknown`` with that reason.

:func:`milp_bound` / :func:`milp_minimize` return ``dual bound - tau_lp`` for a
linear objective ``c.y``: a lower bound that is sound in the same sense, without
the float32 margin (callers comparing with the float32 model add it themselves).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...bounds.fperror import precision_of, round_outward, row_margin
from ...errors import BackendError
from ...graph.graph import Graph
from ...graph.lower import lower_paper_ops
from ...solvers import MipProblem, MipResult, solve_mip, tolerances
from ...spec.sets import InputSet
from ...spec.spec import Property
from ..witness import Witness, validate
from .builder import BOUND_WIDEN
from .encoding import check_encodable, encode, intermediate_bounds, row_range, with_objective
from .lp import LpRelaxation

#: Safety factor on the LP dual-bound error estimate (scaling, presolve, cuts).
SOLVER_SAFETY = 4.0
#: Absolute floor of the solver tolerance.
SOLVER_ABS = 1e-7


@dataclass
class MilpOutcome:
    """Result of :func:`milp_decide`.

    ``status``: verified | falsified | unknown | timeout. ``bounds[k]``: the best
    proven lower bound on ``max_i (C_i y - d_i)`` for disjunct ``k`` (DeepPoly's or
    the LP's or the MILP dual bound; ``-inf`` if none), ``tolerances[k]`` the ``tau`` it
    had to beat, ``methods[k]`` how the disjunct was settled (deeppoly | lp | milp | witness
    | open).
    """

    status: str
    witness: Witness | None = None
    bounds: list[float] = field(default_factory=list)
    tolerances: list[float] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    solver: str = ""
    nodes: int = 0
    time: float = 0.0
    message: str = ""
    n_binaries: int = 0
    native_status: list[str] = field(default_factory=list)


def _lp_error(p: MipProblem, solver: str) -> float:
    """``tau_lp``: the error a MIP dual bound over ``p`` may carry (module doc, point 2)."""
    dual_tol, primal_tol = tolerances(solver)
    fin = np.isfinite(p.ub) & np.isfinite(p.lb)
    w = np.where(fin, p.ub - p.lb, 0.0)
    ineq = ~(np.isfinite(p.row_lo) & np.isfinite(p.row_hi) & (p.row_lo == p.row_hi))
    act = abs(p.A[np.flatnonzero(ineq)]) @ w if ineq.any() else np.zeros(0)
    cont = fin & ~p.integer
    big_m = float(np.maximum(np.abs(p.lb[cont]), np.abs(p.ub[cont])).max(initial=0.0))
    return SOLVER_SAFETY * (dual_tol * float(w.sum() + act.sum()) + primal_tol * big_m) + SOLVER_ABS


@dataclass
class MilpMinimum:
    """Result of :func:`milp_minimize`: ``bound`` is a sound lower bound of ``min c.y`` (the
    dual bound minus the solver tolerance, never below the DeepPoly bound); ``value`` the best
    primal objective the solver found and ``x`` its input (a candidate minimiser, re-evaluate
    it: its objective holds only up to the solver's tolerances); ``status`` the solver's."""

    bound: float
    value: float = math.inf
    x: np.ndarray | None = None
    status: str = ""
    tolerance: float = 0.0
    nodes: int = 0
    time: float = 0.0
    n_binaries: int = 0
    solver: str = ""


def milp_minimize(graph: Graph, inputs_box, c_row, solver: str = "highs", time_limit: float | None = None,
                  threads: int = 1, tighten: str = "lp") -> MilpMinimum:
    """Minimise ``c . y`` over the input box exactly (up to the solver tolerance) by MILP.

    ``inputs_box`` is ``(lower, upper)`` or a box :class:`InputSet` (batch 1). On a time limit
    ``bound`` is still valid, just weaker.
    """
    t0 = time.monotonic()
    if isinstance(inputs_box, InputSet):
        lower, upper = inputs_box.lower.numpy()[0], inputs_box.upper.numpy()[0]
    else:
        lower, upper = (np.asarray(a, dtype=np.float64).reshape(-1) for a in inputs_box)
    lower, upper = round_outward(lower, upper, precision_of(graph))
    c_row = np.asarray(c_row, dtype=np.float64).reshape(1, -1)
    graph = lower_paper_ops(graph)
    check_encodable(graph)
    sb, lowc = intermediate_bounds(graph, lower, upper, c_row)
    deadline = None if time_limit is None else t0 + time_limit
    enc = encode(graph, lower, upper, sb, tighten, deadline)
    yl, yu = enc.bounds[enc.output]
    lo_r, hi_r = row_range(c_row, np.zeros(1), yl, yu)
    t_lo = max(float(lo_r[0]), float(lowc[0])) if lowc is not None else float(lo_r[0])
    t_lo -= BOUND_WIDEN * (1 + abs(t_lo))
    p = with_objective(enc, c_row, np.zeros(1), t_lo, float(hi_r[0]) + BOUND_WIDEN * (1 + abs(hi_r[0])))
    tol = _lp_error(p, solver)
    res = solve_mip(p, solver, None if deadline is None else deadline - time.monotonic(), threads)
    if res.status == "error":
        raise BackendError(f"MILP solver failed: {res.message}")
    b = res.bound if res.bound > -math.inf else t_lo
    return MilpMinimum(max(float(b) - tol, t_lo), res.objective, None if res.x is None else res.x[enc.cols[0]],
                       res.status, tol, res.nodes, time.monotonic() - t0, enc.n_binaries, res.solver)


def milp_bound(graph: Graph, inputs_box, c_row, solver: str = "highs", time_limit: float | None = None,
               threads: int = 1, tighten: str = "lp") -> float:
    """A sound lower bound of ``c . y`` over the input box: the MIP dual bound at termination
    minus the solver tolerance (module doc); see :func:`milp_minimize`."""
    return milp_minimize(graph, inputs_box, c_row, solver, time_limit, threads, tighten).bound


@dataclass
class DisjunctMilp:
    """Result of :func:`solve_disjunct`. ``status``: ``lp`` or ``milp`` (ruled out: ``bound >
    tolerance``), ``witness`` (a confirmed counterexample), ``timeout`` or ``open`` (neither;
    ``reason`` says why)."""

    status: str
    bound: float = -math.inf
    tolerance: float = math.nan
    witness: Witness | None = None
    reason: str = ""
    nodes: int = 0
    solver: str = ""
    native_status: list[str] = field(default_factory=list)


def solve_disjunct(enc, C: np.ndarray, d: np.ndarray, known_low: float, confirm, deadline: float | None,
                   solver: str = "highs", threads: int = 1, verbose: bool = False) -> DisjunctMilp:
    """Rule out one disjunct ``C y <= d`` on an encoding (module doc, steps 2 and 3): the LP
    relaxation, its point tried as a counterexample, then the MILP with its early stops.
    ``known_low``: a sound lower bound of ``max_i (C_i y - d_i)`` already known (DeepPoly's),
    which bounds the objective below; ``confirm(x)``: onnxruntime's check of an input (a
    :class:`Witness` or None), or None where no counterexample can be confirmed; ``deadline``: absolute ``time.monotonic()`` time, or None."""
    yl, yu = enc.bounds[enc.output]
    lo_r, hi_r = row_range(C, d, yl, yu)
    t_lo = max(float(lo_r.max()), known_low)
    t_lo -= BOUND_WIDEN * (1 + abs(t_lo))
    t_hi = float(hi_r.max())
    t_hi += BOUND_WIDEN * (1 + abs(t_hi))
    p = with_objective(enc, C, d, t_lo, t_hi)
    # the float64 error of evaluating the rows on the output (the model's rounding is in the
    # encoding: every affine row is ranged by its error bound)
    tau_fp = float(row_margin(torch.as_tensor(C), torch.as_tensor(d), torch.as_tensor(yl)[None],
                              torch.as_tensor(yu)[None]).max())
    # the LP relaxation first: its bound is made rigorous from the duals, so only the
    # floating-point margin applies
    lpr = LpRelaxation(p)
    lp_low = lpr.minimum({p.n_cols - 1: 1.0})
    if lp_low > tau_fp:
        return DisjunctMilp("lp", lp_low, tau_fp)
    x_lp = lpr.x()
    xin = enc.cols[0]
    if x_lp is not None and confirm is not None:  # the LP's point is a free candidate
        w = confirm(x_lp[xin])
        if w is not None:
            return DisjunctMilp("witness", lp_low, tau_fp, w,
                                "the LP relaxation's point is a counterexample (confirmed by onnxruntime)")
    tau = tau_fp + _lp_error(p, solver)
    found: dict = {"w": None, "tried": 0}

    def on_solution(x: np.ndarray, obj: float) -> bool:
        if confirm is None or obj > tau:
            return False
        found["tried"] += 1
        found["w"] = confirm(x[xin])
        return found["w"] is not None

    rem = None if deadline is None else deadline - time.monotonic()
    res: MipResult = solve_mip(p, solver, rem, threads, stop_bound=tau, on_solution=on_solution,
                               cutoff=2 * tau + 10 * tolerances(solver)[1], verbose=verbose)
    if found["w"] is None and res.x is not None and res.objective <= tau and confirm is not None \
            and res.status != "stopped":
        on_solution(res.x, res.objective)
    bound = max(res.bound, lp_low, known_low)
    out = DisjunctMilp("open", bound, tau, nodes=res.nodes, solver=res.solver, native_status=[res.native_status])
    if found["w"] is not None:
        out.status, out.witness = "witness", found["w"]
        out.reason = f"MILP solution confirmed by onnxruntime ({res.solver}, {res.nodes} nodes)"
    elif res.bound > tau:
        out.status = "milp"
    elif res.status == "time_limit" or (deadline is not None and time.monotonic() >= deadline):
        out.status = "timeout"
        out.reason = f"time limit with dual bound {res.bound:.6g} <= tolerance {tau:.3g}"
    elif res.status == "error":
        out.reason = f"solver error ({res.message})"
    elif found["tried"]:
        out.reason = (f"MILP optimum {res.objective:.6g} <= {tau:.3g} but its input is not a "
                      "counterexample under onnxruntime (float32 rounding / solver tolerance)")
    elif res.objective <= tau and confirm is None:
        out.reason = f"MILP optimum {res.objective:.6g} <= {tau:.3g}; no runner to confirm it"
    else:
        out.reason = f"MILP bound {res.bound:.6g} within tolerance {tau:.3g} of 0 ({res.message})"
    return out


def milp_decide(graph: Graph, prop: Property, prop_index: int, runner, deadline: float | None,
                solver: str = "highs", threads: int = 1, tighten: str = "lp",
                verbose: bool = False) -> MilpOutcome:
    """Decide one property exactly by MILP (see the module docstring).

    ``runner``: an :class:`~certkit.verify.witness.OnnxRunner` (or any callable with its
    signature) used to confirm counterexamples; ``None`` means no ``falsified`` verdict is
    possible. ``deadline``: absolute ``time.monotonic()`` time, or None.
    """
    t0 = time.monotonic()
    graph = lower_paper_ops(graph)
    check_encodable(graph)
    n_dj = len(prop.disjuncts)
    out = MilpOutcome("unknown", bounds=[-math.inf] * n_dj, tolerances=[math.nan] * n_dj,
                      methods=["open"] * n_dj, solver=solver)
    lower, upper = round_outward(prop.lower, prop.upper, precision_of(graph))

    def finish(status: str, msg: str) -> MilpOutcome:
        out.status, out.message, out.time = status, msg, time.monotonic() - t0
        return out

    # disjunct without atoms: every output is unsafe, so any input is a counterexample
    for k, dj in enumerate(prop.disjuncts):
        if dj.C.shape[0] == 0 and runner is not None:
            w = validate(runner, prop, prop_index, ((lower + upper) / 2)[None])
            if w is not None:
                out.witness, out.methods[k] = w, "witness"
                return finish("falsified", f"disjunct {k} has no atoms: every input is a counterexample")
    C_all, d_all, owner = prop.stacked()
    sb, lowC = intermediate_bounds(graph, lower, upper, C_all if len(C_all) else None)
    y_lo, y_hi = (torch.as_tensor(t) for t in sb[graph.output])
    reasons: list[str] = []
    # 1. DeepPoly alone, as the certifier does
    for k, dj in enumerate(prop.disjuncts):
        if dj.C.shape[0] == 0:
            continue
        dp_low = lowC[owner == k] - np.asarray(dj.d, np.float64)
        margin_dp = row_margin(torch.as_tensor(dj.C, dtype=torch.float64), torch.as_tensor(dj.d, dtype=torch.float64),
                               y_lo, y_hi).numpy()[0]
        if bool((dp_low > margin_dp).any()):
            out.bounds[k] = float(dp_low.max())
            out.tolerances[k] = float(margin_dp[np.argmax(dp_low - margin_dp)])
            out.methods[k] = "deeppoly"
    if all(m == "deeppoly" for m in out.methods):
        return finish("verified", "every disjunct ruled out by DeepPoly")
    # 2. the network's MILP, shared by the disjuncts
    enc = encode(graph, lower, upper, sb, tighten, deadline)
    out.n_binaries = enc.n_binaries
    timed_out = False

    def confirm(x: np.ndarray) -> Witness | None:
        return validate(runner, prop, prop_index, x[None])

    for k, dj in enumerate(prop.disjuncts):
        if out.methods[k] == "deeppoly":
            continue
        C, d = np.asarray(dj.C, np.float64), np.asarray(dj.d, np.float64)
        if C.shape[0] == 0:
            reasons.append(f"disjunct {k}: no atoms and no runner to confirm a witness")
            continue
        dp_low = lowC[owner == k] - d
        if deadline is not None and deadline - time.monotonic() <= 0:
            timed_out = True
            break
        r = solve_disjunct(enc, C, d, float(dp_low.max()), None if runner is None else confirm, deadline,
                           solver, threads, verbose)
        out.solver = r.solver or out.solver
        out.nodes += r.nodes
        out.native_status += r.native_status
        out.bounds[k] = max(out.bounds[k], r.bound)
        out.tolerances[k] = r.tolerance
        if r.status == "witness":
            out.witness, out.methods[k] = r.witness, "witness"
            return finish("falsified", f"disjunct {k}: {r.reason}")
        if r.status in ("lp", "milp"):
            out.methods[k] = r.status
            continue
        reasons.append(f"disjunct {k}: {r.reason}")
        if r.status == "timeout":
            timed_out = True
            break
    if all(m in ("deeppoly", "lp", "milp") for m in out.methods):
        strongest = max(out.methods, key=["deeppoly", "lp", "milp"].index)
        how = {"deeppoly": "DeepPoly", "lp": "the LP relaxation"}.get(strongest, f"MILP ({out.solver})")
        return finish("verified", f"every disjunct ruled out by {how}; {enc.n_binaries} binaries, "
                                  f"{out.nodes} nodes")
    if timed_out:
        return finish("timeout", "; ".join(reasons) or "time budget used up")
    return finish("unknown", "; ".join(reasons))
