"""The Python API: ``certkit.load_model / load_spec / certify / bounds`` and what their results promise.

A ``sat`` result carries a witness that onnxruntime confirms; an ``unsat`` result
has every disjunct ruled out by a bound above the floating-point margin; and
on a few shared VNN-COMP instances certkit never contradicts the known answer.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import certkit
from certkit.certificate import certificate, results_file
from certkit.errors import BackendError, SpecError

from tests.helpers.examples import CONV, CONV_UNSAT, FC, MARGIN, SAT, SHARED, UNSAT

DIGIT_CASES = [(FC, UNSAT, "unsat"), (FC, SAT, "sat"), (FC, MARGIN, "unsat"), (CONV, CONV_UNSAT, "unsat")]
DIGIT_IDS = ["fc_eps0.02", "fc_eps0.3", "fc_margin", "conv_eps0.02"]


BENCH = SHARED / "benchmarks"
# a few fast rows of instances.csv: (benchmark, onnx file name, vnnlib file name), sat and unsat
INSTANCE_ROWS = [
    ("acasxu", "ACASXU_run2a_1_3_batch_2000.onnx", "prop_1.vnnlib"),       # unsat
    ("acasxu", "ACASXU_run2a_1_4_batch_2000.onnx", "prop_2.vnnlib"),       # sat
    ("acasxu", "ACASXU_run2a_1_8_batch_2000.onnx", "prop_3.vnnlib"),       # sat
    ("mnistfc_2021", "mnist-net_256x2.onnx", "prop_0_0.03.vnnlib"),        # unsat
    ("mnistfc_2021", "mnist-net_256x2.onnx", "prop_1_0.05.vnnlib"),        # sat
    ("eran_2021", "mnist_relu_9_200.onnx", "mnist_spec_idx_8098_eps_0.01500.vnnlib"),  # unsat
]


# ---------------------------------------------------------------------------------------------- helpers


class Ort:
    """An independent onnxruntime evaluator for flat float32 inputs."""

    def __init__(self, path: Path) -> None:
        self.s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.s.get_inputs()[0]
        self.name = inp.name
        self.shape = [d if isinstance(d, int) else 1 for d in inp.shape]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        return np.stack([np.asarray(self.s.run(None, {self.name: r.reshape(self.shape)})[0]).reshape(-1)
                         for r in x])


def assert_valid_witness(model_path: Path, spec, res) -> None:
    w = res.witness
    assert w is not None
    prop = spec.properties[w.property_index]
    assert w.x.dtype == np.float32 and w.x.shape == (spec.n_inputs,)
    x64 = w.x.astype(np.float64)  # the float32 values, compared exactly in float64
    assert (x64 >= prop.lower).all() and (x64 <= prop.upper).all()
    y = Ort(model_path)(w.x)[0].astype(np.float64)
    dj = prop.disjuncts[w.disjunct_index]
    assert (dj.C @ y <= dj.d).all(), (dj.C @ y - dj.d).max()
    np.testing.assert_allclose(w.y, y, rtol=1e-6, atol=1e-6)


def assert_valid_unsat(res, spec) -> None:
    assert res.verdict == "unsat" and res.witness is None
    assert len(res.properties) == len(spec.properties)
    for pr, prop in zip(res.properties, spec.properties):
        assert pr.status == "verified"
        assert pr.ruled_out is not None and pr.ruled_out.shape == (len(prop.disjuncts),)
        assert pr.ruled_out.all()
        assert (pr.margin > 0).all()
        for k in range(len(prop.disjuncts)):
            rows = pr.owner == k
            assert rows.any()
            assert (pr.spec_lower[rows] > pr.margin[rows]).any(), k


def sample_box(lower: np.ndarray, upper: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Random points of the box, a quarter of them vertices, plus the centre; float32 inside the box."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, len(lower)))
    u[: n // 4] = np.round(u[: n // 4])
    x = np.vstack([(lower + upper) / 2, lower + u * (upper - lower)]).astype(np.float32)
    x = np.clip(x, lower, upper).astype(np.float32)
    keep = ((x >= lower) & (x <= upper)).all(axis=1)
    return x[keep]


# ---------------------------------------------------------------------------------------------- API basics


def test_load_model_and_spec():
    m = certkit.load_model(FC)
    assert m.n_inputs == 64 and m.n_outputs == 10
    s = certkit.load_spec(UNSAT, m)
    assert s.n_inputs == 64 and s.n_outputs == 10 and len(s.properties) == 1
    p = s.properties[0]
    assert p.lower.shape == p.upper.shape == (64,) and (p.lower <= p.upper).all()
    assert len(p.disjuncts) == 9
    assert certkit.load_spec(UNSAT).n_inputs == 64  # without a model


@pytest.mark.parametrize("model_path,spec_path,expected", DIGIT_CASES, ids=DIGIT_IDS)
def test_certify_digits(model_path, spec_path, expected):
    m = certkit.load_model(model_path)
    s = certkit.load_spec(spec_path, m)
    res = certkit.certify(m, s)
    assert res.verdict == expected
    assert res.backend == "auto"
    assert res.timings["total"] >= 0
    if expected == "sat":
        assert_valid_witness(model_path, s, res)
        assert res.properties[res.witness.property_index].status == "falsified"
    else:
        assert_valid_unsat(res, s)


@pytest.mark.parametrize("backend", ["interval", "deeppoly", "auto"])
def test_certify_sat_with_every_backend(backend):
    """The attack runs first whatever the backend: every backend finds a valid witness."""
    m = certkit.load_model(FC)
    s = certkit.load_spec(SAT, m)
    res = certkit.certify(m, s, backend=backend, seed=1)
    assert res.verdict == "sat"
    assert_valid_witness(FC, s, res)


def test_unknown_backend_raises():
    m = certkit.load_model(FC)
    s = certkit.load_spec(UNSAT, m)
    with pytest.raises(BackendError):
        certkit.certify(m, s, backend="no-such-backend")
    with pytest.raises(BackendError):
        certkit.bounds(m, s, backend="no-such-backend")


def test_spec_size_mismatch_raises(tmp_path):
    m = certkit.load_model(FC)
    y9 = "(declare-const Y_9 Real)\n"
    text = UNSAT.read_text().replace(y9, y9 + "(declare-const Y_10 Real)\n")
    f = tmp_path / "y10.vnnlib"
    f.write_text(text)
    with pytest.raises(SpecError):
        certkit.load_spec(f, m)


def test_timeout_gives_timeout_verdict():
    m = certkit.load_model(FC)
    s = certkit.load_spec(UNSAT, m)
    res = certkit.certify(m, s, timeout=1e-9)
    assert res.verdict == "timeout"
    assert "time budget" in res.reason
    assert results_file(res) == "timeout\n"


def test_certificate_and_results_file_from_api():
    m = certkit.load_model(FC)
    s = certkit.load_spec(UNSAT, m)
    res = certkit.certify(m, s, backend="deeppoly")
    doc = certificate(res, m, s, {"seed": 0})
    assert doc["verdict"] == "unsat" and doc["backend"] == "deeppoly"
    assert doc["model"]["sha256"] == m.sha256 and doc["spec"]["sha256"] == s.sha256
    assert results_file(res) == "unsat\n"
    s2 = certkit.load_spec(SAT, m)
    res2 = certkit.certify(m, s2)
    text = results_file(res2)
    assert text.startswith("sat\n((X_0 ") and text.rstrip().endswith("))")
    assert text.count("\n(") == 64 + 10  # "sat\n((X_0 ..." then one line per value


# ---------------------------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("backend", ["interval", "deeppoly", "auto"])
@pytest.mark.parametrize("model_path,spec_path,expected", DIGIT_CASES, ids=DIGIT_IDS)
def test_bounds_contain_onnxruntime_outputs(model_path, spec_path, expected, backend):
    """Soundness: every sampled float32 input's onnxruntime output lies within the bounds."""
    m = certkit.load_model(model_path)
    s = certkit.load_spec(spec_path, m)
    r = certkit.bounds(m, s, backend)
    assert r.output_lower.shape == r.output_upper.shape == (10,)
    assert (r.output_lower <= r.output_upper).all()
    prop = s.properties[0]
    x = sample_box(prop.lower, prop.upper, 400)
    y = Ort(model_path)(x).astype(np.float64)
    tol = 1e-5 * (1 + np.abs(y).max())
    assert (y >= r.output_lower - tol).all() and (y <= r.output_upper + tol).all()
    C, d, owner = prop.stacked()
    assert np.array_equal(r.owner, owner)
    assert ((y @ C.T - d).min(axis=0) >= r.spec_lower - tol).all()


def test_auto_never_looser_than_interval_or_deeppoly_on_digits():
    for model_path, spec_path, _ in DIGIT_CASES:
        m = certkit.load_model(model_path)
        s = certkit.load_spec(spec_path, m)
        sl = {b: certkit.bounds(m, s, b).spec_lower for b in ("interval", "deeppoly", "auto")}
        best = np.maximum(sl["interval"], sl["deeppoly"])
        assert (sl["auto"] >= best - 1e-9 * (1 + np.abs(best))).all(), spec_path.name


def test_auto_decides_whatever_a_single_backend_decides():
    for model_path, spec_path, _ in DIGIT_CASES:
        m = certkit.load_model(model_path)
        s = certkit.load_spec(spec_path, m)
        single = {b: certkit.certify(m, s, backend=b).verdict for b in ("interval", "deeppoly")}
        auto = certkit.certify(m, s, backend="auto").verdict
        if "unsat" in single.values():
            assert auto == "unsat", (spec_path.name, single)
        if "sat" in single.values():
            assert auto == "sat", (spec_path.name, single)


# ---------------------------------------------------------------------------------------------- shared instances


def _instances() -> list[dict]:
    csv_path = BENCH / "instances.csv"
    if not csv_path.exists():
        pytest.skip(f"../shared not found: {csv_path} is missing")
    rows = list(csv.DictReader(csv_path.open()))
    picked = []
    for bench, onnx_name, vnn_name in INSTANCE_ROWS:
        row = next((r for r in rows if r["benchmark"] == bench and r["onnx"].endswith("/" + onnx_name)
                    and r["vnnlib"].endswith("/" + vnn_name)), None)
        assert row is not None, (bench, onnx_name, vnn_name)
        picked.append(row)
    return picked


@pytest.fixture(scope="module")
def instances():
    rows = _instances()
    for r in rows:
        for key in ("onnx", "vnnlib"):
            if not (BENCH / r[key]).exists():
                pytest.skip(f"../shared not found: {BENCH / r[key]} is missing")
    return rows


def test_shared_instances_cover_sat_and_unsat(instances):
    assert {r["expected"] for r in instances} == {"sat", "unsat"}
    assert {r["benchmark"].split("_")[0] for r in instances} == {"acasxu", "mnistfc", "eran"}


INSTANCE_IDS = [f"{b}-{o.removesuffix('.onnx')}-{v.removesuffix('.vnnlib')}" for b, o, v in INSTANCE_ROWS]


@pytest.mark.parametrize("k", range(len(INSTANCE_ROWS)), ids=INSTANCE_IDS)
def test_shared_instance_never_contradicts_expected(instances, k):
    row = instances[k]
    m = certkit.load_model(BENCH / row["onnx"])
    s = certkit.load_spec(BENCH / row["vnnlib"], m)
    res = certkit.certify(m, s, backend="deeppoly", timeout=30)
    assert res.verdict in ("unsat", "sat", "unknown", "timeout")
    if row["expected"] == "sat":
        assert res.verdict != "unsat", row
    if row["expected"] == "unsat":
        assert res.verdict != "sat", row
    if res.verdict == "sat":
        assert_valid_witness(BENCH / row["onnx"], s, res)
    if res.verdict == "unsat":
        assert_valid_unsat(res, s)


def test_shared_auto_never_looser(instances):
    """auto's spec bounds are at least the better of interval's and deeppoly's, row by row."""
    for row in instances[:5]:
        m = certkit.load_model(BENCH / row["onnx"])
        s = certkit.load_spec(BENCH / row["vnnlib"], m)
        sl = {b: certkit.bounds(m, s, b).spec_lower for b in ("interval", "deeppoly", "auto")}
        best = np.maximum(sl["interval"], sl["deeppoly"])
        assert (sl["auto"] >= best - 1e-9 * (1 + np.abs(best))).all(), row
