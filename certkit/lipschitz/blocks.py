"""Norms of linear blocks (runs of single-input linear ops in a chain), exact where small.

A block small enough (``n_in * n_out <= EXPLICIT_MAX``) is formed explicitly by applying
its ops to the identity, and its norm computed by :func:`certkit.lipschitz.norms.matrix_norm`
(so input normalisation, BatchNorm folded into a Scale, pooling and the next Dense are
accounted for together, exactly). Larger blocks get the product of their ops' norms.
"""
from __future__ import annotations

import numpy as np
import torch

from ..graph.ops import Conv, Dense, LinearOp, Scale, Select
from .norms import NormBound, conv_norm2, matrix_norm, nonneg_norm_inf
from .structure import Structure, select_norm

EXPLICIT_MAX = 4_000_000


def explicit(apply, n_in: int) -> np.ndarray:
    """The (n_out, n_in) matrix of a linear map given by ``apply`` on batches."""
    cols = []
    for s in range(0, n_in, 1024):
        e = torch.zeros(min(1024, n_in - s), n_in, dtype=torch.float64)
        e[torch.arange(e.shape[0]), torch.arange(s, s + e.shape[0])] = 1.0
        with torch.no_grad():
            cols.append(apply(e).numpy())
    return np.concatenate(cols, axis=0).T


def block_matrix(ops: list[LinearOp], n_in: int) -> np.ndarray:
    """The explicit (n_out, n_in) matrix of ``ops`` applied in order (biases dropped)."""
    def apply(e):
        for op in ops:
            e = op.apply(e)
        return e
    return explicit(apply, n_in)


def segment_norm(st: Structure, start: int, end: int, p: float) -> NormBound:
    """``||M||_p`` of the linear part of ``st`` between cut nodes ``start`` and ``end``:
    exact when small, else the product of its ops' norms (a chain) or, with branches,
    ``||M||_2 <= sqrt(||M||_1 ||M||_inf)`` with both from the entrywise bound ``|M| <= P``."""
    if start == end:
        return NormBound(1.0, 1.0)
    n_in, n_out = st.size(start), st.size(end)
    if n_in * n_out <= EXPLICIT_MAX:
        return matrix_norm(explicit(lambda e: st.linear_forward(e, start, end), n_in), p)
    nodes = st.nodes_between(start, end)
    g = st.graph
    prev, chain = start, True
    for i in nodes:
        chain = chain and g.nodes[i].inputs == (prev,)
        prev = i
    if chain:
        return block_norm([g.nodes[i].op for i in nodes], [n_in] + [st.size(i) for i in nodes], p)
    row = nonneg_norm_inf(lambda v: st.abs_forward(v, start, end), n_in).upper
    if p == float("inf"):
        return NormBound(0.0, row)
    col = float(st.abs_vjp(torch.ones(1, n_out, dtype=torch.float64), start, end).max()) * (1 + 1e-9)
    return NormBound(0.0, float(np.sqrt(row * col)))


def op_norm(op: LinearOp, n_in: int, n_out: int, p: float) -> NormBound:
    """``||M||_p`` of one linear op (upper end sound)."""
    inf = p == float("inf")
    if isinstance(op, Scale):
        r = float(np.abs(op.scale).max()) if np.size(op.scale) else 0.0
        return NormBound(r, r)
    if isinstance(op, Select):
        r = select_norm(op, p)
        return NormBound(r, r)
    if isinstance(op, Dense):
        return matrix_norm(op.weight, p)
    if n_in * n_out <= EXPLICIT_MAX:
        return matrix_norm(block_matrix([op], n_in), p)
    if isinstance(op, Conv):
        if inf:  # max row sum: at most the largest absolute kernel sum of an output channel
            r = float(np.abs(op.weight).sum(axis=(1, 2, 3)).max())
            return NormBound(0.0, r * (1 + 1e-12))
        return conv_norm2(op)
    raise KeyError(op.kind)


def block_norm(ops: list[LinearOp], sizes: list[int], p: float) -> NormBound:
    """``||M_k ... M_1||_p`` for a run of linear ops; ``sizes`` = [n_in, n_1, ..., n_out]."""
    if not ops:
        return NormBound(1.0, 1.0)
    n_in, n_out = sizes[0], sizes[-1]
    if n_in * n_out <= EXPLICIT_MAX:
        return matrix_norm(block_matrix(ops, n_in), p)
    lo, up = 0.0, 1.0
    for op, a, b in zip(ops, sizes[:-1], sizes[1:]):
        nb = op_norm(op, a, b, p)
        up *= nb.upper
    return NormBound(lo, up)
