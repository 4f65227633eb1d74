"""The domains of ReLU splitting (DESIGN.md section 3): batches of split sets with their bounds,
slopes and multipliers, and which nets ReLU splitting handles."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bounds.relaxations import RELAXATIONS
from ..graph import ops
from ..graph.graph import Graph

Tensor = torch.Tensor


def supports(graph: Graph) -> bool:
    """ReLU splitting needs ReLUs, and a DeepPoly relaxation for every other op: the other nonlinear
    ops (a transformer's softmax, a Sigmoid, a MaxPool) are never split; every domain bounds them with
    the root's bounds of their inputs (sound on every domain, a subset of the root's box)."""
    live = [graph.nodes[i].op for i in graph.live]
    return any(isinstance(op, ops.Relu) for op in live) and \
        all(isinstance(op, (ops.Input, ops.LinearOp, ops.MaxGroup)) or type(op) in RELAXATIONS for op in live)


def piecewise_linear(graph: Graph) -> bool:
    """Only ReLUs and linear ops: a domain with every ReLU split is an LP (:mod:`certkit.verify.relu_leaves`)."""
    return all(isinstance(graph.nodes[i].op, (ops.Input, ops.LinearOp, ops.Relu)) for i in graph.live)


def fixed_nodes(graph: Graph) -> list[int]:
    """The inputs of the nonlinear ops other than ReLU (whose bounds the domains take from the root)."""
    out: set[int] = set()
    for i in graph.live:
        op = graph.nodes[i].op
        if not isinstance(op, (ops.Input, ops.LinearOp, ops.Relu)):
            out.update(graph.nodes[i].inputs)
    return sorted(out - {0})


def relu_nodes(graph: Graph) -> list[int]:
    """The ReLU nodes the output depends on, in topological order."""
    return [i for i, n in enumerate(graph.nodes) if isinstance(n.op, ops.Relu) and i in graph.live]


@dataclass
class Domains:
    """A batch of domains (first axis of every tensor)."""

    splits: dict[int, Tensor]  # ReLU node -> (N, n) int8 in {-1, 0, 1}
    bounds: dict[int, tuple[Tensor, Tensor]]  # pre-activation node -> (N, n) lower, upper
    alpha: dict[int, Tensor]  # ReLU node -> (N, s, n) lower slopes of the final rows
    beta: dict[int, Tensor]  # ReLU node -> (N, s, n) split multipliers
    value: Tensor  # (N,) best row slack minus margin (> 0: closed)
    branch: Tensor  # (N, 2) (position in the ReLU list, neuron); (-1, -1) when none is left
    ids: Tensor  # (N,) int64: domain ids in the proof log
    #: (N,) int64: generations in a row whose bound rose by less than ReluSplitConfig.milp_gain of the
    #: deficit (a domain that stops improving goes to the MILP); -1 once its MILP was tried
    stall: Tensor | None = None

    def __post_init__(self) -> None:
        if self.stall is None:
            self.stall = torch.zeros(self.value.shape[0], dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def bounds_list(self, n_nodes: int) -> list:
        """The intermediate bounds as a BoundState wants them: a list indexed by node."""
        out: list = [None] * n_nodes
        for j, lu in self.bounds.items():
            out[j] = lu
        return out

    def map(self, fn) -> "Domains":
        return Domains({r: fn(t) for r, t in self.splits.items()},
                        {j: (fn(lu[0]), fn(lu[1])) for j, lu in self.bounds.items()},
                        {r: fn(t) for r, t in self.alpha.items()},
                        {r: fn(t) for r, t in self.beta.items()},
                        fn(self.value), fn(self.branch), fn(self.ids), fn(self.stall))

    @staticmethod
    def cat(a: "Domains | None", b: "Domains") -> "Domains":
        if a is None or len(a) == 0:
            return b
        return Domains({r: torch.cat([a.splits[r], t]) for r, t in b.splits.items()},
                        {j: (torch.cat([a.bounds[j][0], lu[0]]), torch.cat([a.bounds[j][1], lu[1]]))
                         for j, lu in b.bounds.items()},
                        {r: torch.cat([a.alpha[r], t]) for r, t in b.alpha.items()},
                        {r: torch.cat([a.beta[r], t]) for r, t in b.beta.items()},
                        torch.cat([a.value, b.value]), torch.cat([a.branch, b.branch]),
                        torch.cat([a.ids, b.ids]), torch.cat([a.stall, b.stall]))


def _pairs(a: Domains, b: Domains):
    """The tensors of ``a`` and ``b`` side by side (the same fields and keys)."""
    for r in a.splits:
        yield a.splits[r], b.splits[r]
    for j in a.bounds:
        yield a.bounds[j][0], b.bounds[j][0]
        yield a.bounds[j][1], b.bounds[j][1]
    for r in a.alpha:
        yield a.alpha[r], b.alpha[r]
    for r in a.beta:
        yield a.beta[r], b.beta[r]
    yield a.value, b.value
    yield a.branch, b.branch
    yield a.ids, b.ids
    yield a.stall, b.stall


def _narrow(t: Tensor) -> Tensor:
    """``t`` as float32 where that loses nothing (the slopes and multipliers are float32-representable
    throughout: :func:`certkit.verify.relu_leaves._f32`), else as it is."""
    if t.dtype != torch.float64:
        return t
    t32 = t.float()
    return t32 if torch.equal(t32.double(), t) else t


@dataclass(frozen=True)
class DomainLayout:
    """What the queue keeps of a domain: only the entries of the neurons unstable at the root. A domain's
    splits, bounds, slopes and multipliers differ from the root's only there -- branching picks free
    unstable neurons, a domain's bounds are the root's clamped by its splits (or tightened:
    ``ReluSplitConfig.refine_intermediate``, which cannot make a stable neuron unstable), a multiplier moves
    only where its neuron is split, a slope only where its neuron is unstable (elsewhere its gradient is 0)
    -- so :meth:`unpack` restores every other entry from the root. The slopes and multipliers are kept in
    float32 where that is exact (they are float32-representable by construction). On oval21's cifar_wide_kw
    img3458 a queued domain took 206 KB (6,244 ReLUs, float64); 1,609 of them unstable at the root: 40 KB.
    Only the warm start of a domain's optimisation rests on what the queue keeps; every bound is computed
    afresh from it, and a closed leaf records the parameters its bound used."""

    keep: dict[int, Tensor]  # ReLU node -> indices of its neurons unstable at the root
    pre: dict[int, int]  # ReLU node -> its pre-activation node
    root: Domains  # the root domain (one row): every entry outside ``keep``

    @staticmethod
    def of(root: Domains, relus: list[int], pre: list[int]) -> "DomainLayout":
        keep = {}
        for r, j in zip(relus, pre):
            l, u = root.bounds[j]
            keep[r] = torch.nonzero((~((l >= 0) | (u <= 0))).any(dim=0)).flatten()  # NaN bounds: kept
        return DomainLayout(keep, dict(zip(relus, pre)), root.map(lambda t: t[:1].clone()))

    def pack(self, dom: Domains) -> Domains:
        """The kept entries of ``dom`` (the slopes and multipliers narrowed to float32 where exact)."""
        k = self.keep
        return Domains({r: dom.splits[r][..., k[r]] for r in k},
                       {j: tuple(b[..., k[r]] for b in dom.bounds[j]) for r, j in self.pre.items()},
                       {r: _narrow(dom.alpha[r][..., k[r]]) for r in k},
                       {r: _narrow(dom.beta[r][..., k[r]]) for r in k},
                       dom.value, dom.branch, dom.ids, dom.stall)

    def unpack(self, dom: Domains) -> Domains:
        """Whole domains again: the kept entries of ``dom`` over the root's."""
        n, k, p, root = len(dom), self.keep, self.pre, self.root

        def fill(base: Tensor, part: Tensor, idx: Tensor) -> Tensor:
            out = base.expand(n, *base.shape[1:]).clone()
            out[..., idx] = part.to(out.dtype)
            return out

        splits, alpha, beta, bounds = {}, {}, {}, {}
        for r, j in p.items():
            splits[r] = fill(root.splits[r], dom.splits[r], k[r])
            alpha[r] = fill(root.alpha[r], dom.alpha[r], k[r])
            beta[r] = fill(root.beta[r], dom.beta[r], k[r])
            bounds[j] = tuple(fill(b, part, k[r]) for b, part in zip(root.bounds[j], dom.bounds[j]))
        return Domains(splits, bounds, alpha, beta, dom.value, dom.branch, dom.ids, dom.stall)


class DomainQueue:
    """The open domains of a branch-and-bound search, taken worst first, without copying the whole queue
    at every step: the domains sit in slots of tensors whose capacity doubles, a taken one is marked dead,
    and the live ones are packed together only when the slots run out (amortised, a domain is copied a
    constant number of times). Before, every step re-indexed the whole queue to take a batch and
    concatenated the children to it: on oval21's cifar_wide_kw (img3458) those copies were 38% of a 100 s
    search (``torch.cat`` 17.4 s, the re-indexing 17.1 s; 11,444 domains)."""

    MIN_CAPACITY = 64

    def __init__(self, doms: Domains | None = None, layout: DomainLayout | None = None) -> None:
        self._layout = layout  # how a domain is kept (its entries at the root's unstable neurons); None: whole
        self._store: Domains | None = None
        self._alive = torch.zeros(0, dtype=torch.bool)
        self._used = 0  # slots written since the last packing
        self._count = 0  # live domains
        self.push(doms)

    def __len__(self) -> int:
        return self._count

    def push(self, doms: Domains | None) -> None:
        """Add ``doms`` (any number, also none)."""
        k = 0 if doms is None else len(doms)
        if k == 0:
            return
        if self._layout is not None:
            doms = self._layout.pack(doms)
        if self._store is None or self._used + k > len(self._alive) or \
                any(torch.promote_types(d.dtype, t.dtype) != d.dtype for d, t in _pairs(self._store, doms)):
            self._pack(doms, k)
        sl = slice(self._used, self._used + k)
        for dst, src in _pairs(self._store, doms):
            dst[sl] = src
        self._alive[sl] = True
        self._used += k
        self._count += k

    def _pack(self, like: Domains, k: int) -> None:
        """New slots for the live domains and ``k`` more (twice as many), the live ones first; each tensor
        of the dtype that holds both the live domains' and ``like``'s (as ``torch.cat`` would: a float64
        bound is never rounded into a float32 slot)."""
        cap = max(self.MIN_CAPACITY, 2 * (self._count + k))
        store = like.map(lambda t: t.new_empty((cap, *t.shape[1:])))
        if self._store is not None:
            for dst, old in _pairs(store, self._store):
                if dst.dtype != old.dtype:
                    dst.data = dst.to(torch.promote_types(dst.dtype, old.dtype))
        if self._store is not None and self._count:
            live = torch.nonzero(self._alive[:self._used]).flatten()
            for dst, src in _pairs(store, self._store):
                dst[:self._count] = src[live]
        self._store = store
        self._alive = torch.zeros(cap, dtype=torch.bool)
        self._alive[:self._count] = True
        self._used = self._count

    def pop(self, m: int) -> Domains:
        """The ``m`` live domains of least value (fewer when fewer are left), in increasing value; they
        leave the queue."""
        if self._count == 0:
            raise IndexError("pop from an empty DomainQueue")
        live = torch.nonzero(self._alive[:self._used]).flatten()
        take = live[torch.argsort(self._store.value[live], stable=True)[:m]]
        out = self._store.map(lambda t: t[take])
        self._alive[take] = False
        self._count -= len(take)
        return out if self._layout is None else self._layout.unpack(out)

    def nbytes(self) -> int:
        """Bytes the slots hold (dead and spare ones included)."""
        if self._store is None:
            return 0
        return sum(t.element_size() * t.numel() for t, _ in _pairs(self._store, self._store))

    def lowest(self) -> float:
        """The least value of a live domain (:func:`lowest`)."""
        return lowest(self.values())

    def values(self) -> Tensor:
        """The live domains' values (no order)."""
        if self._store is None:
            return torch.zeros(0, dtype=torch.float64)
        return self._store.value[:self._used][self._alive[:self._used]]


def lowest(values: Tensor) -> float:
    """The least of the domains' values, NaN ones aside (NaN when none is left): the figure a search's
    progress records show, which must pass 0 for every open domain to close."""
    v = values[~torch.isnan(values)]
    return float(v.min()) if v.numel() else float("nan")


def free_unstable(dom: Domains, relus: list[int], pre: list[int]) -> Tensor:
    """(N,) the unstable ReLUs each domain leaves unsplit (the binaries of its MILP)."""
    n = torch.zeros(len(dom), dtype=torch.int64)
    for r, j in zip(relus, pre):
        l, u = dom.bounds[j]
        n += ((l < 0) & (u > 0) & (dom.splits[r] == 0)).sum(dim=1)
    return n


def branch_scores(dom: Domains, record: dict, relus: list[int], pre: list[int]) -> Tensor:
    """BaBSR-like scores (Bunel et al. 2020) of every neuron of every ReLU, concatenated in the order
    of ``relus`` (N, total): the relaxation gap a neuron costs the final bound, ``|coefficient| x
    intercept``, from the coefficients the final rows' back-substitution recorded at each ReLU;
    0 where a neuron is stable or split (never a candidate)."""
    parts = []
    for r, j in zip(relus, pre):
        l, u = dom.bounds[j]
        free = (l < 0) & (u > 0) & (dom.splits[r] == 0)
        A = record[r].sum(dim=1) if r in record else torch.ones_like(l)  # (N, n) over the rows
        width = (u - l).clamp(min=1e-30)
        intercept = (u * -l / width).clamp(min=0)
        score = A.clamp(max=0).abs() * intercept + 1e-3 * A.abs() * torch.minimum(u, -l).clamp(min=0)
        parts.append(torch.where(free, torch.nan_to_num(score, nan=0.0) + 1e-12, torch.zeros_like(score)))
    return torch.cat(parts, dim=1)


def _positions(flat: Tensor, sizes: list[int]) -> Tensor:
    """Flat neuron indices of :func:`branch_scores` -> (..., 2) (position in the ReLU list, neuron)."""
    ends = torch.cumsum(torch.as_tensor(sizes), 0)
    p = torch.bucketize(flat, ends, right=True)
    starts = ends - torch.as_tensor(sizes)
    return torch.stack([p, flat - starts[p.clamp(max=len(sizes) - 1)]], dim=-1)


def branch_candidates(dom: Domains, record: dict, relus: list[int], pre: list[int], k: int) -> Tensor:
    """Per domain the ``k`` free unstable ReLUs of largest :func:`branch_scores`, best first:
    (N, k, 2) (position in ``relus``, neuron), (-1, -1) where a domain has fewer."""
    scores = branch_scores(dom, record, relus, pre)
    k = min(k, scores.shape[1])
    s, flat = scores.topk(k, dim=1)
    pos = _positions(flat, [dom.splits[r].shape[1] for r in relus])
    return torch.where((s > 0)[..., None], pos, torch.full_like(pos, -1))


def choose_branch(dom: Domains, record: dict, relus: list[int], pre: list[int]) -> Tensor:
    """Per domain, the unstable free ReLU with the largest :func:`branch_scores` (BaBSR): (N, 2)
    (position in ``relus``, neuron), or (-1, -1) when every ReLU is fixed."""
    return branch_candidates(dom, record, relus, pre, 1)[:, 0]
