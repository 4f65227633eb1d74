"""benchmarks/fuzz_certify.py: its random models load and agree with onnxruntime, and it flags a wrong verdict."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from certkit.api import load_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_certify", ROOT / "benchmarks" / "fuzz_certify.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("build", ["random_model", "random_conv_model"])
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
    assert "WRONG" in out and "unsat, but onnxruntime gives" in out
    assert list(tmp_path.glob("*.onnx")) and list(tmp_path.glob("*.vnnlib"))


def test_unknown_is_never_wrong(monkeypatch, capsys):
    assert _run(monkeypatch, "unknown", "--cases", "5") == 0
    assert "unknown 5" in capsys.readouterr().out


def test_bad_arguments_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fuzz_certify.py", "--acts", "Relu,Nope"])
    assert fuzz.main() == 2
    assert "Nope" in capsys.readouterr().err
