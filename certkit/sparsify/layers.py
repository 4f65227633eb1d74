"""The layers the VNN LP re-solves, and the linear algebra of one layer (paper 002, section 2).

A *layer* is a :class:`~certkit.graph.ops.Dense` (one row) or :class:`~certkit.graph.ops.Conv`
node whose only consumer is a :class:`~certkit.graph.ops.Relu`. Its pre-activation on sample
``s`` is affine in the layer's parameters, so each output neuron ``i`` (dense) or output
channel ``c`` (convolution: the kernel taps and bias are shared over positions) is a *unit*
with a design matrix ``A_u`` and parameter vector ``v_u = (w_u, b_u)``: the unit's
pre-activations on every sample (and position) are ``A_u v_u``. The LP's variables are
``v_u`` (DESIGN.md section 7: "for conv, the variables are the kernel taps and bias").

Only nets built from affine IR ops and ReLU can be sparsified: with every ReLU state fixed
such a net is affine, which is what the downstream constraints (paper 002, eq. 11) rely on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError, UsageError
from ..graph.graph import Graph, Node
from ..graph.ops import Conv, Dense, Input, LinearOp, Relu


@dataclass(frozen=True)
class LayerRef:
    """Layer ``number`` (1-based, in graph order): linear node ``node`` feeding ReLU ``relu``."""

    number: int
    node: int
    relu: int
    kind: str  # dense | conv


def check_relu_net(g: Graph) -> None:
    """Raise :class:`ModelError` unless every live node is an affine op or a ReLU."""
    bad = [f"{g.nodes[i].name} ({g.nodes[i].op.kind})" for i in sorted(g.live)
           if not isinstance(g.nodes[i].op, (Input, LinearOp, Relu))]
    if bad:
        raise ModelError("sparsify needs a ReLU net (affine layers and ReLU only); unsupported node(s): "
                         + ", ".join(bad))


def find_layers(g: Graph) -> list[LayerRef]:
    """Every Dense/Conv node whose single consumer is a ReLU, in topological order."""
    check_relu_net(g)
    out: list[LayerRef] = []
    for i, n in enumerate(g.nodes):
        if i not in g.live or not isinstance(n.op, (Dense, Conv)):
            continue
        if isinstance(n.op, Dense) and n.op.rows != 1:
            continue
        cons = g.consumers[i]
        if len(cons) == 1 and i != g.output and isinstance(g.nodes[cons[0]].op, Relu):
            kind = "dense" if isinstance(n.op, Dense) else "conv"
            out.append(LayerRef(len(out) + 1, i, cons[0], kind))
    if not out:
        raise ModelError("sparsify found no Dense/Conv layer followed by a ReLU in this net")
    return out


def select_layers(layers: list[LayerRef], spec: str) -> list[LayerRef]:
    """``all`` or a comma list of 1-based layer numbers (``--layers 1,2``)."""
    if spec.strip().lower() == "all":
        return list(layers)
    try:
        wanted = sorted({int(t) for t in spec.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"--layers: expected 'all' or comma-separated layer numbers, got '{spec}'") from None
    bad = [k for k in wanted if not 1 <= k <= len(layers)]
    if bad or not wanted:
        raise UsageError(f"--layers: the net has ReLU layers 1..{len(layers)} (got '{spec}')")
    return [layers[k - 1] for k in wanted]


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class LayerSystem:
    """The affine structure of one layer on a batch of samples.

    ``units`` design matrices are given by ``group_matrix[unit_group[u]]`` (dense: one
    group, shared by every neuron; conv: one per convolution group); row ``r`` of unit ``u``
    is its pre-activation at ``(sample, output position) = divmod(r, positions)``, which is
    flat output index ``out_index(u, position)``.
    """

    kind: str
    n_units: int
    positions: int  # output positions per unit and sample (1 for dense)
    group_matrix: tuple[np.ndarray, ...]  # each (S * positions, n_vars) incl. the ones column
    unit_group: np.ndarray  # (n_units,)
    params: np.ndarray  # (n_units, n_vars): current (w, b) per unit

    @property
    def n_vars(self) -> int:
        return int(self.params.shape[1])

    def matrix(self, u: int) -> np.ndarray:
        return self.group_matrix[int(self.unit_group[u])]

    def out_index(self, u: int) -> np.ndarray:
        """Flat output indices of unit ``u`` over its positions."""
        return u * self.positions + np.arange(self.positions)

    def pre_activations(self, params: np.ndarray | None = None) -> np.ndarray:
        """(S, n_out) pre-activations with ``params`` (default: the current ones)."""
        p = self.params if params is None else params
        S = self.group_matrix[0].shape[0] // self.positions
        out = np.empty((S, self.n_units * self.positions))
        for u in range(self.n_units):
            out[:, self.out_index(u)] = (self.matrix(u) @ p[u]).reshape(S, self.positions)
        return out


def layer_system(op: Dense | Conv, x: np.ndarray) -> LayerSystem:
    """The units of ``op`` on inputs ``x`` (S, n_in)."""
    S = x.shape[0]
    if isinstance(op, Dense):
        A = np.hstack([x, np.ones((S, 1))])
        bias = np.zeros(op.weight.shape[0]) if op.bias is None else op.bias
        params = np.hstack([op.weight, bias[:, None]])
        return LayerSystem("dense", op.weight.shape[0], 1, (A,), np.zeros(op.weight.shape[0], int), params)
    C, H, W = op.in_shape
    Co, Ho, Wo = op.out_shape
    kh, kw = op.weight.shape[2:]
    t, l, bo, r = op.pads
    xt = torch.as_tensor(x, dtype=torch.float64).reshape(S, C, H, W)
    xt = F.pad(xt, (l, r, t, bo))
    cols = F.unfold(xt, (kh, kw), dilation=op.dilations, stride=op.strides)  # (S, C*kh*kw, L)
    L = cols.shape[-1]
    if L != Ho * Wo:  # pragma: no cover - the importer computed out_shape the same way
        raise ModelError(f"conv geometry mismatch ({L} positions, expected {Ho * Wo})")
    cols = cols.reshape(S, C, kh * kw, L)
    cg = C // op.groups
    mats = []
    for gidx in range(op.groups):
        block = cols[:, gidx * cg:(gidx + 1) * cg].reshape(S, cg * kh * kw, L).permute(0, 2, 1)
        block = block.reshape(S * L, cg * kh * kw).numpy()
        mats.append(np.hstack([block, np.ones((S * L, 1))]))
    per_group = Co // op.groups
    bias = np.zeros(Co) if op.bias is None else op.bias
    params = np.hstack([op.weight.reshape(Co, -1), bias[:, None]])
    return LayerSystem("conv", Co, Ho * Wo, tuple(mats), np.arange(Co) // per_group, params)


def with_params(op: Dense | Conv, params: np.ndarray) -> Dense | Conv:
    """``op`` with new (w, b) per unit (the layout of :func:`layer_system`)."""
    w = params[:, :-1].reshape(op.weight.shape)
    b = params[:, -1].copy()
    return dataclasses.replace(op, weight=np.ascontiguousarray(w), bias=b)


def replace_node(g: Graph, i: int, op) -> Graph:
    nodes = list(g.nodes)
    nodes[i] = Node(nodes[i].name, op, nodes[i].inputs)
    return dataclasses.replace(g, nodes=tuple(nodes))


def values(g: Graph, x: np.ndarray) -> list[np.ndarray]:
    """Every node's value on the batch ``x`` (float64)."""
    with torch.no_grad():
        vals = g.forward(torch.as_tensor(np.asarray(x, dtype=np.float64)), keep=True)
    return [v.numpy() if v is not None else None for v in vals]


def nonzeros(op: Dense | Conv) -> int:
    return int(np.count_nonzero(op.weight) + (0 if op.bias is None else np.count_nonzero(op.bias)))


def n_params(op: Dense | Conv) -> int:
    return int(op.weight.size + (0 if op.bias is None else op.bias.size))
