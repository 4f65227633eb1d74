"""The canonical IR graph and its float64 reference executor.

A :class:`Graph` is a topologically ordered tuple of :class:`Node`; node ``i``
produces value ``i``. Node 0 is the :class:`~certkit.graph.ops.Input`. Values
are flat per batch element (see :mod:`certkit.graph.ops`); ``shapes[i]`` keeps
the ONNX shape (batch dimension 1 included) for messages, export and ops that
need it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .ops import Input, LinearOp, Op


@dataclass(frozen=True, eq=False)
class Node:
    """One IR node: ``op`` applied to the values ``inputs`` (indices of earlier nodes)."""

    name: str
    op: Op
    inputs: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Graph:
    """A DAG of canonical ops with one input and one output value.

    ``input_shape``/``output_shape`` are the ONNX shapes (batch dim 1); the
    flat sizes are ``n_inputs``/``n_outputs``. ``output`` is the index of the
    output node (usually the last).
    """

    nodes: tuple[Node, ...]
    shapes: tuple[tuple[int, ...], ...]
    output: int
    input_name: str = "input"
    output_name: str = "output"
    source: str = ""
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nodes or not isinstance(self.nodes[0].op, Input):
            raise ValueError("graph must start with its Input node")
        for i, n in enumerate(self.nodes):
            if any(j >= i or j < 0 for j in n.inputs):
                raise ValueError(f"node {i} ({n.name}) is not in topological order")

    # -- sizes ---------------------------------------------------------------
    def size(self, i: int) -> int:
        return int(np.prod(self.shapes[i], dtype=np.int64))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shapes[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.output]

    @property
    def n_inputs(self) -> int:
        return self.size(0)

    @property
    def n_outputs(self) -> int:
        return self.size(self.output)

    @cached_property
    def consumers(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                out[j].append(i)
        return tuple(tuple(c) for c in out)

    @cached_property
    def live(self) -> frozenset[int]:
        """Nodes the output depends on."""
        seen, stack = {self.output}, [self.output]
        while stack:
            for j in self.nodes[stack.pop()].inputs:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return frozenset(seen)

    @cached_property
    def max_node_size(self) -> int:
        """The largest flat size of any node's value."""
        return max(self.size(i) for i in range(len(self.nodes)))

    @cached_property
    def depth(self) -> int:
        """Number of nonlinear layers on the longest path (for floating-point margins)."""
        d = [0] * len(self.nodes)
        for i, n in enumerate(self.nodes):
            base = max((d[j] for j in n.inputs), default=0)
            d[i] = base + (0 if isinstance(n.op, LinearOp) else 1)
        return d[self.output] + 1

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in sorted(self.live):
            k = self.nodes[i].op.kind
            counts[k] = counts.get(k, 0) + 1
        return counts

    # -- execution -------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep: bool = False,
                surrogate: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Run the graph on ``x`` of shape (batch, n_inputs) (any float dtype).

        With ``keep`` return every node's value (a list indexed like ``nodes``). With ``surrogate``
        ops that have a ``surrogate`` method (the steps Sign and Floor, whose gradient is zero almost
        everywhere) use it: the same values, a useful gradient (for attacks only).
        """
        vals: list[torch.Tensor | None] = [None] * len(self.nodes)
        vals[0] = x.reshape(x.shape[0], -1)
        live = self.live
        for i in range(1, len(self.nodes)):
            if i not in live:
                continue
            n = self.nodes[i]
            f = n.op.surrogate if surrogate and hasattr(n.op, "surrogate") else n.op.forward
            vals[i] = f(*(vals[j] for j in n.inputs))
        if keep:
            return vals  # type: ignore[return-value]
        return vals[self.output]  # type: ignore[return-value]

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Reference float64 evaluation on a numpy batch (batch, *input) -> (batch, n_outputs)."""
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        t = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
        with torch.no_grad():
            return self.forward(t).numpy()

    def summary(self) -> str:
        kinds = ", ".join(f"{k} x{v}" for k, v in self.op_counts().items())
        return f"{self.n_inputs} inputs -> {self.n_outputs} outputs; {kinds}"

