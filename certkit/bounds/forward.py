"""Forward-mode linear bounds for inputs with few free dimensions (DESIGN.md section 2).

LiRPA's forward mode (Xu et al., *Automatic Perturbation Analysis for Scalable Certified Robustness
and Beyond*, NeurIPS 2020, section 3.2): every node's value is bounded by two linear functions of the
``k`` free input coordinates ``z`` (the dimensions of nonzero width; pinned ones are constants),

    Lo_i(z) - s_i  <=  y^_i(z)  <=  Up_i(z) + s_i      for every z in the box,          (F)

pushed from the input to the output in one pass: a linear op maps ``(Lo, Up)`` with ``M = (Lo + Up)/2``,
``D = (Up - Lo)/2`` to ``W M -/+ |W| D`` (plus its constant), an activation with relaxation
``lw x + lb <= f(x) <= uw x + ub`` on the concretised bounds of its input to ``lw Lo + lb`` and
``uw Up + ub`` (the other function where a slope is negative). Each node costs ``~3 (k + 1)`` of its
forward evaluations; back-substitution's intermediate bounds cost one pass through every layer below
per neuron (a conv net of 8 layers fed by 16 inputs: cifar_biasfield, 54 s for DeepPoly). The
backend ``forward`` uses these as the intermediate bounds of one CROWN back-substitution of the
output rows (auto_LiRPA's ``forward+backward``), intersected with interval bounds.

Floating point: ``s_i`` carries everything the linear functions do not -- the model's rounding error
``err_i`` (:mod:`certkit.bounds.fperror`: the computed value is the exact image plus ``e_i``) and the
float64 rounding of the coefficients certkit forms at the node: a coefficient made of terms of total
magnitude ``t`` is off by at most ``gamma_L(u64) t``, so evaluated anywhere in the box the functions
are off by at most ``gamma_L`` times the magnitudes ``|W| (|Lo| + |Up|)(|z|)`` of the terms (charged
``COMPUTE_SAFETY`` times). Slack passes through a linear op as ``|W| s`` and through an activation as
``max(|lw|, |uw|) s``; sums of these nonnegative terms are scaled up by ``1 + COMPUTE_SAFETY gamma_L``.
Concretisation over the box charges its own rounding (:meth:`InputSet.concretize_lower`) and the
subtraction of ``s`` is rounded outward. A node whose functions are not finite (an infinite
intercept) is bounded by its interval image and passes on constant functions of its bounds; a node
whose bounds stop being finite ends the forward pass there, the nodes after it get interval bounds.
"""
from __future__ import annotations

import torch

from ..graph import ops
from ..graph.graph import Graph
from ..spec.sets import InputSet
from ..tolerances import COMPUTE_SAFETY, U64, gamma
from .fperror import compute_steps, interval_and_error, node_error, precision_of
from .interval import interval_bounds
from .memory import FLOAT_BYTES, fits
from .relaxations import RELAXATIONS

Tensor = torch.Tensor

#: Forward mode applies to boxes with at most this many free input dimensions (its cost grows as
#: ``k + 1`` forward passes; back-substitution's does not depend on ``k``).
FORWARD_MAX_DIM = 64
#: Back-substitution starts from forward bounds only on nets with a layer at least this wide: there the
#: intermediate rows are the cost (cgan_2023: 28800 neurons a layer); on narrow nets they are cheap and
#: the forward pass is not (ACAS Xu, 50 a layer: input splitting's DeepPoly batches took 1.8x as long
#: from forward bounds, 17.9 against 9.7 s for the same 53k domains of 1_1 prop_6).
FORWARD_START_WIDTH = 1024
#: ... and on any net when at most this many inputs are free: the forward pass then costs about three
#: interval passes, and a small box leaves few neurons unstable (nn4sys's mscn_128d_dual, one free input of
#: 308, 120 nodes: input splitting bounded the same 27 domains in 5.2 s instead of 18.1 s)
FORWARD_START_FREE = 2
#: Peak floats held per coefficient of one node's functions (both functions, the halves and images
#: of a linear step, the next node's): the memory check of :func:`applies`.
PEAK_COPIES = 16


def free_columns(inputs: InputSet) -> Tensor:
    """The input dimensions of nonzero width in some set of the batch, (k,) indices."""
    return torch.nonzero((inputs.upper > inputs.lower).any(dim=0)).flatten()


def applies(inputs: InputSet, graph: Graph | None = None, budget=None) -> bool:
    """Is forward mode meant for this input set (a box of at most :data:`FORWARD_MAX_DIM` free
    dimensions) and, given the graph, do its functions fit in the memory budget?"""
    if inputs.center is not None:
        return False
    k = int(free_columns(inputs).numel())
    if k > FORWARD_MAX_DIM:
        return False
    return graph is None or fits(budget, inputs.batch * (k + 1) * graph.max_node_size * FLOAT_BYTES * PEAK_COPIES)


class _Fn:
    """The two linear functions of one node: coefficients (b, k + 1, n), the last row the constant,
    and the slack ``s`` (b, n) of (F)."""

    __slots__ = ("lo", "up", "slack")

    def __init__(self, lo: Tensor, up: Tensor, slack: Tensor) -> None:
        self.lo, self.up, self.slack = lo, up, slack


class _Forward:
    def __init__(self, graph: Graph, inputs: InputSet, budget) -> None:
        self.graph, self.inputs, self.budget = graph, inputs, budget
        self.p = precision_of(graph)
        self.steps = compute_steps(graph)
        self.c64 = COMPUTE_SAFETY * gamma(self.steps, U64)
        self.free = free_columns(inputs)
        self.Z = InputSet(inputs.lower[:, self.free], inputs.upper[:, self.free])
        zmag = torch.maximum(self.Z.lower.abs(), self.Z.upper.abs())
        self.zhat = torch.cat([zmag, torch.ones_like(zmag[:, :1])], dim=1)  # (b, k + 1): |z| and the constant's 1

    # -- helpers -----------------------------------------------------------------
    def mag(self, F: Tensor) -> Tensor:
        """``max |F(z)|`` over the box bounded from above: ``|coef| |z| + |const|``, (b, n)."""
        return torch.einsum("bkn,bk->bn", F.abs(), self.zhat)

    def concretize(self, f: _Fn) -> tuple[Tensor, Tensor]:
        lo = self.Z.concretize_lower(f.lo[:, :-1].transpose(1, 2), f.lo[:, -1])
        hi = -self.Z.concretize_lower(-f.up[:, :-1].transpose(1, 2), -f.up[:, -1])
        inf = torch.full_like(lo, float("inf"))
        return torch.nextafter(lo - f.slack, -inf), torch.nextafter(hi + f.slack, inf)

    def _input(self) -> _Fn:
        b, n = self.inputs.lower.shape
        k = int(self.free.numel())
        F = torch.zeros(b, k + 1, n, dtype=torch.float64)
        F[:, torch.arange(k), self.free] = 1.0
        pinned = torch.ones(n, dtype=torch.bool)
        pinned[self.free] = False
        F[:, -1] = torch.where(pinned, self.inputs.lower, torch.zeros_like(self.inputs.lower))
        return _Fn(F, F, torch.zeros(b, n, dtype=torch.float64))

    def _box(self, lo: Tensor, hi: Tensor) -> _Fn:
        b, n = lo.shape
        k1 = int(self.free.numel()) + 1
        L = torch.zeros(b, k1, n, dtype=torch.float64)
        U = torch.zeros(b, k1, n, dtype=torch.float64)
        L[:, -1], U[:, -1] = lo, hi
        return _Fn(L, U, torch.zeros_like(lo))

    # -- transfer functions ------------------------------------------------------------
    def linear(self, op: ops.LinearOp, fs: list[_Fn], err: Tensor | None) -> _Fn:
        b, k1 = fs[0].lo.shape[:2]
        flat = lambda t: t.reshape(b * k1, -1)  # noqa: E731
        M = [flat((f.lo + f.up) / 2) for f in fs]
        D = [flat((f.up - f.lo) / 2) for f in fs]
        WM, WD = op.apply(*M).reshape(b, k1, -1), op.apply_abs(*D).reshape(b, k1, -1)
        c = op.bias_vector()
        if c is not None:
            WM[:, -1] += torch.as_tensor(c, dtype=torch.float64)
        terms = op.apply_abs(*[self.mag(f.lo) + self.mag(f.up) for f in fs])
        if c is not None:
            terms = terms + torch.as_tensor(abs(c), dtype=torch.float64)
        slack = op.apply_abs(*[f.slack for f in fs]) + self.c64 * terms
        if err is not None:
            slack = slack + err
        return _Fn(WM - WD, WM + WD, slack * (1 + self.c64))

    def activation(self, op, f: _Fn, l: Tensor, u: Tensor, err: Tensor | None) -> _Fn:
        lw, lb, uw, ub = RELAXATIONS[type(op)](op, l, u, None)
        pos = lambda w, a, c: torch.where((w >= 0)[:, None, :], a, c) * w[:, None, :]  # noqa: E731
        lo, up = pos(lw, f.lo, f.up), pos(uw, f.up, f.lo)
        lo[:, -1] += lb
        up[:, -1] += ub
        m = torch.maximum(self.mag(f.lo), self.mag(f.up))
        terms = (lw.abs() + uw.abs()) * m + lb.abs() + ub.abs()
        slack = torch.maximum(lw.abs(), uw.abs()) * f.slack + self.c64 * terms
        if err is not None:
            slack = slack + err
        return _Fn(lo, up, slack * (1 + self.c64))

    # -- the pass ----------------------------------------------------------------------
    def run(self, errors: dict | None) -> list[tuple[Tensor, Tensor] | None]:
        g = self.graph
        out: list[tuple[Tensor, Tensor] | None] = [None] * len(g.nodes)
        out[0] = (self.inputs.lower, self.inputs.upper)
        fns: dict[int, _Fn] = {0: self._input()}
        left = {i: len(g.consumers[i]) for i in range(len(g.nodes))}
        for i in range(1, len(g.nodes)):
            if i not in g.live:
                continue
            if self.budget is not None:
                self.budget.check()
            node = g.nodes[i]
            op = node.op
            ins = [out[j] for j in node.inputs]
            lo, hi, err = interval_and_error(op, ins, self.p, self.steps)
            if errors is not None and err is not None:
                errors[i] = err
            if isinstance(op, ops.LinearOp):
                f = self.linear(op, [fns[j] for j in node.inputs], err)
            elif isinstance(op, ops.Activation) and type(op) in RELAXATIONS and len(node.inputs) == 1:
                err = node_error(op, ins, (lo, hi), self.p, self.steps)  # with the relaxation's allowance
                f = self.activation(op, fns[node.inputs[0]], *ins[0], err)
            else:
                f = None
            if f is not None:  # fmax/fmin: a NaN of the functions (inf - inf) leaves the interval image
                a, b = self.concretize(f)
                lo, hi = torch.fmax(lo, a), torch.fmin(hi, b)
            out[i] = (lo, hi)
            if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
                return interval_bounds(g, self.inputs, out, errors)  # no finite functions past here
            if f is None or not all(bool(torch.isfinite(t).all()) for t in (f.lo, f.up, f.slack)):
                f = self._box(lo, hi)  # an op without a relaxation, or functions that overflowed
            fns[i] = f
            for j in node.inputs:  # free what no consumer needs any more
                left[j] -= 1
                if left[j] == 0:
                    fns.pop(j, None)
        return out


def forward_bounds(graph: Graph, inputs: InputSet, budget=None,
                   errors: dict | None = None) -> list[tuple[Tensor, Tensor] | None]:
    """Bounds of every live node of the computed network by forward-mode linear bounds intersected
    with interval arithmetic on them, indexed like ``graph.nodes`` (module docstring). ``inputs``: a
    box (b, n); its free dimensions are the variables. ``errors``, as for
    :func:`~certkit.bounds.interval.interval_bounds`, receives the rounding errors of the interval
    images (the same as interval propagation's for the nodes fed by the input alone)."""
    if inputs.center is not None:
        raise ValueError("forward-mode bounds are over boxes")
    return _Forward(graph, inputs, budget).run(errors)


def start_bounds(graph: Graph, inputs: InputSet, budget=None,
                 errors: dict | None = None) -> list[tuple[Tensor, Tensor] | None]:
    """The bounds back-substitution starts from (``intersect`` mode): forward-mode bounds where
    :func:`starts_forward` says so, else interval bounds. Every neuron they show stable needs no rows."""
    if starts_forward(inputs, graph, budget):
        return forward_bounds(graph, inputs, budget, errors)
    return interval_bounds(graph, inputs, errors=errors)


def starts_forward(inputs: InputSet, graph: Graph, budget=None) -> bool:
    """Does back-substitution start from forward bounds here: forward mode applies (:func:`applies`)
    and the net has a layer of at least :data:`FORWARD_START_WIDTH` neurons?"""
    return (few_free(inputs) or graph.max_node_size >= FORWARD_START_WIDTH) and applies(inputs, graph, budget)


def few_free(inputs: InputSet) -> bool:
    """A box of at most :data:`FORWARD_START_FREE` free input dimensions?"""
    return inputs.center is None and int(free_columns(inputs).numel()) <= FORWARD_START_FREE
