"""Interval bound propagation (IBP), DESIGN.md section 2.

Affine maps push the box as centre/radius (``M c + b``, ``|M| r``); monotone
activations map the end points; MaxGroup takes the max of both ends. Sound for
any input set through its enclosing box.
"""
from __future__ import annotations

import torch

from ..graph.graph import Graph
from ..graph.ops import Activation, LinearOp, MaxGroup, MaxMin
from ..spec.sets import InputSet

Tensor = torch.Tensor


def interval_node(op, ins: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Interval transfer function of one op."""
    if isinstance(op, LinearOp):
        mids = [(lo + hi) / 2 for lo, hi in ins]
        rads = [(hi - lo) / 2 for lo, hi in ins]
        m = op.forward(*mids)
        r = op.apply_abs(*rads)
        return m - r, m + r
    if isinstance(op, (Activation, MaxGroup, MaxMin)):
        return op.interval(*ins[0])
    raise NotImplementedError(f"no interval rule for {op.kind}")


def interval_bounds(graph: Graph, inputs: InputSet) -> list[tuple[Tensor, Tensor] | None]:
    """IBP bounds of every live node: a list indexed like ``graph.nodes``."""
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(graph.nodes)
    out[0] = (inputs.lower, inputs.upper)
    for i in range(1, len(graph.nodes)):
        if i not in graph.live:
            continue
        n = graph.nodes[i]
        out[i] = interval_node(n.op, [out[j] for j in n.inputs])
    return out
