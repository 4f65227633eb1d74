"""The Python API's additions (issue 16): torch modules as models (exported, checked against
onnxruntime), short reprs, ``summary()``/``to_json()`` of results, label validation."""
from __future__ import annotations

import gc
import json
import os

import numpy as np
import pytest
import torch

import certkit
from certkit import api
from certkit.errors import DataError, ModelError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FC = os.path.join(ROOT, "models", "digits_fc.onnx")
DATA = os.path.join(ROOT, "models", "digits_test.npz")
UNSAT = os.path.join(ROOT, "vnnlib", "digits_fc_0_eps0.02.vnnlib")
SAT = os.path.join(ROOT, "vnnlib", "digits_fc_0_eps0.3.vnnlib")


@pytest.fixture(scope="module")
def fc():
    return certkit.load_model(FC)


@pytest.fixture(scope="module")
def digits():
    with np.load(DATA) as z:
        return z["x"][:40], z["y"][:40]


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(256, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


class _Unfaithful(torch.nn.Module):
    """Computes one thing in torch and exports another (as a custom op with a wrong symbolic would)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 3)

    def forward(self, x):
        y = self.lin(x)
        return y * 2 if torch.onnx.is_in_onnx_export() else y


def test_torch_module_is_exported_and_matches_onnxruntime():
    net = _conv_net()
    x = torch.rand(5, 1, 8, 8)
    model = certkit.load_model(net, example_input=x)
    assert isinstance(model, certkit.api.Model)
    assert model.graph.input_shape == (1, 1, 8, 8) and model.n_outputs == 10
    z = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        ref = net(z).numpy()
    np.testing.assert_allclose(model.runner(z.reshape(7, -1).numpy()), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.graph(z.reshape(7, -1).numpy()), ref, rtol=1e-4, atol=1e-4)  # the IR too
    # the temporary ONNX file lives as long as the model
    path = model.path
    assert os.path.exists(path)
    del model
    gc.collect()
    assert not os.path.exists(path)


def test_from_torch_keeps_a_given_path_and_eval_mode(tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net.train()  # certkit verifies the eval-mode function, and leaves the module's mode alone
    out = tmp_path / "net.onnx"
    model = api.from_torch(net, np.random.default_rng(0).random((2, 6)), path=out)
    assert net.training and model.path == str(out)
    del model
    gc.collect()
    assert out.exists()


def test_certify_dataset_takes_a_torch_module(digits):
    x, y = digits
    net = _conv_net()
    res = certkit.certify_dataset(net, x[:8].reshape(8, 1, 8, 8), y[:8], eps=0.01, backend="deeppoly")
    assert res.total == 8 and sum(res.counts.values()) == 8


def test_unfaithful_export_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"_Unfaithful and its ONNX export differ: on example row 0"):
        certkit.load_model(_Unfaithful(), example_input=torch.rand(3, 6))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ModelError, match="not faithful"):
        api.from_torch(_Unfaithful(), torch.rand(1, 6), path=out, n_perturbations=2)


def test_a_difference_only_on_perturbations_is_caught(monkeypatch):
    """The check also runs noisy copies of the example input (here onnxruntime is made wrong there)."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    x = torch.zeros(1, 4)
    real = api._check_export

    def check(name, model, *args):
        run = model.runner

        class Wrong:
            def __call__(self, z):
                out = run(z)
                out[1:] += 1.0  # every row but the example's
                return out
        model._runner = Wrong()
        return real(name, model, *args)
    monkeypatch.setattr(api, "_check_export", check)
    with pytest.raises(ModelError, match="on perturbation 0"):
        certkit.load_model(net, example_input=x)


def test_module_without_example_input_and_bad_models_are_usage_errors():
    net = torch.nn.Linear(4, 2)
    with pytest.raises(UsageError, match="needs an example input"):
        certkit.load_model(net)
    with pytest.raises(UsageError, match="needs an example input"):
        certkit.certify(net, UNSAT)
    with pytest.raises(UsageError, match="got int"):
        certkit.load_model(42)
    with pytest.raises(UsageError, match="non-empty float batch"):
        certkit.load_model(net, example_input=torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(ModelError, match="fails on its example input"):
        certkit.load_model(net, example_input=torch.zeros(1, 5))


def test_reprs_are_one_short_line(fc, digits):
    spec = certkit.load_spec(UNSAT, fc)
    res = certkit.certify(fc, spec, backend="deeppoly")
    x, y = digits
    ds = certkit.certify_dataset(fc, x[:10], y[:10], eps=0.02, backend="deeppoly")
    b = certkit.bounds(fc, spec, backend="interval")
    for obj, start in ((fc, "<Model "), (spec, "<Spec "), (res, "<CertifyResult unsat"),
                       (ds, "<DatasetResult certified "), (b, "<BoundsResult interval: 10 outputs in [")):
        r = repr(obj)
        assert r.startswith(start) and len(r) < 200 and "\n" not in r, r
    assert "(1, 64) -> 10 outputs, 6 nodes" in repr(fc)
    assert "1 input box(es), 64 inputs -> 10 outputs, 9 disjunct(s)" in repr(spec)


def test_certify_result_summary_and_json(fc):
    res = certkit.certify(FC, SAT)  # paths are accepted too
    assert res.verdict == "sat"
    assert res.summary().splitlines()[0].startswith("sat (backend auto")
    assert "counterexample in input box 0" in res.summary()
    doc = res.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["verdict"] == "sat" and len(doc["witness"]["x"]) == 64 and len(doc["witness"]["y"]) == 10
    unsat = certkit.certify(fc, UNSAT, backend="deeppoly").to_json()
    assert unsat["verdict"] == "unsat" and unsat["properties"][0]["status"] == "verified"
    assert unsat["properties"][0]["spec_lower_min"] > 0


def test_dataset_result_summary_and_json(fc, digits):
    x, y = digits
    ds = certkit.certify_dataset(fc, x, y, eps=0.02, backend="deeppoly")
    assert ds.total == 40 and ds.counts["verified"] == ds.certified
    assert ds.fraction == ds.certified / 40
    assert [s.index for s in ds.not_certified()] == [s.index for s in ds.samples if s.verdict != "verified"]
    head, counts = ds.summary().splitlines()[:2]
    assert head.startswith(f"certified {ds.certified}/40 (") and "eps 0.02 (linf), backend deeppoly" in head
    assert counts.startswith(f"verified {ds.certified}, falsified ")
    doc = ds.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["counts"] == ds.counts and len(doc["per_sample"]) == 40
    falsified = [e for e in doc["per_sample"] if e["verdict"] == "falsified"]
    assert all(len(e["witness"]) == 64 and len(e["witness_output"]) == 10 for e in falsified)


def test_labels_are_validated(fc, digits):
    x, y = digits
    ok = certkit.certify_dataset(fc, x[:3], y[:3].astype(np.float32), eps=0.01, backend="interval")
    assert [s.label for s in ok.samples] == [int(v) for v in y[:3]]
    bad = y[:5].astype(np.float64)
    bad[2] = 3.5
    with pytest.raises(DataError, match=r"labels must be integers \(sample 2 has label 3.5\)"):
        certkit.certify_dataset(fc, x[:5], bad, eps=0.01)
    out = y[:5].copy()
    out[3] = 10
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\] \(sample 3 has label 10\)"):
        certkit.certify_dataset(fc, x[:5], out, eps=0.01)
    neg = y[:5].astype(np.float64)
    neg[1] = -1.0
    with pytest.raises(DataError, match=r"sample 1 has label -1"):
        certkit.certify_dataset(fc, x[:5], neg, eps=0.01)
