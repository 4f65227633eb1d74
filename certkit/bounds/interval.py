"""Interval bound propagation (IBP), DESIGN.md section 2.

Affine maps push the box as centre/radius (``M c + b``, ``|M| r``); monotone
activations map the end points; MaxGroup takes the max of both ends. Sound for
any input set through its enclosing box. Every node's interval is widened by its
floating-point error (:mod:`certkit.bounds.fperror`), so the bounds hold for the
model as onnxruntime computes it.
"""
from __future__ import annotations

import torch

from ..graph.graph import Graph
from ..graph.ops import Activation, Bilinear, LinearOp, MaxGroup, MaxMin
from ..spec.sets import InputSet

Tensor = torch.Tensor


def interval_node(op, ins: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Interval transfer function of one op."""
    if isinstance(op, LinearOp):
        mids = [(lo + hi) / 2 for lo, hi in ins]
        rads = [(hi - lo) / 2 for lo, hi in ins]
        m = op.apply(*mids)  # the affine part (an ImplicitLayer's forward is not: its deviation is its error)
        c = op.bias_vector()
        if c is not None:
            m = m + torch.as_tensor(c, dtype=m.dtype)
        r = op.apply_abs(*rads)
        lo, hi = m - r, m + r
        if not bool(torch.isfinite(r).all()):  # inf - inf, 0 * inf from infinite bounds: no bound
            lo = torch.where(torch.isnan(lo), torch.full_like(lo, float("-inf")), lo)
            hi = torch.where(torch.isnan(hi), torch.full_like(hi, float("inf")), hi)
        return lo, hi
    if isinstance(op, (Activation, MaxGroup, MaxMin)):
        return op.interval(*ins[0])
    if isinstance(op, Bilinear):  # several inputs: the box of all of them
        return op.interval(*ins)
    raise NotImplementedError(f"no interval rule for {op.kind}")


def interval_bounds(graph: Graph, inputs: InputSet, known: list | None = None,
                    errors: dict | None = None) -> list[tuple[Tensor, Tensor] | None]:
    """IBP bounds of every live node of the computed (floating-point) network: a list indexed like
    ``graph.nodes``. ``known``: bounds already at hand (a list indexed like the nodes, None where
    missing); they are kept, and only the missing nodes are computed from them. ``errors``: a dict
    that receives each computed node's rounding-error bound."""
    from .fperror import compute_steps, interval_and_error, precision_of

    p, steps = precision_of(graph), compute_steps(graph)
    out: list[tuple[Tensor, Tensor] | None] = list(known) if known else [None] * len(graph.nodes)
    if out[0] is None:
        out[0] = (inputs.lower, inputs.upper)
    for i in range(1, len(graph.nodes)):
        if i not in graph.live or out[i] is not None:
            continue
        n = graph.nodes[i]
        lo, hi, err = interval_and_error(n.op, [out[j] for j in n.inputs], p, steps)
        out[i] = (lo, hi)
        if errors is not None and err is not None:
            errors[i] = err
    return out


def rows_lower(C: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``C+ lo + C- hi`` (b, s) for rows ``C`` (b, s, n) over the box ``[lo, hi]`` (b, n). An infinite
    bound gives ``-inf`` to the rows that use it and nothing (not NaN) to the others."""
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    if bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all()):
        return torch.einsum("bsn,bn->bs", Cp, lo) + torch.einsum("bsn,bn->bs", Cn, hi)
    fl, fh = torch.isfinite(lo), torch.isfinite(hi)
    low = torch.einsum("bsn,bn->bs", Cp, torch.where(fl, lo, torch.zeros_like(lo))) \
        + torch.einsum("bsn,bn->bs", Cn, torch.where(fh, hi, torch.zeros_like(hi)))
    hit = torch.einsum("bsn,bn->bs", (Cp > 0).to(C.dtype), (~fl).to(C.dtype)) \
        + torch.einsum("bsn,bn->bs", (Cn < 0).to(C.dtype), (~fh).to(C.dtype))
    return torch.where(hit > 0, torch.full_like(low, float("-inf")), low)
