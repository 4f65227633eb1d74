"""Verified robustness before and after sparsification, in paper 002's Table 1 layout.

For each radius delta, certkit's data-set certification (DESIGN.md section 1; DeepPoly by
default, the verifier of paper 002's ERAN columns) runs on the original and on the
sparsified net over the same test samples: verified % and mean time per sample.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..model import Model
from ..verify.dataset import certify_dataset


@dataclass(frozen=True)
class VerifyRow:
    eps: float
    verified_orig: int
    verified_new: int
    total: int
    time_orig: float  # mean seconds per sample
    time_new: float


def verify_table(orig: Model, new: Model, x: np.ndarray, y: np.ndarray, eps_list: list[float],
                 domain: tuple[float, float] | None, backend: str = "deeppoly",
                 batch_size: int = 50) -> list[VerifyRow]:
    rows = []
    for e in eps_list:
        out = []
        for m in (orig, new):
            t = time.monotonic()
            r = certify_dataset(m, x, y, e, "linf", domain, backend, batch_size)
            out.append((r.certified, (time.monotonic() - t) / max(len(y), 1)))
        rows.append(VerifyRow(e, out[0][0], out[1][0], len(y), out[0][1], out[1][1]))
    return rows


def format_table(rows: list[VerifyRow]) -> str:
    head = "".join(f"{'delta = ' + format(r.eps, 'g'):>16}" for r in rows)
    sub = "".join(f"{'Org':>8}{'VNN':>8}" for _ in rows)
    pct = "".join(f"{100 * r.verified_orig / max(r.total, 1):>8.1f}{100 * r.verified_new / max(r.total, 1):>8.1f}"
                  for r in rows)
    tms = "".join(f"{r.time_orig:>8.3f}{r.time_new:>8.3f}" for r in rows)
    return "\n".join([f"{'':<16}{head}", f"{'':<16}{sub}", f"{'verified (%)':<16}{pct}",
                      f"{'mean time (s)':<16}{tms}"])
