"""Per-sample robustness certification on a data set (DESIGN.md section 1).

For a sample ``x0`` with label ``y`` the unsafe set is
``{x : ||x - x0||_p <= eps, x in domain}`` x ``OR_{j != y} (y_j - y_y >= 0)``,
i.e. rows ``(e_y - e_j) . f(x) <= 0``. Samples are processed in batches: one
bound computation bounds every sample of a batch.

Verdicts per sample: ``misclassified`` (onnxruntime's prediction on ``x0`` is
not ``y``; not attempted), ``verified`` (the verdict gate admitted its proof:
every row above its margin, or a complete procedure's proof), ``falsified`` (a
point of the ball on which onnxruntime's output satisfies a row, confirmed by
:meth:`~certkit.verify.query.Query.confirm`), ``timeout`` (its own budget ran
out), ``unknown``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds.backends import BACKENDS
from ..bounds.fperror import precision_of
from ..errors import DataError, UsageError
from ..log import get as get_logger
from ..log import progress as log_progress
from ..model import Model
from . import gate
from .certify import degraded_note, json_number, json_numbers, stages_for
from .falsify import AttackConfig
from .plan import COMPLETE_PROCEDURES
from .pipeline import PropertyResult, decide
from .procedures import bound_rows, lipschitz_rows
from .query import Budget, Query


_LOG = get_logger("dataset")
#: The per-sample verdicts of data-set mode, in the order reports list them.
VERDICTS = ("verified", "falsified", "unknown", "timeout", "misclassified")


@dataclass(frozen=True)
class SampleResult:
    index: int
    label: int
    verdict: str  # verified | falsified | timeout | unknown | misclassified
    margin_lower: float  # lower bound on min_j (f_y - f_j) over the set (nan if not bounded)
    time: float
    stage: str = ""
    radius: float = float("nan")  # certified radius (backend lipschitz only)
    witness: np.ndarray | None = None  # counterexample in the model's precision (falsified only)
    witness_output: np.ndarray | None = None  # onnxruntime's output on it
    proof: object | None = None  # what the verdict gate admitted (verified only)

    def entry(self) -> dict:
        """The JSON fields every report of a sample has: index, label, verdict, margin_lower, stage,
        time, and radius where there is one (None for non-finite numbers)."""
        e = {"index": int(self.index), "label": int(self.label), "verdict": self.verdict,
             "margin_lower": json_number(self.margin_lower), "stage": self.stage, "time": round(float(self.time), 6)}
        if self.radius == self.radius:
            e["radius"] = json_number(self.radius)
        return e

    def __repr__(self) -> str:
        return f"<SampleResult {self.index} (label {self.label}): {self.verdict}{', ' + self.stage if self.stage else ''}>"


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
    #: what the memory budget changed, once each (as :attr:`certkit.verify.certify.CertifyResult.degraded`)
    degraded: list[dict] = field(default_factory=list)

    @property
    def certified(self) -> int:
        return sum(s.verdict == "verified" for s in self.samples)

    @property
    def total(self) -> int:
        return len(self.samples)

    @property
    def counts(self) -> dict[str, int]:
        """Samples per verdict (:data:`VERDICTS`); they add up to :attr:`total`."""
        return {v: sum(s.verdict == v for s in self.samples) for v in VERDICTS}

    @property
    def fraction(self) -> float:
        """Certified samples over all samples (misclassified ones count as not certified); 0 if none."""
        return self.certified / self.total if self.total else 0.0

    def not_certified(self) -> list[SampleResult]:
        return [s for s in self.samples if s.verdict != "verified"]

    def _line(self) -> str:
        return (f"certified {self.certified}/{self.total} ({100 * self.fraction:.1f}%) at eps {self.eps:g} "
                f"({self.norm}), backend {self.backend}")

    def __repr__(self) -> str:
        counts = ", ".join(f"{v} {n}" for v, n in self.counts.items() if n)
        return f"<DatasetResult {self._line()}: {counts}>"

    def summary(self) -> str:
        """Two lines: certified K/N (P%) with eps, norm, backend and time; the count of every verdict."""
        counts = ", ".join(f"{v} {n}" for v, n in self.counts.items())
        notes = [degraded_note(d) for d in self.degraded]
        return "\n".join([f"{self._line()}, {self.timings.get('total', 0.0):.2f} s", counts, *notes])

    def to_json(self) -> dict:
        """A JSON-ready dict: eps, norm, domain, backend, precision, certified, total, fraction, counts,
        per sample :meth:`SampleResult.entry` and, for falsified samples, the counterexample's ``witness``
        x and ``witness_output``, timings, degraded. (The re-checkable certificate is
        :func:`certkit.certificate.dataset_certificate`.)"""
        from .. import __version__

        per = []
        for s in self.samples:
            e = s.entry()
            if s.witness is not None:
                e["witness"] = json_numbers(s.witness)
                e["witness_output"] = json_numbers(s.witness_output)
            per.append(e)
        return {"certkit_version": __version__, "eps": float(self.eps), "norm": self.norm,
                "domain": [float(v) for v in self.domain] if self.domain else None, "backend": self.backend,
                "precision": self.precision, "certified": self.certified, "total": self.total,
                "fraction": self.fraction, "counts": self.counts, "per_sample": per,
                "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
                "degraded": [dict(d) for d in self.degraded]}


def check_samples(x, y, model: Model, where: str,
                  domain: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float64 (N, n_inputs) and ``y`` as int64 (N,), or a DataError naming ``where``.

    Refused: arrays that are not real numbers (object, bool, complex, strings, ragged lists),
    no samples, NaN or Inf in ``x``, labels that are not integers (integral floats such as 3.0
    are accepted) or lie outside [0, n_outputs - 1], ``x`` and ``y`` of different lengths,
    samples whose size is not the model's input size, and (with ``domain``) samples outside it."""
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
    if domain is not None and ((x < domain[0]).any() or (x > domain[1]).any()):
        raise DataError(f"{where}: some samples lie outside the domain [{domain[0]:g}, {domain[1]:g}]")
    return x.reshape(len(x), -1).astype(np.float64), y.astype(np.int64)


def load_dataset(path: str, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` and ``y`` from an ``.npz`` file and check them (:func:`check_samples`)."""
    return check_samples(*read_dataset(path), model, path)


def read_dataset(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The arrays ``x`` and ``y`` of an ``.npz`` file, unchecked, or a DataError naming the file."""
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
    return arrays["x"], arrays["y"]


def _rows(labels: np.ndarray, n_out: int) -> tuple[torch.Tensor, np.ndarray]:
    """C (b, n_out - 1, n_out) with rows e_y - e_j, and j per row."""
    b = len(labels)
    others = np.array([[j for j in range(n_out) if j != y] for y in labels])
    C = np.zeros((b, n_out - 1, n_out))
    ar = np.arange(b)[:, None]
    C[ar, np.arange(n_out - 1)[None], labels[:, None]] = 1.0
    C[ar, np.arange(n_out - 1)[None], others] = -1.0
    return torch.as_tensor(C), others


NORMS = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}


def _batched_plan(plan: tuple[str, ...]) -> tuple[str, ...]:
    """A complete backend's plan in data-set mode: alpha-CROWN, batched across the samples, runs
    before the per-sample searches (it costs a fraction of one search per sample, and makes every
    complete backend certify at least the samples ``alpha`` certifies, whatever their budget)."""
    first = next((i for i, p in enumerate(plan) if p in COMPLETE_PROCEDURES), None)
    if first is None or "alpha" in plan[:first]:
        return plan
    return plan[:first] + ("alpha",) + plan[first:]


def certify_dataset(model: Model, x: np.ndarray, y: np.ndarray, eps: float, norm: str = "linf",
                    domain: tuple[float, float] | None = None, backend: str = "auto",
                    batch_size: int = 32, attack_cfg: AttackConfig = AttackConfig(128, 4, 20),
                    progress: bool = False, indices: np.ndarray | None = None,
                    timeout: float | None = None, total_timeout: float | Budget | None = None,
                    seed: int = 0, cluster: str | None = None) -> DatasetResult:
    """Certify every sample of ``(x, y)`` at radius ``eps`` in ``norm`` (``linf``, ``l2``, ``l1``).

    Each correctly classified sample is a :class:`~certkit.verify.query.Query` (its ball, clipped to
    ``domain``) and goes through the one pipeline (:func:`certkit.verify.pipeline.decide`), a batch
    of ``batch_size`` samples at a time: the bound procedures of the backend's plan bound the whole
    batch at once, then each sample still open gets the complete procedures (``bab``, ``milp``,
    ``auto``) within ``timeout`` seconds of its own; ``total_timeout`` bounds the whole run.
    ``backend="lipschitz"``: Lipschitz-margin certificates (:mod:`certkit.lipschitz.margin`); each
    sample also gets its certified radius. ``cluster`` (``local[:N]`` or a scheduler address): the
    batches run as tasks on a Dask cluster (:func:`certkit.verify.distributed.certify_batches`), with
    the same batches and seeds, hence the same per-sample results, as in one process."""
    lip = backend == "lipschitz"
    plan = ("lipschitz",) if lip else _batched_plan(stages_for(backend))
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1 (got {batch_size})")
    p = NORMS.get(norm)
    if p is None:
        raise DataError(f"unknown norm '{norm}' (choose {', '.join(NORMS)})")
    if lip and norm == "l1":
        raise UsageError("--backend lipschitz certifies L_inf and L_2 balls, not L_1")
    g = model.graph
    idx_all = np.arange(len(x)) if indices is None else np.asarray(indices)
    out = DatasetResult(eps, norm, backend, domain, precision=precision_of(g).name)
    t_all = time.monotonic()
    total = total_timeout if isinstance(total_timeout, Budget) else Budget.of(total_timeout)
    timings = {"predict": 0.0, "bounds": 0.0, "attack": 0.0}
    t = time.monotonic()
    pred = model.runner(x).argmax(axis=1) if len(x) else np.zeros(0, int)
    timings["predict"] = time.monotonic() - t
    results: dict[int, SampleResult] = {}
    for k in np.nonzero(pred != y)[0]:
        results[int(k)] = SampleResult(int(idx_all[k]), int(y[k]), "misclassified", float("nan"), 0.0)
    todo = np.nonzero(pred == y)[0]
    rows = bound_rows
    if lip and len(todo) and cluster is None:  # (on a cluster each worker computes it once)
        t = time.monotonic()
        rows = _lipschitz_rows(g, norm)
        timings["lipschitz"] = time.monotonic() - t
    per_sample = None if timeout is None else (lambda b: b.cap(timeout))
    bar = log_progress(len(todo), "sample", "data set") if progress else None
    _LOG.info("%d samples, %d correctly classified, batches of %d", len(x), len(todo), batch_size)
    batches = [(start, todo[start:start + batch_size]) for start in range(0, len(todo), batch_size)]
    job = _Job(eps, p, domain, backend, plan, attack_cfg, timeout, seed)

    def done(got: list[SampleResult], ks: np.ndarray, degraded: list[dict], n: int) -> None:
        for k, r in zip(ks, got):
            results[int(k)] = r
        out.degraded += [d for d in degraded if d not in out.degraded]
        if bar is not None:
            bar.update(n)
            bar.set_postfix(verified=sum(r.verdict == "verified" for r in results.values()))

    if cluster is None:
        for start, ks in batches:
            got, degraded = _certify_batch(model, job, x[ks], y[ks], idx_all[ks], start, total, timings, rows,
                                           per_sample)
            done(got, ks, degraded, len(ks))
    else:
        from .distributed import certify_batches

        for got, ks, degraded, part in certify_batches(model, job, x, y, idx_all, batches, total, cluster):
            for k, v in part.items():
                timings[k] = timings.get(k, 0.0) + v
            done(got, ks, degraded, len(ks))
    if bar is not None:
        bar.close()
    out.samples = [results[k] for k in sorted(results)]
    timings["total"] = time.monotonic() - t_all
    out.timings = timings
    return out


def _lipschitz_rows(g, norm: str):
    """The ``rows`` procedure of ``backend="lipschitz"``: Lipschitz margins of the net's pair constants."""
    from ..lipschitz.margin import pair_lipschitz

    pair = pair_lipschitz(g, norm)
    return lambda qs, stage, b: lipschitz_rows(qs, b, pair)


@dataclass(frozen=True)
class _Job:
    """What every batch of one data-set run shares (sent to cluster workers with each batch)."""

    eps: float
    p: float
    domain: tuple[float, float] | None
    backend: str
    plan: tuple[str, ...]
    attack: AttackConfig
    timeout: float | None
    seed: int


def _certify_batch(model: Model, job: _Job, x: np.ndarray, y: np.ndarray, idx: np.ndarray, start: int,
                   total: Budget, timings: dict, rows, per_sample) -> tuple[list[SampleResult], list[dict]]:
    """One batch of correctly classified samples through the pipeline (the batch starting at position
    ``start`` among them: its attack seed is ``seed + start``, in one process as on a cluster)."""
    g = model.graph
    run = (lambda z: model.runner(z))  # noqa: E731
    qs = [Query.robustness(g, x[k], int(y[k]), job.eps, job.p, job.domain, run, int(idx[k])) for k in range(len(x))]
    res = decide(qs, job.plan, total, seed=job.seed + start, quick=None, medium=None, long=job.attack,
                 stop_on_sat=False, explicit=job.backend, query_budget=per_sample, timings=timings, rows=rows)
    degraded: list[dict] = []
    got = []
    for k, q, r in zip(range(len(x)), qs, res):
        got.append(_sample_result(q, r, int(y[k])))
        degraded += [d for d in r.extra.get("degraded", []) if d not in degraded]
    return got, degraded


def _sample_result(q: Query, r: PropertyResult, label: int) -> SampleResult:
    if r.status == "verified":
        verdict = "verified"
    elif r.status == "falsified":
        verdict = "falsified"
    else:
        verdict = "timeout" if r.timed_out else "unknown"
    low = float(np.min(r.spec_lower)) if r.spec_lower is not None and len(r.spec_lower) else float("nan")
    w = r.witness
    return SampleResult(q.index, label, verdict, low, r.time, r.stage if verdict == "verified" else "",
                        float(r.extra.get("radius", float("nan"))),
                        None if w is None else np.asarray(w.x).copy(), None if w is None else np.asarray(w.y).copy(),
                        r.proof if verdict == "verified" else None)


def prove_samples(model: Model, x: np.ndarray, y: np.ndarray, eps: float, norm: str,
                  domain: tuple[float, float] | None, stage: str, batch_size: int = 32) -> np.ndarray:
    """Re-derive the per-sample proofs of one bound stage (a bound backend of
    :data:`certkit.bounds.backends.BACKENDS`, or ``lipschitz``), as :func:`certify_dataset` derives
    them, through the verdict gate: (N,) bool, verified or not (``certkit check``)."""
    g = model.graph
    p = NORMS[norm]
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    qs = [Query.robustness(g, x[i], int(y[i]), eps, p, domain, None, i) for i in range(len(x))]
    ok = np.zeros(len(x), dtype=bool)
    if stage == "lipschitz":
        from ..lipschitz.margin import pair_lipschitz

        got = lipschitz_rows(qs, Budget(), pair_lipschitz(g, norm)) if qs else []
    elif stage in BACKENDS:
        got = []
        for s in range(0, len(qs), batch_size):
            got += bound_rows(qs[s:s + batch_size], stage, Budget())
    else:
        return ok
    for i, (q, row) in enumerate(zip(qs, got)):
        proof = gate.Proof("bounds", stage, row[0], row[1], q.owner)
        ok[i] = gate.check_proof(proof, q.n_disjuncts)[0]
    return ok
