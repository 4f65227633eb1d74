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
with onnxruntime). Each disjunct of the property gets its own tree.

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

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..bounds.alpha import alpha_lower
from ..bounds.deeppoly import BoundState
from ..bounds.fperror import row_margin
from ..graph import ops
from ..graph.graph import Graph
from ..spec.sets import InputSet
from ..spec.spec import Property
from .falsify import objective
from .gate import closed, domain_value
from .input_split import root_box
from .proof import ProofTree, TreeLog, leaves_in_preorder
from .witness import OnnxRunner, Witness, validate

#: Leaf kinds of a ReLU-splitting proof tree.
LEAF_KINDS = ("bound", "lp", "empty")

Tensor = torch.Tensor


@dataclass(frozen=True)
class ReluSplitConfig:
    """Options of ReLU splitting."""

    batch: int = 64  # domains split per iteration (their 2 x batch children are bounded together)
    iterations: int = 15  # alpha/beta optimisation steps per batch of children
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


@dataclass
class ReluSplitOutcome:
    status: str  # verified | falsified | timeout | unknown
    witness: Witness | None = None
    domains: int = 0
    iterations: int = 0
    max_queue: int = 0
    trees: list[ProofTree] | None = None  # one per disjunct, when verified


def _f32(t: Tensor) -> Tensor:
    """``t`` rounded to float32-representable values (kept float64): multipliers stored in a proof
    are then exactly the ones the bound was computed with."""
    return t.float().double()


def supports(graph: Graph) -> bool:
    """ReLU splitting needs ReLUs, and only piecewise-linear ops whose bounds the splits can refine."""
    kinds = (ops.Input, ops.LinearOp, ops.Relu)
    return any(isinstance(n.op, ops.Relu) for n in graph.nodes) and \
        all(isinstance(n.op, kinds) for n in graph.nodes)


def relu_nodes(graph: Graph) -> list[int]:
    """The ReLU nodes the output depends on, in topological order."""
    return [i for i, n in enumerate(graph.nodes) if isinstance(n.op, ops.Relu) and i in graph.live]


@dataclass
class _Domains:
    """A batch of domains (first axis of every tensor)."""

    splits: dict[int, Tensor]  # ReLU node -> (N, n) int8 in {-1, 0, 1}
    bounds: dict[int, tuple[Tensor, Tensor]]  # pre-activation node -> (N, n) lower, upper
    alpha: dict[int, Tensor]  # ReLU node -> (N, s, n) lower slopes of the final rows
    beta: dict[int, Tensor]  # ReLU node -> (N, s, n) split multipliers
    value: Tensor  # (N,) best row slack minus margin (> 0: closed)
    branch: Tensor  # (N, 2) (position in the ReLU list, neuron); (-1, -1) when none is left
    ids: Tensor  # (N,) int64: domain ids in the proof log

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def bounds_list(self, n_nodes: int) -> list:
        """The intermediate bounds as a BoundState wants them: a list indexed by node."""
        out: list = [None] * n_nodes
        for j, lu in self.bounds.items():
            out[j] = lu
        return out

    def map(self, fn) -> "_Domains":
        return _Domains({r: fn(t) for r, t in self.splits.items()},
                        {j: (fn(lu[0]), fn(lu[1])) for j, lu in self.bounds.items()},
                        {r: fn(t) for r, t in self.alpha.items()},
                        {r: fn(t) for r, t in self.beta.items()},
                        fn(self.value), fn(self.branch), fn(self.ids))

    @staticmethod
    def cat(a: "_Domains | None", b: "_Domains") -> "_Domains":
        if a is None or len(a) == 0:
            return b
        return _Domains({r: torch.cat([a.splits[r], t]) for r, t in b.splits.items()},
                        {j: (torch.cat([a.bounds[j][0], lu[0]]), torch.cat([a.bounds[j][1], lu[1]]))
                         for j, lu in b.bounds.items()},
                        {r: torch.cat([a.alpha[r], t]) for r, t in b.alpha.items()},
                        {r: torch.cat([a.beta[r], t]) for r, t in b.beta.items()},
                        torch.cat([a.value, b.value]), torch.cat([a.branch, b.branch]),
                        torch.cat([a.ids, b.ids]))


class _Tree:
    """The branch and bound of one disjunct: a domain is closed when one of its rows has
    ``C_i y - d_i`` above the floating-point margin everywhere on it."""

    def __init__(self, graph: Graph, prop: Property, prop_index: int, runner: OnnxRunner,
                 rows: np.ndarray, cfg: ReluSplitConfig) -> None:
        Cs, ds, owner = prop.stacked()
        self.graph, self.prop, self.k, self.runner, self.cfg = graph, prop, prop_index, runner, cfg
        self.C_all, self.d_all, self.owner = torch.as_tensor(Cs), torch.as_tensor(ds), owner
        self.K = len(prop.disjuncts)
        self.rows = rows
        self.C, self.d = self.C_all[rows], self.d_all[rows]
        self.lo, self.hi = root_box(graph, prop)
        self.relus = relu_nodes(graph)
        self.pre = [graph.nodes[r].inputs[0] for r in self.relus]
        self.domains = 0
        self.attacks = 0
        self.log = TreeLog(LEAF_KINDS)

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
        rows = torch.as_tensor(self.rows)
        alpha = {r: a[:, rows].clone() for r, a in shared.alpha.items()}
        dom = _Domains({r: torch.zeros(1, self.graph.size(r), dtype=torch.int8) for r in self.relus},
                       {j: tuple(t.clone() for t in shared.bounds[j]) for j in self.pre},
                       alpha, {r: torch.zeros_like(alpha[r]) for r in self.relus},
                       self._value(shared.low[:, rows], shared.y_bounds), torch.full((1, 2), -1, dtype=torch.long),
                       torch.zeros(1, dtype=torch.int64))
        return self.bound(dom, first_changed=None, optimise=False)

    def bound(self, dom: _Domains, first_changed: int | None, optimise: bool = True,
              deadline: float | None = None) -> tuple[_Domains, Witness | None]:
        """(Re)bound a batch of domains in place; returns it and a confirmed witness, if any."""
        n = len(dom)
        self.domains += n
        S = self._inputs(n)
        bounds = dom.bounds_list(len(self.graph.nodes))
        refined = set(range(len(self.graph.nodes)))
        if self.cfg.refine_intermediate and first_changed is not None:
            refined = {j for j in refined if j <= self.pre[first_changed]}
        with torch.no_grad():
            shared = {r: b.mean(dim=1, keepdim=True) for r, b in dom.beta.items()} \
                if self.cfg.beta_intermediate else None
            st0 = BoundState(self.graph, S, intersect=True, bounds=bounds, refined=refined, splits=dom.splits,
                             beta=shared, beta_everywhere=shared is not None)
            for r in self.relus:
                st0.relaxation(r)  # clamps and (after the first new split) refines
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
        opt = torch.optim.Adam([{"params": list(alpha.values()), "lr": self.cfg.lr_alpha},
                                {"params": list(beta.values()), "lr": self.cfg.lr_beta}])
        with torch.enable_grad():
            for it in range(steps):
                rec: dict = {}
                st = BoundState(self.graph, S, intersect=True, bounds=list(st0.bounds),
                                refined=set(range(len(self.graph.nodes))), splits=dom.splits,
                                alpha=alpha, beta=beta, alpha_out_only=True, record=rec,
                                relax=dict(st0.relax))  # the DeepPoly relaxations do not change
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
                if it == steps - 1 or bool(closed(best).all()) or (deadline is not None and time.monotonic() > deadline):
                    break
                opt.zero_grad()
                (-low.sum()).backward()
                opt.step()
                with torch.no_grad():
                    for r in self.relus:
                        alpha[("out", r)].copy_(_f32(alpha[("out", r)].clamp(0.0, 1.0)))
                        beta[r].copy_(_f32(beta[r].clamp(min=0.0)))
        best = torch.where(empty, torch.full_like(best, float("inf")), best)
        dom.value, dom.alpha, dom.beta = best, best_alpha, best_beta
        dom.branch = self._choose(dom, record)
        return dom, self._try_counterexamples(A_best, best)

    # -- branching ---------------------------------------------------------------
    def _choose(self, dom: _Domains, record: dict) -> Tensor:
        """Per domain, the unstable free ReLU with the largest relaxation gap in the final bound."""
        n = len(dom)
        best_score = torch.full((n,), 0.0, dtype=torch.float64)
        branch = torch.full((n, 2), -1, dtype=torch.long)
        for p, (r, j) in enumerate(zip(self.relus, self.pre)):
            l, u = dom.bounds[j]
            free = (l < 0) & (u > 0) & (dom.splits[r] == 0)
            if not bool(free.any()):
                continue
            A = record[r].sum(dim=1) if r in record else torch.ones_like(l)  # (N, n) over the rows
            width = (u - l).clamp(min=1e-30)
            intercept = (u * -l / width).clamp(min=0)
            score = A.clamp(max=0).abs() * intercept + 1e-3 * A.abs() * torch.minimum(u, -l).clamp(min=0)
            score = torch.where(free, score + 1e-12, torch.zeros_like(score))
            s, k = score.max(dim=1)
            take = s > best_score
            best_score = torch.where(take, s, best_score)
            branch[take, 0] = p
            branch[take, 1] = k[take]
        return branch

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

    # -- leaves ------------------------------------------------------------------
    def leaves(self, dom: _Domains) -> tuple[str, Witness | None]:
        """Decide domains whose ReLUs are all fixed (stable or split): the net is affine on each,
        so ``min_x max_i (C_i y - d_i)`` over the domain is an LP. Its minimiser is tried as a
        counterexample; its duals become the beta multipliers of a sound bound (LP duality:
        with exact multipliers the beta-CROWN bound equals the LP minimum)."""
        try:
            from scipy.optimize import linprog
        except ImportError:
            return "unknown", None
        for k in range(len(dom)):
            one = dom.map(lambda t: t[k:k + 1])
            S = self._inputs(1)
            with torch.no_grad():
                st = BoundState(self.graph, S, intersect=True, bounds=one.bounds_list(len(self.graph.nodes)),
                                refined=set(range(len(self.graph.nodes))), splits=one.splits)
                A_out, c_out = st.backsub(self.graph.output, self.C[None])  # exact on the domain
                rows, rhs, where = [], [], []
                for r, j in zip(self.relus, self.pre):
                    idx = torch.nonzero(one.splits[r][0]).flatten()
                    if idx.numel() == 0:
                        continue
                    eye = torch.zeros(1, idx.numel(), self.graph.size(j), dtype=torch.float64)
                    eye[0, torch.arange(idx.numel()), idx] = 1.0
                    A_z, c_z = st.backsub(j, eye)
                    sg = one.splits[r][0, idx].to(torch.float64)
                    rows.append(-sg[:, None] * A_z[0])  # -s z <= 0
                    rhs.append(sg * c_z[0])
                    where.append((r, idx))
            n = self.lo.shape[1]
            s = self.C.shape[0]
            A_ub = [np.hstack([A_out[0].numpy(), -np.ones((s, 1))])]
            b_ub = [(self.d - c_out[0]).numpy()]
            for a, c in zip(rows, rhs):
                A_ub.append(np.hstack([a.numpy(), np.zeros((a.shape[0], 1))]))
                b_ub.append(c.numpy())
            cost = np.zeros(n + 1)
            cost[-1] = 1.0
            box = list(zip(self.lo[0].tolist(), self.hi[0].tolist())) + [(None, None)]
            res = linprog(cost, A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub), bounds=box, method="highs")
            if res.status == 2 and rows:  # empty domain: certify it with a Farkas-like combination
                free_min = float((S.concretize_lower(A_out, c_out) - self.d).min())  # no multipliers
                duals = self._emptiness_multipliers(linprog, rows, rhs, box, free_min)
                if duals is None:
                    return "unknown", None
            elif res.status != 0:
                return "unknown", None  # numerical trouble
            else:
                w = self._try_points(torch.as_tensor(res.x[:n])[None])
                if w is not None:
                    return "falsified", w
                if s != 1:
                    return "unknown", None
                duals = -np.asarray(res.ineqlin.marginals)[s:]
            off = 0
            for r, idx in where:
                one.beta[r] = torch.zeros_like(one.beta[r])
                one.beta[r][0, 0, idx] = torch.as_tensor(np.maximum(duals[off:off + idx.numel()], 0.0))
                off += idx.numel()
            floor = one.value.clone()
            one.beta = {r: _f32(b) for r, b in one.beta.items()}
            one, _ = self.bound(one, None, optimise=False)
            one.value = torch.maximum(one.value, floor)
            if not bool(closed(one.value)[0]):
                return "unknown", None
            self.close(one, "lp")
        return "verified", None

    @staticmethod
    def _emptiness_multipliers(linprog, rows, rhs, box, value: float) -> np.ndarray | None:
        """Multipliers showing the split constraints ``-s z(x) <= 0`` have no solution in the box:
        ``min sigma`` s.t. ``-s z(x) <= sigma`` has ``sigma* > 0`` and its duals ``y`` (>= 0, sum 1)
        give ``sum y (-s z(x)) >= sigma*`` on the box; scaled so that the beta bound (re-derived
        soundly afterwards) exceeds the domain's current deficit ``value``."""
        A = np.vstack([r.numpy() for r in rows])
        b = np.concatenate([c.numpy() for c in rhs])
        cost = np.zeros(A.shape[1] + 1)
        cost[-1] = 1.0
        res = linprog(cost, A_ub=np.hstack([A, -np.ones((A.shape[0], 1))]), b_ub=b, bounds=box,
                      method="highs")
        if res.status != 0 or not res.fun > 0:
            return None
        y = np.maximum(-np.asarray(res.ineqlin.marginals), 0.0)
        return y * 2.0 * (abs(value) + 1.0) / res.fun

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
        if self.runner is None:
            return None
        with torch.no_grad():
            y = self.graph.forward(x)
            m = x.shape[0]
            v = objective(y[:, None, :], self.C_all.expand(m, -1, -1), self.d_all.expand(m, -1),
                          self.owner, self.K)[:, 0]
            hits = torch.nonzero(v <= 1e-6 * (1 + v.abs())).flatten()
        if hits.numel() == 0:
            return None
        return validate(self.runner, self.prop, self.k, x[hits[:64]].numpy())


@dataclass
class _Root:
    """alpha-CROWN over the property's box for all rows at once (intermediate bounds optimised)."""

    low: Tensor  # (1, s_all) lower bounds of every row
    bounds: dict[int, tuple[Tensor, Tensor]]  # pre-activation node -> (1, n) bounds
    alpha: dict[int, Tensor]  # ReLU node -> (1, s_all, n) slopes of the final rows
    y_bounds: tuple[Tensor, Tensor]  # (1, n_out) bounds of the output


def _root(graph: Graph, prop: Property, relus: list[int], cfg: ReluSplitConfig) -> _Root:
    C = torch.as_tensor(prop.stacked()[0])
    S = InputSet(*root_box(graph, prop))
    low, st = alpha_lower(graph, S, C, iterations=cfg.root_iterations, keep_state=True)
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
    return _Root(low.detach(), bounds, alpha, y)


def relu_split(graph: Graph, prop: Property, prop_index: int, runner: OnnxRunner, deadline: float | None,
               cfg: ReluSplitConfig = ReluSplitConfig()) -> ReluSplitOutcome:
    """Decide one property by ReLU splitting; see the module docstring."""
    _, _, owner = prop.stacked()
    out = ReluSplitOutcome("verified")
    if len(owner) == 0 or not supports(graph):
        return ReluSplitOutcome("unknown")
    if any(not (owner == k).any() for k in range(len(prop.disjuncts))):
        return ReluSplitOutcome("unknown")  # an unconstrained disjunct: left to the attack
    shared = _root(graph, prop, relu_nodes(graph), cfg)
    out.trees = []
    for disjunct in range(len(prop.disjuncts)):
        rows = np.nonzero(owner == disjunct)[0]
        res = _decide_disjunct(graph, prop, prop_index, runner, rows, deadline, cfg, shared)
        out.domains += res.domains
        out.iterations += res.iterations
        out.max_queue = max(out.max_queue, res.max_queue)
        if res.status != "verified":
            out.status, out.witness, out.trees = res.status, res.witness, None
            return out
        out.trees.extend(res.trees or [])
    return out


def _decide_disjunct(graph: Graph, prop: Property, prop_index: int, runner: OnnxRunner, rows: np.ndarray,
                     deadline: float | None, cfg: ReluSplitConfig, shared: _Root) -> ReluSplitOutcome:
    tree = _Tree(graph, prop, prop_index, runner, rows, cfg)
    out = ReluSplitOutcome("verified")
    root, w = tree.root(shared)
    if w is not None:
        return ReluSplitOutcome("falsified", w, tree.domains)
    queue: _Domains | None = None
    if bool(closed(root.value)[0]):
        tree.close(root)
    else:
        queue = root
    while queue is not None and len(queue):
        if deadline is not None and time.monotonic() > deadline:
            out.status = "timeout"
            break
        if tree.domains > cfg.max_domains:
            out.status = "unknown"
            break
        out.iterations += 1
        m = min(cfg.batch, len(queue))
        order = torch.argsort(queue.value)
        take, rest = order[:m], order[m:]
        parents = queue.map(lambda t: t[take])
        queue = queue.map(lambda t: t[rest])
        stuck = parents.branch[:, 0] < 0
        if bool(stuck.any()):  # every ReLU fixed: the net is affine there, an LP decides
            status, w = tree.leaves(parents.map(lambda t: t[stuck]))
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
        kids, w = tree.bound(kids, first, deadline=deadline)
        if w is not None:
            out.status, out.witness = "falsified", w
            break
        kids.value = torch.maximum(kids.value, floor)  # a child lies inside its parent (open: no closing)
        done = closed(kids.value)
        tree.close(kids.map(lambda t: t[done]))
        queue = _Domains.cat(queue, kids.map(lambda t: t[~done]))
        out.max_queue = max(out.max_queue, len(queue))
    out.domains = tree.domains
    if out.status == "verified":
        out.trees = [tree.log.tree("relu_split", meta={"rows": rows.tolist(), "domains": tree.domains,
                                                        "root_iterations": cfg.root_iterations})]
    return out


@dataclass
class RecheckReport:
    """What :func:`recheck` re-derived: leaves closed with their recorded multipliers, empty
    leaves confirmed, leaves closed only by a fresh search of their own, and failures."""

    leaves: int = 0
    direct: int = 0
    resplit: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.leaves > 0


def recheck(graph: Graph, prop: Property, trees: list[ProofTree], cfg: ReluSplitConfig = ReluSplitConfig(),
            batch: int = 128, time_per_leaf: float = 5.0) -> RecheckReport:
    """Re-derive a ReLU-splitting proof (one tree per disjunct): recompute the root's
    intermediate bounds (the same alpha-CROWN run as the search), replay each tree's splits --
    the two children of a split cover their parent, so the leaves cover the root -- and bound
    every leaf again with its recorded slopes and multipliers (any slopes in [0, 1] and any
    multipliers >= 0 give a sound bound, so nothing recorded is trusted); an ``empty`` leaf must
    show its clamped bounds contradicting its splits. A leaf that does not close that way gets
    a fresh search of its own (``time_per_leaf`` seconds) before it counts as failed."""
    t0 = time.monotonic()
    rep = RecheckReport()
    _, _, owner = prop.stacked()
    relus = relu_nodes(graph)
    if not supports(graph) or not trees:
        rep.failed = 1
        return rep
    cfg = ReluSplitConfig(root_iterations=int(trees[0].meta.get("root_iterations", cfg.root_iterations)))
    shared = _root(graph, prop, relus, cfg)
    sizes = [graph.size(r) for r in relus]
    for t in trees:
        rows = np.asarray(t.meta.get("rows", []), dtype=np.int64)
        if not t.well_formed() or len(rows) == 0:
            rep.failed += 1
            continue
        tree = _Tree(graph, prop, -1, None, rows, cfg)
        root, _ = tree.root(shared)

        def child(splits, pos, k, side):
            new = dict(splits)
            new[(pos, k)] = 1 if side == 0 else -1
            return new

        leaves = list(leaves_in_preorder(t, {}, child))
        rep.leaves += len(leaves)
        for s in range(0, len(leaves), batch):
            part = leaves[s:s + batch]
            n = len(part)
            dom = root.map(lambda x: x.expand(n, *x.shape[1:]).clone())
            dom.splits = {r: torch.zeros(n, graph.size(r), dtype=torch.int8) for r in relus}
            for b, (splits, kind, slot, _) in enumerate(part):
                for (pos, k), sign in splits.items():
                    dom.splits[relus[pos]][b, k] = sign
                if slot >= 0:
                    a = torch.as_tensor(t.payload["alpha"][slot], dtype=torch.float64)
                    be = torch.as_tensor(t.payload["beta"][slot], dtype=torch.float64)
                    off = 0
                    for r, size in zip(relus, sizes):
                        dom.alpha[r][b] = a[:, off:off + size]
                        dom.beta[r][b] = be[:, off:off + size]
                        off += size
                else:
                    for r in relus:
                        dom.beta[r][b] = 0.0
            dom.value = torch.full((n,), float("-inf"), dtype=torch.float64)
            dom, _ = tree.bound(dom, None, optimise=False)
            ok = closed(dom.value)
            rep.direct += int(ok.sum())
            for b in torch.nonzero(~ok).flatten().tolist():  # a fresh search under this leaf
                if _research(tree, dom.map(lambda x: x[b:b + 1]), cfg, time_per_leaf):
                    rep.resplit += 1
                else:
                    rep.failed += 1
    rep.seconds = time.monotonic() - t0
    return rep


def _research(tree: "_Tree", leaf: _Domains, cfg: ReluSplitConfig, seconds: float) -> bool:
    """ReLU splitting below one leaf, with optimisation, until closed or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    leaf, _ = tree.bound(leaf, None, optimise=True, deadline=deadline)
    queue = None if bool(closed(leaf.value)[0]) else leaf
    while queue is not None and len(queue):
        if time.monotonic() > deadline:
            return False
        parents = queue.map(lambda t: t[:cfg.batch])
        queue = queue.map(lambda t: t[cfg.batch:])
        if bool((parents.branch[:, 0] < 0).any()):
            return False  # fully split and still open: not re-derived here
        kids, first = tree.children(parents)
        floor = kids.value.clone()
        kids, _ = tree.bound(kids, first, deadline=deadline)
        kids.value = torch.maximum(kids.value, floor)
        queue = _Domains.cat(queue, kids.map(lambda t: t[~closed(kids.value)]))
    return True
