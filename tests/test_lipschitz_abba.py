"""`certkit abba convert` (paper 000, eqs. 9-12): the converted net equals the original on
random inputs (onnxruntime), and its ABBA bound (eq. 17) is || |W_m| ... |W_1| || of the original."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from certkit.cli import main
from certkit.lipschitz import lipschitz_bounds
from certkit.lipschitz.convert import abba_convert, check_equivalence
from certkit.model import load_model
from tests.helpers.jacobians import jacobian_norms

nn_mod = pytest.importorskip("certkit.nn")


def _act(kind: str, n: int) -> nn.Module:
    from certkit.nn.activations import CappedLeakyReLU, NActivation

    return {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "hardtanh": nn.Hardtanh,
            "capped": lambda: CappedLeakyReLU(0.2, 0.7), "nact": lambda: NActivation(n),
            "relu": nn.ReLU}[kind]()


def dense_net(acts: list[str], seed: int, sizes=(6, 9, 7, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(acts):
            layers.append(_act(acts[k], b))
    return nn.Sequential(*layers)


def conv_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                         nn.Sigmoid(), nn.AvgPool2d(3), nn.Flatten(), nn.Linear(4, 5), nn.Hardtanh(), nn.Linear(5, 3))


def export(model: nn.Module, path, shape) -> str:
    from certkit.nn.export import export_onnx

    for p in model.parameters():
        p.data = p.data.double().float()
    export_onnx(model.eval(), path, shape)
    return str(path)


CASES = {
    "tanh_sigmoid": (lambda s: dense_net(["tanh", "sigmoid"], s), (1, 6)),
    "hardtanh_capped": (lambda s: dense_net(["hardtanh", "capped"], s), (1, 6)),
    "nact": (lambda s: dense_net(["nact", "tanh"], s), (1, 6)),
    "conv": (conv_net, (1, 2, 6, 6)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_conversion_is_exact_and_abba_bound_is_signed_bound(case, tmp_path):
    build, shape = CASES[case]
    path = export(build(0), tmp_path / "net.onnx", shape)
    g = load_model(path).graph
    conv = abba_convert(g)
    n = 10_000 if case == "tanh_sigmoid" else 1000
    assert check_equivalence(path, conv, n, scale=3.0) < 1e-6
    out = tmp_path / "abba.onnx"
    onnx.save(conv, out)
    ga = load_model(out).graph
    abba = lipschitz_bounds(ga, 2, "abba", lower=False).upper
    signed = lipschitz_bounds(g, 2, "signed", lower=False).upper
    assert abba == pytest.approx(signed, rel=1e-6)
    assert abba >= float(jacobian_norms(ga, 2.0, n=100).max())  # attacked by sampled Jacobians
    if case != "nact":  # the converted net is nonnegative in the middle: the auto bound never exceeds it
        r = lipschitz_bounds(load_model(out), 2, "auto", samples=8)
        assert r.lower <= r.upper <= abba * (1 + 1e-9)


def test_cli_converts_and_refuses_relu(tmp_path, capsys):
    path = export(dense_net(["tanh", "tanh"], 1), tmp_path / "net.onnx", (1, 6))
    out = tmp_path / "abba.onnx"
    assert main(["abba", "convert", path, "-o", str(out), "--samples", "200"]) == 0
    assert out.exists() and "max relative difference" in capsys.readouterr().out
    relu = export(dense_net(["relu", "tanh"], 1), tmp_path / "relu.onnx", (1, 6))
    assert main(["abba", "convert", relu, "-o", str(tmp_path / "x.onnx")]) == 3
    err = capsys.readouterr().err
    assert "ReLU is not symmetric" in err and not (tmp_path / "x.onnx").exists()
    assert main(["abba"]) == 2


def test_shipped_abba_model_is_detected_and_meets_its_theta():
    """``models/mnist_abba.onnx`` (scripts/train_lipschitz_models.py) was trained with theta
    (paper 000, eq. 17) <= 10 on the whole bound: the ABBA method must find the doubling
    ``[x; -x]`` as ``W_0``, the halving as ``W_{m+1}``, and a theta <= 10; the per-layer
    separable product (eq. 3) is >= eq. 17 (its layers' norms are not constrained one by one)."""
    from tests.helpers.examples import MODELS

    path = MODELS / "mnist_abba.onnx"
    if not path.exists():
        pytest.skip("models/mnist_abba.onnx absent (scripts/train_lipschitz_models.py builds it)")
    r = lipschitz_bounds(load_model(path), 2, "auto", lower=False)
    ab, sep = r.methods["abba"], r.methods["separable"]
    assert ab.details["head_end"] == "/0/Concat" and ab.details["tail_start"] == "/5/Gemm"
    assert ab.details["first_norm"] * ab.details["last_norm"] == pytest.approx(1.0, rel=1e-6)
    assert 5.0 < ab.upper <= 10.0 * (1 + 1e-4)
    assert sep.details["per_layer"] >= 3.0 * ab.upper  # 40.2 vs 10.0 (paper 000, Table 1 shape)


def test_training_projection_keeps_theta_and_nonnegativity(tmp_path):
    """scripts/train_lipschitz_models.py's projection onto theta (eq. 17) <= THETA_MAX."""
    import importlib.util

    from certkit.nn import ABBALinear, CappedLeakyReLU, Halving, SignedDoubling
    from tests.helpers.examples import ROOT

    spec = importlib.util.spec_from_file_location("train_lip", ROOT / "scripts" / "train_lipschitz_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = nn.Sequential(SignedDoubling(), ABBALinear(12, 9), CappedLeakyReLU(0.1, 1.0), ABBALinear(9, 8),
                        CappedLeakyReLU(0.1, 1.0), ABBALinear(8, 3), Halving())
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ABBALinear):
                m.A.mul_(40.0)
                m.B.mul_(40.0)
    assert float(mod.abba_theta(net).detach()) > mod.THETA_MAX
    mod.limit_abba(net)
    assert float(mod.abba_theta(net).detach()) <= mod.THETA_MAX * (1 + 1e-6)  # float32 training
    assert all((m.A >= 0).all() and (m.B >= 0).all() for m in net.modules() if isinstance(m, ABBALinear))
    ab = lipschitz_bounds(load_model(export(net, tmp_path / "a.onnx", (1, 12))), 2, "abba", lower=False)
    assert ab.upper == pytest.approx(float(mod.abba_theta(net).detach()), rel=1e-4)
