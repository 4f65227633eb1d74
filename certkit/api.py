"""The public Python API; :mod:`certkit.cli` is a thin layer over it."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .bounds.backends import BACKENDS
from .bounds.deeppoly import deeppoly_output_bounds
from .bounds.interval import interval_bounds
from .errors import BackendError
from .model import Model, load_model
from .spec.sets import InputSet
from .spec.spec import Spec
from .spec.vnnlib import parse_vnnlib
from .verify.certify import CertifyResult, stages_for
from .verify.certify import certify as _certify
from .verify.dataset import DatasetResult
from .verify.dataset import certify_dataset as _certify_dataset
from .lipschitz import LipschitzResult, lipschitz_bounds
from .fixedpoint import FixedPointReport

__all__ = ["load_model", "load_spec", "bounds", "certify", "certify_dataset", "BoundsResult",
           "lipschitz_bounds", "LipschitzResult", "fixedpoint", "FixedPointReport"]


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


def bounds(model: Model, spec: Spec, backend: str = "deeppoly") -> BoundsResult:
    """Output bounds and spec-row lower bounds with one backend (``interval``, ``deeppoly``, ``auto``)."""
    stages_for(backend)
    prop = spec.properties[0]
    inputs = InputSet.box(prop.lower, prop.upper)
    g = model.graph
    C, d, owner = prop.stacked()
    with torch.no_grad():
        names = {"auto": ("interval", "deeppoly", "deeppoly+interval")}.get(backend, (backend,))
        if any(n not in BACKENDS for n in names):
            raise BackendError(f"unknown backend '{backend}'")
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


def certify(model: Model, spec: Spec, backend: str = "auto", timeout: float | None = None,
            seed: int = 0) -> CertifyResult:
    """Decide ``spec`` on ``model``: see :mod:`certkit.verify.certify`."""
    return _certify(model, spec, backend, timeout, seed)


def certify_dataset(model: Model, x: np.ndarray, y: np.ndarray, eps: float, norm: str = "linf",
                    domain: tuple[float, float] | None = None, backend: str = "auto",
                    batch_size: int = 32) -> DatasetResult:
    """Per-sample robustness certificates: see :mod:`certkit.verify.dataset`."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return _certify_dataset(model, x, np.asarray(y, dtype=np.int64), eps, norm, domain, backend, batch_size)


def fixedpoint(model: Model, max_iter: int = 100000, tol: float = 1e-10) -> FixedPointReport:
    """Fixed-point analysis of a net R^k -> R^k (paper 001): see :mod:`certkit.fixedpoint.analysis`."""
    from .fixedpoint import analyse

    return analyse(model.graph, model.path, max_iter, tol)
