"""glibc's allocator, set for bound computations that allocate and free tensors of tens to hundreds of
megabytes at every step (a back-substitution chunk through a 16k-neuron conv layer: ~130 MB per
elementwise op).

By default glibc serves a block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it when freed, so every such temporary is faulted in page by page and zeroed by the kernel
again: one pure CROWN call on cifar_biasfield prop_3 spent 45 s of its 72 s in the kernel. A process
that runs one certkit job (the CLI, a bench instance) turns mmap off and trims its heap only beyond
2 GiB of free top, so freed blocks are reused: the same call took 26.5 s, 0.9 s of it in the kernel,
at 1.2x the peak resident memory, with the same bounds (``benchmarks/malloc_speed.py``, 2026-12-04). A
process that lives on after its job (a Dask worker) keeps mmap for large blocks and trims beyond 256 MiB
(:func:`tune` with ``dedicated=False``).

``CERTKIT_MALLOC=default`` in the environment leaves glibc's settings alone (for comparison, or when the
retained memory matters more than the time); ``certkit`` (or unset) applies them; any other value is a
usage error (exit code 2).

The memory budget (:mod:`certkit.bounds.memory`) counts what the process uses, not what the
allocator keeps for reuse: :func:`held_free` is subtracted from the resident memory.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
_MIB = 1 << 20
_INT_MAX = (1 << 31) - 1


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


@functools.lru_cache(maxsize=None)
def _libc():
    """glibc, or None (another platform or C library); loaded once."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc's; musl has no mallopt
    except (OSError, AttributeError):
        return None
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _Mallinfo2
    return libc


def tune(dedicated: bool) -> bool:
    """Set this process's allocator (module docstring); True when it was set (glibc, and
    ``CERTKIT_MALLOC`` is not ``default``; :class:`~certkit.errors.UsageError` for a value other than
    ``default`` or ``certkit``). ``dedicated``: the process ends with its job (mmap off, trimming only
    beyond 2 GiB); otherwise the mmap threshold at its maximum (32 MiB) and trimming beyond 256 MiB. Dask's nannies start workers with
    ``MALLOC_TRIM_THRESHOLD_=65536``, which fixes the mmap threshold at 128 KiB: the bound computations
    then ran 2x slower in a worker (ACAS Xu 4_2 prop_2 in 2 parts: 67 s against 33 s; 32 s tuned)."""
    setting = os.environ.get("CERTKIT_MALLOC", "").strip().lower()
    if setting not in ("", "certkit", "default"):
        from .errors import UsageError

        raise UsageError(f"CERTKIT_MALLOC={setting!r}: expected 'default' (glibc's settings) or 'certkit'")
    libc = _libc()
    if libc is None or setting == "default":
        return False
    if dedicated:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX)  # mallopt takes a C int: 2 GiB - 1 at most
    else:
        libc.mallopt(M_MMAP_THRESHOLD, 32 * _MIB)
        libc.mallopt(M_TRIM_THRESHOLD, 256 * _MIB)
    return True


def held_free() -> int:
    """Bytes glibc holds free for reuse in this process's heaps (``mallinfo2().fordblks``; 0 where
    unknown). Freed pages it keeps stay resident, so they count in RSS without being in use."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    return 0 if fn is None else int(fn().fordblks)
