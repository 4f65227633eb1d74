"""certkit.onnx.proto: the ONNX protobufs, checker and shape inference without ``import onnx``.

Each function is checked against the onnx function it stands for (``numpy_helper.to_array``,
``helper.get_attribute_value``, ``checker.check_model``, ``shape_inference.infer_shapes``), and a
fresh process proves that reading and lowering a model imports neither ``onnx`` nor ml_dtypes,
and that a later ``import onnx`` shares the message classes.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from certkit.errors import ModelError
from certkit.onnx import proto
from certkit.onnx.importer import import_model, load_onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FC = os.path.join(ROOT, "models", "digits_fc.onnx")
CONV = os.path.join(ROOT, "models", "digits_conv.onnx")

_DTYPES = [np.float32, np.float64, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32,
           np.uint64, np.bool_, np.float16]


def _values(dtype, shape, rng) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


@pytest.mark.parametrize("dtype", _DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 1)])
@pytest.mark.parametrize("raw", [True, False])
def test_to_array_matches_numpy_helper(dtype, shape, raw):
    """Raw bytes and the typed fields alike, every native element type: the same array."""
    rng = np.random.default_rng(0)
    a = _values(dtype, shape, rng)
    if raw:
        t = numpy_helper.from_array(a, "t")
    else:
        t = helper.make_tensor("t", helper.np_dtype_to_tensor_dtype(a.dtype), list(shape), a.reshape(-1).tolist())
    ours, theirs = proto.to_array(t), numpy_helper.to_array(t)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_to_array_other_types_go_to_numpy_helper():
    """bfloat16 (an ml_dtypes type) and strings: numpy_helper's answer."""
    t = helper.make_tensor("b", TensorProto.BFLOAT16, [2], [1.5, -2.0])
    np.testing.assert_array_equal(proto.to_array(t).astype(np.float32), [1.5, -2.0])
    s = helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b"bc"])
    assert list(proto.to_array(s)) == list(numpy_helper.to_array(s))


def test_attribute_value_matches_helper():
    node = helper.make_node("Foo", ["x"], ["y"], f=1.5, i=3, s="same", floats=[1.0, 2.0], ints=[1, 2],
                            strings=["a", "b"], t=numpy_helper.from_array(np.ones(2, np.float32)),
                            g=helper.make_graph([], "g", [], []))
    for a in node.attribute:
        assert proto.attribute_value(a) == helper.get_attribute_value(a), a.name
    ref = onnx.AttributeProto(name="r", ref_attr_name="outer", type=onnx.AttributeProto.INT)
    with pytest.raises(ValueError, match="reference attribute"):
        proto.attribute_value(ref)


def test_checker_shape_inference_and_opset_are_onnx_s():
    m = onnx.load(CONV)
    assert proto.infer_shapes(m) == onnx.shape_inference.infer_shapes(m)
    proto.check_model(m)
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    bad.graph.node[0].input[0] = "nowhere"
    with pytest.raises(Exception) as ours:
        proto.check_model(bad)
    with pytest.raises(Exception) as theirs:
        onnx.checker.check_model(bad)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)
    assert proto.opset_version() == onnx.defs.onnx_opset_version()
    assert proto.onnx_version() == onnx.__version__


def test_parse_model_refuses_what_onnx_refuses():
    raw = open(FC, "rb").read()
    assert proto.parse_model(raw) == onnx.load_model_from_string(raw)
    for junk in (raw[:-7], b"\xff" * 40):
        with pytest.raises(Exception) as ours:
            proto.parse_model(junk)
        with pytest.raises(Exception) as theirs:
            onnx.load_model_from_string(junk)
        assert type(ours.value) is type(theirs.value)


def test_same_classes_as_onnx():
    assert proto.ModelProto is onnx.ModelProto and proto.TensorProto is onnx.TensorProto
    g = import_model(onnx.load(FC))  # an onnx.ModelProto goes straight in
    assert g.n_outputs == 10


_FRESH = """
import sys
from certkit.onnx.importer import load_onnx
g = load_onnx(sys.argv[1])
assert g.n_outputs == 10, g.n_outputs
print(sorted(m for m in ("onnx", "ml_dtypes", "onnx.reference", "onnxruntime") if m in sys.modules))
from certkit.onnx import proto
import onnx
import onnx.onnx_cpp2py_export
assert onnx.ModelProto is proto.ModelProto
assert sys.modules["onnx.onnx_cpp2py_export"] is proto._cpp()
onnx.checker.check_model(onnx.load(sys.argv[1]))  # onnx itself still works, on the shared extension
print("ok")
"""


@pytest.mark.parametrize("model", [FC, CONV])
def test_loading_imports_no_onnx_package(model):
    """In a fresh process: lowering the shipped nets (Gemm, Conv, Flatten) leaves ``onnx``,
    ml_dtypes, the reference evaluator and onnxruntime unimported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", _FRESH, model], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["[]", "ok"], p.stdout


def test_unreadable_model_is_a_model_error(tmp_path):
    f = tmp_path / "bad.onnx"
    f.write_bytes(b"\xff" * 40)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_onnx(f)


def test_opset_floor_holds_for_the_installed_onnxruntime():
    """Models up to ORT_MIN_OPSET are accepted without asking onnxruntime: it must run them."""
    from certkit.onnx.importer import ORT_MIN_OPSET, max_opset

    assert ORT_MIN_OPSET <= max_opset()
