"""certkit.nn: structured layers keep their constraints, exports run identically in torch,
onnxruntime and certkit; the shipped structured MNIST models have the promised structure."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from certkit.graph import ops
from certkit.nn import (ABBAConv2d, ABBALinear, AOLLinear, CappedLeakyReLU, Halving, MaxMin, NActivation,
                        NonnegConv2d, NonnegLinear, SignedDoubling, export_onnx, freeze, project)
from certkit.onnx.importer import load_onnx
from tests.helpers.examples import MODELS
from tests.helpers.onnx_builders import assert_matches_ort


def _step(model: nn.Module, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    opt.zero_grad()
    (-model(x).sum() * 10).backward()  # push weights hard in both directions
    opt.step()
    project(model)


def test_nonneg_layers_stay_nonneg():
    torch.manual_seed(0)
    m = nn.Sequential(NonnegConv2d(1, 3, 3, nonneg_bias=True), nn.Flatten(), NonnegLinear(3 * 16, 4))
    for _ in range(3):
        _step(m, torch.randn(8, 1, 6, 6))
    assert (m[0].weight >= 0).all() and (m[0].bias >= 0).all() and (m[2].weight >= 0).all()


def test_abba_linear_structure_and_norm():
    torch.manual_seed(0)
    lay = ABBALinear(5, 4)
    _step(lay, torch.randn(6, 10))
    W = lay.weight.detach()
    A, B = W[:4, :5], W[:4, 5:]
    assert torch.equal(W[4:, 5:], A) and torch.equal(W[4:, :5], B) and (A >= 0).all() and (B >= 0).all()
    lay.limit_norm_(0.5)
    s = torch.linalg.matrix_norm(lay.sum_matrix().double(), 2)
    # with A, B >= 0 the ABBA matrix has the norm of A + B (DESIGN.md section 4)
    assert s <= 0.5 + 1e-6 and torch.isclose(torch.linalg.matrix_norm(lay.weight.double(), 2), s)


def test_abba_conv_kernel_blocks():
    torch.manual_seed(0)
    c = ABBAConv2d(2, 3, 3, stride=2, padding=1)
    w = c.weight.detach()
    assert w.shape == (6, 4, 3, 3)
    assert torch.equal(w[:3, :2], w[3:, 2:]) and torch.equal(w[:3, 2:], w[3:, :2])


def test_abba_net_is_odd_with_odd_activations():
    """x -> [x; -x], ABBA layers, capped leaky ReLU, (y1 - y2) / 2 with zero biases is odd."""
    torch.manual_seed(0)
    m = nn.Sequential(SignedDoubling(), ABBALinear(4, 6, bias=False), CappedLeakyReLU(0.2, 0.5),
                      ABBALinear(6, 3, bias=False), Halving())
    x = torch.randn(20, 4)
    assert torch.allclose(m(-x), -m(x), atol=1e-6)


def test_activations():
    x = torch.linspace(-3, 3, 601)[:, None]
    f = CappedLeakyReLU(0.25, 1.0)(x)
    assert torch.allclose(f, -CappedLeakyReLU(0.25, 1.0)(-x))
    assert torch.allclose(f[x.abs() <= 1], x[x.abs() <= 1])
    n = NActivation(1)
    with torch.no_grad():
        n.theta1.fill_(0.5)
        n.theta2.fill_(-0.5)  # unsorted on purpose: the module sorts them
    y = n(x)
    assert torch.allclose(y, x - 2 * x.clamp(-0.5, 0.5))
    mm = MaxMin()(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    assert mm.tolist() == [[1.0, 3.0, 0.5, -2.0]]


def test_aol_is_nonexpansive():
    torch.manual_seed(0)
    lay = AOLLinear(30, 12)
    assert float(torch.linalg.matrix_norm(lay.effective_weight().detach().double(), 2)) <= 1 + 1e-6


def test_freeze_and_export_match(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(SignedDoubling(), ABBALinear(5, 4), NActivation(8), AOLLinear(8, 6), MaxMin(),
                      ABBALinear(3, 2), Halving())
    x = torch.randn(7, 5)
    with torch.no_grad():
        assert torch.allclose(freeze(m)(x), m(x), atol=1e-6)
    path = export_onnx(m, tmp_path / "n.onnx", (1, 5))
    g = load_onnx(path)
    assert {"n_activation", "max_min"} <= {n.op.kind for n in g.nodes}
    assert_matches_ort(onnx.load(str(path)), n=8, lo=-2.0, hi=2.0)
    with torch.no_grad():
        assert np.allclose(g(x.double().numpy()), m(x).numpy(), atol=1e-5)


def test_export_rejects_old_opset(tmp_path):
    with pytest.raises(ValueError):
        export_onnx(nn.Linear(2, 2), tmp_path / "x.onnx", (1, 2), opset=11)


# --------------------------------------------------------------------------- shipped models

SHIPPED = ["mnist_std", "mnist_nonneg", "mnist_abba", "mnist_1lip", "mnist_ae_nonneg"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_imports_small(name):
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 1.1e6
    g = load_onnx(path)
    assert g.n_inputs == 784 and g.n_outputs == (784 if name == "mnist_ae_nonneg" else 10)


def _dense(g):
    return [n.op for n in g.nodes if isinstance(n.op, ops.Dense)]


def test_shipped_structures():
    assert all((d.weight >= 0).all() for d in _dense(load_onnx(MODELS / "mnist_nonneg.onnx")))
    ae = _dense(load_onnx(MODELS / "mnist_ae_nonneg.onnx"))
    assert all((d.weight >= 0).all() and (d.bias >= 0).all() for d in ae)
    g = load_onnx(MODELS / "mnist_abba.onnx")
    assert [n.op.kind for n in g.nodes].count("capped_leaky_relu") == 2
    for d in _dense(g):
        h, w = d.weight.shape[0] // 2, d.weight.shape[1] // 2
        A, B = d.weight[:h, :w], d.weight[:h, w:]
        assert (A >= 0).all() and (B >= 0).all()
        assert np.array_equal(d.weight[h:, w:], A) and np.array_equal(d.weight[h:, :w], B)
    g = load_onnx(MODELS / "mnist_1lip.onnx")
    assert [n.op.kind for n in g.nodes].count("n_activation") == 2
    for d in _dense(g):
        assert np.linalg.norm(d.weight, 2) <= 1 + 1e-5


@pytest.mark.parametrize("name,acc", [("mnist_std", 0.9), ("mnist_nonneg", 0.85), ("mnist_abba", 0.9),
                                      ("mnist_1lip", 0.9)])
def test_shipped_accuracy(name, acc):
    d = np.load(MODELS / "mnist_lip_test.npz")
    assert d["x"].shape == (500, 784) and d["x"].dtype == np.float32 and d["y"].shape == (500,)
    assert 0.0 <= d["x"].min() and d["x"].max() <= 1.0
    g = load_onnx(MODELS / f"{name}.onnx")
    assert float((g(d["x"].astype(np.float64)).argmax(1) == d["y"]).mean()) >= acc


def test_conv_layers_export(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(SignedDoubling(), ABBAConv2d(1, 2, 3, stride=2, padding=1), CappedLeakyReLU(0.1, 0.5),
                      NonnegConv2d(4, 4, 3, padding=1), MaxMin(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    path = export_onnx(m, tmp_path / "c.onnx", (1, 1, 8, 8))
    g = load_onnx(path)
    conv = [n.op for n in g.nodes if isinstance(n.op, ops.Conv)]
    assert len(conv) == 2 and (conv[1].weight >= 0).all()
    assert {"capped_leaky_relu", "max_min"} <= {n.op.kind for n in g.nodes}
    assert_matches_ort(onnx.load(str(path)), n=6, lo=0.0, hi=1.0)
