"""The IR graph seen by the Lipschitz bounds: linear ops and nonlinear ops with slope ranges.

At every point the Jacobian of the graph is the sum over paths of products of the linear
ops' matrices ``M`` and the nonlinear ops' Jacobians (diagonal ``D`` with entries in
``[s_min, s_max]``, or selections ``J <= G``; :mod:`certkit.lipschitz.slopes`). Hence,
entrywise,

    |Jacobian| <= P  where  P = the graph with every M replaced by |M|, every D by max|s|
                             and every J by G, biases dropped,

and ``P = Jacobian`` bound is tight when every ``M >= 0``, ``s_min >= 0`` and the
activations act as ``s_max`` (paper 000, Prop. 2.1). :class:`Structure` evaluates ``P``
(``abs_forward``) and ``P^T`` (``abs_vjp``, by reverse mode) without forming it, and the
signed linear part after the last nonlinearity exactly (``tail_vjp``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from ..errors import UnsupportedOpError
from ..graph.graph import Graph
from ..graph.implicit import ImplicitLayer
from ..graph.ops import Conv, Dense, Input, LinearOp, Scale, Select, Sum
from .slopes import ElementSlopes, GroupSlopes, MatrixSlopes, Slopes, slopes_of

Tensor = torch.Tensor


def is_linear(op) -> bool:
    """A linear op of the Lipschitz bounds: an affine IR op, not the implicit-bias layer (identity plus
    a deviation for bound propagation, a nonlinear map with a Jacobian bound here)."""
    return isinstance(op, LinearOp) and not isinstance(op, ImplicitLayer)


def first_negative(op: LinearOp) -> str | None:
    """Where the matrix of ``op`` has a negative entry (a readable position), or None if ``M >= 0``.

    Raises KeyError for a linear op kind whose sign pattern is not known here.
    """
    def where(a: np.ndarray, names: tuple[str, ...]) -> str | None:
        a = np.asarray(a)
        neg = np.flatnonzero(a < 0)
        if neg.size == 0:
            return None
        pos = np.unravel_index(int(neg[0]), a.shape)
        return ", ".join(f"{n}={int(p)}" for n, p in zip(names, pos)) + f" (value {float(a.flat[neg[0]]):.4g})"

    if isinstance(op, Dense):
        return where(op.weight, ("row", "col"))
    if isinstance(op, Conv):
        return where(op.weight, ("out_channel", "in_channel", "kh", "kw"))
    if isinstance(op, Scale):
        return where(op.scale, ("element",))
    if isinstance(op, Sum):
        return where(np.asarray(op.coeffs), ("input",))
    if isinstance(op, LinearOp) and op.kind in ("select", "concat"):
        return None
    raise KeyError(op.kind)


@dataclass(frozen=True, eq=False)
class Structure:
    """A graph with the slope range of every live nonlinear node (``slopes[i]``)."""

    graph: Graph
    slopes: dict[int, Slopes] = field(default_factory=dict)

    @staticmethod
    def of(graph: Graph) -> "Structure":
        """Collect every live op; unknown nonlinear kinds are reported together."""
        bad, slopes = [], {}
        for i in sorted(graph.live):
            n = graph.nodes[i]
            if isinstance(n.op, Input) or is_linear(n.op):
                if is_linear(n.op):
                    try:
                        first_negative(n.op)
                    except KeyError:
                        bad.append((n.name, n.op.kind, 0, "no Lipschitz rule for this linear op"))
                continue
            s = slopes_of(n.op)
            if s is None:
                bad.append((n.name, n.op.kind, 0, "no Lipschitz bound: its contraction number q >= 1"
                            if isinstance(n.op, ImplicitLayer) else "no slope range known for this op"))
            else:
                slopes[i] = s
        if bad:
            raise UnsupportedOpError(bad, graph.source)
        return Structure(graph, slopes)

    # -- shape of the graph ----------------------------------------------------------
    @cached_property
    def order(self) -> tuple[int, ...]:
        return tuple(sorted(self.graph.live))

    @cached_property
    def chain(self) -> tuple[int, ...] | None:
        """The live nodes in order when the graph is a chain (one variable input each), else None."""
        g = self.graph
        prev = 0
        for i in self.order[1:]:
            if g.nodes[i].inputs != (prev,):
                return None
            prev = i
        return self.order

    @cached_property
    def nonlinear(self) -> tuple[int, ...]:
        return tuple(i for i in self.order if i in self.slopes)

    @cached_property
    def cuts(self) -> tuple[int, ...]:
        """Live nodes every input-output path goes through (no edge jumps over them)."""
        g = self.graph
        reach = [0] * len(g.nodes)  # reach[k]: some edge j -> i with j < k < i exists
        for i in self.order:
            for j in g.nodes[i].inputs:
                for k in range(j + 1, i):
                    reach[k] = 1
        return tuple(i for i in self.order if not reach[i])

    def segments(self) -> list[tuple[str, int, int]] | None:
        """The graph as a sequence of ``("linear", start, end)`` parts (linear maps from the
        value of cut node ``start`` to that of cut node ``end``, branches allowed inside) and
        ``("nonlinear", i, i)`` nodes; None when a nonlinear op sits inside a branch."""
        out: list[tuple[str, int, int]] = []
        cuts = self.cuts
        for a, b in zip(cuts[:-1], cuts[1:]):
            inside = [i for i in self.order if a < i <= b]
            nl = [i for i in inside if i in self.slopes]
            if nl:
                if inside != [b] or self.graph.nodes[b].inputs != (a,):
                    return None
                out.append(("nonlinear", b, b))
            elif out and out[-1][0] == "linear":
                out[-1] = ("linear", out[-1][1], b)
            else:
                out.append(("linear", a, b))
        return out

    def nodes_between(self, start: int, end: int) -> list[int]:
        """Live nodes after ``start`` that ``end`` depends on, up to ``end``."""
        need = self.ancestors(end)
        return [i for i in self.order if start < i <= end and i in need]

    def linear_forward(self, v: Tensor, start: int, end: int) -> Tensor:
        """``M v`` for the linear part between the values of cut nodes ``start`` and ``end``
        (biases dropped, signs kept)."""
        g = self.graph
        vals: dict[int, Tensor] = {start: v}
        for i in self.nodes_between(start, end):
            n = g.nodes[i]
            if not is_linear(n.op):
                raise ValueError(f"node {n.name} is not linear")
            vals[i] = n.op.apply(*(vals[j] for j in n.inputs))
        return vals[end]

    def is_linear(self, i: int) -> bool:
        return is_linear(self.graph.nodes[i].op)

    def ancestors(self, node: int) -> frozenset[int]:
        seen, stack = {node}, [node]
        while stack:
            for j in self.graph.nodes[stack.pop()].inputs:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return frozenset(seen)

    def size(self, i: int) -> int:
        return self.graph.size(i)

    # -- the entrywise bound P and its transpose --------------------------------------
    def abs_forward(self, v: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """``P v`` for the part of the graph between the value of node ``start`` (given as
        ``v``, batch first) and node ``end`` (default: the output)."""
        g = self.graph
        end = g.output if end is None else end
        need = self.ancestors(end)
        vals: dict[int, Tensor] = {start: v}
        for i in self.order:
            if i <= start or i not in need:
                continue
            n = g.nodes[i]
            ins = [vals[j] for j in n.inputs]
            op = n.op
            if is_linear(op):
                vals[i] = op.apply_abs(*ins)
            else:
                vals[i] = _abs_nonlinear(self.slopes[i], ins[0])
        return vals[end]

    def abs_vjp(self, u: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """``u^T P`` (rows of ``u`` batch first): reverse mode through :meth:`abs_forward`."""
        n_in = self.size(start)
        v = torch.zeros(u.shape[0], n_in, dtype=u.dtype, requires_grad=True)
        with torch.enable_grad():
            y = self.abs_forward(v, start, end)
            (gr,) = torch.autograd.grad(y, v, grad_outputs=u)
        return gr.detach()

    # -- the signed linear tail -----------------------------------------------------------
    @cached_property
    def tail_start(self) -> int:
        """The node whose value feeds the linear suffix: the last nonlinear node if every
        path from it to the output is linear and it is the only entry, else the output
        (then the tail is empty)."""
        if not self.nonlinear:
            return 0
        k = self.nonlinear[-1]
        g = self.graph
        need = self.ancestors(g.output)
        for i in self.order:
            if i > k and i in need:
                if any(j < k for j in g.nodes[i].inputs):
                    return g.output
        return k

    def tail_vjp(self, c: Tensor) -> Tensor:
        """``c^T M_tail`` exactly (signed), ``M_tail`` the linear map from ``tail_start`` to
        the output (biases dropped)."""
        s = self.tail_start
        g = self.graph
        if s == g.output:
            return c
        v = torch.zeros(c.shape[0], self.size(s), dtype=c.dtype, requires_grad=True)
        with torch.enable_grad():
            vals = {s: v}
            need = self.ancestors(g.output)
            for i in self.order:
                if i <= s or i not in need:
                    continue
                n = g.nodes[i]
                vals[i] = n.op.apply(*(vals[j] for j in n.inputs))
            (gr,) = torch.autograd.grad(vals[g.output], v, grad_outputs=c)
        return gr.detach()


def _abs_nonlinear(s: Slopes, x: Tensor) -> Tensor:
    if isinstance(s, ElementSlopes):
        a = s.abs_max
        return x * (torch.as_tensor(a, dtype=x.dtype) if np.ndim(a) else float(a))
    if isinstance(s, MatrixSlopes):
        b = x.shape[0]
        return (x.reshape(b, s.groups, -1) @ torch.as_tensor(s.block.T, dtype=x.dtype)).reshape(b, -1)
    assert isinstance(s, GroupSlopes)
    idx = torch.as_tensor(np.where(s.index >= 0, s.index, 0))
    valid = torch.as_tensor(s.index >= 0, dtype=x.dtype)
    return (x[:, idx] * valid).sum(dim=-1)


def select_norm(op: Select, p: float) -> float:
    """``||Select||_p`` exactly: one entry per row, so the L_2 norm is sqrt(max repeats)."""
    idx = op.index[op.index >= 0]
    if idx.size == 0:
        return 0.0
    return 1.0 if p == float("inf") else float(np.sqrt(np.bincount(idx).max()))
