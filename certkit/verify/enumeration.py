"""Closing a small input box by running every input the model can see in it (DESIGN.md section 1).

onnxruntime never sees a real number: a user's input is rounded to the model's precision first
(to nearest, :func:`certkit.verify.witness.to_float32_inside`), so the inputs of a box that reach
the model are the float32 (or float64) numbers of each coordinate's interval -- finitely many. When
a sub-box of input splitting holds at most :data:`MAX_POINTS` of them, certkit runs them all in
onnxruntime and closes the box when every output lies outside every disjunct with the float64
row margin of the gate (:func:`certkit.bounds.fperror.row_margin`); an output inside a disjunct is
a counterexample, confirmed the usual way (:meth:`certkit.verify.query.Query.confirm`).

Why: the error terms that make a bound hold for every summation order onnxruntime might take
(:mod:`certkit.bounds.fperror`) are a worst case, and a property whose margin is smaller than them
cannot close by bounds however small the box. nn4sys's ``mscn_128d_dual`` compares two copies of
one net with a tolerance of 1e-5: the outputs' true margin near the end of the box is 1.9e-5 while
the error terms alone are 9.8e-5 (a 128 x 384 dense layer's ``gamma_385`` times its terms), so
input splitting bisected that corner forever. Counted, the corner holds a few thousand float32
inputs, which onnxruntime runs in milliseconds.

What an enumerated leaf asserts, stated: onnxruntime, as certkit's runner calls it (CPU provider,
one thread), computes those outputs for those inputs, deterministically, both for the input alone (a
batch of 1, as a counterexample checker runs it) and in the batch of the box's inputs: every point is run
both ways and the leaf keeps the smaller value of the two. A point's output can depend on its batch:
onnxruntime rounded a row of a batch 1 ulp away from the same input alone (a net of
``benchmarks/fuzz_certify.py``); until 2026-12-07 only the 32 points of least margin were re-run alone.
``certkit check`` re-runs every enumerated leaf (:func:`certkit.verify.input_split.recheck`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..bounds.fperror import row_margin
from .gate import domain_value
from .query import Query
from .witness import Witness, run_alone

#: boxes holding at most this many model-precision inputs are run point by point
MAX_POINTS = 4096

_BITS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _order(x: np.ndarray) -> np.ndarray:
    """Monotone integer keys of floats (``-0.0`` and ``0.0`` both 0): consecutive numbers differ by 1
    (sign and magnitude of the bit pattern as a signed integer)."""
    x = np.asarray(x)
    bits = x.view(_BITS[x.dtype]).astype(np.int64)
    return np.where(bits < 0, -(bits & np.int64(np.iinfo(_BITS[x.dtype]).max)), bits)


def _from_order(k: np.ndarray, dtype) -> np.ndarray:
    k = np.asarray(k, dtype=np.int64)
    if np.dtype(dtype) == np.float32:
        bits = np.where(k < 0, (-k) | 0x80000000, k).astype(np.uint32)
        return bits.view(np.float32)
    bits = np.where(k < 0, (-k).astype(np.uint64) | np.uint64(1 << 63), k.astype(np.uint64))
    return bits.view(np.float64)


def _inside(lo: np.ndarray, hi: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The smallest number of ``dtype`` >= ``lo`` and the largest <= ``hi`` (float64 end points)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        a, b = lo.astype(dtype), hi.astype(dtype)
        a = np.where(a.astype(np.float64) < lo, np.nextafter(a, dtype(np.inf)), a)
        b = np.where(b.astype(np.float64) > hi, np.nextafter(b, dtype(-np.inf)), b)
    return a, b


def _ranges(query: Query, lo: np.ndarray, hi: np.ndarray, dtype):
    """Per coordinate of boxes (b, n): the keys (:func:`_order`) of the first and last number of
    ``dtype`` that an input of the query's box rounds to and that lie in ``[lo, hi]`` -- those of
    ``[RN(lower), RN(upper)]`` (rounding to nearest is monotone) -- whether ``-0.0`` is one of them
    too (a negative input of the box that rounds to zero), and whether every bound is finite."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    finite = np.isfinite(lo) & np.isfinite(hi)
    a, b = _inside(np.where(finite, lo, 0.0), np.where(finite, hi, 0.0), dtype)
    qlo, qhi = np.asarray(query.lower, np.float64), np.asarray(query.upper, np.float64)
    with np.errstate(over="ignore"):
        a, b = np.maximum(a, qlo.astype(dtype)), np.minimum(b, qhi.astype(dtype))
    finite &= np.isfinite(a) & np.isfinite(b)
    ka, kb = _order(np.where(finite, a, 0)), _order(np.where(finite, b, 0))
    neg_zero = (ka <= 0) & (kb >= 0) & (lo < 0) & (qlo < 0)
    return ka, kb, neg_zero, finite


def _sizes(ka: np.ndarray, kb: np.ndarray, neg_zero: np.ndarray) -> np.ndarray:
    return np.clip(kb - ka + 1, 0, None).astype(np.float64) + neg_zero


def _fits(sizes: np.ndarray) -> np.ndarray:
    """Per box (..., n) of per-coordinate counts: at most :data:`MAX_POINTS` points in all (a coordinate
    of none makes a box of none; summed in logs, so wide boxes do not overflow)."""
    with np.errstate(divide="ignore"):
        return np.log(sizes).sum(axis=-1) <= np.log(MAX_POINTS) + 1e-9


def axes(query: Query, lo: np.ndarray, hi: np.ndarray, dtype) -> list[np.ndarray] | None:
    """Per coordinate, the numbers of ``dtype`` the box ``[lo, hi]`` (n,) holds of those the query's
    inputs round to (:func:`_ranges`). None when they are more than :data:`MAX_POINTS` in all or a
    bound is not finite; ``[]`` when some coordinate has none."""
    dtype = np.dtype(dtype).type
    ka, kb, neg_zero, finite = _ranges(query, np.asarray(lo)[None], np.asarray(hi)[None], dtype)
    ka, kb, neg_zero = ka[0], kb[0], neg_zero[0]
    if not finite.all():
        return None
    size = _sizes(ka, kb, neg_zero)
    if (size == 0).any():
        return []  # no input of the query reaches this box
    if not _fits(size):
        return None
    out = []
    for i in range(len(ka)):
        v = _from_order(np.arange(ka[i], kb[i] + 1), dtype)
        if neg_zero[i]:
            v = np.concatenate([v, np.array([-0.0], dtype=dtype)])
        out.append(v)
    return out


def small(query: Query, lo: np.ndarray, hi: np.ndarray, dtype) -> np.ndarray:
    """(b,) for boxes (b, n): does the box hold at most :data:`MAX_POINTS` of the inputs :func:`axes` gives?"""
    ka, kb, neg_zero, finite = _ranges(query, lo, hi, np.dtype(dtype).type)
    return finite.all(axis=1) & _fits(_sizes(ka, kb, neg_zero))


def points(ax: list[np.ndarray]) -> np.ndarray:
    """Every point of the grid ``ax`` (k, n)."""
    x = np.stack([v[:1] for v in ax], axis=1)  # (1, n)
    for i, v in enumerate(ax):
        if len(v) > 1:  # every point so far with each value of coordinate i
            x = np.repeat(x, len(v), axis=0)
            x[:, i] = np.tile(v, len(x) // len(v))
    return x


def values(query: Query, y: np.ndarray) -> np.ndarray:
    """Per output (k,): the gate's domain value of a single point, ``min_k max_i (C_i y - d_i -
    margin_i)`` over disjuncts k and their rows i (``-inf`` where not finite)."""
    yt = torch.as_tensor(np.asarray(y, np.float64))
    C, d = torch.as_tensor(query.C, dtype=torch.float64), torch.as_tensor(query.d, dtype=torch.float64)
    low = yt @ C.T
    margin = row_margin(C, d, yt, yt)
    return domain_value(low - d, margin, torch.as_tensor(query.owner), query.n_disjuncts).numpy()


def run_box(query: Query, lo: np.ndarray, hi: np.ndarray) -> tuple[float, Witness | None] | None:
    """Run every input of the box ``[lo, hi]`` (:func:`axes`): ``(value, witness)`` -- the least
    point value (> 0: the box is closed) or a confirmed counterexample; None when the box holds too
    many inputs or there is no runner (a box query only)."""
    runner = query.runner
    if runner is None or not query.is_box:
        return None
    dtype = getattr(runner, "dtype", np.float32)
    ax = axes(query, lo, hi, dtype)
    if ax is None:
        return None
    if not ax:  # no input reaches the box: nothing to violate (the least value of none, kept finite for the gate)
        return float(np.finfo(np.float64).max), None
    x = points(ax)
    v = values(query, runner(x))
    if len(x) > 1:  # every point once more alone (module docstring): the leaf keeps the worse of the two
        v = np.minimum(v, values(query, np.stack([run_alone(runner, p) for p in x])))
    bad = np.flatnonzero(~(v > 0))
    if bad.size:
        bad = bad[np.argsort(v[bad])]
        w = query.confirm(x[bad[:64]])
        if w is not None:
            return float(v.min()), w
    return float(v.min()), None
