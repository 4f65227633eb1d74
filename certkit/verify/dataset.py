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
from ..bounds.fperror import precision_of, round_input_set, row_margin
from ..bounds.interval import interval_bounds
from . import gate
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
    witness: np.ndarray | None = None  # float32 counterexample (falsified only)


@dataclass
class DatasetResult:
    """Outcome of :func:`certify_dataset`."""

    eps: float
    norm: str
    backend: str
    domain: tuple[float, float] | None
    samples: list[SampleResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = "float32"  # the model's, as the bounds assumed it

    @property
    def certified(self) -> int:
        return sum(s.verdict == "verified" for s in self.samples)

    @property
    def total(self) -> int:
        return len(self.samples)


def check_samples(x, y, model: Model, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float64 (N, n_inputs) and ``y`` as int64 (N,), or a DataError naming ``where``.

    Refused: arrays that are not real numbers (object, bool, complex, strings, ragged lists),
    no samples, NaN or Inf in ``x``, labels that are not integers (integral floats such as 3.0
    are accepted) or lie outside [0, n_outputs - 1], ``x`` and ``y`` of different lengths, and
    samples whose size is not the model's input size."""
    try:
        x, y = np.asarray(x), np.asarray(y)
    except ValueError as e:  # a ragged nested list
        raise DataError(f"{where}: 'x' and 'y' must be rectangular arrays ({str(e).splitlines()[0]})") from None
    for name, arr, what in (("x", x, "samples of real numbers"), ("y", y, "integer labels")):
        if arr.dtype.kind not in "fiu":
            raise DataError(f"{where}: '{name}' must hold {what} (got dtype {arr.dtype})")
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: 'x' has shape {x.shape} and 'y' {y.shape}; expected (N, ...) and (N,)")
    if x.shape[0] == 0:
        raise DataError(f"{where}: no samples ('x' has shape {x.shape})")
    size = int(np.prod(x.shape[1:]))
    if size != model.n_inputs:
        want = tuple(model.graph.input_shape[1:]) if model.graph.input_shape[:1] == (1,) else model.graph.input_shape
        raise DataError(f"{where}: samples have shape {x.shape[1:]} ({size} values) but "
                        f"the model's input is {want} ({model.n_inputs} values)")
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        k = int(np.argmin(finite))
        raise DataError(f"{where}: 'x' holds NaN or Inf ({int((~finite).sum())} sample(s), the first is {k})")
    if model.graph.meta.get("precision", "float32") == "float32" and np.abs(x).max() > np.finfo(np.float32).max:
        raise DataError(f"{where}: 'x' holds values beyond the float32 range of the model (largest "
                        f"{np.abs(x).max():.3g}); onnxruntime would see infinities")
    bad = ~np.isfinite(y) | (y != np.round(y)) if y.dtype.kind == "f" else np.zeros(len(y), bool)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(f"{where}: labels must be integers (sample {k} has label {float(y[k])})")
    out = (y < 0) | (y >= model.n_outputs)
    if out.any():
        k = int(np.argmax(out))
        raise DataError(f"{where}: labels must lie in [0, {model.n_outputs - 1}] (sample {k} has label {y[k]})")
    return x.reshape(len(x), -1).astype(np.float64), y.astype(np.int64)


def load_dataset(path: str, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` and ``y`` from an ``.npz`` file and check them (:func:`check_samples`)."""
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
    arrays = {}
    for k in ("x", "y"):
        try:
            arrays[k] = np.asarray(data[k])
        except ValueError as e:  # an object array (np.savez of a ragged list) needs pickle: refused
            raise DataError(f"{path}: cannot read array '{k}' ({str(e).splitlines()[0]}); "
                            "save rectangular numeric arrays") from None
        except Exception as e:
            raise DataError(f"{path}: cannot read array '{k}' ({type(e).__name__})") from e
    return check_samples(arrays["x"], arrays["y"], model, path)


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
    out = DatasetResult(eps, norm, backend, domain, precision=precision_of(g).name)
    t_all = time.monotonic()
    timings = {"predict": 0.0, "bounds": 0.0, "attack": 0.0}
    t = time.monotonic()
    pred = model.runner(x).argmax(axis=1) if len(x) else np.zeros(0, int)
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
        # the ball as the model sees it: rounded outward to its precision (bounds only; attack
        # points are checked against the ball itself)
        sets = InputSet.ball(x[ks], eps, p, domain)
        rows_owner = np.arange(n_out - 1)
        bound_sets = round_input_set(sets, precision_of(g))
        C, others = _rows(y[ks], n_out)
        verified = np.zeros(len(ks), dtype=bool)
        best = np.full(len(ks), -np.inf)
        stage_of = [""] * len(ks)
        radius = np.full(len(ks), np.nan)
        if lip:
            from ..lipschitz.margin import certify_margins

            cert = certify_margins(g, x[ks], y[ks], eps, pair)
            best, radius = cert.margin_lower, cert.radius
            for i in range(len(ks)):  # through the gate, like every other proof
                proof = gate.Proof("lipschitz", "lipschitz", cert.rows_lower[i], np.zeros(n_out - 1), rows_owner)
                verified[i] = gate.check_proof(proof, n_out - 1)[0]
            stage_of = ["lipschitz" if v else "" for v in verified]
        with torch.no_grad():
            y_lo, y_hi = interval_bounds(g, bound_sets)[g.output]
            margins = row_margin(C, torch.zeros(C.shape[:2], dtype=torch.float64), y_lo, y_hi).numpy()
        for stage in (st for st in stages if st in BACKENDS):  # complete procedures: not per sample
            open_ = np.nonzero(~verified)[0]
            if len(open_) == 0:
                break
            sub = bound_sets.select(torch.as_tensor(open_))
            with torch.no_grad():
                low = BACKENDS[stage].lower(g, sub, C[open_]).numpy()
            for r, i in enumerate(open_):
                m = float(low[r].min())
                best[i] = max(best[i], m) if np.isfinite(m) else best[i]
                # every row j != y is its own disjunct: each must be proven
                proof = gate.Proof("bounds", stage, low[r], margins[i], rows_owner)
                if gate.check_proof(proof, n_out - 1)[0]:
                    verified[i] = True
                    stage_of[i] = stage
        t1 = time.monotonic()
        timings["bounds"] += t1 - t0
        falsified = np.zeros(len(ks), dtype=bool)
        witnesses: dict[int, np.ndarray] = {}
        open_ = np.nonzero(~verified)[0]
        if len(open_):
            sub = sets.select(torch.as_tensor(open_))
            owner = np.arange(n_out - 1)
            xa, va = attack(g, sub, C[open_], torch.zeros(len(open_), n_out - 1), owner, attack_cfg, seed=start)
            cand = [r for r in range(len(open_)) if va[r] <= 1e-6]
            if cand:
                x32 = to_float32_inside(xa[cand], sub.lower.numpy()[cand], sub.upper.numpy()[cand],
                                        getattr(model.runner, "dtype", np.float32))
                inside = sub.select(torch.as_tensor(cand)).contains(x32.astype(np.float64))
                ys = model.runner(x32)
                for c, r in enumerate(cand):
                    i = open_[r]
                    if inside[c] and (ys[c][others[i]] >= ys[c][y[ks[i]]]).any():
                        falsified[i] = True
                        witnesses[i] = x32[c].copy()
        timings["attack"] += time.monotonic() - t1
        per = (time.monotonic() - t0) / len(ks)
        for i, k in enumerate(ks):
            v = "verified" if verified[i] else "falsified" if falsified[i] else "unknown"
            results[int(k)] = SampleResult(int(idx_all[k]), int(y[k]), v, float(best[i]), per, stage_of[i],
                                           float(radius[i]), witnesses.get(i))
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


def prove_samples(model: Model, x: np.ndarray, y: np.ndarray, eps: float, norm: str,
                  domain: tuple[float, float] | None, stage: str, batch_size: int = 32) -> np.ndarray:
    """Re-derive the per-sample proofs of one stage (a bound backend of
    :data:`certkit.bounds.backends.BACKENDS`, or ``lipschitz``), as :func:`certify_dataset`
    derives them, through the verdict gate: (N,) bool, verified or not (``certkit check``)."""
    p = {"linf": float("inf"), "l2": 2.0}[norm]
    g = model.graph
    n_out = g.n_outputs
    owner = np.arange(n_out - 1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    ok = np.zeros(len(x), dtype=bool)
    if stage == "lipschitz":
        from ..lipschitz.margin import certify_margins, pair_lipschitz

        cert = certify_margins(g, x, y, eps, pair_lipschitz(g, norm))
        for i in range(len(x)):
            proof = gate.Proof("lipschitz", stage, cert.rows_lower[i], np.zeros(n_out - 1), owner)
            ok[i] = gate.check_proof(proof, n_out - 1)[0]
        return ok
    if stage not in BACKENDS:
        return ok
    for s in range(0, len(x), batch_size):
        sl = slice(s, s + batch_size)
        sets = round_input_set(InputSet.ball(x[sl], eps, p, domain), precision_of(g))
        C, _ = _rows(y[sl], n_out)
        with torch.no_grad():
            low = BACKENDS[stage].lower(g, sets, C).numpy()
            y_lo, y_hi = interval_bounds(g, sets)[g.output]
            margins = row_margin(C, torch.zeros(C.shape[:2], dtype=torch.float64), y_lo, y_hi).numpy()
        for r in range(low.shape[0]):
            proof = gate.Proof("bounds", stage, low[r], margins[r], owner)
            ok[s + r] = gate.check_proof(proof, n_out - 1)[0]
    return ok
