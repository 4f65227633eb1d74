"""Forward linear bounds (symbolic intervals), for inputs of low dimension.

Every node value ``y`` gets two linear functions of the input,
``L(x) <= y <= U(x)`` on the input box, pushed forward in topological order
(the forward mode of CROWN; ReluVal/Neurify's symbolic intervals). A linear
op ``M`` maps them to

    M+ L + M- U = M (L + U)/2 + |M| (L - U)/2     (lower)
    M+ U + M- L = M (L + U)/2 + |M| (U - L)/2     (upper),

so only ``apply`` and ``apply_abs`` of the op are needed. An activation uses its
relaxation on the node's concrete bounds. The cost per node is proportional to
the input dimension, so this is the cheap way to get intermediate bounds for
input splitting (ACAS Xu has 5 inputs); the final spec is then bounded
backwards (:class:`certkit.bounds.deeppoly.BoundState`) on these bounds.
"""
from __future__ import annotations

import torch

from ..graph import ops
from ..graph.graph import Graph
from ..spec.sets import InputSet
from .deeppoly import _max_relax
from .interval import interval_node
from .relaxations import RELAXATIONS

Tensor = torch.Tensor


def _linear(op: ops.LinearOp, Ls: list[Tensor], Us: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Push (b, n_node, m) coefficient blocks (m = n_in + 1, last column the constant) through op."""
    b, _, m = Ls[0].shape

    def flat(t: Tensor) -> Tensor:  # (b, n, m) -> (b*m, n)
        return t.transpose(1, 2).reshape(b * m, -1)

    mids = [flat((L + U) / 2) for L, U in zip(Ls, Us)]
    rads = [flat((U - L) / 2) for L, U in zip(Ls, Us)]
    c = op.apply(*mids)
    r = op.apply_abs(*rads)
    n_out = c.shape[1]
    c = c.reshape(b, m, n_out).transpose(1, 2)
    r = r.reshape(b, m, n_out).transpose(1, 2)
    L, U = c - r, c + r
    bias = op.bias_vector()
    if bias is not None:
        bt = torch.as_tensor(bias, dtype=L.dtype)
        L = L.clone()
        U = U.clone()
        L[:, :, -1] += bt
        U[:, :, -1] += bt
    return L, U


def _concretize(L: Tensor, U: Tensor, mid: Tensor, rad: Tensor) -> tuple[Tensor, Tensor]:
    lo = (L[..., :-1] @ mid[:, :, None] - L[..., :-1].abs() @ rad[:, :, None])[..., 0] + L[..., -1]
    hi = (U[..., :-1] @ mid[:, :, None] + U[..., :-1].abs() @ rad[:, :, None])[..., 0] + U[..., -1]
    return lo, hi


def forward_bounds(graph: Graph, inputs: InputSet,
                   known: dict[int, tuple[Tensor, Tensor]] | None = None) -> list[tuple[Tensor, Tensor] | None]:
    """Concrete bounds of every live node from forward linear bounds, intersected with interval
    bounds (and ``known`` bounds). Returns a list indexed like ``graph.nodes``."""
    b, n = inputs.batch, inputs.n
    mid = (inputs.lower + inputs.upper) / 2
    rad = (inputs.upper - inputs.lower) / 2
    eye = torch.cat([torch.eye(n, dtype=torch.float64), torch.zeros(n, 1, dtype=torch.float64)], dim=1)
    lin: list[tuple[Tensor, Tensor] | None] = [None] * len(graph.nodes)
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(graph.nodes)
    lin[0] = (eye.expand(b, -1, -1), eye.expand(b, -1, -1))
    out[0] = (inputs.lower, inputs.upper)
    for i in range(1, len(graph.nodes)):
        if i not in graph.live:
            continue
        node = graph.nodes[i]
        op = node.op
        if isinstance(op, ops.LinearOp):
            L, U = _linear(op, [lin[j][0] for j in node.inputs], [lin[j][1] for j in node.inputs])
        elif isinstance(op, ops.MaxGroup):
            l, u = out[node.inputs[0]]
            r = _max_relax(op, l, u)
            Li, Ui = lin[node.inputs[0]]
            sel = r.sel[:, :, None].expand(-1, -1, Li.shape[2])
            L = Li.gather(1, sel)
            Usel = Ui.gather(1, sel)
            U = Usel * r.uw[:, :, None]
            U = U.clone()
            U[:, :, -1] += r.ub
        else:
            l, u = out[node.inputs[0]]
            lw, lb, uw, ub = RELAXATIONS[type(op)](op, l, u)
            Li, Ui = lin[node.inputs[0]]
            L = torch.where((lw >= 0)[:, :, None], Li, Ui) * lw[:, :, None]
            U = torch.where((uw >= 0)[:, :, None], Ui, Li) * uw[:, :, None]
            L, U = L.clone(), U.clone()
            L[:, :, -1] += lb
            U[:, :, -1] += ub
        lin[i] = (L, U)
        lo, hi = _concretize(L, U, mid, rad)
        ilo, ihi = interval_node(op, [out[j] for j in node.inputs])
        lo, hi = torch.maximum(lo, ilo), torch.minimum(hi, ihi)
        if known is not None and i in known:
            lo, hi = torch.maximum(lo, known[i][0]), torch.minimum(hi, known[i][1])
        out[i] = (lo, hi)
    return out
