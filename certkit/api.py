"""The public Python API; :mod:`certkit.cli` is a thin layer over it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .bounds.backends import BACKENDS
from .bounds.deeppoly import deeppoly_output_bounds
from .bounds.interval import interval_bounds
from .errors import BackendError
from .model import Model, load_model
from .bounds.fperror import input_set
from .spec.spec import Spec
from .spec.vnnlib import parse_vnnlib
from .verify.certify import STAGES, CertifyResult
from .verify.certify import certify as _certify
from .verify.dataset import DatasetResult, check_samples
from .verify.dataset import certify_dataset as _certify_dataset

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


def _bound_names(backend: str) -> tuple[str, ...]:
    """The registered bound backends :func:`bounds` runs for ``backend``."""
    return ("interval", "deeppoly", "deeppoly+interval") if backend == "auto" else (backend,)


#: The backends :func:`bounds` runs: the certify stages made of registered bound backends only
#: (``bab`` and ``milp`` are complete searches, not bounds).
BOUNDS_BACKENDS: tuple[str, ...] = tuple(b for b in STAGES if all(n in BACKENDS for n in _bound_names(b)))


def bounds(model: Model, spec: Spec, backend: str = "deeppoly") -> BoundsResult:
    """Output bounds and spec-row lower bounds with one backend of :data:`BOUNDS_BACKENDS`."""
    if backend not in BOUNDS_BACKENDS:
        raise BackendError(f"bounds cannot run backend '{backend}' (choose from: {', '.join(BOUNDS_BACKENDS)})")
    prop = spec.properties[0]
    inputs = input_set(model.graph, prop.lower, prop.upper)  # as the model sees it (rounded outward)
    g = model.graph
    C, d, owner = prop.stacked()
    with torch.no_grad():
        names = _bound_names(backend)
        lo, hi = interval_bounds(g, inputs)[g.output]
        if backend != "interval":
            dlo, dhi = deeppoly_output_bounds(g, inputs, intersect=False)
            if backend == "auto":  # the best of every stage, entry by entry
                ilo, ihi = deeppoly_output_bounds(g, inputs, intersect=True)
                lo, hi = torch.maximum(torch.maximum(lo, dlo), ilo), torch.minimum(torch.minimum(hi, dhi), ihi)
            else:
                lo, hi = dlo, dhi
        Ct = torch.as_tensor(C)
        sl = np.zeros(0)
        if len(d):
            sl = np.max([BACKENDS[n].lower(g, inputs, Ct).numpy()[0] for n in names], axis=0) - d
    return BoundsResult(lo.numpy()[0], hi.numpy()[0], sl, owner, backend)


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
