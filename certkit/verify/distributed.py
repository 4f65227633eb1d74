"""Data-set certification and input splitting as tasks on a Dask cluster (:mod:`certkit.cluster`).

Data sets (:func:`certify_batches`): one task per batch of samples -- the batches and attack seeds
of one process, so each sample's result is the one a single process gives (a sample's bounds come
from its own rows; a timeout can still end differently under a different load). The lowered model
(the IR graph, pickled) is scattered to the workers once; each worker keeps one
:class:`~certkit.model.Model` per graph (its onnxruntime session built once) for all its tasks.

Input splitting (:func:`split_on_cluster`) and ReLU splitting (:func:`relu_split_on_cluster`): see their docstrings.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..model import Model
from .query import Budget

#: Models built on this worker, by the graph's SHA-256 and the model file's path.
_WORKER_MODELS: dict[tuple[str, str], Model] = {}
#: Lipschitz-margin procedures built on this worker, by the graph's SHA-256 and the norm.
_WORKER_ROWS: dict[tuple[str, float], object] = {}


def _worker_model(graph, path: str, shipped) -> Model:
    """The model of ``graph`` on this worker (built once; every task calls this first, so it also
    tunes the worker's allocator: :func:`certkit.malloc.tune`)."""
    from ..cluster import materialise
    from ..malloc import tune

    tune(dedicated=False)
    key = (graph.sha256, path)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = Model(graph, materialise(path, shipped))
    return _WORKER_MODELS[key]


def _deadline_budget(end: float | None, label, memory, stop_name: str | None = None) -> Budget:
    """A budget ending at the wall-clock time ``end`` (``time.time()``; None: unlimited), the run's
    overall one as seen on a worker; expired too once the Dask ``Event`` ``stop_name`` is set."""
    deadline = None if end is None else time.monotonic() + max(end - time.time(), 0.0)
    return Budget(deadline, label, 0.0, memory, None if stop_name is None else _stopper(stop_name))


def _dataset_task(graph, path: str, shipped, job, x, y, idx, start: int, end: float | None, label, memory):
    """One batch of a data-set run on a worker: (sample results, degraded notes, timings)."""
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
    from .dataset import SampleResult

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
        def failed(ks, why: str):
            print(f"certkit: cluster: a batch of {len(ks)} sample(s) failed ({why}); they are recorded "
                  "unknown", file=sys.stderr, flush=True)
            return [SampleResult(int(idx_all[k]), int(y[k]), "unknown", float("nan"), 0.0) for k in ks], ks, [], {}

        wait = None if rem is None else rem + TASK_GRACE
        try:
            for fut in as_completed(futures, timeout=wait):
                ks = of.pop(fut.key)
                try:
                    got, degraded, timings = fut.result()
                except Exception as e:  # noqa: BLE001 - KilledWorker (its worker died twice), a failed task
                    yield failed(ks, "its worker died twice" if type(e).__name__ == "KilledWorker"
                                 else f"{type(e).__name__}: {e}")
                    continue
                yield got, ks, degraded, timings
                fut.release()
        except TimeoutError:  # workers lost for good: what did not report back is unknown
            for ks in list(of.values()):
                yield failed(ks, "no report before the deadline")
            client.cancel(futures)


# --------------------------------------------------------------------------------------------- input splitting

#: Parts of the root box per worker: the search's top levels are split here, each part is one task
#: (Dask hands the next part to whichever worker is free, which balances uneven parts)
PARTS_PER_WORKER = 2
#: Seconds between a task's looks at the shared stop event
STOP_POLL = 0.5


def top_splits(lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor, parts: int):
    """The first ``ceil(log2 parts)`` levels of the search, made here: every box is bisected
    (:func:`~certkit.verify.input_split.children`) along the dimension of largest ``|a| x width``
    (``a``: the root's guide-row coefficients; a dimension of zero coefficient by its width).
    Returns the parts (list of (lo, hi), (1, n) each) in preorder and the split codes, the tree's
    top in preorder (``(0, dim)`` per split, ``None`` where a part's subtree goes)."""
    from .input_split import children

    depth = max(0, int(np.ceil(np.log2(max(parts, 1)))))
    score_a = torch.where(a.abs() > 0, a.abs(), torch.full_like(a, 1e-300))
    codes: list = []
    out: list = []

    def grow(l, h, level):
        if level == depth:
            codes.append(None)
            out.append((l, h))
            return
        width = h - l
        dim = int(torch.where(width > 0, score_a * width, torch.full_like(width, -1.0)).argmax())
        if float(width[0, dim]) <= 0:
            codes.append(None)
            out.append((l, h))
            return
        c_lo, c_hi = children(l, h, torch.tensor([[dim]]))
        codes.append((0, dim))
        grow(c_lo[0, 0, 0][None], c_hi[0, 0, 0][None], level + 1)
        grow(c_lo[0, 0, 1][None], c_hi[0, 0, 1][None], level + 1)

    grow(lo, hi, 0)
    return out, codes


def items_of(log, root: int = 0) -> list:
    """The record under ``root`` of a search (its :class:`~certkit.verify.proof.TreeLog`) as preorder
    items: ``("split", position, index)``, ``("leaf", code, value)``, and ``("hole", domain id)`` for
    a domain still open (a handed-off search)."""
    items, stack = [], [root]
    while stack:
        i = stack.pop()
        if i in log.splits:
            pos, idx, a, b = log.splits[i]
            items.append(("split", pos, idx))
            stack.extend((b, a))
        elif i in log.leaves:
            kd, v, _ = log.leaves[i]
            items.append(("leaf", -1 - kd, v))
        else:
            items.append(("hole", i))
    return items


def assemble(root_key, filled: dict, kinds: tuple, meta: dict):
    """The proof tree of the whole search: the items of ``root_key`` with every hole replaced, in
    place, by the items filed under its key in ``filled`` (recursively)."""
    from .proof import ProofTree

    codes, values = [], []
    stack = [iter(filled[root_key])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif item[0] == "split":
            codes.append((item[1], item[2]))
        elif item[0] == "leaf":
            codes.append((item[1], -1))
            values.append(item[2])
        else:
            stack.append(iter(filled[item[1]]))
    return ProofTree("input_split", np.asarray(codes, dtype=np.int64).reshape(-1, 2), np.asarray(values, np.float64),
                     kinds, {}, meta)


def _stopper(name: str):
    """A call that says whether the Dask ``Event`` ``name`` is set (looked up at most every
    :data:`STOP_POLL` seconds; once set, it stays so for the caller)."""
    from dask.distributed import Event

    ev = Event(name)
    last = [0.0, False]

    def stop() -> bool:
        now = time.monotonic()
        if not last[1] and now - last[0] >= STOP_POLL:
            last[0] = now
            try:
                last[1] = ev.is_set()
            except Exception:  # noqa: BLE001 - no scheduler to ask: go on until the deadline
                last[1] = False
        return last[1]

    return stop


def _split_task(graph, path: str, shipped, C, d, owner, K: int, index: int, lo, hi, first: float,
                end: float | None, label, memory, stop_name: str, hungry_name: str, min_slice: float = 2.0):
    """Parts of the root box (boxes ``lo``, ``hi``, (k, n) each) searched on a worker as one queue: the
    portfolio of one process on a first part (``first`` > 0: its shares scaled by ``first``), its
    alpha-CROWN run on parts handed on. After ``min_slice`` seconds (:data:`MIN_SLICE`), when the coordinator says
    workers are idle (the ``hungry_name`` event), the search hands its open domains back. Returns
    ``("done" | "handed_off", [items per part], open boxes in the order of the holes, domains)``,
    ``("falsified", x)``, or ``(status, message)`` when the search ended open."""
    from ..spec.sets import InputSet
    from .procedures import INPUT_SPLIT_PORTFOLIO, split_portfolio
    from .query import Query

    torch.set_num_threads(1)
    model = _worker_model(graph, path, shipped)
    budget = _deadline_budget(end, label, memory, stop_name)
    hungry = _stopper(hungry_name)
    begun = time.monotonic()

    def handoff() -> bool:
        return time.monotonic() - begun >= min_slice and hungry()

    box = InputSet(lo.amin(dim=0, keepdim=True), hi.amax(dim=0, keepdim=True))  # the witness check's region
    q = Query(model.graph, box, C, d, owner, K, (lambda z: model.runner(z)), index)
    res = split_portfolio(q, budget, (lo, hi), None if first else INPUT_SPLIT_PORTFOLIO[-1:], handoff, first or 1.0)
    if res.status == "falsified" and res.witness is not None:
        return ("falsified", np.asarray(res.witness.x))
    if res.status not in ("verified", "handed_off"):
        return (res.status, res.message or "a part of the box ended open")
    items = [items_of(res.log, r) for r in res.roots]
    opened: list = []
    if res.status == "handed_off":
        lo_o, hi_o, ids = res.open
        where = {int(i): k for k, i in enumerate(ids.tolist())}
        for part in items:
            opened += [(lo_o[where[it[1]]][None], hi_o[where[it[1]]][None]) for it in part if it[0] == "hole"]
    return ("done" if res.status == "verified" else "handed_off", items, opened, res.domains)


#: ``CERTKIT_DEBUG_CLUSTER=1``: the coordinator prints each task's outcome with its time on stderr
_DEBUG = bool(os.environ.get("CERTKIT_DEBUG_CLUSTER"))
#: Seconds a task searches before it may hand its open domains on (when workers are idle)
MIN_SLICE = 2.0


@dataclass
class _Shared:
    """What the tasks of one search share: the scattered graph and model bytes (None: by path), the
    wall-clock end, the stop event (set when the search is decided), and how long to wait for tasks."""

    graph: object
    shipped: object
    end: float | None
    stop_name: str
    stop: object
    wait: float | None

    @staticmethod
    def of(query, budget: Budget, on) -> "_Shared":
        import uuid

        from dask.distributed import Event

        from ..cluster import ship

        graph = on.once(f"graph-{query.graph.sha256}", lambda: query.graph)
        shipped = None if on.shares_files else on.once(f"file-{on.model_path}", lambda: ship(on.model_path))
        rem = budget.remaining()
        name = f"certkit-stop-{uuid.uuid4().hex}"
        return _Shared(graph, shipped, None if rem is None else time.time() + rem, name,
                       Event(name, client=on.client), None if rem is None else rem + TASK_GRACE)


def _within(pool, out):
    """The futures of ``pool`` as they complete; when its wait runs out (tasks lost with their workers),
    ``out`` ends as a timeout."""
    try:
        yield from pool
    except TimeoutError:
        out.status, out.message = "timeout", "cluster tasks did not report back before the deadline"


#: Seconds past the budget a search waits for its tasks (a worker lost for good) before it ends as a timeout
TASK_GRACE = 5.0


def split_on_cluster(query, budget: Budget, on):
    """Input splitting of ``query`` over the cluster ``on`` (:class:`certkit.cluster.Active`).

    The top levels are split here (:func:`top_splits`, :data:`PARTS_PER_WORKER` parts per worker);
    each part is searched by a task (:func:`_split_task`: the input-splitting portfolio of one process,
    its shares scaled by the part's share of the workers). When fewer tasks are left than workers, a
    Dask ``Event`` says so: the running tasks hand their open domains back, and these are spread over
    new tasks (about two per worker), which go on with the portfolio's alpha-CROWN run. A counterexample found anywhere is confirmed here with onnxruntime and stops
    every task (a Dask ``Event`` their budgets look at); so does a part that ends open, since a proof
    needs every part closed. When all is closed, the proof tree is assembled from the parts' records
    (:func:`assemble`): ``certkit check`` replays it from the root box like any other."""
    import uuid

    from dask.distributed import Event, as_completed

    from ..cluster import worker_count
    from .input_split import LEAF_KINDS, SplitConfig, SplitOutcome, _Problem, closed, root_box, tree_meta
    from .procedures import INPUT_SPLIT_PORTFOLIO

    lo0, hi0 = root_box(query)
    pb = _Problem(query, SplitConfig(alpha_iterations=0), budget)
    root, w = pb.bound(lo0, hi0)
    if w is not None:
        return SplitOutcome("falsified", w, pb.domains)
    if bool(closed(root.value)[0]):  # no task needed: the one-process search closes it at once
        from .procedures import split_portfolio

        return split_portfolio(query, budget)
    client = on.client
    workers = worker_count(client)
    # one worker: the whole box is one task (parts searched apart cost more than one search: ACAS Xu
    # 4_2 prop_2 on local:1, 38.9 s in 2 parts against 32.6 s in one process)
    parts, codes = top_splits(lo0, hi0, root.a.detach(), PARTS_PER_WORKER * workers if workers > 1 else 1)
    sh = _Shared.of(query, budget, on)
    hungry_name = f"certkit-hungry-{uuid.uuid4().hex}"
    hungry = Event(hungry_name, client=client)
    filled: dict = {"top": []}
    for c in codes:
        filled["top"].append(("hole", len(filled)) if c is None else ("split", *c))
        if c is None:
            filled[len(filled)] = None
    keys = iter(range(len(filled), 1 << 62))

    def submit(group: list, first: float):
        lo = torch.cat([g[1][0] for g in group])
        hi = torch.cat([g[1][1] for g in group])
        fut = client.submit(_split_task, sh.graph, on.model_path, sh.shipped, query.C, query.d, query.owner,
                            query.n_disjuncts, query.index, lo, hi, first, sh.end, budget.label, budget.memory,
                            sh.stop_name, hungry_name, MIN_SLICE, pure=False)
        of[fut.key] = [k for k, _ in group]
        submitted.append(fut)
        return fut

    is_hungry = False
    _t0 = time.monotonic()
    of: dict = {}  # task key -> the keys of its parts
    submitted: list = []
    pool = as_completed([submit([(k + 1, p)], min(1.0, workers / len(parts))) for k, p in enumerate(parts)],
                        timeout=sh.wait)
    out = SplitOutcome("verified", domains=pb.domains)
    try:
        for fut in _within(pool, out):
            try:
                r = fut.result()
            except Exception as e:  # noqa: BLE001 - a part that could not be searched leaves the query open
                r = ("unknown", f"cluster task failed: {e}")
            group_keys = of.pop(fut.key)
            if _DEBUG:
                print(f"{time.monotonic() - _t0:7.2f}s task of {len(group_keys)} part(s): {r[0]}"
                      + (f", {len(r[2])} open domains handed on" if r[0] == "handed_off" else ""),
                      file=sys.stderr, flush=True)
            if r[0] == "falsified":
                witness = query.confirm(torch.as_tensor(r[1]).reshape(1, -1))
                if witness is not None:
                    out.status, out.witness = "falsified", witness
                    break
                r = ("unknown", "a worker's counterexample was not confirmed here")
            if r[0] not in ("done", "handed_off"):
                out.status, out.message = ("timeout" if r[0] == "timeout" else "unknown"), r[1]
                break
            _, parts_items, boxes, domains = r
            out.domains += domains
            boxes = iter(boxes)
            todo = []
            for key, items in zip(group_keys, parts_items):
                filled[key] = []
                for it in items:
                    if it[0] == "hole":
                        k2 = next(keys)
                        filled[key].append(("hole", k2))
                        todo.append((k2, next(boxes)))
                    else:
                        filled[key].append(it)
            if todo:  # spread over about two tasks per worker
                n_tasks = max(1, min(len(todo), 2 * workers))
                size = -(-len(todo) // n_tasks)
                for s0 in range(0, len(todo), size):
                    pool.add(submit(todo[s0:s0 + size], 0.0))
            if (pool.count() < workers) != is_hungry:  # tasks left, against workers
                is_hungry = not is_hungry
                hungry.set() if is_hungry else hungry.clear()
    finally:
        sh.stop.set()  # whatever is still running has nothing left to decide
        client.cancel(submitted)
    if out.status == "verified":
        # every part runs the portfolio, whose last run (alpha-CROWN) is what the recheck re-derives
        # leaves with; DeepPoly-closed leaves close by DeepPoly there first
        meta = dict(tree_meta(INPUT_SPLIT_PORTFOLIO[-1][1], out.domains), parts=len(parts))
        out.tree = assemble("top", filled, LEAF_KINDS, meta)
        out.closed_volume = 1.0
    return out


# --------------------------------------------------------------------------------------------- ReLU splitting

def _relu_task(graph, path: str, shipped, region, C, d, owner, K: int, index: int, disjuncts: list[int],
               end: float | None, label, memory, stop_name: str):
    """ReLU splitting of some of a query's disjuncts on a worker: (status, trees of those disjuncts in
    order or None, witness point or None, domains)."""
    from .query import Query
    from .relu_split import relu_split

    torch.set_num_threads(1)
    model = _worker_model(graph, path, shipped)
    q = Query(model.graph, region, C, d, owner, K, (lambda z: model.runner(z)), index)
    res = relu_split(q, _deadline_budget(end, label, memory, stop_name), disjuncts=disjuncts)
    x = None if res.witness is None else np.asarray(res.witness.x)
    return res.status, res.trees, x, res.domains


def relu_split_on_cluster(query, budget: Budget, on):
    """ReLU splitting of ``query`` with its disjuncts spread over the cluster ``on``: about two groups
    of disjuncts per worker, each a task deciding its disjuncts as one process would (its own root
    bounds; a tree per disjunct). A counterexample anywhere (confirmed here with onnxruntime), or a
    disjunct left open, stops the others (a Dask ``Event``); the proof is the trees in disjunct order,
    each checked by ``certkit check`` as in one process. The open domains of one disjunct are not
    spread: a property of one disjunct is searched by one task."""
    from dask.distributed import as_completed

    from ..cluster import worker_count
    from .relu_split import ReluSplitOutcome

    client = on.client
    K = query.n_disjuncts
    groups = [g.tolist() for g in np.array_split(np.arange(K), min(K, 2 * worker_count(client))) if len(g)]
    sh = _Shared.of(query, budget, on)
    futures = [client.submit(_relu_task, sh.graph, on.model_path, sh.shipped, query.region, query.C, query.d,
                             query.owner, K, query.index, g, sh.end, budget.label, budget.memory, sh.stop_name,
                             pure=False) for g in groups]
    group_of = {f.key: g for f, g in zip(futures, groups)}
    trees: dict[int, object] = {}
    out = ReluSplitOutcome("verified")
    try:
        for fut in _within(as_completed(futures, timeout=sh.wait), out):
            try:
                status, got, x, domains = fut.result()
            except Exception:  # noqa: BLE001 - a group that could not be searched leaves the query open
                status, got, x, domains = "unknown", None, None, 0
            out.domains += domains
            if status == "falsified" and x is not None:
                witness = query.confirm(torch.as_tensor(x).reshape(1, -1))
                if witness is not None:
                    out.status, out.witness = "falsified", witness
                    break
                status = "unknown"
            if status != "verified" or got is None:
                out.status = "timeout" if status == "timeout" else "unknown"
                break
            trees.update(zip(group_of[fut.key], got))
    finally:
        sh.stop.set()
        client.cancel(futures)
    out.trees = [trees[k] for k in range(K)] if out.status == "verified" else None
    return out
