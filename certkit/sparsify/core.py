"""``sparsify``: the end-to-end VNN procedure (paper 002, section 2.6) and its checks.

Layers are processed first to last; each LP is built on the inputs produced by the layers
already sparsified, with the current net's pre-activations as reference (the current
weights are then always feasible). Without downstream rows, or with ``eps = 0`` (the
layer's outputs are then unchanged, so later layers are unaffected), a layer is one small
LP per neuron / conv channel, solved in parallel; otherwise one coupled LP (eq. 11).

A unit whose LP fails keeps its current weights, and so does a unit whose solution
violates its rows by more than ``ROW_TOL`` (the failure and the native solver status are
reported): the result always satisfies the constraints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..graph.graph import Graph
from ..graph.ops import Relu
from ..solvers import FEAS_TOL
from .downstream import tail_rows
from .layers import (LayerRef, find_layers, layer_system, n_params, nonzeros, replace_node, select_layers,
                     values, with_params)
from .lp import LpOptions, coupled_lp, row_bounds, row_violation, violation
from .solve import ROW_TOL, SolverOptions, check_solver, clean, solve_lp, solve_units


@dataclass
class LayerReport:
    """Per layer: sparsity, LP sizes, where the time went, accuracy after it."""

    number: int
    name: str
    kind: str
    method: str  # per-unit LP | coupled LP | mbp
    params: int
    nnz_before: int
    nnz_after: int
    n_lps: int = 0
    rows: int = 0
    cols: int = 0
    lp_nnz: int = 0
    t_build: float = 0.0
    t_solve: float = 0.0  # sum of the LP solve times (over processes)
    t_wall: float = 0.0
    objective: float = 0.0  # L1 norm of the new weights and biases
    solver: str = ""
    failures: list[str] = field(default_factory=list)  # LPs that failed: their units kept their weights
    notes: list[str] = field(default_factory=list)  # solver fall-backs, decompositions
    acc_val: float = float("nan")
    acc_test: float = float("nan")


@dataclass
class CheckReport:
    """The validation check on the correctly classified samples (against the original net)."""

    samples: int
    predictions_kept: int
    state_violations: int  # ReLU states changed beyond ROW_TOL (every ReLU of the net)
    states: int
    min_margin: float  # smallest logit margin of the predicted class
    margin_required: float | None  # with --downstream: min(M, original margin) was required
    margin_violations: int

    @property
    def ok(self) -> bool:
        return self.predictions_kept == self.samples and self.state_violations == 0 and self.margin_violations == 0


@dataclass
class SparsifyResult:
    graph: Graph
    layers: list[LayerReport]
    check: CheckReport
    acc_val: tuple[float, float]  # before, after (all validation samples)
    acc_test: tuple[float, float] | None
    time: float
    same_predictions: tuple[int, int] = (0, 0)  # validation samples predicted as by the original, of all


def accuracy(g: Graph, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(g(x).argmax(1) == y)) if len(y) else float("nan")


def _per_unit(system, z, act, opts: LpOptions, sopts: SolverOptions, rep: LayerReport) -> np.ndarray:
    lo, hi = row_bounds(z, opts, act)
    params = system.params.copy()
    t0 = time.monotonic()
    results = solve_units(system, lo, hi, sopts)
    rep.t_wall += time.monotonic() - t0
    for u, res, v in results:
        rep.n_lps += 1
        rep.rows += res.rows
        rep.cols += res.cols
        rep.lp_nnz += res.nnz
        rep.t_solve += res.time
        rep.solver = res.solver if not rep.solver or rep.solver == res.solver else "mixed"
        if v is None:
            rep.failures.append(f"unit {u}: {res.status} ({res.native_status}: {res.message}); weights kept")
            continue
        idx = system.out_index(u)
        A = system.matrix(u)
        if row_violation(A, v, lo[:, idx].reshape(-1), hi[:, idx].reshape(-1)).max(initial=0.0) > ROW_TOL:
            rep.failures.append(f"unit {u}: solution violates its rows beyond {ROW_TOL:g}; weights kept")
            continue
        params[u] = v
        if "fell back" in res.message and not any("fell back" in f for f in rep.notes):
            rep.notes.append(res.message)
    return params


def _coupled(g, layer, vals, labels, states, system, z, opts, sopts, rep) -> np.ndarray:
    t0 = time.monotonic()
    act = states[layer.relu]
    tail = tail_rows(g, layer.relu, vals, labels, opts.margin, states)
    lp = coupled_lp(system, z, opts, tail, act)
    rep.t_build += time.monotonic() - t0
    res = solve_lp(lp.problem, sopts)
    rep.n_lps, rep.rows, rep.cols, rep.lp_nnz = 1, res.rows, res.cols, res.nnz
    rep.t_solve += res.time
    rep.t_wall += res.time
    rep.solver = res.solver
    if res.x is None:
        rep.failures.append(f"coupled LP: {res.status} ({res.native_status}: {res.message}); weights kept")
        return system.params.copy()
    if "fell back" in res.message:
        rep.notes.append(res.message)
    params = lp.params(res.x)
    # clean per unit against the own rows, then check every row (own and downstream)
    lo, hi = row_bounds(z, opts, act)
    for u in range(system.n_units):
        idx = system.out_index(u)
        params[u], _ = clean(params[u], system.matrix(u), lo[:, idx].reshape(-1), hi[:, idx].reshape(-1))
    if not _coupled_rows_hold(system, params, z, act, opts, tail):
        cleaned_off = lp.params(res.x)
        if _coupled_rows_hold(system, cleaned_off, z, act, opts, tail):
            return cleaned_off
        rep.failures.append(f"coupled LP solution violates its rows beyond {ROW_TOL:g}; weights kept")
        return system.params.copy()
    return params


def _coupled_rows_hold(system, params, z, act, opts, tail) -> bool:
    zn = system.pre_activations(params)
    lo, hi = row_bounds(z, opts, act)
    if violation(zn, lo, hi).max(initial=0.0) > ROW_TOL:
        return False
    x = np.where(act, zn, 0.0)
    val = np.einsum("stn,sn->st", tail.G, x) + tail.g
    return violation(val, tail.lo, tail.hi).max(initial=0.0) <= ROW_TOL


def check(g0: Graph, g1: Graph, x: np.ndarray, y: np.ndarray, margin: float | None) -> CheckReport:
    """Same predictions, same ReLU states (up to ``ROW_TOL``), and with ``margin`` a logit
    margin >= min(margin, original margin) on the samples ``x`` (the correctly classified
    ones)."""
    v0, v1 = values(g0, x), values(g1, x)
    p1 = v1[g1.output].argmax(1)
    viol, states = 0, 0
    for i in sorted(g0.live):
        if isinstance(g0.nodes[i].op, Relu):
            z0, z1 = v0[g0.nodes[i].inputs[0]], v1[g1.nodes[i].inputs[0]]
            tol = ROW_TOL * (1 + np.abs(z0))
            viol += int(np.count_nonzero(np.where(z0 > 0, z1 < -tol, z1 > tol)))
            states += z0.size
    out0, out1 = v0[g0.output], v1[g1.output]
    ar = np.arange(len(y))
    def margins(o):
        other = np.where(np.arange(o.shape[1])[None, :] == y[:, None], -np.inf, o)
        return o[ar, y] - other.max(1)
    m1 = margins(out1) if len(y) else np.zeros(0)
    mv = 0
    if margin is not None and len(y):
        need = np.minimum(margin, margins(out0))
        mv = int(np.count_nonzero(m1 < need - ROW_TOL * (1 + np.abs(need))))
    return CheckReport(len(y), int(np.count_nonzero(p1 == y)), viol, states,
                       float(m1.min()) if len(m1) else float("nan"), margin, mv)


def sparsify(g: Graph, x_val: np.ndarray, y_val: np.ndarray, layers: str = "all",
             lp: LpOptions = LpOptions(), solver: SolverOptions = SolverOptions(),
             test: tuple[np.ndarray, np.ndarray] | None = None, log=None,
             all_samples: bool = False) -> SparsifyResult:
    """Re-solve the chosen layers of the ReLU net ``g`` by the VNN LP on ``(x_val, y_val)``.

    The constraints hold on the correctly classified samples (paper 002, eq. 6-7); with
    ``all_samples`` on every validation sample, the predicted class standing for the label.
    """
    if lp.mode not in ("additive", "relative"):
        raise UsageError(f"--eps-mode must be additive or relative (got '{lp.mode}')")
    if not lp.eps >= 0:
        raise UsageError(f"--eps must be >= 0 (got {lp.eps})")
    if lp.mode == "relative" and lp.eps >= 1:
        raise UsageError(f"relative --eps must be below 1 (got {lp.eps}): (1 - eps) z would flip signs")
    chosen = select_layers(find_layers(g), layers)
    check_solver(solver)
    t_all = time.monotonic()
    x_val = np.asarray(x_val, dtype=np.float64).reshape(len(x_val), -1)
    pred = g(x_val).argmax(1)
    ok = np.ones(len(pred), bool) if all_samples else pred == y_val
    xs, ys = x_val[ok], pred[ok]
    if not len(ys):
        raise UsageError("no validation sample is classified correctly: nothing to keep")
    v0 = values(g, xs)
    states = {i: v0[g.nodes[i].inputs[0]] > 0 for i in sorted(g.live) if isinstance(g.nodes[i].op, Relu)}
    cur = g
    reports = []
    for layer in chosen:
        rep, params = _solve_layer(cur, layer, xs, ys, states, lp, solver)
        cur = replace_node(cur, layer.node, with_params(cur.nodes[layer.node].op, params))
        rep.acc_val = accuracy(cur, x_val, y_val)
        if test is not None:
            rep.acc_test = accuracy(cur, *test)
        reports.append(rep)
        if log is not None:
            log(f"layer {rep.number}: {rep.nnz_before} -> {rep.nnz_after} non-zeros, "
                f"{rep.n_lps} LP(s), {rep.t_wall:.1f} s")
    chk = check(g, cur, xs, ys, lp.margin if lp.downstream else None)
    acc_t = (accuracy(g, *test), accuracy(cur, *test)) if test is not None else None
    same = (int(np.count_nonzero(cur(x_val).argmax(1) == g(x_val).argmax(1))), len(x_val))
    return SparsifyResult(cur, reports, chk, (accuracy(g, x_val, y_val), accuracy(cur, x_val, y_val)), acc_t,
                          time.monotonic() - t_all, same)


def _solve_layer(cur: Graph, layer: LayerRef, xs, ys, states, lp: LpOptions,
                 solver: SolverOptions) -> tuple[LayerReport, np.ndarray]:
    """One layer's LP(s) on the samples ``xs`` (predicted classes ``ys``): the report and the new
    parameters (one row per unit, see :func:`certkit.sparsify.layers.layer_system`)."""
    t0 = time.monotonic()
    op = cur.nodes[layer.node].op
    vals = values(cur, xs)
    system = layer_system(op, vals[cur.nodes[layer.node].inputs[0]])
    z = vals[layer.node]
    rep = LayerReport(layer.number, cur.nodes[layer.node].name, layer.kind,
                  "coupled LP" if lp.downstream and not lp.exact else "per-unit LP",
                  n_params(op), nonzeros(op), nonzeros(op))
    rep.t_build = time.monotonic() - t0
    # the current states: z > 0, except that a pre-activation within the solvers' feasibility
    # tolerance of 0 (where an earlier LP left a kept state) takes the original net's state
    states = {i: np.where(np.abs(vals[cur.nodes[i].inputs[0]]) <= FEAS_TOL, st, vals[cur.nodes[i].inputs[0]] > 0)
              for i, st in states.items()}
    if lp.downstream and lp.exact:
        rep.notes.append("eps = 0 keeps this layer's outputs, so the downstream rows (eq. 11) hold "
                            "by themselves: solved per unit")
    if rep.method == "coupled LP":
        params = _coupled(cur, layer, vals, ys, states, system, z, lp, solver, rep)
    else:
        params = _per_unit(system, z, states[layer.relu], lp, solver, rep)
    rep.objective = float(np.abs(params).sum())
    rep.nnz_after = int(np.count_nonzero(params))
    if op.bias is None:  # a layer without bias keeps none unless the LP used it
        rep.params = n_params(op) + system.n_units
    rep.t_wall += rep.t_build
    return rep, params
