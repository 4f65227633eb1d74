"""A model gate: tests a user would keep beside a model, run by pytest in CI (examples/github-actions.yml).

certkit's pytest plugin is active once certkit is installed (entry point ``pytest11``): nothing to add
to conftest.py. Run from the repository root:

    pytest examples/                         # everything
    pytest examples/ --certkit-skip-slow     # without the tests marked certkit_slow

A failing gate prints the certified fraction, the threshold, every sample not certified (index, label,
verdict) and the counterexample files it wrote under pytest's temporary directory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from certkit.pytest_plugin import assert_certified, assert_property

ROOT = Path(__file__).resolve().parent.parent
MODELS, SPECS = ROOT / "models", ROOT / "vnnlib"


def test_digits_fc_is_robust_on_the_test_split():
    """At least 90% of the 450 test digits keep their class in the L_inf ball of radius 0.02
    (pixels in [0, 1]); today 418/450 (92.9%) are certified."""
    assert_certified(MODELS / "digits_fc.onnx", MODELS / "digits_test.npz", eps=0.02, domain=(0, 1),
                     at_least=0.90)


def test_digits_fc_property_holds():
    """The VNN-LIB property of test image 1: no L_inf perturbation of 0.02 changes its class."""
    assert_property(MODELS / "digits_fc.onnx", SPECS / "digits_fc_0_eps0.02.vnnlib", timeout=60)


def test_digits_fc_two_atom_property_holds(certkit_model):
    """The same model, loaded once per session by the certkit_model fixture, and a spec with one
    disjunct of two atoms."""
    assert_property(certkit_model(MODELS / "digits_fc.onnx"), SPECS / "digits_fc_margin.vnnlib", timeout=60)


def _torch_digits_fc():
    """A torch module: here digits_fc rebuilt from its ONNX weights; in a real project, your trained net."""
    import onnx
    import torch
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(MODELS / "digits_fc.onnx")).graph.initializer}
    mats = [v for v in w.values() if v.ndim == 2]
    biases = [v for v in w.values() if v.ndim == 1]
    layers = []
    for k, (a, b) in enumerate(zip(mats, biases)):
        lin = torch.nn.Linear(a.shape[1], a.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(a))
            lin.bias.copy_(torch.tensor(b))
        layers += [lin] + ([torch.nn.ReLU()] if k < len(mats) - 1 else [])
    return torch.nn.Sequential(*layers)


def test_torch_module_gate():
    """A torch.nn.Module is exported to ONNX (checked against onnxruntime) and certified the same way;
    data as an (x, y) pair: the first 100 test digits."""
    with np.load(MODELS / "digits_test.npz") as z:
        x, y = z["x"][:100], z["y"][:100]
    assert_certified(_torch_digits_fc(), (x, y), eps=0.02, domain=(0, 1), at_least=0.85)


@pytest.mark.certkit_slow
def test_digits_conv_is_robust(certkit_counterexample_dir):
    """The conv net on the first 150 test digits (tens of seconds: marked certkit_slow). Its
    counterexamples, if any, stay in certkit_counterexample_dir for a CI step to upload."""
    with np.load(MODELS / "digits_test_conv.npz") as z:
        x, y = z["x"][:150], z["y"][:150]
    res = assert_certified(MODELS / "digits_conv.onnx", (x, y), eps=0.02, domain=(0, 1), at_least=0.85,
                           counterexamples=certkit_counterexample_dir)
    assert res.counts["misclassified"] < 10
