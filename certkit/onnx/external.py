"""Reading a model file: ``.onnx`` or ``.onnx.gz``, with tensors stored in external files.

ONNX may keep a tensor's bytes outside the model (``data_location = EXTERNAL``; the keys
``location``, ``offset``, ``length`` in ``external_data``): PyTorch's default exporter writes
every weight to ``model.onnx.data`` beside the model. The location is relative to the folder of
the model file, never to the working directory: :func:`read_model_file` reads each such tensor
from there into the in-memory model (``raw_data``), so the checker, shape inference and the
converters see an ordinary model. A location that is absolute or leaves the model's folder
(``..``) is refused, as ``onnx.load`` refuses it; so is a file shorter than ``offset + length``.

The model's SHA-256 (``Graph.sha256``, recorded in certificates and re-checked by
``certkit check``) covers what the model *is*: the bytes of the model file (decompressed, for
``.onnx.gz``) and, when tensors are stored externally, then for each external file in the order
of its location: the bytes ``b"\\0external:" + location + b"\\0"`` and the file's whole content.
A model without external data keeps the plain SHA-256 of its file.
"""
from __future__ import annotations

import hashlib
import os

from ..errors import ModelError
from . import proto
from .proto import GraphProto, ModelProto, TensorProto


def _graph_tensors(g: GraphProto):
    yield from g.initializer
    for s in g.sparse_initializer:
        yield s.values
        yield s.indices
    for node in g.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
            yield from a.tensors
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _graph_tensors(sub)


def external_tensors(model: ModelProto) -> list[TensorProto]:
    """The tensors of ``model`` (initializers, constants, subgraphs) whose data is external."""
    return [t for t in _graph_tensors(model.graph) if t.data_location == TensorProto.EXTERNAL]


def _resolve(base_dir: str, location: str, name: str) -> str:
    if not location:
        raise ModelError(f"tensor '{name}' is stored externally but names no location")
    if os.path.isabs(location) or os.path.splitdrive(location)[0]:
        raise ModelError(f"tensor '{name}': external data location '{location}' is an absolute path "
                         "(it must be relative to the model's folder)")
    full = os.path.normpath(os.path.join(base_dir, location))
    if os.path.commonpath([full, os.path.normpath(base_dir)]) != os.path.normpath(base_dir):
        raise ModelError(f"tensor '{name}': external data location '{location}' leaves the model's folder")
    if not os.path.isfile(full):
        raise ModelError(f"tensor '{name}': its external data file '{location}' is not a regular file in "
                         f"{base_dir}")
    return full


def inline_external_data(model: ModelProto, base_dir: str) -> list[str]:
    """Read every externally stored tensor of ``model`` into it (``raw_data``) from files relative to
    ``base_dir``; return the locations read (sorted, each once)."""
    locations: set[str] = set()
    handles: dict[str, object] = {}
    try:
        for t in external_tensors(model):
            info = {e.key: e.value for e in t.external_data}
            loc = info.get("location", "")
            full = _resolve(base_dir, loc, t.name)
            try:
                offset = int(info.get("offset", 0) or 0)
                length = int(info["length"]) if info.get("length") else None
            except ValueError:
                raise ModelError(f"tensor '{t.name}': external data offset/length are not integers") from None
            if offset < 0 or (length is not None and length < 0):
                raise ModelError(f"tensor '{t.name}': negative external data offset or length")
            f = handles.get(full)
            if f is None:
                f = handles[full] = open(full, "rb")
            f.seek(offset)
            data = f.read() if length is None else f.read(length)
            if length is not None and len(data) != length:
                raise ModelError(f"tensor '{t.name}': external data file '{loc}' ends before offset {offset} + "
                                 f"length {length}")
            t.raw_data = data
            del t.external_data[:]
            t.data_location = TensorProto.DEFAULT
            locations.add(loc)
    finally:
        for f in handles.values():
            f.close()
    return sorted(locations)


def digest(raw: bytes, base_dir: str, locations: list[str]) -> str:
    """The model's SHA-256 (see the module docstring)."""
    h = hashlib.sha256(raw)
    for loc in sorted(set(locations)):
        h.update(b"\0external:" + loc.encode("utf-8") + b"\0")
        with open(os.path.join(base_dir, loc), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_model_file(path: str) -> tuple[ModelProto, str, list[str]]:
    """``(model with its external data read in, SHA-256, external locations)`` of the file at
    ``path`` (raises :class:`~certkit.errors.ModelError`)."""
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
        model = proto.parse_model(raw)
    except Exception as e:  # protobuf raises several types on bad bytes
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).strip()[:200]})") from e
    base = os.path.dirname(os.path.abspath(path))
    try:
        locations = inline_external_data(model, base)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read external data ({type(e).__name__}: {e})") from None
    return model, digest(raw, base, locations), locations


def runtime_source(path: str) -> str | bytes:
    """What onnxruntime is given for the model file at ``path``: the path itself (it resolves
    external data relative to the model's folder), or for ``.onnx.gz`` the decompressed model with
    its external data read in (bytes have no folder)."""
    if not path.endswith(".gz"):
        return path
    model, _, locations = read_model_file(path)
    if not locations:
        import gzip

        with gzip.open(path, "rb") as f:
            return f.read()
    return model.SerializeToString()
