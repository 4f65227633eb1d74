"""The interval ``[lower, upper]`` on a network's Lipschitz constant (DESIGN.md section 4).

``lipschitz_bounds(model_or_graph, norm=2, method="auto")`` runs the upper-bound methods of
:mod:`certkit.lipschitz.methods` (``nonneg``, ``abba``, ``separable``, ``signed``, ``sdp``)
and the sampled lower bound of :mod:`certkit.lipschitz.lower`, and returns a
:class:`LipschitzResult`. ``auto`` runs every method that applies and keeps the smallest
upper bound. Input normalisation (Scale ops) and BatchNorm (folded by the importer) are
ordinary linear ops here, so they are accounted for exactly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..graph.graph import Graph
from .lower import sampled_lower
from .methods import METHODS, MethodResult, NotApplicable, run_method
from .structure import Structure

__all__ = ["lipschitz_bounds", "LipschitzResult", "MethodResult", "NotApplicable", "parse_norm",
           "AUTO_METHODS"]

#: The methods ``auto`` tries, cheapest first (``sdp`` only when cvxpy is installed and the net small).
AUTO_METHODS = ("nonneg", "abba", "signed", "separable", "sdp")
SDP_AUTO_MAX_NEURONS = 100


@dataclass(frozen=True)
class LipschitzResult:
    """``lower <= Lip_p(T) <= upper``; ``method_upper`` gave the upper end."""

    norm: float
    lower: float
    upper: float
    method_lower: str
    method_upper: str
    methods: dict[str, MethodResult] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        norm = "inf" if self.norm == float("inf") else int(self.norm)
        return {"norm": norm, "lower": self.lower, "upper": self.upper,
                "method": {"lower": self.method_lower, "upper": self.method_upper},
                "methods": {k: {"upper": m.upper, "details": _jsonable(m.details)} for k, m in self.methods.items()},
                "refused": dict(self.refused), "timings": {k: round(v, 6) for k, v in self.timings.items()}}


def _jsonable(d):
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (np.floating, np.integer)):
        return d.item()
    return d


def parse_norm(norm) -> float:
    s = str(norm).lower()
    if s in ("2", "2.0", "l2"):
        return 2.0
    if s in ("inf", "linf", "infinity"):
        return float("inf")
    raise UsageError(f"unknown norm '{norm}' (choose 2 or inf)")


def _graph(model_or_graph) -> Graph:
    return model_or_graph if isinstance(model_or_graph, Graph) else model_or_graph.graph


def lipschitz_bounds(model_or_graph, norm=2, method: str = "auto", lower: bool = True,
                     samples: int = 32, data: np.ndarray | None = None, seed: int = 0,
                     lower_time: float = 3.0) -> LipschitzResult:
    """Sound bounds on the L_p -> L_p Lipschitz constant (p = 2 or inf) of a model.

    With ``method`` other than ``auto`` only that method runs, and a net it does not apply to
    raises :class:`NotApplicable` (a :class:`certkit.errors.ModelError`) with the reason.
    The lower bound samples ``samples`` points (fewer on large nets) plus ``data`` for about
    ``lower_time`` seconds.
    """
    p = parse_norm(norm)
    g = _graph(model_or_graph)
    if method != "auto" and method not in METHODS:
        raise UsageError(f"unknown method '{method}' (choose auto or one of: {', '.join(METHODS)})")
    st = Structure.of(g)
    results: dict[str, MethodResult] = {}
    refused: dict[str, str] = {}
    timings: dict[str, float] = {}
    names = AUTO_METHODS if method == "auto" else (method,)
    for name in names:
        if method == "auto" and name == "sdp" and not _sdp_in_auto(st, p):
            refused[name] = "not tried by auto (needs cvxpy and at most %d inputs + hidden neurons, L_2)" % SDP_AUTO_MAX_NEURONS
            continue
        t = time.monotonic()
        try:
            results[name] = run_method(name, st, p)
        except NotApplicable as e:
            if method != "auto":
                raise
            refused[name] = str(e)
        timings[name] = time.monotonic() - t
    low = min(r.upper for r in results.values())
    # on a near tie (rounding), the first in AUTO_METHODS order: the structural method names the reason
    best = next(r for r in results.values() if r.upper <= low * (1 + 1e-9))
    lo, how = 0.0, "none"
    if lower:
        t = time.monotonic()
        lb = sampled_lower(g, p, samples=samples, x=data, seed=seed, time_budget=lower_time)
        timings["lower"] = time.monotonic() - t
        lo, how = lb.value, "sampled"
    return LipschitzResult(p, lo, best.upper, how, best.method, results, refused, timings)


def _sdp_in_auto(st: Structure, p: float) -> bool:
    if p != 2:
        return False
    import importlib.util

    if importlib.util.find_spec("cvxpy") is None:
        return False
    return st.size(0) + sum(st.size(i) for i in st.nonlinear) <= SDP_AUTO_MAX_NEURONS
