"""Branch and bound by input splitting (DESIGN.md section 3), for low-dimensional inputs.

Domains are sub-boxes of the property's box, bounded in batches with DeepPoly
(intermediate bounds intersected with interval bounds); the domains DeepPoly
leaves open get a few alpha-CROWN steps (per-domain slopes, intermediate
bounds optimised too), which cuts the tree by an order of magnitude on ACAS Xu's
deep nets. A domain is closed when
every disjunct has a row whose lower bound on ``C y - d`` exceeds the
floating-point margin.

Branching looks ahead: an open domain is bisected along each candidate
dimension (the ``lookahead`` dimensions with the largest ``|a_i| * width_i``,
``a`` being the input coefficients of the worst row's linear bound, the
"gradient x width" score) and all the children are bounded in one batch; the
dimension whose worse child has the best value is kept, and only its open
children are queued (with their bounds already known). The minimiser of each
worst row's linear bound and the centre of every child are tried as
counterexamples; a hit counts only after onnxruntime confirms it. The property
holds when no open domain is left.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..bounds.deeppoly import BoundState
from ..graph.graph import Graph
from ..spec.sets import InputSet
from ..spec.spec import Property
from ..tolerances import fp_margin
from .falsify import objective
from .witness import OnnxRunner, Witness, validate

Tensor = torch.Tensor


@dataclass(frozen=True)
class SplitConfig:
    """Options of input splitting."""

    batch: int = 64  # domains expanded per iteration (each gives 2 * lookahead children)
    lookahead: int = 2  # candidate dimensions tried per domain
    alpha_iterations: int = 5  # alpha-CROWN steps on domains DeepPoly leaves open (0: DeepPoly only)
    alpha_lr: float = 0.3
    max_domains: int = 50_000_000


@dataclass
class SplitOutcome:
    status: str  # verified | falsified | timeout | unknown
    witness: Witness | None = None
    domains: int = 0  # domains bounded
    iterations: int = 0
    max_queue: int = 0


@dataclass
class _Bounded:
    """A batch of bounded domains."""

    lo: Tensor
    hi: Tensor
    value: Tensor  # (b,) min over disjuncts of the best row slack minus margin (> 0: closed)
    a: Tensor  # (b, n) input coefficients of the worst open row's linear bound


class _Problem:
    def __init__(self, graph: Graph, prop: Property, prop_index: int, runner: OnnxRunner,
                 cfg: SplitConfig) -> None:
        Cn, dn, owner = prop.stacked()
        self.graph, self.prop, self.k, self.runner = graph, prop, prop_index, runner
        self.C, self.d = torch.as_tensor(Cn), torch.as_tensor(dn)
        self.owner = owner
        self.own = torch.as_tensor(owner)
        self.K = len(prop.disjuncts)
        self.domains = 0
        self.cfg = cfg
        self.deadline: float | None = None  # alpha-CROWN steps stop there

    def bound(self, lo: Tensor, hi: Tensor) -> tuple[_Bounded, Witness | None]:
        """Bound a batch of boxes: DeepPoly for all, then alpha-CROWN for those still open."""
        self.domains += lo.shape[0]
        with torch.no_grad():
            mid = (lo + hi) / 2
            y_c = self.graph.forward(mid)
            value, a = self._crown(lo, hi, y_c)
        if self.cfg.alpha_iterations:
            open_ = torch.nonzero(value <= 0).flatten()
            if open_.numel():
                v2, a2 = self._alpha(lo[open_], hi[open_], y_c[open_])
                better = v2 > value[open_]
                value = value.clone()
                a = a.clone()
                value[open_] = torch.where(better, v2, value[open_])
                a[open_] = torch.where(better[:, None], a2, a[open_])
        with torch.no_grad():  # counterexample candidates: each centre and worst-row minimiser
            vert = torch.where(a >= 0, lo, hi)
            cand = torch.cat([mid, vert])
            y = torch.cat([y_c, self.graph.forward(vert)])
            v = objective(y[:, None, :], self.C.expand(cand.shape[0], -1, -1),
                          self.d.expand(cand.shape[0], -1), self.owner, self.K)[:, 0]
        hits = torch.nonzero(v <= 1e-6 * (1 + v.abs())).flatten()
        w = validate(self.runner, self.prop, self.k, cand[hits[:64]].numpy()) if hits.numel() else None
        return _Bounded(lo, hi, value, a), w

    def _value(self, y_c: Tensor, low: Tensor, A_in: Tensor) -> tuple[Tensor, Tensor]:
        """value (b,): min over disjuncts of the best row's slack beyond the margin; a: worst row's
        input coefficients."""
        b = low.shape[0]
        slack = low - self.d - fp_margin(self.graph.depth, self.C, y_c, low)  # > 0: the row is proven
        per = torch.full((b, self.K), float("-inf"), dtype=slack.dtype)
        per = per.scatter_reduce(1, self.own.expand(b, -1), slack, "amax")
        worst = torch.where(slack > 0, torch.full_like(slack, float("inf")), slack).argmin(dim=1)
        return per.min(dim=1).values, A_in[torch.arange(b), worst]

    def _crown(self, lo: Tensor, hi: Tensor, y_c: Tensor) -> tuple[Tensor, Tensor]:
        S = InputSet(lo, hi)
        st = BoundState(self.graph, S, intersect=True)
        A_in, const = st.backsub(self.graph.output, self.C.expand(lo.shape[0], -1, -1))
        return self._value(y_c, S.concretize_lower(A_in, const), A_in)

    def _alpha(self, lo: Tensor, hi: Tensor, y_c: Tensor) -> tuple[Tensor, Tensor]:
        from ..bounds.alpha import alpha_lower

        S = InputSet(lo, hi)
        low, st = alpha_lower(self.graph, S, self.C, iterations=self.cfg.alpha_iterations,
                              keep_state=True, lr=self.cfg.alpha_lr, deadline=self.deadline)
        with torch.no_grad():
            A_in, _ = st.backsub(self.graph.output, self.C.expand(lo.shape[0], -1, -1), tag="out")
            return self._value(y_c, low, A_in.detach())


def input_split(graph: Graph, prop: Property, prop_index: int, runner: OnnxRunner, deadline: float | None,
                cfg: SplitConfig = SplitConfig()) -> SplitOutcome:
    """Decide one property by input splitting; see the module docstring."""
    if prop.stacked()[0].shape[0] == 0:
        return SplitOutcome("unknown")
    batch, lookahead, max_domains = cfg.batch, cfg.lookahead, cfg.max_domains
    pb = _Problem(graph, prop, prop_index, runner, cfg)
    pb.deadline = deadline
    out = SplitOutcome("verified")
    root, w = pb.bound(torch.as_tensor(prop.lower)[None], torch.as_tensor(prop.upper)[None])
    if w is not None:
        return SplitOutcome("falsified", w, pb.domains, 0, 0)
    queue = root if bool(root.value[0] <= 0) else None
    n = graph.n_inputs
    while queue is not None and queue.lo.shape[0]:
        if deadline is not None and time.monotonic() > deadline:
            out.status = "timeout"
            break
        if pb.domains > max_domains:
            out.status = "unknown"
            break
        out.iterations += 1
        take = _Bounded(*(t[-batch:] for t in (queue.lo, queue.hi, queue.value, queue.a)))
        queue = _Bounded(*(t[:-batch] for t in (queue.lo, queue.hi, queue.value, queue.a)))
        m = take.lo.shape[0]
        width = take.hi - take.lo
        score = torch.where(width > 0, take.a.abs() * width, torch.full_like(width, -1.0))
        L = min(lookahead, n)
        dims = score.topk(L, dim=1).indices  # (m, L)
        lo_d, hi_d = take.lo.gather(1, dims[:, :1]), take.hi.gather(1, dims[:, :1])
        if bool(((lo_d + hi_d) / 2 <= lo_d).any() or ((lo_d + hi_d) / 2 >= hi_d).any()):
            out.status = "unknown"  # a domain too small to bisect that the bounds cannot close
            break
        # children: (m, L, 2) boxes
        lo = take.lo[:, None, None, :].repeat(1, L, 2, 1)
        hi = take.hi[:, None, None, :].repeat(1, L, 2, 1)
        ar_m = torch.arange(m)[:, None].expand(m, L)
        ar_l = torch.arange(L)[None, :].expand(m, L)
        mid = (take.lo.gather(1, dims) + take.hi.gather(1, dims)) / 2
        hi[ar_m, ar_l, 0, dims] = mid
        lo[ar_m, ar_l, 1, dims] = mid
        kids, w = pb.bound(lo.reshape(-1, n), hi.reshape(-1, n))
        if w is not None:
            out.status, out.witness = "falsified", w
            break
        # a child lies inside its parent, so the parent's value is a floor (DeepPoly is not
        # monotone in the box); pick the split that improves the worse child most, then the
        # better one; a dimension too narrow to split is never picked
        val = torch.maximum(kids.value.reshape(m, L, 2), take.value[:, None, None])
        kids.value = val.reshape(-1)
        gain = (val.min(dim=2).values - take.value[:, None]) + 0.5 * (val.max(dim=2).values - take.value[:, None])
        narrow = width.gather(1, dims) <= 1e-9 * width.max(dim=1, keepdim=True).values
        best = torch.where(narrow, torch.full_like(gain, float("-inf")), gain).argmax(dim=1)  # (m,)
        pick = (torch.arange(m) * L + best)[:, None] * 2 + torch.arange(2)[None, :]
        pick = pick.reshape(-1)
        keep = pick[kids.value[pick] <= 0]
        new = _Bounded(kids.lo[keep], kids.hi[keep], kids.value[keep], kids.a[keep])
        queue = new if queue.lo.shape[0] == 0 else _Bounded(
            *(torch.cat([q, c]) for q, c in zip((queue.lo, queue.hi, queue.value, queue.a),
                                                (new.lo, new.hi, new.value, new.a))))
        out.max_queue = max(out.max_queue, queue.lo.shape[0])
    out.domains = pb.domains
    return out
