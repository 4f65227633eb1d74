"""Per-sample robustness certification on a data set (DESIGN.md section 1).

For a sample ``x0`` with label ``y`` the unsafe set is
``{x : ||x - x0||_p <= eps, x in domain}`` x ``OR_{j != y} (y_j - y_y >= 0)``,
i.e. rows ``(e_y - e_j) . f(x) <= 0``. Samples are processed in batches: one
bound computation bounds every sample of a batch.

Verdicts per sample: ``misclassified`` (onnxruntime's prediction on ``x0`` is
not ``y``; not attempted), ``verified`` (every row's lower bound exceeds the
floating-point margin), ``falsified`` (an attack point inside the set on which
onnxruntime's output satisfies a row), ``unknown``.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds.backends import BACKENDS
from ..errors import DataError, UsageError
from ..model import Model
from ..spec.sets import InputSet
from ..tolerances import fp_margin
from .certify import stages_for
from .falsify import AttackConfig, attack
from .witness import to_float32_inside


@dataclass(frozen=True)
class SampleResult:
    index: int
    label: int
    verdict: str  # verified | falsified | unknown | misclassified
    margin_lower: float  # lower bound on min_j (f_y - f_j) over the set (nan if not bounded)
    time: float
    stage: str = ""
    radius: float = float("nan")  # certified radius (backend lipschitz only)


@dataclass
class DatasetResult:
    """Outcome of :func:`certify_dataset`."""

    eps: float
    norm: str
    backend: str
    domain: tuple[float, float] | None
    samples: list[SampleResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def certified(self) -> int:
        return sum(s.verdict == "verified" for s in self.samples)

    @property
    def total(self) -> int:
        return len(self.samples)


def load_dataset(path: str, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` and ``y`` from an ``.npz`` file and check them against the model's input."""
    try:
        data = np.load(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__})") from e
    if not hasattr(data, "files"):  # a plain .npy array, not an .npz archive
        raise DataError(f"{path}: not an .npz archive; save the data with numpy.savez(path, x=..., y=...)")
    missing = [k for k in ("x", "y") if k not in data.files]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; the file must hold 'x' (N, *input shape) "
                        f"and 'y' (N,) labels (found: {data.files})")
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    want = tuple(model.graph.input_shape[1:]) if model.graph.input_shape[:1] == (1,) else model.graph.input_shape
    if x.ndim < 1 or x.shape[0] != y.shape[0] or y.ndim != 1:
        raise DataError(f"{path}: 'x' has shape {x.shape} and 'y' {y.shape}; expected (N, ...) and (N,)")
    if int(np.prod(x.shape[1:])) != model.n_inputs:
        raise DataError(f"{path}: samples have shape {x.shape[1:]} ({int(np.prod(x.shape[1:]))} values) but "
                        f"the model's input is {want} ({model.n_inputs} values)")
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise DataError(f"{path}: 'x' must be numeric and 'y' integer labels (got {x.dtype}, {y.dtype})")
    if y.size and (y.min() < 0 or y.max() >= model.n_outputs):
        raise DataError(f"{path}: labels must lie in [0, {model.n_outputs - 1}]")
    return x.reshape(x.shape[0], -1).astype(np.float64), y.astype(np.int64)


def _rows(labels: np.ndarray, n_out: int) -> tuple[torch.Tensor, np.ndarray]:
    """C (b, n_out - 1, n_out) with rows e_y - e_j, and j per row."""
    b = len(labels)
    others = np.array([[j for j in range(n_out) if j != y] for y in labels])
    C = np.zeros((b, n_out - 1, n_out))
    ar = np.arange(b)[:, None]
    C[ar, np.arange(n_out - 1)[None], labels[:, None]] = 1.0
    C[ar, np.arange(n_out - 1)[None], others] = -1.0
    return torch.as_tensor(C), others


def certify_dataset(model: Model, x: np.ndarray, y: np.ndarray, eps: float, norm: str = "linf",
                    domain: tuple[float, float] | None = None, backend: str = "auto",
                    batch_size: int = 32, attack_cfg: AttackConfig = AttackConfig(128, 4, 20),
                    progress: bool = False, indices: np.ndarray | None = None) -> DatasetResult:
    """Certify every sample of ``(x, y)`` at radius ``eps`` in ``norm`` ('linf' or 'l2').

    ``backend="lipschitz"``: Lipschitz-margin certificates (:mod:`certkit.lipschitz.margin`)
    instead of bound propagation; each sample also gets its certified radius."""
    lip = backend == "lipschitz"
    stages = () if lip else stages_for(backend)
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1 (got {batch_size})")
    p = {"linf": float("inf"), "l2": 2.0}.get(norm)
    if p is None:
        raise DataError(f"unknown norm '{norm}' (choose linf or l2)")
    g = model.graph
    n_out = g.n_outputs
    idx_all = np.arange(len(x)) if indices is None else np.asarray(indices)
    out = DatasetResult(eps, norm, backend, domain)
    t_all = time.monotonic()
    timings = {"predict": 0.0, "bounds": 0.0, "attack": 0.0}
    t = time.monotonic()
    pred = model.runner(x.astype(np.float32)).argmax(axis=1) if len(x) else np.zeros(0, int)
    timings["predict"] = time.monotonic() - t
    results: dict[int, SampleResult] = {}
    for k in np.nonzero(pred != y)[0]:
        results[int(k)] = SampleResult(int(idx_all[k]), int(y[k]), "misclassified", float("nan"), 0.0)
    todo = np.nonzero(pred == y)[0]
    if lip and len(todo):
        from ..lipschitz.margin import pair_lipschitz

        t = time.monotonic()
        pair = pair_lipschitz(g, norm)
        timings["lipschitz"] = time.monotonic() - t
    for start in range(0, len(todo), batch_size):
        ks = todo[start:start + batch_size]
        t0 = time.monotonic()
        sets = InputSet.ball(x[ks], eps, p, domain)
        C, others = _rows(y[ks], n_out)
        verified = np.zeros(len(ks), dtype=bool)
        best = np.full(len(ks), -np.inf)
        stage_of = [""] * len(ks)
        radius = np.full(len(ks), np.nan)
        if lip:
            from ..lipschitz.margin import certify_margins

            cert = certify_margins(g, x[ks], y[ks], eps, pair)
            verified, best, radius = cert.verified.copy(), cert.margin_lower, cert.radius
            stage_of = ["lipschitz" if v else "" for v in verified]
        with torch.no_grad():
            y_c = g.forward(torch.as_tensor(x[ks])).numpy()
        for stage in (st for st in stages if st in BACKENDS):  # complete procedures: not per sample
            open_ = np.nonzero(~verified)[0]
            if len(open_) == 0:
                break
            sub = sets.select(torch.as_tensor(open_))
            with torch.no_grad():
                low = BACKENDS[stage].lower(g, sub, C[open_]).numpy()
            for r, i in enumerate(open_):
                margin = fp_margin(g.depth, C[i].numpy(), y_c[i], low[r])
                m = float(low[r].min())
                best[i] = max(best[i], m)
                if bool((low[r] > margin).all()):
                    verified[i] = True
                    stage_of[i] = stage
        t1 = time.monotonic()
        timings["bounds"] += t1 - t0
        falsified = np.zeros(len(ks), dtype=bool)
        open_ = np.nonzero(~verified)[0]
        if len(open_):
            sub = sets.select(torch.as_tensor(open_))
            owner = np.arange(n_out - 1)
            xa, va = attack(g, sub, C[open_], torch.zeros(len(open_), n_out - 1), owner, attack_cfg, seed=start)
            cand = [r for r in range(len(open_)) if va[r] <= 1e-6]
            if cand:
                x32 = to_float32_inside(xa[cand], sub.lower.numpy()[cand], sub.upper.numpy()[cand])
                inside = sub.select(torch.as_tensor(cand)).contains(x32.astype(np.float64))
                ys = model.runner(x32)
                for c, r in enumerate(cand):
                    i = open_[r]
                    if inside[c] and (ys[c][others[i]] >= ys[c][y[ks[i]]]).any():
                        falsified[i] = True
        timings["attack"] += time.monotonic() - t1
        per = (time.monotonic() - t0) / len(ks)
        for i, k in enumerate(ks):
            v = "verified" if verified[i] else "falsified" if falsified[i] else "unknown"
            results[int(k)] = SampleResult(int(idx_all[k]), int(y[k]), v, float(best[i]), per, stage_of[i],
                                           float(radius[i]))
        if progress:
            done = min(start + batch_size, len(todo))
            cert = sum(r.verdict == "verified" for r in results.values())
            bar = "#" * int(30 * done / max(len(todo), 1))
            print(f"\r[{bar:<30}] {done}/{len(todo)} bounded, {cert} verified", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    out.samples = [results[k] for k in sorted(results)]
    timings["total"] = time.monotonic() - t_all
    out.timings = timings
    return out
