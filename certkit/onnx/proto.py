"""ONNX protobufs, the ONNX checker and shape inference, without ``import onnx``.

``import onnx`` runs the package's ``__init__``, which imports ``onnx.helper`` and through it
ml_dtypes: 0.5-1.2 s on our machines, more than the rest of certify's start-up on a small net
(``benchmarks/startup.py``). The importer needs two parts of the package, and neither needs the
``__init__``:

* ``onnx.onnx_ml_pb2``, the generated protobuf classes (``ModelProto``, ``TensorProto``, ...):
  plain Python over google.protobuf;
* ``onnx.onnx_cpp2py_export``, the C++ extension that holds the checker, shape inference and
  the operator schemas. ``onnx.checker.check_model``, ``onnx.shape_inference.infer_shapes`` and
  ``onnx.defs.onnx_opset_version`` are thin wrappers that serialise the model and call it;
  :func:`check_model`, :func:`infer_shapes` and :func:`opset_version` call it the same way.

Both are loaded from the installed onnx package's folder under their own names and entered in
``sys.modules``, so they are the very modules a later ``import onnx`` uses: the message classes
are the same classes, and the extension is initialised once. When ``onnx`` is already imported,
its modules are used as they are. What these two cannot do imports ``onnx`` itself, when it is
needed: folding a constant node with the reference evaluator (:func:`certkit.onnx.importer._fold`),
and tensors of other element types (:func:`to_array`; external data is read in by
:mod:`certkit.onnx.external` first).
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading

import numpy as np

_LOCK = threading.Lock()


def _onnx_module(name: str):
    """``onnx.<name>``, imported without running ``onnx/__init__.py`` unless ``onnx`` is imported
    already, or the installed package does not have the module where this looks for it."""
    full = f"onnx.{name}"
    with _LOCK:
        mod = sys.modules.get(full)
        if mod is not None:
            return mod
        top = importlib.util.find_spec("onnx") if "onnx" not in sys.modules else None
        spec = None
        if top is not None and top.submodule_search_locations:
            spec = importlib.machinery.PathFinder.find_spec(full, list(top.submodule_search_locations))
        if spec is None or spec.loader is None:  # the ordinary way (it also raises ModuleNotFoundError)
            return importlib.import_module(full)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(full, None)
            raise
        return mod


_pb = _onnx_module("onnx_ml_pb2")
ModelProto = _pb.ModelProto
GraphProto = _pb.GraphProto
NodeProto = _pb.NodeProto
TensorProto = _pb.TensorProto
AttributeProto = _pb.AttributeProto
ValueInfoProto = _pb.ValueInfoProto

#: Protobuf refuses to serialise a message of 2 GiB or more (as ``onnx.checker`` says it).
MAXIMUM_PROTOBUF = 2**31 - 1


def _cpp():
    """The ``onnx.onnx_cpp2py_export`` extension (loaded on first use)."""
    return _onnx_module("onnx_cpp2py_export")


def parse_model(raw: bytes) -> ModelProto:
    """A ModelProto from its serialised bytes, as ``onnx.load_model_from_string`` reads them
    (bytes left over after the message are an error)."""
    from google.protobuf.message import DecodeError

    model = ModelProto()
    decoded = model.ParseFromString(raw)
    if decoded is not None and decoded != len(raw):
        raise DecodeError(f"Protobuf decoding consumed too few bytes: {decoded} out of {len(raw)}")
    return model


def _serialised(model: ModelProto | bytes) -> bytes:
    raw = model if isinstance(model, bytes) else model.SerializeToString()
    if len(raw) > MAXIMUM_PROTOBUF:
        raise ValueError("This protobuf of onnx model is too large (>2GiB)")
    return raw


def infer_shapes(model: ModelProto | bytes) -> ModelProto:
    """``onnx.shape_inference.infer_shapes(model)``: the model with inferred ``value_info``."""
    return parse_model(_cpp().shape_inference.infer_shapes(_serialised(model)))


def check_model(model: ModelProto | bytes) -> None:
    """``onnx.checker.check_model(model)``: raises the checker's ``ValidationError`` (or another
    exception) when the model is not valid ONNX."""
    _cpp().checker.check_model(_serialised(model))


def opset_version() -> int:
    """``onnx.defs.onnx_opset_version()``: the newest default-domain opset this onnx knows."""
    return int(_cpp().defs.schema_version_map()[""][1])


def onnx_version() -> str:
    """The installed onnx package's version (as ``onnx.__version__``)."""
    if "onnx" in sys.modules:
        return sys.modules["onnx"].__version__
    import importlib.metadata

    try:
        return importlib.metadata.version("onnx")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def attribute_value(attr: AttributeProto):
    """The value of a node attribute, as ``onnx.helper.get_attribute_value`` gives it."""
    if attr.ref_attr_name:
        raise ValueError(f"Cannot get value of reference attribute: {attr}")
    field = _ATTRIBUTE_FIELDS.get(attr.type)
    if field is None:
        if attr.type == AttributeProto.UNDEFINED:
            return None
        raise ValueError(f"Unsupported ONNX attribute: {attr}")
    value = getattr(attr, field)
    return list(value) if attr.type in _REPEATED_ATTRIBUTES else value


_ATTRIBUTE_FIELDS = {
    AttributeProto.FLOAT: "f", AttributeProto.INT: "i", AttributeProto.STRING: "s", AttributeProto.TENSOR: "t",
    AttributeProto.SPARSE_TENSOR: "sparse_tensor", AttributeProto.GRAPH: "g", AttributeProto.TYPE_PROTO: "tp",
    AttributeProto.FLOATS: "floats", AttributeProto.INTS: "ints", AttributeProto.STRINGS: "strings",
    AttributeProto.TENSORS: "tensors", AttributeProto.SPARSE_TENSORS: "sparse_tensors",
    AttributeProto.GRAPHS: "graphs", AttributeProto.TYPE_PROTOS: "type_protos",
}
_REPEATED_ATTRIBUTES = frozenset({AttributeProto.FLOATS, AttributeProto.INTS, AttributeProto.STRINGS,
                                  AttributeProto.TENSORS, AttributeProto.SPARSE_TENSORS, AttributeProto.GRAPHS,
                                  AttributeProto.TYPE_PROTOS})

#: element type -> (numpy dtype, the typed field holding the values when there is no raw_data, that
#: field's dtype): the types numpy holds natively. The others (bfloat16, float8, 4-bit, strings,
#: complex) go to ``onnx.numpy_helper``, which needs ml_dtypes.
_NATIVE = {
    TensorProto.FLOAT: (np.float32, "float_data", np.float32),
    TensorProto.DOUBLE: (np.float64, "double_data", np.float64),
    TensorProto.INT64: (np.int64, "int64_data", np.int64),
    TensorProto.INT32: (np.int32, "int32_data", np.int32),
    TensorProto.INT8: (np.int8, "int32_data", np.int32),
    TensorProto.UINT8: (np.uint8, "int32_data", np.int32),
    TensorProto.UINT32: (np.uint32, "uint64_data", np.uint64),
    TensorProto.UINT64: (np.uint64, "uint64_data", np.uint64),
    # the bit pattern in the low bits of int32_data
    TensorProto.INT16: (np.int16, "int32_data", np.uint16),
    TensorProto.UINT16: (np.uint16, "int32_data", np.uint16),
    TensorProto.FLOAT16: (np.float16, "int32_data", np.uint16),
    TensorProto.BOOL: (np.bool_, "int32_data", np.uint8),
}
_BIT_PATTERNS = (TensorProto.INT16, TensorProto.UINT16, TensorProto.FLOAT16, TensorProto.BOOL)


def to_array(tensor: TensorProto) -> np.ndarray:
    """The values of a TensorProto, as ``onnx.numpy_helper.to_array(tensor)`` gives them. A tensor
    whose data is still external is an error: its location is relative to the model file's folder,
    which only the file's reader knows (:func:`certkit.onnx.external.read_model_file` reads it in)."""
    if tensor.data_location == TensorProto.EXTERNAL:
        from ..errors import ModelError

        loc = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise ModelError(f"tensor '{tensor.name}' is stored in the external file '{loc}': load the model from "
                         "its file (certkit.load_model), which reads it relative to the model's folder")
    native = _NATIVE.get(tensor.data_type)
    if native is None or tensor.HasField("segment") or sys.byteorder != "little":
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor)
    dtype, field, storage = native
    dims = tuple(tensor.dims)
    if tensor.HasField("raw_data"):
        return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(dims)
    if tensor.data_type in _BIT_PATTERNS:
        return np.array(tensor.int32_data, dtype=np.int32).view(np.uint32).astype(storage).view(dtype).reshape(dims)
    return np.asarray(getattr(tensor, field), dtype=storage).astype(dtype).reshape(dims)
