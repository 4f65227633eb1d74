"""ONNX -> canonical IR.

The importer loads a model with ``onnx``, runs shape inference and the checker,
then walks the nodes the output depends on, in order (dead branches are never
converted, so they cannot make a model unsupported):

* a node whose inputs are all constant is folded (the ONNX reference
  evaluator runs it), so Shape/Gather/Cast/Reshape chains and constant
  subgraphs disappear; ``Shape`` of a variable tensor is its static shape;
* any other node goes to the converter registered for its op type in
  :mod:`certkit.onnx.converters`, which emits canonical IR nodes.

Every node that cannot be converted is collected, and one
:class:`~certkit.errors.UnsupportedOpError` lists them all at the end. The
outputs of a bad node are poisoned: nodes downstream of it are reported only
when their op type has no converter at all (never for what merely consumes the
poisoned value, nor for shape computations that would have been constants).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, UnsupportedOpError
from ..graph.graph import Graph, Node
from ..graph.ops import Input, Op, Scale
from .passes import simplify


@dataclass(frozen=True)
class Var:
    """A variable tensor: IR node ``node`` holding an ONNX tensor of ``shape`` (batch dim 1)."""

    node: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Poison:
    """Stands for the outputs of a node that could not be converted.

    ``const`` marks values that would have been constants (``Shape`` of a
    poisoned tensor and what is folded from it): nodes fed only by those are not
    reported, so one bad node does not drag its shape computations along.
    """

    def __init__(self, const: bool) -> None:
        self.const = const


POISON = _Poison(False)
POISON_CONST = _Poison(True)


class Unsupported(Exception):
    """Raised by a converter: the node cannot be lowered (``reason`` says why)."""


@dataclass
class Context:
    """What a converter sees: the IR being built and the node's opset."""

    nodes: list[Node] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    opset: int = 13
    node_name: str = ""
    #: names of the ONNX tensors the model output depends on (optional outputs
    #: such as Dropout's mask are only an error when they are needed)
    needed: frozenset[str] = frozenset()

    def uses(self, name: str) -> bool:
        return bool(name) and name in self.needed

    def add(self, op: Op, inputs: list[Var] | tuple[Var, ...], shape: tuple[int, ...]) -> Var:
        self.nodes.append(Node(self.node_name, op, tuple(v.node for v in inputs)))
        self.shapes.append(tuple(int(s) for s in shape))
        return Var(len(self.nodes) - 1, tuple(int(s) for s in shape))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fold(node: onnx.NodeProto, values: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    feeds = {name: v for name, v in zip(node.input, values) if name}
    model_inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for n, v in feeds.items()]
    outs = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    g = onnx.helper.make_graph([node], "fold", model_inputs, outs)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
    res = ReferenceEvaluator(m).run(None, feeds)
    return [np.asarray(r) for r in res]


def _input_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise ModelError(f"input '{vi.name}' must be a float or double tensor")
    if not tt.HasField("shape"):
        raise ModelError(f"input '{vi.name}' has no shape; certkit needs static shapes")
    dims = tt.shape.dim
    shape = []
    for k, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif k == 0:
            shape.append(1)  # symbolic batch dimension
        else:
            raise ModelError(f"input '{vi.name}' has a symbolic dimension {k} ('{d.dim_param}'); "
                             "certkit needs static shapes except for the batch dimension")
    return tuple(shape)


def load_onnx(path: str | os.PathLike) -> Graph:
    """Read an ONNX file (``.onnx`` or ``.onnx.gz``) and lower it to a :class:`Graph`."""
    path = str(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".gz"):
            import gzip

            raw = gzip.decompress(raw)
        if not raw:
            raise ValueError("the file is empty")
        model = onnx.load_model_from_string(raw)
    except Exception as e:  # protobuf raises several types on bad bytes
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).strip()[:200]})") from e
    graph = import_model(model, path)
    return Graph(graph.nodes, graph.shapes, graph.output, graph.input_name, graph.output_name,
                 source=path, sha256=hashlib.sha256(raw).hexdigest(), meta=graph.meta)


def import_model(model: onnx.ModelProto, path: str = "") -> Graph:
    """Lower an in-memory ONNX model to the IR (see module docstring)."""
    from .converters import CONVERTERS

    where = f"{path}: " if path else ""
    try:
        # inference first: it fills in output shapes the checker insists on
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass  # shapes are recomputed by the converters; the checker reports real problems
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise ModelError(f"{where}ONNX checker rejected the model: {lines[0][:300]}") from e
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    real_inputs = [vi for vi in g.input if vi.name not in inits]
    if len(real_inputs) != 1:
        raise ModelError(f"{where}certkit needs exactly one (non-initializer) input, found "
                         f"{len(real_inputs)}: {[vi.name for vi in real_inputs]}")
    if len(g.output) != 1:
        raise ModelError(f"{where}certkit needs exactly one output, found {len(g.output)}: "
                         f"{[o.name for o in g.output]}")
    inp = real_inputs[0]
    try:
        in_shape = _input_shape(inp)
    except ModelError as e:
        raise ModelError(f"{where}{e}") from None
    live, needed = _live_nodes(g)
    ctx = Context(opset=opset, needed=needed)
    ctx.node_name = inp.name
    env: dict[str, object] = dict(inits)
    env[inp.name] = ctx.add(Input(), [], in_shape)
    bad: list[tuple[str, str, int, str]] = []

    for k, node in enumerate(g.node):
        if k not in live:
            continue  # the output does not depend on it: never converted, never reported
        name = node.name or f"{node.op_type}_{k}"
        ins = [env.get(i) if i else None for i in node.input]
        missing = [i for i, v in zip(node.input, ins) if i and v is None]
        if missing:
            raise ModelError(f"{where}node {name} uses undefined tensor(s) {missing}")
        std = node.domain in ("", "ai.onnx")
        if any(isinstance(v, _Poison) for v in ins):
            var_poison = any(isinstance(v, Var) or (isinstance(v, _Poison) and not v.const) for v in ins)
            if (std and node.op_type in ("Shape", "Size")) or not var_poison:
                out_p = POISON_CONST  # would have been a constant
            else:
                out_p = POISON
                if not std:
                    bad.append((name, f"{node.domain}.{node.op_type}", opset, "custom domain"))
                elif node.op_type not in CONVERTERS:
                    bad.append((name, node.op_type, opset, "no converter"))
            for o in node.output:
                env[o] = out_p
            continue
        if not std:
            bad.append((name, f"{node.domain}.{node.op_type}", opset, "custom domain"))
            for o in node.output:
                env[o] = POISON
            continue
        variables = [v for v in ins if isinstance(v, Var)]
        try:
            if node.op_type == "Shape" and variables:
                outs: list = [_shape_of(node, variables[0])]
            elif node.op_type == "Size" and variables:
                outs = [np.array(variables[0].size, dtype=np.int64)]
            elif not variables:
                try:
                    outs = _fold(node, ins, opset)
                except Exception as e:
                    raise Unsupported(f"constant folding failed ({type(e).__name__}: {str(e).strip()[:120]})")
            elif node.op_type in CONVERTERS:
                ctx.node_name = name
                ctx.opset = opset
                outs = CONVERTERS[node.op_type](ctx, node, ins, _attrs(node))
            else:
                raise Unsupported("no converter")
        except Unsupported as e:
            bad.append((name, node.op_type, opset, str(e)))
            outs = [POISON] * len(node.output)
        except ModelError as e:  # a malformed node (shapes that do not fit, ...)
            raise ModelError(f"{where}{e}") from e
        except Exception as e:
            raise ModelError(f"{where}cannot lower node {name} ({node.op_type}): {type(e).__name__}: {e}") from e
        for o, v in zip(node.output, outs):
            if o:
                env[o] = v
    if bad:
        raise UnsupportedOpError(bad, path)
    out_name = g.output[0].name
    out = env.get(out_name)
    if not isinstance(out, Var):
        raise ModelError(f"{where}the output '{out_name}' does not depend on the input (constant model)")
    if out.shape != ctx.shapes[out.node]:
        # the output is a reshaped view (Flatten, Reshape, Squeeze, ...) of its node:
        # record the output's own shape so graph.output_shape is the model's
        if out.node == 0:
            ctx.node_name = out_name
            out = ctx.add(Scale(np.ones(out.size), None), [out], out.shape)
        else:
            ctx.shapes[out.node] = out.shape
    graph = Graph(tuple(ctx.nodes), tuple(ctx.shapes), out.node, inp.name, out_name, source=path,
                  meta={"opset": opset, "producer": model.producer_name})
    return simplify(graph)


def _live_nodes(g: onnx.GraphProto) -> tuple[set[int], frozenset[str]]:
    """Indices of the nodes the graph output depends on, and the tensor names they read."""
    needed = {o.name for o in g.output}
    live: set[int] = set()
    for k in range(len(g.node) - 1, -1, -1):  # the checker guarantees topological order
        node = g.node[k]
        if any(o in needed for o in node.output if o):
            live.add(k)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs may read outer tensors implicitly
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    needed.update(i for n in sub.node for i in n.input if i)
    return live, frozenset(needed)


def _shape_of(node: onnx.NodeProto, v: Var) -> np.ndarray:
    a = _attrs(node)
    shape = np.array(v.shape, dtype=np.int64)
    start, end = a.get("start", 0), a.get("end", None)
    return shape[start:end]
