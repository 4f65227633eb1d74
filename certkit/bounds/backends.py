"""The bound-backend registry: one entry per method, one registration each.

A backend maps ``(graph, inputs, C, budget=None)`` to lower bounds on ``C y`` over the
input set, shape (b, s); it stops (raising ``BudgetExpired``) soon after the budget's deadline. ``certkit ops`` prints which IR ops each backend handles,
from ``supports``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..graph import ops
from ..graph.graph import Graph
from ..spec.sets import InputSet
from .alpha import alpha_lower
from .deeppoly import BoundState, deeppoly_lower
from .forward import applies as forward_applies
from .forward import forward_bounds
from .interval import interval_bounds, rows_lower
from .relaxations import RELAXATIONS

Tensor = torch.Tensor


@dataclass(frozen=True)
class BoundBackend:
    name: str
    summary: str
    lower: Callable[..., Tensor]
    supports: Callable[[ops.Op], bool]


BACKENDS: dict[str, BoundBackend] = {}


def register_backend(backend: BoundBackend) -> BoundBackend:
    BACKENDS[backend.name] = backend
    return backend


def _as_batch(C: Tensor, b: int) -> Tensor:
    C = torch.as_tensor(C, dtype=torch.float64)
    return C.expand(b, -1, -1) if C.dim() == 2 else C


def interval_lower(graph: Graph, inputs: InputSet, C: Tensor, budget=None) -> Tensor:
    """``C+ l + C- u`` from the interval bounds of the output."""
    lo, hi = interval_bounds(graph, inputs)[graph.output]
    return rows_lower(_as_batch(C, inputs.batch), lo, hi)


def _has_interval(op: ops.Op) -> bool:
    return isinstance(op, (ops.LinearOp, ops.Activation, ops.MaxGroup, ops.MaxMin, ops.Bilinear, ops.Input))


def _has_relaxation(op: ops.Op) -> bool:
    return isinstance(op, (ops.LinearOp, ops.MaxGroup, ops.Input)) or type(op) in RELAXATIONS


register_backend(BoundBackend("interval", "interval bound propagation (IBP)", interval_lower, _has_interval))
register_backend(BoundBackend(
    "deeppoly", "DeepPoly/CROWN back-substitution (the relaxation of auto_LiRPA's CROWN)",
    lambda g, s, C, budget=None: deeppoly_lower(g, s, C, intersect=False, budget=budget), _has_relaxation))


def deeppoly_interval_lower(graph: Graph, inputs: InputSet, C: Tensor, budget=None, keep: dict | None = None) -> Tensor:
    """DeepPoly with every intermediate bound intersected with IBP, and IBP's bound where that is higher;
    ``keep`` receives the final state (``state``: its intermediate bounds hold on ``inputs``)."""
    st = BoundState(graph, inputs, intersect=True, budget=budget)
    low = torch.maximum(deeppoly_lower(graph, inputs, C, True, st), interval_lower(graph, inputs, C))
    if keep is not None:
        keep["state"] = st
    return low


register_backend(BoundBackend(
    "deeppoly+interval", "DeepPoly with every intermediate bound intersected with IBP (used by auto)",
    deeppoly_interval_lower, _has_relaxation))
register_backend(BoundBackend(
    "deeppoly+reference", "deeppoly+interval also intersecting every refined layer with the interval image of the "
    "back-substituted layer before (auto_LiRPA's reference bounds; used by auto)",
    lambda g, s, C, budget=None: torch.maximum(deeppoly_lower(g, s, C, intersect=True, budget=budget, reference=True),
                                               interval_lower(g, s, C)),
    _has_relaxation))
register_backend(BoundBackend(
    "alpha", "alpha-CROWN: DeepPoly with lower ReLU slopes optimised by projected gradient ascent",
    lambda g, s, C, budget=None: alpha_lower(g, s, C, budget=budget), _has_relaxation))


def forward_lower(graph: Graph, inputs: InputSet, C: Tensor, budget=None) -> Tensor:
    """CROWN back-substitution of the rows of ``C`` only, over forward-mode intermediate bounds
    (:mod:`certkit.bounds.forward`; auto_LiRPA's ``forward+backward``), intersected with IBP. Where
    forward mode does not apply (a ball, or more than ``FORWARD_MAX_DIM`` free inputs) the rows get
    interval bounds alone: the stage costs no more than IBP there."""
    if not forward_applies(inputs, graph, budget):
        return interval_lower(graph, inputs, C)
    return crown_output_lower(graph, inputs, C, budget, forward_bounds(graph, inputs, budget))


def crown_output_lower(graph: Graph, inputs: InputSet, C: Tensor, budget=None, bounds: list | None = None) -> Tensor:
    """CROWN back-substitution of the rows of ``C`` only, over the interval bounds of every
    intermediate node (none is refined; ``bounds``: given ones instead), intersected with IBP: the memory
    fallback of :mod:`certkit.bounds.fallback`, one back-substitution instead of one per layer."""
    bounds = bounds if bounds is not None else interval_bounds(graph, inputs)
    st = BoundState(graph, inputs, intersect=True, budget=budget, bounds=list(bounds),
                    refined=set(range(len(graph.nodes))))
    return torch.maximum(deeppoly_lower(graph, inputs, C, True, st), interval_lower(graph, inputs, C))


register_backend(BoundBackend(
    "forward", "CROWN for the output rows over forward-mode intermediate bounds (boxes of at most "
    "64 free inputs; auto_LiRPA's forward+backward; used by auto)", forward_lower, _has_relaxation))
register_backend(BoundBackend(
    "crown-output", "CROWN for the output rows over interval intermediate bounds (the memory fallback)",
    crown_output_lower, _has_relaxation))
