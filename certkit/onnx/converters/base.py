"""The converter registry and the helpers the converters share (:mod:`certkit.onnx.converters`)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...graph import ops
from ..importer import Context, Unsupported, Var

Converter = Callable[[Context, object, list, dict], list]
CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str):
    """Register ``fn`` as the converter of ``op_types`` (each op type at most once)."""
    def deco(fn: Converter) -> Converter:
        for t in op_types:
            if t in CONVERTERS:
                raise ValueError(f"duplicate converter for ONNX op {t}")
            CONVERTERS[t] = fn
        return fn
    return deco

def variable(x, what: str = "the data input") -> Var:
    if not isinstance(x, Var):
        raise Unsupported(f"{what} must be the variable tensor (a constant {what} with variable "
                          "parameters is not linear or not supported)")
    return x


def constant(x, what: str) -> np.ndarray:
    if isinstance(x, Var):
        raise Unsupported(f"{what} must be a constant")
    return np.asarray(x)


def flat(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a constant to ``shape`` and flatten it (float64)."""
    return np.broadcast_to(np.asarray(a, dtype=np.float64), shape).reshape(-1).copy()


def alias(v: Var, shape: tuple[int, ...]) -> Var:
    return Var(v.node, tuple(int(s) for s in shape))


def expand(ctx: Context, v: Var, shape: tuple[int, ...]) -> Var:
    """Broadcast a variable tensor to ``shape``."""
    shape = tuple(int(s) for s in shape)
    if v.shape == shape:
        return v
    idx = np.broadcast_to(np.arange(v.size).reshape(v.shape), shape).reshape(-1)
    if len(idx) == v.size and np.array_equal(idx, np.arange(v.size)):
        return alias(v, shape)
    return ctx.add(ops.Select(idx.astype(np.int64), v.size), [v], shape)


def broadcast_shape(*shapes) -> tuple[int, ...]:
    return tuple(int(s) for s in np.broadcast_shapes(*[tuple(s) for s in shapes]))


def scale(ctx: Context, v: Var, a, c, out_shape=None) -> Var:
    """``a * v + c`` with constants broadcast to the output shape."""
    a_arr = np.asarray(1.0 if a is None else a, dtype=np.float64)
    c_arr = None if c is None else np.asarray(c, dtype=np.float64)
    shape = out_shape or broadcast_shape(v.shape, a_arr.shape, () if c_arr is None else c_arr.shape)
    v = expand(ctx, v, shape)
    return ctx.add(ops.Scale(flat(a_arr, shape), None if c_arr is None else flat(c_arr, shape)), [v], shape)


def select_from_index(ctx: Context, v: Var, idx: np.ndarray, fill_value: float = 0.0) -> Var:
    """``y[i] = v[idx[i]]`` (``idx`` shaped like the output; -1 for the constant ``fill_value``)."""
    shape = idx.shape
    sources = idx.reshape(-1)
    if len(sources) == v.size and np.array_equal(sources, np.arange(v.size)):
        return alias(v, shape)
    fill = None
    if (sources < 0).any() and fill_value != 0.0:
        fill = np.where(sources < 0, float(fill_value), 0.0)
    return ctx.add(ops.Select(sources.astype(np.int64), v.size, fill), [v], shape)
