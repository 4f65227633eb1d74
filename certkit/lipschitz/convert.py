"""Exact conversion of a feed-forward net to its nonnegative ABBA form (paper 000, eqs. 9-12).

The net (a chain of linear ops and elementwise activations) becomes

    x -> [x; -x] (W_0) -> ABBA layers -> (y1 - y2) / 2 + d_m / 2 (W_{m+1})

carrying the state ``[x_i; d_i - x_i]`` (DESIGN.md section 4): every linear op ``M x + c``
becomes ``[[M+, M-], [M-, M+]]`` with top bias ``c - M- d`` and bottom bias
``2 p - c - M+ d``, where ``(p, q)`` is the point of symmetry of the activation that follows
(``R(2p - t) = 2q - R(t)``; identity: ``(0, 0)``) and then ``d = 2 q``. This holds for
activations symmetric about a point: tanh (0, 0), sigmoid (0, 1/2), Clip with both bounds
finite (hardtanh) ((lo+hi)/2, (lo+hi)/2), capped symmetric leaky ReLU (0, 0), the
N-activation ((t1+t2)/2, -(t1+t2)/2). ReLU and the like are refused.

Linear ops are converted one by one (consecutive linear ops see the identity between them),
so input normalisation, folded BatchNorm, pooling and selections are carried over too.
The ONNX is written flat: every state is a ``(1, 2n)`` tensor, reshaped around convolutions;
float64 inside by default, except convolutions (onnxruntime has no float64 Conv).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError, UnsupportedOpError
from ..graph.graph import Graph
from ..graph.ops import Conv, Dense, LinearOp, Scale, Select

Sym = tuple[np.ndarray, np.ndarray]  # (p, q), flat

#: Point of symmetry ``(p, q)`` of each symmetric activation kind (flat arrays of size n).
SYMMETRY: dict[str, Callable[[object, int], Sym]] = {
    "tanh": lambda op, n: (np.zeros(n), np.zeros(n)),
    "sigmoid": lambda op, n: (np.zeros(n), np.full(n, 0.5)),
    "capped_leaky_relu": lambda op, n: (np.zeros(n), np.zeros(n)),
    "clip": lambda op, n: _clip_sym(op, n),
    "n_activation": lambda op, n: (lambda m: (m, -m))(np.broadcast_to((np.asarray(op.t1) + np.asarray(op.t2)) / 2,
                                                                       (n,)).astype(np.float64)),
}

WHY_NOT = {
    "relu": "ReLU is not symmetric about any point (paper 000, section 2.1); use a capped or symmetric "
            "activation (tanh, hardtanh, capped symmetric leaky ReLU)",
    "leaky_relu": "leaky ReLU is not symmetric about any point (unless its slope is 1)",
    "softplus": "softplus is not symmetric about any point",
    "abs": "abs is not symmetric about any point",
    "max_group": "max pooling / Max is not an elementwise activation",
    "max_min": "MaxMin is not an elementwise activation",
}


def _clip_sym(op, n: int) -> Sym:
    lo, hi = np.broadcast_to(op.lo, (n,)), np.broadcast_to(op.hi, (n,))
    both = np.isfinite(lo) & np.isfinite(hi)
    none = np.isinf(lo) & np.isinf(hi)
    if not (both | none).all():
        raise ValueError("a Clip with one infinite bound (e.g. ReLU as Max(x, 0)) is not symmetric about any point")
    m = np.where(both, (lo + hi) / 2, 0.0)
    return m, m


class _Onnx:
    """A small flat-tensor ONNX writer (float64 or float32 inside)."""

    def __init__(self, dtype) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.k = 0
        self.dtype = dtype

    def name(self, s: str) -> str:
        self.k += 1
        return f"{s}_{self.k}"

    def const(self, a, s: str = "c", dtype=None) -> str:
        n = self.name(s)
        a = np.asarray(a)
        self.inits.append(numpy_helper.from_array(a.astype(dtype or self.dtype), n))
        return n

    def op(self, t: str, ins: list[str], **attrs) -> str:
        out = self.name(t.lower())
        self.nodes.append(helper.make_node(t, ins, [out], name=out, **attrs))
        return out

    def reshape(self, x: str, shape) -> str:
        return self.op("Reshape", [x, self.const(np.asarray(shape, np.int64), "shape", np.int64)])


def _pm(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(a, 0.0), np.maximum(-a, 0.0)


def _abba_linear(b: _Onnx, x: str, op: LinearOp, n_in: int, n_out: int, bias_top, bias_bot) -> str:
    """Emit ``[[M+, M-], [M-, M+]] s + [bias_top; bias_bot]`` on the flat state ``s``."""
    if isinstance(op, Dense):
        if op.rows != 1:
            raise ModelError("ABBA conversion: dense reductions (rows > 1) are not supported")
        P, N = _pm(np.asarray(op.weight, np.float64))
        W = np.block([[P, N], [N, P]])
        y = b.op("MatMul", [x, b.const(W.T, "W")])
    elif isinstance(op, Conv):
        w = np.asarray(op.weight, np.float64)
        if op.groups != 1:  # densify: the cross blocks couple the halves across groups
            co, cig = w.shape[:2]
            full = np.zeros((co, cig * op.groups) + w.shape[2:])
            per = co // op.groups
            for gi in range(op.groups):
                full[gi * per:(gi + 1) * per, gi * cig:(gi + 1) * cig] = w[gi * per:(gi + 1) * per]
            w = full
        P, N = _pm(w)
        K = np.concatenate([np.concatenate([P, N], 1), np.concatenate([N, P], 1)], 0)
        C, H, W_ = op.in_shape
        t, l, bo, r = op.pads
        z = b.reshape(x, (1, 2 * C, H, W_))
        wide = b.dtype == np.float64  # onnxruntime has no float64 Conv: this one runs in float32
        if wide:
            z = b.op("Cast", [z], to=TensorProto.FLOAT)
        z = b.op("Conv", [z, b.const(K, "K", np.float32 if wide else None)], strides=list(op.strides),
                 pads=[t, l, bo, r], dilations=list(op.dilations), group=1)
        if wide:
            z = b.op("Cast", [z], to=TensorProto.DOUBLE)
        y = b.reshape(z, (1, 2 * n_out))
    elif isinstance(op, Scale):
        P, N = _pm(np.asarray(op.scale, np.float64))
        y = b.op("Mul", [x, b.const(np.concatenate([P, P])[None], "a")])
        if N.any():
            swap = np.concatenate([np.arange(n_in, 2 * n_in), np.arange(n_in)])
            xs = b.op("Gather", [x, b.const(swap, "swap", np.int64)], axis=1)
            y = b.op("Add", [y, b.op("Mul", [xs, b.const(np.concatenate([N, N])[None], "a")])])
    elif isinstance(op, Select):
        idx = np.asarray(op.index)
        valid = idx >= 0
        ii = np.where(valid, idx, 0)
        y = b.op("Gather", [x, b.const(np.concatenate([ii, ii + n_in]), "idx", np.int64)], axis=1)
        if not valid.all():
            y = b.op("Mul", [y, b.const(np.concatenate([valid, valid]).astype(np.float64)[None], "mask")])
    else:
        raise ModelError(f"ABBA conversion: linear op '{op.kind}' is not supported")
    return b.op("Add", [y, b.const(np.concatenate([bias_top, bias_bot])[None], "b")])


def _emit_activation(b: _Onnx, x: str, op, n: int) -> str:
    k = op.kind
    if k == "tanh":
        return b.op("Tanh", [x])
    if k == "sigmoid":
        return b.op("Sigmoid", [x])
    if k == "clip":
        lo, hi = np.broadcast_to(op.lo, (n,)), np.broadcast_to(op.hi, (n,))
        y = b.op("Max", [x, b.const(np.tile(np.where(np.isfinite(lo), lo, -np.inf), 2)[None], "lo")])
        return b.op("Min", [y, b.const(np.tile(np.where(np.isfinite(hi), hi, np.inf), 2)[None], "hi")])
    if k == "capped_leaky_relu":  # DESIGN.md section 5: Add(Mul(alpha, x), Mul(gamma, Clip(x, -beta, beta)))
        beta = float(op.beta)
        c = b.op("Min", [b.op("Max", [x, b.const(-beta, "nb")]), b.const(beta, "pb")])
        return b.op("Add", [b.op("Mul", [x, b.const(float(op.alpha), "alpha")]),
                            b.op("Mul", [c, b.const(float(op.gain), "gain")])])
    if k == "n_activation":  # Sub(x, Mul(2, Max(Min(x, t2), t1)))
        t1 = np.tile(np.broadcast_to(op.t1, (n,)), 2)[None]
        t2 = np.tile(np.broadcast_to(op.t2, (n,)), 2)[None]
        c = b.op("Max", [b.op("Min", [x, b.const(t2, "t2")]), b.const(t1, "t1")])
        return b.op("Sub", [x, b.op("Mul", [c, b.const(2.0, "two")])])
    raise ModelError(f"ABBA conversion: activation '{k}' is not supported")


def _chain(g: Graph) -> list[int]:
    order = sorted(g.live)
    prev = 0
    for i in order[1:]:
        if g.nodes[i].inputs != (prev,):
            raise ModelError(f"ABBA conversion needs a feed-forward chain; node '{g.nodes[i].name}' "
                             f"({g.nodes[i].op.kind}) joins branches")
        prev = i
    return order


def _check_symmetric(g: Graph, order: list[int]) -> dict[int, Sym]:
    sym, bad = {}, []
    for i in order[1:]:
        n = g.nodes[i]
        if n.op.kind == "implicit_bias":
            bad.append((n.name, n.op.kind, 0, "an implicit-bias layer is not affine (paper 003)"))
            continue
        if isinstance(n.op, LinearOp):
            continue
        size = g.size(i)
        fn = SYMMETRY.get(n.op.kind)
        try:
            if fn is None:
                raise ValueError(WHY_NOT.get(n.op.kind, f"'{n.op.kind}' has no known point of symmetry"))
            sym[i] = tuple(np.asarray(a, np.float64) for a in fn(n.op, size))
        except ValueError as e:
            bad.append((n.name, n.op.kind, 0, str(e)))
    if bad:
        raise UnsupportedOpError(bad, g.source)
    return sym


def abba_convert(g: Graph, float64: bool = True) -> onnx.ModelProto:
    """The ABBA net equal to ``g`` (paper 000, eqs. 9-12) as an ONNX model with the same
    input and output names and shapes (float32 interface; float64 inside by default)."""
    order = _chain(g)
    sym = _check_symmetric(g, order)
    dt = np.float64 if float64 else np.float32
    b = _Onnx(dt)
    n0 = g.n_inputs
    x = g.input_name or "input"
    s = b.op("Cast", [x], to=TensorProto.DOUBLE if float64 else TensorProto.FLOAT)
    s = b.reshape(s, (1, n0))
    s = b.op("Concat", [s, b.op("Neg", [s])], axis=1)  # W_0 = [I; -I]
    d = np.zeros(n0)
    for pos, i in enumerate(order[1:], start=1):
        n = g.nodes[i]
        op = n.op
        if isinstance(op, LinearOp):
            nxt = order[pos + 1] if pos + 1 < len(order) else None
            p, q = sym[nxt] if nxt in sym else (np.zeros(g.size(i)), np.zeros(g.size(i)))
            dt_ = torch.as_tensor(d[None])
            with torch.no_grad():
                Md = op.apply(dt_).numpy()[0]
                Ad = op.apply_abs(dt_).numpy()[0]
            Mp, Mm = (Ad + Md) / 2, (Ad - Md) / 2  # M+ d, M- d
            c = op.bias_vector()
            c = np.zeros(g.size(i)) if c is None else np.asarray(c, np.float64)
            s = _abba_linear(b, s, op, g.size(order[pos - 1]), g.size(i), c - Mm, 2 * p - c - Mp)
            d = np.zeros(g.size(i))  # identity to the next linear op, or set by the activation below
        else:
            s = _emit_activation(b, s, op, g.size(i))
            d = 2 * sym[i][1]
    m = g.n_outputs
    W = 0.5 * np.concatenate([np.eye(m), -np.eye(m)], axis=1)  # W_{m+1} = (1/2)[I, -I]
    s = b.op("Add", [b.op("MatMul", [s, b.const(W.T, "Wout")]), b.const((d / 2)[None], "bout")])
    s = b.op("Cast", [b.reshape(s, g.output_shape)], to=TensorProto.FLOAT)
    b.nodes[-1].output[0] = g.output_name or "output"
    graph = helper.make_graph(
        b.nodes, "abba",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, list(g.input_shape))],
        [helper.make_tensor_value_info(g.output_name or "output", TensorProto.FLOAT, list(g.output_shape))],
        initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                              producer_name="certkit abba convert")
    onnx.checker.check_model(model)
    return model


def check_equivalence(original: str, converted: onnx.ModelProto, n: int = 1000, seed: int = 0,
                      scale: float = 1.0) -> float:
    """Largest ``|y_abba - y| / (1 + |y|)`` over ``n`` random inputs (uniform in [-scale, scale]
    and normal), both models run by onnxruntime."""
    from ..onnx.runner import OnnxRunner

    a = OnnxRunner(original, _shape_of(original), "")
    bb = OnnxRunner(converted.SerializeToString(), a.input_shape, "")
    rng = np.random.default_rng(seed)
    k = int(np.prod(a.input_shape))
    x = np.concatenate([rng.uniform(-scale, scale, (n - n // 2, k)), rng.normal(0, scale, (n // 2, k))])
    x = x.astype(np.float32)
    ya, yb = a(x).astype(np.float64), bb(x).astype(np.float64)
    return float((np.abs(ya - yb) / (1 + np.abs(ya))).max()) if n else 0.0


def _shape_of(path: str) -> tuple[int, ...]:
    m = onnx.load(path)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
