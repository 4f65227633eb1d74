"""The certifier: a spec and a model in, a sound verdict out (DESIGN.md sections 1-3).

Each input box of the spec is a :class:`~certkit.verify.query.Query`; the queries go through the
one pipeline (:func:`certkit.verify.pipeline.decide`): attacks (a candidate is a counterexample
only once onnxruntime confirms it), the backend's bound procedures, the complete ones, all within
one :class:`~certkit.verify.query.Budget`. The verdict is ``unsat`` only when
:func:`certkit.verify.gate.verdict` accepts every query's proof -- never from an attack.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds.fperror import input_set, precision_of
from ..errors import BackendError
from ..model import Model
from ..spec.spec import Property, Spec
from . import gate
from .falsify import AttackConfig
from .pipeline import LONG_ATTACK, MEDIUM_ATTACK, QUICK_ATTACK, PropertyResult, decide
from .plan import PLANS
from .procedures import rows_and_margins
from .query import Budget, Query
from .witness import Witness

#: The stages each ``--backend`` runs, in order (:mod:`certkit.verify.plan`).
STAGES = PLANS

__all__ = ["certify", "CertifyResult", "PropertyResult", "STAGES", "stages_for", "prove_rows",
           "QUICK_ATTACK", "LONG_ATTACK"]


@dataclass
class CertifyResult:
    """The typed outcome of :func:`certify`; the certificate is :func:`certkit.certificate.certificate`."""

    verdict: str
    backend: str
    stage: str = ""
    reason: str = ""
    witness: Witness | None = None
    properties: list[PropertyResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = "float32"  # the model's, as the bounds assumed it
    #: what the memory budget changed: {"stage", "method" (what produced the bounds; "" none),
    #: "reason"}, once each (:mod:`certkit.bounds.fallback`)
    degraded: list[dict] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per entry of ``degraded``, and per open input box whose search found an error floor
        (:meth:`certkit.verify.input_split._Problem.check_floor`), for the user."""
        floors = [f"note: input region {p.index}: {p.floor}" for p in self.properties if p.floor]
        return [degraded_note(d) for d in self.degraded] + floors

    def _line(self) -> str:
        stage = f", stage {self.stage}" if self.stage else ""
        return (f"{self.verdict} (backend {self.backend}{stage}, {len(self.properties)} input box(es), "
                f"{self.timings.get('total', 0.0):.2f} s)")

    def __repr__(self) -> str:
        return f"<CertifyResult {self._line()}>"

    def summary(self) -> str:
        """The verdict line, then the reason (unknown, timeout) or the witness's place (sat), and any notes."""
        lines = [self._line()]
        if self.witness is not None:
            lines.append(f"counterexample in input box {self.witness.property_index}, disjunct "
                         f"{self.witness.disjunct_index} (confirmed with onnxruntime)")
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines + self.notes())

    def to_json(self) -> dict:
        """A JSON-ready dict: verdict, backend, stage, reason, precision, per input box its status,
        stage, time and lowest spec-row bound, the witness (sat), timings, what the memory budget changed.
        (The re-checkable certificate is :func:`certkit.certificate.certificate`.)"""
        from .. import __version__

        doc: dict = {
            "certkit_version": __version__, "verdict": self.verdict, "backend": self.backend, "stage": self.stage,
            "reason": self.reason, "precision": self.precision,
            "properties": [{"index": int(p.index), "status": p.status, "stage": p.stage,
                            "timed_out": bool(p.timed_out), "time": round(float(p.time), 6),
                            **({"floor": p.floor} if p.floor else {}),
                            "spec_lower_min": (json_number(np.min(p.spec_lower)) if p.spec_lower is not None
                                               and len(p.spec_lower) else None)}
                           for p in self.properties],
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
            "degraded": [dict(d) for d in self.degraded],
        }
        if self.witness is not None:
            w = self.witness
            doc["witness"] = {"x": json_numbers(w.x), "y": json_numbers(w.y), "property": int(w.property_index),
                              "disjunct": int(w.disjunct_index)}
        return doc


def json_number(v) -> float | None:
    """A float for JSON: None for NaN and infinities (JSON has neither)."""
    v = float(v)
    return v if np.isfinite(v) else None


def json_numbers(a) -> list[float | None]:
    return [json_number(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def degraded_note(d: dict) -> str:
    """The line printed for one entry of a result's ``degraded`` list."""
    if not d.get("method"):
        return f"note: {d['stage']} skipped, it does not fit in the memory budget: {d['reason']}"
    if d["method"] == d["stage"]:
        return f"note: {d['stage']} reduced to fit the memory budget: {d['reason']}"
    return f"note: {d['stage']} bounds degraded to {d['method']} (memory): {d['reason']}"


def collect_degraded(results) -> list[dict]:
    """The distinct ``degraded`` entries of pipeline results, in order."""
    out: list[dict] = []
    for r in results:
        for d in r.extra.get("degraded", []):
            if d not in out:
                out.append(d)
    return out


def stages_for(backend: str) -> tuple[str, ...]:
    if backend not in STAGES:
        raise BackendError(f"unknown backend '{backend}' (choose from: {', '.join(STAGES)})")
    return STAGES[backend]


def queries_of(model: Model, spec: Spec) -> list[Query]:
    """One query per input box of the spec, confirming counterexamples with the model's runner
    (created on first use)."""
    run = (lambda x: model.runner(x))  # noqa: E731 - the onnxruntime session is made only when needed
    return [Query.of_property(model.graph, prop, k, run) for k, prop in enumerate(spec.properties)]


def prove_rows(model: Model, prop: Property, stage: str,
               budget: Budget | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bound one box's rows with one bound backend (over the box rounded outward to the model's
    precision): ``(slack, margin, ruled)`` -- the lower bounds on ``C y - d`` of the computed network,
    the row margins, and per disjunct whether some row is proven in the gate's sense."""
    C, d, owner = prop.stacked()
    inputs = input_set(model.graph, prop.lower, prop.upper)
    with torch.no_grad():
        low, margin, _ = rows_and_margins(stage, model.graph, inputs, torch.as_tensor(C), torch.as_tensor(d), budget)
        low, margin = low.numpy()[0], margin.numpy()[0]
    slack = low - d
    ruled = np.zeros(len(prop.disjuncts), dtype=bool)
    np.logical_or.at(ruled, owner, gate.rows_proven(slack, margin))
    return slack, margin, ruled


def certify(model: Model, spec: Spec, backend: str = "auto", timeout: float | Budget | None = None,
            seed: int = 0, attack_budget: AttackConfig | None = None) -> CertifyResult:
    """Decide the spec on the model (module docstring). ``timeout``: seconds, or a :class:`Budget`
    (the command line passes one that knows the user's ``--timeout`` and the start-up time)."""
    plan = stages_for(backend)
    t0 = time.monotonic()
    budget = timeout if isinstance(timeout, Budget) else Budget.of(timeout)
    out = CertifyResult("unknown", backend, precision=precision_of(model.graph).name)
    timings: dict[str, float] = {"attack": 0.0, "bounds": 0.0}
    results = decide(queries_of(model, spec), plan, budget, seed=seed, quick=attack_budget or QUICK_ATTACK,
                     medium=attack_budget or MEDIUM_ATTACK, long=attack_budget or LONG_ATTACK, stop_on_sat=True,
                     explicit=backend, timings=timings)
    out.properties = results
    out.degraded = collect_degraded(results)
    sat = next((r for r in results if r.status == "falsified"), None)
    if sat is not None:
        out.verdict, out.witness, out.stage = "sat", sat.witness, sat.stage
    elif gate.verdict(results, [len(p.disjuncts) for p in spec.properties]):
        out.verdict = "unsat"
        out.stage = max((r.stage for r in results), key=lambda st: plan.index(st) if st in plan else -1)
    elif budget.expired() or any(r.timed_out for r in results):
        out.verdict, out.reason = "timeout", budget.message()
    else:
        n_open = sum(r.status == "open" for r in results)
        out.verdict = "unknown"
        out.reason = (f"{n_open} of {len(results)} input region(s) not proven: bounds too loose "
                      f"for backend '{backend}' and no counterexample found")
    timings["total"] = time.monotonic() - t0
    out.timings = timings
    return out
