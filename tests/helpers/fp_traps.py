"""Floating-point trap networks (Jia and Rinard, SAS 2021): nets whose real-valued output is
identically 0 on the input box while onnxruntime's float32 (or float64) output is not.

Each builder returns a :class:`Trap`: the ONNX model, the input box, and a point of the box where
onnxruntime's output exceeds the threshold of the property "unsafe iff Y_0 >= threshold" -- so the
property is violated for the model as it runs, while every real-arithmetic argument proves it.
A verifier that answers ``unsat`` on a trap is wrong.

Families (``FAMILIES``):

* ``cancel``: pairs of ReLU neurons ``relu(w.x + B)`` and ``relu(w.x + B - D)`` with large ``w``,
  ``B`` and ``D`` (the two sums round at different binades), output ``sum (h1 - h2 - D)``;
* ``deep``: the ``cancel`` residue split into its positive and negative parts and amplified by a
  narrow chain of ReLU layers of gain ``g`` (real output 0, float32 output the residue times g^L);
* ``conv``: the ``cancel`` construction as a convolution with a large kernel over a 1-channel image,
  two output channels, reduced by a dense layer;
* ``float64``: ``cancel`` in double precision with weights ~1e14 and biases ~1e16.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


@dataclass
class Trap:
    name: str
    model: onnx.ModelProto
    lower: np.ndarray
    upper: np.ndarray
    threshold: float
    witness: np.ndarray  # a point of the box (model dtype) with onnxruntime output >= threshold
    output: float  # onnxruntime's output there

    def vnnlib(self) -> str:
        n = len(self.lower)
        lines = [f"(declare-const X_{i} Real)" for i in range(n)] + ["(declare-const Y_0 Real)"]
        for i in range(n):
            lines += [f"(assert (>= X_{i} {float(self.lower[i])!r}))", f"(assert (<= X_{i} {float(self.upper[i])!r}))"]
        lines.append(f"(assert (>= Y_0 {float(self.threshold)!r}))")
        return "\n".join(lines) + "\n"


def _model(nodes, inits, n_in: int, dtype=np.float32, in_shape=None, opset: int = 13) -> onnx.ModelProto:
    et = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    shape = list(in_shape or [1, n_in])
    g = helper.make_graph(nodes, "trap", [helper.make_tensor_value_info("x", et, shape)],
                          [helper.make_tensor_value_info("y", et, [1, 1])],
                          [numpy_helper.from_array(np.asarray(v, dtype=dtype), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _dense(name: str, x: str, W: np.ndarray, b: np.ndarray, out: str, inits: dict) -> onnx.NodeProto:
    inits[f"{name}_W"], inits[f"{name}_b"] = W, b
    return helper.make_node("Gemm", [x, f"{name}_W", f"{name}_b"], [out], transB=1)


def _cancel_layer(rng, n_in: int, pairs: int, scale_w: float, bias: float, dtype):
    """First layer (2 * pairs neurons) and the output weights/bias that cancel it exactly."""
    W = rng.uniform(0.5, 1.0, (pairs, n_in)) * scale_w
    B = (bias * rng.uniform(1.0, 1.9, pairs)).astype(dtype).astype(np.float64)
    # an integer D puts B - D in a lower binade, exactly representable, so the real output is 0
    D = np.round(B * rng.uniform(0.55, 0.75, pairs))
    W1 = np.concatenate([W, W]).astype(dtype)
    b1 = np.concatenate([B, B - D]).astype(dtype)
    assert np.array_equal(b1[:pairs].astype(np.float64) - b1[pairs:].astype(np.float64), D)
    return W1, b1, D


def cancel(seed: int = 0, n_in: int = 2, pairs: int = 4, scale_w: float = 1e4, bias: float = 1e5,
           dtype=np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    W1, b1, D = _cancel_layer(rng, n_in, pairs, scale_w, bias, dtype)
    inits: dict = {}
    W2 = np.concatenate([np.ones(pairs), -np.ones(pairs)])[None]
    nodes = [_dense("l1", "x", W1, b1, "h", inits), helper.make_node("Relu", ["h"], ["r"]),
             _dense("l2", "r", W2.astype(dtype), np.array([-D.sum()]).astype(dtype), "y", inits)]
    assert float(D.sum()) == float(np.asarray(D.sum(), dtype))  # the output bias is exact too
    return _model(nodes, inits, n_in, dtype)


def deep(seed: int = 0, n_in: int = 2, pairs: int = 2, layers: int = 6, gain: float = 8.0,
         scale_w: float = 1e4, bias: float = 1e5) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    W1, b1, D = _cancel_layer(rng, n_in, pairs, scale_w, bias, np.float32)
    inits: dict = {}
    W2 = np.concatenate([np.ones(pairs), -np.ones(pairs)])[None]
    # residue d (real 0): p = relu(d), n = relu(-d)
    Wd = np.concatenate([W2, -W2]).astype(np.float32)
    bd = np.array([-D.sum(), D.sum()], np.float32)
    nodes = [_dense("l1", "x", W1, b1, "h", inits), helper.make_node("Relu", ["h"], ["r"]),
             _dense("ld", "r", Wd, bd, "d", inits), helper.make_node("Relu", ["d"], ["pn0"])]
    for k in range(layers):
        nodes += [_dense(f"g{k}", f"pn{k}", np.eye(2, dtype=np.float32) * gain, np.zeros(2, np.float32), f"z{k}", inits),
                  helper.make_node("Relu", [f"z{k}"], [f"pn{k + 1}"])]
    nodes.append(_dense("out", f"pn{layers}", np.array([[1.0, -1.0]], np.float32), np.zeros(1, np.float32), "y", inits))
    return _model(nodes, inits, n_in)


def conv(seed: int = 0, side: int = 7, kernel: int = 7, scale_w: float = 1e3, bias: float = 1e5) -> onnx.ModelProto:
    """A 1-channel side x side image, a kernel x kernel convolution with two output channels of equal
    large weights and biases B and B - D; output: sum over positions of (c1 - c2 - D)."""
    rng = np.random.default_rng(seed)
    w = (rng.uniform(0.5, 1.0, (1, 1, kernel, kernel)) * scale_w).astype(np.float32)
    B = float(np.float32(bias * rng.uniform(1.0, 1.9)))
    D = float(np.round(B * rng.uniform(0.55, 0.75)))  # an integer: B - D is exact in float32
    b = np.array([B, B - D], np.float32)
    assert float(b[0]) - float(b[1]) == D
    inits: dict = {"cw": np.concatenate([w, w]), "cb": b}
    out = side - kernel + 1
    npos = out * out
    W2 = np.concatenate([np.ones(npos), -np.ones(npos)])[None].astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             _dense("l2", "f", W2, np.array([-D * npos], np.float32), "y", inits)]
    return _model(nodes, inits, side * side, np.float32, in_shape=[1, 1, side, side])


def float64(seed: int = 0) -> onnx.ModelProto:
    return cancel(seed, n_in=2, pairs=4, scale_w=1e14, bias=1e16, dtype=np.float64)


FAMILIES = {"cancel": cancel, "deep": deep, "conv": conv, "float64": float64}


def ort_outputs(model: onnx.ModelProto, xs: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    return np.array([float(s.run(None, {inp.name: x.astype(dtype).reshape(shape)})[0].reshape(-1)[0]) for x in xs])


def make_trap(family: str, seed: int = 0, samples: int = 2000, **kw) -> Trap | None:
    """Build a trap of ``family`` and find, by sampling the box [0, 1]^n in the model's precision, a
    point where onnxruntime's output is largest; the threshold is half of it. None when onnxruntime's
    output is never positive (no trap with this seed)."""
    model = FAMILIES[family](seed, **kw)
    inp = model.graph.input[0].type.tensor_type
    n = int(np.prod([d.dim_value for d in inp.shape.dim]))
    dtype = np.float64 if inp.elem_type == TensorProto.DOUBLE else np.float32
    rng = np.random.default_rng(seed + 1000)
    xs = rng.uniform(0.0, 1.0, (samples, n)).astype(dtype)
    ys = ort_outputs(model, xs)
    k = int(np.argmax(ys))
    if not ys[k] > 0:
        return None
    return Trap(f"{family}-{seed}", model, np.zeros(n), np.ones(n), float(ys[k]) / 2, xs[k], float(ys[k]))

