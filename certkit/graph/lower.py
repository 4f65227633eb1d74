"""Lowering of the paper activations to primitive IR ops (for backends that only encode those).

Each rewrite is an identity of functions (DESIGN.md section 5):

* ``NActivation``: ``x - 2 clip(x, t1, t2)`` -> ``Clip`` and ``Sum((1, -2))``;
* ``CappedLeakyRelu``: ``alpha x + (1 - alpha) clip(x, -beta, beta)`` -> ``Clip`` and ``Sum``;
* ``MaxMin``: ``max(a, b)`` -> ``MaxGroup``; ``min(a, b) = -max(-a, -b)`` -> ``Scale(-1)``,
  ``MaxGroup``, ``Scale(-1)``; the two halves -> ``Concat`` with the op's permutation.

The MILP backend encodes the lowered graph (``certkit.verify.milp``); the bound backends use
the ops' own relaxations, which are at least as tight.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .graph import Graph, Node


def _expand(op, x: int, n: int, add) -> int:
    """Append the primitive nodes computing ``op`` on value ``x`` (size ``n``); return the result."""
    if isinstance(op, ops.NActivation):
        c = add(ops.Clip(np.asarray(op.t1, np.float64), np.asarray(op.t2, np.float64)), (x,), n)
        return add(ops.Sum((1.0, -2.0)), (x, c), n)
    if isinstance(op, ops.CappedLeakyRelu):
        c = add(ops.Clip(np.full(n, -op.beta), np.full(n, op.beta)), (x,), n)
        return add(ops.Sum((op.alpha, op.gain)), (x, c), n)
    m = len(op.a)
    idx = np.stack([op.a, op.b], axis=1).astype(np.int64)
    mx = add(ops.MaxGroup(idx), (x,), m)
    neg = add(ops.Scale(-np.ones(n), None), (x,), n)
    mn = add(ops.Scale(-np.ones(m), None), (add(ops.MaxGroup(idx), (neg,), m),), m)
    return add(ops.Concat((m, m), op.perm), (mx, mn), 2 * m)


LOWERED = (ops.NActivation, ops.CappedLeakyRelu, ops.MaxMin)


def lower_paper_ops(graph: Graph) -> Graph:
    """``graph`` with every N-activation, capped leaky ReLU and MaxMin node replaced by
    primitive ops (the same function); ``graph`` itself when it has none."""
    if not any(isinstance(n.op, LOWERED) for n in graph.nodes):
        return graph
    nodes: list[Node] = []
    shapes: list[tuple[int, ...]] = []
    new_of: dict[int, int] = {}

    for i, n in enumerate(graph.nodes):
        ins = tuple(new_of[j] for j in n.inputs)
        if not isinstance(n.op, LOWERED):
            nodes.append(Node(n.name, n.op, ins))
            shapes.append(graph.shapes[i])
            new_of[i] = len(nodes) - 1
            continue

        def add(op, inputs, size, _name=n.name):
            nodes.append(Node(f"{_name}/{op.kind}", op, tuple(inputs)))
            shapes.append((1, size))
            return len(nodes) - 1

        out = _expand(n.op, ins[0], graph.size(n.inputs[0]), add)
        shapes[out] = graph.shapes[i]
        new_of[i] = out
    return Graph(tuple(nodes), tuple(shapes), new_of[graph.output], graph.input_name, graph.output_name,
                 graph.source, graph.sha256, graph.meta)
