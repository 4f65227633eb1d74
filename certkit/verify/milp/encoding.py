"""The MILP of a network over an input box: the walk over the nodes, their bounds, refusal.

Every live IR node value gets one continuous variable per entry, boxed by
intermediate bounds, widened outward by ``BOUND_WIDEN * (1 + |b|)`` against
rounding. The bounds come from DeepPoly back-substitution (intersected with
interval bounds, :class:`certkit.bounds.deeppoly.BoundState`) and interval
propagation; with ``tighten="lp"`` (the default) the inputs of every activation
are then tightened, layer by layer, by the LP relaxation of the network encoded
so far (two LPs per unstable entry). Each such LP bound is made rigorous from
its row duals (:mod:`certkit.verify.milp.lp`), so solver tolerances cannot make an
intermediate bound too tight. The rows of each op are in :mod:`certkit.verify.milp.builder`.

Sigmoid, Tanh, Softplus (any non-piecewise-linear node) are refused with a
:class:`~certkit.errors.BackendError` naming the nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ...bounds.fperror import compute_steps, interval_with_error, node_error, precision_of
from ...errors import BackendError
from ...graph import ops
from ...graph.graph import Graph
from ...solvers import MipProblem
from ...spec.sets import InputSet
from .builder import MipBuilder, linear_matrices, max_group, pieces, two_piece, widen
from .lp import LpRelaxation


def non_piecewise_linear_nodes(graph: Graph) -> list[str]:
    """Names (with op kinds) of the live nodes the MILP cannot encode exactly."""
    bad = []
    for i in sorted(graph.live):
        op = graph.nodes[i].op
        if isinstance(op, (ops.Input, ops.LinearOp, ops.Relu, ops.LeakyRelu, ops.Abs, ops.Clip, ops.MaxGroup)) \
                and not isinstance(op, ops.ImplicitLayer):  # identity plus a deviation: not exact
            continue
        bad.append(f"'{graph.nodes[i].name}' ({op.kind})")
    return bad


def check_encodable(graph: Graph) -> None:
    """Raise :class:`BackendError` naming every node that is not piecewise linear."""
    bad = non_piecewise_linear_nodes(graph)
    if bad:
        raise BackendError("the MILP backend needs a piecewise-linear network; not piecewise linear: "
                           + ", ".join(bad) + " (use a bound backend such as deeppoly)")


@dataclass
class Encoding:
    """The network's MILP: ``model`` (no objective yet), the columns of every node value,
    the bounds used, and the number of binaries."""

    model: MipBuilder
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
    mdl = MipBuilder()
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
                    lo_t, hi_t = LpRelaxation(mdl.problem()).tighten(cols[j][which], deadline)
                    rl, ru = raw[j][0].copy(), raw[j][1].copy()
                    rl[which] = np.maximum(rl[which], lo_t)
                    ru[which] = np.minimum(ru[which], hi_t)
                    ru = np.maximum(ru, rl)
                    raw[j] = (rl, ru)
                    used[j] = widen(rl, ru)
                    mdl.set_bounds(cols[j], *used[j])
        l, u = _interval(graph, op, [raw[j] for j in node.inputs])
        if state_bounds is not None and state_bounds[i] is not None:
            sl, su = state_bounds[i]
            l, u = np.maximum(l, sl[0].numpy()), np.minimum(u, su[0].numpy())
        if known is not None and i in known:
            l, u = np.maximum(l, known[i][0]), np.minimum(u, known[i][1])
        u = np.maximum(u, l)  # never an empty interval from rounding
        raw[i] = (l, u)
        l, u = used[i] = widen(l, u)
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
            n_bin += two_piece(mdl, xc, yc, xl, xu, raw[j], *pieces(op, n), f, f)
        elif isinstance(op, ops.Clip):
            lo = np.broadcast_to(np.asarray(op.lo, dtype=np.float64), (n,)).copy()
            hi = np.broadcast_to(np.asarray(op.hi, dtype=np.float64), (n,)).copy()
            z, o = np.zeros(n), np.ones(n)
            # w = max(x, lo): below lo constant lo, above slope 1
            rl, ru = raw[j]
            w_raw = (np.maximum(rl, lo), np.maximum(ru, lo))  # lo = -inf leaves x alone
            wl, wu = widen(*w_raw)
            wc = mdl.cols(wl, wu)
            lo_f = np.where(np.isfinite(lo), lo, 0.0)
            n_bin += two_piece(mdl, xc, wc, xl, xu, raw[j], lo_f, z, lo_f, o, z, np.zeros(n, bool),
                                ~np.isfinite(lo))
            # y = min(w, hi): below hi slope 1, above constant hi
            hi_f = np.where(np.isfinite(hi), hi, 0.0)
            n_bin += two_piece(mdl, wc, yc, wl, wu, w_raw, hi_f, o, z, z, hi_f, ~np.isfinite(hi),
                                np.zeros(n, bool))
        elif isinstance(op, ops.MaxGroup):
            n_bin += max_group(mdl, op, xc, yc, xl, xu)
        else:  # pragma: no cover - check_encodable refused it
            raise BackendError(f"MILP: cannot encode node '{node.name}' ({op.kind})")
    act_inputs = sorted({graph.nodes[i].inputs[0] for i in graph.live
                         if isinstance(graph.nodes[i].op, (ops.Relu, ops.LeakyRelu, ops.Abs, ops.Clip))})
    return Encoding(mdl, cols, used, n_bin, graph.output, raw, act_inputs)


def intermediate_bounds(graph: Graph, lower: np.ndarray, upper: np.ndarray, C: np.ndarray | None = None):
    """DeepPoly bounds of every node (refined where a relaxation needs them) and, with ``C``,
    DeepPoly lower bounds of ``C y`` (shape (m,)). Returns ``(state_bounds, low_Cy)``."""
    from ...bounds.deeppoly import BoundState

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


def with_objective(enc: Encoding, C: np.ndarray, d: np.ndarray, t_lo: float, t_hi: float) -> MipProblem:
    """Base problem plus ``t`` in ``[t_lo, t_hi]`` with ``t >= C_i y - d_i``; objective ``min t``
    (``t`` is the last column)."""
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


def row_range(C: np.ndarray, d: np.ndarray, yl: np.ndarray, yu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval range of ``C y - d`` over the box ``[yl, yu]``."""
    pos, neg = np.clip(C, 0, None), np.clip(C, None, 0)
    return pos @ yl + neg @ yu - d, pos @ yu + neg @ yl - d
