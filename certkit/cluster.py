"""Running certkit's work on a Dask cluster (``dask.distributed``; the optional extra ``.[dask]``).

``--cluster local[:N]`` starts a :class:`~dask.distributed.LocalCluster` of ``N`` worker processes
(default: one per core) on this machine; ``--cluster tcp://HOST:PORT`` connects to a running
scheduler (``dask scheduler`` / ``dask worker``, or any deployment that gives one). Either way the
same tasks run: one per suite instance (:mod:`certkit.bench`), one per batch of samples
(:mod:`certkit.verify.dataset`), one per sub-box of an input-splitting search
(:mod:`certkit.verify.distributed`).

Workers run one task at a time (one thread each, torch on one thread; a suite instance's own process
on a local cluster of N workers gets the usable CPUs divided by N, :func:`threads_per_job`). A task
whose worker dies is retried once on another worker (``distributed.scheduler.allowed-failures = 1``),
then reported (:class:`~distributed.KilledWorker`). A local cluster's workers are started non-daemonic,
so that a task can start the fresh process that runs one suite instance; on a cluster started by hand the
workers need the same (``DASK_DISTRIBUTED__WORKER__DAEMON=False``, or ``dask worker --no-nanny``).

What reaches the workers: model and spec files by path on a local cluster (the same file system),
and by their bytes (:func:`ship`, scattered once per distinct file) on a remote one, written on the
worker to a cache folder named by their SHA-256 (:func:`materialise`); certkit itself and its
dependencies must be installed on every worker (the same version: tasks are pickled functions).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator, TextIO

from .errors import BackendError, UsageError

_LOCAL = re.compile(r"^local(?::(\d+))?$")
#: the Dask settings of every cluster certkit starts (see the module docstring). The nanny's default
#: environment sets ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off glibc's sliding mmap threshold:
#: every large tensor is then mapped and unmapped afresh, and the bound computations ran 2x slower in a
#: worker than in one process (ACAS Xu 4_2 prop_2 in 4 parts: 74.6 s against 39.1 s); certkit's
#: workers get the other variables (one OpenMP/MKL/OpenBLAS thread) without it.
DASK_CONFIG = {"distributed.scheduler.allowed-failures": 1, "distributed.worker.daemon": False,
               "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                                                       "OPENBLAS_NUM_THREADS": 1}}
#: the hint of a task that needs to start a process on a daemonic worker
DAEMON_HINT = ("this Dask worker is daemonic and cannot start the process an instance runs in: start "
               "workers with DASK_DISTRIBUTED__WORKER__DAEMON=False (or dask worker --no-nanny)")


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value: a local cluster of ``workers`` processes, or a scheduler address."""

    address: str | None = None  # tcp://HOST:PORT (None: local)
    workers: int = 1

    @property
    def local(self) -> bool:
        return self.address is None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one: a container's or
    ``taskset``'s limit, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this system
        return max(1, os.cpu_count() or 1)


def threads_per_job(threads: int | None, jobs: int) -> int:
    """torch threads for each of ``jobs`` instances run at once on this machine: ``threads`` when given,
    else the usable CPUs shared among the jobs (one each at least)."""
    return threads if threads else max(1, usable_cpus() // max(1, jobs))


def parse_cluster(text: str) -> ClusterSpec:
    """``local``, ``local:N`` (N >= 1) or a scheduler address ``SCHEME://HOST:PORT``; a UsageError
    (exit 2) naming the value otherwise."""
    t = text.strip()
    m = _LOCAL.match(t)
    if m:
        n = int(m.group(1)) if m.group(1) else usable_cpus()
        if n < 1:
            raise UsageError(f"--cluster {text}: a local cluster needs at least 1 worker")
        return ClusterSpec(None, n)
    if re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+$", t):
        return ClusterSpec(t, 0)
    raise UsageError(f"--cluster {text}: expected local, local:N or a scheduler address such as tcp://HOST:8786")


def _dask():
    try:
        import dask
        from dask import distributed
    except ImportError as e:  # exit 5, as for every optional package a command needs
        raise BackendError(f"--cluster and --jobs N > 1 need Dask ({e.name or 'dask'} is missing): "
                           "pip install 'certkit[dask]'") from e
    return dask, distributed


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec | str, out: TextIO | None = sys.stderr) -> Iterator[Any]:
    """A :class:`distributed.Client` on the cluster ``spec`` (started here when local, closed on
    exit); prints the worker count and the dashboard link to ``out``."""
    spec = parse_cluster(spec) if isinstance(spec, str) else spec
    dask, distributed = _dask()
    with dask.config.set(DASK_CONFIG):
        cluster = None
        try:
            if spec.local:
                cluster = distributed.LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=":0", silence_logs=logging.ERROR)
                client = distributed.Client(cluster)
            else:
                try:
                    client = distributed.Client(spec.address, timeout="20s")
                except (OSError, TimeoutError) as e:
                    raise UsageError(f"--cluster {spec.address}: cannot reach the scheduler ({e})") from e
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
        try:
            if out is not None:
                n = len(client.scheduler_info().get("workers", {}))
                where = "local cluster" if spec.local else f"cluster {spec.address}"
                print(f"{where}: {n} worker(s), dashboard {client.dashboard_link}", file=out, flush=True)
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def shares_files(spec: ClusterSpec) -> bool:
    """Do the workers see this machine's files: a local cluster, or a scheduler on the loopback
    interface (whose workers run here)? Otherwise files are shipped (:func:`ship`)."""
    if spec.local:
        return True
    host = spec.address.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def worker_count(client) -> int:
    """Workers connected now (at least 1, so that shares computed from it stay finite)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


# --------------------------------------------------------------------------------------------- files

@dataclass(frozen=True)
class Shipped:
    """A file's bytes sent to workers: its name (for the suffix) and SHA-256."""

    name: str
    sha256: str
    data: bytes


def ship(path: str) -> Shipped:
    """The file at ``path`` as bytes for a remote worker."""
    with open(path, "rb") as f:
        data = f.read()
    return Shipped(os.path.basename(path), hashlib.sha256(data).hexdigest(), data)


def materialise(path: str, shipped: Shipped | None) -> str:
    """On a worker: ``path`` itself when nothing was shipped, else the shipped bytes written once to
    ``$TMPDIR/certkit-shipped/SHA256-NAME`` (the name keeps ``.gz`` and the like)."""
    if shipped is None:
        return path
    folder = os.path.join(tempfile.gettempdir(), "certkit-shipped")
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"{shipped.sha256[:16]}-{shipped.name}")
    if not os.path.exists(target):
        tmp = f"{target}.{os.getpid()}.part"
        with open(tmp, "wb") as f:
            f.write(shipped.data)
        os.replace(tmp, target)
    return target


def daemonic() -> bool:
    """Is this process daemonic (it may then not start processes of its own)?"""
    return bool(multiprocessing.current_process().daemon)


# --------------------------------------------------------------------------------------------- in use

@dataclass
class Active:
    """The cluster a ``certify --cluster`` run hands its searches to: the client, whether workers see
    this machine's files, the model file, and what was scattered already (by key)."""

    client: Any
    shares_files: bool
    model_path: str
    scattered: dict

    def once(self, key: str, make) -> Any:
        """A future of ``make()``, scattered to every worker on first use."""
        if key not in self.scattered:
            self.scattered[key] = self.client.scatter(make(), broadcast=True, hash=False)
        return self.scattered[key]


_ACTIVE: list[Active] = []


def active() -> Active | None:
    """The cluster in use (:func:`use`), or None."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def use(spec: ClusterSpec | str, model_path: str, out: TextIO | None = sys.stderr) -> Iterator[Active]:
    """Open the cluster ``spec`` (:func:`open_cluster`) and make it the one searches use (:func:`active`)."""
    spec = parse_cluster(spec) if isinstance(spec, str) else spec
    with open_cluster(spec, out) as client:
        _ACTIVE.append(Active(client, shares_files(spec), model_path, {}))
        try:
            yield _ACTIVE[-1]
        finally:
            _ACTIVE.pop()
