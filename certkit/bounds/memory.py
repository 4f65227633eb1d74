"""The memory budget of bound computations (issue 11: "a run never dies of memory").

A budget is a limit on the process's resident memory (bytes). The user sets it with
``--memory-limit`` (:func:`parse_size`); by default it is :data:`DEFAULT_FRACTION` of the memory
available when first asked (``MemAvailable`` of ``/proc/meminfo``, or less when a cgroup limit
leaves less: ``/sys/fs/cgroup/memory.max`` minus ``memory.current``), plus what the process already
holds. It travels on the time budget (:class:`certkit.verify.query.Budget`, field ``memory``;
``None`` means this default) into every bound computation, which sizes its work from the
**headroom**: the limit minus the resident memory now (:func:`rss`).

* Back-substitution (:mod:`certkit.bounds.deeppoly`) pushes its rows in chunks: a chunk of ``k`` rows
  of width ``n`` (the widest node) holds ``k n`` coefficients, and its peak is about
  :data:`MULTIPLICITY` times that (the coefficients, the relaxation's products and selections, and
  a convolution adjoint's padded output and its copy: 3.3-6.2x measured on oval21 and sri_resnet);
  :func:`rows_within` gives the rows that fit in :data:`WORKING_SHARE` of the headroom, never more
  than an efficiency cap (larger chunks are no faster).
* alpha-CROWN (:mod:`certkit.bounds.alpha`) estimates its slopes, their gradients and Adam moments,
  and the autograd tape of its back-substitutions before it starts, and optimises fewer rows when
  that does not fit.
* When even one row does not fit, :class:`MemoryExceeded` is raised *before* the allocation, and
  :mod:`certkit.bounds.fallback` moves to a cheaper method (whose bounds are as sound, and looser).

This module imports neither torch nor numpy: the command line parses ``--memory-limit`` with it.
"""
from __future__ import annotations

import os
import re

from ..malloc import held_free

#: The default budget: this fraction of the memory available (the rest is left to the system,
#: other processes, and the allocator's slack).
DEFAULT_FRACTION = 0.5
#: Peak bytes of a back-substitution chunk per byte of its coefficient tensor (measured 3.3-6.2x).
MULTIPLICITY = 8
#: The share of the headroom one chunk (or one alpha-CROWN pass) may plan to use.
WORKING_SHARE = 0.8
#: Bytes of one coefficient (float64).
FLOAT_BYTES = 8
#: ``--memory-limit unlimited``: no limit (the chunks are then only capped for speed).
UNLIMITED = 1 << 62
#: :func:`rows_within` does not read the resident memory (a /proc read, 30-40 us) for a job that
#: plans at most this many bytes in all, under a limit of at least :data:`SMALL_LIMIT`: the
#: intermediate rows of a small net are asked for thousands of times per second.
SMALL_JOB = 4 << 20
SMALL_LIMIT = 1 << 30

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
          "TIB": 1 << 40}


class MemoryExceeded(MemoryError):
    """A bound computation would not fit in the memory budget (found before allocating)."""


def parse_size(text: str) -> int:
    """Bytes of a size such as ``8G``, ``500M``, ``1.5GB``, ``64MiB``, ``123456`` (binary units: 1K =
    1024), or ``unlimited``/``none`` (:data:`UNLIMITED`). ValueError on anything else."""
    t = str(text).strip().upper()
    if t in ("UNLIMITED", "NONE", "INF"):
        return UNLIMITED
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:E[+-]?[0-9]+)?)\s*([A-Z]*)", t)
    if m is None or m.group(2) not in _UNITS:
        raise ValueError(f"not a memory size: '{text}' (use e.g. 8G, 500M, 1.5GB or unlimited)")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not value >= 1 << 20:
        raise ValueError(f"memory size '{text}' is below 1M")
    return int(min(value, UNLIMITED))


def format_size(n: float) -> str:
    """``1.5 GB``, ``300 MB``, ``unlimited`` (binary units, as :func:`parse_size`)."""
    if n >= UNLIMITED:
        return "unlimited"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def rss() -> int:
    """The resident memory this process uses now, in bytes: its resident set less what the allocator
    holds free for reuse (:func:`certkit.malloc.held_free`; a process tuned by :func:`certkit.malloc.tune`
    keeps every freed block). 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
    return max(resident - held_free(), 0)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """What a cgroup memory limit still allows (v2, then v1); None when there is no limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap = _read_int(limit)  # "max" (no limit) is not a number
        if cap is not None and cap < UNLIMITED:
            return max(cap - (_read_int(usage) or 0), 0)
    return None


def available() -> int:
    """Memory available to this process now, in bytes: ``MemAvailable``, or the free pages where
    /proc/meminfo is missing; less when a cgroup limit leaves less."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            avail = 4 << 30
    cg = _cgroup_headroom()
    return avail if cg is None else min(avail, cg)


_DEFAULT: list[int] = []


def default_limit() -> int:
    """:data:`DEFAULT_FRACTION` of the memory available, plus what this process holds already
    (measured once per process, at the first call)."""
    if not _DEFAULT:
        _DEFAULT.append(int(DEFAULT_FRACTION * available()) + rss())
    return _DEFAULT[0]


def limit_of(budget) -> int:
    """The memory limit of a budget (its ``memory`` field), or :func:`default_limit`."""
    m = getattr(budget, "memory", None)
    return default_limit() if m is None else int(m)


def headroom(budget) -> int:
    """Bytes the budget still allows: its limit minus the resident memory now."""
    return limit_of(budget) - rss()


def working_room(budget) -> float:
    """Bytes a computation may plan to hold at its peak: :data:`WORKING_SHARE` of the headroom."""
    return WORKING_SHARE * headroom(budget)


def describe(budget) -> str:
    """``memory budget of 11.2 GB, 310 MB in use`` -- for messages."""
    return f"memory budget of {format_size(limit_of(budget))}, {format_size(rss())} in use"


def rows_within(budget, floats_per_row: int, cap_floats: int, what: str = "back-substitution",
                need: int | None = None) -> int:
    """Rows per chunk for a computation holding ``floats_per_row`` coefficients per row: as many as
    fit in :data:`WORKING_SHARE` of the headroom at :data:`MULTIPLICITY` bytes of peak per
    coefficient byte, at most ``cap_floats // floats_per_row`` (and at least 1). Raises
    :class:`MemoryExceeded` when not even one row fits. ``need``: the rows the job has in all; when
    they plan at most :data:`SMALL_JOB` bytes under a limit of :data:`SMALL_LIMIT` or more, they go
    in one chunk (within the cap) without reading the resident memory."""
    per_row = max(int(floats_per_row), 1)
    if need is not None and need * per_row * FLOAT_BYTES * MULTIPLICITY <= SMALL_JOB \
            and limit_of(budget) >= SMALL_LIMIT:
        return max(1, min(int(need), max(int(cap_floats) // per_row, 1)))
    k = int(working_room(budget) // (per_row * FLOAT_BYTES * MULTIPLICITY))
    if k < 1:
        need = per_row * FLOAT_BYTES * MULTIPLICITY
        raise MemoryExceeded(f"{what} needs {format_size(need)} per row; {describe(budget)}")
    return max(1, min(k, max(int(cap_floats) // per_row, 1)))


def fits(budget, nbytes: float) -> bool:
    """Does a computation planning to hold ``nbytes`` at its peak fit in the budget's working share?"""
    return nbytes <= working_room(budget)
