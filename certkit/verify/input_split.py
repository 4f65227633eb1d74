"""Branch and bound by input splitting (DESIGN.md section 3), for low-dimensional inputs.

The open domains (sub-boxes of the property's box) are bounded in batches with
DeepPoly (intermediate bounds intersected with IBP). A domain is closed when
every disjunct has a row whose lower bound on ``C y - d`` exceeds the
floating-point margin. An open domain is bisected along the dimension with the
largest ``|a_i| * width_i``, ``a`` being the input coefficients of its worst
row's linear lower bound (the "gradient x width" score). The point that
minimises that linear bound, and the domain centre, are tried as
counterexamples; a hit is confirmed with onnxruntime before anything is
reported. The property holds when no open domain is left.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..bounds.deeppoly import BoundState
from ..graph.graph import Graph
from ..spec.sets import InputSet
from ..spec.spec import Property
from ..tolerances import FP_ABS, FP_REL
from .falsify import objective
from .witness import OnnxRunner, Witness, validate


@dataclass
class SplitOutcome:
    status: str  # verified | falsified | timeout | unknown
    witness: Witness | None = None
    domains: int = 0  # domains bounded
    iterations: int = 0
    max_queue: int = 0


def _margins(depth: int, C: torch.Tensor, y_c: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    scale = y_c.abs() @ C.abs().T + low.abs()
    return depth * (FP_ABS + FP_REL * scale)


def input_split(graph: Graph, prop: Property, prop_index: int, runner: OnnxRunner, deadline: float | None,
                batch: int = 256, max_domains: int = 5_000_000) -> SplitOutcome:
    """Decide one property by input splitting; see the module docstring."""
    Cn, dn, owner = prop.stacked()
    if Cn.shape[0] == 0:
        return SplitOutcome("unknown")
    C = torch.as_tensor(Cn)
    d = torch.as_tensor(dn)
    K = len(prop.disjuncts)
    own = torch.as_tensor(owner)
    out = SplitOutcome("verified")
    # the queue: input boxes plus, per refined node, bounds proven on the parent domain
    queue: dict = {"lo": torch.as_tensor(prop.lower)[None], "hi": torch.as_tensor(prop.upper)[None]}
    depth = graph.depth
    while queue["lo"].shape[0]:
        if deadline is not None and time.monotonic() > deadline:
            out.status = "timeout"
            return out
        if out.domains > max_domains:
            out.status = "unknown"
            return out
        take = {k: v[-batch:] for k, v in queue.items()}
        queue = {k: v[:-batch] for k, v in queue.items()}
        lo, hi = take["lo"], take["hi"]
        b = lo.shape[0]
        out.iterations += 1
        out.domains += b
        S = InputSet(lo, hi)
        known = {j: (take[("l", j)], take[("u", j)]) for j in {k[1] for k in take if isinstance(k, tuple)}}
        with torch.no_grad():
            st = BoundState(graph, S, intersect=True, known=known)
            A_in, const = st.backsub(graph.output, C.expand(b, -1, -1))
            low = S.concretize_lower(A_in, const)  # (b, s) bounds on C y
            mid = (lo + hi) / 2
            y_c = graph.forward(mid)
            slack = low - d
            ok = slack > _margins(depth, C, y_c, low)
            ruled = _any_per_disjunct(ok, own, K)
            closed = ruled.all(dim=1)
            # candidates: the centre and the minimiser of each open row's linear bound
            worst = torch.where(ok, torch.full_like(slack, float("inf")), slack).argmin(dim=1)
            a = A_in[torch.arange(b), worst]  # (b, n)
            vert = torch.where(a >= 0, lo, hi)
            cand = torch.cat([mid, vert])
            v = objective(graph.forward(cand)[:, None, :], C.expand(cand.shape[0], -1, -1),
                          d.expand(cand.shape[0], -1), owner, K)[:, 0]
        hits = torch.nonzero(v <= 1e-6 * (1 + v.abs())).flatten()
        if hits.numel():
            w = validate(runner, prop, prop_index, cand[hits[:64]].numpy())
            if w is not None:
                out.status, out.witness = "falsified", w
                return out
        open_ = torch.nonzero(~closed).flatten()
        if open_.numel() == 0:
            continue
        lo_o, hi_o, a_o = lo[open_], hi[open_], a[open_]
        width = hi_o - lo_o
        score = a_o.abs() * width
        score = torch.where(width > 0, score, torch.full_like(score, -1.0))
        dim = score.argmax(dim=1)
        ar = torch.arange(open_.numel())
        if bool((width[ar, dim] <= 0).any()):
            out.status = "unknown"  # a degenerate domain that bounds cannot close
            return out
        midv = (lo_o[ar, dim] + hi_o[ar, dim]) / 2
        left_hi = hi_o.clone()
        left_hi[ar, dim] = midv
        right_lo = lo_o.clone()
        right_lo[ar, dim] = midv
        children = {"lo": torch.cat([lo_o, right_lo]), "hi": torch.cat([left_hi, hi_o])}
        for j in st.refined - {0}:
            l, u = st.bounds[j]
            children[("l", j)] = l[open_].repeat(2, 1)
            children[("u", j)] = u[open_].repeat(2, 1)
        if set(children) != set(queue) and queue["lo"].shape[0] == 0:
            queue = {k: v[:0] for k, v in children.items()}
        if set(children) == set(queue):
            queue = {k: torch.cat([queue[k], children[k]]) for k in queue}
        else:  # different refined sets: keep only what both have
            common = set(children) & set(queue)
            queue = {k: torch.cat([queue[k], children[k]]) for k in common}
        out.max_queue = max(out.max_queue, queue["lo"].shape[0])
    return out


def _any_per_disjunct(ok: torch.Tensor, owner: torch.Tensor, K: int) -> torch.Tensor:
    """(b, s) row flags -> (b, K): does some row of disjunct k hold."""
    res = torch.zeros(ok.shape[0], K, dtype=torch.float64)
    res.index_add_(1, owner, ok.double())
    return res > 0
