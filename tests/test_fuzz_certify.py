"""benchmarks/fuzz_certify.py: its random models load and agree with onnxruntime, and it flags a wrong verdict."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from certkit.api import load_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_certify", ROOT / "benchmarks" / "fuzz_certify.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.fixture(autouse=True)
def _temporary_files_in_tmp_path(monkeypatch, tmp_path):
    """The fuzzer's temporary folders (and one for wrong cases without ``--keep``) go to the test's folder."""
    monkeypatch.setattr(fuzz.tempfile, "tempdir", str(tmp_path))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("build", ["random_model", "random_conv_model", "random_unet_model", "random_attention_model",
                                   "random_ops_model"])
def test_random_models_match_onnxruntime(seed, build, tmp_path):
    import onnxruntime as ort

    model, n_out, _ = getattr(fuzz, build)(np.random.default_rng(seed), list(fuzz.ACTS))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = fuzz.box_points(-np.ones(d, np.float32), np.ones(d, np.float32), 400, np.random.default_rng(seed))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    ours = load_model(str(path)).graph(x)
    assert ref.shape == (len(x), n_out)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def _run(monkeypatch, verdict: str, *args: str) -> int:
    import certkit.api

    monkeypatch.setattr(certkit.api, "certify", lambda *a, **k: SimpleNamespace(verdict=verdict, witness=None))
    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", "--samples", "2000", *args])
    return fuzz.main()


def test_flags_a_wrong_unsat(monkeypatch, capsys, tmp_path):
    # a certify that always says unsat is wrong on the cases whose threshold lies above the sampled minimum
    assert _run(monkeypatch, "unsat", "--cases", "12", "--keep", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "WRONG" in out and "unsat, but a sampled point violates it" in out
    assert list(tmp_path.glob("*.onnx")) and list(tmp_path.glob("*.vnnlib"))


def test_flags_a_witness_outside_the_box(monkeypatch, capsys):
    import certkit.api

    def far(model_path, spec_path, **kw):  # a "witness" far outside every box the fuzzer draws
        d = onnx.load(model_path).graph.input[0].type.tensor_type.shape.dim[1].dim_value
        return SimpleNamespace(verdict="sat", witness=SimpleNamespace(x=np.full(d, 1e6, np.float32)))

    monkeypatch.setattr(certkit.api, "certify", far)
    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", "--samples", "2000", "--cases", "3"])
    assert fuzz.main() == 1
    assert "sat, but the witness" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(8))
def test_written_properties_mean_what_the_fuzzer_checks(seed, tmp_path):
    """The VNN-LIB the fuzzer writes, parsed by certkit, holds exactly where the fuzzer's value() says."""
    from certkit.api import load_spec
    from certkit.verify.witness import satisfied_disjunct

    rng = np.random.default_rng(seed)
    model, n_out, _ = fuzz.random_model(rng, ["Relu"])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    y = rng.normal(0, 1, (500, n_out))
    prop, _ = fuzz.edge_property(rng, y, n_out)
    fuzz.write_vnnlib(str(tmp_path / "p.vnnlib"), np.zeros(d, np.float32), np.ones(d, np.float32), prop, n_out)
    parsed = load_spec(str(tmp_path / "p.vnnlib"), load_model(str(path))).properties[0]
    y2 = rng.normal(0, 1, (500, n_out))
    for row, v in zip(np.concatenate([y, y2]), fuzz.value(np.concatenate([y, y2]), prop)):
        assert (satisfied_disjunct(parsed, row) >= 0) == (v <= 0)


def test_unknown_is_never_wrong(monkeypatch, capsys, tmp_path):
    assert _run(monkeypatch, "unknown", "--cases", "5") == 0
    assert "unknown 5" in capsys.readouterr().out
    assert not list(tmp_path.glob("fuzz_certify_*"))  # no folder for wrong cases when there is none


@pytest.mark.parametrize("family", ["mlp", "conv", "unet", "attention", "ops"])
def test_the_last_b_initializer_is_the_output_bias(family, tmp_path):
    """vnnlib_case moves a pair property's threshold into the last ``*_b`` initializer: in every family that
    must shift output i alone, by exactly the amount moved."""
    import onnxruntime as ort
    from onnx import numpy_helper

    for seed in range(4):
        model, n_out, _ = fuzz.random_model(np.random.default_rng(seed), list(fuzz.ACTS), (family,))
        d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        x = np.random.default_rng(seed).normal(0, 1, (50, d)).astype(np.float32)
        runs = []
        for shift in (0.0, 0.5):
            b = [k for k in model.graph.initializer if k.name.endswith("_b")][-1]
            bias = numpy_helper.to_array(b).copy()
            bias[0] -= np.float32(shift)
            b.CopyFrom(numpy_helper.from_array(bias, b.name))
            onnx.save(model, tmp_path / "m.onnx")
            runs.append(ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
                        .run(None, {"X": x})[0].astype(np.float64))
        fin = np.isfinite(runs[0][:, 0])  # (an overflowing net's inf stays inf)
        assert (np.abs(runs[0][fin, 0] - runs[1][fin, 0] - 0.5) <= 1e-5 * (1 + np.abs(runs[0][fin, 0]))).all()
        np.testing.assert_array_equal(runs[0][:, 1:], runs[1][:, 1:])


@pytest.mark.parametrize("args", [["--acts", "Relu,Nope"], ["--families", "mlp,Nope"]])
def test_bad_arguments_exit_2(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", *args])
    assert fuzz.main() == 2
    assert "Nope" in capsys.readouterr().err


def test_dataset_mode_flags_a_wrong_certificate(monkeypatch, capsys, tmp_path):
    # every sample "certified" at radii up to 1: some balls hold a point of another class
    import certkit.api

    def all_verified(model, x, y, eps, **kw):
        return SimpleNamespace(samples=[SimpleNamespace(verdict="verified") for _ in range(len(x))])

    monkeypatch.setattr(certkit.api, "certify_dataset", all_verified)
    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", "--samples", "4000", "--cases", "12", "--dataset", "l2",
                                      "--keep", str(tmp_path)])
    assert fuzz.main() == 1
    assert "certified at l2 radius" in capsys.readouterr().out
    assert list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_ball_points_lie_in_the_ball_and_reach_its_surface(norm):
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(0, 1, 5), 0.3
    pts = fuzz.ball_points(x0, eps, norm, 4000, rng)
    dist = np.linalg.norm(pts.astype(np.float64) - x0, ord={"linf": np.inf, "l2": 2, "l1": 1}[norm], axis=1)
    assert len(pts) > 1000 and (dist <= eps).all() and dist.max() > 0.99 * eps


def test_recheck_passes_a_real_certificate_and_reports_a_forged_one(tmp_path):
    import dataclasses

    import certkit
    from tests.helpers.examples import FC, SAT, UNSAT

    res = certkit.certify(FC, UNSAT, timeout=60)
    assert res.verdict == "unsat"
    assert fuzz.recheck(res, FC, UNSAT, str(tmp_path)) is None
    sat = certkit.certify(FC, SAT, timeout=60)
    assert sat.verdict == "sat"
    forged = dataclasses.replace(sat, verdict="unsat", witness=None)  # "unsat" with no proof behind it
    msg = fuzz.recheck(forged, FC, SAT, str(tmp_path))
    assert msg is not None and msg.startswith("certkit check exit")


def test_an_unusable_keep_folder_exits_2(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", "--cases", "1", "--keep", str(blocker / "sub")])
    assert fuzz.main() == 2
    assert "cannot use --keep" in capsys.readouterr().err


def test_bounds_mode_passes_real_bounds_and_flags_too_tight_ones(monkeypatch, capsys, tmp_path):
    """``--bounds``: certkit's procedures pass on a few random nets; a procedure whose bounds exclude part of
    the box's outputs (here: every output's bounds shrunk to a point) is flagged, and the box is kept."""
    from certkit.bounds import fallback

    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", "--bounds", "--cases", "3", "--samples", "2000",
                                      "--keep", str(tmp_path / "keep")])
    assert fuzz.main() == 0
    assert "sound 21" in capsys.readouterr().out  # 3 cases x 7 procedures

    real = fallback.lower_within_memory

    def point(stage, graph, inputs, C, *args, **kwargs):
        low, method = real(stage, graph, inputs, C, *args, **kwargs)
        n = C.shape[0] // 2
        mid = (low[:, :n] - low[:, n:]) / 2  # (lower + upper) / 2 of every output
        return torch.cat([mid, -mid], dim=1), method

    monkeypatch.setattr(fallback, "lower_within_memory", point)
    assert fuzz.main() == 1
    assert "but onnxruntime gives" in capsys.readouterr().out
    assert list((tmp_path / "keep").glob("bounds0_*.npz"))


def test_bounds_mode_reports_loose_rows_at_a_point_without_calling_them_wrong(monkeypatch, capsys, tmp_path):
    """A point's DeepPoly rows wider than ``LOOSE`` print as ``LOOSE`` (a candidate looseness: the max-group
    allowance of 2026-12-07 gave 1e18 there), exit 0; a real net's rows at a point are far narrower."""
    from onnx import helper

    from certkit.api import load_model
    from tests.helpers.onnx_builders import X, graph_model

    m = graph_model([helper.make_node("MatMul", [X, "W"], ["Y"])], (1, 2), consts={"W": np.array([[1.0, 2.0], [3.0, -1.0]])})
    onnx.save(m, tmp_path / "lin.onnx")
    assert fuzz.point_width(load_model(str(tmp_path / "lin.onnx")).graph, np.array([0.5, -1.0], np.float32)) < 1e-5
    monkeypatch.setattr(fuzz, "point_width", lambda g, x0: 1e18)
    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", "--bounds", "--cases", "2", "--samples", "500"])
    assert fuzz.main() == 0
    out = capsys.readouterr().out
    assert "LOOSE case0_0" in out and "loose 2" in out


def test_fixed_batch_copy_is_the_same_net_with_batch_1(tmp_path):
    """``--fixed-batch``: certkit gets a copy whose batch dimension is 1 (input and output), the same net."""
    import onnxruntime as ort

    model, n_out, _ = fuzz.random_model(np.random.default_rng(3), list(fuzz.ACTS), ("conv",))
    mpath = str(tmp_path / "m.onnx")
    onnx.save(model, mpath)
    assert fuzz.for_certkit(model, mpath, False) == mpath
    path = fuzz.for_certkit(model, mpath, True)
    fixed = onnx.load(path)
    assert [v.type.tensor_type.shape.dim[0].dim_value for v in (*fixed.graph.input, *fixed.graph.output)] == [1, 1]
    d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.random.default_rng(0).normal(0, 1, (1, d)).astype(np.float32)
    runs = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0] for p in (mpath, path)]
    np.testing.assert_array_equal(*runs)
    np.testing.assert_allclose(load_model(path).graph(x), runs[0], rtol=1e-4, atol=1e-4)
