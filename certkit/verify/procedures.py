"""The procedure registry (DESIGN.md sections 2-3): every way certkit bounds, decides or attacks a query.

* **Bound procedures** (``interval``, ``deeppoly``, ``deeppoly+interval``, ``alpha``, and ``lipschitz``
  for data sets) bound the rows ``C y - d`` of many queries at once (:func:`bound_rows`): the rows of
  the stages accumulate per query, and a query is proved when the verdict gate admits its rows.
* **Complete procedures** (``bab``, ``milp``) decide one query within a :class:`Budget`
  (:data:`COMPLETE`); each returns an :class:`Outcome` with the proof the gate admits or a witness
  confirmed by :meth:`Query.confirm`, or None when it does not apply to the query.
* **Attacks** (:func:`attack_queries`): sampling and PGD on many queries at once, every hit confirmed
  by :meth:`Query.confirm`.

Which procedures a ``--backend`` runs, in which order, is data: :mod:`certkit.verify.plan`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..bounds.fallback import Method, lower_within_memory
from ..bounds.forward import free_columns, starts_forward
from ..bounds.fperror import row_margin
from ..bounds.interval import interval_bounds
from ..cluster import active
from ..errors import BackendError
from ..graph import ops
from ..spec.sets import InputSet
from . import gate
from .falsify import AttackConfig, attack, near_miss
from .input_split import SplitConfig
from .query import Budget, Outcome, Query, Status
from .witness import Witness

Tensor = torch.Tensor

#: Up to this many free input dimensions (of nonzero width) input splitting decides alone; above, it
#: runs first and gives up after :data:`INPUT_SPLIT_PROBE` of its time unless its measured rate says it
#: finishes in time (then ReLU splitting on ReLU nets, and the MILP). Measured: nn4sys_2023's
#: pensieve_big_parallel (32 free inputs of 96, not a ReLU-only net) closes in < 1 s.
INPUT_SPLIT_MAX_DIM = 16
#: the share of the time after which input splitting of a high-dimensional box is judged (above)
INPUT_SPLIT_PROBE = 0.05
#: input splitting of a high-dimensional box (DeepPoly only: alpha-CROWN's slopes per domain cost too
#: much there); ``give_up_after`` is set from :data:`INPUT_SPLIT_PROBE` when it runs
HIGH_DIM_SPLIT = SplitConfig(lookahead=2, alpha_iterations=0)
#: In ``auto``, ReLU splitting gets this share of the remaining time, the MILP the rest (:func:`bab_share`)
#: (the MILP finds the rare counterexamples of small nets that only a tiny region holds) ...
RELU_SPLIT_SHARE = 0.6
#: ReLU splitting of a fully connected net of at least this many ReLU layers hands over to the search that
#: re-optimises every domain's intermediate bounds when beta-CROWN's has closed hardly any domain after
#: :data:`REFINE_PROBE` of its time (:func:`relu_portfolio`). ``benchmarks/relu_split.py``, 30 s a query,
#: one thread: on ERAN's mnist_relu_9_200 only the second proved any (beta-CROWN's domains never close
#: there); on mnistfc's 256x2 (two ReLU layers) only the first (5 of 5 against 1: a split there tightens
#: no later layer); on paper 002's 5x100 and 8x100 nets each proved instances the other did not; on the
#: repo's trained 4x256 and 6x256 MLPs beta-CROWN proved 10 of 14, the other 2 (2026-12-06).
REFINE_MIN_LAYERS = 3
REFINE_PROBE = 0.25
#: ... on nets of at most this many activation neurons; on larger ones branch and bound gets all the
#: time and the MILP none (on oval21's cifar_base_kw, 6244 ReLUs, the MILP's bound tightening alone
#: used its whole 40% share without reaching the MILP, while ReLU splitting needed that time).
MILP_MAX_NEURONS = 2048
#: ... and on nets of at most this many, where input splitting does not apply, the MILP alone (branch and
#: bound does not run in ``auto``): a MILP of at most this many binaries is small for a solver, while both
#: splittings grow trees. safenlp_2024 hyperrectangle_154 (128 ReLUs, 30 free inputs): the MILP (HiGHS)
#: proved it in 14.7 s, input splitting and ReLU splitting each timed out at 60 s (2026-12-04);
#: alpha-beta-CROWN's configuration for that benchmark is its MIP verifier too. Only up to
#: :data:`MILP_ONLY_MAX_INPUTS` free inputs, a conservative limit: on paper 002's 2x50 and 2x100 MNIST
#: nets (784 inputs) in data-set mode at 1 s a sample (``benchmarks/dataset_complete.py --backends auto
#: --count 60``, two runs side by side) the MILP alone verified 45 and 37 of 60 samples against ReLU
#: splitting's 49 and 43, but a repeat of the ReLU-splitting run gave 45 and 38: the loss is not
#: established, and the gain is not shown there either.
MILP_ONLY_NEURONS = 256
MILP_ONLY_MAX_INPUTS = 64
#: The MILP's solver: ``auto`` is Gurobi when gurobipy is installed and its licence accepts the
#: model (the pip wheel's size-limited one takes a few thousand rows and columns), else HiGHS.
#: Measured on safenlp_2024 hyperrectangle_154 (30 inputs, 112 unstable ReLUs): the same
#: decision took 12.3 s in HiGHS 1.16 and 5.8 s in Gurobi 13.0.3.
MILP_SOLVER = "auto"
#: Input splitting as a portfolio: (share of the remaining time, or None for all of it; options).
#: DeepPoly with look-ahead 5 gets a short turn (some ACAS Xu prop_1 instances need it: 2_7 prop_1 takes
#: 4 s there and times out in the alpha-CROWN run alone), then the alpha-CROWN run gets the rest. That
#: run shares one slope per neuron and bound computation, starts each child from its parent's slopes,
#: takes 2 steps and looks ahead 1 dimension (every look-ahead child costs alpha steps). ACAS Xu 3_3
#: prop_2, input splitting alone (both cores busy): 5 steps from DeepPoly's slopes, look-ahead 2: not
#: finished in 300 s;
#: shared warm-started slopes, 3 steps: 130 s (look-ahead 2), 76 s (1); 2 steps, look-ahead 1: 62 s
#: (4_2 prop_2: 27 s, 1_1 prop_6's first box: 6 s). Portfolios measured beside the 62 shared ACAS Xu
#: instances (one job each, both cores busy; benchmarks/acas_hard.py's 3_3 / 4_2 prop_2, 1_1 prop_6):
#: with the look-ahead 2 DeepPoly phase (18%) 77.2 s, 92.7 / 61.2 / 33.2 s; without it 81.8 s, 83.2 /
#: 43.9 / 32.9 s (kept); the alpha-CROWN run alone 243.3 s with two prop_1 left open, 72.1 / 33.1 / 17.4 s.
#: The DeepPoly turn's share, 0.15 until 2026-12-03, is now 0.05 (5.8 s of ACAS Xu's 116): 1_1 prop_6 26.2 s
#: instead of 33 (both boxes spent 15% there first), 2_7 / 3_9 prop_1 still 4.3 / 4.0 s, and all 186 VNN-COMP
#: 2021 instances solved in one ``bench --jobs 2`` run (410 s). Ending the turn by its measured rate
#: (``give_up_after=0.05``) instead left 1_1 prop_6 in it until the timeout.
#: The alpha-CROWN run's children inherit their parents' intermediate bounds (``SplitConfig.inherit``):
#: benchmarks/acas_hard.py's three proofs in 30.0 / 18.0 / 23.2 s instead of 66.6 / 37.9 / 27.3 s (the same
#: script, both runs at once, one thread each, 2026-12-05). Not the DeepPoly turn: inheriting there too,
#: 1_9 prop_7's counterexample (found among the first 11 domains' candidates) was missed for 116 s.
INPUT_SPLIT_PORTFOLIO = (
    (0.05, SplitConfig(lookahead=5, alpha_iterations=0)),
    (None, SplitConfig(lookahead=1, alpha_iterations=2, alpha_shared=True, alpha_warm=True, inherit=True)),
)
#: Input splitting where one domain costs seconds (nets whose back-substitution starts from forward
#: bounds, :func:`certkit.bounds.forward.starts_forward`: a layer of >= 1024 neurons): one run, one
#: look-ahead dimension, batches sized to a quarter of the time left (the portfolio's first phase alone
#: would bound 640 children at 10 s each on cgan_2023)
WIDE_SPLIT = SplitConfig(lookahead=1, alpha_iterations=0, batch_share=0.25, inherit=True)
#: A share of the portfolio when there is no deadline at all, in seconds.
UNBOUNDED_SHARE = 20.0


# --------------------------------------------------------------------------- batching


def _group(queries: list[Query], key: Callable[[Query], tuple]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(key(q), []).append(i)
    return list(groups.values())


def _shape_key(q: Query) -> tuple:
    S = q.region
    return (q.C.shape, q.n_disjuncts, tuple(q.owner.tolist()), S.center is not None, S.p)


def stack_sets(sets: list[InputSet]) -> InputSet:
    """One batched input set from sets of the same kind (all boxes, or balls of one norm)."""
    first = sets[0]
    cat = (lambda ts: torch.cat(ts)) if len(sets) > 1 else (lambda ts: ts[0])
    if first.center is None:
        return InputSet(cat([s.lower for s in sets]), cat([s.upper for s in sets]))
    return InputSet(cat([s.lower for s in sets]), cat([s.upper for s in sets]), cat([s.center for s in sets]),
                    cat([s.eps for s in sets]), first.p)


# --------------------------------------------------------------------------- bound procedures


class Rows(NamedTuple):
    """What a bound procedure established about one query's rows: lower bounds on ``C y - d``
    (``slack``), the row margins, the certified radius (Lipschitz margins), and the
    :class:`~certkit.bounds.fallback.Method` that produced the bounds (None: the stage as named)."""

    slack: np.ndarray
    margin: np.ndarray
    radius: float | None = None
    method: Method | None = None


def rows_and_margins(stage: str, graph, S: InputSet, C: Tensor, d: Tensor,
                     budget: Budget | None, keep: dict | None = None) -> tuple[Tensor, Tensor, Method]:
    """Lower bounds of ``C y`` (b, s) with one bound procedure, the gate's row margins (b, s) and the
    method. The margins need bounds on ``|y|``: interval bounds, or where those are not finite
    (interval propagation overflows through a transformer's attention while back-substitution stays
    finite) the output bounds of the same procedure, from ``2 n_out`` more rows of it. ``keep``: as for
    :func:`certkit.bounds.fallback.lower_within_memory` (on the rows of ``C`` alone)."""
    y_lo, y_hi = interval_bounds(graph, S)[graph.output]
    n, s = C.shape[-1], C.shape[-2]
    finite = bool(torch.isfinite(y_lo).all() and torch.isfinite(y_hi).all())
    fixed = row_margin(C, d, y_lo, y_hi) if finite else None
    eye = torch.eye(n, dtype=C.dtype).expand(*C.shape[:-2], n, n)
    rows = C if finite else torch.cat([C, eye, -eye], dim=-2)

    def split(low: Tensor) -> tuple[Tensor, Tensor]:
        if fixed is not None:
            return low, fixed
        lo, hi = torch.maximum(y_lo, low[:, s:s + n]), torch.minimum(y_hi, -low[:, s + n:])
        return low[:, :s], row_margin(C, d, lo, hi)

    def enough(low: Tensor) -> bool:  # alpha-CROWN may stop once every row is proven
        slack, margin = split(low)
        return bool((slack - d > margin).all())
    low, method = lower_within_memory(stage, graph, S, rows, budget, keep=keep if finite else None, enough=enough)
    return (*split(low), method)


def bound_rows(queries: list[Query], stage: str, budget: Budget) -> list[Rows]:
    """``(lower bounds of C y - d, row margins)`` per query with one bound procedure, over each
    query's region as the model sees it (rounded outward), queries of one shape in one batch;
    within the budget's memory (the procedure degrades when it does not fit:
    :func:`certkit.bounds.fallback.lower_within_memory`)."""
    out: list = [None] * len(queries)
    for idx in _group(queries, _shape_key):
        qs = [queries[i] for i in idx]
        graph = qs[0].graph
        S = stack_sets([q.bound_set() for q in qs])
        C = torch.as_tensor(np.stack([q.C for q in qs]))
        d = torch.as_tensor(np.stack([q.d for q in qs]))
        keep: dict | None = {} if len(qs) == 1 and (stage == "alpha" or (
            stage == "deeppoly+interval" and wide_split(qs[0]))) else None
        with torch.no_grad():
            low, margin, method = rows_and_margins(stage, graph, S, C, d, budget, keep)
        if keep and keep.get("iterations") and keep.get("state") is not None:  # ReLU splitting's root, ready
            from .relu_split import remember_root

            remember_root(qs[0], S, C[0], low, keep["state"], int(keep["iterations"]))
        elif keep and keep.get("state") is not None:  # input splitting's root starts from its bounds
            from .input_split import remember_bounds

            remember_bounds(qs[0], S, keep["state"].bounds)
        for r, i in enumerate(idx):
            out[i] = Rows((low[r] - d[r]).numpy(), margin[r].numpy(), None, method)
    return out


def lipschitz_rows(queries: list[Query], budget: Budget, pair) -> list[Rows]:
    """Lipschitz-margin rows of robustness queries (:mod:`certkit.lipschitz.margin`): per query the
    lower bounds of ``f_label - f_j`` over the ball (rounding error included), zero margins, and the
    certified radius."""
    from ..lipschitz.margin import certify_margins

    qs = queries
    x = np.stack([q.region.center.numpy()[0] if q.region.center is not None
                  else (q.lower + q.upper) / 2 for q in qs])
    y = np.asarray([q.label for q in qs], dtype=np.int64)
    eps = float(qs[0].region.eps[0]) if qs[0].region.eps is not None else float((qs[0].upper - qs[0].lower).max() / 2)
    cert = certify_margins(qs[0].graph, x, y, eps, pair)
    return [Rows(cert.rows_lower[i], np.zeros(len(q.d)), float(cert.radius[i])) for i, q in enumerate(qs)]


# --------------------------------------------------------------------------- attacks


def attack_queries(queries: list[Query], cfg: AttackConfig, budget: Budget, seed: int) -> dict[int, Witness]:
    """Sampling and PGD inside each query's region (:func:`certkit.verify.falsify.attack`), one
    batch per shape; the best point of each query is confirmed (:meth:`Query.confirm`) when its
    float64 objective is within a near-miss of 0. Returns {position in ``queries``: witness}."""
    found: dict[int, Witness] = {}
    for idx in _group(queries, _shape_key):
        if budget.expired():
            break
        qs = [queries[i] for i in idx]
        if qs[0].C.shape[0] == 0:  # the whole output space is unsafe: any point is a counterexample
            for i, q in zip(idx, qs):
                w = q.confirm(((q.lower + q.upper) / 2)[None])
                if w is not None:
                    found[i] = w
            continue
        S = stack_sets([q.region for q in qs])
        C = torch.as_tensor(np.stack([q.C for q in qs]))
        d = torch.as_tensor(np.stack([q.d for q in qs]))
        x, v = attack(qs[0].graph, S, C, d, qs[0].owner, cfg, budget.deadline, seed + qs[0].index)
        for r, (i, q) in enumerate(zip(idx, qs)):
            if near_miss(v[r], q.d):
                w = q.confirm(x[r][None])
                if w is not None:
                    found[i] = w
    return found


# --------------------------------------------------------------------------- complete procedures


def _proof_of_split(res, query: Query, stage: str) -> gate.Proof | None:
    K = query.n_disjuncts
    if getattr(res, "tree", None) is not None:  # input splitting: one tree for all disjuncts
        return gate.Proof("input_split", stage, trees=[res.tree], groups=[list(range(K))])
    if getattr(res, "trees", None):  # ReLU splitting: one tree per disjunct (refined: one for all)
        groups = getattr(res, "groups", None) or [[k] for k in range(K)]
        return gate.Proof("relu_split", stage, trees=list(res.trees), groups=groups)
    return None


def _outcome(res, query: Query, stage: str, proof: gate.Proof | None) -> Outcome:
    """A search's own result as an :class:`Outcome`."""
    stats = {"domains": getattr(res, "domains", 0)}
    if getattr(res, "floor", ""):  # input splitting: the error terms exceed the margin somewhere
        stats["floor"] = res.floor
    if res.status == "falsified" and res.witness is not None:
        return Outcome(Status.FALSIFIED, witness=res.witness, stats=stats)
    if res.status == "verified" and proof is not None:
        return Outcome(Status.PROVED, proof=proof, stats=stats)
    if res.status == "timeout":
        return Outcome(Status.TIMEOUT, reason=getattr(res, "message", ""), stats=stats)
    return Outcome(Status.OPEN, reason=getattr(res, "message", ""), stats=stats)


def _activation_neurons(graph) -> int:
    return sum(graph.size(i) for i, n in enumerate(graph.nodes) if isinstance(n.op, ops.Activation))


def milp_sized(graph) -> bool:
    """Is the net small enough for the MILP to get a share of ``auto``'s time (:data:`MILP_MAX_NEURONS`)?"""
    return _activation_neurons(graph) <= MILP_MAX_NEURONS


def bab_share(query: Query) -> float:
    """The share of the time left that ``auto`` gives branch and bound on a box of more free inputs than
    input splitting takes alone; the MILP stage after it gets the rest: all of it on nets above
    :data:`MILP_MAX_NEURONS`, :data:`RELU_SPLIT_SHARE` on smaller ones, none where the MILP decides alone
    (:func:`milp_alone`)."""
    if not milp_sized(query.graph):
        return 1.0
    return 0.0 if milp_alone(query) else RELU_SPLIT_SHARE


def milp_alone(query: Query) -> bool:
    """Does ``auto`` leave this query to the MILP alone (:data:`MILP_ONLY_NEURONS`): more free inputs than
    input splitting takes but at most :data:`MILP_ONLY_MAX_INPUTS`, at most that many activation neurons,
    a piecewise-linear net and a MILP solver installed?"""
    graph = query.graph
    if not INPUT_SPLIT_MAX_DIM < free_dims(query) <= MILP_ONLY_MAX_INPUTS \
            or _activation_neurons(graph) > MILP_ONLY_NEURONS:
        return False
    from importlib.util import find_spec

    if find_spec("scipy") is None or (find_spec("highspy") is None and find_spec("gurobipy") is None):
        return False
    from .milp.encoding import non_piecewise_linear_nodes

    return not non_piecewise_linear_nodes(graph)


def free_dims(query: Query) -> int:
    """Input dimensions of nonzero width in the query's box."""
    return int(free_columns(query.region).numel())


def run_bab(query: Query, budget: Budget, explicit: bool) -> Outcome | None:
    """Branch and bound. Few free input dimensions: input splitting as a small portfolio
    (:data:`INPUT_SPLIT_PORTFOLIO`); otherwise input splitting while its measured rate says it can
    finish (:data:`INPUT_SPLIT_PROBE`), then, on ReLU nets, ReLU splitting (:func:`relu_portfolio`), within
    :func:`bab_share` of the time in ``auto`` (None, not applied, where that share is 0)."""
    from .input_split import input_split
    from .relu_split import supports

    graph = query.graph
    on = active()  # a cluster (certify --cluster): the search's parts or disjuncts become its tasks
    if free_dims(query) > INPUT_SPLIT_MAX_DIM:
        share = 1.0 if explicit else bab_share(query)
        if share == 0.0:
            return None  # the MILP stage after this one decides it
        rest = budget if share == 1.0 else budget.share(share)
        first = rest if rest.deadline is not None else rest.cap(UNBOUNDED_SHARE)  # a rate needs a deadline
        res = input_split(query, first, dataclasses.replace(HIGH_DIM_SPLIT, give_up_after=INPUT_SPLIT_PROBE))
        if res.status not in ("verified", "falsified") and supports(graph):
            if on is not None and query.n_disjuncts > 1:
                from .distributed import relu_split_on_cluster

                res = relu_split_on_cluster(query, rest, on)
            else:
                res = relu_portfolio(query, rest, budget)
        if res.status == "timeout" and not budget.expired():
            res.status = "unknown"
        return _outcome(res, query, "bab", _proof_of_split(res, query, "bab"))
    if on is not None:
        from .distributed import split_on_cluster

        res = split_on_cluster(query, budget, on)
    else:
        res = split_portfolio(query, budget)
    if res.status not in ("verified", "falsified") and budget.expired():
        res.status = "timeout"
    return _outcome(res, query, "bab", _proof_of_split(res, query, "bab"))


def refine_applies(graph) -> bool:
    """Does ReLU splitting of this net also run the search with re-optimised intermediate bounds
    (:mod:`certkit.verify.relu_refine`)? On fully connected ReLU nets of at least
    :data:`REFINE_MIN_LAYERS` ReLU layers: measured there (``benchmarks/relu_split.py``), not on conv nets."""
    from .relu_domains import piecewise_linear, relu_nodes

    live = [graph.nodes[i].op for i in graph.live]
    return piecewise_linear(graph) and not any(isinstance(op, ops.Conv) for op in live) \
        and len(relu_nodes(graph)) >= REFINE_MIN_LAYERS


def relu_portfolio(query: Query, budget: Budget, whole: Budget | None = None):
    """ReLU splitting: beta-CROWN's search (:func:`certkit.verify.relu_split.relu_split`) within ``budget``;
    on the nets :func:`refine_applies` to, where hardly any domain of it has closed after :data:`REFINE_PROBE`
    of that time (``ReluSplitConfig.hopeless_closed``), the search with re-optimised intermediate bounds (:mod:`certkit.verify.relu_refine`) for the
    rest of ``whole`` (default ``budget``; ``auto`` passes the MILP's share too: where beta-CROWN's domains
    never close, neither does the MILP's search on the same relaxation, 1800 ReLUs of ERAN's 9x200)."""
    from .relu_refine import refine_split
    from .relu_split import ReluSplitConfig, relu_split

    if not refine_applies(query.graph):
        return relu_split(query, budget)
    res = relu_split(query, budget, ReluSplitConfig(hopeless_after=REFINE_PROBE))
    whole = budget if whole is None else whole
    if not res.hopeless or whole.expired():
        return res
    ref = refine_split(query, whole)
    ref.domains += res.domains
    return ref


def wide_split(query: Query) -> bool:
    """Does branch and bound of ``query`` run :data:`WIDE_SPLIT` (input splitting whose root starts from the
    pipeline's ``deeppoly+interval`` bounds: :func:`certkit.verify.input_split.remember_bounds`)?"""
    return free_dims(query) <= INPUT_SPLIT_MAX_DIM and starts_forward(query.bound_set(), query.graph)


def split_portfolio(query: Query, budget: Budget, root=None, portfolio=None, handoff=None, scale: float = 1.0):
    """Input splitting as a portfolio (default :data:`INPUT_SPLIT_PORTFOLIO`; :data:`WIDE_SPLIT` alone
    on nets whose back-substitution starts from forward bounds) over the query's box, or over ``root``
    (:func:`certkit.verify.input_split.input_split`); the last run's outcome. ``handoff``: the last run's
    (see ``input_split``); ``scale``: the runs' shares times this (a part of the box: its share of it)."""
    from .input_split import input_split

    res = None
    portfolio = portfolio or INPUT_SPLIT_PORTFOLIO
    if starts_forward(query.bound_set(), query.graph):
        portfolio = ((None, WIDE_SPLIT),)
    for k, (share, cfg) in enumerate(portfolio):
        part = budget if share is None else (budget.share(share * scale) if budget.deadline is not None
                                             else budget.cap(UNBOUNDED_SHARE * scale))
        res = input_split(query, part, cfg, root, handoff if k == len(portfolio) - 1 else None)
        if res.status in ("verified", "falsified", "handed_off"):
            break
    return res


def run_milp(query: Query, budget: Budget, explicit: bool) -> Outcome | None:
    """The exact MILP of the query's box on piecewise-linear nets (:data:`MILP_SOLVER`); None where
    it does not apply. For an L_2 or L_1 ball the box is a superset: a proof holds, and a counterexample is kept
    only when :meth:`Query.confirm` finds it inside the ball."""
    try:
        from .milp import milp_decide
    except ImportError as e:
        if explicit:
            raise BackendError(f"the milp backend needs highspy and scipy ({e.name} is missing): "
                               "pip install highspy scipy") from e
        return None
    if (free_dims(query) <= INPUT_SPLIT_MAX_DIM or not milp_sized(query.graph)) and not explicit:
        return None  # input splitting already decided or ran out of time; or branch and bound had it
    rem = budget.remaining()
    part = budget if rem is None else budget.before_end(min(2.0, 0.2 * rem))  # solvers overshoot their stop
    try:
        res = milp_decide(query.graph, query.property(), query.index, query.runner, part.deadline,
                          solver=MILP_SOLVER)
    except BackendError:
        return None
    if res.status == "falsified" and res.witness is not None:
        res.witness = query.confirm(res.witness.x[None])
        if res.witness is None:
            res.status = "unknown"
    proof = None
    if res.status == "verified":
        proof = gate.Proof("milp", "milp", milp={"bounds": list(res.bounds), "tolerances": list(res.tolerances),
                                                  "methods": list(res.methods), "solver": res.solver})
    return _outcome(res, query, "milp", proof)


@dataclass(frozen=True)
class CompleteProcedure:
    """A complete procedure: ``run(query, budget, explicit)`` -> :class:`Outcome` or None when it does
    not apply (``explicit``: the user asked for this very procedure as the backend)."""

    name: str
    summary: str
    run: Callable[[Query, Budget, bool], Outcome | None]


COMPLETE: dict[str, CompleteProcedure] = {p.name: p for p in (
    CompleteProcedure("bab", "branch and bound: input splitting (<= 16 inputs) or ReLU splitting", run_bab),
    CompleteProcedure("milp", "exact MILP of piecewise-linear nets (HiGHS, Gurobi)", run_milp),
)}
