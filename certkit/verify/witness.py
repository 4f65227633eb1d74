"""Counterexample witnesses, re-executed with onnxruntime (:mod:`certkit.onnx.runner`; DESIGN.md section 1).

A ``sat`` verdict is only ever reported for an input ``x`` in the model's own precision
(float32, or float64 for a double model: the points onnxruntime sees exactly) that lies in
the property's input box (checked exactly, in float64) and whose onnxruntime
output satisfies every atom of some disjunct, ``C y <= d``, with zero tolerance.

One exception, on the box: a coordinate whose interval holds no number of the model's precision
(``lower == upper`` not representable in float32, as in VNN-LIB files that pin pixels to decimal
values) admits the rounding to nearest of its end points -- the value onnxruntime computes with
for every real input of that interval (:func:`inside_rounded`). Proofs cover those values too:
they bound the box rounded outward (:func:`certkit.bounds.fperror.round_outward`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..spec.spec import Property

if TYPE_CHECKING:
    from ..onnx.runner import OnnxRunner


@dataclass(frozen=True, eq=False)
class Witness:
    """A validated counterexample: input ``x`` (float32, flat), output ``y`` (onnxruntime),
    the property and disjunct it satisfies."""

    x: np.ndarray
    y: np.ndarray
    property_index: int
    disjunct_index: int


def to_float32_inside(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Round ``x`` to float32 while staying in [lower, upper] (checked in float64).

    Rounding to nearest may leave the box; such entries step one float32 ulp
    towards the inside. Where the box holds no float32 number the entry stays
    outside the box: callers check with :func:`inside` and drop such candidates.
    """
    xc = np.clip(np.asarray(x, dtype=np.float64), lower, upper)
    if dtype == np.float64:
        return xc
    nearest = xc.astype(np.float32)
    lo_bad = nearest.astype(np.float64) < lower
    x32 = np.where(lo_bad, np.nextafter(nearest, np.float32(np.inf)), nearest)
    hi_bad = x32.astype(np.float64) > upper
    x32 = np.where(hi_bad, np.nextafter(x32, np.float32(-np.inf)), x32)
    # an interval holding no float32: the rounding of the point itself (module docstring)
    return np.where(no_float32_in(lower, upper), nearest, x32)


def no_float32_in(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Where the non-empty interval ``[lower, upper]`` (float64) holds no float32 number (False for an
    empty or NaN interval: it admits nothing)."""
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    up = lo.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        up = np.where(up.astype(np.float64) < lo, np.nextafter(up, np.float32(np.inf)), up)
        return (up.astype(np.float64) > hi) & (lo <= hi)


def inside_rounded(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Membership of points ``x`` (b, n) of the model's precision in the box (float64, exact), where
    a coordinate whose interval holds no number of that precision may also be the rounding to
    nearest of either end point (module docstring)."""
    xs = np.atleast_2d(np.asarray(x, dtype=np.float64))
    ok = (xs >= lower) & (xs <= upper)
    if dtype != np.float64:
        lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        ends = (xs == lo.astype(np.float32).astype(np.float64)) | (xs == hi.astype(np.float32).astype(np.float64))
        ok |= no_float32_in(lo, hi) & ends
    return ok.all(axis=-1)


def inside(x32: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Exact membership of float32 points (b, n) in the box, as float64."""
    x = np.asarray(x32, dtype=np.float64)
    return ((x >= lower) & (x <= upper)).all(axis=-1)


def satisfied_disjunct(prop: Property, y: np.ndarray) -> int:
    """Index of the first disjunct whose every atom holds for output ``y`` (float64 check), or -1."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    for k, dj in enumerate(prop.disjuncts):
        if dj.C.shape[0] == 0:
            return k
        # zero coefficients contribute nothing, even against an infinite output (0 * inf is NaN)
        with np.errstate(invalid="ignore", over="ignore"):
            lhs = np.where(dj.C != 0, dj.C * y[None, :], 0.0).sum(axis=1)
        if bool((lhs <= dj.d).all()):  # NaN (inf - inf) satisfies nothing
            return k
    return -1


def run_alone(runner, x: np.ndarray) -> np.ndarray:
    """The output of one input run alone (a batch of 1), as a counterexample checker runs it (VNN-COMP's,
    ``certkit check``): onnxruntime's kernels may round a row of a batch differently from the same input
    alone (measured with onnxruntime 1.32 on this machine: a random Gemm/Floor/Cos/Abs net whose two
    outputs are equal for an input in batches of 2 to 50,000 and 1 ulp apart, the wrong way, alone --
    ``benchmarks/fuzz_certify.py``)."""
    return np.asarray(runner(np.asarray(x)[None]))[0]


def first_witness(runner, prop: Property, prop_index: int, x: np.ndarray, ys: np.ndarray) -> Witness | None:
    """The first of the inputs ``x`` whose output in the batch ``ys`` lies in a disjunct and still does when
    the input runs alone (:func:`run_alone`); its witness holds that output."""
    for xi, yi in zip(x, ys):
        if satisfied_disjunct(prop, yi) < 0:
            continue
        y1 = yi if len(x) == 1 else run_alone(runner, xi)
        k = satisfied_disjunct(prop, y1)
        if k >= 0:
            return Witness(np.asarray(xi).copy(), np.asarray(y1).copy(), prop_index, k)
    return None


def validate(runner: OnnxRunner, prop: Property, prop_index: int, candidates: np.ndarray) -> Witness | None:
    """Check candidate inputs (b, n) with onnxruntime; return the first real counterexample (one that also
    holds run alone: :func:`first_witness`)."""
    dtype = getattr(runner, "dtype", np.float32)
    cand = to_float32_inside(np.atleast_2d(candidates), prop.lower, prop.upper, dtype)
    ok = inside_rounded(cand, prop.lower, prop.upper, dtype)
    cand = cand[ok]
    if len(cand) == 0:
        return None
    return first_witness(runner, prop, prop_index, cand, runner(cand))
