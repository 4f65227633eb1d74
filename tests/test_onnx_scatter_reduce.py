"""ScatterND (constant indices), Where (constant condition), ReduceMax and ReduceMin: ONNX -> IR
against onnxruntime, and every bound backend's bounds containing onnxruntime's outputs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from certkit.errors import UnsupportedOpError
from certkit.onnx.importer import import_model
from tests.helpers.onnx_builders import X, assert_bounds_contain_ort, graph_model, ort_output_shape, single

RNG = np.random.default_rng(7)
N = helper.make_node


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*v) -> np.ndarray:
    return np.array(v, np.int64)


CASES = {
    "scatter-const-updates-slices": lambda: single("ScatterND", (1, 4, 3), X, np.array([[[0, 1]], [[0, 3]]], np.int64),
                                                   r(2, 1, 3)),
    "scatter-const-updates-elements": lambda: single("ScatterND", (1, 4, 3), X, np.array([[0, 1, 2], [0, 3, 0]], np.int64),
                                                     r(2)),
    "scatter-negative-index": lambda: single("ScatterND", (1, 4, 3), X, np.array([[0, -1, 2]], np.int64), r(1)),
    "scatter-variable-updates": lambda: graph_model([N("ScatterND", ["d", "i", X], ["Y"])], (1, 2, 3), consts=dict(
        d=r(1, 4, 3), i=np.array([[[0, 1], [0, 2]]], np.int64))),
    "scatter-both-variable": lambda: graph_model([
        N("Slice", [X, "s", "e", "a"], ["u"]), N("ScatterND", [X, "i", "u"], ["Y"])], (1, 4, 3), consts=dict(
        s=i64(0), e=i64(2), a=i64(1), i=np.array([[[0, 3], [0, 1]]], np.int64))),
    "scatter16-reduction-none": lambda: single("ScatterND", (1, 4, 3), X, np.array([[0, 2]], np.int64), r(1, 3),
                                               opset=16, reduction="none"),
    "where-const-cond": lambda: single("Where", (1, 2, 3), np.array([[True, False, True]]), X, r(2, 3)),
    "where-two-variables": lambda: graph_model([N("Neg", [X], ["n"]), N("Where", ["c", X, "n"], ["Y"])], (1, 2, 3),
                                               consts=dict(c=np.array([[True], [False]]))),
    "where-broadcast": lambda: single("Where", (1, 1, 3), np.array([[[True], [False]]]), r(1, 2, 1), X),
    "reducemax13-keepdims": lambda: single("ReduceMax", (1, 2, 3, 4), X, axes=[2, 3], keepdims=1),
    "reducemax13-no-keepdims": lambda: single("ReduceMax", (1, 2, 3, 4), X, axes=[1], keepdims=0),
    "reducemin13-negative-axis": lambda: single("ReduceMin", (1, 2, 3, 4), X, axes=[-1]),
    "reducemax13-all": lambda: single("ReduceMax", (1, 2, 3), X, keepdims=0),
    "reducemax18-axes-input": lambda: single("ReduceMax", (1, 2, 3, 4), X, i64(1, 3), opset=18),
    "reducemin18-noop": lambda: single("ReduceMin", (1, 2, 3), X, opset=18, noop_with_empty_axes=1),
    "reducemin18-all": lambda: single("ReduceMin", (1, 2, 3), X, opset=18, keepdims=0),
    "reducemax-in-net": lambda: graph_model([
        N("Gemm", [X, "w", "b"], ["h"], transB=1), N("Reshape", ["h", "s"], ["hr"]),
        N("ReduceMax", ["hr"], ["m"], axes=[2]), N("ReduceMin", ["hr"], ["n"], axes=[2]), N("Sub", ["m", "n"], ["Y"])],
        (1, 4), consts=dict(w=r(6, 4), b=r(6), s=i64(1, 2, 3))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_onnxruntime_and_bounds_contain_it(name):
    model = CASES[name]()
    g = assert_bounds_contain_ort(model, lo=-2.0, hi=2.0, n=60)
    assert g.output_shape == ort_output_shape(model)


def test_ops_chosen():
    kinds = lambda m: [nd.op.kind for nd in import_model(m).nodes]  # noqa: E731
    assert kinds(CASES["scatter-const-updates-slices"]()) == ["input", "select"]
    assert kinds(CASES["scatter-both-variable"]())[-2:] == ["concat", "select"]
    assert kinds(CASES["reducemax13-keepdims"]()) == ["input", "max_group"]
    assert kinds(CASES["reducemin13-negative-axis"]()) == ["input", "scale", "max_group", "scale"]


@pytest.mark.parametrize("model,why", [
    (lambda: graph_model([N("ScatterND", [X, "i", "u"], ["Y"])], (1, 4), consts=dict(
        i=np.array([[0, 1], [0, 1]], np.int64), u=r(2))), "duplicate indices"),
    (lambda: single("ScatterND", (1, 4), X, np.array([[0, 1]], np.int64), r(1), opset=16, reduction="add"),
     "reduction='add'"),
    (lambda: graph_model([N("Greater", [X, "z"], ["c"]), N("Div", ["mone", "z"], ["m"]),
                          N("Where", ["c", X, "m"], ["Y"])], (1, 4), consts=dict(
        z=np.zeros(1, np.float32), mone=np.full(4, -1.0, np.float32))), "infinite or NaN constant"),
])
def test_refusals_have_reasons(model, why):
    with pytest.raises(UnsupportedOpError, match=why):
        import_model(model())
