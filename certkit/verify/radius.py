"""Per-sample certified radii (``certkit certify --dataset D --radius``) and radius sweeps.

The largest radius at which a sample is certified, cheapest sound method first:

1. **Lipschitz margins** (:mod:`certkit.lipschitz.margin`): one pass gives every sample a certified
   radius ``r_lip`` in closed form (``backend="lipschitz"``); where the net has no Lipschitz rule this
   step gives 0.
2. **Bisection** between ``lo = r_lip`` (certified) and ``hi = eps_max`` with the bound backend
   (``deeppoly`` by default; ``alpha``, ``forward``, ``interval`` likewise): at ``mid`` the sample's
   ball goes through the same pipeline as data-set mode (attack, then the backend's bounds, floating
   point included), ``verified`` -> ``lo = mid``; a counterexample at ``mid`` (validated with
   onnxruntime) -> ``hi = mid`` and ``upper = mid`` (the sample is *not* robust there); anything else
   -> ``hi = mid`` (not certified, nothing known). All samples of one step are one batch.

The reported ``radius`` is ``lo``: the sample is certified at every radius up to it (a ball of radius
``r`` contains the balls of smaller radii, so a certificate at ``lo`` covers them); ``upper``, when
finite, is a radius with a counterexample. Sweeps (``--eps-sweep``) are data-set runs at each radius.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UnsupportedOpError, UsageError
from ..model import Model
from .certify import stages_for
from .falsify import AttackConfig
from .pipeline import decide
from .procedures import bound_rows
from .query import Budget, Query

#: Bisection steps after the Lipschitz radius (the bracket shrinks 2^STEPS times).
STEPS = 8
#: The bound backends a radius search may bisect with (complete procedures would need a budget per step).
BISECT_BACKENDS = ("interval", "forward", "deeppoly", "alpha")


@dataclass
class SampleRadius:
    index: int
    label: int
    radius: float  # certified at every radius <= this (0: none; nan: misclassified)
    upper: float  # a counterexample at this radius (inf: none found)
    method: str  # "lipschitz", the bisection's backend, "none", "misclassified"


@dataclass
class RadiusResult:
    norm: str
    backend: str
    eps_max: float
    steps: int
    samples: list[SampleRadius] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    timed_out: bool = False  # the budget ran out before the bisection ended (radii: as far as it got)

    def radii(self) -> np.ndarray:
        return np.array([s.radius for s in self.samples], dtype=np.float64)

    def certified_at(self, eps: float) -> int:
        """Samples certified at radius ``eps`` by this search."""
        return int(sum(s.radius >= eps for s in self.samples if s.radius == s.radius))

    def to_json(self) -> dict:
        def num(v: float):
            return v if math.isfinite(v) else (None if v != v else "inf")
        return {"norm": self.norm, "backend": self.backend, "eps_max": self.eps_max, "steps": self.steps,
                "timed_out": self.timed_out, "timings": self.timings,
                "per_sample": [{"index": s.index, "label": s.label, "radius": num(s.radius), "upper": num(s.upper),
                                "method": s.method} for s in self.samples]}


def certified_radii(model: Model, x: np.ndarray, y: np.ndarray, norm: str = "linf", eps_max: float = 1.0,
                    domain: tuple[float, float] | None = None, backend: str = "deeppoly", steps: int = STEPS,
                    seed: int = 0, batch_size: int = 64, indices: np.ndarray | None = None,
                    budget: Budget | None = None) -> RadiusResult:
    """The certified radius of every sample (module doc). ``budget``: for the whole search; when it runs
    out the bisection stops, each sample keeping the radius certified so far (``timed_out`` is set)."""
    from .dataset import NORMS, certify_dataset

    if backend not in BISECT_BACKENDS:
        raise UsageError(f"--radius bisects with a bound backend ({', '.join(BISECT_BACKENDS)}), not '{backend}'")
    if not (eps_max > 0 and math.isfinite(eps_max)):
        raise UsageError(f"--radius needs --eps E > 0 as the largest radius searched (got {eps_max})")
    if steps < 1:
        raise UsageError("the bisection needs at least one step")
    p = NORMS.get(norm)
    if p is None:
        raise UsageError(f"unknown norm '{norm}'")
    t0 = time.monotonic()
    idx_all = np.arange(len(x)) if indices is None else np.asarray(indices)
    out = RadiusResult(norm, backend, eps_max, steps)
    pred = model.runner(x).argmax(axis=1) if len(x) else np.zeros(0, int)
    ok = np.nonzero(pred == y)[0]
    lo = np.zeros(len(x))
    hi = np.full(len(x), float(eps_max))
    upper = np.full(len(x), math.inf)
    method = np.array(["none"] * len(x), dtype=object)
    if norm != "l1" and len(ok):  # 1. Lipschitz margins, where the net has a Lipschitz rule
        try:
            lip = certify_dataset(model, x[ok], y[ok], 0.0, norm, domain, "lipschitz", batch_size,
                                  total_timeout=budget)
        except UnsupportedOpError:  # no Lipschitz rule for some op: bisection from 0
            lip = None
        if lip is not None:
            for k, s in zip(ok, lip.samples):
                r = s.radius if s.radius == s.radius else 0.0
                if r > 0:
                    lo[k], method[k] = min(r, eps_max), "lipschitz"
    out.timings["lipschitz"] = time.monotonic() - t0
    plan = stages_for(backend)
    attack = AttackConfig(64, 2, 10)
    t1 = time.monotonic()
    budget = budget or Budget.of(None)
    for step in range(steps):  # 2. bisection, all open samples of a step in batches
        open_ = [k for k in ok if hi[k] - lo[k] > 1e-12 * max(1.0, hi[k])]
        if not open_:
            break
        if budget.expired():
            out.timed_out = True
            break
        mids = {k: (lo[k] + hi[k]) / 2 for k in open_}
        for start in range(0, len(open_), batch_size):
            ks = open_[start:start + batch_size]
            qs = [Query.robustness(model.graph, x[k], int(y[k]), mids[k], p, domain,
                                   lambda z: model.runner(z), int(idx_all[k])) for k in ks]
            res = decide(qs, plan, budget, seed=seed + step * 7919 + start, quick=None, medium=None,
                         long=attack, stop_on_sat=False, explicit=backend, rows=bound_rows)
            for k, r in zip(ks, res):
                if r.status == "open" and budget.expired():
                    continue  # not looked at in time: its bracket stays
                if r.status == "verified":
                    lo[k], method[k] = mids[k], backend
                else:
                    hi[k] = mids[k]
                    if r.status == "falsified":
                        upper[k] = min(upper[k], mids[k])
    out.timings["bisection"] = time.monotonic() - t1
    for k in range(len(x)):
        if pred[k] != y[k]:
            out.samples.append(SampleRadius(int(idx_all[k]), int(y[k]), float("nan"), 0.0, "misclassified"))
        else:
            out.samples.append(SampleRadius(int(idx_all[k]), int(y[k]), float(lo[k]), float(upper[k]),
                                            str(method[k]) if lo[k] > 0 else "none"))
    out.timings["total"] = time.monotonic() - t0
    return out
