"""Complete verification by mixed-integer linear programming (DESIGN.md section 3).

Encoding
--------
Every live IR node value gets one continuous variable per entry, boxed by
intermediate bounds, widened outward by ``BOUND_WIDEN * (1 + |b|)`` against
rounding. The bounds come from DeepPoly back-substitution (intersected with
interval bounds, :class:`certkit.bounds.deeppoly.BoundState`) and interval
propagation; with ``tighten="lp"`` (the default) the inputs of every activation
are then tightened, layer by layer, by the LP relaxation of the network encoded
so far (two LPs per unstable entry). Each such LP bound is made rigorous from
its row duals (any multipliers ``y`` give the valid bound
``min_{Ax in rows} y.Ax + min_{x in box} (c - A^T y).x``), so solver tolerances
cannot make an intermediate bound too tight.

* **Linear ops** are rows ``c - err <= y - sum_k M_k x_k <= c + err`` (``err``: the node's
  floating-point error bound; 0 for copies). ``M`` is the weight
  for a Dense, ``diag(scale)`` for a Scale, a 0/1 matrix for a Select; for every
  other linear op (Conv, Sum, Concat) it is read off ``op.backward`` applied to
  identity rows, in chunks, into a ``scipy.sparse`` matrix.
* **Two-piece activations** (ReLU, LeakyReLU with any slope, Abs, and each side of
  a Clip) ``f(x) = s_lo x + c_lo`` for ``x <= theta``, ``s_hi x + c_hi`` for
  ``x >= theta``: a stable entry (``u <= theta`` or ``l >= theta``, or equal
  slopes) is one linear row. An unstable entry gets a binary ``z`` and the
  disaggregated (convex-hull, i.e. the tightest single-neuron) big-M form: with
  ``x - theta = p + q`` and ``y = f(theta) + s_hi p + s_lo q``,
  ``0 <= p <= (u - theta) z`` and ``(l - theta)(1 - z) <= q <= 0``, where ``p`` and
  ``q`` are eliminated (they are affine in x and y). For the ReLU this is exactly
  ``y >= x, y >= 0, y <= x - l(1 - z), y <= u z``.
* **Clip** is ``min(max(x, lo), hi)``: two two-piece layers (an intermediate
  variable; one binary per unstable side, none for an infinite side).
* **MaxGroup** ``y = max_j x_j``: candidates whose upper bound is not above the
  largest lower bound are dropped; with one left, ``y = x_j``; otherwise binaries
  ``sum_j z_j = 1``, ``y >= x_j``, ``y <= x_j + M_j (1 - z_j)`` with
  ``M_j = max_{k != j} u_k - l_j``.
* Sigmoid, Tanh, Softplus (any non-piecewise-linear node) are refused with a
  :class:`~certkit.errors.BackendError` naming the nodes.

Deciding a property
-------------------
A disjunct ``C y <= d`` is unreachable iff ``t* = min_x max_i (C_i y(x) - d_i) > 0``.
For each disjunct, cheapest first:

1. DeepPoly: some row's lower bound on ``C_i y - d_i`` exceeds the floating-point
   margin (exactly the certifier's test);
2. the LP relaxation of ``min t s.t. t >= C_i y - d_i, x in box, y = f(x)``, its
   bound made rigorous from the duals as above, exceeds the floating-point margin.
   Its optimal input is also tried as a counterexample;
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
import scipy.sparse as sp
import torch

from ..errors import BackendError
from ..graph import ops
from ..graph.graph import Graph
from ..graph.lower import lower_paper_ops
from ..spec.sets import InputSet
from ..spec.spec import Property
from ..bounds.fperror import compute_steps, interval_with_error, node_error, precision_of, round_outward, row_margin
from ..solvers import MipProblem, MipResult, lp_session, solve_mip, tolerances
from .witness import Witness, validate

#: Relative outward widening of every intermediate bound (float64 rounding in the bounds).
BOUND_WIDEN = 1e-9
#: Safety factor on the LP dual-bound error estimate (scaling, presolve, cuts).
SOLVER_SAFETY = 4.0
#: Absolute floor of the solver tolerance.
SOLVER_ABS = 1e-7
#: Identity rows pushed through ``op.backward`` at a time when reading off a linear map.
_CHUNK = 512


# --------------------------------------------------------------------------- results


@dataclass
class MilpOutcome:
    """Result of :func:`milp_decide`.

    ``status``: verified | falsified | unknown | timeout. ``bounds[k]``: the best
    proven lower bound on ``max_i (C_i y - d_i)`` for disjunct ``k`` (DeepPoly's or
    the MILP dual bound; ``-inf`` if none), ``tolerances[k]`` the ``tau`` it had to
    beat, ``methods[k]`` how the disjunct was settled (deeppoly | milp | witness |
    open | skipped).
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


# --------------------------------------------------------------------------- refusal


def non_piecewise_linear_nodes(graph: Graph) -> list[str]:
    """Names (with op kinds) of the live nodes the MILP cannot encode exactly."""
    bad = []
    for i in sorted(graph.live):
        op = graph.nodes[i].op
        if isinstance(op, (ops.Input, ops.LinearOp, ops.Relu, ops.LeakyRelu, ops.Abs, ops.Clip, ops.MaxGroup)):
            continue
        bad.append(f"'{graph.nodes[i].name}' ({op.kind})")
    return bad


def check_encodable(graph: Graph) -> None:
    """Raise :class:`BackendError` naming every node that is not piecewise linear."""
    bad = non_piecewise_linear_nodes(graph)
    if bad:
        raise BackendError("the MILP backend needs a piecewise-linear network; not piecewise linear: "
                           + ", ".join(bad) + " (use a bound backend such as deeppoly)")


# --------------------------------------------------------------------------- linear maps


def linear_matrices(op: ops.LinearOp, in_sizes: list[int], n_out: int) -> list[sp.csr_matrix]:
    """The exact matrices ``M_k`` with ``y = sum_k M_k x_k + c`` (c = ``op.bias_vector()``)."""
    if isinstance(op, ops.Dense):
        w = sp.csr_matrix(np.asarray(op.weight, dtype=np.float64))
        return [w if op.rows == 1 else sp.kron(sp.identity(op.rows, format="csr"), w, format="csr")]
    if isinstance(op, ops.Scale):
        return [sp.diags(np.broadcast_to(np.asarray(op.scale, dtype=np.float64), (n_out,)).copy(), format="csr")]
    if isinstance(op, ops.Select):
        valid = np.asarray(op.index) >= 0
        rows = np.flatnonzero(valid)
        return [sp.csr_matrix((np.ones(len(rows)), (rows, np.asarray(op.index)[valid])), shape=(n_out, op.n_in))]
    # generic: rows of M are backward(e_i)
    parts: list[list[sp.csr_matrix]] = [[] for _ in in_sizes]
    for s in range(0, n_out, _CHUNK):
        k = min(_CHUNK, n_out - s)
        eye = torch.zeros(1, k, n_out, dtype=torch.float64)
        eye[0, torch.arange(k), torch.arange(s, s + k)] = 1.0
        with torch.no_grad():
            outs = op.backward(eye)
        for j, o in enumerate(outs):
            parts[j].append(sp.csr_matrix(o[0].numpy()))
    return [sp.vstack(p, format="csr") for p in parts]


# --------------------------------------------------------------------------- model builder


class _Model:
    """Columns and rows accumulated in COO form."""

    def __init__(self) -> None:
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.int: list[np.ndarray] = []
        self.n = 0
        self.rr: list[np.ndarray] = []
        self.cc: list[np.ndarray] = []
        self.vv: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.m = 0
        self.overrides: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def cols(self, lb, ub, integer: bool = False) -> np.ndarray:
        lb = np.atleast_1d(np.asarray(lb, dtype=np.float64))
        ub = np.atleast_1d(np.asarray(ub, dtype=np.float64))
        k = len(lb)
        self.lb.append(lb)
        self.ub.append(ub)
        self.int.append(np.full(k, integer))
        idx = np.arange(self.n, self.n + k)
        self.n += k
        return idx

    def rows(self, r: np.ndarray, c: np.ndarray, v: np.ndarray, lo, hi, k: int) -> None:
        """``k`` new rows; ``r`` is the local row index (0..k-1) of each (c, v) entry."""
        if k == 0:
            return
        keep = np.asarray(v) != 0
        self.rr.append(np.asarray(r)[keep] + self.m)
        self.cc.append(np.asarray(c)[keep])
        self.vv.append(np.asarray(v, dtype=np.float64)[keep])
        self.lo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (k,)).copy())
        self.hi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (k,)).copy())
        self.m += k

    def set_bounds(self, idx: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> None:
        self.overrides.append((np.asarray(idx), np.asarray(lb, np.float64), np.asarray(ub, np.float64)))

    def problem(self) -> MipProblem:
        cat = (lambda xs, dt=np.float64: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        A = sp.csr_matrix((cat(self.vv), (cat(self.rr, np.int64), cat(self.cc, np.int64))), shape=(self.m, self.n))
        A.sum_duplicates()
        lb, ub = cat(self.lb), cat(self.ub)
        for idx, l, u in self.overrides:
            lb[idx], ub[idx] = l, u
        return MipProblem(np.zeros(self.n), lb, ub, cat(self.int, bool), A, cat(self.lo), cat(self.hi))


def _widen(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return l - BOUND_WIDEN * (1 + np.abs(l)), u + BOUND_WIDEN * (1 + np.abs(u))


# --------------------------------------------------------------------------- encoding


@dataclass
class Encoding:
    """The network's MILP: ``model`` (no objective yet), the columns of every node value,
    the bounds used, and the number of binaries."""

    model: _Model
    cols: dict[int, np.ndarray]
    bounds: dict[int, tuple[np.ndarray, np.ndarray]]  # widened: the column bounds
    n_binaries: int
    output: int
    raw: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # unwidened
    act_inputs: list[int] = field(default_factory=list)  # inputs of two-piece activations

    def unstable(self, graph: Graph, j: int) -> np.ndarray:
        """Entries of node ``j`` that some activation consuming it needs a binary for."""
        mask = np.zeros(graph.size(j), dtype=bool)
        for c in graph.consumers[j]:
            if c in graph.live:
                mask |= _unstable(graph.nodes[c].op, *self.raw[j])
        return mask


def _two_piece(mdl: _Model, xc: np.ndarray, yc: np.ndarray, l: np.ndarray, u: np.ndarray,
               raw: tuple[np.ndarray, np.ndarray],
               theta: np.ndarray, s_lo: np.ndarray, c_lo: np.ndarray, s_hi: np.ndarray, c_hi: np.ndarray,
               lo_always: np.ndarray, hi_always: np.ndarray) -> int:
    """Encode ``y = f(x)`` per entry for a continuous two-piece linear ``f`` (see module doc).

    ``l``/``u`` are the (widened) bounds of ``x`` used as big-M constants; ``raw`` the
    unwidened ones, which decide stability (an entry whose bound touches the breakpoint
    only through rounding is linear). ``lo_always``/``hi_always`` force an entry onto one
    piece (e.g. an infinite breakpoint). Returns the number of binaries added.
    """
    rl, ru = raw
    lo_lin = lo_always | (~hi_always & (ru <= theta))
    hi_lin = ~lo_lin & (hi_always | (rl >= theta))
    same = ~lo_lin & ~hi_lin & (s_lo == s_hi)
    hi_lin = hi_lin | same
    unstable = ~lo_lin & ~hi_lin
    # linear entries: y - s x = c
    for mask, s, c in ((lo_lin, s_lo, c_lo), (hi_lin, s_hi, c_hi)):
        k = int(mask.sum())
        if k:
            r = np.arange(k)
            mdl.rows(np.concatenate([r, r]), np.concatenate([yc[mask], xc[mask]]),
                     np.concatenate([np.ones(k), -s[mask]]), c[mask], c[mask], k)
    k = int(unstable.sum())
    if k == 0:
        return 0
    xs, ys = xc[unstable], yc[unstable]
    L, U, th = l[unstable], u[unstable], theta[unstable]
    sl, sh, ch = s_lo[unstable], s_hi[unstable], c_hi[unstable]
    f_th = sh * th + ch
    D = sh - sl
    alpha, beta, gamma = 1.0 / D, -sl / D, (-f_th + sl * th) / D
    z = mdl.cols(np.zeros(k), np.ones(k), integer=True)
    r = np.arange(k)
    # (1) p >= 0
    mdl.rows(np.r_[r, r], np.r_[ys, xs], np.r_[alpha, beta], -gamma, np.inf, k)
    # (2) p - (u - theta) z <= 0
    mdl.rows(np.r_[r, r, r], np.r_[ys, xs, z], np.r_[alpha, beta, -(U - th)], -np.inf, -gamma, k)
    # (3) q <= 0
    mdl.rows(np.r_[r, r], np.r_[ys, xs], np.r_[-alpha, 1 - beta], -np.inf, th + gamma, k)
    # (4) q >= (l - theta)(1 - z)
    mdl.rows(np.r_[r, r, r], np.r_[ys, xs, z], np.r_[-alpha, 1 - beta, L - th], gamma + L, np.inf, k)
    return k


def _pieces(op, n: int):
    """(theta, s_lo, c_lo, s_hi, c_hi) for a ReLU-like op, as arrays."""
    z, o = np.zeros(n), np.ones(n)
    if isinstance(op, ops.Relu):
        return z, z, z, o, z
    if isinstance(op, ops.LeakyRelu):
        return z, np.full(n, float(op.slope)), z, o, z
    if isinstance(op, ops.Abs):
        return z, -o, z, o, z
    raise TypeError(op)


def _max_group(mdl: _Model, op: ops.MaxGroup, xc: np.ndarray, yc: np.ndarray, l: np.ndarray,
               u: np.ndarray) -> int:
    nb = 0
    for i, row in enumerate(np.asarray(op.index)):
        cand = np.unique(row[row >= 0])
        L = l[cand].max()
        top = cand[int(np.argmax(l[cand]))]
        keep = np.union1d(cand[u[cand] > L], [top])  # the others can never exceed x_top
        if len(keep) == 1:
            mdl.rows(np.array([0, 0]), np.array([yc[i], xc[keep[0]]]), np.array([1.0, -1.0]), 0.0, 0.0, 1)
            continue
        k = len(keep)
        z = mdl.cols(np.zeros(k), np.ones(k), integer=True)
        nb += k
        mdl.rows(np.zeros(k, dtype=np.int64), z, np.ones(k), 1.0, 1.0, 1)  # sum z = 1
        r = np.arange(k)
        mdl.rows(np.r_[r, r], np.r_[np.full(k, yc[i]), xc[keep]], np.r_[np.ones(k), -np.ones(k)], 0.0, np.inf, k)
        uk = u[keep]
        top2 = np.sort(uk)[-2:]
        other_max = np.where(uk == top2[-1], top2[0], top2[-1])  # max over the others
        M = np.maximum(other_max - l[keep], 0.0)
        # y - x_j + M_j z_j <= M_j
        mdl.rows(np.r_[r, r, r], np.r_[np.full(k, yc[i]), xc[keep], z], np.r_[np.ones(k), -np.ones(k), M],
                 -np.inf, M, k)
    return nb


def _interval(graph: Graph, op, ins: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interval image of the box ``ins`` under the computed (floating-point) op."""
    tins = [(torch.as_tensor(l)[None], torch.as_tensor(u)[None]) for l, u in ins]
    with torch.no_grad():
        lo, hi = interval_with_error(op, tins, precision_of(graph), compute_steps(graph))
    return lo[0].numpy().astype(np.float64), hi[0].numpy().astype(np.float64)


def _rounding(graph: Graph, op, ins: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """``err`` of an affine node given bounds of its inputs (:mod:`certkit.bounds.fperror`): the
    equality row ``y - M x = c`` becomes the ranged row ``c - err <= y - M x <= c + err``."""
    tins = [(torch.as_tensor(l)[None], torch.as_tensor(u)[None]) for l, u in ins]
    with torch.no_grad():
        err = node_error(op, tins, None, precision_of(graph), compute_steps(graph))
    return np.zeros(n) if err is None else err[0].numpy().astype(np.float64)


def _unstable(op, l: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Entries of an activation's input whose bounds straddle a breakpoint."""
    if isinstance(op, (ops.Relu, ops.LeakyRelu, ops.Abs)):
        return (l < 0) & (u > 0)
    if isinstance(op, ops.Clip):
        lo, hi = np.asarray(op.lo, np.float64), np.asarray(op.hi, np.float64)
        return ((l < lo) & (u > lo)) | ((l < hi) & (u > hi))
    return np.zeros(len(l), dtype=bool)


def _safe_lp_min(p: MipProblem, A_T: sp.csr_matrix, c: np.ndarray, y: np.ndarray) -> float:
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


class _LpRelaxation:
    """The LP relaxation of a :class:`MipProblem` (integrality dropped) in one solver session,
    for many objectives in a row (warm-started), each minimum made rigorous from the row
    duals (:func:`_safe_lp_min`)."""

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
        return _safe_lp_min(self.p, self.A_T, c, self.session.row_duals())

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


def encode(graph: Graph, lower: np.ndarray, upper: np.ndarray, state_bounds=None, tighten: str = "lp",
           deadline: float | None = None,
           known: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> Encoding:
    """The MILP of ``y = graph(x)``, ``x`` in ``[lower, upper]``.

    ``state_bounds``: the per-node ``(l, u)`` list of a :class:`BoundState` (batch 1), used as
    intermediate bounds (intersected with interval propagation of the bounds used so far);
    without it interval bounds alone are used. ``tighten="lp"``: before encoding an
    activation, tighten the bounds of its unstable inputs by the LP relaxation of the
    network encoded so far (two LPs per unstable entry, made rigorous from the duals;
    stopped at ``deadline``); ``"none"``: keep the given bounds. ``known``: further valid
    bounds per node (unwidened), intersected in.
    """
    check_encodable(graph)
    if tighten not in ("lp", "none"):
        raise BackendError(f"unknown bound tightening '{tighten}' (choose lp or none)")
    mdl = _Model()
    cols: dict[int, np.ndarray] = {}
    raw: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    used: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    tightened: set[int] = set()
    n_bin = 0
    for i in sorted(graph.live):
        node = graph.nodes[i]
        op = node.op
        if i == 0:
            l, u = np.asarray(lower, np.float64).copy(), np.asarray(upper, np.float64).copy()
            cols[0] = mdl.cols(l, u)
            raw[0] = used[0] = (l, u)
            continue
        if not isinstance(op, ops.LinearOp) and tighten == "lp":
            j = node.inputs[0]
            if j not in tightened and j != 0:
                tightened.add(j)
                which = np.flatnonzero(_unstable(op, *raw[j]))
                if len(which):
                    lo_t, hi_t = _LpRelaxation(mdl.problem()).tighten(cols[j][which], deadline)
                    rl, ru = raw[j][0].copy(), raw[j][1].copy()
                    rl[which] = np.maximum(rl[which], lo_t)
                    ru[which] = np.minimum(ru[which], hi_t)
                    ru = np.maximum(ru, rl)
                    raw[j] = (rl, ru)
                    used[j] = _widen(rl, ru)
                    mdl.set_bounds(cols[j], *used[j])
        l, u = _interval(graph, op, [raw[j] for j in node.inputs])
        if state_bounds is not None and state_bounds[i] is not None:
            sl, su = state_bounds[i]
            l, u = np.maximum(l, sl[0].numpy()), np.minimum(u, su[0].numpy())
        if known is not None and i in known:
            l, u = np.maximum(l, known[i][0]), np.minimum(u, known[i][1])
        u = np.maximum(u, l)  # never an empty interval from rounding
        raw[i] = (l, u)
        l, u = used[i] = _widen(l, u)
        n = graph.size(i)
        yc = mdl.cols(l, u)
        cols[i] = yc
        if isinstance(op, ops.LinearOp):
            mats = linear_matrices(op, [graph.size(j) for j in node.inputs], n)
            rr, cc, vv = [np.arange(n)], [yc], [np.ones(n)]
            for j, M in zip(node.inputs, mats):
                M = sp.coo_matrix(M)
                rr.append(M.row)
                cc.append(cols[j][M.col])
                vv.append(-M.data)
            c = op.bias_vector()
            c = np.zeros(n) if c is None else np.asarray(c, dtype=np.float64)
            err = _rounding(graph, op, [raw[j] for j in node.inputs], n)
            mdl.rows(np.concatenate(rr), np.concatenate(cc), np.concatenate(vv), c - err, c + err, n)
            continue
        j = node.inputs[0]
        xc = cols[j]
        xl, xu = used[j]
        if isinstance(op, (ops.Relu, ops.LeakyRelu, ops.Abs)):
            f = np.zeros(n, dtype=bool)
            n_bin += _two_piece(mdl, xc, yc, xl, xu, raw[j], *_pieces(op, n), f, f)
        elif isinstance(op, ops.Clip):
            lo = np.broadcast_to(np.asarray(op.lo, dtype=np.float64), (n,)).copy()
            hi = np.broadcast_to(np.asarray(op.hi, dtype=np.float64), (n,)).copy()
            z, o = np.zeros(n), np.ones(n)
            # w = max(x, lo): below lo constant lo, above slope 1
            rl, ru = raw[j]
            w_raw = (np.maximum(rl, lo), np.maximum(ru, lo))  # lo = -inf leaves x alone
            wl, wu = _widen(*w_raw)
            wc = mdl.cols(wl, wu)
            lo_f = np.where(np.isfinite(lo), lo, 0.0)
            n_bin += _two_piece(mdl, xc, wc, xl, xu, raw[j], lo_f, z, lo_f, o, z, np.zeros(n, bool),
                                ~np.isfinite(lo))
            # y = min(w, hi): below hi slope 1, above constant hi
            hi_f = np.where(np.isfinite(hi), hi, 0.0)
            n_bin += _two_piece(mdl, wc, yc, wl, wu, w_raw, hi_f, o, z, z, hi_f, ~np.isfinite(hi),
                                np.zeros(n, bool))
        elif isinstance(op, ops.MaxGroup):
            n_bin += _max_group(mdl, op, xc, yc, xl, xu)
        else:  # pragma: no cover - check_encodable refused it
            raise BackendError(f"MILP: cannot encode node '{node.name}' ({op.kind})")
    act_inputs = sorted({graph.nodes[i].inputs[0] for i in graph.live
                         if isinstance(graph.nodes[i].op, (ops.Relu, ops.LeakyRelu, ops.Abs, ops.Clip))})
    return Encoding(mdl, cols, used, n_bin, graph.output, raw, act_inputs)


def intermediate_bounds(graph: Graph, lower: np.ndarray, upper: np.ndarray, C: np.ndarray | None = None):
    """DeepPoly bounds of every node (refined where a relaxation needs them) and, with ``C``,
    DeepPoly lower bounds of ``C y`` (shape (m,)). Returns ``(state_bounds, low_Cy)``."""
    from ..bounds.deeppoly import BoundState

    st = BoundState(graph, InputSet.box(lower, upper), intersect=True)
    n = graph.n_outputs
    eye = torch.eye(n, dtype=torch.float64)
    with torch.no_grad():
        low = st.lower_of(graph.output, torch.cat([eye, -eye])[None])[0]
        ol, ou = st.bounds[graph.output]
        st.bounds[graph.output] = (torch.maximum(ol, low[:n][None]), torch.minimum(ou, -low[n:][None]))
        lowC = None
        if C is not None and len(C):
            lowC = st.lower_of(graph.output, torch.as_tensor(np.asarray(C, dtype=np.float64))[None])[0].numpy()
    return st.bounds, lowC


# --------------------------------------------------------------------------- objectives


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


def _with_objective(enc: Encoding, C: np.ndarray, d: np.ndarray, t_lo: float, t_hi: float) -> MipProblem:
    """Base problem plus ``t`` with ``t >= C_i y - d_i``; objective ``min t``."""
    base = enc.model.problem()
    m = C.shape[0]
    yc = enc.cols[enc.output]
    n = base.n_cols
    Cs = sp.coo_matrix(C)
    rows, cols = np.r_[np.arange(m), Cs.row], np.r_[np.full(m, n), yc[Cs.col]]
    extra = sp.csr_matrix((np.r_[np.ones(m), -Cs.data], (rows, cols)),
                          shape=(m, n + 1))
    A = sp.vstack([sp.hstack([base.A, sp.csr_matrix((base.n_rows, 1))]), extra], format="csr")
    c = np.zeros(n + 1)
    c[n] = 1.0
    return MipProblem(c, np.r_[base.lb, t_lo], np.r_[base.ub, t_hi], np.r_[base.integer, False], A,
                      np.r_[base.row_lo, -d], np.r_[base.row_hi, np.full(m, np.inf)])


def _row_range(C: np.ndarray, d: np.ndarray, yl: np.ndarray, yu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.clip(C, 0, None), np.clip(C, None, 0)
    return pos @ yl + neg @ yu - d, pos @ yu + neg @ yl - d


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
    lo_r, hi_r = _row_range(c_row, np.zeros(1), yl, yu)
    t_lo = max(float(lo_r[0]), float(lowc[0])) if lowc is not None else float(lo_r[0])
    t_lo -= BOUND_WIDEN * (1 + abs(t_lo))
    p = _with_objective(enc, c_row, np.zeros(1), t_lo, float(hi_r[0]) + BOUND_WIDEN * (1 + abs(hi_r[0])))
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


# --------------------------------------------------------------------------- decision


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

    def remaining() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

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
    yl, yu = enc.bounds[enc.output]
    timed_out = False
    for k, dj in enumerate(prop.disjuncts):
        if out.methods[k] == "deeppoly":
            continue
        C, d = np.asarray(dj.C, np.float64), np.asarray(dj.d, np.float64)
        if C.shape[0] == 0:
            reasons.append(f"disjunct {k}: no atoms and no runner to confirm a witness")
            continue
        dp_low = lowC[owner == k] - d
        rem = remaining()
        if rem is not None and rem <= 0:
            timed_out = True
            break
        lo_r, hi_r = _row_range(C, d, yl, yu)
        t_lo = max(float(lo_r.max()), float(dp_low.max()))
        t_lo -= BOUND_WIDEN * (1 + abs(t_lo))
        t_hi = float(hi_r.max())
        t_hi += BOUND_WIDEN * (1 + abs(t_hi))
        p = _with_objective(enc, C, d, t_lo, t_hi)
        # the float64 error of evaluating the rows on the output (the model's rounding is in the
        # encoding: every affine row is ranged by its error bound)
        tau_fp = float(row_margin(torch.as_tensor(C), torch.as_tensor(d), torch.as_tensor(yl)[None],
                                  torch.as_tensor(yu)[None]).max())
        # the LP relaxation first: its bound is made rigorous from the duals, so only the
        # floating-point margin applies
        lpr = _LpRelaxation(p)
        lp_low = lpr.minimum({p.n_cols - 1: 1.0})
        if lp_low > tau_fp:
            out.bounds[k], out.tolerances[k], out.methods[k] = lp_low, tau_fp, "lp"
            continue
        x_lp = lpr.x()
        if runner is not None and x_lp is not None:  # the LP's point is a free candidate
            w = validate(runner, prop, prop_index, x_lp[enc.cols[0]][None])
            if w is not None:
                out.witness, out.methods[k] = w, "witness"
                return finish("falsified", f"disjunct {k}: the LP relaxation's point is a counterexample "
                                           f"(confirmed by onnxruntime)")
        tau = tau_fp + _lp_error(p, solver)
        out.tolerances[k] = tau
        xin = enc.cols[0]
        found: dict = {"w": None, "tried": 0, "best_bad": math.inf}

        def on_solution(x: np.ndarray, obj: float) -> bool:
            if runner is None or obj > tau:
                return False
            found["tried"] += 1
            w = validate(runner, prop, prop_index, x[xin][None])
            if w is not None:
                found["w"] = w
                return True
            found["best_bad"] = min(found["best_bad"], obj)
            return False

        res: MipResult = solve_mip(p, solver, rem, threads, stop_bound=tau, on_solution=on_solution,
                                   cutoff=2 * tau + 10 * tolerances(solver)[1], verbose=verbose)
        out.solver = res.solver
        out.nodes += res.nodes
        out.native_status.append(res.native_status)
        if found["w"] is None and res.x is not None and res.objective <= tau and runner is not None \
                and res.status != "stopped":
            on_solution(res.x, res.objective)
        if found["w"] is not None:
            out.witness, out.methods[k] = found["w"], "witness"
            out.bounds[k] = max(out.bounds[k], res.bound)
            return finish("falsified", f"disjunct {k}: MILP solution confirmed by onnxruntime "
                                       f"({res.solver}, {res.nodes} nodes)")
        out.bounds[k] = max(res.bound, lp_low, float(dp_low.max()))
        if res.bound > tau:
            out.methods[k] = "milp"
            continue
        if res.status == "time_limit" or (deadline is not None and time.monotonic() >= deadline):
            timed_out = True
            reasons.append(f"disjunct {k}: time limit with dual bound {res.bound:.6g} <= tolerance {tau:.3g}")
            break
        if res.status == "error":
            reasons.append(f"disjunct {k}: solver error ({res.message})")
        elif found["tried"]:
            reasons.append(f"disjunct {k}: MILP optimum {res.objective:.6g} <= {tau:.3g} but its input is not a "
                           f"counterexample under onnxruntime (float32 rounding / solver tolerance)")
        elif res.objective <= tau and runner is None:
            reasons.append(f"disjunct {k}: MILP optimum {res.objective:.6g} <= {tau:.3g}; no runner to confirm it")
        else:
            reasons.append(f"disjunct {k}: MILP bound {res.bound:.6g} within tolerance {tau:.3g} of 0 "
                           f"({res.message})")
    if all(m in ("deeppoly", "lp", "milp") for m in out.methods):
        strongest = max(out.methods, key=["deeppoly", "lp", "milp"].index)
        how = {"deeppoly": "DeepPoly", "lp": "the LP relaxation"}.get(strongest, f"MILP ({out.solver})")
        return finish("verified", f"every disjunct ruled out by {how}; {enc.n_binaries} binaries, "
                                  f"{out.nodes} nodes")
    if timed_out:
        return finish("timeout", "; ".join(reasons) or "time budget used up")
    return finish("unknown", "; ".join(reasons))
