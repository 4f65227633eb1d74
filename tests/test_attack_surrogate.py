"""Attacks through step functions (Sign, Floor): the surrogate forward has the model's values and a
nonzero (straight-through) gradient, and PGD finds a counterexample of a binarised net that needs
the gradient."""
from __future__ import annotations

import numpy as np
import torch
from onnx import helper

from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from certkit.verify.falsify import AttackConfig, attack
from tests.helpers.onnx_builders import X, graph_model


def _binarised(op: str):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", [X, "W1"], ["h"]), helper.make_node(op, ["h"], ["s"]),
             helper.make_node("MatMul", ["s", "W2"], ["Y"])]
    w1 = rng.standard_normal((6, 16)).astype(np.float32) * 3
    w2 = rng.standard_normal((16, 2)).astype(np.float32)
    return import_model(graph_model(nodes, (1, 6), consts={"W1": w1, "W2": w2}))


def test_surrogate_values_equal_and_gradient_flows():
    for op in ("Sign", "Floor"):
        g = _binarised(op)
        x = torch.randn(32, 6, dtype=torch.float64, requires_grad=True)
        y = g.forward(x, surrogate=True)
        assert torch.equal(y.detach(), g.forward(x.detach()))
        y.sum().backward()
        assert x.grad.abs().sum() > 0


def test_attack_moves_through_sign():
    """Without the surrogate PGD has no gradient and keeps its best random sample (6.46 here); with
    it the attack climbs further (11.09): the gap asked for is between the two."""
    g = _binarised("Sign")
    lo, hi = -np.ones((1, 6)), np.ones((1, 6))
    C, d = np.array([[1.0, -1.0]]), np.array([-9.0])  # unsafe: y0 - y1 <= -9
    x, v = attack(g, InputSet.box(lo, hi), C, d, np.zeros(1, int), AttackConfig(16, 4, 30), seed=1)
    y = g.forward(torch.as_tensor(x, dtype=torch.float64).reshape(1, -1))
    assert (y[0, 0] - y[0, 1]).item() <= -9.0


def test_sign_surrogate_is_exact_and_steers_towards_switching_units():
    """The value is sign(x) bit for bit; the gradient (of tanh(x / s)) is largest for the units
    nearest their switch, and positive everywhere finite."""
    g = _binarised("Sign")
    sign = next(n.op for n in g.nodes if type(n.op).__name__ == "Sign")
    x = torch.tensor([[1e-3, 5.0, -5.0, 0.5, -0.2, 3e8]], dtype=torch.float64, requires_grad=True)
    y = sign.surrogate(x)
    assert torch.equal(y.detach(), torch.sign(x.detach()))
    grad, = torch.autograd.grad(y.sum(), x)
    assert grad[0, 0] > grad[0, 4] > grad[0, 3] > grad[0, 1]
    assert bool((grad[0, :5] > 0).all()) and bool(torch.isfinite(grad).all())
    for x in (torch.randn(64, 16, dtype=torch.float64) * 10.0 ** torch.randint(-8, 8, (64, 1)),):
        assert torch.equal(sign.surrogate(x), torch.sign(x))
