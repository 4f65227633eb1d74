"""alpha-CROWN: DeepPoly with optimised lower ReLU slopes (DESIGN.md sections 2-3).

The lower relaxation ``y >= a x`` of an unstable ReLU-like unit is valid for any
slope ``a`` in ``[s, 1]`` (s the leaky slope), so a back-substituted bound is a
sound lower bound for every choice of slopes. As in alpha-CROWN, every bound
computation has its own slopes: the final spec rows, and each intermediate
node's lower and upper bounds (one slope tensor per pair (target, ReLU node)).
Starting from DeepPoly's choice, all slopes are optimised jointly by projected
gradient ascent (Adam) on the sum of the final lower bounds; intermediate
bounds are recomputed with their slopes at every iterate (and intersected with
interval bounds). Every iterate is sound, and the best bound of any iterate is
kept row by row, so the result is never looser than DeepPoly's.
"""
from __future__ import annotations

import time

import torch

from ..errors import VerificationTimeout
from ..graph.graph import Graph
from ..spec.sets import InputSet
from .adam import Adam
from .deeppoly import ALPHA_OPS, BoundState
from .interval import interval_bounds

Tensor = torch.Tensor


def _slope_range(op) -> tuple[float, float]:
    s = getattr(op, "slope", 0.0)
    return (s, 1.0) if 0.0 <= s <= 1.0 else (min(s, 1.0), max(s, 1.0))


def alpha_lower(graph: Graph, inputs: InputSet, C: Tensor, iterations: int = 20, lr: float = 0.1,
                keep_state: bool = False, shared: bool = False, deadline: float | None = None,
                budget=None):
    """Lower bounds of ``C y`` (b, s) with optimised slopes; never looser than DeepPoly
    (with interval-intersected intermediate bounds). With ``keep_state`` also return the
    final BoundState (its intermediate bounds are sound for later use). Optimisation stops
    early at ``deadline`` (``time.monotonic()``) or at the ``budget``'s: the bound so far is
    returned (the first iterate, DeepPoly's, is always completed unless the budget ran out,
    which raises ``BudgetExpired``)."""
    if budget is not None and budget.deadline is not None:
        deadline = budget.deadline if deadline is None else min(deadline, budget.deadline)
    C = torch.as_tensor(C, dtype=torch.float64)
    if C.dim() == 2:
        C = C.expand(inputs.batch, -1, -1)
    alphas: dict = {"shared": True} if shared else {}
    best = None
    best_state = None
    opt = None
    ibp_errors: dict = {}
    ibp = interval_bounds(graph, inputs, errors=ibp_errors)  # the same at every iterate
    with torch.enable_grad():
        for it in range(max(1, iterations)):
            st = BoundState(graph, inputs, intersect=True, alpha=alphas, bounds=list(ibp), ibp_errors=ibp_errors,
                            budget=budget)
            try:
                low = st.lower_of(graph.output, C, tag="out")
            except VerificationTimeout:
                if best is None:
                    raise
                break  # the best iterate so far stands
            det = low.detach()
            if best is None or bool((det > best).any()):
                best_state = st
            best = det if best is None else torch.maximum(best, det)
            params = [a for k, a in alphas.items() if k != "shared" and a.requires_grad]
            if not params or it == iterations - 1 or (deadline is not None and time.monotonic() > deadline):
                break
            if opt is None:
                opt = Adam(params, lr=lr)
            opt.zero_grad()
            (-low.sum()).backward()
            opt.step()
            with torch.no_grad():
                for key, a in alphas.items():
                    if key == "shared":
                        continue
                    lo, hi = _slope_range(graph.nodes[key[1]].op)
                    a.clamp_(lo, hi)
    if keep_state:
        return best, best_state
    return best


__all__ = ["alpha_lower", "ALPHA_OPS"]
