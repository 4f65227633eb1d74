"""IR -> ONNX for the ops a sparsified ReLU net is made of (Dense, Conv, Scale, Sum, Concat,
Select, ReLU).

Every IR value is flat per batch element (see :mod:`certkit.graph.ops`), so the ONNX graph
works on ``(N, size)`` tensors: the input is reshaped to ``(N, n_in)`` first, a convolution
reshapes to ``(N, C, H, W)`` and back, and the output is reshaped to the model's output
shape. The batch dimension is left free (``N``). Weights are stored as float32, so exact
zeros stay exact zeros. :func:`export_onnx` checks the result with ``onnx.checker``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from ..graph.graph import Graph
from ..graph.ops import Concat, Conv, Dense, Relu, Scale, Select, Sum

OPSET = 17


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, base: str, a, dtype=np.float32) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(a, dtype=dtype), n))
        return n

    def node(self, op: str, ins: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=self.name(op), **attrs))
        return out

    def reshape(self, x: str, shape, out: str | None = None) -> str:
        return self.node("Reshape", [x, self.const("shape", shape, np.int64)], out)


def _affine(b: _Builder, y: str, shift) -> str:
    return y if shift is None else b.node("Add", [y, b.const("shift", np.asarray(shift)[None, :])])


def to_onnx(g: Graph) -> onnx.ModelProto:
    """An ONNX model computing ``g`` (raises :class:`ModelError` for an op it cannot write)."""
    b = _Builder()
    name: dict[int, str] = {}
    in_shape = list(g.input_shape)
    in_dims = ["N"] + in_shape[1:] if in_shape else ["N"]
    name[0] = b.reshape(g.input_name or "input", [-1, g.n_inputs])
    for i in sorted(g.live):
        if i == 0:
            continue
        n = g.nodes[i]
        op = n.op
        xs = [name[j] for j in n.inputs]
        if isinstance(op, Dense) and op.rows == 1:
            ins = [xs[0], b.const("W", op.weight)]
            if op.bias is not None:
                ins.append(b.const("B", op.bias))
            y = b.node("Gemm", ins, transB=1)
        elif isinstance(op, Conv):
            C, H, W = op.in_shape
            x4 = b.reshape(xs[0], [-1, C, H, W])
            ins = [x4, b.const("W", op.weight)] + ([b.const("B", op.bias)] if op.bias is not None else [])
            t, l, bo, r = op.pads
            y4 = b.node("Conv", ins, pads=[t, l, bo, r], strides=list(op.strides),
                        dilations=list(op.dilations), group=op.groups)
            y = b.reshape(y4, [-1, int(np.prod(op.out_shape))])
        elif isinstance(op, Relu):
            y = b.node("Relu", xs)
        elif isinstance(op, Scale):
            y = _affine(b, b.node("Mul", [xs[0], b.const("scale", op.scale[None, :])]), op.shift)
        elif isinstance(op, Sum):
            terms = [t if c == 1 else b.node("Mul", [t, b.const("c", [[c]])]) for c, t in zip(op.coeffs, xs)]
            y = terms[0]
            for t in terms[1:]:
                y = b.node("Add", [y, t])
        elif isinstance(op, Concat):
            y = b.node("Concat", xs, axis=1)
            if op.perm is not None:
                y = b.node("Gather", [y, b.const("perm", op.perm, np.int64)], axis=1)
        elif isinstance(op, Select):
            valid = op.index >= 0
            y = b.node("Gather", [xs[0], b.const("idx", np.where(valid, op.index, 0), np.int64)], axis=1)
            if not valid.all():
                y = _affine(b, b.node("Mul", [y, b.const("mask", valid[None, :].astype(np.float32))]),
                            op.bias_vector())
        else:
            raise ModelError(f"cannot write node {n.name} ({op.kind}) to ONNX")
        name[i] = y
    out_shape = list(g.output_shape)
    b.reshape(name[g.output], [-1] + out_shape[1:] if out_shape else [-1], g.output_name or "output")
    out_dims = ["N"] + out_shape[1:] if out_shape else ["N"]
    graph = helper.make_graph(
        b.nodes, "certkit_sparsified",
        [helper.make_tensor_value_info(g.input_name or "input", TensorProto.FLOAT, in_dims)],
        [helper.make_tensor_value_info(g.output_name or "output", TensorProto.FLOAT, out_dims)],
        initializer=b.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                          producer_name="certkit sparsify")
    onnx.checker.check_model(m)
    return m


def export_onnx(g: Graph, path: str) -> None:
    onnx.save(to_onnx(g), path)
