"""The certifier: a spec and a model in, a sound verdict out (DESIGN.md sections 1-3).

For each property (input box + output DNF) it

1. runs a short falsification (sampling + PGD); a candidate becomes ``sat``
   only after onnxruntime confirms it (:mod:`certkit.verify.witness`);
2. runs the backend's stages (cheapest first); a disjunct is ruled out when
   some row's lower bound on ``C y - d`` exceeds the row margin; bounds are those
   of the model as onnxruntime computes it (:mod:`certkit.bounds.fperror`), over
   the box rounded outward to the model's precision;
3. if the property is still open, attacks again with the remaining budget, then
   runs the complete procedures.

A property becomes ``verified`` only through the verdict gate
(:mod:`certkit.verify.gate`), which admits a complete proof (rows, a proof tree,
MILP bounds) and records it; the verdict is ``unsat`` only when
:func:`certkit.verify.gate.verdict` accepts every property's proof -- never from
an attack.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds.backends import BACKENDS
from ..bounds.fperror import input_set, precision_of, row_margin
from ..bounds.interval import interval_bounds
from ..errors import BackendError
from ..model import Model
from ..spec.sets import InputSet
from ..spec.spec import Property, Spec
from . import gate
from .falsify import AttackConfig, attack
from .input_split import SplitConfig
from .plan import PLANS
from .witness import Witness, validate

#: The stages each ``--backend`` runs, in order (:mod:`certkit.verify.plan`).
STAGES = PLANS


def _run_bab(model: Model, prop: Property, k: int, deadline: float | None, explicit: bool):
    """Branch and bound. Low-dimensional inputs: input splitting as a small portfolio
    (``INPUT_SPLIT_PORTFOLIO``): DeepPoly-only domains with two branching look-aheads, each
    for a share of the budget, then domains tightened by alpha-CROWN. Otherwise ReLU
    splitting with beta-CROWN bounds (ReLU nets)."""
    from .input_split import input_split
    from .relu_split import relu_split, supports

    if model.n_inputs > INPUT_SPLIT_MAX_DIM:
        if not supports(model.graph):
            return None  # not a ReLU net: leave the property open
        if not explicit and deadline is not None:  # leave the MILP stage a share (small nets)
            deadline = time.monotonic() + RELU_SPLIT_SHARE * max(deadline - time.monotonic(), 0.0)
        return relu_split(model.graph, prop, k, model.runner, deadline)
    for share, cfg in INPUT_SPLIT_PORTFOLIO:
        now = time.monotonic()
        stop = deadline if share is None else now + (20.0 if deadline is None else share * max(deadline - now, 0.0))
        out = input_split(model.graph, prop, k, model.runner, stop, cfg)
        if out.status in ("verified", "falsified"):
            return out
    return out


def _run_milp(model: Model, prop: Property, k: int, deadline: float | None, explicit: bool):
    """Exact MILP (HiGHS) on piecewise-linear nets; None where it does not apply."""
    from ..errors import BackendError

    try:
        from .milp import milp_decide
    except ImportError as e:
        if explicit:
            raise BackendError(f"the milp backend needs highspy and scipy ({e.name} is missing): "
                               "pip install highspy scipy") from e
        return None

    if model.n_inputs <= INPUT_SPLIT_MAX_DIM and not explicit:
        return None  # input splitting already decided or ran out of time
    if deadline is not None:  # the solver's own stops overshoot by up to a few seconds
        deadline -= min(2.0, 0.2 * max(deadline - time.monotonic(), 0.0))
    try:
        return milp_decide(model.graph, prop, k, model.runner, deadline)
    except BackendError:
        return None


#: Complete procedures: name -> fn(model, prop, index, deadline, explicit) -> outcome with
#: ``status`` (verified | falsified | timeout | unknown) and ``witness``, or None when the
#: procedure does not apply (``explicit``: the user asked for this very backend).
COMPLETE = {"bab": _run_bab, "milp": _run_milp}

#: Input splitting as a portfolio: (share of the remaining time, or None for all of it; options).
#: Which branching look-ahead wins is instance-dependent on ACAS Xu (each is 5-20x faster than the
#: other on some instances; benchmarks/instances.py), so both DeepPoly-only variants get a short turn
#: before the alpha-CROWN run that gets the rest.
INPUT_SPLIT_PORTFOLIO = (
    (0.15, SplitConfig(lookahead=5, alpha_iterations=0)),
    (0.18, SplitConfig(lookahead=2, alpha_iterations=0)),
    (None, SplitConfig(lookahead=5)),
)

#: Input splitting is used up to this many input dimensions; ReLU splitting above.
INPUT_SPLIT_MAX_DIM = 16
#: In ``auto``, ReLU splitting gets this share of the remaining time, the MILP the rest
#: (the MILP finds the rare counterexamples of small nets that only a tiny region holds).
RELU_SPLIT_SHARE = 0.6

QUICK_ATTACK = AttackConfig(samples=256, restarts=4, steps=20)
LONG_ATTACK = AttackConfig(samples=1024, restarts=36, steps=200)


@dataclass
class PropertyResult:
    """What was established about one property. ``status`` becomes ``verified`` only through
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


@dataclass
class CertifyResult:
    """The typed outcome of :func:`certify`; ``to_json`` gives the certificate."""

    verdict: str
    backend: str
    stage: str = ""
    reason: str = ""
    witness: Witness | None = None
    properties: list[PropertyResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = "float32"  # the model's, as the bounds assumed it


def stages_for(backend: str) -> tuple[str, ...]:
    if backend not in STAGES:
        raise BackendError(f"unknown backend '{backend}' (choose from: {', '.join(STAGES)})")
    return STAGES[backend]


def _attack_property(model: Model, prop: Property, k: int, cfg: AttackConfig, deadline: float | None,
                     seed: int) -> Witness | None:
    C, d, owner = prop.stacked()
    if C.shape[0] == 0:  # the whole output space is unsafe: any input is a counterexample
        return validate(model.runner, prop, k, ((prop.lower + prop.upper) / 2)[None])
    inputs = InputSet.box(prop.lower, prop.upper)
    x, v = attack(model.graph, inputs, torch.as_tensor(C), torch.as_tensor(d), owner, cfg, deadline, seed)
    # validate the best point; near-misses are also worth one onnxruntime call
    if v[0] <= 1e-6 * (1 + abs(float(np.abs(d).max(initial=0)))):
        return validate(model.runner, prop, k, x)
    return None


def prove_rows(model: Model, prop: Property, stage: str,
               deadline: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bound the property's rows with one bound backend over the box rounded outward to the
    model's precision: ``(slack, margin, ruled)`` with ``slack`` the lower bounds on ``C y - d``
    (of the computed network), ``margin`` the row margin and ``ruled`` per disjunct (some row is
    proven in the gate's sense)."""
    C, d, owner = prop.stacked()
    inputs = input_set(model.graph, prop.lower, prop.upper)
    kw = {"deadline": deadline} if stage == "alpha" else {}
    with torch.no_grad():
        low = BACKENDS[stage].lower(model.graph, inputs, torch.as_tensor(C), **kw).numpy()[0]
        y_lo, y_hi = interval_bounds(model.graph, inputs)[model.graph.output]
        margin = row_margin(torch.as_tensor(C), torch.as_tensor(d), y_lo, y_hi).numpy()[0]
    slack = low - d
    ruled = np.zeros(len(prop.disjuncts), dtype=bool)
    np.logical_or.at(ruled, owner, gate.rows_proven(slack, margin))
    return slack, margin, ruled


def _bound_property(model: Model, prop: Property, stage: str, res: PropertyResult,
                    deadline: float | None = None) -> bool:
    res.owner = prop.stacked()[2]
    if len(res.owner) == 0:
        res.ruled_out = np.zeros(len(prop.disjuncts), dtype=bool)
        return False
    slack, margin, ruled = prove_rows(model, prop, stage, deadline)
    if res.spec_lower is None or res.ruled_out is None:
        res.spec_lower, res.margin, res.row_stage = slack, margin, [stage] * len(slack)
    else:  # keep the best of the stages, row by row
        better = (slack - margin > res.spec_lower - res.margin) | ~np.isfinite(res.spec_lower - res.margin)
        better &= np.isfinite(slack - margin)
        res.spec_lower = np.where(better, slack, res.spec_lower)
        res.margin = np.where(better, margin, res.margin)
        res.row_stage = [stage if b else s for b, s in zip(better, res.row_stage or [stage] * len(slack))]
    res.ruled_out = ruled if res.ruled_out is None else (res.ruled_out | ruled)
    proof = gate.Proof("bounds", stage, res.spec_lower, res.margin, res.owner, list(res.row_stage))
    return gate.admit(res, proof, len(prop.disjuncts))


def _complete_proof(stage: str, res, prop: Property, rows: PropertyResult) -> gate.Proof | None:
    """The proof a complete procedure's ``verified`` outcome carries (None when it has none)."""
    K = len(prop.disjuncts)
    keep = dict(lower=rows.spec_lower, margin=rows.margin, owner=rows.owner, row_stage=rows.row_stage)
    if getattr(res, "tree", None) is not None:  # input splitting: one tree for all disjuncts
        return gate.Proof("input_split", stage, trees=[res.tree], groups=[list(range(K))], **keep)
    if getattr(res, "trees", None):  # ReLU splitting: one tree per disjunct
        return gate.Proof("relu_split", stage, trees=list(res.trees),
                          groups=[[int(k)] for k in range(K)], **keep)
    if hasattr(res, "methods"):  # the MILP
        return gate.Proof("milp", stage, milp={"bounds": list(res.bounds), "tolerances": list(res.tolerances),
                                                "methods": list(res.methods), "solver": res.solver}, **keep)
    return None


def certify(model: Model, spec: Spec, backend: str = "auto", timeout: float | None = None,
            seed: int = 0, attack_budget: AttackConfig | None = None) -> CertifyResult:
    """Decide the spec on the model. See the module docstring for the procedure."""
    stages = stages_for(backend)
    t0 = time.monotonic()
    deadline = None if timeout is None else t0 + timeout
    out = CertifyResult("unknown", backend, precision=precision_of(model.graph).name)
    timings = {"attack": 0.0, "bounds": 0.0}
    results = [PropertyResult(k) for k in range(len(spec.properties))]
    out.properties = results

    def expired() -> bool:
        return deadline is not None and time.monotonic() > deadline

    def try_attack(k: int, prop: Property, cfg: AttackConfig) -> bool:
        t = time.monotonic()
        w = _attack_property(model, prop, k, cfg, deadline, seed + k)
        timings["attack"] += time.monotonic() - t
        if w is not None:
            out.verdict, out.witness, out.stage = "sat", w, "attack"
            results[k].status = "falsified"
            return True
        return False

    for k, prop in enumerate(spec.properties):
        if try_attack(k, prop, attack_budget or QUICK_ATTACK):
            break
        for stage in stages:
            if expired() or stage in COMPLETE:
                break
            t = time.monotonic()
            done = _bound_property(model, prop, stage, results[k], deadline)
            timings["bounds"] += time.monotonic() - t
            timings[stage] = timings.get(stage, 0.0) + time.monotonic() - t
            if done:
                break
    if out.verdict != "sat":
        for k, prop in enumerate(spec.properties):
            if results[k].status == "open" and not expired():
                if try_attack(k, prop, attack_budget or LONG_ATTACK):
                    break
    ran_out = False  # a complete procedure stopped at the deadline
    for stage in (st for st in stages if st in COMPLETE):
        for k, prop in enumerate(spec.properties):
            if out.verdict == "sat" or results[k].status != "open" or expired():
                continue
            t = time.monotonic()
            res = COMPLETE[stage](model, prop, k, deadline, backend == stage)
            timings[stage] = timings.get(stage, 0.0) + time.monotonic() - t
            if res is None:
                continue
            if res.status == "falsified" and res.witness is not None:
                out.verdict, out.witness, out.stage = "sat", res.witness, stage
                results[k].status = "falsified"
            elif res.status == "verified":
                proof = _complete_proof(stage, res, prop, results[k])
                if proof is not None and gate.admit(results[k], proof, len(prop.disjuncts)):
                    if results[k].ruled_out is not None:
                        results[k].ruled_out[:] = True
            elif res.status == "timeout":
                ran_out = True
    if out.verdict != "sat":
        if gate.verdict(results, [len(p.disjuncts) for p in spec.properties]):
            out.verdict = "unsat"
            out.stage = max((r.stage for r in results), key=stages.index)
        elif expired() or ran_out:
            out.verdict, out.reason = "timeout", f"time budget of {timeout:g} s used up"
        else:
            n_open = sum(r.status == "open" for r in results)
            out.verdict = "unknown"
            out.reason = (f"{n_open} of {len(results)} input region(s) not proven: bounds too loose "
                          f"for backend '{backend}' and no counterexample found")
    timings["total"] = time.monotonic() - t0
    out.timings = timings
    return out
