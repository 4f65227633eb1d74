"""Counterexample witnesses, re-executed with onnxruntime (DESIGN.md section 1).

A ``sat`` verdict is only ever reported for an input ``x`` in the model's own precision
(float32, or float64 for a double model: the points onnxruntime sees exactly) that lies in
the property's input box (checked exactly, in float64) and whose onnxruntime
output satisfies every atom of some disjunct, ``C y <= d``, with zero tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec.spec import Property


@dataclass(frozen=True, eq=False)
class Witness:
    """A validated counterexample: input ``x`` (float32, flat), output ``y`` (onnxruntime),
    the property and disjunct it satisfies."""

    x: np.ndarray
    y: np.ndarray
    property_index: int
    disjunct_index: int


class OnnxRunner:
    """An onnxruntime session on the model file, evaluating flat float32 batches."""

    def __init__(self, path_or_bytes, input_shape: tuple[int, ...], input_name: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path_or_bytes, opts, providers=["CPUExecutionProvider"])
        self.input_shape = tuple(input_shape)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name or input_name
        self.batchable = len(inp.shape) > 0 and not isinstance(inp.shape[0], int)
        #: the input precision of the model (float32, or float64 for a double model)
        self.dtype = np.float64 if inp.type == "tensor(double)" else np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(b, n_inputs) -> (b, n_outputs), in the model's precision."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim == 1:
            x = x[None]
        if self.batchable and len(self.input_shape) > 0:
            shaped = x.reshape((x.shape[0],) + self.input_shape[1:])
            out = self.session.run(None, {self.input_name: shaped})[0]
            return np.asarray(out).reshape(x.shape[0], -1)
        outs = [np.asarray(self.session.run(None, {self.input_name: row.reshape(self.input_shape)})[0]).reshape(-1)
                for row in x]
        return np.stack(outs)


def to_float32_inside(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Round ``x`` to float32 while staying in [lower, upper] (checked in float64).

    Rounding to nearest may leave the box; such entries step one float32 ulp
    towards the inside. Where the box holds no float32 number the entry stays
    outside the box: callers check with :func:`inside` and drop such candidates.
    """
    xc = np.clip(np.asarray(x, dtype=np.float64), lower, upper)
    if dtype == np.float64:
        return xc
    x32 = xc.astype(np.float32)
    lo_bad = x32.astype(np.float64) < lower
    x32 = np.where(lo_bad, np.nextafter(x32, np.float32(np.inf)), x32)
    hi_bad = x32.astype(np.float64) > upper
    x32 = np.where(hi_bad, np.nextafter(x32, np.float32(-np.inf)), x32)
    return x32


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


def validate(runner: OnnxRunner, prop: Property, prop_index: int, candidates: np.ndarray) -> Witness | None:
    """Check candidate inputs (b, n) with onnxruntime; return the first real counterexample."""
    cand = to_float32_inside(np.atleast_2d(candidates), prop.lower, prop.upper, getattr(runner, "dtype", np.float32))
    ok = inside(cand, prop.lower, prop.upper)
    cand = cand[ok]
    if len(cand) == 0:
        return None
    ys = runner(cand)
    for x, y in zip(cand, ys):
        k = satisfied_disjunct(prop, y)
        if k >= 0:
            return Witness(x.copy(), np.asarray(y).copy(), prop_index, k)
    return None
