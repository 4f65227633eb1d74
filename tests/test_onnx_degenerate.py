"""ONNX -> IR on degenerate parameters, against onnxruntime (issue 9, "Trust").

Each accepted case is a single-node (or tiny) model whose IR forward must equal onnxruntime on
points of a box and whose interval, DeepPoly and alpha-CROWN bounds over that box must contain
onnxruntime's outputs there (:func:`tests.helpers.onnx_builders.assert_bounds_contain_ort`).
What onnxruntime itself refuses, and parameters no bound can be trusted with (NaN, infinities,
``var + epsilon = 0``), must be a :class:`~certkit.errors.ModelError` of one line naming the
tensor or node; a zero-size tensor is unsupported where it arises, never a crash later.

What onnxruntime does, as these tests pin it:

* ``Clip`` with ``min > max``: ``max`` everywhere from opset 11 (``min(max(x, lo), hi)``);
  before opset 11 the session is refused (``min_ <= max_`` fails). ``min``/``max`` must be a
  scalar or a 1-D tensor of one element, else onnxruntime fails at run time.
* ``Max``/``Min`` chains with crossing constants: the constant of the outer op.
* ``BatchNormalization`` with ``var + epsilon = 0``: NaN or infinite outputs.
* ``Div`` by a subnormal float32 constant: +-inf for all but tiny inputs (float32 overflow; the
  IR scales by ``1/c``, finite in float64 -- the rounding model, not the importer, covers it).
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from certkit.errors import ModelError, UnsupportedOpError
from certkit.graph import ops
from certkit.onnx.importer import import_model, max_opset
from tests.helpers.onnx_builders import (X, assert_bounds_contain_ort, graph_model, ort_run, random_inputs,
                                        single)

RNG = np.random.default_rng(99)


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def f32(v) -> np.ndarray:
    return np.asarray(v, np.float32)


def i64(*v) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def node(op: str, ins: list[str], outs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, name=f"{op.lower()}_{outs[0]}", **attrs)


def chain(x_shape, nodes, opset=13, **consts) -> onnx.ModelProto:
    return graph_model(nodes, x_shape, opset=opset, consts=consts)


def dense_around(x_shape, mid: list[onnx.NodeProto], n_hidden: int = 5, n_out: int = 3, **consts):
    """``Gemm -> mid -> Gemm`` on a flat input: the degenerate op between two affine layers, so
    that DeepPoly back-substitutes through its relaxation."""
    n_in = int(np.prod(x_shape))
    nodes = [node("Gemm", [X, "w1", "b1"], ["h"], transB=1)] + mid + \
        [node("Gemm", [mid[-1].output[0], "w2", "b2"], ["Y"], transB=1)]
    return chain(x_shape, nodes, w1=r(n_hidden, n_in), b1=r(n_hidden), w2=r(n_out, n_hidden), b2=r(n_out),
                 **consts)


# ----------------------------------------------------------------------------- accepted cases
# (id, factory, box half-width)

CASES: list[tuple[str, object, float]] = [
    # Clip with min > max: max everywhere (opset >= 11), the IR keeps lo <= hi
    ("clip13-min-gt-max", lambda: single("Clip", (1, 6), X, f32(0.5), f32(-0.5), opset=13), 2.0),
    ("clip11-min-gt-max", lambda: single("Clip", (1, 6), X, f32(0.5), f32(-0.5), opset=11), 2.0),
    ("clip13-min-gt-max-1d", lambda: single("Clip", (1, 6), X, f32([0.5]), f32([-0.5]), opset=13), 2.0),
    ("clip13-min-eq-max", lambda: single("Clip", (1, 6), X, f32(0.25), f32(0.25), opset=13), 2.0),
    ("clip6-min-eq-max", lambda: single("Clip", (1, 6), X, opset=6, min=0.25, max=0.25), 2.0),
    ("clip13-min-gt-max-in-net", lambda: dense_around((1, 4), [
        node("Clip", ["h", "lo", "hi"], ["c"])], lo=f32(0.3), hi=f32(-0.2)), 1.0),
    # Max/Min with constants that cross: the outer constant everywhere
    ("max-then-min-crossing", lambda: chain((1, 6), [node("Max", [X, "a"], ["t"]), node("Min", ["t", "b"], ["Y"])],
                                            a=f32(0.5), b=f32(-0.5)), 2.0),
    ("min-then-max-crossing", lambda: chain((1, 6), [node("Min", [X, "b"], ["t"]), node("Max", ["t", "a"], ["Y"])],
                                            a=f32(0.5), b=f32(-0.5)), 2.0),
    ("max-min-crossing-per-element", lambda: dense_around((1, 4), [
        node("Max", ["h", "a"], ["t"]), node("Min", ["t", "b"], ["c"])],
        a=f32([0.5, -0.5, 0.1, 1.0, -1.0]), b=f32([-0.5, 0.5, 0.1, 0.0, 2.0])), 1.0),
    ("min-two-consts", lambda: single("Min", (1, 6), X, f32(0.3), f32(-0.4)), 2.0),
    # Gather with negative indices
    ("gather-negative-vector", lambda: single("Gather", (1, 4, 3), X, i64(-4, -1, 2, -1), axis=1), 2.0),
    ("gather-negative-scalar-axis", lambda: single("Gather", (1, 4, 3), X, np.array(-3, np.int64), axis=-1), 2.0),
    ("gather-negative-matrix", lambda: single("Gather", (1, 5), X, np.array([[-1, 0], [-5, 4]], np.int64), axis=1),
     2.0),
    ("gather-negative-in-net", lambda: dense_around((1, 4), [
        node("Relu", ["h"], ["rh"]), node("Gather", ["rh", "gi"], ["c"], axis=1)], n_hidden=5,
        gi=i64(-1, -5, 2, -2, 0)), 1.0),
    # Pad with all-zero pads: the identity
    ("pad13-zero", lambda: single("Pad", (1, 2, 3), X, i64(0, 0, 0, 0, 0, 0), opset=13), 2.0),
    ("pad13-zero-value", lambda: single("Pad", (1, 2, 3), X, i64(0, 0, 0, 0, 0, 0), f32(7.0), opset=13), 2.0),
    ("pad13-zero-reflect", lambda: single("Pad", (1, 2, 3), X, i64(0, 0, 0, 0, 0, 0), mode="reflect", opset=13),
     2.0),
    ("pad13-zero-edge", lambda: single("Pad", (1, 2, 3), X, i64(0, 0, 0, 0, 0, 0), mode="edge", opset=13), 2.0),
    ("pad2-zero-attr", lambda: single("Pad", (1, 2, 3), X, opset=2, pads=[0, 0, 0, 0, 0, 0]), 2.0),
    ("pad18-zero-axes", lambda: single("Pad", (1, 2, 3), X, i64(0, 0), f32(1.0), i64(-1), opset=18), 2.0),
    ("pad-zero-then-relu", lambda: chain((1, 4), [node("Pad", [X, "p"], ["t"]), node("Relu", ["t"], ["Y"])],
                                         p=i64(0, 0, 0, 0)), 2.0),
    # BatchNormalization with a tiny variance: a huge but finite scale
    ("bn-var1e-30-eps1e-30", lambda: single("BatchNormalization", (1, 3), X, f32([1.0, -2.0, 0.5]), r(3), r(3),
                                            f32([1e-30] * 3), epsilon=1e-30), 1.0),
    ("bn-var1e-30-eps0", lambda: single("BatchNormalization", (1, 3, 2), X, f32([1.0, -2.0, 0.5]), r(3), r(3),
                                        f32([1e-30, 1.0, 1e-20]), epsilon=0.0), 1.0),
    ("bn-var0-eps-small", lambda: single("BatchNormalization", (1, 3), X, r(3), r(3), r(3), f32([0.0] * 3),
                                         epsilon=1e-12), 1.0),
    ("bn-tiny-in-net", lambda: dense_around((1, 4), [
        node("BatchNormalization", ["h", "g", "be", "m", "v"], ["bn"], epsilon=1e-30), node("Relu", ["bn"], ["c"])],
        g=r(5), be=r(5), m=r(5), v=f32([1e-30, 1.0, 1e-30, 0.5, 1e-10])), 1.0),
    # AveragePool with pads, count_include_pad 0 and 1
    ("avgpool-pads-excl", lambda: single("AveragePool", (1, 2, 4, 4), X, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                         count_include_pad=0), 2.0),
    ("avgpool-pads-incl", lambda: single("AveragePool", (1, 2, 4, 4), X, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                         count_include_pad=1), 2.0),
    ("avgpool-asym-pads-incl-strides", lambda: single("AveragePool", (1, 1, 5, 4), X, kernel_shape=[2, 3],
                                                      pads=[1, 0, 0, 2], strides=[2, 2], count_include_pad=1), 2.0),
    ("avgpool-ceil-excl", lambda: single("AveragePool", (1, 1, 5, 5), X, kernel_shape=[2, 2], strides=[2, 2],
                                         pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=0), 2.0),
    ("relu-avgpool-incl", lambda: chain((1, 2, 4, 4), [
        node("Relu", [X], ["t"]), node("AveragePool", ["t"], ["Y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                                       count_include_pad=1)]), 2.0),
    ("relu-avgpool-excl", lambda: chain((1, 2, 4, 4), [
        node("Relu", [X], ["t"]), node("AveragePool", ["t"], ["Y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                                       count_include_pad=0)]), 2.0),
    # Reshape with 0 and -1, allowzero
    ("reshape-0-minus1", lambda: single("Reshape", (1, 2, 3, 2), X, i64(0, -1, 2)), 2.0),
    ("reshape-0-0-minus1", lambda: single("Reshape", (1, 2, 3, 2), X, i64(0, 0, -1)), 2.0),
    ("reshape-minus1-first", lambda: single("Reshape", (1, 2, 3, 2), X, i64(-1, 4)), 2.0),
    ("reshape14-allowzero0-zero", lambda: single("Reshape", (1, 2, 3), X, i64(0, -1), opset=14, allowzero=0), 2.0),
    ("reshape14-allowzero1-no-zero", lambda: single("Reshape", (1, 2, 3), X, i64(1, 3, -1), opset=14, allowzero=1),
     2.0),
    # Flatten axis 0 and negative
    ("flatten-axis0", lambda: single("Flatten", (1, 2, 3), X, axis=0), 2.0),
    ("flatten-axis0-rank4", lambda: single("Flatten", (1, 2, 2, 2), X, axis=0), 2.0),
    ("flatten-axis-minus1", lambda: single("Flatten", (1, 2, 3), X, axis=-1), 2.0),
    # Squeeze/Unsqueeze with negative axes
    ("squeeze11-negative", lambda: single("Squeeze", (1, 3, 1, 2), X, axes=[-2], opset=11), 2.0),
    ("squeeze13-negative-and-batch", lambda: single("Squeeze", (1, 3, 1, 2), X, i64(-2, 0), opset=13), 2.0),
    ("unsqueeze11-negative", lambda: single("Unsqueeze", (1, 3, 2), X, axes=[-1, -4], opset=11), 2.0),
    ("unsqueeze13-negative", lambda: single("Unsqueeze", (1, 3, 2), X, i64(-1, -3), opset=13), 2.0),
    # Div by a negative constant
    ("div-negative-scalar", lambda: single("Div", (1, 5), X, f32(-2.5)), 2.0),
    ("div-mixed-signs", lambda: single("Div", (1, 2, 3), X, f32([-0.5, 4.0, -3.0])), 2.0),
    ("div-negative-in-net", lambda: dense_around((1, 4), [
        node("Div", ["h", "d"], ["q"]), node("Relu", ["q"], ["c"])], d=f32([-0.5, 2.0, -4.0, 1.5, -1.0])), 1.0),
    # LeakyRelu with alpha > 1 and alpha < 0
    ("leakyrelu-alpha2.5", lambda: single("LeakyRelu", (1, 6), X, alpha=2.5), 2.0),
    ("leakyrelu-alpha1", lambda: single("LeakyRelu", (1, 6), X, alpha=1.0), 2.0),
    ("leakyrelu-alpha-0.5", lambda: single("LeakyRelu", (1, 6), X, alpha=-0.5), 2.0),
    ("leakyrelu-alpha-3", lambda: single("LeakyRelu", (1, 6), X, alpha=-3.0), 2.0),
    ("leakyrelu-alpha2.5-in-net", lambda: dense_around((1, 4), [node("LeakyRelu", ["h"], ["c"], alpha=2.5)]), 1.0),
    ("leakyrelu-alpha-0.5-in-net", lambda: dense_around((1, 4), [node("LeakyRelu", ["h"], ["c"], alpha=-0.5)]),
     1.0),
    # HardSigmoid with alpha = 0: the constant clip(beta, 0, 1)
    ("hardsigmoid-alpha0", lambda: single("HardSigmoid", (1, 6), X, alpha=0.0, beta=0.3), 2.0),
    ("hardsigmoid-alpha0-beta-above", lambda: single("HardSigmoid", (1, 6), X, alpha=0.0, beta=1.7), 2.0),
    ("hardsigmoid-alpha0-beta-below", lambda: single("HardSigmoid", (1, 6), X, alpha=0.0, beta=-0.2), 2.0),
    ("hardsigmoid-alpha-negative", lambda: single("HardSigmoid", (1, 6), X, alpha=-0.7, beta=0.5), 2.0),
    ("hardsigmoid-alpha0-in-net", lambda: dense_around((1, 4), [
        node("HardSigmoid", ["h"], ["c"], alpha=0.0, beta=0.6)]), 1.0),
    # a zero-size Split part that nothing reads
    ("split-zero-part-unused", lambda: single("Split", (1, 4, 3), X, i64(4, 0), axis=1, n_outputs=2), 2.0),
]


@pytest.mark.parametrize("factory,half", [pytest.param(f, h, id=n) for n, f, h in CASES])
def test_degenerate_matches_onnxruntime_and_bounds_contain_it(factory, half):
    assert_bounds_contain_ort(factory(), -half, half)


def _clips(g) -> list[ops.Clip]:
    return [nd.op for nd in g.nodes if isinstance(nd.op, ops.Clip)]


@pytest.mark.parametrize("opset", [11, 13])
def test_clip_min_above_max_is_lowered_with_lo_le_hi(opset):
    g = import_model(single("Clip", (1, 6), X, f32(0.5), f32(-0.5), opset=opset))
    (c,) = _clips(g)
    assert (c.lo <= c.hi).all() and (c.hi == np.float32(-0.5)).all()


def test_maxmin_crossing_constants_keep_lo_le_hi():
    g = import_model(chain((1, 6), [node("Max", [X, "a"], ["t"]), node("Min", ["t", "b"], ["Y"])],
                           a=f32(0.5), b=f32(-0.5)))
    assert _clips(g) and all((c.lo <= c.hi).all() for c in _clips(g))


# ----------------------------------------------------------------------------- refused cases


def _one_line_model_error(model, *needles: str, cls=ModelError) -> str:
    with pytest.raises(cls) as ei:
        import_model(model)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 500, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def _ort_refuses(model) -> None:
    with pytest.raises(Exception):
        ort_run(model, random_inputs(model, 1))


def test_clip_opset6_min_above_max_is_model_error():
    model = single("Clip", (1, 6), X, opset=6, min=0.5, max=-0.5)
    _ort_refuses(model)
    _one_line_model_error(model, "clip_node", "min 0.5 > max -0.5")


@pytest.mark.parametrize("shape", [(1, 1), (2,)])
def test_clip_non_scalar_bound_is_model_error(shape):
    model = single("Clip", (1, 2), X, np.full(shape, 0.2, np.float32), opset=13)
    _ort_refuses(model)
    _one_line_model_error(model, "clip_node", "not a scalar")


@pytest.mark.parametrize("var,eps,gamma", [(0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (-1.0, 1e-5, 1.0), (-1e-5, 1e-5, 1.0)],
                         ids=["var0-eps0", "var0-eps0-gamma0", "var-negative", "var-minus-eps"])
def test_batchnorm_nonpositive_variance_is_model_error(var, eps, gamma):
    model = single("BatchNormalization", (1, 3), X, f32([gamma, 1.0, 1.0]), r(3), r(3), f32([var, 1.0, 1.0]),
                   epsilon=eps)
    ref = ort_run(model, random_inputs(model, 4))
    assert not np.isfinite(ref[:, 0]).all() or var + eps == 0.0  # onnxruntime: inf/NaN (or rounding)
    _one_line_model_error(model, "batchnormalization_node", "channel 0")


@pytest.mark.parametrize("factory,needle", [
    (lambda: single("Slice", (1, 4, 6), X, i64(3), i64(1), i64(2)), "slice_node"),
    (lambda: chain((1, 4, 6), [node("Slice", [X, "s", "e", "a"], ["t"]), node("Concat", [X, "t"], ["Y"], axis=2)],
                   s=i64(3), e=i64(1), a=i64(2)), "slice_t"),
    (lambda: chain((1, 4, 6), [node("Slice", [X, "s", "e", "a"], ["t"]), node("Relu", ["t"], ["Y"])],
                   s=i64(0), e=i64(0), a=i64(1)), "slice_t"),
    (lambda: single("Split", (1, 4, 3), X, i64(4, 0), axis=1, n_outputs=2, use_outputs=[0, 1]), "split_node"),
    (lambda: single("MatMul", (1, 3), X, np.zeros((3, 0), np.float32)), "matmul_node"),
], ids=["slice-output", "slice-into-concat", "slice-into-relu", "split-zero-part-used", "matmul-zero-columns"])
def test_zero_size_tensor_is_unsupported_where_it_arises(factory, needle):
    model = factory()
    ort_run(model, random_inputs(model, 1))  # onnxruntime runs it
    msg = _one_line_model_error(model, needle, "empty tensor", cls=UnsupportedOpError)
    assert msg.count("empty tensor") == 1, msg


def test_reshape_allowzero_with_zero_is_model_error():
    model = graph_model([node("Reshape", [X, "s"], ["Y"], allowzero=1)], (1, 2, 3), opset=14,
                        consts={"s": i64(0, 6)}, check=False)
    _ort_refuses(model)
    _one_line_model_error(model, "reshape_Y")


# ----------------------------------------------------------------------------- non-finite parameters


def _gemm_with(w: np.ndarray) -> onnx.ModelProto:
    return single("Gemm", (1, 3), X, w, f32([0.0, 0.0]), transB=1)


@pytest.mark.parametrize("bad,what", [(np.nan, "1 NaN"), (np.inf, "1 +inf"), (-np.inf, "1 -inf")])
def test_nonfinite_initializer_is_model_error(bad, what):
    w = r(2, 3)
    w[1, 2] = bad
    _one_line_model_error(_gemm_with(w), "initializer 'c1'", f"{what} of 6 entries")


def test_nonfinite_initializer_float64_and_float16():
    for dtype in (np.float64, np.float16):
        model = _gemm_with(r(2, 3))
        w = np.asarray(r(2, 3), dtype)
        w[0, 0] = np.inf
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "c1"))
        with pytest.raises(ModelError, match="initializer 'c1' .1 \\+inf"):
            import_model(model)


def _constant_model(**value) -> onnx.ModelProto:
    return chain((1, 3), [helper.make_node("Constant", [], ["k"], name="the_const", **value),
                          node("Add", [X, "k"], ["Y"])])


@pytest.mark.parametrize("value", [
    dict(value=numpy_helper.from_array(f32([1.0, np.nan, 2.0]), "v")),
    dict(value_float=float("inf")),
    dict(value_floats=[1.0, -float("inf"), 0.0]),
    dict(sparse_value=helper.make_sparse_tensor(numpy_helper.from_array(f32([np.nan]), "vals"),
                                                numpy_helper.from_array(i64(1), "idx"), [3])),
], ids=["value", "value_float", "value_floats", "sparse_value"])
def test_nonfinite_constant_is_model_error(value):
    _one_line_model_error(_constant_model(**value), "Constant node 'the_const'", "output 'k'")


def test_nonfinite_dead_constant_is_still_model_error():
    model = chain((1, 3), [helper.make_node("Constant", [], ["dead"], name="dead_const", value_float=float("nan")),
                           node("Relu", [X], ["Y"])])
    _one_line_model_error(model, "dead_const")


def test_every_nonfinite_tensor_is_named():
    model = chain((1, 3), [node("Add", [X, "a"], ["s"]), node("Mul", ["s", "b"], ["Y"])],
                  a=f32([np.nan, 0, 0]), b=f32([1, np.inf, 1]))
    _one_line_model_error(model, "initializer 'a'", "initializer 'b'")


def test_overflow_in_folding_is_model_error_without_warnings():
    """A folded constant that overflows float32 (3e38 * 3e38, as onnxruntime computes it) lowers to
    an infinite shift: refused, naming the node, and nothing printed on stderr."""
    model = chain((1, 3), [node("Mul", ["big", "big"], ["inf"]), node("Add", [X, "inf"], ["Y"])],
                  big=f32([3e38, 1.0, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _one_line_model_error(model, "add_Y", "non-finite 'shift'", "1 +inf of 3 entries")


def test_huge_finite_weights_load_without_warnings():
    """3e38 weights are finite: they load (products overflow only at run time), silently."""
    model = chain((1, 3), [node("Gemm", [X, "w", "b"], ["h"], transB=1), node("Relu", ["h"], ["r"]),
                           node("Mul", ["r", "s"], ["m"]), node("Gemm", ["m", "w2", "b2"], ["Y"], transB=1)],
                  w=np.full((4, 3), 3e38, np.float32), b=np.full(4, -3e38, np.float32),
                  s=np.full(4, 3e38, np.float32), w2=np.full((2, 4), 3e38, np.float32), b2=f32([3e38, 0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = import_model(model)
    assert g.n_outputs == 2


def test_nonfinite_parameter_exit_code_3(tmp_path, capsys):
    from certkit.cli import main

    w = r(2, 3)
    w[0, 1] = np.inf
    path = tmp_path / "inf.onnx"
    onnx.save(_gemm_with(w), str(path))
    spec = tmp_path / "p.vnnlib"
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(3))
                    + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                    + "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(3))
                    + "(assert (>= Y_0 Y_1))\n")
    for cmd in ("certify", "bounds"):
        rc = main([cmd, str(path), str(spec)])
        err = capsys.readouterr().err.splitlines()
        assert rc == 3, (cmd, err)
        assert len(err) == 1 and "initializer 'c1'" in err[0] and "inf.onnx" in err[0], err


# ----------------------------------------------------------------------------- opset stamp


def _relu_at(opset: int) -> onnx.ModelProto:
    g = helper.make_graph([node("Relu", [X], ["Y"])], "t", [helper.make_tensor_value_info(X, TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def test_max_opset_is_what_onnx_and_onnxruntime_both_run():
    newest = max_opset()
    assert 13 <= newest <= onnx.defs.onnx_opset_version()
    ort_run(_relu_at(newest), np.zeros((1, 1, 3), np.float32))  # onnxruntime runs the newest we accept
    import_model(_relu_at(newest))


@pytest.mark.parametrize("opset", [99, "newest+1"])
def test_opset_newer_than_supported_is_model_error(opset):
    opset = max_opset() + 1 if opset == "newest+1" else opset
    msg = _one_line_model_error(_relu_at(opset), f"opset {opset} is newer than the newest supported, {max_opset()}")
    assert msg.startswith(f"opset {opset}"), msg
