"""Branch and bound by ReLU splitting, beta-CROWN style (DESIGN.md section 3).

For high-dimensional inputs (images) input splitting is hopeless; the domains
are instead sets of ReLU *splits*: a split fixes the sign of one unstable
pre-activation ``z_k`` (``z_k >= 0`` or ``z_k <= 0``), so the two children cover
the parent and the ReLU becomes linear in each. A domain is bounded by

- intermediate bounds from alpha-CROWN at the root (one run for all rows),
  inherited by every domain and clamped by its splits (``l_k := max(l_k, 0)``
  or ``u_k := min(u_k, 0)``); optionally (``refine_intermediate``) tightened by
  a DeepPoly pass over the layers after the new split, intersected with the
  inherited bounds (each is sound on the domain, so the intersection is);
- a final bound optimised over the alpha slopes of the unstable ReLUs *and* a
  multiplier ``beta_k >= 0`` per split (beta-CROWN, Wang et al. 2021): for any
  ``beta >= 0``, ``min_x f(x) - sum_k beta_k s_k z_k(x)`` over the whole box is
  below ``min f`` over the domain ``{s_k z_k(x) >= 0}``, so every iterate is a
  sound bound; the multipliers enter the back-substitution at the
  pre-activation nodes (:class:`~certkit.bounds.deeppoly.BoundState`).

A domain whose bounds contradict its splits is empty and closed. Branching
picks, per domain, the unstable ReLU with the largest BaBSR-like score: the
relaxation gap it costs the final bound (``|coefficient| x intercept``, Bunel et
al. 2020). The worst open domains are split first, many per batch; children
warm-start from their parent's slopes and multipliers. The minimiser of each
domain's linear bound over the box is tried as a counterexample (confirmed
with onnxruntime). A domain of a piecewise-linear net whose bound stops rising
(``milp_stall`` generations in a row below ``milp_gain`` of its deficit) goes to the
exact MILP of that domain, with its splits and intermediate bounds
(:func:`~certkit.verify.relu_leaves.milp_leaf`). Each disjunct of the property gets
its own tree.

Soundness for the model as onnxruntime runs it: the box is rounded outward and every bound
carries the floating-point error terms (:mod:`certkit.bounds.fperror`); a domain closes only
through :func:`certkit.verify.gate.domain_value` (a finite value above the row margin; NaN
never closes). The search records its tree (:class:`certkit.verify.proof.TreeLog`): every
split, and every closed leaf with the multipliers that closed it -- the alpha slopes and beta
multipliers are kept float32-representable throughout, so the stored values are exactly the
ones used -- or ``empty`` when the clamped bounds contradict the splits. :func:`recheck`
re-derives such a proof from the root.
"""
from __future__ import annotations

import dataclasses
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..bounds.adam import Adam
from ..bounds.alpha import alpha_bytes, alpha_lower
from ..bounds.deeppoly import BoundState
from ..bounds.fperror import row_margin, with_precision
from ..bounds.memory import limit_of, working_room
from ..graph import ops
from ..log import SearchProgress
from ..spec.sets import InputSet
from .falsify import objective
from .gate import closed, domain_value
from .input_split import root_box
from .proof import ProofTree, TreeLog
from .query import Budget, BudgetExpired, Query
from .relu_domains import (DomainLayout, DomainQueue, Domains as _Domains, branch_candidates, fixed_nodes, free_unstable,
                           piecewise_linear, relu_nodes, supports)
from .relu_leaves import _f32, lp_leaves, milp_leaf
from .witness import Witness

#: Leaf kinds of a ReLU-splitting proof tree.
LEAF_KINDS = ("bound", "lp", "empty", "milp")

Tensor = torch.Tensor


#: the open domains (their slots in the :class:`DomainQueue`) may take this share of the memory limit; beyond it
#: the search stops ``unknown`` instead of running out of memory (bounding a batch needs the rest)
QUEUE_MEMORY = 0.4
#: the branching rules of ReLU splitting (ReluSplitConfig.branching)
BRANCHINGS = ("babsr", "fsb")
#: the solvers of MILP leaves (ReluSplitConfig.milp_solver; ``auto``: Gurobi when licensed for the model, else HiGHS)
MILP_SOLVERS = ("auto", "highs", "gurobi")


@dataclass(frozen=True)
class ReluSplitConfig:
    """Options of ReLU splitting."""

    #: domains split per iteration (their 2 x batch children are bounded together), at most; fewer where the
    #: children's bound computation would not fit in the memory headroom (:meth:`_Tree.batch`). 64 until
    #: 2026-12-07: 128 bounded 22% more domains of oval21 cifar_deep_kw img9931 in 100 s and 13% more of
    #: sri_resnet_b 5807's open disjunct in 60 s, as many elsewhere (README.md, complete verification's figures)
    batch: int = 128
    #: alpha/beta optimisation steps per batch of children (from the slopes and multipliers their parent kept:
    #: its best iterate's, or its last where none beat its own parent; the best iterate's bound counts).
    #: 15 until 2026-12-06: with 5 the searches bound 2-3x more domains a second and got
    #: further in the same time (oval21 cifar_base_kw img876's hard disjunct 7.8 s instead of 21.3 s; README.md)
    iterations: int = 5
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    root_iterations: int = 30  # alpha-CROWN steps at the root (intermediate bounds optimised too)
    #: a DeepPoly pass over the layers after each new split (intersected with the inherited
    #: bounds). Off by default: on mnist-net_256x2 and paper 002's 5x100 and 8x100 nets it cut
    #: the domains by about a third but doubled the time per domain (benchmarks/relu_split.py).
    refine_intermediate: bool = False
    beta_intermediate: bool = True  # that pass uses the parent's multipliers (any beta >= 0 is sound)
    max_domains: int = 5_000_000
    pgd_starts: int = 8  # worst open domains whose bound minimisers start a short PGD, per batch
    pgd_steps: int = 20
    pgd_every: int = 3  # batches between two PGD runs (the first batch always gets one)
    #: ``babsr``: the neuron of best BaBSR score; ``fsb``: of the ``fsb_candidates`` best by that score,
    #: the one whose worse child has the best bound after one back-substitution (filtered smart
    #: branching, De Palma et al. 2021)
    branching: str = "babsr"
    fsb_candidates: int = 4
    #: MILP on hard leaves (piecewise-linear nets, HiGHS installed): a domain whose bound rose by less
    #: than ``milp_gain`` of its deficit ``milp_stall`` generations in a row, with at most
    #: ``milp_max_binaries`` unstable ReLUs left unsplit, is decided by its MILP within ``milp_seconds``
    #: (at most ``milp_per_batch`` per batch, and the MILPs' time within ``milp_share`` of the search's
    #: time so far plus one solve; none with less than half a solve's time left); an undecided one goes
    #: on splitting and is not tried again. Off by default: on the open mnistfc instances and paper
    #: 002's 5x100 and 8x100 nets the leaves that stop improving still hold 200-300 unstable ReLUs and
    #: their MILPs take 10-20 s each where splitting spends about a millisecond per domain
    #: (``benchmarks/relu_split.py``: the same 11 of 17 decided, 228 s against 203 s)
    milp_leaves: bool = False
    milp_stall: int = 3
    milp_gain: float = 0.1
    milp_max_binaries: int = 300
    milp_seconds: float = 5.0
    milp_per_batch: int = 2
    milp_share: float = 0.5
    milp_solver: str = "auto"
    #: give up (status ``unknown``, :attr:`ReluSplitOutcome.hopeless`) when, once this share of the time the
    #: search started with has passed, fewer than ``hopeless_closed`` of the first disjunct's domains bounded
    #: have closed (0: never). ``auto`` hands the rest to the search with re-optimised intermediate bounds
    #: there (:func:`certkit.verify.procedures.relu_portfolio`): on ERAN's mnist_relu_9_200 image 1385, 5 of
    #: beta-CROWN's first 9325 domains closed
    hopeless_after: float = 0.0
    hopeless_closed: float = 0.01

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 (got {self.batch})")
        if self.branching not in BRANCHINGS:
            raise ValueError(f"unknown branching '{self.branching}' (choose from {', '.join(BRANCHINGS)})")
        if self.milp_solver not in MILP_SOLVERS:
            raise ValueError(f"unknown MILP solver '{self.milp_solver}' (choose from {', '.join(MILP_SOLVERS)})")


@dataclass
class ReluSplitOutcome:
    status: str  # verified | falsified | timeout | unknown
    witness: Witness | None = None
    domains: int = 0
    iterations: int = 0
    max_queue: int = 0
    trees: list[ProofTree] | None = None  # one per disjunct, when verified
    milp_tried: int = 0  # hard leaves sent to the MILP
    milp_closed: int = 0  # ... and closed by it
    milp_time: float = 0.0
    hopeless: bool = False  # stopped by ReluSplitConfig.hopeless_after: too few domains closed in that time


class _Tree:
    """The branch and bound of one disjunct: a domain is closed when one of its rows has
    ``C_i y - d_i`` above the floating-point margin everywhere on it."""

    def __init__(self, query: Query, rows: np.ndarray, cfg: ReluSplitConfig, budget: Budget = Budget()) -> None:
        graph = query.graph
        self.graph, self.query, self.cfg, self.budget = graph, query, cfg, budget
        self.C_all, self.d_all, self.owner = torch.as_tensor(query.C), torch.as_tensor(query.d), query.owner
        self.K = query.n_disjuncts
        self.rows = rows
        self.C, self.d = self.C_all[rows], self.d_all[rows]
        self.lo, self.hi = root_box(query)
        self.relus = relu_nodes(graph)
        self.pre = [graph.nodes[r].inputs[0] for r in self.relus]
        self.fixed: dict[int, tuple[Tensor, Tensor]] = {}  # the root's bounds of other nonlinear ops' inputs
        self.piecewise = piecewise_linear(graph)  # a fully split domain is an LP
        self.exact = with_precision(graph, "exact")  # FSB's estimates: no rounding-error terms
        self.domains = 0
        self.attacks = 0
        self.milp_time = 0.0  # seconds spent in MILPs of hard leaves
        self.milp_tried = self.milp_closed = 0
        self.log = TreeLog(LEAF_KINDS)
        #: the root domain's rounding-error terms (:meth:`_root_terms`) and its bounds of every node (:meth:`_bounds`)
        self._terms: tuple[dict, dict] | None = None
        self._root_bounds: list | None = None
        self.layout: DomainLayout | None = None  # how the queue keeps a domain (set by :meth:`root`)
        #: estimated peak bytes of one child's bound computation (:meth:`batch`)
        self.child_bytes = alpha_bytes(graph, [], len(rows), 1, out_only=True)

    def batch(self) -> int:
        """Parents to split in the next iteration: ``cfg.batch``, or fewer where their ``2 x batch`` children's
        bound computation (the autograd tape and slopes of :func:`certkit.bounds.alpha.alpha_bytes` for the
        output rows) would outgrow :func:`~certkit.bounds.memory.working_room`; at least one (whose bound
        computation sizes its own chunks or raises ``MemoryExceeded``)."""
        fit = int(working_room(self.budget) // max(2.0 * self.child_bytes, 1.0))
        return max(1, min(self.cfg.batch, fit))

    def close(self, dom: _Domains, kind: str | None = None) -> None:
        """Record the domains of ``dom`` as closed leaves, with the multipliers that closed them
        (slopes where a ReLU is free and unstable, multipliers where it is split; zeros elsewhere,
        where they do not matter)."""
        if len(dom) == 0:
            return
        empty = torch.isinf(dom.value) & (dom.value > 0)
        kinds = torch.full((len(dom),), LEAF_KINDS.index(kind or "bound"), dtype=torch.int64)
        kinds = torch.where(empty, LEAF_KINDS.index("empty"), kinds)
        alphas, betas = [], []
        for r, j in zip(self.relus, self.pre):
            l, u = dom.bounds[j]
            free = ((l < 0) & (u > 0) & (dom.splits[r] == 0))[:, None, :]
            alphas.append(torch.where(free, dom.alpha[r], torch.zeros_like(dom.alpha[r])))
            betas.append(torch.where((dom.splits[r] != 0)[:, None, :], dom.beta[r], torch.zeros_like(dom.beta[r])))
        self.log.close(dom.ids.numpy(), kinds.numpy(), dom.value.numpy(),
                       {"alpha": torch.cat(alphas, -1).float().numpy(), "beta": torch.cat(betas, -1).float().numpy()})

    # -- bounding ----------------------------------------------------------------
    def _inputs(self, n: int) -> InputSet:
        return InputSet(self.lo.expand(n, -1), self.hi.expand(n, -1))

    def _value(self, low: Tensor, y_bounds: tuple[Tensor, Tensor]) -> Tensor:
        """The gate's domain value for this disjunct's rows (> 0: closed)."""
        margin = row_margin(self.C, self.d, y_bounds[0].detach(), y_bounds[1].detach())
        return domain_value(low - self.d, margin, torch.zeros(self.C.shape[0], dtype=torch.int64), 1)

    def root(self, shared: "_Root") -> tuple[_Domains, Witness | None]:
        """The root domain of this disjunct, from the alpha-CROWN run shared by all disjuncts."""
        self.fixed = shared.fixed
        rows = torch.as_tensor(self.rows)
        alpha = {r: a[:, rows].clone() for r, a in shared.alpha.items()}
        dom = _Domains({r: torch.zeros(1, self.graph.size(r), dtype=torch.int8) for r in self.relus},
                       {j: tuple(t.clone() for t in shared.bounds[j]) for j in self.pre},
                       alpha, {r: torch.zeros_like(alpha[r]) for r in self.relus},
                       self._value(shared.low[:, rows], shared.y_bounds), torch.full((1, 2), -1, dtype=torch.long),
                       torch.zeros(1, dtype=torch.int64))
        dom, w = self.bound(dom, first_changed=None, optimise=False)
        self.layout = DomainLayout.of(dom, self.relus, self.pre)
        return dom, w

    def bound(self, dom: _Domains, first_changed: int | None, optimise: bool = True) -> tuple[_Domains, Witness | None]:
        """(Re)bound a batch of domains in place; returns it and a confirmed witness, if any."""
        n = len(dom)
        self.domains += n
        S = self._inputs(n)
        bounds = self._bounds(dom, others=True)
        # every iterate has the same bounds and base relaxations, so the same rounding-error terms
        # (and the caches derived from bounds alone): computed by the first iterate, shared after;
        # after the root, the root's (:meth:`_root_terms`)
        errors, cache = self._root_terms(n)
        refined = set(range(len(self.graph.nodes)))
        if self.cfg.refine_intermediate and first_changed is not None:
            refined = {j for j in refined if j <= self.pre[first_changed]}
        with torch.no_grad():
            shared = {r: b.mean(dim=1, keepdim=True) for r, b in dom.beta.items()} \
                if self.cfg.beta_intermediate else None
            st0 = BoundState(self.graph, S, intersect=True, bounds=bounds, refined=refined, splits=dom.splits,
                             budget=self.budget,
                             beta=shared, beta_everywhere=shared is not None)
            for r in self.relus:
                st0.relaxation(r)  # clamps and (after the first new split) refines
            if len(refined) == len(self.graph.nodes):
                # nothing is re-bounded: the other nonlinear ops' relaxations rest on bounds at hand too,
                # built here once for every iterate instead of by each (a vision transformer's products
                # and softmax: 70% of its ReLU splitting's time before)
                for i in sorted(self.graph.live):
                    if isinstance(self.graph.nodes[i].op, ops.RELAXED):
                        st0.relaxation(i)
            dom.bounds = {j: st0.bounds[j] for j in self.pre}
            empty = st0.infeasible()
        alpha = {("out", r): dom.alpha[r].clone().requires_grad_(True) for r in self.relus}
        beta = {r: dom.beta[r].clone().requires_grad_(True) for r in self.relus}
        best = dom.value.clone()
        best_alpha = {r: dom.alpha[r].clone() for r in self.relus}
        best_beta = {r: dom.beta[r].clone() for r in self.relus}
        record: dict = {}
        A_best = None
        steps = self.cfg.iterations if optimise else 1
        opt = Adam([{"params": list(alpha.values()), "lr": self.cfg.lr_alpha},
                                {"params": list(beta.values()), "lr": self.cfg.lr_beta}])
        with torch.enable_grad():
            for it in range(steps):
                rec: dict = {}
                st = BoundState(self.graph, S, intersect=True, bounds=list(st0.bounds), budget=self.budget,
                                refined=set(range(len(self.graph.nodes))), splits=dom.splits,
                                alpha=alpha, beta=beta, alpha_out_only=True, record=rec,
                                relax=dict(st0.relax), errors=errors, _cache=cache)
                A_in, const = st.backsub(self.graph.output, self.C.expand(n, -1, -1), tag="out")
                low = S.concretize_lower(A_in, const)
                val = self._value(low.detach(), st.bounds[self.graph.output])
                better = val > best
                if it == 0 or bool(better.any()):
                    best = torch.where(better, val, best)
                    for r in self.relus:
                        best_alpha[r] = torch.where(better[:, None, None], alpha[("out", r)].detach(), best_alpha[r])
                        best_beta[r] = torch.where(better[:, None, None], beta[r].detach(), best_beta[r])
                    keep = better if A_best is not None else torch.ones_like(better)
                    A_best = A_in.detach() if A_best is None else torch.where(keep[:, None, None], A_in.detach(), A_best)
                    for r, A in rec.items():
                        record[r] = A if r not in record else torch.where(keep[:, None, None], A, record[r])
                if it == steps - 1 or bool(closed(best).all()) or self.budget.expired():
                    break
                opt.zero_grad()
                (-low.sum()).backward()
                opt.step()
                with torch.no_grad():
                    for r in self.relus:
                        alpha[("out", r)].copy_(_f32(alpha[("out", r)].clamp(0.0, 1.0)))
                        beta[r].copy_(_f32(beta[r].clamp(min=0.0)))
        if self._terms is None:  # the root: its terms and bounds serve every domain below it
            self._terms = (dict(errors), {k: dict(cache.get(k, {})) for k in ("fresh", "charge")})
            self._root_bounds = list(st0.bounds)
        best = torch.where(empty, torch.full_like(best, float("inf")), best)
        # the value is the best iterate's (every iterate is sound), and so are the slopes and multipliers a
        # domain keeps (its children start from them; a closed leaf records them, and certkit check
        # re-derives its bound from them) -- except where no iterate beat the parent's value: there the
        # last iterate's, so that the optimisation goes on across generations. Always the best iterate's, a
        # batch whose few steps never beat their start (Adam's first steps often dip) handed the same
        # parameters down forever: mnistfc 256x2 prop_0_0.05 (sat) had a disjunct that 15 steps closed in
        # 137 domains and 5 steps did not in 40,000 (c79f958); now `auto` finds the counterexample in ~6 s
        stuck = ~(best > dom.value)[:, None, None]  # dom.value: the parent's, until set below
        dom.value = best
        dom.alpha = {r: torch.where(stuck, alpha[("out", r)].detach(), best_alpha[r]) for r in self.relus}
        dom.beta = {r: torch.where(stuck, beta[r].detach(), best_beta[r]) for r in self.relus}
        dom.branch = self._choose(dom, record, st0.bounds)
        return dom, self._try_counterexamples(A_best, best)

    def _root_terms(self, n: int) -> tuple[dict, dict]:
        """The rounding-error terms (:mod:`certkit.bounds.fperror`) and float32 product charges
        (:mod:`certkit.bounds.products32`) a batch of ``n`` domains starts from: none before the root is
        bounded; after it, the root's, for every domain. They bound the errors over the root's bounds,
        which contain every domain's (a domain's bounds are the root's clamped by its splits), so they
        hold for each domain, a little wider than its own would be. Computed once instead of per batch
        of children (sri_resnet_b 5807: 20 of the 70 s of ReLU splitting went to the interval passes
        and error terms of each batch)."""
        if self._terms is None:
            return {}, {}
        errors, cache = self._terms

        def wide(t):
            return t.expand(n, *t.shape[1:])

        out = {"fresh": {j: (wide(lo), wide(hi)) for j, (lo, hi) in cache["fresh"].items()},
               "charge": {j: dataclasses.replace(c, **{f.name: wide(getattr(c, f.name)) for f in dataclasses.fields(c)})
                          for j, c in cache["charge"].items()}}
        return {j: None if e is None else wide(e) for j, e in errors.items()}, out

    def _bounds(self, dom: _Domains, others: bool = False) -> list:
        """The domains' bounds of the pre-activation nodes, and the root's of the other nonlinear
        ops' inputs (:func:`~certkit.verify.relu_domains.fixed_nodes`); None elsewhere -- or, with
        ``others`` once the root is bounded, the root's there too (they hold on every domain: the bound
        computations of a batch then need no interval pass; a MILP leaf derives its own from the domain's)."""
        bounds = dom.bounds_list(len(self.graph.nodes))
        n = len(dom)
        for j, (l, u) in self.fixed.items():
            if bounds[j] is None:
                bounds[j] = (l.expand(n, -1), u.expand(n, -1))
        for j, b in enumerate(self._root_bounds if others and self._root_bounds else ()):
            if bounds[j] is None and b is not None:
                bounds[j] = (b[0].expand(n, *b[0].shape[1:]), b[1].expand(n, *b[1].shape[1:]))
        return bounds

    # -- branching ---------------------------------------------------------------
    def _choose(self, dom: _Domains, record: dict, bounds: list) -> Tensor:
        """The neuron each domain splits next (ReluSplitConfig.branching): (N, 2) (position in the
        ReLU list, neuron), (-1, -1) when none is left."""
        k = self.cfg.fsb_candidates if self.cfg.branching == "fsb" else 1
        cands = branch_candidates(dom, record, self.relus, self.pre, k)  # (N, k, 2)
        if k == 1 or len(dom) == 0 or not bool((cands[:, 1:, 0] >= 0).any()):
            return cands[:, 0]
        with torch.no_grad():
            worse = self._children_bounds(dom, cands, bounds).amin(dim=2)  # (N, k)
        worse = torch.where(cands[..., 0] >= 0, worse, torch.full_like(worse, float("-inf")))
        return cands[torch.arange(len(dom)), worse.argmax(dim=1)]

    def _children_bounds(self, dom: _Domains, cands: Tensor, bounds: list) -> Tensor:
        """FSB's estimate (N, k, 2) of both children's bound for each candidate split: one
        back-substitution with the parent's slopes and multipliers (0 for the new split), in exact
        arithmetic (a heuristic: no rounding-error terms; no verdict rests on it)."""
        N, k = cands.shape[:2]
        kids = None  # candidate c's children of every domain: rows c * 2N ... (c + 1) * 2N - 1
        for c in range(k):
            parents = dom.map(lambda t: t)
            parents.branch = cands[:, c]
            kids = _Domains.cat(kids, self.children(parents)[0])
        n = len(kids)
        graph = self.exact
        many = [None if b is None else tuple(t.detach().repeat_interleave(2, dim=0).repeat(k, *(1,) * (t.dim() - 1))
                                             for t in b) for b in bounds]
        st = BoundState(graph, self._inputs(n), intersect=True, bounds=many, splits=kids.splits,
                        refined=set(range(len(graph.nodes))), budget=self.budget,
                        alpha={("out", r): kids.alpha[r] for r in self.relus}, beta=kids.beta,
                        alpha_out_only=True, errors=dict.fromkeys(range(len(graph.nodes))))
        A_in, const = st.backsub(graph.output, self.C.expand(n, -1, -1), tag="out")
        value = (self._inputs(n).concretize_lower(A_in, const) - self.d).amax(dim=1)
        value = torch.where(st.infeasible(), torch.full_like(value, float("inf")), value)
        return torch.nan_to_num(value, nan=float("-inf")).reshape(k, N, 2).permute(1, 0, 2)

    def children(self, parents: _Domains) -> tuple[_Domains, int]:
        """Both children of every parent (interleaved); also the earliest split layer."""
        kids = parents.map(lambda t: t.repeat_interleave(2, dim=0))
        kids.splits = {r: t.clone() for r, t in kids.splits.items()}
        sign = torch.tensor([1, -1], dtype=torch.int8).repeat(len(parents))
        for p, r in enumerate(self.relus):
            sel = torch.nonzero(kids.branch[:, 0] == p).flatten()
            if sel.numel():
                kids.splits[r][sel, kids.branch[sel, 1]] = sign[sel]
        first = int(parents.branch[:, 0].min())
        return kids, first

    # -- counterexamples ---------------------------------------------------------
    def _try_counterexamples(self, A_in: Tensor | None, value: Tensor) -> Witness | None:
        if A_in is None:
            return None
        with torch.no_grad():
            open_ = torch.nonzero(~closed(value)).flatten()
            if open_.numel() == 0:
                return None
            worst = open_[value[open_].argsort()[:self.cfg.pgd_starts]]
            A = A_in[worst]  # (m, s, n)
            x = torch.where(A >= 0, self.lo[:, None, :], self.hi[:, None, :]).reshape(-1, self.lo.shape[1])
        w = self._try_points(x)
        self.attacks += 1
        if w is None and self.cfg.pgd_steps and self.attacks % self.cfg.pgd_every == 1 % self.cfg.pgd_every:
            w = self._try_points(self._pgd(x))
        return w

    def _pgd(self, x: Tensor) -> Tensor:
        """A few signed-gradient steps on the violation objective from each point (the minimisers
        of the worst domains' bounds: they home in on the counterexample region as domains shrink)."""
        step = 0.05 * (self.hi - self.lo) / 2
        m = x.shape[0]
        C, d = self.C_all.expand(m, -1, -1), self.d_all.expand(m, -1)
        xs = x.clone()
        for it in range(self.cfg.pgd_steps):
            xs.requires_grad_(True)
            with torch.enable_grad():
                v = objective(self.graph.forward(xs)[:, None, :], C, d, self.owner, self.K)[:, 0]
                g, = torch.autograd.grad(v.sum(), xs)
            with torch.no_grad():
                xs = torch.minimum(torch.maximum(xs - step * g.sign(), self.lo), self.hi)
                if it % 10 == 9:
                    step = step * 0.5
        return xs.detach()

    def _try_points(self, x: Tensor) -> Witness | None:
        """Points of the box violating the property, confirmed with onnxruntime."""
        if self.query.runner is None:
            return None
        with torch.no_grad():
            y = self.graph.forward(x)
            m = x.shape[0]
            v = objective(y[:, None, :], self.C_all.expand(m, -1, -1), self.d_all.expand(m, -1),
                          self.owner, self.K)[:, 0]
            hits = torch.nonzero(v <= 1e-6 * (1 + v.abs())).flatten()
        if hits.numel() == 0:
            return None
        return self.query.confirm(x[hits[:64]])


@dataclass
class _Root:
    """alpha-CROWN over the property's box for all rows at once (intermediate bounds optimised)."""

    low: Tensor  # (1, s_all) lower bounds of every row
    bounds: dict[int, tuple[Tensor, Tensor]]  # pre-activation node -> (1, n) bounds
    alpha: dict[int, Tensor]  # ReLU node -> (1, s_all, n) slopes of the final rows
    y_bounds: tuple[Tensor, Tensor]  # (1, n_out) bounds of the output
    fixed: dict  # node -> (1, n) bounds of the inputs of nonlinear ops other than ReLU
    iterations: int = 0  # alpha-CROWN's steps (recorded in the proof trees: their recheck repeats the run)


#: query -> (box, C, low, state, iterations) of the pipeline's alpha-CROWN stage on exactly the root's
#: box and rows (:func:`remember_root`), taken by the first search of that query
_ROOTS: "weakref.WeakKeyDictionary[Query, tuple]" = weakref.WeakKeyDictionary()


def remember_root(query: Query, S: InputSet, C: Tensor, low: Tensor, state: BoundState, iterations: int) -> None:
    """Keep an alpha-CROWN run over the query's box and rows, so that ReLU splitting's root reuses it
    instead of repeating it (on oval21's nets: 10-22 s of a 30 s budget). The run is deterministic given
    its number of iterates (a deadline may have cut it short): the proof tree records them and a
    recheck repeats the run with as many."""
    _ROOTS[query] = (S.lower.clone(), S.upper.clone(), C.clone(), low.detach().clone(), state, iterations)


def _remembered(query: Query, S: InputSet, C: Tensor):
    hit = _ROOTS.pop(query, None)
    if hit is None:
        return None
    lo, hi, C0, low, st, iterations = hit
    if not (torch.equal(lo, S.lower) and torch.equal(hi, S.upper) and torch.equal(C0, C.to(C0.dtype))):
        return None
    return low, st, iterations


def _root(query: Query, relus: list[int], cfg: ReluSplitConfig, budget: Budget = Budget()) -> _Root:
    graph = query.graph
    C = torch.as_tensor(query.C)
    S = InputSet(*root_box(query))
    hit = _remembered(query, S, C)
    if hit is not None:
        low, st, iterations = hit
    else:
        iterations = cfg.root_iterations
        low, st = alpha_lower(graph, S, C, iterations=iterations, keep_state=True, budget=budget)
    alpha = {}
    with torch.no_grad():
        for r in relus:
            st.relaxation(r)  # every pre-activation bound exists
            a = (st.alpha or {}).get(("out", r))
            if a is None:
                a = st.relaxation(r)[0]
                a = (a if a.dim() == 3 else a[:, None, :]).expand(1, C.shape[0], -1)
            alpha[r] = _f32(a.detach().clone())
        bounds = {graph.nodes[r].inputs[0]: tuple(t.detach().clone() for t in st.bounds[graph.nodes[r].inputs[0]])
                  for r in relus}
        y = tuple(t.detach().clone() for t in st.bounds[graph.output])
        for i in graph.live:  # every relaxation computed: the bounds of every nonlinear op's inputs exist
            if not isinstance(graph.nodes[i].op, (ops.Input, ops.LinearOp)):
                st.relaxation(i)
        fixed = {j: tuple(t.detach().clone() for t in st.bounds[j]) for j in fixed_nodes(graph)}
    return _Root(low.detach(), bounds, alpha, y, fixed, iterations)


def relu_split(query: Query, budget: Budget, cfg: ReluSplitConfig = ReluSplitConfig(),
               disjuncts: list[int] | None = None) -> ReluSplitOutcome:
    """Decide one query by ReLU splitting (over its box; see the module docstring). The budget
    running out, between or inside bound computations, ends the search with ``timeout``.
    ``disjuncts``: only these (a cluster task's share, :mod:`certkit.verify.distributed`); the trees
    are theirs, in this order."""
    try:
        return _relu_split(query, budget, cfg, disjuncts)
    except BudgetExpired:
        return ReluSplitOutcome("timeout")


def _relu_split(query: Query, budget: Budget, cfg: ReluSplitConfig, disjuncts: list[int] | None = None) -> ReluSplitOutcome:
    owner = query.owner
    out = ReluSplitOutcome("verified")
    if len(owner) == 0 or not supports(query.graph):
        return ReluSplitOutcome("unknown")
    if any(not (owner == k).any() for k in range(query.n_disjuncts)):
        return ReluSplitOutcome("unknown")  # an unconstrained disjunct: left to the attack
    rem = budget.remaining()
    probe = time.monotonic() + cfg.hopeless_after * rem if cfg.hopeless_after > 0 and rem is not None else None
    shared = _root(query, relu_nodes(query.graph), cfg, budget)
    out.trees = []
    for disjunct in (range(query.n_disjuncts) if disjuncts is None else disjuncts):
        rows = np.nonzero(owner == disjunct)[0]
        res = _decide_disjunct(query, rows, budget, cfg, shared, probe if not out.trees else None)
        out.domains += res.domains
        out.iterations += res.iterations
        out.milp_tried += res.milp_tried
        out.milp_closed += res.milp_closed
        out.milp_time += res.milp_time
        out.max_queue = max(out.max_queue, res.max_queue)
        if res.status != "verified":
            out.status, out.witness, out.trees, out.hopeless = res.status, res.witness, None, res.hopeless
            return out
        out.trees.extend(res.trees or [])
    return out


def _decide_disjunct(query: Query, rows: np.ndarray, budget: Budget, cfg: ReluSplitConfig,
                     shared: _Root, probe: float | None = None) -> ReluSplitOutcome:
    tree = _Tree(query, rows, cfg, budget)
    out = ReluSplitOutcome("verified")
    root, w = tree.root(shared)
    if w is not None:
        return ReluSplitOutcome("falsified", w, tree.domains)
    queue: _Domains | None = None
    if bool(closed(root.value)[0]):
        tree.close(root)
    else:
        queue = root
    prog = SearchProgress("ReLU splitting", by_volume=False)
    try:
        _search(tree, queue, cfg, budget, out, prog, probe)
    except BudgetExpired:  # inside a bound computation: the counts so far stay
        out.status = "timeout"
    out.domains = tree.domains
    out.milp_tried, out.milp_closed, out.milp_time = tree.milp_tried, tree.milp_closed, tree.milp_time
    if out.status == "verified":
        out.trees = [tree.log.tree("relu_split", meta={"rows": rows.tolist(), "domains": tree.domains,
                                                        "root_iterations": shared.iterations})]
    prog.close(out.status, tree.domains)
    return out


def _search(tree: _Tree, queue: _Domains | None, cfg: ReluSplitConfig, budget: Budget, out: ReluSplitOutcome,
            prog: SearchProgress, probe: float | None = None) -> None:
    """The loop of one disjunct's branch and bound: worst domains first, ``out.status`` set when it stops
    short of closing every domain. ``probe``: the time (``time.monotonic()``) by which some of the domains must
    have closed (ReluSplitConfig.hopeless_after, hopeless_closed)."""
    t_start = time.monotonic()
    queue = DomainQueue(queue, tree.layout)
    while len(queue):
        prog.update(tree.domains, len(queue), worst=queue.lowest)
        if budget.expired():
            out.status = "timeout"
            break
        if probe is not None and time.monotonic() >= probe:
            if len(tree.log.leaves) < cfg.hopeless_closed * tree.domains:
                out.status, out.hopeless = "unknown", True
                break
            probe = None
        if tree.domains > cfg.max_domains or queue.nbytes() > QUEUE_MEMORY * limit_of(budget):
            out.status = "unknown"  # too many domains, or their slots outgrew their share of the memory
            break
        out.iterations += 1
        parents = queue.pop(tree.batch())
        stuck = parents.branch[:, 0] < 0
        if bool(stuck.any()) and not tree.piecewise:
            out.status = "unknown"  # every ReLU split and other nonlinear ops still open: nothing left to split
            break
        if bool(stuck.any()):  # every ReLU fixed: the net is affine there, an LP decides
            status, w = lp_leaves(tree, parents.map(lambda t: t[stuck]))
            if status != "verified":
                out.status, out.witness = status, w
                break
            parents = parents.map(lambda t: t[~stuck])
            if len(parents) == 0:
                continue
        kids, first = tree.children(parents)
        kids.ids = torch.as_tensor(tree.log.new_ids(len(kids)))
        tree.log.split(parents.ids, parents.branch[:, 0], parents.branch[:, 1], kids.ids[0::2], kids.ids[1::2])
        floor = kids.value.clone()
        kids, w = tree.bound(kids, first)
        if w is not None:
            out.status, out.witness = "falsified", w
            break
        kids.value = torch.maximum(kids.value, floor)  # a child lies inside its parent (open: no closing)
        done = closed(kids.value)
        tree.close(kids.map(lambda t: t[done]))
        kids, w = _hard_leaves(tree, kids.map(lambda t: t[~done]), floor[~done], cfg, t_start)
        if w is not None:
            out.status, out.witness = "falsified", w
            break
        queue.push(kids)
        out.max_queue = max(out.max_queue, len(queue))


def _stalled(kids: _Domains, floor: Tensor, cfg: ReluSplitConfig) -> Tensor:
    """The children's stall counters: their parent's plus one where the bound rose by less than
    ``milp_gain`` of the parent's deficit, else 0; -1 (MILP already tried) stays."""
    gain = kids.value - floor
    slow = gain < cfg.milp_gain * (-floor).clamp(min=0.0)  # NaN or an infinite floor: not slow
    return torch.where(kids.stall < 0, kids.stall, torch.where(slow, kids.stall + 1, torch.zeros_like(kids.stall)))


def _hard_leaves(tree: _Tree, kids: _Domains, floor: Tensor, cfg: ReluSplitConfig,
                 t_start: float) -> tuple[_Domains, Witness | None]:
    """Count how long the open children (their parents' values ``floor``) have stopped improving and
    send those that did long enough to their MILP (ReluSplitConfig.milp_*); the closed ones leave
    ``kids`` as ``milp`` leaves."""
    if not (cfg.milp_leaves and tree.piecewise and len(kids)):
        return kids, None
    kids.stall = _stalled(kids, floor, cfg)
    ready = kids.stall >= cfg.milp_stall
    if not bool(ready.any()):  # the unstable ReLUs are counted only for domains that stalled long enough
        return kids, None
    cand = torch.nonzero(ready & (free_unstable(kids, tree.relus, tree.pre) <= cfg.milp_max_binaries)).flatten()
    if cand.numel() == 0:
        return kids, None
    cand = cand[kids.value[cand].argsort(descending=True)][:cfg.milp_per_batch]  # nearest to closing first
    done = torch.zeros(len(kids), dtype=torch.bool)
    for k in cand.tolist():
        allowed = cfg.milp_share * (time.monotonic() - t_start) + cfg.milp_seconds - tree.milp_time
        rem = tree.budget.remaining()
        seconds = min(cfg.milp_seconds, allowed, rem if rem is not None else cfg.milp_seconds)
        if seconds < 0.5 * cfg.milp_seconds:
            break
        one = kids.map(lambda t: t[k:k + 1])
        t0 = time.monotonic()
        status, w, value = milp_leaf(tree, one, seconds, cfg.milp_solver)
        tree.milp_time += time.monotonic() - t0
        tree.milp_tried += 1
        kids.stall[k] = -1
        if status == "falsified":
            return kids, w
        if status == "verified":
            one.value = torch.full_like(one.value, value)
            tree.close(one, "milp")
            tree.milp_closed += 1
            done[k] = True
    return kids.map(lambda t: t[~done]), None
