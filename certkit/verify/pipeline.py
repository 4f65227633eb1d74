"""The one pipeline every question goes through (DESIGN.md sections 1-3): VNN-LIB specs and
data-set samples alike.

For a list of queries and a plan (:mod:`certkit.verify.plan`):

1. a quick attack on every query (batched, within 30% of the time); a hit is a counterexample only
   once :meth:`Query.confirm` accepts it;
2. the plan's bound procedures in order, on the queries still open, batched across queries; each
   query keeps the best bound of every row across stages, and is proved when the verdict gate admits
   its rows (:mod:`certkit.verify.gate`); a stage repeating an earlier one's cost (:data:`REPEATS`) is
   skipped when that one took more than :data:`REPEAT_SHARE` of the time left; after the first
   stage, a medium attack within a quarter of the time left (the later stages can take the whole
   budget on a large net);
3. a longer attack on the queries still open (right after the bound stage, when one took more than
   :data:`EARLY_LONG_SHARE` of the time left and more follow it);
4. the plan's complete procedures in order, query by query, each within its own budget
   (``query_budget``) and the overall one.

A query's budget running out inside a procedure (:class:`BudgetExpired`) ends that procedure, never
the run; so does the memory budget (a ``MemoryError``), after the bound procedures have degraded to
cheaper ones where they could (:mod:`certkit.bounds.fallback`: each row's stage is the procedure
that bounded it, and ``extra["degraded"]`` says what changed and why). ``stop_on_sat``: one
confirmed counterexample ends the run (a VNN-LIB spec is violated by one point); otherwise every
query is decided on its own (data sets).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..bounds.fallback import allocation_failed
from ..bounds.forward import few_free, starts_forward
from ..log import get as get_logger
from . import gate
from .falsify import AttackConfig
from .plan import BOUND_PROCEDURES
from .procedures import COMPLETE, INPUT_SPLIT_MAX_DIM, attack_queries, bound_rows, free_dims, wide_split
from .query import Budget, BudgetExpired, Query, Status
from .witness import Witness

_LOG = get_logger("pipeline")
QUICK_ATTACK = AttackConfig(samples=256, restarts=4, steps=20)
#: the quick attack's share of the time (milliseconds on small nets; on a U-Net 256 samples take 20 s)
QUICK_SHARE = 0.3
#: after the first bound stage that leaves a query open, before the costlier ones (which can take the
#: whole budget on a large net: the long attack would never run), within a share of the time left
MEDIUM_ATTACK = AttackConfig(samples=512, restarts=8, steps=50, polish=4)
MEDIUM_SHARE = 0.25
LONG_ATTACK = AttackConfig(samples=1024, restarts=36, steps=200, polish=16)
#: the long attack's share of the time left when a complete procedure follows it (which attacks inside
#: its open domains too): on large nets its 36 x 200 steps took 21-37 s of a 60-120 s budget of unsat
#: instances (cifar_biasfield, carvana, cgan), time the complete procedure needed
LONG_SHARE = 0.25
#: ... and when input splitting decides every open query (at most ``INPUT_SPLIT_MAX_DIM`` free inputs), which
#: tries the centre and the worst row's minimiser of every domain it bounds and attacks inside its open
#: domains: cgan_2023's 32x32 prop_3 (5 inputs, unsat), the long attack took 26.6 s of 48 s, input
#: splitting 5.3 s
SPLIT_LONG_SHARE = 0.1
#: ... and its size there: a third of the restarts and half the steps (input splitting attacks inside
#: every domain it leaves open, from the minimisers of its bounds)
SPLIT_LONG_ATTACK = AttackConfig(samples=1024, restarts=12, steps=100, polish=8)
#: stages that cost about what an earlier one did (``deeppoly+interval`` and ``deeppoly+reference`` are
#: one more DeepPoly pass each): skipped when one of those took more than ``REPEAT_SHARE`` of the time
#: left (a large conv net's DeepPoly can take most of the budget, better left to alpha-CROWN and branch
#: and bound; alpha-CROWN's first iterate is ``deeppoly+interval``'s bound, and it stops there when that
#: proves the query: vit_2023 ibp_3_3_8, 17 s a DeepPoly pass)
REPEATS = {"deeppoly+interval": ("deeppoly",), "deeppoly+reference": ("deeppoly+interval", "deeppoly")}
REPEAT_SHARE = 0.1
#: the long attack runs right after a bound stage that took more than this share of the time left before
#: it and left a query open, ahead of the bound stages still to come (which cost at least as much: alpha-CROWN
#: after a slow DeepPoly), not after them: on traffic_signs_recognition_2023's model_30 idx_8258 eps 5 (sat)
#: DeepPoly took 37 s and alpha-CROWN 52 s of 120 before the long attack, which the run then cut short
EARLY_LONG_SHARE = 0.1
#: a stage a plan with ``forward`` skips for the queries whose back-substitution starts from forward
#: bounds (:func:`certkit.bounds.forward.starts_forward`): pure CROWN refines every neuron the interval
#: bounds leave unstable, while ``deeppoly+interval`` refines only those the forward bounds leave
#: unstable (cGAN of 4 free inputs: 92 s against 9.5 s)
FORWARD_SUPERSEDES = {"deeppoly": "deeppoly+interval"}
#: stages a plan with ``bab`` skips for boxes of at most two free inputs
#: (:func:`certkit.bounds.forward.few_free`): input splitting bisects them with domains bound from
#: forward bounds in milliseconds, where alpha-CROWN at the root gains little (nn4sys's mscn_128d_dual,
#: one free input: 6.7 s of a 20 s budget, no row proved)
SPLIT_SUPERSEDES = ("alpha",)
#: stages a plan with ``bab`` skips where input splitting's domains inherit their parents' bounds (back-
#: substitution starts from forward bounds and at most ``INPUT_SPLIT_MAX_DIM`` inputs are free:
#: :data:`certkit.verify.procedures.WIDE_SPLIT`): a child domain costs a fraction of a root DeepPoly there,
#: while alpha-CROWN at the root is cut to the output rows' slopes by the memory budget. On the 25 wild
#: unsat instances of that kind (cgan_2023, cifar_biasfield, nn4sys, nn4sys_2023) neither stage proved
#: one; alpha-CROWN took 7-12 s of cgan's and cifar_biasfield's budgets, deeppoly+reference 6.4 s of cgan's
WIDE_SPLIT_SUPERSEDES = ("deeppoly+reference", "alpha")


def superseded(stage: str, query: Query, plan: tuple[str, ...], explicit: str | None) -> bool:
    """Does ``plan`` skip the bound ``stage`` for ``query`` because a later stage does its work
    cheaper there (:data:`FORWARD_SUPERSEDES`, :data:`SPLIT_SUPERSEDES`, :data:`WIDE_SPLIT_SUPERSEDES`)?"""
    forward = "forward" in plan and FORWARD_SUPERSEDES.get(stage) in plan
    split = "bab" in plan and stage in SPLIT_SUPERSEDES and explicit != stage
    wide = "bab" in plan and stage in WIDE_SPLIT_SUPERSEDES and explicit != stage
    if not (forward or split or wide):
        return False
    S = query.bound_set()
    return ((forward and starts_forward(S, query.graph)) or (split and few_free(S))
            or (wide and wide_split(query)))


@dataclass
class PropertyResult:
    """What was established about one query. ``status`` becomes ``verified`` only through
    :func:`certkit.verify.gate.admit`, which records the ``proof``."""

    index: int
    status: str = "open"  # verified | falsified | open
    stage: str = ""
    spec_lower: np.ndarray | None = None  # lower bounds on C y - d, one per row
    margin: np.ndarray | None = None  # row margin (float64 evaluation of C y - d) per row
    owner: np.ndarray | None = None  # disjunct of each row
    ruled_out: np.ndarray | None = None  # per disjunct
    row_stage: list[str] | None = None  # the bound stage behind each row's best bound
    proof: gate.Proof | None = None  # what the gate admitted
    witness: Witness | None = None
    timed_out: bool = False  # a procedure stopped at its budget
    reason: str = ""
    time: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def floor(self) -> str:
        """Open: where input splitting found the error terms above the margin (``extra["floor"]``), else ""."""
        return self.extra.get("floor", "") if self.status == "open" else ""


def merge_rows(res: PropertyResult, query: Query, stage: str, slack: np.ndarray, margin: np.ndarray) -> bool:
    """Keep the best of the stages, row by row (by slack beyond the margin), and ask the gate to
    admit the rows; True when the query is now proved."""
    res.owner = query.owner
    if res.spec_lower is None:
        res.spec_lower, res.margin, res.row_stage = slack, margin, [stage] * len(slack)
    else:
        old = res.spec_lower - res.margin
        better = ((slack - margin > old) | ~np.isfinite(old)) & np.isfinite(slack - margin)
        res.spec_lower = np.where(better, slack, res.spec_lower)
        res.margin = np.where(better, margin, res.margin)
        res.row_stage = [stage if b else s for b, s in zip(better, res.row_stage)]
    ruled = np.zeros(query.n_disjuncts, dtype=bool)
    np.logical_or.at(ruled, query.owner, gate.rows_proven(res.spec_lower, res.margin))
    res.ruled_out = ruled
    proof = gate.Proof("bounds", stage, res.spec_lower, res.margin, query.owner, list(res.row_stage))
    return gate.admit(res, proof, query.n_disjuncts)


def decide(queries: list[Query], plan: tuple[str, ...], budget: Budget, *, seed: int = 0,
           quick: AttackConfig | None = QUICK_ATTACK, long: AttackConfig | None = LONG_ATTACK,
           medium: AttackConfig | None = MEDIUM_ATTACK,
           stop_on_sat: bool = True,
           explicit: str | None = None, query_budget: Callable[[Budget], Budget] | None = None,
           timings: dict | None = None, rows: Callable | None = None) -> list[PropertyResult]:
    """Run the pipeline (module docstring) on ``queries``; results in the same order.

    ``explicit``: the backend the user named (a complete procedure then always applies where it
    can); ``query_budget(budget)``: the budget one query's complete procedures get (default: the
    overall one); ``rows(queries, stage, budget)``: the bound procedure (default
    :func:`certkit.verify.procedures.bound_rows`; data-set mode adds ``lipschitz``)."""
    timings = {} if timings is None else timings
    results = [PropertyResult(q.index, owner=q.owner) for q in queries]
    rows = rows or bound_rows
    started = [time.monotonic()] * len(queries)

    def tick(key: str, t: float) -> None:
        timings[key] = timings.get(key, 0.0) + time.monotonic() - t

    def open_ones() -> list[int]:
        return [i for i, r in enumerate(results) if r.status == "open"]

    def falsify(cfg: AttackConfig | None, within: Budget | None = None) -> bool:
        ids = open_ones()
        within = within or budget
        if cfg is None or not ids or within.expired():
            return False
        t = time.monotonic()
        found = attack_queries([queries[i] for i in ids], cfg, within, seed)
        tick("attack", t)
        _LOG.info("attack (%d restarts x %d steps): %d of %d open quer%s falsified in %.3f s", cfg.restarts,
                  cfg.steps, len(found), len(ids), "y" if len(ids) == 1 else "ies", time.monotonic() - t)
        for pos, w in found.items():
            i = ids[pos]
            results[i].status, results[i].witness, results[i].stage = "falsified", w, "attack"
        return bool(found)

    complete = [p for p in plan if p in COMPLETE]

    def long_attack(early: bool) -> bool:
        """The long attack, within a share of the time left when more follows it, else all of it; the
        smaller one (:data:`SPLIT_LONG_ATTACK`) where input splitting decides every open query."""
        if not complete and not early:
            return falsify(long, budget)
        split = "bab" in complete and all(free_dims(queries[i]) <= INPUT_SPLIT_MAX_DIM for i in open_ones())
        if not split:
            return falsify(long, budget.share(LONG_SHARE))
        return falsify(SPLIT_LONG_ATTACK if long is LONG_ATTACK else long, budget.share(SPLIT_LONG_SHARE))

    if falsify(quick, budget.share(QUICK_SHARE)) and stop_on_sat:
        return _finish(results, started)
    early = False  # the long attack ran after a slow bound stage (EARLY_LONG_SHARE)
    stages = [p for p in plan if p in BOUND_PROCEDURES or p == "lipschitz"]
    for k, stage in enumerate(stages):
        ids = open_ones()
        if not ids or budget.expired():
            break
        ids = [i for i in ids if not superseded(stage, queries[i], plan, explicit)]
        if not ids:
            continue
        rem = budget.remaining()
        if rem is not None and any(timings.get(like, 0.0) > REPEAT_SHARE * rem for like in REPEATS.get(stage, ())):
            continue  # a second pass of a stage that took too long: leave the time to the next ones
        if k == 1 and falsify(medium, budget.share(MEDIUM_SHARE)) and stop_on_sat:
            return _finish(results, started)
        t = time.monotonic()
        try:
            got = rows([queries[i] for i in ids], stage, budget)
        except BudgetExpired:
            for i in ids:
                results[i].timed_out = True
            tick(stage, t)
            break
        except (MemoryError, RuntimeError) as e:  # not even interval bounds fit: the stage proves nothing
            if not allocation_failed(e):
                raise
            for i in ids:
                results[i].extra.setdefault("degraded", []).append({"stage": stage, "method": "", "reason": str(e)})
            tick(stage, t)
            continue
        tick(stage, t)
        timings["bounds"] = timings.get("bounds", 0.0) + time.monotonic() - t
        slow = rem is not None and time.monotonic() - t > EARLY_LONG_SHARE * rem and k + 1 < len(stages)
        n_open = len(open_ones())
        for i, row in zip(ids, got):
            method = getattr(row, "method", None)
            if getattr(row, "radius", None) is not None:
                results[i].extra["radius"] = row.radius
            if method is not None and method.degraded:
                results[i].extra.setdefault("degraded", []).append(method.as_dict())
            if merge_rows(results[i], queries[i], method.used if method is not None else stage, row[0], row[1]):
                results[i].time = time.monotonic() - started[i]
        _LOG.info("%s bounds: %d of %d quer%s proved in %.3f s", stage, n_open - len(open_ones()), len(ids),
                  "y" if len(ids) == 1 else "ies", time.monotonic() - t)
        if slow and long is not None and open_ones():
            early = True
            if long_attack(True) and stop_on_sat:
                return _finish(results, started)
    if not early and long_attack(False) and stop_on_sat:
        return _finish(results, started)
    now = time.monotonic()
    for r, t0 in zip(results, started):  # decided by the batched stages: their time ends here
        if r.status != "open" and not r.time:
            r.time = now - t0
    for i in (open_ones() if complete else []):
        q, res = queries[i], results[i]
        qb = budget if query_budget is None else query_budget(budget)  # one budget for all its stages
        # a searched query's time: the batched stages, then its own search (not the others' before it)
        searched_from, batched = time.monotonic(), now - started[i]
        for stage in complete:
            if qb.expired() or budget.expired() or res.status != "open":
                break
            t = time.monotonic()
            try:
                out = COMPLETE[stage].run(q, qb, explicit == stage)
            except BudgetExpired:
                res.timed_out = True
                tick(stage, t)
                continue
            except (MemoryError, RuntimeError) as e:  # the search did not fit in the memory budget
                if not allocation_failed(e):
                    raise
                res.reason = f"{stage} stopped: it does not fit in the memory budget ({e})"
                res.extra.setdefault("degraded", []).append({"stage": stage, "method": "", "reason": str(e)})
                tick(stage, t)
                continue
            tick(stage, t)
            if out is None:
                continue
            _LOG.info("%s on query %d: %s in %.3f s%s", stage, q.index, out.status.name.lower(), time.monotonic() - t,
                      f" ({out.reason})" if out.reason else "")
            if out.status == Status.FALSIFIED and out.witness is not None:
                res.status, res.witness, res.stage = "falsified", out.witness, stage
                if stop_on_sat:
                    return _finish(results, started)
            elif out.status == Status.PROVED and out.proof is not None:
                out.proof.lower, out.proof.margin = res.spec_lower, res.margin
                out.proof.owner, out.proof.row_stage = res.owner, res.row_stage
                if gate.admit(res, out.proof, q.n_disjuncts) and res.ruled_out is not None:
                    res.ruled_out[:] = True
            elif out.status == Status.TIMEOUT:
                res.timed_out = True
            if out.reason:
                res.reason = out.reason
            if out.stats.get("floor"):
                res.extra["floor"] = out.stats["floor"]
        res.time = batched + time.monotonic() - searched_from
        if budget.expired():
            break
    return _finish(results, started)


def _finish(results: list[PropertyResult], started: list[float]) -> list[PropertyResult]:
    now = time.monotonic()
    for r, t in zip(results, started):
        if not r.time:
            r.time = now - t
    return results
