"""Input splitting says when the floating-point error terms, not the search, keep a domain open
(issue 13; :meth:`certkit.verify.input_split._Problem.check_floor`).

The net sums 2000 ReLUs of about 5 each of 6 inputs: at the box's lowest corner the output is ``m`` in
exact arithmetic and onnxruntime's float32 value is within 0.01 of it, while the sound any-order rounding
allowance of the 2000-term sum is about 1.2. With the property ``y > m - 0.2`` the error terms exceed the
margin around that corner: bounds cannot close the domains there (and with 6 free inputs no domain gets
small enough to run all its inputs in onnxruntime), and certify's timeout carries a note naming the point.
With ``y > m - 5`` the same net is proved, without a note."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import certkit
from certkit.certificate import certificate
from tests.helpers.onnx_builders import X, graph_model, ort_run

RNG = np.random.default_rng(0)
N_IN = 6
W1 = (RNG.standard_normal((2000, N_IN)) / 2).astype(np.float32)
#: the exact minimum of the net over [-0.1, 0.1]^6 (every ReLU active there: |W1 x| < 5)
LOWEST = 2000 * 5.0 - 0.1 * float(np.abs(W1.astype(np.float64).sum(axis=0)).sum())


def _files(tmp_path: Path, margin: float) -> tuple[Path, Path]:
    nodes = [helper.make_node("Gemm", [X, "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["Y"], transB=1)]
    m = graph_model(nodes, (1, N_IN), consts={"W1": W1, "b1": np.full(2000, 5.0, np.float32),
                                           "W2": np.ones((1, 2000), np.float32)})
    onnx.save(m, tmp_path / "sum2000.onnx")
    spec = tmp_path / "floor.vnnlib"
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(N_IN)) + "(declare-const Y_0 Real)\n"
                    + "".join(f"(assert (>= X_{i} -0.1))\n(assert (<= X_{i} 0.1))\n" for i in range(N_IN))
                    + f"(assert (<= Y_0 {LOWEST - margin!r}))\n")
    return tmp_path / "sum2000.onnx", spec


def test_floor_is_reported_where_the_error_terms_exceed_the_margin(tmp_path):
    model_path, spec_path = _files(tmp_path, 0.2)
    corners = np.array(np.meshgrid(*[(-0.1, 0.1)] * N_IN)).reshape(N_IN, -1).T.astype(np.float32)
    assert float(ort_run(onnx.load(model_path), corners).min()) > LOWEST - 0.19  # the property holds in float32
    m = certkit.load_model(model_path)
    s = certkit.load_spec(spec_path, m)
    res = certkit.certify(m, s, "bab", timeout=4)
    assert res.verdict == "timeout"  # never unsat: the bounds cannot show it, and never sat: it holds
    notes = [n for n in res.notes() if "error terms exceed the margin" in n]
    assert len(notes) == 1 and notes[0].startswith("note: input region 0: input splitting's bounds cannot close the domains around")
    assert "running every input" in notes[0] and "may not be provable" not in notes[0]  # enumeration applies here
    x = [float(v) for v in notes[0].split("x = [")[1].split("]")[0].split(",")]
    assert all(abs(v) <= 0.1 + 1e-7 for v in x)
    value = float(ort_run(onnx.load(model_path), np.array([x], np.float32))[0, 0])
    assert value > LOWEST - 0.2  # the point the note names satisfies the property in onnxruntime
    doc = certificate(res, m, s, {})
    assert doc["properties"][0]["floor"] == notes[0].removeprefix("note: input region 0: ")
    assert res.to_json()["properties"][0]["floor"] == doc["properties"][0]["floor"]
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra: pip install -e '.[test]'")
    schema = json.loads((Path(certkit.__file__).parent / "schemas" / "certificate.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(doc)), schema)


def test_no_floor_where_the_margin_exceeds_the_error_terms(tmp_path):
    m = certkit.load_model(_files(tmp_path, 5.0)[0])
    s = certkit.load_spec(tmp_path / "floor.vnnlib", m)
    res = certkit.certify(m, s, "bab", timeout=30)
    assert res.verdict == "unsat" and res.notes() == []


def test_check_floor_is_silent_where_the_point_closes(tmp_path):
    """The check itself: where the sound bound of the point is positive it says nothing."""
    from certkit.verify.certify import queries_of
    from certkit.verify.input_split import SplitConfig, _Problem, root_box
    from certkit.verify.query import Budget

    m = certkit.load_model(_files(tmp_path, 5.0)[0])
    q = queries_of(m, certkit.load_spec(tmp_path / "floor.vnnlib", m))[0]
    pb = _Problem(q, SplitConfig(), Budget.of(30))
    root, _ = pb.bound(*root_box(q))
    pb.check_floor(root)
    assert pb.floor_checked and pb.floor == ""


def test_floor_note_on_the_command_line(tmp_path, capsys):
    from certkit.cli import main

    model_path, spec_path = _files(tmp_path, 0.2)
    code = main(["certify", str(model_path), str(spec_path), "--backend", "bab", "--timeout", "4", "-q"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0] == "timeout"
    assert any(line.startswith("note: input region 0: input splitting's bounds cannot close the domains around") for line in out)


def test_check_floor_reads_several_parts_with_their_kept_bounds(tmp_path):
    """The check over a queue and a batch of children, each with the intermediate bounds they keep
    (``SplitConfig.inherit``), selected in place: it names the floor from either part."""
    import torch

    from certkit.verify.certify import queries_of
    from certkit.verify.input_split import SplitConfig, _Problem, children, root_box
    from certkit.verify.query import Budget

    m = certkit.load_model(_files(tmp_path, 0.2)[0])
    q = queries_of(m, certkit.load_spec(tmp_path / "floor.vnnlib", m))[0]
    pb = _Problem(q, SplitConfig(inherit=True), Budget.of(60))
    lo, hi = root_box(q)
    root, _ = pb.bound(lo, hi)
    assert root.kept is not None
    clo, chi = children(lo, hi, torch.tensor([[0]]))
    kids, _ = pb.bound(clo.reshape(-1, lo.shape[1]), chi.reshape(-1, lo.shape[1]),
                       kept={k: v.repeat_interleave(2, dim=0) for k, v in root.kept.items()})
    assert kids.kept is not None and kids.lo.shape[0] == 2
    pb.check_floor(root.rows(slice(0, 0)), kids, root)  # an empty part too
    assert "error terms exceed the margin" in pb.floor
    floor = pb.floor
    pb.check_floor(kids)  # once per search
    assert pb.floor == floor
