"""alpha-CROWN: DeepPoly with optimised lower ReLU slopes (DESIGN.md sections 2-3), and likewise the
tangent points of sigmoid, tanh, Exp, Log, Sqrt and Reciprocal, the slopes of the lines of Erf, Sin, Cos,
Pow, Sign and Floor (:func:`~certkit.bounds.relax_elementwise.moved_lines`) and the weights of the two
McCormick planes per side of a product of two variables (:data:`~certkit.bounds.deeppoly.ALPHA_OPS`).

The lower relaxation ``y >= a x`` of an unstable ReLU-like unit is valid for any
slope ``a`` in ``[s, 1]`` (s the leaky slope), so a back-substituted bound is a
sound lower bound for every choice of slopes. As in alpha-CROWN, every bound
computation has its own slopes: the final spec rows, and each intermediate
node's lower and upper bounds (one slope tensor per pair (target, ReLU node)).
Starting from DeepPoly's choice, all slopes are optimised jointly by projected
gradient ascent (Adam, learning rate :data:`LR` decayed by :data:`LR_DECAY` per step) on the sum of
the final lower bounds; intermediate
bounds are recomputed with their slopes at every iterate (and intersected with
interval bounds, the gradient reaching the row's slopes also where the interval bound wins:
:meth:`~certkit.bounds.deeppoly.BoundState._meet`). Every iterate is sound, and the best bound of any iterate is
kept row by row, so the result is never looser than DeepPoly's.

Memory (:mod:`certkit.bounds.memory`): the slopes of every (target, ReLU) pair, their gradients and
Adam moments, and the autograd tape of every back-substitution of an iterate are estimated before
the first one (:func:`plan_alpha`). When they do not fit in the budget, each intermediate node's
bounds share one slope tensor across its rows (``shared``, auto_LiRPA's alpha without
``full_conv_alpha``: the intermediate bounds are still optimised, the final rows keep their own
slopes); when that does not fit either, only the slopes of the final rows are optimised (the
intermediate bounds are DeepPoly's, computed once: one bound state serves every iterate), on fewer
rows per pass when needed; when not even one row fits, ``MemoryExceeded``. On sri_resnet_a 5696 the
per-row slopes were estimated at 11.9 GB against 9 GB of headroom (7.2 GB measured); the shared ones fit,
and ReLU splitting then proves it (2026-12-06; before, the final rows' slopes only and a timeout).

An intermediate node's slope tensors hold rows only for its neurons that the start bounds leave unstable
(those are the only ones any iterate refines: :meth:`~certkit.bounds.deeppoly.BoundState._compact_rows`),
not for all ``2 size(j)``: the same iterates and bounds, with smaller slopes, gradients and Adam moments
(oval21 cifar_deep_kw img9931, ``certkit bounds --backend alpha``: 6.3 s and 1.84 GB peak resident instead
of 7.7 s and 2.51 GB; sri_resnet_a 5696 with all slopes: 36 s instead of 44 s; 2026-12-06).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import VerificationTimeout
from ..graph import ops
from ..graph.graph import Graph
from ..spec.sets import InputSet
from .adam import Adam
from .deeppoly import ALPHA_OPS, BoundState, compact_target
from .relaxations import ALPHA_PARAMS, AlphaParam
from .forward import start_bounds
from .memory import FLOAT_BYTES, MemoryExceeded, describe, format_size, working_room

Tensor = torch.Tensor


#: the parameters of ops without a registered one: the weights of a product's McCormick planes
_PLANE_WEIGHTS = AlphaParam(lambda op, l, u, base: base[0])


def _param(op) -> AlphaParam:
    """How ``op``'s parameters are projected (``bounds``) and stepped (``rate``): :data:`ALPHA_PARAMS`."""
    return ALPHA_PARAMS.get(type(op), _PLANE_WEIGHTS)


#: Copies per coefficient of the autograd tape (the coefficients and the relaxation's selections
#: saved for the gradient) and per slope (the slope, its gradient, Adam's two moments and its step's
#: temporary, the relaxation built from it): estimates of 496 MB and 820 MB for peaks of about 430 MB
#: and 790 MB above the loaded process (oval21 cifar_base_kw, 29 rows; metaroom 4cnn_ry_117_19, 59 rows).
TAPE_COPIES, SLOPE_COPIES = 4, 6

#: Adam's learning rate for the slopes and its decay per step (auto_LiRPA's schedule: an exponential
#: decay of 0.98; its rate 0.5, here 0.3). Measured against the former constant 0.1 (20 iterations):
#: beside auto_LiRPA's stored alpha-CROWN bounds (``benchmarks/deeppoly_speed.py --alpha``) the worst
#: gap narrowed on the five instances where alpha gains more than 0.1 over CROWN (ACAS Xu 1_1 prop_5 now
#: tighter than auto_LiRPA's), within 2e-5 on the other three; on 16 ACAS Xu / mnistfc / ERAN instances
#: 14 tighter or equal, ACAS Xu 3_5 prop_1's worst row -614.6 -> -599.5, one (4_9 prop_1) 0.5% looser.
LR, LR_DECAY = 0.3, 0.98

#: iterates of the shared form when the memory budget chose it (:func:`plan_alpha`): each re-bounds
#: every intermediate node (about 1.5 s on sri_resnet_a with 2 threads, where twenty iterates cost
#: 45 s more than the output rows' slopes on instances that ReLU splitting then proves in 22-27 s)
SHARED_ITERATIONS = 6


@dataclass(frozen=True)
class AlphaPlan:
    """How alpha-CROWN runs within the memory budget: all slopes (``out_only`` False; ``shared``: one
    slope tensor per intermediate node, for all its rows), or the final rows' only, ``rows`` of them
    per pass; ``reason`` says why it is not the full method."""

    out_only: bool
    rows: int
    reason: str = ""
    shared: bool = False

    @property
    def form(self) -> str:
        """``full``, ``shared`` or ``out_only``."""
        return "out_only" if self.out_only else "shared" if self.shared else "full"


def alpha_bytes(graph: Graph, ibp: list, s: int, b: int, out_only: bool, shared: bool = False) -> float:
    """Estimated peak bytes of one alpha-CROWN iterate for ``s`` final rows (batch ``b``): the slopes
    with their gradients and moments, and the autograd tape of the back-substitutions, from the
    output and (unless ``out_only``) from every pre-activation node over its neurons unstable under
    the interval bounds ``ibp``."""
    nodes = graph.nodes
    anc: list[set[int]] = [set() for _ in nodes]
    for i, n in enumerate(nodes):
        for j in n.inputs:
            anc[i] |= anc[j] | {j}
    relus = [i for i in graph.live if type(nodes[i].op) in ALPHA_OPS or isinstance(nodes[i].op, ops.Product)]
    per = {r: (2 if isinstance(nodes[r].op, ops.Product) else 1) * graph.size(r) for r in relus}
    kinked = {nodes[r].inputs[0] for r in relus if isinstance(nodes[r].op, (ops.Relu, ops.LeakyRelu))}

    def cost(t: int, rows: int, slope_rows: int) -> float:
        width = sum(graph.size(i) for i in anc[t] | {t})
        slopes = sum(per[r] for r in relus if r in anc[t])
        return b * FLOAT_BYTES * (rows * width * TAPE_COPIES + slope_rows * slopes * SLOPE_COPIES)

    def source(j: int) -> int:  # a copy is refined by refining its source once (BoundState.refine)
        while isinstance(nodes[j].op, (ops.Select, ops.KernelRounding)) and graph.size(nodes[j].inputs[0]) <= graph.size(j):
            j = nodes[j].inputs[0]
        return j

    total = cost(graph.output, s, s)
    if not out_only:
        for j in sorted({source(j) for r in relus for j in nodes[r].inputs}):
            if j == 0 or ibp[j] is None:
                continue
            lo, hi = ibp[j]
            open_ = ((lo < 0) & (hi > 0)) if j in kinked else lo < hi  # smooth ops: every neuron not pinned
            k = int(open_.sum(dim=1).max()) if lo.numel() else 0
            if k:
                total += cost(j, 2 * k, 1 if shared else 2 * (k if compact_target(graph, j) else graph.size(j)))
    return total


def plan_alpha(graph: Graph, ibp: list, s: int, b: int, budget=None, shared: bool = False) -> AlphaPlan:
    """The largest form of alpha-CROWN that fits in the budget's headroom (:class:`AlphaPlan`);
    ``MemoryExceeded`` when not even one final row does."""
    free = working_room(budget)
    full = alpha_bytes(graph, ibp, s, b, False, shared)
    if full <= free:
        return AlphaPlan(False, s, shared=shared)
    why = f"alpha-CROWN with all slopes needs about {format_size(full)}; {describe(budget)}"
    if not shared and alpha_bytes(graph, ibp, s, b, False, True) <= free:
        return AlphaPlan(False, s, why + ": the intermediate bounds' slopes shared across each node's rows", True)
    per_row = alpha_bytes(graph, ibp, 1, b, True)
    rows = int(free // per_row)
    if rows < 1:
        raise MemoryExceeded(f"alpha-CROWN needs {format_size(per_row)} per output row; {describe(budget)}")
    return AlphaPlan(True, min(rows, s), why + ": slopes of the output rows only"
                     + (f", {rows} rows per pass" if rows < s else ""))


def alpha_lower(graph: Graph, inputs: InputSet, C: Tensor, iterations: int = 20, lr: float = LR,
                keep_state: bool = False, shared: bool = False, deadline: float | None = None,
                budget=None, report: dict | None = None, lr_decay: float = LR_DECAY, init: dict | None = None,
                enough: Callable[[Tensor], bool] | None = None, start: tuple[list, dict] | None = None):
    """Lower bounds of ``C y`` (b, s) with optimised slopes; never looser than DeepPoly
    (with interval-intersected intermediate bounds). With ``keep_state`` also return the
    final BoundState (its intermediate bounds are sound for later use). Optimisation stops
    early at ``deadline`` (``time.monotonic()``) or at the ``budget``'s: the bound so far is
    returned (the first iterate, DeepPoly's, is always completed unless the budget ran out,
    which raises ``BudgetExpired``). Within the budget's memory (:func:`plan_alpha`): how it
    ran goes into ``report["reason"]`` when it is not the full method. ``init``: starting slopes
    (:attr:`BoundState.alpha_init`) instead of DeepPoly's choice, e.g. those of a parent domain.
    ``enough``: the optimisation stops after the first iterate whose bounds (b, s) it accepts (a proof
    needs no tighter ones; on a vision transformer the second iterate of twenty proved every row).
    ``start``: the bounds every iterate starts from and their rounding errors, instead of
    :func:`~certkit.bounds.forward.start_bounds`'s (bounds that hold on the set: a parent domain's)."""
    if budget is not None and budget.deadline is not None:
        deadline = budget.deadline if deadline is None else min(deadline, budget.deadline)
    C = torch.as_tensor(C, dtype=torch.float64)
    if C.dim() == 2:
        C = C.expand(inputs.batch, -1, -1)
    if start is None:
        ibp_errors: dict = {}
        ibp = start_bounds(graph, inputs, budget, ibp_errors)  # the same at every iterate
    else:
        ibp, ibp_errors = start
    plan = plan_alpha(graph, ibp, C.shape[1], inputs.batch, budget, shared)
    if report is not None and plan.reason:
        report["reason"] = plan.reason
    if plan.shared and not shared:  # every iterate re-bounds every layer: fewer of them
        iterations = min(iterations, SHARED_ITERATIONS)
    if not plan.out_only:
        best, best_state, done = _optimise(graph, inputs, C, ibp, ibp_errors, iterations, lr, lr_decay, plan.shared,
                                           deadline, budget, init=init, enough=enough)
    else:  # one state (DeepPoly's intermediate bounds) for every pass and iterate
        best_state = BoundState(graph, inputs, intersect=True, bounds=list(ibp), ibp_errors=ibp_errors,
                                budget=budget, alpha_out_only=True)
        parts, slopes, counts = [], {}, set()
        for k in range(0, C.shape[1], plan.rows):
            low, _, n = _optimise(graph, inputs, C[:, k:k + plan.rows], ibp, ibp_errors, iterations, lr, lr_decay,
                                  False, deadline, budget, best_state,
                                  enough=enough if plan.rows >= C.shape[1] else None)
            parts.append(low)
            counts.add(n)
            for key, a in (best_state.alpha or {}).items():
                slopes.setdefault(key, []).append(a.detach())
        done = counts.pop() if len(counts) == 1 else None  # chunks cut at different iterates: no one count
        best = torch.cat(parts, dim=1)
        best_state.alpha = {key: torch.cat(v, dim=1) for key, v in slopes.items()}
    if report is not None:  # the state, for a search that starts where this run ended (ReLU splitting's root):
        # the run is deterministic given its number of iterates, which a recheck repeats
        report.update(state=best_state, iterations=done, form=plan.form)
    if keep_state:
        return best, best_state
    return best


def _optimise(graph: Graph, inputs: InputSet, C: Tensor, ibp: list, ibp_errors: dict, iterations: int,
              lr: float, lr_decay: float, shared: bool, deadline: float | None, budget,
              state: BoundState | None = None, init: dict | None = None,
              enough: Callable[[Tensor], bool] | None = None):
    """The projected gradient ascent on the slopes (module docstring): (best bounds, best state, the
    number of iterates computed: ``iterations``, fewer when the deadline cut it, or when there was
    nothing to optimise -- either way the same run as ``alpha_lower`` with that many iterations).
    ``lr``, ``lr_decay``: Adam's learning rate and its decay per step.
    With ``state`` (slopes of the final rows only) every iterate reuses it with fresh slopes;
    ``init``: starting slopes (:attr:`BoundState.alpha_init`)."""
    alphas: dict = {"shared": True} if shared else {}
    if state is not None:
        state.alpha = alphas
    best = None
    best_state = None
    opt = None
    done = 0
    with torch.enable_grad():
        for it in range(max(1, iterations)):
            st = state or BoundState(graph, inputs, intersect=True, alpha=alphas, alpha_init=init, bounds=list(ibp),
                                     ibp_errors=ibp_errors, budget=budget, alpha_start=ibp)
            try:
                low = st.lower_of(graph.output, C, tag="out")
            except VerificationTimeout:
                if best is None:
                    raise
                break  # the best iterate so far stands
            done = it + 1
            det = torch.maximum(low.detach(), st.image_lower(C))
            if best is None or bool((det > best).any()):
                best_state = st
            best = det if best is None else torch.maximum(best, det)
            params = [a for k, a in alphas.items() if k != "shared" and a.requires_grad]
            if not params or it == iterations - 1 or (deadline is not None and time.monotonic() > deadline) \
                    or (enough is not None and enough(best)):
                break
            if opt is None:  # per rate (tangent points at a third of the slopes': AlphaParam.rate)
                keys = [k for k, a in alphas.items() if k != "shared" and a.requires_grad]
                rate = {k: _param(graph.nodes[k[1]].op).rate for k in keys}
                opt = Adam([{"params": [alphas[k] for k in keys if rate[k] == r], "lr": lr * r}
                            for r in sorted(set(rate.values()), reverse=True)], lr=lr, decay=lr_decay)
            opt.zero_grad()
            (-low.sum()).backward()
            opt.step()
            with torch.no_grad():
                for key, a in alphas.items():
                    if key == "shared":
                        continue
                    op = graph.nodes[key[1]].op
                    lo, hi = _param(op).bounds(op)
                    a.clamp_(lo, hi)
    return best, best_state, done


__all__ = ["alpha_lower", "plan_alpha", "AlphaPlan", "ALPHA_OPS", "LR", "LR_DECAY"]
