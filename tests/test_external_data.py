"""ONNX models whose tensors live in an external file (``model.onnx.data``, as PyTorch's default
exporter writes them): loaded, run, certified and re-checked from any working directory; the
model's SHA-256 covers the external data (issue 11, "Reach")."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import certkit
from certkit.cli import main
from certkit.errors import ModelError
from certkit.onnx import proto
from tests.helpers.onnx_builders import ort_run

RNG = np.random.default_rng(4)


def _net() -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm on a (1, 1, 4, 4) input, two outputs."""
    w1 = (RNG.standard_normal((2, 1, 3, 3)) * 0.5).astype(np.float32)
    w2 = (RNG.standard_normal((2, 8)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.float32([0.1, -0.2]), "b1"),
                           numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.float32([1.0, -1.0]), "b2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _save_external(model: onnx.ModelProto, folder, name="model.onnx", location="model.onnx.data") -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), name)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    assert os.path.exists(os.path.join(str(folder), location))
    return path


def _spec(path, x0: np.ndarray, eps: float, y0: np.ndarray) -> str:
    """'Y_0 - Y_1 keeps its sign at x0' over the L_inf ball: the unsafe set is the other sign."""
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.size)] + ["(declare-const Y_0 Real)",
                                                                        "(declare-const Y_1 Real)"]
    for i, v in enumerate(x0.reshape(-1)):
        lines += [f"(assert (>= X_{i} {float(v) - eps!r}))", f"(assert (<= X_{i} {float(v) + eps!r}))"]
    lines.append("(assert (<= Y_0 Y_1))" if y0[0] > y0[1] else "(assert (>= Y_0 Y_1))")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_external_model_loads_from_any_directory(tmp_path, monkeypatch):
    path = _save_external(_net(), tmp_path / "m")
    raw = onnx.load(path, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in raw.graph.initializer)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = certkit.load_model(path)
    rel = certkit.load_model(os.path.relpath(path))  # a relative path from another folder
    x = RNG.uniform(-1, 1, (5, 16)).astype(np.float32)
    ref = ort_run(onnx.load(path), x.reshape(5, 1, 1, 4, 4))
    np.testing.assert_allclose(model.graph(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rel.graph(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.runner(x), ref, rtol=1e-6, atol=1e-7)  # onnxruntime finds the data
    assert model.sha256 == rel.sha256


def test_digest_covers_the_external_data(tmp_path):
    path = _save_external(_net(), tmp_path)
    sha = certkit.load_model(path).sha256
    plain = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert sha != plain  # not the model file alone
    data = tmp_path / "model.onnx.data"
    b = bytearray(data.read_bytes())
    b[5] ^= 0x01  # one bit of one weight
    data.write_bytes(bytes(b))
    assert certkit.load_model(path).sha256 != sha
    # a model without external data keeps the plain SHA-256 of its file
    inline = tmp_path / "inline.onnx"
    onnx.save_model(_net(), str(inline))
    assert certkit.load_model(str(inline)).sha256 == hashlib.sha256(inline.read_bytes()).hexdigest()


def test_certify_and_check_from_elsewhere(tmp_path, monkeypatch, capsys):
    path = _save_external(_net(), tmp_path / "m")
    x0 = RNG.uniform(0.2, 0.8, 16)
    y0 = certkit.load_model(path).graph(x0[None])[0]
    small, big = _spec(tmp_path / "small.vnnlib", x0, 1e-3, y0), _spec(tmp_path / "big.vnnlib", x0, 5.0, y0)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for spec, verdict in ((small, "unsat"), (big, "sat")):
        cert = tmp_path / f"{verdict}.json"
        assert main(["certify", path, spec, "--json", str(cert), "--timeout", "30"]) == 0
        doc = json.loads(cert.read_text())
        assert doc["verdict"] == verdict
        capsys.readouterr()
        assert main(["check", str(cert)]) == 0, capsys.readouterr().out
    # the data file changed: the certificate no longer matches the model
    data = tmp_path / "m" / "model.onnx.data"
    b = bytearray(data.read_bytes())
    b[-1] ^= 0x01
    data.write_bytes(bytes(b))
    capsys.readouterr()
    assert main(["check", str(tmp_path / "unsat.json")]) == 6
    assert "model sha256 differs" in capsys.readouterr().out


def test_gzipped_model_with_external_data(tmp_path, monkeypatch):
    path = _save_external(_net(), tmp_path)
    gz = tmp_path / "model.onnx.gz"
    with open(path, "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    monkeypatch.chdir(tmp_path.parent)
    model = certkit.load_model(str(gz))
    x = RNG.uniform(-1, 1, (3, 16)).astype(np.float32)
    np.testing.assert_allclose(model.runner(x), model.graph(x), rtol=1e-5, atol=1e-6)
    assert model.sha256 == certkit.load_model(path).sha256  # the decompressed file and the same data
    plain_gz = tmp_path / "plain.onnx.gz"
    with gzip.open(plain_gz, "wb") as g:
        g.write(_net().SerializeToString())
    m2 = certkit.load_model(str(plain_gz))
    np.testing.assert_allclose(m2.runner(x), m2.graph(x), rtol=1e-5, atol=1e-6)


def _relocate(path: str, location: str) -> None:
    """Point every external tensor of the model file at ``location``."""
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


@pytest.mark.parametrize("case,why", [
    ("missing", "not a regular file"),
    ("escape", "leaves the model's folder"),
    ("absolute", "absolute path"),
    ("truncated", "ends before offset"),
])
def test_bad_external_data_is_a_model_error(tmp_path, case, why):
    path = _save_external(_net(), tmp_path / "m")
    data = tmp_path / "m" / "model.onnx.data"
    if case == "missing":
        data.unlink()
    elif case == "escape":
        shutil.copy(data, tmp_path / "outside.data")
        _relocate(path, "../outside.data")
    elif case == "absolute":
        _relocate(path, str(data))
    else:
        data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(ModelError, match=why):
        certkit.load_model(path)


def test_in_memory_external_tensor_is_refused(tmp_path):
    path = _save_external(_net(), tmp_path)
    m = onnx.load(path, load_external_data=False)
    with pytest.raises(ModelError, match="external file 'model.onnx.data'"):
        proto.to_array(m.graph.initializer[0])
