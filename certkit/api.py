"""The public Python API; :mod:`certkit.cli` is a thin layer over it."""
from __future__ import annotations

import os
import tempfile
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .bounds.backends import BACKENDS
from .bounds.fallback import lower_within_memory
from .errors import BackendError, ModelError, UsageError
from .model import Model
from .model import load_model as _load_onnx_model
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

__all__ = ["load_model", "from_torch", "load_spec", "bounds", "certify", "certify_dataset", "BoundsResult",
           "BOUNDS_BACKENDS", "CertifyResult", "DatasetResult", "Spec", "Model", "lipschitz_bounds",
           "LipschitzResult", "fixedpoint", "FixedPointReport"]


#: Names served here from other packages, loaded on first use (PEP 562): ``certify`` needs neither.
_ELSEWHERE = {"lipschitz_bounds": "lipschitz", "LipschitzResult": "lipschitz", "FixedPointReport": "fixedpoint"}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(f".{_ELSEWHERE[name]}", __package__), name)
    raise AttributeError(f"module 'certkit.api' has no attribute '{name}'")


# -- models -----------------------------------------------------------------------------------------

def load_model(source: str | os.PathLike | Model | torch.nn.Module, arithmetic: str = "auto",
               example_input: Any = None) -> Model:
    """A :class:`~certkit.model.Model` from an ONNX file (raises :class:`certkit.errors.ModelError`),
    a Model (returned as it is), or a ``torch.nn.Module`` with ``example_input`` (one batch of
    inputs: :func:`from_torch`). ``arithmetic``: of the bound computations' matrix products,
    ``auto``, ``float64`` or ``float32`` (:mod:`certkit.bounds.products32`)."""
    if isinstance(source, Model):
        if arithmetic == "auto":
            return source
        from .bounds.products32 import with_arithmetic

        return Model(with_arithmetic(source.graph, arithmetic), source.path, source._runner)
    if isinstance(source, torch.nn.Module):
        if example_input is None:
            raise UsageError(f"a torch module ({type(source).__name__}) needs an example input to be exported "
                             "to ONNX: load_model(module, example_input=x) or from_torch(module, x), x a batch "
                             "of inputs as the module takes them")
        return from_torch(source, example_input, arithmetic=arithmetic)
    if isinstance(source, (str, os.PathLike)):
        return _load_onnx_model(source, arithmetic)
    raise UsageError(f"a model is a path to an ONNX file, a certkit Model or a torch.nn.Module "
                     f"(got {type(source).__name__})")


def from_torch(module: torch.nn.Module, example_input: Any, *, path: str | os.PathLike | None = None,
               arithmetic: str = "auto", opset: int = 17, rtol: float = 1e-4, atol: float = 1e-5,
               n_perturbations: int = 4) -> Model:
    """Export a ``torch.nn.Module`` to ONNX and load it as a :class:`~certkit.model.Model`.

    ``example_input`` is a batch of inputs as the module takes them (leading dimension: the batch;
    a tensor or array). The module is exported for batch 1, in eval mode, with the TorchScript
    exporter (:func:`certkit.nn.export.export_onnx`, ``dynamo=False``; certkit.nn's structured and
    implicit-bias layers are frozen first) to ``path``, or to a temporary file that lives as long
    as the returned Model. onnxruntime must then reproduce the module (eval mode, no gradients) on
    every example row and on ``n_perturbations`` noisy copies of the first, to
    ``atol * max(1, max |output|) + rtol * |output|``; else :class:`certkit.errors.ModelError`
    (an export that is not faithful: custom autograd functions, data-dependent control flow...).
    What certkit verifies is the exported file, i.e. the module in eval mode."""
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"from_torch takes a torch.nn.Module (got {type(module).__name__})")
    name = type(module).__name__
    try:
        x = torch.as_tensor(np.asarray(example_input.detach().cpu() if torch.is_tensor(example_input)
                                       else example_input))
    except (TypeError, ValueError) as e:
        raise UsageError(f"example_input for {name} must be a tensor or array ({e})") from None
    if not x.is_floating_point() or x.dim() < 1 or x.shape[0] < 1 or x.numel() == 0:
        raise UsageError(f"example_input for {name} must be a non-empty float batch (leading dimension: "
                         f"the batch; got dtype {x.dtype}, shape {tuple(x.shape)})")
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise UsageError(f"example_input for {name} holds NaN or Inf")
    from .nn.export import export_onnx

    points, labels = _check_points(x, n_perturbations)
    ref = _torch_outputs(module, points)  # first: a module that fails on its input is not an export problem
    keep = path is not None
    if keep:
        out = os.fspath(path)
    else:
        fd, out = tempfile.mkstemp(prefix=f"certkit-{name}-", suffix=".onnx")
        os.close(fd)
    try:
        try:
            export_onnx(module, out, (1, *x.shape[1:]), opset=opset, check=False)
        except Exception as e:  # the exporter's own errors: unsupported ops, untraceable code
            raise ModelError(f"cannot export torch module {name} to ONNX: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
        model = _load_onnx_model(out, arithmetic)
        _check_export(name, model, points, labels, ref, rtol, atol)
    except BaseException:
        if not keep:
            _remove(out)
        raise
    if not keep:
        weakref.finalize(model, _remove, out)
    return model


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _check_points(x: torch.Tensor, n_perturbations: int) -> tuple[torch.Tensor, list[str]]:
    """The inputs :func:`from_torch` compares torch and onnxruntime on: the rows of ``x`` (16 at most)
    and ``n_perturbations`` noisy copies of its first row, with their names."""
    g = torch.Generator().manual_seed(0)
    scale = float(x.abs().mean()) or 1.0
    noisy = [x[:1] + 0.1 * scale * torch.randn(x[:1].shape, generator=g) for _ in range(n_perturbations)]
    labels = [f"example row {i}" for i in range(min(len(x), 16))] + [f"perturbation {i}" for i in range(len(noisy))]
    return torch.cat([x[:16], *noisy]), labels


def _torch_outputs(module: torch.nn.Module, points: torch.Tensor) -> np.ndarray:
    """The module's outputs (eval mode, no gradients; its modes restored), one flat row per point."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            ref = torch.cat([module(points[i:i + 1]).reshape(1, -1) for i in range(len(points))])
    except Exception as e:
        raise ModelError(f"torch module {type(module).__name__} fails on its example input: "
                         f"{type(e).__name__}: {e}") from e
    finally:
        for m, training in modes:
            m.training = training
    return ref.detach().to(torch.float64).numpy()


def _check_export(name: str, model: Model, points: torch.Tensor, labels: list[str], ref: np.ndarray,
                  rtol: float, atol: float) -> None:
    """onnxruntime (the model's runner, which confirms every counterexample) against the module's
    outputs ``ref`` on ``points`` (:func:`from_torch`)."""
    if ref.shape[1] != model.n_outputs:
        raise ModelError(f"torch module {name} gives {ref.shape[1]} outputs, its ONNX export {model.n_outputs}")
    got = model.runner(points.reshape(len(points), -1).numpy()).astype(np.float64)
    finite = np.isfinite(ref)
    tol = atol * max(1.0, float(np.abs(ref[finite]).max(initial=0.0))) + rtol * np.abs(ref)
    bad = ~((np.abs(got - ref) <= tol) | (~finite & (got == ref)))  # infinities must agree exactly
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        diff = np.where(finite & np.isfinite(got), np.abs(got - ref), np.inf)
        raise ModelError(f"torch module {name} and its ONNX export differ: on {labels[i]}, output {j} is "
                         f"{ref[i, j]:.6g} in torch and {got[i, j]:.6g} in onnxruntime (largest difference "
                         f"{float(diff.max()):.3g}, tolerance {float(tol[i, j]):.3g}); the export is not "
                         "faithful (a custom op or autograd function, data-dependent control flow?) and "
                         "certkit would verify another function")


def _as_model(model: Any, example_input: Any = None) -> Model:
    """What the API functions take as a model: a path, a Model, or a torch module with an example input."""
    if isinstance(model, Model):
        return model
    if isinstance(model, torch.nn.Module) and example_input is None:
        raise UsageError(f"a torch module ({type(model).__name__}) needs an example input: convert it first "
                         "with certkit.load_model(module, example_input=x) (or certkit.api.from_torch)")
    return load_model(model, example_input=example_input)


# -- specs --------------------------------------------------------------------------------------------

def load_spec(path: str | os.PathLike, model: Model | str | os.PathLike | None = None) -> Spec:
    """Parse a VNN-LIB file; with ``model`` its sizes are checked against the model's."""
    if model is None:
        return parse_vnnlib(path)
    model = _as_model(model)
    return parse_vnnlib(path, model.n_inputs, model.n_outputs)


def _as_spec(spec: Any, model: Model) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec, model)
    raise UsageError(f"a spec is a path to a VNN-LIB file or a certkit Spec (got {type(spec).__name__})")


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

    def __repr__(self) -> str:
        n = len(self.spec_lower)
        low = f", lowest {float(np.min(self.spec_lower)):.4g}" if n else ""
        return (f"<BoundsResult {self.backend}: {len(self.output_lower)} outputs in "
                f"[{float(np.min(self.output_lower)):.4g}, {float(np.max(self.output_upper)):.4g}], "
                f"{n} spec row(s), {int(np.sum(self.spec_lower > 0))} with a positive lower bound{low}>")


def _bound_names(backend: str) -> tuple[str, ...]:
    """The registered bound backends :func:`bounds` runs for ``backend``."""
    if backend != "auto":
        return (backend,)
    return tuple(p for p in PLANS["auto"] if p in BOUND_PROCEDURES and p != "alpha")  # alpha: --backend alpha


#: The backends :func:`bounds` runs: the certify stages made of registered bound backends only
#: (``bab`` and ``milp`` are complete searches, not bounds).
BOUNDS_BACKENDS: tuple[str, ...] = tuple(b for b in STAGES if all(n in BACKENDS for n in _bound_names(b)))


def bounds(model: Model | str | os.PathLike, spec: Spec | str | os.PathLike, backend: str = "deeppoly",
           memory: int | None = None, timeout: float | Budget | None = None) -> BoundsResult:
    """Output bounds and spec-row lower bounds with one backend of :data:`BOUNDS_BACKENDS`: the
    rows ``[I; -I; C]`` bounded together by each of its procedures (the best of them, entry by
    entry, for ``auto``), within the memory limit ``memory`` (bytes; None: the default of
    :mod:`certkit.bounds.memory`) and ``timeout`` (seconds or a :class:`Budget`), degrading to
    cheaper procedures where one does not fit (:func:`certkit.bounds.fallback.lower_within_memory`;
    the procedures that ran are ``methods``)."""
    if backend not in BOUNDS_BACKENDS:
        raise BackendError(f"bounds cannot run backend '{backend}' (choose from: {', '.join(BOUNDS_BACKENDS)})")
    model = _as_model(model)
    spec = _as_spec(spec, model)
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


def certify(model: Model | str | os.PathLike, spec: Spec | str | os.PathLike, backend: str = "auto",
            timeout=None, seed: int = 0) -> CertifyResult:
    """Decide ``spec`` on ``model``: see :mod:`certkit.verify.certify`. ``model``: a Model or an ONNX
    path (a torch module: convert it with :func:`load_model` first); ``spec``: a Spec or a VNN-LIB path;
    ``timeout``: seconds, or a :class:`certkit.verify.query.Budget`."""
    model = _as_model(model)
    return _certify(model, _as_spec(spec, model), backend, timeout, seed)


def certify_dataset(model: Model | str | os.PathLike | torch.nn.Module, x: np.ndarray, y: np.ndarray, eps: float,
                    norm: str = "linf", domain: tuple[float, float] | None = None, backend: str = "auto",
                    batch_size: int = 32, *, timeout: float | None = None,
                    total_timeout: float | Budget | None = None, seed: int = 0) -> DatasetResult:
    """Per-sample robustness certificates: see :mod:`certkit.verify.dataset`. ``x`` and ``y`` are checked
    as a data file is (:func:`~certkit.verify.dataset.check_samples`: DataError when they do not fit: labels
    must be integers, integral floats such as 3.0 accepted, in [0, n_outputs - 1]). ``model``: a Model, an
    ONNX path, or a torch module (exported with ``x[:1]`` as its example input, :func:`from_torch`).
    ``timeout``: seconds per sample; ``total_timeout``: for the whole run; ``seed``: of the attacks."""
    if isinstance(model, torch.nn.Module):
        model = from_torch(model, np.asarray(x)[:1])
    model = _as_model(model)
    x, y = check_samples(x, y, model, "certify_dataset")
    return _certify_dataset(model, x, y, eps, norm, domain, backend, batch_size,
                            timeout=timeout, total_timeout=total_timeout, seed=seed)


def fixedpoint(model: Model | str | os.PathLike, max_iter: int = 100000, tol: float = 1e-10) -> FixedPointReport:
    """Fixed-point analysis of a net R^k -> R^k (paper 001): see :mod:`certkit.fixedpoint.analysis`."""
    from .fixedpoint import analyse

    model = _as_model(model)
    return analyse(model.graph, model.path, max_iter, tol)
