"""ReLU splitting that re-optimises the intermediate bounds of every domain (DESIGN.md section 3;
issue 13's "intermediate-bound refinement for the layers a split affects").

beta-CROWN (:mod:`certkit.verify.relu_split`) bounds a domain from the root's intermediate bounds,
clamped by its splits, and optimises only the final rows' slopes and multipliers: cheap (about a
millisecond a domain on a 9x200 MLP), but on deep nets the looseness sits in the intermediate
bounds, which a split never tightens there. Here a domain is bounded by alpha-CROWN with *every*
intermediate bound re-optimised (:func:`certkit.bounds.alpha.alpha_lower`), starting from its
parent's bounds with the split neuron's clamped (``l := max(l, 0)`` in the active child, ``u :=
min(u, 0)`` in the inactive one): the split then tightens every layer after it. On ERAN's
mnist_relu_9_200 (image 1385, eps 0.015) one such split of a first-layer neuron lifted the worst
row from -11.1 to -7.5, where beta-CROWN's 13,700 domains in 30 s reached -6.0.

Soundness: the start bounds hold on the domain (the parent's hold on it, and the clamp is the
split), so every bound alpha-CROWN derives from them holds on the domain, and its final linear
bound minimised over the whole box is below the minimum over the domain; the two children cover
their parent (``z >= 0`` or ``z <= 0``). A domain closes through
:func:`certkit.verify.gate.disjunct_values` -- per disjunct, a row above its floating-point margin
-- and a disjunct closed on a domain stays closed on its children (subsets); a domain whose bounds
cross (``l > u`` somewhere) is empty. The rounding-error terms are those of
:class:`~certkit.bounds.deeppoly.BoundState` (the bounds hold for the model as onnxruntime runs it).

Branching: in the first ReLU layer with an unstable neuron, the neuron of largest relaxation gap
times fan-out (early splits tighten the most layers after them; ``benchmarks/relu_split.py``
compares the search with beta-CROWN's). One proof tree covers every disjunct; the certificate's
re-check (:func:`recheck`) replays it from the root, re-deriving each domain's bounds from its
parent's as the search did (nothing the search computed is trusted).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..bounds.alpha import alpha_lower
from ..bounds.forward import start_bounds
from ..bounds.fperror import row_margin
from ..bounds.memory import limit_of
from ..graph import ops
from ..log import SearchProgress
from ..spec.sets import InputSet
from .gate import disjunct_values
from .input_split import root_box
from .proof import ProofTree, RecheckReport, TreeLog, meta_count
from .query import Budget, BudgetExpired, Query
from .relu_domains import lowest, relu_nodes, supports

Tensor = torch.Tensor

#: Leaf kinds of a refined ReLU-splitting proof tree.
LEAF_KINDS = ("bound", "empty")
#: the open domains' bounds (their pre-activation nodes') may take this share of the memory limit
QUEUE_MEMORY = 0.25


@dataclass(frozen=True)
class RefineConfig:
    """Options of ReLU splitting with re-optimised intermediate bounds."""

    iterations: int = 3  # alpha-CROWN steps per batch of children (every intermediate bound re-optimised)
    batch: int = 8  # domains split per iteration (their 2 x batch children are bounded together)
    root_iterations: int = 30  # alpha-CROWN steps at the root
    max_domains: int = 1_000_000


@dataclass
class RefineOutcome:
    status: str  # verified | timeout | unknown
    domains: int = 0
    trees: list[ProofTree] | None = None  # one tree for every disjunct, when verified
    groups: list[list[int]] | None = None  # the disjuncts each tree covers
    witness: None = None  # this search proves; the attacks before it falsify


@dataclass
class _Batch:
    """Domains (first axis): every node's bounds, the disjuncts still open, the worst open
    disjunct's value (> 0 closes), ids in the proof log."""

    bounds: list  # node -> (N, n) lower, upper (None where a node has none)
    open: Tensor  # (N, K) bool
    value: Tensor  # (N,)
    ids: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def nbytes(self) -> int:
        return sum(b[0].numel() * b[0].element_size() * 2 for b in self.bounds if b is not None)

    def take(self, idx: Tensor) -> "_Batch":
        return _Batch([None if b is None else (b[0][idx], b[1][idx]) for b in self.bounds],
                      self.open[idx], self.value[idx], self.ids[idx])

    @staticmethod
    def join(parts: "list[_Batch]") -> "_Batch":
        """The domains of ``parts``, in order."""
        if len(parts) == 1:
            return parts[0]
        return _Batch([None if b is None else (torch.cat([p.bounds[j][0] for p in parts]),
                                               torch.cat([p.bounds[j][1] for p in parts]))
                       for j, b in enumerate(parts[0].bounds)],
                      torch.cat([p.open for p in parts]), torch.cat([p.value for p in parts]),
                      torch.cat([p.ids for p in parts]))


class _Problem:
    """One query's bounding and branching (shared by the search and its re-check)."""

    def __init__(self, query: Query, cfg: RefineConfig, budget: Budget) -> None:
        self.graph, self.cfg, self.budget = query.graph, cfg, budget
        self.C, self.d = torch.as_tensor(query.C), torch.as_tensor(query.d)
        self.owner, self.K = torch.as_tensor(query.owner), query.n_disjuncts
        self.lo, self.hi = root_box(query)
        self.relus = relu_nodes(self.graph)
        self.pre = [self.graph.nodes[r].inputs[0] for r in self.relus]
        self.domains = 0
        self._errors: dict | None = None  # the input-fed nodes' rounding errors over the box (:meth:`bound`)

    def _set(self, n: int) -> InputSet:
        return InputSet(self.lo.expand(n, -1), self.hi.expand(n, -1))

    def bound(self, bounds: list | None, n: int, iterations: int) -> tuple[Tensor, list, Tensor]:
        """(values (n, K) per disjunct, the bounds the domains' children start from, empty (n,)) of
        ``n`` domains from their start ``bounds`` (None: the root, from interval/forward bounds)."""
        S = self._set(n)
        start = None
        if bounds is not None:
            if self._errors is None:  # they depend on the box only (BoundState.error): the same for every domain
                self._errors = {}
                start_bounds(self.graph, self._set(1), self.budget, self._errors)
            start = (bounds, {j: None if e is None else e.expand(n, *e.shape[1:]) for j, e in self._errors.items()})
        low, st = alpha_lower(self.graph, S, self.C, iterations=iterations, keep_state=True,
                              start=start, budget=self.budget)
        with torch.no_grad():
            for r in self.relus:
                st.relaxation(r)  # every pre-activation bound exists
            y_lo, y_hi = st.bounds[self.graph.output]
            margin = row_margin(self.C, self.d, y_lo, y_hi)
            values = disjunct_values(low.detach() - self.d, margin, self.owner, self.K)
            empty = torch.zeros(n, dtype=torch.bool)
            for b in st.bounds:
                if b is not None:
                    empty |= (b[0] > b[1]).flatten(1).any(dim=1)
            # kept: the pre-activation bounds (the splits' and what the children start from); BoundState
            # derives the other nodes' by interval arithmetic from them
            new = [None] * len(st.bounds)
            for j in self.pre:
                new[j] = (st.bounds[j][0].detach(), st.bounds[j][1].detach())
        self.domains += n
        return values, new, empty

    def choose(self, dom: _Batch) -> Tensor:
        """(N, 2) the split of each domain: (position in the ReLU list, neuron) -- in the first ReLU layer
        with an unstable neuron, the neuron of largest relaxation gap ``u (-l) / (u - l)`` times its
        fan-out (:meth:`_fan_out`); (-1, -1) where none is left."""
        out = torch.full((len(dom), 2), -1, dtype=torch.int64)
        todo = torch.ones(len(dom), dtype=torch.bool)
        for p, j in enumerate(self.pre):
            l, u = dom.bounds[j]
            l, u = l.flatten(1), u.flatten(1)
            gap = u * -l / (u - l).clamp(min=1e-300)
            score = torch.where((l < 0) & (u > 0), torch.nan_to_num(gap * self._fan_out(p), nan=0.0) + 1e-300,
                                torch.full_like(l, -1.0))
            s, k = score.max(dim=1)
            pick = todo & (s > 0)
            out[pick, 0] = p
            out[pick, 1] = k[pick]
            todo &= ~pick
            if not bool(todo.any()):
                break
        return out

    def _fan_out(self, p: int) -> Tensor | float:
        """(n,) how strongly each neuron of the ``p``-th ReLU feeds the next layer: the sum of the
        absolute weights leaving it into Dense and Conv consumers (a Conv's per input channel, the
        same at every position); 1 where it feeds neither."""
        cache = self.__dict__.setdefault("_fan", {})
        if p not in cache:
            r = self.relus[p]
            n = self.graph.size(r)
            fan = torch.zeros(n, dtype=torch.float64)
            for c in self.graph.consumers[r]:
                op = self.graph.nodes[c].op
                if isinstance(op, ops.Dense) and op.rows == 1 and np.shape(op.weight)[1] == n:
                    fan += torch.as_tensor(np.abs(np.asarray(op.weight, np.float64)).sum(axis=0))
                elif isinstance(op, ops.Conv) and op.groups == 1:
                    per = np.abs(np.asarray(op.weight, np.float64)).sum(axis=(0, 2, 3))  # (C_in,)
                    if n % len(per) == 0:
                        fan += torch.as_tensor(per).repeat_interleave(n // len(per))
            cache[p] = torch.where(fan > 0, fan, torch.ones_like(fan))
        return cache[p]

    def children(self, parents: _Batch, split: Tensor) -> list:
        """The start bounds of both children of every parent (interleaved: active ``z >= 0`` first)."""
        kids = []
        for j, b in enumerate(parents.bounds):
            kids.append(None if b is None else (b[0].repeat_interleave(2, 0).clone(), b[1].repeat_interleave(2, 0).clone()))
        for p, (pos, k) in enumerate(split.tolist()):
            j = self.pre[pos]
            l, u = kids[j]
            lf, uf = l.view(l.shape[0], -1), u.view(u.shape[0], -1)
            lf[2 * p, k] = torch.clamp(lf[2 * p, k], min=0.0)
            uf[2 * p + 1, k] = torch.clamp(uf[2 * p + 1, k], max=0.0)
        return kids

    def root(self) -> tuple[_Batch, Tensor, Tensor]:
        """The root domain (id 0), bounded by alpha-CROWN with ``root_iterations`` steps (as :meth:`expand`)."""
        values, bounds, empty = self.bound(None, 1, self.cfg.root_iterations)
        still, worst = self.settle(values, torch.ones_like(values, dtype=torch.bool), empty)
        return _Batch(bounds, still, worst, torch.zeros(1, dtype=torch.int64)), values, empty

    def expand(self, parents: _Batch, split: Tensor, ids: Tensor) -> tuple[_Batch, Tensor, Tensor]:
        """Both children of every parent (interleaved, active first), bounded, with ``ids``: (children,
        their values per disjunct (2N, K), empty (2N,)); a child with no open disjunct is closed."""
        values, bounds, empty = self.bound(self.children(parents, split), 2 * len(parents), self.cfg.iterations)
        still, worst = self.settle(values, parents.open.repeat_interleave(2, 0), empty)
        return _Batch(bounds, still, worst, ids), values, empty

    def settle(self, values: Tensor, parent_open: Tensor, empty: Tensor) -> tuple[Tensor, Tensor]:
        """(the disjuncts still open, the domain value): a disjunct closed on the parent stays closed;
        the value is the worst open disjunct's (+inf where none is left or the domain is empty)."""
        still = parent_open & ~(torch.isfinite(values) & (values > 0))
        worst = torch.where(still, values, torch.full_like(values, float("inf"))).min(dim=1).values
        worst = torch.where(empty, torch.full_like(worst, float("inf")), worst)
        still = still & ~empty[:, None]
        return still, worst


def refine_split(query: Query, budget: Budget, cfg: RefineConfig = RefineConfig()) -> RefineOutcome:
    """Decide one query by ReLU splitting with re-optimised intermediate bounds (module docstring).
    ``verified`` with one proof tree for every disjunct, else ``timeout`` (the budget ran out) or
    ``unknown`` (a domain with no unstable ReLU left stays open, or too many domains)."""
    if len(query.owner) == 0 or not supports(query.graph) or \
            any(not (query.owner == k).any() for k in range(query.n_disjuncts)):
        return RefineOutcome("unknown")
    prob = _Problem(query, cfg, budget)
    try:
        return _search(prob, cfg, budget)
    except BudgetExpired:
        return RefineOutcome("timeout", prob.domains)


def _search(prob: _Problem, cfg: RefineConfig, budget: Budget, start: _Batch | None = None) -> RefineOutcome:
    """The search from ``start`` (default: the root), worst domains first; its proof tree when it closes
    every domain."""
    log = TreeLog(LEAF_KINDS)
    queue = start
    if queue is None:
        queue, values, empty = prob.root()
        if not bool(queue.open.any()):
            log.close([0], [LEAF_KINDS.index("empty") if bool(empty[0]) else 0], [_leaf_value(values[0], empty[0])])
            queue = queue.take(torch.zeros(0, dtype=torch.int64))
    prog = SearchProgress("ReLU splitting (refined bounds)", by_volume=False)
    status = "verified"
    while len(queue):
        prog.update(prob.domains, len(queue), worst=lambda: lowest(queue.value))
        if budget.expired():
            status = "timeout"
            break
        if prob.domains > cfg.max_domains or queue.nbytes() > QUEUE_MEMORY * limit_of(budget):
            status = "unknown"  # too many domains, or their bounds outgrew their share of the memory
            break
        order = torch.argsort(queue.value)
        parents, queue = queue.take(order[:cfg.batch]), queue.take(order[cfg.batch:])
        split = prob.choose(parents)
        if bool((split[:, 0] < 0).any()):
            status = "unknown"  # every ReLU of a domain is stable and a disjunct is still open there
            break
        ids = torch.as_tensor(log.new_ids(2 * len(parents)))
        log.split(parents.ids, split[:, 0], split[:, 1], ids[0::2], ids[1::2])
        kids, values, empty = prob.expand(parents, split, ids)
        done = ~kids.open.any(dim=1)
        if bool(done.any()):
            log.close(ids[done].numpy(), np.where(empty[done].numpy(), LEAF_KINDS.index("empty"), 0),
                      [_leaf_value(v, e) for v, e in zip(values[done], empty[done])])
        queue = _Batch.join([queue, kids.take(torch.nonzero(~done).flatten())])
    prog.close(status, prob.domains)
    if status != "verified":
        return RefineOutcome(status, prob.domains)
    tree = log.tree("relu_split", meta={"refine": cfg.iterations, "root_iterations": cfg.root_iterations,
                                        "rows": list(range(len(prob.C))), "domains": prob.domains})
    return RefineOutcome("verified", prob.domains, [tree], [list(range(prob.K))])


def _leaf_value(values: Tensor, empty: Tensor) -> float:
    """A closed leaf's recorded value: its best closing margin over the disjuncts it closed (positive);
    1.0 for an empty domain (its kind says why it is closed)."""
    if bool(empty):
        return 1.0
    v = values[torch.isfinite(values) & (values > 0)]
    return float(v.min()) if v.numel() else float("nan")


def recheck(query: Query, tree: ProofTree, time_per_leaf: float = 5.0, batch: int = 64) -> RecheckReport:
    """Re-derive a refined ReLU-splitting proof: the root bounded by the same alpha-CROWN run, every
    split's children bounded again from their parent's re-derived bounds (the search's own
    computation, nothing it recorded trusted), a disjunct closed on a domain closed on its subtree; a
    leaf that does not close that way gets a search of its own (``time_per_leaf`` seconds)."""
    t0 = time.monotonic()
    rep = RecheckReport()
    if not supports(query.graph) or not tree.well_formed():
        rep.failed = 1
        return rep
    cfg = RefineConfig(iterations=meta_count(tree, "refine", RefineConfig.iterations),
                       root_iterations=meta_count(tree, "root_iterations", RefineConfig.root_iterations))
    prob = _Problem(query, cfg, Budget())
    # the children of every split (rows of the preorder codes: the active child's subtree first)
    codes = tree.codes.tolist()
    kids: dict[int, list[int]] = {}
    stack: list[int] = []
    for i, (pos, _) in enumerate(codes):
        if stack:
            kids.setdefault(stack[-1], []).append(i)
            if len(kids[stack[-1]]) == 2:
                stack.pop()
        if pos >= 0:
            stack.append(i)
    level = [(0, prob.root()[0])]
    while level:
        nxt = []
        for s in range(0, len(level), batch):
            part = level[s:s + batch]
            internal = [(i, b) for i, b in part if codes[i][0] >= 0]
            for i, b in part:
                if codes[i][0] < 0:
                    rep.leaves += 1
                    if not bool(b.open.any()):
                        rep.direct += 1
                    elif _research(query, b, cfg, time_per_leaf):
                        rep.resplit += 1
                    else:
                        rep.failed += 1
            if not internal:
                continue
            split = torch.as_tensor([codes[i] for i, _ in internal], dtype=torch.int64)
            ch = prob.expand(_Batch.join([b for _, b in internal]), split,
                             torch.zeros(2 * len(internal), dtype=torch.int64))[0]
            for q, (i, _) in enumerate(internal):
                active, inactive = kids[i]
                nxt.append((active, ch.take(torch.as_tensor([2 * q]))))
                nxt.append((inactive, ch.take(torch.as_tensor([2 * q + 1]))))
        level = nxt
    rep.seconds = time.monotonic() - t0
    return rep


def _research(query: Query, leaf: _Batch, cfg: RefineConfig, seconds: float) -> bool:
    """The refined search below one re-derived leaf that did not close (as the root of its own tree), for
    ``seconds``."""
    budget = Budget.of(seconds)
    leaf.ids = torch.zeros(1, dtype=torch.int64)
    try:
        return _search(_Problem(query, cfg, budget), cfg, budget, start=leaf).status == "verified"
    except BudgetExpired:
        return False
