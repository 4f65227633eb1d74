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
