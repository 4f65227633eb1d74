"""Lipschitz-margin certificates (certkit.lipschitz.margin, `certify --backend lipschitz`):
the per-pair gradient bounds are attacked by sampled gradients, certified samples by PGD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certkit.api import certify_dataset
from certkit.graph import ops
from certkit.graph.graph import Graph
from certkit.lipschitz.margin import certify_margins, pair_lipschitz
from certkit.model import Model
from tests.helpers.examples import MODELS
from tests.helpers.random_nets import ALL_NETS, Builder


def margin_gradient_norms(g: Graph, ball: str, n: int = 200, seed: int = 0) -> np.ndarray:
    """max over sampled x of the dual norm of grad (f_y - f_j), as an (n_out, n_out) matrix."""
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(np.concatenate([rng.random((n // 2, g.n_inputs)), rng.normal(0, 2, (n // 2, g.n_inputs))]))
    jac = torch.func.vmap(torch.func.jacrev(lambda z: g.forward(z[None])[0]))(x)  # (n, out, in)
    d = jac[:, :, None, :] - jac[:, None, :, :]
    v = d.abs().sum(-1) if ball == "linf" else d.norm(dim=-1)
    return v.amax(0).numpy()


@pytest.mark.parametrize("name", ["mlp_relu", "mlp_tanh", "mlp_mixed", "conv", "residual", "max",
                                  "n_activation", "scale", "onnx_conv"])
@pytest.mark.parametrize("ball", ["l2", "linf"])
def test_pair_bounds_are_sound(name, ball):
    g = ALL_NETS[name](0)
    pair = pair_lipschitz(g, ball)
    seen = margin_gradient_norms(g, ball)
    assert (pair.G >= seen * (1 - 1e-9)).all(), (pair.G - seen).min()
    for G in pair.candidates.values():
        assert (G >= seen * (1 - 1e-9)).all()


def orthogonal_1lip(seed: int, n: int = 8, depth: int = 3, k: int = 4) -> Graph:
    """Orthogonal dense layers with N-activations: a 1-Lipschitz net (paper 004)."""
    rng = np.random.default_rng(seed)
    b = Builder((1, n), rng)
    x = 0
    for _ in range(depth):
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        x = b.add(ops.Dense(q, rng.normal(0, 0.1, n)), x, (1, n))
        t1 = rng.normal(-0.5, 0.2, n)
        x = b.add(ops.NActivation(t1, t1 + rng.uniform(0.1, 1.0, n)), x, (1, n))
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    b.add(ops.Dense(q[:k], None), x, (1, k))
    return b.graph()


@pytest.mark.skipif(not hasattr(ops, "NActivation"), reason="N-activation IR op not available")
def test_one_lipschitz_net_gives_the_sqrt2_rule():
    g = orthogonal_1lip(0)
    pair = pair_lipschitz(g, "l2")
    off = ~np.eye(4, dtype=bool)
    assert (pair.G[off] <= np.sqrt(2) * (1 + 1e-6)).all()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8))
    f = g(x)
    y = f.argmax(1)
    eps = 0.1
    cert = certify_margins(g, x, y, eps, pair)
    top2 = np.sort(f, axis=1)[:, -2:]
    rule = top2[:, 1] - np.sqrt(2) * eps > top2[:, 0] + 1e-5  # paper 004, with room for fp_margin
    assert (cert.verified >= rule).all()


class _Runner:
    """Stand-in for onnxruntime on IR-only nets: the float64 reference executor."""

    def __init__(self, g: Graph):
        self.g = g

    def __call__(self, x):
        return self.g(np.asarray(x, np.float64)).astype(np.float32)


@pytest.mark.parametrize("name,norm,eps", [("mlp_relu", "l2", 0.05), ("mlp_tanh", "linf", 0.01),
                                           ("conv", "l2", 0.02), ("n_activation", "linf", 0.02)])
def test_certified_samples_survive_pgd(name, norm, eps):
    from certkit.spec.sets import InputSet
    from certkit.verify.dataset import _rows
    from certkit.verify.falsify import AttackConfig, attack

    g = ALL_NETS[name](0)
    model = Model(g, "", _Runner(g))
    rng = np.random.default_rng(0)
    x = rng.random((40, g.n_inputs))
    y = g(x).argmax(1)
    res = certify_dataset(model, x, y, eps, norm, backend="lipschitz")
    ver = [s.index for s in res.samples if s.verdict == "verified"]
    assert all(s.verdict != "falsified" for s in res.samples if s.verdict == "verified")
    assert all(s.radius >= eps for s in res.samples if s.verdict == "verified")
    if ver:
        p = 2.0 if norm == "l2" else float("inf")
        sets = InputSet.ball(x[ver], eps, p)
        C, _ = _rows(y[ver], g.n_outputs)
        _, v = attack(g, sets, C, torch.zeros(len(ver), g.n_outputs - 1), np.arange(g.n_outputs - 1),
                      AttackConfig(64, 4, 30), seed=1)
        assert (v > 0).all()


@pytest.mark.skipif(not (MODELS / "mnist_1lip.onnx").exists() or not (MODELS / "mnist_lip_test.npz").exists(),
                    reason="models/mnist_1lip.onnx not built (scripts/train_lipschitz_models.py)")
def test_shipped_1lip_model_certifies_in_l2():
    from certkit.model import load_model

    model = load_model(MODELS / "mnist_1lip.onnx")
    d = np.load(MODELS / "mnist_lip_test.npz")
    x, y = d["x"][:50].astype(np.float64), d["y"][:50]
    res = certify_dataset(model, x, y, 0.3, "l2", backend="lipschitz")
    assert res.certified >= 0.7 * res.total
    assert all(s.verdict != "falsified" for s in res.samples if s.verdict == "verified")


def test_cli_dataset_backend_lipschitz(tmp_path, capsys):
    import json

    from certkit.cli import main
    from tests.helpers.examples import DATA, FC, UNSAT

    out = tmp_path / "c.json"
    assert main(["certify", str(FC), "--dataset", str(DATA), "--eps", "0.05", "--norm", "l2", "--limit", "20",
                 "--backend", "lipschitz", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "certified l2 radius per sample" in text and "certified:" in text
    doc = json.loads(out.read_text())
    assert doc["backend"] == "lipschitz"
    for s in doc["per_sample"]:
        if s["verdict"] != "misclassified":
            assert "radius" in s and (s["verdict"] != "verified" or s["radius"] >= 0.05)
    assert main(["certify", str(FC), str(UNSAT), "--backend", "lipschitz"]) == 2
    assert "data sets" in capsys.readouterr().err
