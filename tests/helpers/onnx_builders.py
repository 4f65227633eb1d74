"""Tiny ONNX model builders and an onnxruntime oracle for the importer tests.

``single(op, x_shape, *inputs, opset=13, **attrs)`` makes a one-node model whose
inputs are the variable ``X`` (pass :data:`X`), numpy constants (stored as
initializers) or ``None`` (an omitted optional input). ``graph_model`` builds a
model from several nodes. ``ort_run`` evaluates a model sample by sample with
onnxruntime (the models have a fixed batch dimension of 1) and
``assert_matches_ort`` compares it with the certkit reference executor;
``assert_bounds_contain_ort`` also checks that every bound backend's output bounds
over a box contain onnxruntime's outputs there.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

X = "X"  # the name of the variable input in every built model

#: IR version per opset that onnxruntime accepts.
_IR_FOR_OPSET = [(21, 10), (15, 8), (0, 7)]


def _ir_version(opset: int) -> int:
    return next(ir for lo, ir in _IR_FOR_OPSET if opset >= lo)


def const(name: str, value) -> onnx.TensorProto:
    """An initializer; float arrays are stored as float32, integers as int64."""
    a = np.asarray(value)
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
    elif a.dtype.kind in "iu":
        a = a.astype(np.int64)
    return numpy_helper.from_array(a, name)


def graph_model(nodes: Sequence[onnx.NodeProto], x_shape: Sequence[int], *, opset: int = 13,
                consts: dict | None = None, outputs: Sequence[str] = ("Y",),
                inputs: Sequence[tuple[str, Sequence[int]]] | None = None,
                check: bool = True) -> onnx.ModelProto:
    """A float32 model with variable input ``X`` of ``x_shape`` and the given nodes."""
    ins = inputs if inputs is not None else [(X, x_shape)]
    g = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in ins],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[const(k, v) for k, v in (consts or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=_ir_version(opset), producer_name="certkit-tests")
    # the checker wants typed outputs: let shape inference fill them in
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    del m.graph.output[:]
    m.graph.output.extend(inferred.graph.output)
    if any(not o.type.tensor_type.HasField("shape") for o in m.graph.output):
        _shapes_from_ort(m)
    if check:
        onnx.checker.check_model(m)
    return m


def _shapes_from_ort(m: onnx.ModelProto) -> None:
    """Fill in output shapes that inference could not find by running onnxruntime once."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        res = sess.run(None, {inp.name: np.zeros(shape, np.float32)})
    except Exception:  # an invalid model: leave it to the checker to say so
        return
    for o, v in zip(m.graph.output, res):
        if not o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype)
            for d in np.shape(v):
                o.type.tensor_type.shape.dim.add().dim_value = d


def single(op_type: str, x_shape: Sequence[int], *inputs, opset: int = 13, n_outputs: int = 1,
           use_outputs: Sequence[int] | None = None, out_axis: int = 1, **attrs) -> onnx.ModelProto:
    """A model made of one node ``op_type(inputs)`` (see module docstring).

    With several node outputs, ``use_outputs`` picks those that are combined
    into the single model output by a Concat on ``out_axis`` (default: the first).
    """
    consts, names = {}, []
    for k, a in enumerate(inputs):
        if a is None:
            names.append("")
        elif isinstance(a, str):
            names.append(a)
        else:
            names.append(f"c{k}")
            consts[f"c{k}"] = a
    outs = [f"o{k}" for k in range(n_outputs)]
    nodes = [helper.make_node(op_type, names, outs, name=f"{op_type.lower()}_node", **attrs)]
    use = list(use_outputs) if use_outputs is not None else [0]
    if len(use) == 1:
        nodes.append(helper.make_node("Identity", [outs[use[0]]], ["Y"], name="out"))
    else:
        nodes.append(helper.make_node("Concat", [outs[u] for u in use], ["Y"], axis=out_axis, name="out"))
    return graph_model(nodes, x_shape, opset=opset, consts=consts)


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the tests provoke errors on purpose
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_output_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The shape of the model's output as onnxruntime computes it (on zeros)."""
    sess = _session(model)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return tuple(np.shape(sess.run(None, {inp.name: np.zeros(shape, np.float32)})[0]))


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime on each sample of ``x`` (batch, *input shape); returns (batch, n_out)."""
    sess = _session(model)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    outs = [np.asarray(sess.run(None, {inp.name: xi.reshape(shape).astype(dtype)})[0]).reshape(-1)
            for xi in x]
    return np.stack(outs).astype(np.float64)


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    inits = {t.name for t in model.graph.initializer}
    vi = next(i for i in model.graph.input if i.name not in inits)
    return tuple(d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim)


def random_inputs(model: onnx.ModelProto, n: int, lo: float = -1.0, hi: float = 1.0,
                  seed: int = 0) -> np.ndarray:
    """``n`` float32 samples uniform in [lo, hi] of the model's input shape."""
    rng = np.random.default_rng(seed)
    return rng.uniform(lo, hi, size=(n,) + input_shape(model)).astype(np.float32)


def assert_close(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    """Equal up to ``rtol`` times the magnitude of the reference (at least 1)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(ours - ref).max(initial=0.0))
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol * scale:.3g}"


def assert_matches_ort(model: onnx.ModelProto, n: int = 8, lo: float = -1.0, hi: float = 1.0,
                       seed: int = 0, rtol: float = 1e-5):
    """Import ``model``, run both executors on ``n`` random inputs, compare; return the graph."""
    from certkit.onnx.importer import import_model

    g = import_model(model)
    x = random_inputs(model, n, lo, hi, seed)
    ref = ort_run(model, x)
    ours = g(x.reshape(n, -1))
    assert ours.shape == (n, g.n_outputs)
    assert_close(ours, ref, rtol)
    assert g.n_outputs == ref.shape[1]
    return g


#: The backends whose bounds must contain onnxruntime's outputs (tests/test_onnx_degenerate.py).
BOUND_BACKENDS = ("interval", "forward", "deeppoly", "deeppoly+interval", "deeppoly+reference", "alpha")


def box_samples(lo: np.ndarray, hi: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` float32 points of the box [lo, hi] (flat): its two end corners, random vertices and
    uniform points. ``lo``/``hi`` should be float32 numbers, so rounding keeps the points inside."""
    rng = np.random.default_rng(seed)
    m = max(0, n - 2)
    k = m // 2
    vert = np.where(rng.random((k, lo.size)) < 0.5, lo, hi)
    unif = rng.uniform(lo, hi, (m - k, lo.size))
    pts = np.concatenate([lo[None], hi[None], vert, unif]).astype(np.float32)
    return np.clip(pts, lo.astype(np.float32), hi.astype(np.float32))


def assert_bounds_contain_ort(model: onnx.ModelProto, lo: float = -2.0, hi: float = 2.0, n: int = 200,
                              seed: int = 0, rtol: float = 1e-5, backends: Sequence[str] = BOUND_BACKENDS):
    """Import ``model``; on ``n`` points of the box [lo, hi]^n_in, the IR forward equals onnxruntime
    and every backend's output bounds (finite, lower <= upper) contain onnxruntime's outputs, up to
    ``rtol`` times (1 + |value|) (onnxruntime computes in float32). Returns the graph."""
    import torch

    from certkit.bounds.backends import BACKENDS
    from certkit.onnx.importer import import_model
    from certkit.spec.sets import InputSet

    g = import_model(model)
    shape = input_shape(model)
    blo, bhi = np.full(g.n_inputs, float(lo)), np.full(g.n_inputs, float(hi))
    x = box_samples(blo, bhi, n, seed)
    ref = ort_run(model, x.reshape((n,) + shape))
    assert_close(g(x), ref, rtol)
    m = g.n_outputs
    C = torch.cat([torch.eye(m), -torch.eye(m)]).to(torch.float64)
    slack = rtol * (1.0 + np.abs(ref))
    for name in backends:
        low = BACKENDS[name].lower(g, InputSet.box(blo[None], bhi[None]), C)[0].numpy()
        y_lo, y_hi = low[:m], -low[m:]
        assert np.isfinite(low).all(), (name, low)
        assert (y_lo <= y_hi).all(), (name, y_lo, y_hi)
        assert (ref >= y_lo - slack).all(), (name, "below the lower bound", (y_lo - ref).max())
        assert (ref <= y_hi + slack).all(), (name, "above the upper bound", (ref - y_hi).max())
    return g


def tiny_relu_onnx(seed: int, n_in: int = 2, hidden=(8, 8), act: str = "Relu", scale: float = 1.0) -> onnx.ModelProto:
    """A small random MLP (Gemm layers; ReLU, or the ONNX activation ``act``; weights N(0, scale^2)),
    inputs (1, n_in), one output."""
    rng = np.random.default_rng(seed)
    sizes = (n_in, *hidden, 1)
    nodes, inits, prev = [], [], "x"
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array((scale * rng.normal(0, 1, (a, b))).astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(rng.normal(0, 0.5, b).astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{k}", f"b{k}"], [f"g{k}"]))
        prev = f"g{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node(act, [prev], [f"r{k}"]))
            prev = f"r{k}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", 1, [1, n_in])],
                          [helper.make_tensor_value_info("y", 1, [1, 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def saved_model(proto: onnx.ModelProto, folder, name: str = "model.onnx"):
    """``proto`` saved under ``folder`` and loaded as certkit loads a file (a :class:`certkit.model.Model`)."""
    from certkit.model import Model
    from certkit.onnx.importer import import_model

    path = folder / name
    onnx.save(proto, path)
    return Model(import_model(proto, str(path)), str(path))


def count_model(shape: Sequence[int], w: np.ndarray) -> onnx.ModelProto:
    """A carvana-style tail on an input of ``shape`` (1, 3, H, W): a 1x1 conv of weights ``w`` (2, 2, 1, 1)
    on the first two channels gives 2-class logits -> Softmax -> ArgMax -> OneHot -> Gather class 1 ->
    Equal with the mask (the third channel) -> Cast -> ReduceSum (the count of pixels whose class is the
    mask's), cast to float."""
    N = helper.make_node
    nodes = [
        N("Slice", [X, "z", "two", "one"], ["img"]), N("Gather", [X, "two_s"], ["mask"], axis=1),
        N("Conv", ["img", "w"], ["logits"]), N("Softmax", ["logits"], ["p"], axis=1),
        N("Gather", ["p", "zero_s"], ["p0"], axis=0), N("ArgMax", ["p0"], ["am"], axis=0, keepdims=0),
        N("OneHot", ["am", "depth", "vals"], ["oh"], axis=0), N("Gather", ["oh", "one_s"], ["cls1"], axis=0),
        N("Cast", ["cls1"], ["c32"], to=TensorProto.INT32), N("Cast", ["mask"], ["m32"], to=TensorProto.INT32),
        N("Equal", ["c32", "m32"], ["eq"]), N("Cast", ["eq"], ["eqi"], to=TensorProto.INT64),
        N("ReduceSum", ["eqi"], ["cnt"], keepdims=0), N("Cast", ["cnt"], ["Y"], to=TensorProto.FLOAT),
    ]
    consts = {"z": np.array([0]), "two": np.array([2]), "one": np.array([1]), "two_s": np.array(2),
              "zero_s": np.array(0), "one_s": np.array(1), "w": w, "depth": np.array(2), "vals": np.array([0, 1])}
    return graph_model(nodes, shape, consts=consts)
