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
children are queued (with their bounds already known), on a stack: the child whose
candidate points came nearest to a counterexample on top. The minimiser of each
worst row's linear bound and the centre of every child are tried as
counterexamples; so are, every few iterations, the points an attack (PGD, then LP
polishing) finds inside the open domains of lowest value, where a counterexample
too small for the attack over the whole box is likely to be (alpha-beta-CROWN's
"BaB attack" idea). A hit counts only after onnxruntime confirms it. The property
holds when no open domain is left.

The root box is the property's box rounded outward to the model's precision
(:func:`certkit.bounds.fperror.round_outward`); bounds are those of the computed
network (:mod:`certkit.bounds.fperror`), and a domain closes only through
:func:`certkit.verify.gate.domain_value` (finite, above the row margin). The
search records every split and closed leaf (:class:`certkit.verify.proof.TreeLog`):
a ``verified`` outcome carries its proof tree, which :func:`recheck` re-derives.
"""
from __future__ import annotations

import time
import weakref
from typing import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..bounds import conjunction
from ..bounds.alpha import LR_DECAY
from ..bounds.deeppoly import BoundState
from ..bounds.forward import free_columns, start_bounds
from ..bounds.fperror import precision_of, round_outward, row_margin
from ..bounds.memory import headroom
from ..graph.ops import RELAXED
from ..log import SearchProgress, get as logger
from ..spec.sets import InputSet
from .falsify import AttackConfig, attack, near_miss, objective
from .gate import closed, disjunct_values, domain_value
from . import enumeration
from .proof import ProofTree, RecheckReport, TreeLog, leaves_in_preorder, meta_count
from .query import Budget, BudgetExpired, Query
from .witness import Witness

#: share of the memory headroom that the slopes kept with queued domains may take (``SplitConfig.alpha_warm``);
#: beyond it the search goes on without them
WARM_SLOPES_SHARE = 0.25
#: ... and the intermediate bounds kept with queued domains (``SplitConfig.inherit``)
KEPT_BOUNDS_SHARE = 0.25

#: Leaf kinds of an input-splitting proof tree: which bound closed the leaf, or ``enumerated``: every
#: input of the leaf was run in onnxruntime (:mod:`certkit.verify.enumeration`)
LEAF_KINDS = ("deeppoly", "alpha", "enumerated")
ENUMERATED = LEAF_KINDS.index("enumerated")

Tensor = torch.Tensor

#: the attack inside open domains (:meth:`_Problem.attack_open`)
DOMAIN_ATTACK = AttackConfig(samples=32, restarts=4, steps=40, step_size=0.3, polish=1, polish_steps=10,
                             polish_regions=4)


@dataclass(frozen=True)
class SplitConfig:
    """Options of input splitting."""

    batch: int = 64  # domains expanded per iteration (each gives 2 * lookahead children)
    lookahead: int = 2  # candidate dimensions tried per domain
    alpha_iterations: int = 5  # alpha-CROWN steps on domains DeepPoly leaves open (0: DeepPoly only)
    alpha_lr: float = 0.3
    #: the learning rate's decay per alpha step (recorded in proof trees; 1.0 in trees written before it was)
    alpha_lr_decay: float = LR_DECAY
    #: one slope per ReLU neuron for every bound computation (:func:`~certkit.bounds.alpha.alpha_lower`'s
    #: ``shared``; alpha-beta-CROWN's ``share_slopes``) instead of one per (target, neuron)
    alpha_shared: bool = False
    #: children start alpha-CROWN from their parent's optimised slopes (kept per queued domain; with
    #: ``alpha_shared`` only, whose slopes are small: one per neuron and bound computation)
    alpha_warm: bool = False
    max_domains: int = 50_000_000
    #: every ``attack_every`` iterations, PGD and LP polishing (:func:`certkit.verify.falsify.attack`)
    #: inside the ``attack_domains`` open domains of lowest value, while the attacks have taken at
    #: most ``attack_share`` of the search's time so far (0: never)
    attack_every: int = 8
    attack_domains: int = 16
    attack_share: float = 0.05
    #: after this share of the budget (None: never), give up (status ``unknown``, message
    #: ``HOPELESS``) when the time so far divided by the share of the box's volume closed so far
    #: exceeds the whole budget: the measured cost says another procedure should have the rest
    give_up_after: float | None = None
    #: when set (and there is a deadline), each batch is cut to the parents whose children, at the
    #: measured seconds per domain, fit in this share of the time left (at least one): on nets where
    #: one domain costs seconds (cgan_2023: 10 s) a full batch would never finish
    batch_share: float | None = None
    #: bound a weighted sum of each disjunct's rows beside the rows (:mod:`certkit.bounds.conjunction`)
    conjunctions: bool = True
    #: run every input of an open domain that holds at most :data:`certkit.verify.enumeration.MAX_POINTS`
    #: of them in onnxruntime (box queries with a runner; :mod:`certkit.verify.enumeration`)
    enumerate: bool = True
    #: children start from their parent's intermediate bounds, intersected with their own start bounds
    #: (a child's box lies inside its parent's, so the parent's bounds hold on it; DeepPoly is not
    #: monotone in the box and a child's own can be looser): neurons the parent's back-substitution showed
    #: stable need no rows in the children. Kept per queued domain (the inputs of activations only) while
    #: they fit in :data:`KEPT_BOUNDS_SHARE` of the memory headroom. cgan_2023's 32x32 generator: a child's
    #: DeepPoly took 1.7-1.9 s instead of 14.7-17.1 s, to the same bound
    inherit: bool = False


@dataclass
class SplitOutcome:
    status: str  # verified | falsified | timeout | unknown
    witness: Witness | None = None
    domains: int = 0  # domains bounded
    iterations: int = 0
    max_queue: int = 0
    tree: ProofTree | None = None  # the proof, when verified
    closed_volume: float = 0.0  # share of the root box's volume closed
    message: str = ""
    #: status ``handed_off`` (``input_split(handoff=...)``): the search's record so far and its open
    #: domains (lo, hi, ids), for others to go on with (:mod:`certkit.verify.distributed`)
    log: TreeLog | None = None
    open: tuple[Tensor, Tensor, Tensor] | None = None
    roots: list | None = None  # the roots' ids in ``log`` (several: ``input_split(root=...)`` of k boxes)
    #: not verified: why splitting is stuck at the worst open domain, when the floating-point error terms
    #: are the reason (:meth:`_Problem.check_floor`); "" otherwise
    floor: str = ""


#: SplitOutcome.message when input splitting gave up on its measured cost (SplitConfig.give_up_after)
HOPELESS = "input splitting would not finish in time at its measured rate"
#: once the search has used this share of its time (or, without a deadline, after FLOOR_ITERATIONS
#: iterations), the worst open domain's guide vertex is bounded as a single point (:meth:`_Problem.check_floor`),
#: where the search's mean seconds per domain is at most FLOOR_SHARE of the time left, and within that share
FLOOR_CHECK, FLOOR_ITERATIONS, FLOOR_SHARE = 0.5, 64, 0.25
#: the open domains checked: this many of the lowest value and this many of the smallest
FLOOR_DOMAINS = 4


@dataclass
class _Bounded:
    """A batch of bounded domains."""

    lo: Tensor
    hi: Tensor
    value: Tensor  # (b,) min over disjuncts of the best row slack minus margin (> 0: closed)
    a: Tensor  # (b, n) input coefficients of the guide row's linear bound (:func:`guide_row`)
    how: Tensor  # (b,) int64: index in LEAF_KINDS of the bound that gave ``value``
    ids: Tensor  # (b,) int64: domain ids in the proof log
    #: (b,) the property's value at the domain's candidate points (its centre and its guide row's minimiser,
    #: float64): how close the samples came to a counterexample there
    near: Tensor
    #: alpha-CROWN's slopes per key (:attr:`BoundState.alpha`), (b, R, n), NaN where a domain has none
    #: (``SplitConfig.alpha_warm``)
    slopes: dict | None = None
    #: intermediate bounds per kept node (``SplitConfig.inherit``), (b, 2, n): lower and upper
    kept: dict | None = None

    def rows(self, idx) -> "_Bounded":
        slopes = None if self.slopes is None else {k: v[idx] for k, v in self.slopes.items()}
        kept = None if self.kept is None else {k: v[idx] for k, v in self.kept.items()}
        return _Bounded(*(t[idx] for t in self.fields()), slopes=slopes, kept=kept)

    def fields(self) -> tuple[Tensor, ...]:
        return self.lo, self.hi, self.value, self.a, self.how, self.ids, self.near

    @staticmethod
    def cat(a: "_Bounded", b: "_Bounded") -> "_Bounded":
        if a.lo.shape[0] == 0:
            return b
        slopes = None
        if a.slopes is not None or b.slopes is not None:
            sa, sb = a.slopes or {}, b.slopes or {}
            slopes = {k: torch.cat([sa.get(k, _nan_rows(a.lo.shape[0], v)), sb.get(k, _nan_rows(b.lo.shape[0], v))])
                      for k, v in {**sa, **sb}.items()}
        kept = None
        if a.kept is not None and b.kept is not None:  # one side without: the other's are dropped
            kept = {k: torch.cat([v, b.kept[k]]) for k, v in a.kept.items()}
        return _Bounded(*(torch.cat([x, y]) for x, y in zip(a.fields(), b.fields())), slopes=slopes, kept=kept)

    def kept_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in (self.kept or {}).values())


class _Problem:
    def __init__(self, query: Query, cfg: SplitConfig, budget: Budget) -> None:
        Cn, dn, owner = query.C, query.d, query.owner
        self.graph, self.query, self.budget = query.graph, query, budget
        self.C, self.d = torch.as_tensor(Cn), torch.as_tensor(dn)
        self.owner = owner
        self.own = torch.as_tensor(owner)
        self.K = query.n_disjuncts
        self.domains = 0
        if cfg.alpha_warm and not cfg.alpha_shared:
            raise ValueError("alpha_warm keeps slopes per queued domain: only with alpha_shared")
        self.cfg = cfg
        self.warm = cfg.alpha_warm  # off for the rest of the search once the kept slopes outgrow their share
        self.slope_bytes = WARM_SLOPES_SHARE * headroom(budget)
        self.inherit = cfg.inherit  # off for the rest of the search once the kept bounds outgrow their share
        self.kept_bytes = KEPT_BOUNDS_SHARE * headroom(budget)
        #: the nodes whose bounds children inherit: the inputs of the nodes relaxed with their bounds
        self.keep = sorted({j for i in self.graph.live for j in self.graph.nodes[i].inputs
                            if j in self.graph.live and j != 0 and isinstance(self.graph.nodes[i].op, RELAXED)})
        self.attack_seconds = 0.0
        self.seconds = 0.0  # spent bounding domains
        self.combo_tries = self.combo_wins = 0  # open domains the weighted rows were tried on, and closed
        self.enumerated = 0  # domains closed by running their inputs
        #: a disjunct of several rows: bound their weighted sums too (:mod:`certkit.bounds.conjunction`)
        self.conjunctions = cfg.conjunctions and self.own.numel() > 0 \
            and int(torch.bincount(self.own, minlength=self.K).max()) > 1
        self.floor, self.floor_checked = "", False  # :meth:`check_floor`

    def check_floor(self, *parts: "_Bounded") -> None:
        """Does an error floor keep open domains open? For the open domains (of ``parts``, read in place:
        the kept bounds of a whole queue are not copied) of lowest value and the smallest ones (:data:`FLOOR_DOMAINS` each; a floor's domains are deep and low), the vertex ``x`` that
        minimises the domain's guide row (where its bound is lowest) is bounded as a single point, from the
        domain's intermediate bounds where the search keeps them (as its children would be): where the model
        satisfies the property at ``x`` (a float64 evaluation) but the sound bound of ``{x}`` -- the model's
        floating-point error terms and the float32 tie margin of the verdict gate included -- does not, a
        domain around ``x``, however small, closes only where its bound beats that of its own point
        (DeepPoly's at a point, where every ReLU the error terms do not straddle is stable, is hard to beat):
        ``floor`` says so (cgan_2023's 64x64 nCh_3 prop_1 had spent its time splitting around such a corner
        before the ConvTranspose fan-in was counted right; nn4sys's mscn_128d_dual cardinality_1_120 says so
        now), and that only running every input of a small domain in onnxruntime (:mod:`.enumeration`)
        closes them where that applies. A diagnostic: it decides nothing and stops nothing. Once per search, where the search's mean
        seconds per domain are at most :data:`FLOOR_SHARE` of the time left, and within that share (a fresh
        DeepPoly of a point took 19 s on cgan_2023's 64x64 generator, where a domain that inherits its
        parent's bounds takes about 2 s)."""
        if self.floor_checked:
            return
        self.floor_checked = True
        rem = self.budget.remaining()
        if rem is not None and self.seconds / max(self.domains, 1) > FLOOR_SHARE * rem:
            return
        parts = [p for p in parts if p.lo.shape[0]]
        if not parts:
            return
        lo, hi, value, a = (torch.cat([getattr(p, f) for p in parts]) for f in ("lo", "hi", "value", "a"))
        k = min(FLOOR_DOMAINS, lo.shape[0])
        size = torch.log((hi - lo).clamp(min=1e-300)).sum(dim=1)
        idx = torch.unique(torch.cat([value.topk(k, largest=False).indices, size.topk(k, largest=False).indices]))
        x = torch.where(a[idx] >= 0, lo[idx], hi[idx]).to(torch.float32).to(torch.float64)  # inputs onnxruntime takes
        kept = None
        if self.inherit and all(p.kept is not None for p in parts):  # each part's selected rows, in idx's order
            offsets = np.cumsum([0] + [p.lo.shape[0] for p in parts])
            rows = [idx[(idx >= o) & (idx < e)] - o for o, e in zip(offsets[:-1], offsets[1:])]
            kept = {j: torch.cat([p.kept[j][r] for p, r in zip(parts, rows)]) for j in parts[0].kept}
        with torch.no_grad():
            holds = self._objective(self.graph.forward(x))
            if not bool((holds > 0).any()):
                return  # counterexample candidates or ties: the attacks' business
            try:
                point = self._crown(x, x, kept, self.budget.share(FLOOR_SHARE))[0]  # as the domains' children
            except BudgetExpired:
                return
        stuck = torch.nonzero((holds > 0) & ~closed(point)).flatten()
        if stuck.numel() == 0:
            return
        r = int(stuck[holds[stuck].argmin()])  # the one of least margin
        free = free_columns(self.query.region).tolist()
        if 0 < len(free) < x.shape[1]:  # name the inputs the property leaves free
            shown = ", ".join(f"X_{j} = {float(x[r, j]):.9g}" for j in free[:6]) + (", ..." if len(free) > 6 else "")
            where = f"the input with {shown} (the others pinned)"
        else:
            shown = ", ".join(f"{v:.9g}" for v in x[r, :6].tolist()) + (", ..." if x.shape[1] > 6 else "")
            where = f"x = [{shown}]"
        then = ("only running every input a domain holds in onnxruntime closes the domains there (at most "
                f"{enumeration.MAX_POINTS} each)" if self.cfg.enumerate and self.query.runner is not None
                and self.query.is_box else "the property may not be provable for the model as onnxruntime computes it")
        self.floor = (f"input splitting's bounds cannot close the domains around {where}: the property holds there by "
                      f"{float(holds[r]):.3g} (float64 evaluation), but the sound bound of that single point, with the "
                      f"model's floating-point error terms and the float32 tie margin, is {float(point[r]):.3g}: the "
                      f"error terms exceed the margin there; {then}")

    def _objective(self, y: Tensor) -> Tensor:
        """v (b,) of outputs ``y`` (b, n_out): the property's value (:func:`~certkit.verify.falsify.objective`;
        <= 0: the point is in the unsafe set)."""
        b = y.shape[0]
        return objective(y[:, None, :], self.C.expand(b, -1, -1), self.d.expand(b, -1), self.owner, self.K)[:, 0]

    def bound(self, lo: Tensor, hi: Tensor, init: dict | None = None,
              kept: dict | None = None) -> tuple[_Bounded, Witness | None]:
        """Bound a batch of boxes: DeepPoly for all, then alpha-CROWN for those still open (from the
        slopes ``init``, (b, R, n) per key, when given); both start from the intermediate bounds
        ``kept`` (per node (b, 2, n), bounds that hold on the boxes: their parents') where given."""
        self.domains += lo.shape[0]
        t0 = time.monotonic()
        try:
            return self._bound(lo, hi, init, kept if self.inherit else None)
        finally:
            self.seconds += time.monotonic() - t0

    def _bound(self, lo: Tensor, hi: Tensor, init: dict | None, kept: dict | None) -> tuple[_Bounded, Witness | None]:
        with torch.no_grad():
            mid = (lo + hi) / 2
            y_c = self.graph.forward(mid)
            value, a, mine = self._crown(lo, hi, kept)
        how = torch.zeros(lo.shape[0], dtype=torch.int64)
        slopes = None
        if self.cfg.alpha_iterations:
            open_ = torch.nonzero(~closed(value)).flatten()
            if open_.numel():
                sub = None if init is None else {k: v[open_] for k, v in init.items()}
                sub_kept = None if mine is None else {k: v[open_] for k, v in mine.items()}
                v2, a2, found, theirs = self._alpha(lo[open_], hi[open_], sub, sub_kept)
                if mine is not None:  # both states' bounds hold: keep the tighter of each
                    mine = {k: v.index_copy(0, open_, _tighter(v[open_], theirs[k])) for k, v in mine.items()}
                if self.warm:
                    slopes = {k: _nan_rows(lo.shape[0], v).index_copy(0, open_, v) for k, v in found.items()}
                better = v2 > value[open_]
                value = value.clone()
                a = a.clone()
                value[open_] = torch.where(better, v2, value[open_])
                a[open_] = torch.where(better[:, None], a2, a[open_])
                how[open_] = torch.where(better, 1, 0)
        with torch.no_grad():  # counterexample candidates: each centre and worst-row minimiser
            vert = torch.where(a >= 0, lo, hi)
            cand = torch.cat([mid, vert])
            v = self._objective(torch.cat([y_c, self.graph.forward(vert)]))
        hits = torch.nonzero(v <= 1e-6 * (1 + v.abs())).flatten()
        w = self.query.confirm(cand[hits[:64]]) if hits.numel() else None
        near = torch.minimum(v[:lo.shape[0]], v[lo.shape[0]:])
        return _Bounded(lo, hi, value, a, how, torch.full_like(how, -1), near, slopes, mine), w

    def enumerate_open(self, b: "_Bounded") -> Witness | None:
        """Run every input of the open domains of ``b`` that hold few enough of them
        (:func:`certkit.verify.enumeration.run_box`): raise ``value`` to what the runs show and set
        ``how`` to :data:`ENUMERATED` where that closes the domain; a confirmed counterexample. The
        budget is checked before each domain (a batch may hold many of them)."""
        if not self.cfg.enumerate or self.query.runner is None or not self.query.is_box:
            return None
        open_ = ~closed(b.value)
        if not bool(open_.any()):
            return None
        dtype = getattr(self.query.runner, "dtype", np.float32)
        few = open_.numpy() & enumeration.small(self.query, b.lo.numpy(), b.hi.numpy(), dtype)
        for i in np.flatnonzero(few).tolist():
            self.budget.check()
            got = enumeration.run_box(self.query, b.lo[i].numpy(), b.hi[i].numpy())
            if got is None:
                continue
            value, w = got
            if w is not None:
                return w
            if value > 0:
                b.value[i], b.how[i] = value, ENUMERATED
                self.enumerated += 1
        return None

    def attack_open(self, queue: "_Bounded", seed: int) -> Witness | None:
        """Attack inside the open domains of lowest value (module docstring); a confirmed witness."""
        k = min(self.cfg.attack_domains, queue.lo.shape[0])
        idx = queue.value.topk(k, largest=False).indices
        share = self.budget.share(self.cfg.attack_share)
        t = time.monotonic()
        x, v = attack(self.graph, InputSet(queue.lo[idx], queue.hi[idx]), self.C, self.d, self.owner,
                      DOMAIN_ATTACK, share.deadline, seed)
        hits = torch.nonzero(torch.as_tensor(near_miss(v, self.d.numpy()))).flatten()
        w = self.query.confirm(torch.as_tensor(x)[hits[:64]]) if hits.numel() else None
        self.attack_seconds += time.monotonic() - t
        return w

    def _value(self, st: BoundState, low: Tensor, A_in: Tensor, const: Tensor, lo: Tensor,
               hi: Tensor) -> tuple[Tensor, Tensor]:
        """value (b,): min over disjuncts of the best row's slack beyond the margin (the gate's
        rule), or of the weighted sum of the disjunct's rows where that is higher
        (:mod:`certkit.bounds.conjunction`); a: the input coefficients of the row that gives it (the
        best row of the worst disjunct: the one row whose bound has to rise for the domain to close)."""
        b = low.shape[0]
        y_lo, y_hi = (t.detach() for t in st.bounds[self.graph.output])
        margin = row_margin(self.C, self.d, y_lo, y_hi)
        slack = low - self.d - margin
        value = domain_value(slack, torch.zeros_like(slack), self.own, self.K)
        a = A_in[torch.arange(b), guide_row(slack, self.own, self.K)]
        if not self.conjunctions or bool(closed(value).all()):
            return value, a
        both = conjunction.weighted_bound(lambda Ct: st.backsub(self.graph.output, Ct), InputSet(lo, hi),
                                          self.C, self.d, margin, y_lo, y_hi, self.own, self.K, A_in,
                                          const - self.d - margin)
        per = disjunct_values(slack, torch.zeros_like(slack), self.own, self.K, both)
        self.combo_tries += int((~closed(value)).sum())
        self.combo_wins += int((closed(per.min(dim=1).values) & ~closed(value)).sum())
        # the guide stays the best row: guided by the weighted row where that gave the value, input
        # splitting took 30791 domains on reach_prob_density's robot_6 instead of 24573, and ACAS Xu 3_3
        # prop_2 timed out at 116 s instead of closing in 93 s
        return per.min(dim=1).values, a

    def _start(self, S: InputSet, kept: dict | None, budget: Budget | None = None) -> tuple[list, dict]:
        """The bounds a back-substitution over ``S`` starts from (:func:`certkit.bounds.forward.start_bounds`)
        intersected with ``kept`` (per node (b, 2, n)), and their rounding errors."""
        errors: dict = {}
        bounds = start_bounds(self.graph, S, self.budget if budget is None else budget, errors)
        for j, v in (kept or {}).items():
            if bounds[j] is not None:
                bounds[j] = (torch.maximum(bounds[j][0], v[:, 0]), torch.minimum(bounds[j][1], v[:, 1]))
        return bounds, errors

    def _kept(self, st: BoundState, b: int) -> dict | None:
        """The bounds children inherit from a state over ``b`` boxes (None: ``inherit`` is off)."""
        if not self.inherit:
            return None
        return {j: torch.stack([st.bounds[j][0].detach().expand(b, -1), st.bounds[j][1].detach().expand(b, -1)], dim=1)
                for j in self.keep if st.bounds[j] is not None}

    def _crown(self, lo: Tensor, hi: Tensor, kept: dict | None = None,
               budget: Budget | None = None) -> tuple[Tensor, Tensor, dict | None]:
        """value and guide coefficients (as :meth:`_value`) by DeepPoly from the start bounds intersected
        with ``kept``, within ``budget`` (default: the search's); the bounds children inherit (:meth:`_kept`)."""
        budget = self.budget if budget is None else budget
        S = InputSet(lo, hi)
        bounds, errors = self._start(S, kept, budget)
        st = BoundState(self.graph, S, intersect=True, budget=budget, bounds=bounds, ibp_errors=errors)
        A_in, const = st.backsub(self.graph.output, self.C.expand(lo.shape[0], -1, -1))
        return (*self._value(st, S.concretize_lower(A_in, const), A_in, const, lo, hi), self._kept(st, lo.shape[0]))

    def _alpha(self, lo: Tensor, hi: Tensor, init: dict | None = None,
               kept: dict | None = None) -> tuple[Tensor, Tensor, dict, dict | None]:
        """value and guide coefficients (as :meth:`_value`) after alpha-CROWN from the start bounds
        intersected with ``kept``, its final slopes, and the bounds children inherit (:meth:`_kept`)."""
        from ..bounds.alpha import alpha_lower

        S = InputSet(lo, hi)
        low, st = alpha_lower(self.graph, S, self.C, iterations=self.cfg.alpha_iterations,
                              keep_state=True, lr=self.cfg.alpha_lr, lr_decay=self.cfg.alpha_lr_decay,
                              shared=self.cfg.alpha_shared, budget=self.budget, init=init,
                              start=self._start(S, kept))
        with torch.no_grad():
            A_in, const = st.backsub(self.graph.output, self.C.expand(lo.shape[0], -1, -1), tag="out")
            found = {k: v.detach() for k, v in (st.alpha or {}).items() if isinstance(v, Tensor)}
            return (*self._value(st, low, A_in.detach(), const.detach(), lo, hi), found, self._kept(st, lo.shape[0]))


def input_split(query: Query, budget: Budget, cfg: SplitConfig = SplitConfig(),
                root: tuple[Tensor, Tensor] | None = None, handoff: Callable[[], bool] | None = None) -> SplitOutcome:
    """Decide one query by input splitting (over its box; see the module docstring). The budget
    running out, between or inside bound computations, ends the search with ``timeout``.
    ``root``: the box (1, n) each to search, as given (default: :func:`root_box`); a cluster task
    searches a part of the root box made by :func:`children`, exactly as a proof replay makes it.
    ``handoff``: asked between iterations; when it says yes with at least two domains open, the search
    stops with status ``handed_off``, its record and its open domains."""
    if query.C.shape[0] == 0:
        return SplitOutcome("unknown")
    pb = _Problem(query, cfg, budget)
    try:
        return _input_split(pb, root, handoff)
    except BudgetExpired:  # inside a bound computation: the domains bounded before it still count
        return SplitOutcome("timeout", domains=pb.domains, floor=pb.floor)


def _input_split(pb: "_Problem", root: tuple[Tensor, Tensor] | None,
                 handoff: Callable[[], bool] | None = None) -> SplitOutcome:
    query, cfg, budget = pb.query, pb.cfg, pb.budget
    graph = query.graph
    batch, lookahead, max_domains = cfg.batch, cfg.lookahead, cfg.max_domains
    started = time.monotonic()
    log = TreeLog(LEAF_KINDS)
    out = SplitOutcome("verified")
    lo0, hi0 = root_box(query) if root is None else root
    k0 = lo0.shape[0]  # several roots: a cluster task's parts (``root``), searched as one queue
    free = (hi0 > lo0).any(dim=0)
    # at most as many look-ahead candidates as inputs the property leaves free (a pinned input is a
    # float32 rounding interval after root_box): on nn4sys's mscn_128d_dual, one free input of 308,
    # 8 of every 10 children split a pinned one. (Pinned inputs stay candidates otherwise: taken out,
    # the widest-relative candidate became a free input of zero coefficient, which the look-ahead
    # preferred, and nn4sys_2023's pensieve_parallel_37 went from 131 domains to a timeout.)
    n_given = int((torch.as_tensor(query.upper > query.lower) & free).sum())
    root_width = torch.where(free, (hi0 - lo0).amax(dim=0), torch.ones_like(hi0[0]))[None]
    log_w0 = torch.logsumexp(torch.log(hi0[:, free] - lo0[:, free]).sum(dim=1), dim=0)  # log of the roots' volume
    give_up_at = budget.share(cfg.give_up_after).deadline if cfg.give_up_after is not None else None
    whole = budget.remaining()

    def volume(b: _Bounded) -> float:  # share of the roots' volume
        return float(torch.exp(torch.log(b.hi[:, free] - b.lo[:, free]).sum(dim=1) - log_w0).sum())

    given = _remembered(query, lo0, hi0, pb) if root is None else None  # the pipeline's DeepPoly of this box
    root, w = pb.bound(lo0, hi0, None, given)
    if w is not None:
        return SplitOutcome("falsified", w, pb.domains, 0, 0)
    root.ids = torch.zeros(1, dtype=torch.int64) if k0 == 1 else torch.as_tensor(log.new_ids(k0))
    out.roots = root.ids.tolist()
    w = pb.enumerate_open(root)
    if w is not None:
        return SplitOutcome("falsified", w, pb.domains, 0, 0)
    shut = closed(root.value)
    if bool(shut.any()):
        log.close(root.ids[shut], root.how[shut], root.value[shut])
        out.closed_volume = volume(root.rows(shut))
    queue = root.rows(~shut) if not bool(shut.all()) else None
    n = graph.n_inputs
    L = max(1, min(lookahead, n_given or int(free.sum())))
    prog = SearchProgress("input splitting", by_volume=True)

    def floor_due() -> bool:  # time for the error-floor check (FLOOR_CHECK)?
        return not pb.floor_checked and (out.iterations >= FLOOR_ITERATIONS if whole is None
                                         else time.monotonic() - started >= FLOOR_CHECK * whole)
    while queue is not None and queue.lo.shape[0]:
        prog.update(pb.domains, queue.lo.shape[0], out.closed_volume)
        if budget.expired():
            out.status = "timeout"
            break
        if handoff is not None and queue.lo.shape[0] >= 2 and handoff():
            out.status, out.log, out.open = "handed_off", log, (queue.lo, queue.hi, queue.ids)
            break
        if pb.domains > max_domains:
            out.status = "unknown"
            break
        if floor_due():
            pb.check_floor(queue)
        m = batch
        if give_up_at is not None:  # judged at the end of the probe, or when its next batch would overrun it
            m = min(m, int((give_up_at - time.monotonic()) / (2 * L * pb.seconds / max(pb.domains, 1))))
            if m < 1:
                if (time.monotonic() - started) > whole * out.closed_volume:
                    out.status, out.message = "unknown", HOPELESS
                    break
                give_up_at, m = None, batch
        if cfg.batch_share is not None and pb.domains and budget.deadline is not None:
            per = 2 * L * pb.seconds / pb.domains  # seconds to bound one parent's children
            m = max(1, min(m, int(cfg.batch_share * (budget.deadline - time.monotonic()) / max(per, 1e-9))))
        out.iterations += 1
        if (cfg.attack_every and out.iterations % cfg.attack_every == 0
                and pb.attack_seconds <= cfg.attack_share * (time.monotonic() - started)):
            w = pb.attack_open(queue, seed=out.iterations)
            if w is not None:
                out.status, out.witness = "falsified", w
                break
        take, queue = queue.rows(slice(-m, None)), queue.rows(slice(None, -m))
        m = take.lo.shape[0]
        width = take.hi - take.lo
        score = torch.where(width > 0, take.a.abs() * width, torch.full_like(width, -1.0))
        score = torch.nan_to_num(score, nan=0.0, posinf=1e300)
        dims = candidates(score, width / root_width, L)  # (m, L)
        lo_d, hi_d = take.lo.gather(1, dims[:, :1]), take.hi.gather(1, dims[:, :1])
        if bool(((lo_d + hi_d) / 2 <= lo_d).any() or ((lo_d + hi_d) / 2 >= hi_d).any()):
            out.status = "unknown"  # a domain too small to bisect that the bounds cannot close
            pb.check_floor(queue, take)
            break
        lo, hi = children(take.lo, take.hi, dims)  # (m, L, 2, n)
        init = None if take.slopes is None else {k: v.repeat_interleave(2 * L, dim=0) for k, v in take.slopes.items()}
        kept = None if take.kept is None else {k: v.repeat_interleave(2 * L, dim=0) for k, v in take.kept.items()}
        kids, w = pb.bound(lo.reshape(-1, n), hi.reshape(-1, n), init, kept)
        if w is not None:
            out.status, out.witness = "falsified", w
            break
        # a child lies inside its parent, so the parent's value is a floor (DeepPoly is not
        # monotone in the box); the parent is open, so the floor never closes a child. Pick the
        # split that improves the worse child most, then the better one; a dimension too
        # narrow to split is never picked
        val = torch.maximum(kids.value.reshape(m, L, 2), take.value[:, None, None])
        kids.value = val.reshape(-1)
        base = take.value[:, None].clamp(min=-1e300)
        gain = (val.min(dim=2).values.clamp(min=-1e300) - base) + 0.5 * (val.max(dim=2).values.clamp(min=-1e300) - base)
        narrow = width.gather(1, dims) <= 1e-9 * width.max(dim=1, keepdim=True).values
        best = torch.where(narrow, torch.full_like(gain, float("-inf")), gain).argmax(dim=1)  # (m,)
        pick = ((torch.arange(m) * L + best)[:, None] * 2 + torch.arange(2)[None, :]).reshape(-1)
        chosen = kids.rows(pick)
        chosen.ids = torch.as_tensor(log.new_ids(len(pick)))
        log.split(take.ids, torch.zeros(m, dtype=torch.int64), dims.gather(1, best[:, None])[:, 0],
                  chosen.ids[0::2], chosen.ids[1::2])
        if floor_due():  # enumerating the batch's small domains can take the rest of the budget near a floor
            pb.check_floor(queue, chosen)
        w = pb.enumerate_open(chosen)
        if w is not None:
            out.status, out.witness = "falsified", w
            break
        done = closed(chosen.value)
        log.close(chosen.ids[done], chosen.how[done], chosen.value[done])
        if bool(done.any()):
            out.closed_volume += volume(chosen.rows(done))
        # the open children go on top of the stack, the one whose candidate points came nearest to a
        # counterexample last (expanded first): the order decides nothing about a proof (every open domain is
        # split until it closes) but how soon a counterexample turns up. ACAS Xu 5_3 prop_2, whose unsafe set
        # is a sliver (margin 1e-6 at the witness): 2.6 s instead of 25.4 s (in the parents' order), 1.4 s
        # before 998f00f's tighter bounds changed the search's path
        keep = torch.nonzero(~done).flatten()
        keep = keep[torch.argsort(chosen.near[keep], descending=True, stable=True)]
        queue = _Bounded.cat(queue, chosen.rows(keep))
        if queue.slopes and sum(v.numel() * v.element_size() for v in queue.slopes.values()) > pb.slope_bytes:
            queue.slopes, pb.warm = None, False  # children start from DeepPoly's slopes from now on
        if queue.kept is not None and queue.kept_bytes() > pb.kept_bytes:
            queue.kept, pb.inherit = None, False  # children start from their own bounds from now on
        out.max_queue = max(out.max_queue, queue.lo.shape[0])
    out.domains = pb.domains
    if out.status not in ("verified", "falsified", "handed_off"):
        out.floor = pb.floor
    if pb.enumerated:
        logger("input_split").debug("%d domain(s) closed by running every input they hold in onnxruntime",
                                    pb.enumerated)
    if pb.combo_tries:
        logger("input_split").debug("weighted sums of a disjunct's rows closed %d of the %d open domains they were "
                                    "tried on", pb.combo_wins, pb.combo_tries)
    out.log = log
    if out.status == "verified" and k0 == 1:
        out.tree = log.tree("input_split", meta={**tree_meta(cfg, pb.domains), "root_from_deeppoly": given is not None})
    prog.close(out.status, pb.domains)
    return out


#: query -> (box, intermediate bounds) of the pipeline's ``deeppoly+interval`` stage (:func:`remember_bounds`)
_BOUNDS: "weakref.WeakKeyDictionary[Query, tuple]" = weakref.WeakKeyDictionary()


def remember_bounds(query: Query, S: InputSet, bounds: list) -> None:
    """Keep the intermediate bounds of a DeepPoly run over the query's box (the pipeline's
    ``deeppoly+interval`` stage), so that an inheriting search (``SplitConfig.inherit``) starts its root
    from them instead of repeating the run (cifar_biasfield: 10.5 s of prop_30's 55 s). A proof tree records
    it (``root_from_deeppoly``) and a recheck runs that DeepPoly first."""
    _BOUNDS[query] = (S.lower.clone(), S.upper.clone(), [None if b is None else (b[0].detach(), b[1].detach())
                                                         for b in bounds])


def _remembered(query: Query, lo: Tensor, hi: Tensor, pb: "_Problem") -> dict | None:
    """The remembered bounds (:func:`remember_bounds`) of exactly the box ``lo``, ``hi`` (1, n) as the
    search keeps them (per kept node (1, 2, n)); None without them, or when the search does not inherit."""
    hit = _BOUNDS.pop(query, None)
    if hit is None or not pb.inherit or not (torch.equal(hit[0], lo) and torch.equal(hit[1], hi)):
        return None
    bounds = hit[2]
    return {j: torch.stack([bounds[j][0], bounds[j][1]], dim=1) for j in pb.keep if bounds[j] is not None}


def tree_meta(cfg: SplitConfig, domains: int) -> dict:
    """What a proof tree records of the search that wrote it (:func:`recheck` re-derives leaves with it)."""
    return {"lookahead": cfg.lookahead, "alpha_iterations": cfg.alpha_iterations, "alpha_lr": cfg.alpha_lr,
            "alpha_lr_decay": cfg.alpha_lr_decay, "alpha_shared": cfg.alpha_shared, "alpha_warm": cfg.alpha_warm,
            "inherit": cfg.inherit, "domains": domains}


def _tighter(a: Tensor, b: Tensor) -> Tensor:
    """Both (b, 2, n) bounds hold: the tighter lower and upper of each neuron."""
    return torch.stack([torch.maximum(a[:, 0], b[:, 0]), torch.minimum(a[:, 1], b[:, 1])], dim=1)


def _nan_rows(n: int, like: Tensor) -> Tensor:
    """``n`` rows shaped as those of ``like``, all NaN: no slopes kept (DeepPoly's choice stands)."""
    return torch.full((n,) + tuple(like.shape[1:]), float("nan"), dtype=like.dtype)


def guide_row(slack: Tensor, own: Tensor, K: int) -> Tensor:
    """Per domain (b,): the row that gives the domain's value (:func:`~certkit.verify.gate.domain_value`):
    the best row of the worst disjunct. A domain closes when that row's bound rises above zero (in
    a conjunction any one row suffices, so the row farthest from zero is the wrong guide: its input
    coefficients can be zero along the very dimension that keeps the best row open)."""
    slack = torch.where(torch.isfinite(slack), slack, torch.full_like(slack, float("-inf")))
    b = slack.shape[0]
    per = torch.full((b, K), float("-inf"), dtype=slack.dtype).scatter_reduce(1, own.expand(b, -1), slack, "amax")
    worst = per.argmin(dim=1)
    return torch.where(own[None, :] == worst[:, None], slack, torch.full_like(slack, float("-inf"))).argmax(dim=1)


#: with look-ahead 1, a domain is split along its widest dimension (relative to the root box) when
#: the score's pick is this many times narrower (:func:`candidates`)
MAX_ASPECT = 1024.0


def candidates(score: Tensor, rel_width: Tensor, L: int) -> Tensor:
    """The ``L`` dimensions (m, L) tried per domain: the best by score (``|a_i| width_i``), the last of
    them replaced by the dimension widest relative to the root box when that one is not among them
    (``L`` >= 2; with ``L`` = 1, that dimension instead of the score's pick when it is
    :data:`MAX_ASPECT` times wider). The score sees only the guide row's linear bound, not the relaxation error that the
    width of a dimension feeds: a dimension with a zero coefficient can still be the one to split
    (ACAS Xu 3_3 prop_2: an input of width 1/32 with a zero coefficient was never split while the
    others were bisected down to 1e-16)."""
    dims = score.topk(L, dim=1).indices
    wide = torch.where(score >= 0, rel_width, torch.full_like(rel_width, -1.0)).argmax(dim=1, keepdim=True)
    if L < 2:  # no look-ahead to judge: the widest only when the score's pick is far narrower
        far = rel_width.gather(1, wide) > MAX_ASPECT * rel_width.gather(1, dims)
        return torch.where(far, wide, dims)
    missing = ~(dims == wide).any(dim=1, keepdim=True)
    return torch.cat([dims[:, :-1], torch.where(missing, wide, dims[:, -1:])], dim=1)


def root_box(query: Query) -> tuple[Tensor, Tensor]:
    """The query's box rounded outward to the model's precision, (1, n) each."""
    lo, hi = round_outward(query.lower, query.upper, precision_of(query.graph))
    return torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]


def children(lo: Tensor, hi: Tensor, dims: Tensor) -> tuple[Tensor, Tensor]:
    """Both halves of each box (m, n) along each of its candidate dimensions ``dims`` (m, L):
    boxes (m, L, 2, n), the lower half first; the cut is the midpoint, as computed here."""
    m, L = dims.shape
    lo2 = lo[:, None, None, :].repeat(1, L, 2, 1)
    hi2 = hi[:, None, None, :].repeat(1, L, 2, 1)
    ar_m = torch.arange(m)[:, None].expand(m, L)
    ar_l = torch.arange(L)[None, :].expand(m, L)
    mid = (lo.gather(1, dims) + hi.gather(1, dims)) / 2
    hi2[ar_m, ar_l, 0, dims] = mid
    lo2[ar_m, ar_l, 1, dims] = mid
    return lo2, hi2


#: alpha steps of a recheck per recorded step, for a search that started children from their parents' slopes
RECHECK_WARM_FACTOR = 4


def recheck(query: Query, tree: ProofTree, time_per_leaf: float = 5.0, batch: int = 256) -> RecheckReport:
    """Re-derive an input-splitting proof: replay the splits from the property's (rounded) box
    -- so the leaves cover it by construction -- and bound every leaf again, DeepPoly first, then
    alpha-CROWN with the recorded settings (a search whose children inherited their parents' bounds is
    replayed so: every domain of the tree is bounded, children from their parents' bounds); a leaf that
    still does not close has its inputs run in onnxruntime when it holds few enough (an ``enumerated``
    leaf; the query needs its runner), else is searched again on its own (input splitting,
    ``time_per_leaf`` seconds) before it counts as failed."""
    t0 = time.monotonic()
    rep = RecheckReport()
    if not tree.well_formed():
        rep.failed = 1
        return rep
    lo0, hi0 = root_box(query)
    rep.leaves = tree.n_leaves
    # a search whose children started from their parents' slopes is re-derived from DeepPoly's, with
    # more steps (RECHECK_WARM_FACTOR times as many) to make up for the start
    warm = bool(tree.meta.get("alpha_warm", False))
    cfg = SplitConfig(alpha_iterations=meta_count(tree, "alpha_iterations", 5) * (RECHECK_WARM_FACTOR if warm else 1),
                      alpha_lr=float(tree.meta.get("alpha_lr", 0.3)),
                      alpha_lr_decay=float(tree.meta.get("alpha_lr_decay", 1.0)),
                      alpha_shared=bool(tree.meta.get("alpha_shared", False)),
                      inherit=bool(tree.meta.get("inherit", False)))
    pb = _Problem(query, cfg, Budget())
    for b, w in _bounded_leaves(pb, tree, lo0, hi0, batch):
        open_ = torch.arange(b.lo.shape[0]) if w is not None else torch.nonzero(~closed(b.value)).flatten()
        rep.direct += b.lo.shape[0] - open_.numel()
        for k in open_.tolist():  # every input run again (an enumerated leaf), else a search of its own
            got = enumeration.run_box(query, b.lo[k].numpy(), b.hi[k].numpy())
            if got is not None and got[1] is None and got[0] > 0:
                rep.direct += 1
                continue
            sub = Query(query.graph, InputSet(b.lo[k:k + 1], b.hi[k:k + 1]), query.C, query.d, query.owner,
                        query.n_disjuncts, query.runner, query.index)
            res = input_split(sub, Budget.of(time_per_leaf), cfg)
            if res.status == "verified":
                rep.resplit += 1
            else:
                rep.failed += 1
    rep.seconds = time.monotonic() - t0
    return rep


def _bounded_leaves(pb: _Problem, tree: ProofTree, lo0: Tensor, hi0: Tensor, batch: int):
    """The leaves of ``tree`` replayed from the root box (1, n) and bounded, in batches: yields
    (:class:`_Bounded`, a confirmed counterexample among the batch's candidates or None). With
    ``pb.inherit`` every domain of the tree is bounded, depth first, ``batch`` at a time, and children
    start from their parent's bounds, as in the search."""
    if not pb.inherit:
        def child(box, pos, dim, side):
            c_lo, c_hi = children(box[0][None], box[1][None], torch.tensor([[dim]]))
            return c_lo[0, 0, side], c_hi[0, 0, side]

        boxes = [bx for bx, _, _, _ in leaves_in_preorder(tree, (lo0[0], hi0[0]), child)]
        for s in range(0, len(boxes), batch):
            yield pb._bound(torch.stack([bx[0] for bx in boxes[s:s + batch]]),
                            torch.stack([bx[1] for bx in boxes[s:s + batch]]), None, None)
        return
    left, right = _links(tree)
    # the search's root started from the pipeline's DeepPoly of its box: that first
    first = pb._crown(lo0, hi0)[2] if tree.meta.get("root_from_deeppoly") else None
    stack = [(0, lo0, hi0, first)]  # (node in preorder, lo (1, n), hi (1, n), its parent's bounds or None)
    while stack:
        take, stack = stack[-batch:], stack[:-batch]
        lo, hi = torch.cat([t[1] for t in take]), torch.cat([t[2] for t in take])
        kept = None
        if all(t[3] is not None for t in take):
            kept = {k: torch.cat([t[3][k] for t in take]) for k in take[0][3]}
        b, w = pb._bound(lo, hi, None, kept)
        leaves = [i for i, t in enumerate(take) if left[t[0]] < 0]
        if leaves:
            yield b.rows(torch.as_tensor(leaves, dtype=torch.int64)), w
        for i, (node, l, h, _) in enumerate(take):
            if left[node] < 0:
                continue
            c_lo, c_hi = children(l, h, torch.tensor([[int(tree.codes[node, 1])]]))
            mine = None if b.kept is None else {k: v[i:i + 1] for k, v in b.kept.items()}
            stack.append((right[node], c_lo[:, 0, 1], c_hi[:, 0, 1], mine))
            stack.append((left[node], c_lo[:, 0, 0], c_hi[:, 0, 0], mine))


def _links(tree: ProofTree) -> tuple[list[int], list[int]]:
    """Each preorder node's left and right child (-1 for a leaf) in a well-formed tree."""
    n = len(tree.codes)
    left, right = [-1] * n, [-1] * n
    waiting: list[int] = []  # splits still missing a child, the deepest last
    for i, pos in enumerate(tree.codes[:, 0].tolist()):
        if waiting:
            p = waiting[-1]
            if left[p] < 0:
                left[p] = i
            else:
                right[p] = i
                waiting.pop()
        if pos >= 0:
            waiting.append(i)
    return left, right
