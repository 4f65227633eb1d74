"""Data-set certification and input splitting as tasks on a Dask cluster (:mod:`certkit.cluster`).

Data sets (:func:`certify_batches`): one task per batch of samples -- the batches and attack seeds
of one process, so each sample's result is the one a single process gives (a sample's bounds come
from its own rows; a timeout can still end differently under a different load). The lowered model
(the IR graph, pickled) is scattered to the workers once; each worker keeps one
:class:`~certkit.model.Model` per graph (its onnxruntime session built once) for all its tasks.

Input splitting (:func:`split_on_cluster`): see its docstring.
"""
from __future__ import annotations

import sys
import time
from typing import Iterator

import numpy as np

from ..model import Model
from .query import Budget

#: Models built on this worker, by the graph's SHA-256 and the model file's path.
_WORKER_MODELS: dict[tuple[str, str], Model] = {}
#: Lipschitz-margin procedures built on this worker, by the graph's SHA-256 and the norm.
_WORKER_ROWS: dict[tuple[str, float], object] = {}


def _worker_model(graph, path: str, shipped) -> Model:
    from ..cluster import materialise

    key = (graph.sha256, path)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = Model(graph, materialise(path, shipped))
    return _WORKER_MODELS[key]


def _deadline_budget(end: float | None, label, memory) -> Budget:
    """A budget ending at the wall-clock time ``end`` (``time.time()``; None: unlimited), the run's
    overall one as seen on a worker."""
    if end is None:
        return Budget(None, label, 0.0, memory)
    return Budget(time.monotonic() + max(end - time.time(), 0.0), label, 0.0, memory)


def _dataset_task(graph, path: str, shipped, job, x, y, idx, start: int, end: float | None, label, memory):
    """One batch of a data-set run on a worker: (sample results, degraded notes, timings)."""
    import torch

    from .dataset import _certify_batch, _lipschitz_rows
    from .procedures import bound_rows

    torch.set_num_threads(1)
    model = _worker_model(graph, path, shipped)
    timings = {"bounds": 0.0, "attack": 0.0}
    rows = bound_rows
    if job.backend == "lipschitz":
        key = (graph.sha256, job.p)
        if key not in _WORKER_ROWS:
            t = time.monotonic()
            _WORKER_ROWS[key] = _lipschitz_rows(model.graph, {float("inf"): "linf", 2.0: "l2"}[job.p])
            timings["lipschitz"] = time.monotonic() - t
        rows = _WORKER_ROWS[key]
    per_sample = None if job.timeout is None else (lambda b: b.cap(job.timeout))
    got, degraded = _certify_batch(model, job, x, y, idx, start, _deadline_budget(end, label, memory), timings,
                                   rows, per_sample)
    return got, degraded, timings


def certify_batches(model: Model, job, x: np.ndarray, y: np.ndarray, idx_all: np.ndarray,
                    batches: list[tuple[int, np.ndarray]], total: Budget, cluster: str
                    ) -> Iterator[tuple[list, np.ndarray, list[dict], dict]]:
    """Run ``batches`` ((start, positions) of :func:`certkit.verify.dataset.certify_dataset`) as tasks
    on ``cluster``; yields (results, positions, degraded notes, timings) per batch as tasks finish."""
    from ..cluster import open_cluster, parse_cluster, shares_files, ship

    spec = parse_cluster(cluster)
    rem = total.remaining()
    end = None if rem is None else time.time() + rem
    with open_cluster(spec, sys.stderr) as client:
        from dask.distributed import as_completed

        graph = client.scatter(model.graph, broadcast=True, hash=False)
        shipped = None if shares_files(spec) else client.scatter(ship(model.path), broadcast=True, hash=False)
        of = {}
        futures = []
        for start, ks in batches:
            fut = client.submit(_dataset_task, graph, model.path, shipped, job, x[ks], y[ks], idx_all[ks], start,
                                end, total.label, total.memory, pure=False)
            of[fut.key] = ks
            futures.append(fut)
        for fut in as_completed(futures):
            got, degraded, timings = fut.result()
            yield got, of.pop(fut.key), degraded, timings
            fut.release()
