"""DeepPoly / CROWN bounds by back-substitution over the IR DAG (DESIGN.md section 2).

To bound ``q = A y_t`` for a node ``t``, coefficients are pushed from ``t`` back
to the input in reverse topological order: a linear op maps ``A`` to ``A M``
(and adds ``A c``); an activation with relaxation ``lw x + lb <= f(x) <= uw x + ub``
maps ``A`` to ``A+ lw + A- uw`` (adding ``A+ lb + A- ub``), which keeps a valid lower
bound; at the input the linear function is minimised over the input set.

Intermediate bounds (the ``[l, u]`` each relaxation needs) come from the same
back-substitution with ``A = [I; -I]`` on the pre-activation node, restricted to
the neurons whose relaxation is not already exact under the interval bounds
(the relaxation of a stable neuron does not depend on its bounds). With
``intersect`` the result is intersected with the interval bounds (always
sound, and usually tighter -- but not always: tighter intermediate bounds can
flip DeepPoly's adaptive lower slope, so a final bound may get looser); without
it the figures are CROWN's exactly, as in auto_LiRPA. Under ``intersect`` every refined node, and every
linear node between refined ones, also meets the interval image of its inputs' bounds as they are then
(:meth:`BoundState.refresh`), and the output rows the image of the output's bounds
(:meth:`BoundState.image_lower`). With ``reference`` (the bound
procedure ``deeppoly+reference``) each refined layer also uses the reference bounds of
:meth:`BoundState._reference` (the interval image of the back-substituted layer
before): under ``intersect`` that is what :meth:`BoundState.refresh` does anyway (the same
bounds); without it, as auto_LiRPA's default CROWN, the neurons the reference bounds show
stable keep them (so a deeper layer can be tighter than textbook CROWN's). A node of several inputs (a
:class:`~certkit.graph.bilinear.Bilinear` product) refines all of them and passes one
coefficient tensor to each. The neurons of a copy (Select, KernelRounding) or of an
elementwise op needed by a consumer are not back-substituted themselves: their inputs' neurons
are, and the bounds follow exactly (:meth:`BoundState._through`) -- a MatMul's pairwise layout,
a Softmax's chain and a ReLU before a MaxPool cost their inputs' rows only. The steps of
:mod:`certkit.bounds.deeppoly_rows` give the same bounds with less work (the fast step through an
activation on its alive columns, the Dense before it passed at once; upper rows only for the
neurons that reference bounds show inactive).

Floating point (:mod:`certkit.bounds.fperror`): every node's computed value is its exact
image plus an error ``e_i``, ``|e_i| <= err_i``, so ``A_i y_i >= A_i op(...) - |A_i| err_i``:
back-substitution subtracts ``|A_i| err_i`` at every node it passes (the error is one more
input-independent constant), and the bounds hold for the model as onnxruntime runs it.
``err_i`` is computed from the tightest bounds of the node's inputs known when it is first
needed (any sound bounds give a sound ``err_i``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..graph import ops
from ..graph.bilinear import Product
from ..graph.graph import Graph
from ..spec.sets import InputSet
from ..tolerances import COMPUTE_SAFETY, U64, gamma
from .forward import start_bounds
from .fperror import compute_steps, interval_with_error, magnitude, node_error, precision_of
from .interval import interval_bounds, interval_node, rows_lower
from .memory import rows_within
from .products32 import in_float32, product, product_charge
from .deeppoly_rows import RowSavings
from .windows import WINDOWED, WindowRows
from .relaxations import ALPHA_PARAMS, RELAXATIONS, PairRelax, Relax
from .relax_bilinear import McCormick

Tensor = torch.Tensor

#: Ops whose relaxation alpha-CROWN optimises (:data:`~certkit.bounds.relaxations.ALPHA_PARAMS`): the lower
#: slope of ReLU-like and piecewise-linear ones (Clip: the slope of the line through its kink), the tangent
#: points of sigmoid and tanh (a parameter in [0, 1], starting at 0.5: the midpoint tangent of DeepPoly's
#: lines on a curved part; :func:`certkit.bounds.relaxations._s_shaped_tangents`) and of the convex or
#: concave Exp, Log, Sqrt and Reciprocal (:func:`certkit.bounds.relax_elementwise.tangent_lines`, starting
#: at DeepPoly's point); the slopes of the lines of the S-shaped, periodic and step ops relaxed by
#: :func:`certkit.bounds.relax_elementwise.best_lines` (Erf, Sin, Cos, Pow, Sign, Floor: a parameter in [-1, 1]
#: moving each side's slope from DeepPoly's toward the extreme candidates, the offsets exact:
#: :func:`certkit.bounds.relax_elementwise.moved_lines`). Products of two variables have their own
#: (:meth:`BoundState._mixed_planes`).
ALPHA_OPS = tuple(ALPHA_PARAMS)

#: Above this fraction of unstable neurons, pure CROWN refines every neuron of the layer.
DENSE_FRACTION = 0.9
#: Rows are back-substituted in chunks whose coefficient matrices hold at most this many floats
#: (128 MB in float64), fewer when the memory budget leaves less (:func:`certkit.bounds.memory.rows_within`,
#: which raises ``MemoryExceeded`` when not even one row fits); the time budget is checked between
#: chunks (a single 4 GB allocation on cifar_biasfield had overrun --timeout by 20 s).
MAX_COEFFICIENTS = 2 ** 24


def _needs_refine(op, l: Tensor, u: Tensor) -> Tensor:
    """(b, n) mask of the neurons whose relaxation depends on their bounds (an op may say so itself:
    ``needs_bounds(l, u)``, e.g. the steps of :mod:`certkit.graph.elementwise`)."""
    hook = getattr(op, "needs_bounds", None)
    if hook is not None:
        return hook(l, u)
    if isinstance(op, (ops.Relu, ops.LeakyRelu, ops.Abs)):
        return (l < 0) & (u > 0)
    if isinstance(op, ops.MaxGroup):
        return torch.ones_like(l, dtype=torch.bool)
    if isinstance(op, ops.Clip):
        lo = torch.as_tensor(op.lo, dtype=l.dtype)
        hi = torch.as_tensor(op.hi, dtype=l.dtype)
        return ((l < lo) & (u > lo)) | ((l < hi) & (u > hi))
    return torch.ones_like(l, dtype=torch.bool)


#: ops whose relaxation depends on the bounds of the neurons :func:`_needs_refine` names only (the
#: compact rows of alpha-CROWN's intermediate slopes: :func:`compact_target`)
_KINKED = (ops.Relu, ops.LeakyRelu, ops.Abs, ops.Clip)


def compact_target(graph: Graph, j: int) -> bool:
    """Do node ``j``'s alpha-CROWN slope tensors hold rows only for the neurons its consumers leave
    unstable (:meth:`BoundState._compact_rows`)? When every consumer is a kinked op (:data:`_KINKED`); a
    copy or any other consumer asks for rows by its own needs."""
    cons = graph.consumers[j]
    return bool(cons) and all(type(graph.nodes[c].op) in _KINKED for c in cons)


def _charge(A: Tensor, err: Tensor, finite: bool | None = None) -> Tensor:
    """``|A| err`` (b, s): the most the errors ``err`` (b, n) can lower ``A y``. Computed without
    gradient: alpha/beta optimisation steers by the relaxation, and the value is the same. An
    infinite error (overflow) charges ``inf`` to the rows that use it and nothing (not NaN) to
    those whose coefficient on it is 0. ``finite``: whether every entry of ``err`` is finite, when known."""
    with torch.no_grad():
        Aa = A.detach().abs()
        if finite if finite is not None else bool(torch.isfinite(err).all()):
            return torch.bmm(Aa, err[:, :, None])[..., 0]
        fin = torch.isfinite(err)
        c = torch.bmm(Aa, torch.where(fin, err, torch.zeros_like(err))[:, :, None])[..., 0]
        hit = torch.bmm(Aa, (~fin).to(Aa.dtype)[:, :, None])[..., 0] > 0
        return torch.where(hit, torch.full_like(c, float("inf")), c)


def _rows(t: Tensor) -> Tensor:
    """A relaxation tensor shaped for (b, s, n) coefficients: (b, n) gains a row axis."""
    return t if t.dim() == 3 else t[:, None, :]


def _steer(value: Tensor, row: Tensor, lost: Tensor) -> Tensor:
    """``value`` to the last bit, with the gradient of the back-substituted ``row`` added where it
    ``lost`` the intersection (``value`` came from the other side): see :meth:`BoundState._meet`."""
    if not row.requires_grad:
        return value
    d = row - row.detach()  # exactly 0 where row is finite
    return value + torch.where(lost & torch.isfinite(row), d, torch.zeros_like(d))


@dataclass
class MaxRelax:
    """Relaxation of a MaxGroup: ``y >= x[sel]`` and ``y <= uw * x[sel] + ub``."""

    sel: Tensor  # (b, n_out) int64 index into the input
    uw: Tensor  # (b, n_out) 0 or 1
    ub: Tensor  # (b, n_out)


def _max_relax(op: ops.MaxGroup, l: Tensor, u: Tensor) -> MaxRelax:
    gl = op.gather(l, float("-inf"))
    gu = op.gather(u, float("-inf"))
    j = gl.argmax(dim=-1, keepdim=True)
    lsel = gl.gather(-1, j).squeeze(-1)
    others = gu.scatter(-1, j, float("-inf")).amax(dim=-1)
    dominated = lsel >= others
    idx = torch.as_tensor(np.where(op.index >= 0, op.index, 0))
    sel = idx.expand(l.shape[0], -1, -1).gather(-1, j).squeeze(-1)
    umax = gu.amax(dim=-1)
    one = torch.ones_like(lsel)
    return MaxRelax(sel, torch.where(dominated, one, 0 * one), torch.where(dominated, 0 * one, umax))


@dataclass
class BoundState(RowSavings, WindowRows):
    """Bounds of every node and the relaxations derived from them, for one input set.

    ``slopes`` optionally fixes the lower slope of ReLU-like nodes (node index ->
    (b, n) tensor), as alpha-CROWN does.
    """

    graph: Graph
    inputs: InputSet
    intersect: bool = True
    slopes: dict[int, Tensor] = field(default_factory=dict)
    #: alpha-CROWN slopes per (target, ReLU node): tensors (b, rows of the target, n); the
    #: target is ``"out"`` or the node whose bounds are refined (rows: its [lower; upper]
    #: neurons). Missing entries are created from DeepPoly's choice (see bounds/alpha.py).
    alpha: dict | None = None
    #: starting slopes for ``alpha`` entries as they are created (same keys and shapes; NaN where
    #: DeepPoly's choice stands): a child domain starts from its parent's optimised slopes
    alpha_init: dict | None = None
    #: the bounds every alpha-CROWN iterate starts from (:func:`certkit.bounds.alpha.alpha_lower`'s): an
    #: intermediate target's slope tensor then holds rows for the neurons that can need them only, those
    #: whose consumers' relaxations depend on these bounds (:meth:`_compact_rows`); None: rows for all
    alpha_start: list | None = None
    bounds: list = field(default_factory=list)
    relax: dict = field(default_factory=dict)
    refined: set = field(default_factory=set)
    #: ReLU splits of branch and bound: ReLU node -> (b, n) int8, +1 (pre-activation >= 0),
    #: -1 (<= 0) or 0 (free). Each split clamps the pre-activation bounds of its domain.
    splits: dict = field(default_factory=dict)
    #: beta-CROWN multipliers of the splits for the final rows: ReLU node -> (b, s, n) >= 0.
    #: ``f - sum beta * sign * z`` is below ``f`` on the domain, so its bound stays sound.
    beta: dict | None = None
    #: also apply ``beta`` (then (b, 1, n), shared by all rows) to intermediate bounds
    beta_everywhere: bool = False
    #: optimise alpha slopes for the final rows only (intermediate bounds keep DeepPoly's).
    alpha_out_only: bool = False
    #: when a dict, ``backsub`` for the final rows records the coefficients reaching each
    #: ReLU output (node -> (b, s, n)): the branching scores of ReLU splitting use them.
    record: dict | None = None
    #: floating-point error bound of each node's computed value (node -> (b, n) or None)
    errors: dict = field(default_factory=dict)
    #: refine every neuron of every node :meth:`refine` is asked for, not only those whose
    #: relaxation depends on its bounds (tight magnitudes, e.g. for rounding-error bounds)
    refine_all: bool = False
    #: the rounding errors interval propagation computed (node -> (b, n)); reused for the nodes
    #: fed by the input alone, whose input bounds never change
    ibp_errors: dict = field(default_factory=dict)
    #: a time budget (:class:`certkit.verify.query.Budget`): ``check()`` is called at every node of
    #: every back-substitution, so a long bound computation stops soon after the deadline
    budget: object | None = None
    #: use the reference bounds of :meth:`_reference` (auto_LiRPA's ``sparse_intermediate_bounds_with_ibp``):
    #: the bound procedure ``deeppoly+reference``
    reference: bool = False
    #: per-node caches: ancestors, alive columns, zero lower intercepts
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.bounds and self.intersect:  # forward-mode bounds where few inputs are free
            self.bounds = start_bounds(self.graph, self.inputs, self.budget, self.ibp_errors)
        # missing entries (ReLU splitting passes pre-activation bounds only) by interval arithmetic
        if not self.bounds or any(b is None for i, b in enumerate(self.bounds) if i in self.graph.live):
            self.bounds = interval_bounds(self.graph, self.inputs, self.bounds or None, self.ibp_errors)

    # -- floating point ----------------------------------------------------------
    def error(self, i: int) -> Tensor | None:
        """``err_i`` (b, n): bound on the rounding error of node ``i``'s computed value, plus the
        float64 allowance of the back-substitution step at ``i`` (:mod:`certkit.bounds.fperror`).

        A ReLU whose input ``j`` is an affine node feeding nothing else is charged at ``j``: the
        coefficient the ReLU passes to ``j`` is ``P = A_i w`` (w = its slopes, >= 0) and every term the
        ReLU step forms is at most ``|P| |x_j|`` (products) or ``|P| |l_j|`` (the chord's intercept,
        ``|ub| = uw |l|``), so ``2 gamma_L |x_j|`` added where ``j`` is charged covers it
        (:meth:`_charged_error`) and one product per ReLU is saved."""
        if i not in self.errors:
            node = self.graph.nodes[i]
            if self._relu_charged_below(i):
                self.errors[i] = None
                return None
            if node.inputs == (0,) and i in self.ibp_errors:
                err = self.ibp_errors[i]  # the input's bounds are never refined: the same error
            else:
                ins = [self._mag_bounds(j) for j in node.inputs]
                out = None if isinstance(node.op, ops.LinearOp) else interval_node(node.op, ins)
                err = node_error(node.op, ins, out, precision_of(self.graph), self._steps())
            if self._in_float32(i):  # the float32 product at i (certkit.bounds.products32)
                charge = product_charge(node.op, *self._mag_bounds(node.inputs[0]))
                self._cache.setdefault("charge", {})[i] = charge
                err = charge.per_neuron if err is None else err + charge.per_neuron
            self.errors[i] = err
        return self.errors[i]

    def _in_float32(self, i: int) -> bool:
        """Is the back-substitution product at node ``i`` computed in float32?"""
        cache = self._cache.setdefault("in32", {})
        if i not in cache:
            cache[i] = in_float32(self.graph, self.graph.nodes[i].op)
        return cache[i]

    def _product(self, i: int, fn, A: Tensor, total: Tensor, rows: Tensor | None = None,
                 cols: Tensor | None = None, w: Tensor | None = None, bracket=None) -> tuple[Tensor, Tensor]:
        """``(fn(A), total)`` for affine node ``i`` whose product is in float32 (:meth:`_in_float32`):
        ``fn`` maps ``A`` to ``A M_i`` (``w = M_i[rows][:, cols]`` when it uses part of the matrix). Where
        the charge of :class:`~certkit.bounds.products32.ProductCharge` is finite, ``fn`` runs on float32
        and ``total`` gains its bracket less its ``floor`` (the per-neuron part is in :meth:`error`,
        charged at ``i``); otherwise, or on a float32 overflow, the product is float64. ``bracket(charge,
        out)``: the bracket where ``A`` and ``out`` are not dense rows (windowed rows, ``windows.py``)."""
        self.error(i)
        charge = self._cache["charge"][i]
        if not self._finite(charge.floor):
            return fn(A), total
        out, in32 = product(fn, A)
        if in32:
            got = charge.bracket(A, out, rows, cols, w) if bracket is None else bracket(charge, out)
            total = total + got - charge.floor
        return out, total

    def _matmul(self, i: int, A: Tensor, w: Tensor, total: Tensor, rows: Tensor | None,
                cols: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``A @ w`` for ``w = W[rows][:, cols]`` of Dense ``i`` (:meth:`_product`; in float32 from the
        op's own float32 matrix, the same rows and columns)."""
        if not self._in_float32(i):
            return A @ w, total

        def times(a: Tensor) -> Tensor:
            if a.dtype != torch.float32:
                return a @ w
            w32 = self.graph.nodes[i].op.matrix(a)  # converted once per op and dtype
            w32 = w32 if rows is None else w32.index_select(0, rows)
            return a @ (w32 if cols is None else w32.index_select(1, cols))

        return self._product(i, times, A, total, rows, cols, w)

    def _charged_error(self, i: int, t: int | None) -> Tensor | None:
        """The error charged at node ``i`` in a back-substitution from ``t`` (None: from above ``i``):
        :meth:`error`, plus the allowance of a ReLU charged at ``i`` when the coefficients came through
        that ReLU (``t != i``; its only consumer). The allowance uses ``i``'s bounds as they are then --
        the ones the ReLU's relaxation used -- not as they were when ``error(i)`` was first computed
        (during ``i``'s own refinement, with stale interval bounds, possibly infinite)."""
        e = self.error(i)
        consumers = self.graph.consumers[i]
        if t == i or e is None or len(consumers) != 1 or not self._relu_charged_below(consumers[0]):
            return e
        box = self.bounds[i]
        cache = self._cache.setdefault("charged", {})
        hit = cache.get(i)
        if hit is None or hit[0] is not box or hit[1] is not e:  # computed once per bounds of i
            lo, hi = (v.detach() for v in box)
            allowance = 2.0 * COMPUTE_SAFETY * gamma(self._steps(), U64) * magnitude(lo, hi, precision_of(self.graph))
            hit = cache[i] = (box, e, e + allowance)
        return hit[2]

    def _relu_charged_below(self, i: int) -> bool:
        """Is ``i`` a ReLU whose float64 allowance is charged at its input (see :meth:`error`)?"""
        node = self.graph.nodes[i]
        if not isinstance(node.op, ops.Relu):
            return False
        j = node.inputs[0]
        return j != 0 and isinstance(self.graph.nodes[j].op, ops.LinearOp) and self.graph.consumers[j] == (i,)

    def _steps(self) -> int:
        if "steps" not in self._cache:
            self._cache["steps"] = compute_steps(self.graph)
        return self._cache["steps"]

    # -- relaxations -------------------------------------------------------
    def relaxation(self, i: int) -> Relax | MaxRelax:
        if i not in self.relax:
            node = self.graph.nodes[i]
            if isinstance(node.op, ops.Bilinear):
                self.relax[i] = self._multi_relaxation(i)
                return self.relax[i]
            j = node.inputs[0]
            self.refine(j, node.op)
            if i in self.splits:
                self._clamp(j, self.splits[i])
            l, u = self.bounds[j]
            self._tighten_output(i, [(l, u)])
            if isinstance(node.op, ops.MaxGroup):
                self.relax[i] = _max_relax(node.op, l, u)
            elif isinstance(node.op, ops.MaxMin):
                self.relax[i] = PairRelax(node.op, l, u, self._pair_bounds(j, node.op, l, u))
            else:
                fn = RELAXATIONS.get(type(node.op))
                if fn is None:
                    raise NotImplementedError(f"no DeepPoly relaxation for {node.op.kind}")
                slope = self.slopes.get(i)
                if slope is not None and slope.dim() == 3:  # per spec row: (b, s, n)
                    l, u = l[:, None, :], u[:, None, :]
                self.relax[i] = fn(node.op, l, u, slope)
        return self.relax[i]

    def _pair_bounds(self, j: int, op: ops.MaxMin, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor] | None:
        """Bounds (b, m) of ``a - b`` for the pairs of MaxMin ``op`` on node ``j``'s values, from rows
        ``e_a - e_b`` back-substituted from ``j`` (for the pairs the boxes leave undecided; the others
        keep the boxes' ``[l_a - u_b, u_a - l_b]``): the MaxMin relaxation with real bounds of the
        difference (issue 13). None when ``j`` is the input (the boxes are exact there) or no pair is open."""
        if j == 0:
            return None
        a, b = torch.as_tensor(op.a), torch.as_tensor(op.b)
        ld, ud = l[:, a] - u[:, b], u[:, a] - l[:, b]
        idx = torch.nonzero(((ld < 0) & (ud > 0)).any(dim=0)).flatten()
        if idx.numel() == 0:
            return None
        k, n = idx.numel(), self.graph.size(j)
        rows = torch.zeros(k, n, dtype=l.dtype)
        rows[torch.arange(k), a[idx]] = 1.0
        rows[torch.arange(k), b[idx]] -= 1.0
        A = torch.cat([rows, -rows])[None].expand(l.shape[0], -1, -1)
        step = self._row_step(l.shape[0] * self.graph.max_node_size, 2 * k)
        low = torch.cat([self.lower_of(j, A[:, s:s + step]) for s in range(0, 2 * k, step)], dim=1).detach()
        ld, ud = ld.clone(), ud.clone()
        ld[:, idx] = torch.fmax(ld[:, idx], low[:, :k])
        ud[:, idx] = torch.fmin(ud[:, idx], -low[:, k:])
        return ld, ud

    def _multi_relaxation(self, i: int):
        """The relaxation of a nonlinear node of several inputs (:class:`~certkit.graph.bilinear.Bilinear`):
        every input is refined, and the relaxation maps output coefficients to one coefficient
        tensor per input plus a constant (``backsub``)."""
        node = self.graph.nodes[i]
        for j in dict.fromkeys(node.inputs):
            self.refine(j, node.op)
        boxes = [self.bounds[j] for j in node.inputs]
        self._tighten_output(i, boxes)
        same = len(set(node.inputs)) < len(node.inputs)  # x * x: the same variable twice
        return RELAXATIONS[type(node.op)](node.op, boxes, same)

    def _tighten_output(self, i: int, boxes: list[tuple[Tensor, Tensor]]) -> None:
        """Intersect the bounds of nonlinear node ``i``'s output with the (error-widened) image of
        its refined input bounds ``boxes``: later layers' errors are computed from them."""
        lo, hi = interval_with_error(self.graph.nodes[i].op, [(l.detach(), u.detach()) for l, u in boxes],
                                     precision_of(self.graph), self._steps())
        old = self.bounds[i]
        self.bounds[i] = (lo, hi) if old is None else (torch.maximum(old[0], lo), torch.minimum(old[1], hi))

    def _refresh(self, i: int) -> None:
        """Bounds of linear node ``i`` for the magnitudes of rounding errors (:meth:`_mag_bounds`): the
        error-widened interval image of its inputs' bounds as they are now (once per node). Interval
        bounds are computed once, before any refinement, and a linear node whose consumers are linear
        is never refined: its stale interval bounds would size the rounding errors of the nodes after
        it (after a Product of refined factors they can be 10^5 times too wide, or infinite: a vision
        transformer's attention scores). Only the error magnitudes use them; ``bounds`` (what the
        relaxations see) is left as it is."""
        fresh = self._cache.setdefault("fresh", {})
        if i in fresh or i == 0:
            return
        if all(self._relu_charged_below(c) for c in self.graph.consumers[i]):
            return  # nothing reads them: such a ReLU's error is charged at i, from i's bounds
        node = self.graph.nodes[i]
        ins = [self._mag_bounds(j) for j in node.inputs]
        fresh[i] = interval_with_error(node.op, ins, precision_of(self.graph), self._steps())

    def _mag_bounds(self, j: int) -> tuple[Tensor, Tensor]:
        """The tightest bounds of node ``j`` at hand, for error magnitudes (detached)."""
        lo, hi = (t.detach() for t in self.bounds[j])
        f = self._cache.get("fresh", {}).get(j)
        return (lo, hi) if f is None else (torch.maximum(lo, f[0]), torch.minimum(hi, f[1]))

    def _clamp(self, j: int, split: Tensor) -> None:
        """Intersect node ``j``'s bounds with its split constraints (sign * z >= 0)."""
        l, u = self.bounds[j]
        zero = torch.zeros((), dtype=l.dtype)
        self.bounds[j] = (torch.where(split > 0, torch.maximum(l, zero), l),
                          torch.where(split < 0, torch.minimum(u, zero), u))

    def infeasible(self) -> Tensor:
        """(b,) domains whose split constraints contradict their bounds (empty domains)."""
        bad = torch.zeros(self.inputs.batch, dtype=torch.bool)
        for i in self.splits:
            l, u = self.bounds[self.graph.nodes[i].inputs[0]]
            bad = bad | (l > u).any(dim=1)
        return bad

    def refine(self, j: int, consumer) -> None:
        """Tighten the bounds of node ``j`` by back-substitution (once)."""
        if j in self.refined or j == 0:
            return
        self.refined.add(j)
        node = self.graph.nodes[j]
        if isinstance(node.op, (ops.Dense, ops.Conv, ops.Scale)) and node.inputs[0] == 0 \
                and self.inputs.center is None:
            return  # one affine map of a box: interval bounds are exact
        if isinstance(node.op, ops.LinearOp):
            self.refresh(j)  # the neurons its inputs' bounds decide need no rows
        l, u = self.bounds[j]
        ref = self._reference(j) if self.reference else None
        relus = ref is not None and all(type(self.graph.nodes[c].op) is ops.Relu for c in self.graph.consumers[j])
        if ref is not None and self.intersect:  # the rows the interval bounds ask for, intersected with both
            self.bounds[j] = (torch.maximum(l, ref[0]), torch.minimum(u, ref[1]))
        elif relus:
            l, u = self.bounds[j] = ref  # auto_LiRPA: the neurons they show stable keep them
        mask = torch.zeros_like(l, dtype=torch.bool)
        for c in self.graph.consumers[j]:
            op = self.graph.nodes[c].op
            if isinstance(op, ops.RELAXED):
                mask = mask | self._depends(c, j, l, u)
        if self.refine_all:
            mask = torch.ones_like(mask)
        elif relus and self.intersect:
            # <= 0 by the reference: the ReLU is 0 whatever the rows give (and |l| >= |u| sizes the errors)
            mask = mask & (self.bounds[j][1] > 0)
        if not self.intersect:
            # pure CROWN, as auto_LiRPA: a sample whose (reference) bounds leave more than
            # 90% of the neurons unstable gets back-substituted bounds for all of them
            dense = mask.double().mean(dim=1) > DENSE_FRACTION
            mask = mask | dense[:, None]
        off = self._inactive_by_reference(j, mask)
        if off is None:
            self._refine_mask(j, mask)
            return
        self._refine_with_upper(j, mask, off)

    def refresh(self, j: int) -> None:
        """Intersect the bounds of linear node ``j`` with the error-widened interval image of its inputs'
        bounds as they are now, first doing the same for the linear nodes between ``j`` and the nearest
        refined or nonlinear nodes (whose outputs :meth:`relaxation` tightens): once per node, under
        ``intersect``. A linear node nothing refines keeps its start bounds otherwise, however tight the
        bounds before it became: a softmax's copies and sums (KernelRounding, Select, the Dense of
        ``1 + e^d``) kept bounds of +-4.6e24 on carvana's U-Net while the reciprocals they copy were
        within [0.9997, 0.9999], and the comparisons after them got back-substituted bounds only (1170
        of its pixels' indicators decided instead of 20). Sound as any interval image of sound bounds."""
        if not self.intersect:
            return
        done = self._cache.setdefault("refreshed", set())
        stack, chain = [j], []
        while stack:
            k = stack.pop()
            if k in done or k == 0:
                continue
            done.add(k)
            node = self.graph.nodes[k]
            if not isinstance(node.op, ops.LinearOp) or (k != j and k in self.refined):
                if isinstance(node.op, (ops.Activation, ops.MaxGroup, ops.MaxMin, ops.Bilinear)):
                    self.relaxation(k)  # refines its input and tightens its output
                continue
            chain.append(k)
            stack.extend(node.inputs)
        for k in sorted(chain):  # node indices are topological
            if all(i == 0 for i in self.graph.nodes[k].inputs):
                continue  # fed by the input alone: the start bounds are that image
            lo, hi = self._image(k)
            l, u = self.bounds[k]
            self.bounds[k] = (torch.fmax(l, lo), torch.fmin(u, hi))  # a NaN image bound (inf - inf) is no bound

    def image_lower(self, C: Tensor) -> Tensor:
        """``C+ l + C- u`` (b, s) over the output's bounds after :meth:`refresh` (``C``: (b, s, n_out)):
        a count of indicators is bounded below by its decided ones, where the back-substituted row
        through the indicators' steps can be far lower (carvana: 1170 against 883)."""
        self.refresh(self.graph.output)
        lo, hi = (t.detach() for t in self.bounds[self.graph.output])
        return rows_lower(C, lo, hi)

    def _depends(self, c: int, j: int, l: Tensor, u: Tensor) -> Tensor:
        """(b, n) the neurons of ``j`` whose bounds ``[l, u]`` the relaxation of consumer ``c`` depends on
        (:func:`_needs_refine`), except for a product of two nodes: its McCormick planes are exact
        (``m x``) where the other factor is one finite point ``m``, whatever ``x``'s bounds (nn4sys's MSCN:
        every set feature times a mask the property pins), so those need no rows."""
        node = self.graph.nodes[c]
        if isinstance(node.op, Product) and len(set(node.inputs)) == 2:
            lo, hi = self.bounds[node.inputs[1] if node.inputs[0] == j else node.inputs[0]]
            return ~((lo == hi) & torch.isfinite(lo))
        return _needs_refine(node.op, l, u)

    def _reference(self, j: int) -> tuple[Tensor, Tensor] | None:
        """Reference bounds of linear node ``j`` (auto_LiRPA's ``sparse_intermediate_bounds_with_ibp``,
        ``BoundedModule.get_ref_intermediate_bounds``): the error-widened interval image of its inputs'
        bounds as they are when ``j`` is refined -- the back-substituted bounds of the layer before, not
        those of the interval pass from the input (much wider in the deeper layers). Sound as any
        interval image of sound bounds; computed once per node (detached), None for a node fed by the
        input alone (its interval bounds are that image already).

        auto_LiRPA's default CROWN lets a neuron these bounds show stable keep them (no rows; the rest
        back-substituted, or all when more than :data:`DENSE_FRACTION` are unstable): pure CROWN
        (``intersect=False``) with ``reference`` does the same. ``intersect`` intersects them with the bounds of every
        neuron (tighter than both: on mnistfc-like nets, where CROWN's adaptive slopes often leave a
        neuron wider than the interval image of the layer before, markedly so in the deeper layers)."""
        node = self.graph.nodes[j]
        if not isinstance(node.op, ops.LinearOp) or all(k == 0 for k in node.inputs):
            return None
        cache = self._cache.setdefault("reference", {})
        if j not in cache:
            for k in node.inputs:  # their bounds as back-substitution leaves them
                if isinstance(self.graph.nodes[k].op, (ops.Activation, ops.MaxGroup, ops.MaxMin, ops.Bilinear)):
                    self.relaxation(k)
            cache[j] = interval_with_error(node.op, [tuple(t.detach() for t in self.bounds[k]) for k in node.inputs],
                                           precision_of(self.graph), self._steps())
        return cache[j]

    def _refine_mask(self, j: int, mask: Tensor) -> None:
        """Back-substitute the neurons ``mask`` (b, n) of node ``j`` and update its bounds; neurons
        already back-substituted are not done again. Where :meth:`_through` says so, the neurons of
        ``j``'s inputs are refined instead and ``j`` takes their error-widened interval image."""
        if j == 0:
            return
        rows_done = self._cache.setdefault("rows", {})
        done = rows_done.get(j)
        if done is not None:
            mask = mask & ~done
        if not bool(mask.any()):
            return
        node = self.graph.nodes[j]
        op = node.op
        if self.intersect and isinstance(op, ops.LinearOp):
            self.refresh(j)
            mask = mask & (self.bounds[j][0] < self.bounds[j][1])  # a point needs no rows
            if not bool(mask.any()):
                return
        rows_done[j] = mask if done is None else done | mask
        if isinstance(op, (ops.Dense, ops.Conv, ops.Scale)) and node.inputs[0] == 0 and self.inputs.center is None:
            return  # one affine map of a box: interval bounds are exact
        through = self._through(j, mask)
        if through is not None:
            via, needs, bounds_of = through
            for k, m in needs:
                if bool(m.any()):
                    self._refine_mask(k, m)
            lo, hi = bounds_of()
            l, u = self.bounds[j]
            if self.intersect:
                lo, hi = self._meet(lo, hi, l, u)
            self.bounds[j] = (torch.where(via, lo, l), torch.where(via, hi, u))
            mask = mask & ~via
            if not bool(mask.any()):
                return
        l, u = self.bounds[j]
        union = torch.nonzero(mask.any(dim=0)).flatten()
        if union.numel() == 0:
            return
        # rows are back-substituted in chunks within the memory budget and MAX_COEFFICIENTS floats
        # (a conv net's [I; -I] over 16k neurons is GBs otherwise), the time budget checked between them
        counts = mask.sum(dim=1)
        k_max = int(counts.max())
        per_sample = l.shape[0] > 1 and union.numel() > 1.5 * k_max  # rows (b, k): never windowed
        width = self.graph.max_node_size if per_sample else (self._window_floats(j) or self.graph.max_node_size)
        step = rows_within(self.budget, 2 * l.shape[0] * width, MAX_COEFFICIENTS, need=union.numel())
        if union.numel() == l.shape[1] and step >= union.numel() and bool(mask.all()):
            lb, ub = self.bound_rows(j, union)  # every neuron, in one chunk
            if self.intersect:
                lb, ub = self._meet(lb, ub, l, u)
            self.bounds[j] = (lb, ub)
            return
        l, u = l.clone(), u.clone()
        if per_sample:
            # rows differ between batch elements: each gets its own k_max rows (padded)
            order = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)
            for s in range(0, k_max, step):
                idx = order[:, s:min(s + step, k_max)]  # (b, k)
                valid = (torch.arange(s, s + idx.shape[1])[None, :] < counts[:, None])
                lb, ub = self.bound_rows(j, idx)
                li, ui = l.gather(1, idx), u.gather(1, idx)
                if self.intersect:
                    lb, ub = self._meet(lb, ub, li, ui)
                l.scatter_(1, idx, torch.where(valid, lb, li))
                u.scatter_(1, idx, torch.where(valid, ub, ui))
        else:
            for s in range(0, union.numel(), step):
                idx = union[s:s + step]
                lb, ub = self.bound_rows(j, idx)
                m = mask[:, idx]
                li, ui = l[:, idx], u[:, idx]
                if self.intersect:
                    lb, ub = self._meet(lb, ub, li, ui)
                l[:, idx] = torch.where(m, lb, li)
                u[:, idx] = torch.where(m, ub, ui)
        self.bounds[j] = (l, u)

    def _through(self, j: int, mask: Tensor):
        """``(via, [(input, mask), ...], bounds)``: the neurons ``via`` of ``mask`` whose back-substituted
        bounds follow from their inputs' back-substituted bounds, the input neurons to refine for
        them, and a function giving ``j``'s bounds from its inputs' (then); None for none. Exactly
        the bounds back-substituting ``j`` itself gives, at the cost of its inputs' rows only:

        * a copy (Select; KernelRounding, the identity on its first input): back-substituting a copied
          neuron is back-substituting its source, widened by the copy's own error -- and a MatMul's
          pairwise layout copies each entry ``n`` times, which are refined once;
        * an elementwise op with a relaxation ``lw x + lb <= f(x) <= uw x + ub`` (or a MaxGroup, ``x[sel]``
          below, ``uw x[sel] + ub`` above): back-substituting ``f``'s lower row gives ``lw`` times the
          lower row of ``x`` (``lw >= 0``) or its upper row, plus ``lb``, minus ``f``'s error: so
          ``lw l_x + lb`` or ``lw u_x + lb`` with ``x``'s back-substituted bounds.

        Not for the ReLU-like ops whose slopes alpha-CROWN optimises (rows of their own)."""
        node = self.graph.nodes[j]
        op, ins = node.op, node.inputs
        if self.alpha is not None and isinstance(op, ALPHA_OPS):
            return None
        if isinstance(op, (ops.Select, ops.MaxGroup)):
            index = np.asarray(op.index)
            valid = torch.as_tensor(index >= 0)
            idx = torch.as_tensor(np.where(index >= 0, index, 0))
            m = mask[..., None] if index.ndim == 2 else mask
            hits = torch.zeros(mask.shape[0], self.graph.size(ins[0]), dtype=torch.float64)
            hits.index_add_(1, idx.reshape(-1), (m & valid).reshape(mask.shape[0], -1).to(torch.float64))
            if isinstance(op, ops.Select):
                return mask, [(ins[0], hits > 0)], lambda: self._image(j)
            return mask, [(ins[0], hits > 0)], lambda: self._max_through(j)
        if isinstance(op, ops.KernelRounding):
            return mask, [(ins[0], mask)], lambda: self._image(j)
        if isinstance(op, ops.Activation) and type(op) in RELAXATIONS:
            return mask, [(ins[0], mask)], lambda: self._lines_through(j)
        return None

    def _image(self, j: int) -> tuple[Tensor, Tensor]:
        node = self.graph.nodes[j]
        return interval_with_error(node.op, [self.bounds[k] for k in node.inputs], precision_of(self.graph),
                                   self._steps())

    def _meet(self, lb: Tensor | None, ub: Tensor, l: Tensor | None, u: Tensor) -> tuple[Tensor | None, Tensor]:
        """``[lb, ub]`` (back-substituted rows) intersected with ``[l, u]`` (``lb`` None: the upper side
        only). Under alpha-CROWN the values are the same, but the slopes of a row that the other bound
        beats keep its gradient: with plain ``max``/``min`` the interval (or reference) bound wins at the
        first iterate on many neurons and their slopes never move, however far above the interval bound
        optimising them would take the row (mnistfc 256x2 prop_1 at 0.05: alpha-CROWN's spec rows 0.25 to
        0.59 below auto_LiRPA's without this, -0.001 to +0.03 with it; DESIGN.md section 3)."""
        steer = self.alpha is not None and torch.is_grad_enabled()
        hi = torch.minimum(ub, u)
        hi = _steer(hi, ub, ub > u) if steer else hi
        if lb is None:
            return None, hi
        lo = torch.maximum(lb, l)
        return (_steer(lo, lb, lb < l) if steer else lo), hi

    def _widen(self, j: int, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """``[lo, hi]`` widened by node ``j``'s error (charged where its back-substitution starts); with
        ``intersect``, also intersected with the interval image of ``j``'s inputs' bounds (for a
        monotone op never looser than the back-substituted bounds, often tighter)."""
        e = self.error(j)
        lo, hi = (lo, hi) if e is None else (lo - e, hi + e)
        if self.intersect:
            lo, hi = self._meet(lo, hi, *self._image(j))
        return lo, hi

    def _lines_through(self, j: int) -> tuple[Tensor, Tensor]:
        lw, lb, uw, ub = self.relaxation(j)
        l, u = self.bounds[self.graph.nodes[j].inputs[0]]
        zero = torch.zeros((), dtype=l.dtype)
        term = lambda w, a, b: torch.where(w == 0, zero, w * torch.where(w >= 0, a, b))  # noqa: E731
        return self._widen(j, term(lw, l, u) + lb, term(uw, u, l) + ub)

    def _max_through(self, j: int) -> tuple[Tensor, Tensor]:
        r: MaxRelax = self.relaxation(j)  # type: ignore[assignment]
        l, u = self.bounds[self.graph.nodes[j].inputs[0]]
        lo = l.gather(1, r.sel)
        hi = torch.where(r.uw == 0, r.ub, r.uw * u.gather(1, r.sel) + r.ub)
        return self._widen(j, lo, hi)

    def bound_rows(self, j: int, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds of entries ``idx`` of node ``j``: ``idx`` is (k,) shared by
        the batch or (b, k) per batch element; results are (b, k)."""
        b, n = self.bounds[j][0].shape
        k = idx.shape[-1]
        node = self.graph.nodes[j]
        op = node.op
        if isinstance(op, ops.Dense) and op.rows == 1:
            # start one step down: A = [W; -W] rows, const = [c; -c]
            W = op.matrix(self.bounds[j][0])
            w = W.index_select(0, idx) if idx.dim() == 1 else W[idx]
            A = torch.cat([w, -w], -2)
            A = A.expand(b, -1, -1) if idx.dim() == 1 else A
            const = None
            if op.bias is not None:
                c = torch.as_tensor(op.bias, dtype=torch.float64)[idx]
                const = torch.cat([c, -c], -1)
                const = const.expand(b, -1) if idx.dim() == 1 else const
            lower = self.lower_of(node.inputs[0], A, const, tag=j, rows=self._alpha_rows(j, idx, n))
            e = self.error(j)  # node j itself was skipped: its rounding error still applies
            if e is not None:
                ej = e[:, idx] if idx.dim() == 1 else e.gather(1, idx)
                lower = lower - torch.cat([ej, ej], -1)
        else:
            sign = torch.cat([torch.ones(k, dtype=torch.float64), -torch.ones(k, dtype=torch.float64)])
            low = self._window_lower(j, torch.cat([idx, idx], dim=-1), sign)
            if low is not None:
                return low[:, :k], -low[:, k:]
            eye = torch.zeros(b, 2 * k, n, dtype=torch.float64)
            ix = idx.expand(b, -1) if idx.dim() == 1 else idx
            eye.scatter_(2, ix[:, :, None], 1.0)
            eye[:, k:].scatter_(2, ix[:, :, None], -1.0)
            lower = self.lower_of(j, eye, tag=j, rows=self._alpha_rows(j, idx, n))
        return lower[:, :k], -lower[:, k:]

    def _row_step(self, floats_per_row: int, need: int) -> int:
        """Rows per back-substitution chunk (:func:`certkit.bounds.memory.rows_within`, at most
        :data:`MAX_COEFFICIENTS` floats)."""
        return rows_within(self.budget, floats_per_row, MAX_COEFFICIENTS, need=need)

    def _alpha_rows(self, j: int, idx: Tensor, n: int) -> Tensor | None:
        """Rows of target ``j``'s alpha tensors for the refined entries ``idx``: (2k,) or (b, 2k)."""
        if self.alpha is None:
            return None
        return torch.cat([idx, idx + n], dim=-1)

    # -- back-substitution -----------------------------------------------------
    def backsub(self, t: int, A: Tensor, const: Tensor | None = None, tag=None,
                rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Push ``A`` (b, s, n_t) from node ``t`` to the input: returns ``(A_in, const)``
        with ``A y_t >= A_in x + const`` for every x in the input set."""
        b, s = A.shape[:2]
        acc: dict[int, Tensor] = {t: A}
        narrow: set[int] = set()  # activations whose coefficients arrive on their alive columns only
        folded: set[int] = set()  # affine nodes whose error the activation step above charged (_folds_below)
        total = torch.zeros(b, s, dtype=A.dtype) if const is None else const.expand(b, s).clone()
        self._prepare(t)
        beta_at = self._beta_nodes() if (tag == "out" or self.beta_everywhere) else {}
        for i in range(t, 0, -1):
            Ai = acc.pop(i, None)
            if Ai is None:
                continue
            if self.budget is not None:
                self.budget.check()
            node = self.graph.nodes[i]
            op = node.op
            # rows local to a window of the map go on as windows (windows.py); not once the error is charged
            if isinstance(op, WINDOWED) and i not in folded:
                got = self._window_hand_over(i, Ai, t, tag)
                if got is not None:
                    stop, Ak, c = got
                    total = total + c
                    acc[stop] = acc[stop] + Ak if stop in acc else Ak
                    continue
            if i in beta_at:  # Lagrangian term of the split constraints sign * z_i >= 0
                r = beta_at[i]
                Ai = Ai - self.beta[r] * self.splits[r][:, None, :].to(Ai.dtype)
            fast = self._fast_step(i) if self.alpha is None and isinstance(op, ops.Activation) else None
            e = None if i in folded else self._charged_error(i, t)
            fold = e is not None and fast is not None and fast[0] is None and self._finite(e)
            if e is not None and not fold:  # y_i = op(...) + e_i with |e_i| <= err_i
                total = total - _charge(Ai, e, self._finite(e))
            if self.record is not None and tag == "out" and isinstance(op, ops.Relu):
                self.record[i] = Ai.detach()
            if isinstance(op, ops.LinearOp):
                if self._in_float32(i):
                    part, total = self._product(i, lambda a: op.backward(a)[0], Ai, total)
                    parts = (part,)
                else:
                    parts = op.backward(Ai)
                bt = op.bias_term(Ai)
                if bt is not None:
                    total = total + bt
            elif isinstance(op, ops.MaxGroup):
                r: MaxRelax = self.relaxation(i)  # type: ignore[assignment]
                pos, neg = Ai.clamp(min=0), Ai.clamp(max=0)
                coef = pos + neg * r.uw[:, None, :]
                total = total + (neg * r.ub[:, None, :]).sum(-1)
                n_in = self.graph.size(node.inputs[0])
                out = Ai.new_zeros(b, s, n_in)
                out.scatter_add_(2, r.sel[:, None, :].expand(b, s, -1), coef)
                parts = (out,)
            elif isinstance(op, (ops.MaxMin, ops.Bilinear)):  # coefficients per input and a constant
                rel = self.relaxation(i)
                mix = self._mixed_planes(i, tag, rows, s, rel)
                parts, c = rel.backsub(Ai) if mix is None else rel.backsub_mixed(Ai, *mix)
                total = total + c
            else:
                if fast is not None:  # DeepPoly/CROWN's step on the alive columns, intercepts as products
                    cols, lw, uw, fused = fast[:4]
                    if cols is not None and i not in narrow:
                        Ai = Ai.index_select(-1, cols)
                    neg, pos = Ai.clamp(max=0), Ai.clamp(min=0)
                    Ar = torch.addcmul(pos * lw, neg, uw)  # = Ai * (lw where Ai >= 0, else uw)
                    below = fused is not None or (cols is None and self._folds_below(i, acc, beta_at))
                    e_in = self._charged_cols(node.inputs[0], cols) if below else None
                    fold_in = e_in is not None and fast[4] and self._finite(e_in)
                    vp, vn = self._folded(i, e if fold else None, e_in if fold_in else None)
                    if vn is not None:
                        total = total + (neg @ vn)[..., 0]
                    if vp is not None:
                        total = total + (pos @ vp)[..., 0]
                    if fused is None:
                        parts = (Ar,)
                        if fold_in:
                            folded.add(node.inputs[0])
                    else:  # through the Dense at once (on the alive columns: a smaller product)
                        k, w, bias = fused
                        if e_in is not None and not fold_in:
                            total = total - _charge(Ar, e_in, self._finite(e_in))
                        if bias is not None:
                            total = total + Ar @ bias
                        w2 = None if k in acc or (self.record is not None and tag == "out") else self._narrowed(i)
                        if w2 is not None:  # straight onto the alive columns of the activation below
                            w = w2
                            narrow.add(k)
                        Ak, total = self._matmul(node.inputs[0], Ar, w, total, cols,
                                                 self._fast_step(k)[0] if w2 is not None else None)
                        acc[k] = acc[k] + Ak if k in acc else Ak
                        continue
                else:
                    lw, lb, uw, ub = (_rows(r) for r in self._relax_for(i, tag, rows, s))  # type: ignore[misc]
                    nonneg = Ai >= 0
                    parts = (Ai * torch.where(nonneg, lw, uw),)
                    finite = self._finite_relax(i, lb, ub)
                    if finite and (self._zero_lb(i, lb) if self.alpha is None else not bool(lb.any())):
                        total = total + (Ai.clamp(max=0) * ub).sum(-1)
                    else:
                        prod = Ai * torch.where(nonneg, lb, ub)
                        if not finite:  # an infinite intercept (no finite bound) costs nothing where A is 0
                            prod = torch.where(Ai == 0, torch.zeros_like(prod), prod)
                        total = total + prod.sum(-1)
                    j = node.inputs[0]
                    cols = self._alive_columns(i, j)
                    if cols is not None:  # skip the dead neurons: a smaller product through the Dense
                        dense = self.graph.nodes[j].op
                        Ar = parts[0][..., cols]
                        e = self._charged_error(j, None)
                        if e is not None:
                            total = total - _charge(Ar, e[:, cols])
                        w = torch.as_tensor(dense.weight, dtype=Ar.dtype)[cols]
                        if dense.bias is not None:
                            total = total + Ar @ torch.as_tensor(dense.bias, dtype=Ar.dtype)[cols]
                        k = self.graph.nodes[j].inputs[0]
                        Ak, total = self._matmul(j, Ar, w, total, cols)
                        acc[k] = acc[k] + Ak if k in acc else Ak
                        continue
            for j, Aj in zip(node.inputs, parts):
                acc[j] = acc[j] + Aj if j in acc else Aj
        A_in = acc.pop(0, None)
        if A_in is None:  # the target does not depend on the input
            A_in = A.new_zeros(b, s, self.graph.n_inputs)
        return A_in, total

    def _prepare(self, t: int) -> None:
        """The relaxations (and refreshed bounds) of the nodes a back-substitution from ``t`` passes,
        computed first, in topological order (they may themselves run back-substitutions)."""
        for i in sorted(self._ancestors(t)):
            if isinstance(self.graph.nodes[i].op, (ops.Activation, ops.MaxGroup, ops.MaxMin, ops.Bilinear)):
                self.relaxation(i)
            else:
                self._refresh(i)

    def _beta_nodes(self) -> dict[int, int]:
        """Pre-activation node -> ReLU node, for the splits with beta multipliers."""
        if not self.beta:
            return {}
        return {self.graph.nodes[r].inputs[0]: r for r in self.beta if r in self.splits}

    def _alive_columns(self, i: int, j: int) -> Tensor | None:
        """Columns of activation ``i`` with a nonzero relaxation, when its input ``j`` is a
        plain Dense used only by ``i`` and enough columns are dead to pay off; else None. Never under
        alpha-CROWN for an op whose parameters can give a flat neuron a slope (``AlphaParam.revives``)."""
        cache = self._cache.setdefault("alive", {})
        if i not in cache:
            cache[i] = None
            op = self.graph.nodes[j].op
            param = ALPHA_PARAMS.get(type(self.graph.nodes[i].op))
            if self.alpha is not None and param is not None and param.revives:
                return None
            if isinstance(op, ops.Dense) and op.rows == 1 and self.graph.consumers[j] == (i,) \
                    and not (self.beta and i in self.beta):  # beta terms enter at node j
                lw, _, uw, _ = self.relaxation(i)
                alive = ((lw != 0) | (uw != 0)).reshape(-1, lw.shape[-1]).any(dim=0)
                if float(alive.double().mean()) < 0.9:
                    cache[i] = torch.nonzero(alive).flatten()
        return cache[i]

    def _finite_relax(self, i: int, lb: Tensor, ub: Tensor) -> bool:
        """Are the intercepts of node ``i``'s relaxation finite (not so where an op has no finite
        bound: a pole, a NaN region)?"""
        cache = self._cache.setdefault("finite", {})
        if i not in cache:
            cache[i] = bool(torch.isfinite(lb).all()) and bool(torch.isfinite(ub).all())
        return cache[i]

    def _zero_lb(self, i: int, lb: Tensor) -> bool:
        cache = self._cache.setdefault("zlb", {})
        if i not in cache:
            cache[i] = not bool(lb.any())
        return cache[i]

    def _relax_for(self, i: int, tag, rows: Tensor | None, s: int):
        """The relaxation of node ``i`` used for target ``tag`` (alpha slopes when optimised)."""
        base = self.relaxation(i)
        if type(self.graph.nodes[i].op) not in ALPHA_OPS or not self._optimises(tag):
            return base
        l, u = self.bounds[self.graph.nodes[i].inputs[0]]
        op = self.graph.nodes[i].op

        param = ALPHA_PARAMS[type(op)]
        a = self._alpha_param((tag, i), tag, rows, s, lambda: param.start(op, l.detach(), u.detach(), base))
        if param.from_base is not None and isinstance(base, tuple) and base[0].dim() == 2:
            return param.from_base(op, l, u, base, a)
        return RELAXATIONS[type(op)](op, l[:, None, :], u[:, None, :], a)

    def _optimises(self, tag) -> bool:
        """Are the relaxations of target ``tag``'s back-substitution alpha-CROWN's parameters?"""
        return self.alpha is not None and tag is not None and not (self.alpha_out_only and tag != "out")

    def _alpha_param(self, key: tuple, tag, rows: Tensor | None, s: int, first: Callable[[], Tensor]) -> Tensor:
        """The alpha-CROWN parameter tensor ``key`` (b, rows of ``tag``, n), created from ``first()``
        (b, n) -- or from ``alpha_init`` where it has values -- the first time, and its entries for the
        refined ``rows`` (:meth:`_alpha_rows`); one row for every target's rows when slopes are shared."""
        shared = tag != "out" and self.alpha.get("shared", False)
        pos = self._compact_rows(tag) if rows is not None and not shared and tag != "out" else None
        if key not in self.alpha:
            f = first()
            b, n = f.shape
            if shared:
                R = 1
            elif rows is None or tag == "out":
                R = s
            else:
                R = 2 * (self.graph.size(tag) if pos is None else max(int(pos.max()) + 1, 1))
            a = _rows(f).expand(b, R, n)
            start = None if self.alpha_init is None else self.alpha_init.get(key)
            if start is not None and start.shape == a.shape:
                a = torch.where(torch.isnan(start), a, start)
            self.alpha[key] = a.detach().clone().requires_grad_(True)
        a = self.alpha[key]
        if rows is None or shared:
            return a
        if pos is None:
            return a[:, rows] if rows.dim() == 1 else a.gather(1, rows[:, :, None].expand(-1, -1, a.shape[-1]))
        n_t = pos.shape[1]
        r = rows.expand(pos.shape[0], -1) if rows.dim() == 1 else rows
        p = pos.gather(1, r % n_t)
        held = p >= 0
        got = a.gather(1, (torch.where(held, p, 0) + (r >= n_t) * (a.shape[1] // 2))[:, :, None].expand(-1, -1, a.shape[-1]))
        if bool(held.all()):
            return got
        # a row outside the start bounds' needs (not expected: bounds only tighten): DeepPoly's slopes,
        # fixed (every slope in the parameter's range is sound)
        return torch.where(held[:, :, None], got, _rows(first()).detach())

    def _compact_rows(self, j: int) -> Tensor | None:
        """(b, n) the row of each neuron of target ``j`` in its compact slope tensors (lower rows; the
        upper ones follow them), -1 for the neurons that need no rows under :attr:`alpha_start`: for a
        :func:`compact_target`, those that none of its consumers leaves unstable there (:func:`_needs_refine`;
        bounds only tighten, so no iterate asks for them). None: no compaction (no start bounds,
        ``refine_all``, not a compact target, or no neuron to leave out)."""
        if self.alpha_start is None or self.refine_all or self.alpha_start[j] is None \
                or not compact_target(self.graph, j):
            return None
        cache = self._cache.setdefault("compact", {})
        if j not in cache:
            lo, hi = self.alpha_start[j]
            need = torch.zeros_like(lo, dtype=torch.bool)
            for c in self.graph.consumers[j]:
                need = need | _needs_refine(self.graph.nodes[c].op, lo, hi)
            cache[j] = None if bool(need.all()) else torch.where(need, need.long().cumsum(1) - 1, -1)
        return cache[j]

    def _mixed_planes(self, i: int, tag, rows: Tensor | None, s: int, rel) -> tuple[Tensor, Tensor] | None:
        """alpha-CROWN's parameters of Product ``i`` for target ``tag`` (auto_LiRPA optimises its
        BoundMul's planes the same way): per row and neuron the weights ``(a, b)`` in [0, 1] of the
        convex combinations ``a lo1 + (1 - a) lo2`` of the two lower McCormick planes and ``b up1 +
        (1 - b) up2`` of the upper ones (:meth:`McCormick.backsub_mixed`); every such plane is sound.
        Stored as one tensor (b, rows, 2n), starting at McCormick's own choice. None when not optimised
        (no alpha, a square, or the final rows only and ``tag`` is not the output)."""
        if not isinstance(rel, McCormick) or rel.same or not self._optimises(tag):
            return None
        n = rel.pick_lo.shape[-1]
        a = self._alpha_param((tag, i), tag, rows, s, lambda: torch.cat([rel.pick_lo, rel.pick_up], dim=-1))
        return a[..., :n], a[..., n:]

    def lower_of(self, t: int, A: Tensor, const: Tensor | None = None, tag=None,
                 rows: Tensor | None = None) -> Tensor:
        """Lower bound of ``A y_t + const`` over the input set, (b, s)."""
        A_in, c = self.backsub(t, A, const, tag, rows)
        low = self.inputs.concretize_lower(A_in, c)
        # NaN comes only from inf - inf or 0 * inf (an overflow, a pole): no bound, i.e. -inf
        return torch.nan_to_num(low, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))

    def _ancestors(self, t: int) -> set[int]:
        cache = self._cache.setdefault("anc", {})
        if t not in cache:
            seen, stack = {t}, [t]
            while stack:
                for j in self.graph.nodes[stack.pop()].inputs:
                    if j not in seen:
                        seen.add(j)
                        stack.append(j)
            cache[t] = seen
        return cache[t]


def deeppoly_lower(graph: Graph, inputs: InputSet, C: Tensor, intersect: bool = True,
                   state: BoundState | None = None, budget=None, reference: bool = False) -> Tensor:
    """Lower bounds of ``C y`` (C: (b, s, n_out) or (s, n_out)) over the input set, (b, s).
    The rows of C go in chunks within the memory budget (``MemoryExceeded`` when one row does not
    fit), unless the state optimises or records per-row quantities (alpha, beta, branching scores).
    ``reference``: use the reference bounds of :meth:`BoundState._reference` (module docstring)."""
    st = state or BoundState(graph, inputs, intersect, budget=budget, reference=reference)
    C = torch.as_tensor(C, dtype=torch.float64)
    if C.dim() == 2:
        C = C.expand(inputs.batch, -1, -1)
    b, s = C.shape[:2]
    if st.alpha is not None or st.beta or st.record is not None:
        return st.lower_of(graph.output, C)
    step = rows_within(st.budget, b * graph.max_node_size, MAX_COEFFICIENTS, "back-substitution of the output rows",
                       need=s)
    if step >= s:
        low = st.lower_of(graph.output, C)
    else:
        low = torch.cat([st.lower_of(graph.output, C[:, k:k + step]) for k in range(0, s, step)], dim=1)
    return torch.maximum(low, st.image_lower(C)) if st.intersect else low


def deeppoly_output_bounds(graph: Graph, inputs: InputSet, intersect: bool = True,
                           state: BoundState | None = None, budget=None,
                           reference: bool = False) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of every output, each (b, n_out)."""
    n = graph.n_outputs
    eye = torch.eye(n, dtype=torch.float64)
    low = deeppoly_lower(graph, inputs, torch.cat([eye, -eye]), intersect, state, budget, reference)
    lo, hi = low[:, :n], -low[:, n:]
    if intersect:
        st_ibp = (state.bounds if state is not None else interval_bounds(graph, inputs))[graph.output]
        lo, hi = torch.maximum(lo, st_ibp[0]), torch.minimum(hi, st_ibp[1])
    return lo, hi

