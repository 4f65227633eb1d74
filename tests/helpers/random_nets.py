"""Seeded builders of random small IR graphs for the soundness tests and benchmark.

Every builder takes a ``seed`` and returns a :class:`certkit.graph.graph.Graph`
built directly from canonical ops (``NETS``), or, for ``onnx_*``, imported from
an ONNX model made with ``onnx.helper`` (``ONNX_NETS``). The weights are scaled
so that, on inputs in [0, 1], a good share of the neurons is unstable (the
interesting case for the relaxations).

Covered: Dense (also with ``rows > 1``), Conv (stride, asymmetric padding,
dilation, groups), Scale, Sum (residual DAG, N-activation), Concat (plain and
interleaved ``perm``), Select (permutation, slicing, repeats, constant fill),
MaxGroup (max-pool windows with padding, Max of two tensors), and every
activation: relu, leaky_relu (slopes 0.01, 0.3, 1, 2, -0.5), sigmoid, tanh,
softplus, clip (finite and one-sided bounds), abs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from certkit.graph import ops
from certkit.graph.graph import Graph, Node

ACTIVATIONS = ("relu", "leaky_relu", "leaky_relu_neg", "leaky_relu_steep", "sigmoid", "tanh", "softplus",
               "clip", "abs")


class Builder:
    """Appends nodes; ``add`` returns the new node's index."""

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator):
        self.nodes: list[Node] = [Node("input", ops.Input(), ())]
        self.shapes: list[tuple[int, ...]] = [tuple(in_shape)]
        self.rng = rng

    def size(self, i: int) -> int:
        return int(np.prod(self.shapes[i]))

    def add(self, op: ops.Op, inputs: tuple[int, ...] | list[int] | int, shape: tuple[int, ...]) -> int:
        inputs = (inputs,) if isinstance(inputs, int) else tuple(inputs)
        self.nodes.append(Node(f"{op.kind}_{len(self.nodes)}", op, inputs))
        self.shapes.append(tuple(int(s) for s in shape))
        return len(self.nodes) - 1

    def graph(self, output: int | None = None) -> Graph:
        out = len(self.nodes) - 1 if output is None else output
        return Graph(tuple(self.nodes), tuple(self.shapes), out)

    # -- layers ------------------------------------------------------------------
    def dense(self, x: int, n_out: int, gain: float = 1.5, bias: bool = True) -> int:
        n_in = self.size(x)
        w = self.rng.normal(0, gain / np.sqrt(n_in), (n_out, n_in))
        b = self.rng.normal(0, 0.5, n_out) if bias else None
        return self.add(ops.Dense(w, b), x, (1, n_out))

    def act(self, x: int, kind: str) -> int:
        n = self.size(x)
        return self.add(make_activation(kind, n, self.rng), x, self.shapes[x])

    def conv(self, x: int, c_out: int, k: int = 3, stride: int = 1, pads=(0, 0, 0, 0), dil: int = 1,
             groups: int = 1, gain: float = 1.5) -> int:
        c_in, h, w = self.shapes[x][1:]
        fan_in = c_in // groups * k * k
        wt = self.rng.normal(0, gain / np.sqrt(fan_in), (c_out, c_in // groups, k, k))
        b = self.rng.normal(0, 0.3, c_out)
        ho = (h + pads[0] + pads[2] - dil * (k - 1) - 1) // stride + 1
        wo = (w + pads[1] + pads[3] - dil * (k - 1) - 1) // stride + 1
        op = ops.Conv(wt, b, (c_in, h, w), (c_out, ho, wo), (stride, stride), tuple(pads), (dil, dil), groups)
        return self.add(op, x, (1, c_out, ho, wo))

    def maxpool(self, x: int, k: int = 2, stride: int = 2, pads=(0, 0, 0, 0)) -> int:
        c, h, w = self.shapes[x][1:]
        idx, (ho, wo) = window_index(c, h, w, k, stride, pads)
        return self.add(ops.MaxGroup(idx), x, (1, c, ho, wo))

    def avgpool_dense(self, x: int, k: int = 2, stride: int = 2) -> int:
        c, h, w = self.shapes[x][1:]
        idx, (ho, wo) = window_index(c, h, w, k, stride, (0, 0, 0, 0))
        m = np.zeros((len(idx), c * h * w))
        for r, row in enumerate(idx):
            m[r, row[row >= 0]] = 1.0 / (row >= 0).sum()
        return self.add(ops.Dense(m, None), x, (1, c, ho, wo))

    def avgpool_conv(self, x: int, k: int = 2, stride: int = 2) -> int:
        c, h, w = self.shapes[x][1:]
        wt = np.full((c, 1, k, k), 1.0 / (k * k))
        ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
        op = ops.Conv(wt, None, (c, h, w), (c, ho, wo), (stride, stride), (0, 0, 0, 0), (1, 1), c)
        return self.add(op, x, (1, c, ho, wo))


def window_index(c: int, h: int, w: int, k: int, stride: int, pads) -> tuple[np.ndarray, tuple[int, int]]:
    """MaxPool windows as a MaxGroup index matrix (c*ho*wo, k*k), -1 for padding."""
    t, l, b, r = pads
    idx = np.pad(np.arange(c * h * w).reshape(c, h, w), ((0, 0), (t, b), (l, r)), constant_values=-1)
    ho, wo = (h + t + b - k) // stride + 1, (w + l + r - k) // stride + 1
    cols = []
    for i in range(k):
        for j in range(k):
            cols.append(idx[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride].reshape(-1))
    out = np.stack(cols, 1).astype(np.int64)
    assert (out >= 0).any(axis=1).all(), "a pooling window lies entirely in the padding"
    return out, (ho, wo)


def make_activation(kind: str, n: int, rng: np.random.Generator) -> ops.Op:
    if kind == "relu":
        return ops.Relu()
    if kind == "leaky_relu":
        return ops.LeakyRelu(float(rng.choice([0.01, 0.3, 1.0])))
    if kind == "leaky_relu_neg":
        return ops.LeakyRelu(-0.5)
    if kind == "leaky_relu_steep":
        return ops.LeakyRelu(2.0)
    if kind == "sigmoid":
        return ops.Sigmoid()
    if kind == "tanh":
        return ops.Tanh()
    if kind == "softplus":
        return ops.Softplus()
    if kind == "abs":
        return ops.Abs()
    if kind == "clip":
        lo = rng.normal(-0.3, 0.5, n)
        hi = lo + rng.uniform(0.0, 1.5, n)
        lo[rng.random(n) < 0.2] = -np.inf
        hi[rng.random(n) < 0.2] = np.inf
        return ops.Clip(lo, hi)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- builders


def mlp(act: str, seed: int, sizes: tuple[int, ...] = (5, 12, 10, 4)) -> Graph:
    """Dense -> act -> ... -> Dense; ``act="mixed"`` picks a different activation per layer."""
    rng = np.random.default_rng(seed)
    b = Builder((1, sizes[0]), rng)
    x = 0
    kinds = list(rng.permutation(ACTIVATIONS)) if act == "mixed" else [act] * len(sizes)
    for k, n in enumerate(sizes[1:-1]):
        x = b.act(b.dense(x, n), kinds[k % len(kinds)])
    b.dense(x, sizes[-1])
    return b.graph()


def conv_net(seed: int) -> Graph:
    """Conv(pad 1) -> relu -> Conv(stride 2, asymmetric pads, groups 2) -> relu -> maxpool(padded)
    -> avgpool (depthwise Conv) -> flatten -> Dense -> relu -> Dense."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 1, 6, 6), rng)
    x = b.act(b.conv(0, 4, 3, 1, (1, 1, 1, 1)), "relu")
    x = b.act(b.conv(x, 4, 3, 2, (1, 0, 0, 1), groups=2), "relu")
    x = b.maxpool(x, 2, 1, (0, 0, 1, 1))
    x = b.avgpool_conv(x, 2, 1)
    x = b.act(b.dense(x, 8), "relu")
    b.dense(x, 4)
    return b.graph()


def conv_net2(seed: int) -> Graph:
    """Conv(dilation 2) -> leaky_relu -> maxpool(stride 2) -> Conv(stride 2) -> tanh -> avgpool (Dense)
    -> Dense."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 2, 6, 6), rng)
    x = b.act(b.conv(0, 4, 3, 1, (2, 2, 2, 2), dil=2), "leaky_relu")
    x = b.maxpool(x, 2, 2)
    x = b.act(b.conv(x, 6, 2, 1, (0, 0, 1, 1)), "tanh")
    x = b.avgpool_dense(x, 2, 1)
    b.dense(x, 3)
    return b.graph()


def residual_net(seed: int) -> Graph:
    """y = Dense(relu(Dense(relu(Dense x)) + Dense x)): a DAG with skip connections, fan-out,
    two activations in a row and a dead branch (not on the output's path)."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 5), rng)
    h = b.act(b.dense(0, 10), "relu")
    a = b.dense(h, 8)
    skip = b.dense(0, 8)
    s = b.add(ops.Sum((1.0, 0.7)), (a, skip), (1, 8))
    h2 = b.act(b.act(s, "relu"), "tanh")  # tanh(relu(.))
    h3 = b.act(b.dense(h2, 8), "sigmoid")
    b.act(b.dense(h, 3), "relu")  # dead branch
    s2 = b.add(ops.Sum((1.0, -1.0)), (h3, s), (1, 8))  # second skip over two layers
    out = b.dense(s2, 4)
    b.act(b.dense(out, 2), "abs")  # dead nodes after the output
    return b.graph(out)


def concat_net(seed: int) -> Graph:
    """Two branches (relu / tanh) concatenated plainly and interleaved (Concat.perm); the
    output is an activation (tanh)."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 5), rng)
    a = b.act(b.dense(0, 6), "relu")
    c = b.act(b.dense(0, 4), "tanh")
    cat = b.add(ops.Concat((6, 4)), (a, c), (1, 10))
    h = b.act(b.dense(cat, 6), "relu")
    perm = rng.permutation(12)
    cat2 = b.add(ops.Concat((6, 6), perm), (h, b.dense(0, 6)), (1, 12))
    h2 = b.act(cat2, "abs")
    b.act(b.dense(h2, 4), "tanh")
    return b.graph()


def select_net(seed: int) -> Graph:
    """Select as permutation, slice with repeats, and constant fill (Pad)."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 6), rng)
    h = b.act(b.dense(0, 10), "relu")
    perm = b.add(ops.Select(rng.permutation(10).astype(np.int64), 10), h, (1, 10))
    idx = np.concatenate([rng.integers(0, 10, 7), [-1, -1]]).astype(np.int64)  # slice + repeats + pad
    fill = np.where(idx < 0, rng.normal(0, 1, 9), 0.0)
    sl = b.add(ops.Select(idx, 10, fill), perm, (1, 9))
    h2 = b.act(b.dense(sl, 8), "leaky_relu")
    sel_in = b.add(ops.Select(np.array([5, 0, 3, 3, 1], dtype=np.int64), 6), 0, (1, 5))  # slice of the input
    s = b.add(ops.Sum((1.0, 1.0)), (b.dense(h2, 5), sel_in), (1, 5))
    b.dense(b.act(s, "relu"), 3)
    return b.graph()


def scale_net(seed: int) -> Graph:
    """Scale (input normalisation, BatchNorm-like, negative and zero factors) around activations."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 5), rng)
    x = b.add(ops.Scale(1.0 / rng.uniform(0.2, 0.5, 5), -rng.uniform(0, 1, 5)), 0, (1, 5))
    h = b.act(b.dense(x, 8, gain=0.7), "relu")
    sc = rng.normal(0, 1.5, 8)
    sc[0] = 0.0
    h = b.add(ops.Scale(sc, rng.normal(0, 0.5, 8)), h, (1, 8))
    h = b.act(h, "softplus")
    h = b.add(ops.Scale(-np.abs(rng.normal(1, 0.3, 8)), None), h, (1, 8))
    h = b.act(b.dense(h, 6), "clip")
    b.dense(h, 3)
    return b.graph()


def max_net(seed: int) -> Graph:
    """Max of two tensors (Concat + MaxGroup), Min via negation, and a GroupSort-like max."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 5), rng)
    a, c = b.dense(0, 6), b.act(b.dense(0, 6), "relu")
    cat = b.add(ops.Concat((6, 6)), (a, c), (1, 12))
    idx = np.stack([np.arange(6), np.arange(6) + 6], 1).astype(np.int64)
    m = b.add(ops.MaxGroup(idx), cat, (1, 6))  # Max(a, relu(c))
    d = b.dense(m, 6)
    neg = b.add(ops.Scale(-np.ones(6), None), d, (1, 6))
    negs = b.add(ops.Scale(-np.ones(6), None), b.dense(0, 6), (1, 6))
    cat2 = b.add(ops.Concat((6, 6), rng.permutation(12)), (neg, negs), (1, 12))
    perm_inv = np.argsort(np.asarray(b.nodes[cat2].op.perm))
    idx2 = np.stack([perm_inv[np.arange(6)], perm_inv[np.arange(6) + 6]], 1).astype(np.int64)
    mn = b.add(ops.Scale(-np.ones(6), None), b.add(ops.MaxGroup(idx2), cat2, (1, 6)), (1, 6))  # Min(d, .)
    g = b.dense(mn, 8)
    idx3 = np.array([[0, 1, 2], [2, 3, -1], [4, 5, 6], [7, -1, -1], [1, 7, 3]], dtype=np.int64)
    gm = b.add(ops.MaxGroup(idx3), g, (1, 5))  # overlapping groups with padding
    b.dense(gm, 3)
    return b.graph()


def n_activation_net(seed: int) -> Graph:
    """A Clip on the input itself, then the N-shaped activation x - 2 clip(x, t1, t2)
    (Clip + Sum), twice."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 5), rng)
    x = b.add(ops.Clip(np.full(5, 0.2), np.full(5, 0.7)), 0, (1, 5))
    for n in (8, 6):
        z = b.dense(x, n)
        t1 = rng.normal(-0.3, 0.3, n)
        t2 = t1 + rng.uniform(0.1, 1.0, n)
        cl = b.add(ops.Clip(t1, t2), z, (1, n))
        x = b.add(ops.Sum((1.0, -2.0)), (z, cl), (1, n))
    b.dense(x, 3)
    return b.graph()


def matmul_rows_net(seed: int) -> Graph:
    """Dense with ``rows > 1`` (a MatMul on a (1, r, n) tensor) and tanh/abs."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 3, 4), rng)
    w = rng.normal(0, 0.8, (5, 4))
    x = b.add(ops.Dense(w, rng.normal(0, 0.3, 5), rows=3), 0, (1, 3, 5))
    x = b.act(x, "tanh")
    w2 = rng.normal(0, 0.8, (2, 5))
    x = b.add(ops.Dense(w2, None, rows=3), x, (1, 3, 2))
    x = b.act(x, "abs")
    b.dense(x, 4)
    return b.graph()


def _window_kernel(h: int, w: int, k: int) -> np.ndarray:
    """Symmetric k x k window kernel on an h x w image, 1/(k^2 - 1) per neighbour."""
    yy, xx = np.divmod(np.arange(h * w), w)
    near = (np.abs(yy[:, None] - yy[None]) <= k // 2) & (np.abs(xx[:, None] - xx[None]) <= k // 2)
    np.fill_diagonal(near, False)
    return near / (k * k - 1.0)


def ibnn_net(seed: int, q: float = 0.8, eta: float = 1.0, K: int = 12, conv: bool = False) -> Graph:
    """Dense (or Conv) -> implicit-bias layer (paper 003; contraction number ``q``, K steps of damping
    ``eta``; uniform kernel, or a 3 x 3 window per channel) -> relu -> Dense."""
    rng = np.random.default_rng(seed)
    if conv:
        b = Builder((1, 1, 6, 6), rng)
        x = b.conv(0, 2, k=3, stride=1, pads=(0, 0, 0, 0))
        groups, m = 2, 16
        w = _window_kernel(4, 4, 3)
    else:
        b = Builder((1, 5), rng)
        x = b.dense(0, 8, gain=3.0)
        groups, m = 1, 8
        w = np.full((m, m), 1.0 / (m - 1))
        np.fill_diagonal(w, 0.0)
    alpha = 10.0
    r = float((w.sum(1) - np.diag(w)).max())
    c = float(np.float32(q / (2 * alpha * r)))
    op = ops.ImplicitLayer(c=c, alpha=alpha, eta=eta, K=K, w=w, groups=groups, m=m, lam=c, beta=1.0)
    x = b.add(op, x, b.shapes[x])
    x = b.act(x, "relu")
    b.dense(x, 3)
    return b.graph()


def single_dense(seed: int, n_in: int = 6, n_out: int = 5) -> Graph:
    rng = np.random.default_rng(seed)
    b = Builder((1, n_in), rng)
    b.dense(0, n_out)
    return b.graph()


# ----------------------------------------------------------------------------- ONNX-built nets


def _onnx_model(nodes, x_shape, y_shape, inits: dict, opset: int = 13):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(nodes, "random_net", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(y_shape))],
                          initializer=[numpy_helper.from_array(np.asarray(v, dtype=np.float32), k)
                                       for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def onnx_conv_model(seed: int):
    """Normalise -> Conv(stride 2, pads) -> BatchNorm -> Relu -> MaxPool -> Flatten -> Gemm -> LeakyRelu
    -> Gemm, as an ONNX model."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Sub", ["X", "mean"], ["x1"]),
        helper.make_node("Div", ["x1", "std"], ["x2"]),
        helper.make_node("Conv", ["x2", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Flatten", ["p1"], ["f"]),
        helper.make_node("Gemm", ["f", "W2", "B2"], ["d1"], transB=1),
        helper.make_node("LeakyRelu", ["d1"], ["a2"], alpha=0.1),
        helper.make_node("Gemm", ["a2", "W3", "B3"], ["Y"], transB=1),
    ]
    inits = {
        "mean": np.array(0.4).reshape(1, 1, 1, 1), "std": np.array(0.3).reshape(1, 1, 1, 1),
        "W1": rng.normal(0, 0.4, (3, 1, 3, 3)), "B1": rng.normal(0, 0.2, 3),
        "g": rng.uniform(0.5, 1.5, 3), "beta": rng.normal(0, 0.2, 3), "mu": rng.normal(0, 0.2, 3),
        "var": rng.uniform(0.5, 2, 3),
        "W2": rng.normal(0, 0.5, (6, 3 * 2 * 2)), "B2": rng.normal(0, 0.2, 6),
        "W3": rng.normal(0, 0.5, (3, 6)), "B3": rng.normal(0, 0.2, 3),
    }
    return _onnx_model(nodes, (1, 1, 6, 6), (1, 3), inits)


def onnx_mlp_model(seed: int):
    """Gemm -> Relu, Gemm -> Tanh, Max of both, Min with a constant, Clip, Sigmoid, Abs, Add of
    branches, Gemm, as an ONNX model."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", ["X", "W1", "B1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["X", "W2", "B2"], ["h2"], transB=1),
        helper.make_node("Tanh", ["h2"], ["t2"]),
        helper.make_node("Max", ["r1", "t2"], ["m"]),
        helper.make_node("Min", ["m", "cap"], ["mc"]),
        helper.make_node("MatMul", ["mc", "W3"], ["h3"]),
        helper.make_node("Clip", ["h3", "lo", "hi"], ["c3"]),
        helper.make_node("Sigmoid", ["h3"], ["s3"]),
        helper.make_node("Abs", ["h3"], ["a3"]),
        helper.make_node("Add", ["c3", "s3"], ["cs"]),
        helper.make_node("Sub", ["cs", "a3"], ["csa"]),
        helper.make_node("Gemm", ["csa", "W4", "B4"], ["Y"], transB=1),
    ]
    inits = {
        "W1": rng.normal(0, 1, (6, 4)), "B1": rng.normal(0, 0.3, 6),
        "W2": rng.normal(0, 1, (6, 4)), "B2": rng.normal(0, 0.3, 6),
        "cap": np.array([0.8]), "W3": rng.normal(0, 0.6, (6, 5)),
        "lo": np.array(-0.2), "hi": np.array(0.5),
        "W4": rng.normal(0, 0.7, (3, 5)), "B4": rng.normal(0, 0.2, 3),
    }
    return _onnx_model(nodes, (1, 4), (1, 3), inits)


def onnx_net(name: str, seed: int) -> Graph:
    from certkit.onnx.importer import import_model

    return import_model({"onnx_conv": onnx_conv_model, "onnx_mlp": onnx_mlp_model}[name](seed))


# ----------------------------------------------------------------------------- registry

NETS: dict[str, Callable[[int], Graph]] = {
    **{f"mlp_{a}": (lambda seed, a=a: mlp(a, seed)) for a in ACTIVATIONS + ("mixed",)},
    "mlp_relu_deep": lambda seed: mlp("relu", seed, (4, 10, 10, 10, 10, 3)),
    "conv": conv_net,
    "conv2": conv_net2,
    "residual": residual_net,
    "concat": concat_net,
    "select": select_net,
    "scale": scale_net,
    "max": max_net,
    "n_activation": n_activation_net,
    "matmul_rows": matmul_rows_net,
    "ibnn": ibnn_net,
    "ibnn_damped_conv": lambda seed: ibnn_net(seed, q=0.9, eta=0.5, K=20, conv=True),
    "ibnn_no_contraction": lambda seed: ibnn_net(seed, q=3.0, K=6),
}

ONNX_NETS: dict[str, Callable[[int], Graph]] = {
    "onnx_conv": lambda seed: onnx_net("onnx_conv", seed),
    "onnx_mlp": lambda seed: onnx_net("onnx_mlp", seed),
}

ALL_NETS: dict[str, Callable[[int], Graph]] = {**NETS, **ONNX_NETS}


def build(name: str, seed: int = 0) -> Graph:
    return ALL_NETS[name](seed)
