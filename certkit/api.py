"""The public Python API; :mod:`certkit.cli` is a thin layer over it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .bounds.backends import BACKENDS
from .bounds.fallback import lower_within_memory
from .errors import BackendError
from .model import Model, load_model
from .bounds.fperror import input_set
from .spec.spec import Spec
from .spec.vnnlib import parse_vnnlib
from .verify.certify import STAGES, CertifyResult
from .verify.certify import certify as _certify
from .verify.dataset import DatasetResult, check_samples
from .verify.dataset import certify_dataset as _certify_dataset
from .verify.plan import BOUND_PROCEDURES, PLANS
from .verify.query import Budget

if TYPE_CHECKING:
    from .fixedpoint import FixedPointReport

__all__ = ["load_model", "load_spec", "bounds", "certify", "certify_dataset", "BoundsResult", "BOUNDS_BACKENDS",
           "lipschitz_bounds", "LipschitzResult", "fixedpoint", "FixedPointReport"]


#: Names served here from other packages, loaded on first use (PEP 562): ``certify`` needs neither.
_ELSEWHERE = {"lipschitz_bounds": "lipschitz", "LipschitzResult": "lipschitz", "FixedPointReport": "fixedpoint"}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(f".{_ELSEWHERE[name]}", __package__), name)
    raise AttributeError(f"module 'certkit.api' has no attribute '{name}'")


def load_spec(path: str | os.PathLike, model: Model | None = None) -> Spec:
    """Parse a VNN-LIB file; with ``model`` its sizes are checked against the model's."""
    if model is None:
        return parse_vnnlib(path)
    return parse_vnnlib(path, model.n_inputs, model.n_outputs)


@dataclass(frozen=True, eq=False)
class BoundsResult:
    """Bounds over the spec's first input box: every output, and every spec row (``C y - d``)."""

    output_lower: np.ndarray
    output_upper: np.ndarray
    spec_lower: np.ndarray
    owner: np.ndarray  # disjunct of each spec row
    backend: str
    #: the bound procedures that produced the bounds, one per procedure the backend runs, and
    #: what the memory budget changed (:class:`certkit.bounds.fallback.Method`)
    methods: tuple = ()

    @property
    def degraded(self) -> list[dict]:
        return [m.as_dict() for m in self.methods if m.degraded]


def _bound_names(backend: str) -> tuple[str, ...]:
    """The registered bound backends :func:`bounds` runs for ``backend``."""
    if backend != "auto":
        return (backend,)
    return tuple(p for p in PLANS["auto"] if p in BOUND_PROCEDURES and p != "alpha")  # alpha: --backend alpha


#: The backends :func:`bounds` runs: the certify stages made of registered bound backends only
#: (``bab`` and ``milp`` are complete searches, not bounds).
BOUNDS_BACKENDS: tuple[str, ...] = tuple(b for b in STAGES if all(n in BACKENDS for n in _bound_names(b)))


def bounds(model: Model, spec: Spec, backend: str = "deeppoly", memory: int | None = None,
           timeout: float | Budget | None = None) -> BoundsResult:
    """Output bounds and spec-row lower bounds with one backend of :data:`BOUNDS_BACKENDS`: the
    rows ``[I; -I; C]`` bounded together by each of its procedures (the best of them, entry by
    entry, for ``auto``), within the memory limit ``memory`` (bytes; None: the default of
    :mod:`certkit.bounds.memory`) and ``timeout`` (seconds or a :class:`Budget`), degrading to
    cheaper procedures where one does not fit (:func:`certkit.bounds.fallback.lower_within_memory`;
    the procedures that ran are ``methods``)."""
    if backend not in BOUNDS_BACKENDS:
        raise BackendError(f"bounds cannot run backend '{backend}' (choose from: {', '.join(BOUNDS_BACKENDS)})")
    prop = spec.properties[0]
    inputs = input_set(model.graph, prop.lower, prop.upper)  # as the model sees it (rounded outward)
    g = model.graph
    n = g.n_outputs
    C, d, owner = prop.stacked()
    eye = torch.eye(n, dtype=torch.float64)
    rows = torch.cat([eye, -eye, torch.as_tensor(C, dtype=torch.float64).reshape(-1, n)])
    budget = timeout if isinstance(timeout, Budget) else Budget.of(timeout, memory=memory)
    low, methods = None, []
    with torch.no_grad():
        for name in _bound_names(backend):
            got, method = lower_within_memory(name, g, inputs, rows, budget, on_timeout=True)
            low = got[0] if low is None else torch.maximum(low, got[0])
            methods.append(method)
    low = low.numpy()
    return BoundsResult(low[:n], -low[n:2 * n], low[2 * n:] - d, owner, backend, tuple(methods))


def certify(model: Model, spec: Spec, backend: str = "auto", timeout=None,
            seed: int = 0) -> CertifyResult:
    """Decide ``spec`` on ``model``: see :mod:`certkit.verify.certify`. ``timeout``: seconds, or a
    :class:`certkit.verify.query.Budget`."""
    return _certify(model, spec, backend, timeout, seed)


def certify_dataset(model: Model, x: np.ndarray, y: np.ndarray, eps: float, norm: str = "linf",
                    domain: tuple[float, float] | None = None, backend: str = "auto",
                    batch_size: int = 32) -> DatasetResult:
    """Per-sample robustness certificates: see :mod:`certkit.verify.dataset`. ``x`` and ``y`` are checked
    as a data file is (:func:`~certkit.verify.dataset.check_samples`: DataError when they do not fit)."""
    x, y = check_samples(x, y, model, "certify_dataset")
    return _certify_dataset(model, x, y, eps, norm, domain, backend, batch_size)


def fixedpoint(model: Model, max_iter: int = 100000, tol: float = 1e-10) -> FixedPointReport:
    """Fixed-point analysis of a net R^k -> R^k (paper 001): see :mod:`certkit.fixedpoint.analysis`."""
    from .fixedpoint import analyse

    return analyse(model.graph, model.path, max_iter, tol)
