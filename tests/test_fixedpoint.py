"""certkit fixedpoint (paper 001; DESIGN.md section 6): layer conditions, Collatz-Wielandt
bounds on rho(T_inf) against exact eigenvalues, the least fixed point by iteration, CLI/JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certkit.cli import main as cli_main
from certkit.errors import ModelError
from certkit.fixedpoint import analyse, perron_bounds
from certkit.graph import ops
from certkit.graph.graph import Graph, Node
from tests.helpers.examples import MODELS


def chain(layers, k):
    """Graph of [(W, b, activation op or None), ...] on R^k."""
    nodes, shapes = [Node("input", ops.Input(), ())], [(1, k)]
    for W, b, act in layers:
        nodes.append(Node(f"d{len(nodes)}", ops.Dense(np.asarray(W, float), None if b is None else np.asarray(b, float)),
                          (len(nodes) - 1,)))
        shapes.append((1, W.shape[0]))
        if act is not None:
            nodes.append(Node(f"a{len(nodes)}", act, (len(nodes) - 1,)))
            shapes.append((1, W.shape[0]))
    return Graph(tuple(nodes), tuple(shapes), len(nodes) - 1)


def autoencoder(seed, k=12, h=5, scale=0.8, act=ops.Relu(), b1=0.1, b2=0.05):
    rng = np.random.default_rng(seed)
    W1, W2 = rng.random((h, k)), rng.random((k, h))
    P = W2 @ W1
    s = np.sqrt(scale / np.max(np.abs(np.linalg.eigvals(P))))
    return chain([(W1 * s, np.full(h, b1), act), (W2 * s, np.full(k, b2), act)], k), (W2 @ W1) * s * s


def rho(P):
    return float(np.max(np.abs(np.linalg.eigvals(P))))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale", [0.3, 0.95])
def test_relu_autoencoder_rho_and_least_fixed_point(seed, scale):
    g, P = autoencoder(seed, scale=scale)
    rep = analyse(g)
    assert rep.monotone and rep.weakly_scalable and rep.scalable  # b2 > 0, ReLU
    assert rep.rho_lower <= rho(P) <= rep.rho_upper and rep.rho_upper - rep.rho_lower < 1e-6
    assert rep.converged and rep.residual_inf <= 1e-10
    x = np.array(rep.fixed_point)
    assert np.abs(g(x[None])[0] - x).max() <= 1e-8 and (x > 0).all()
    assert any("unique" in c for c in rep.conclusions)
    # least: every other fixed point is >= it; here the fixed point is unique, and the
    # iteration from any start below it stays below
    assert rep.norm_product >= rep.product_norm >= rho(P) - 1e-9


def test_no_fixed_point_when_rho_above_one():
    g, P = autoencoder(1, scale=1.5)
    rep = analyse(g, max_iter=200)
    assert rep.rho_lower >= 1 and any("no fixed point" in c for c in rep.conclusions)
    assert rep.fixed_point is None


def test_sigmoid_tail_is_zero():
    g, _ = autoencoder(2, act=ops.Sigmoid(), scale=5.0)
    rep = analyse(g)
    assert rep.tail_factor == 0.0 and rep.rho_upper == 0.0 and rep.scalable  # sigmoid(0) > 0
    assert rep.converged and np.abs(g(np.array(rep.fixed_point)[None])[0] - rep.fixed_point).max() <= 1e-8


def test_conditions_name_the_failing_layer():
    rng = np.random.default_rng(0)
    W1, W2 = rng.random((4, 6)), rng.random((6, 4))
    W2[1, 2] = -0.3
    rep = analyse(chain([(W1, -np.ones(4), ops.Relu()), (W2 * 0.1, np.zeros(6), ops.Tanh())], 6))
    assert rep.layers[0].monotone and not rep.layers[0].weakly_scalable
    assert "negative bias" in " ".join(rep.layers[0].reasons)
    assert not rep.layers[1].monotone and "negative weight" in " ".join(rep.layers[1].reasons)
    assert not rep.monotone and rep.rho_upper is None
    rep = analyse(chain([(W1, -np.ones(4), ops.Tanh()), (np.abs(W2), None, None)], 6))
    assert "not globally nonnegative" in " ".join(rep.layers[0].reasons)
    t1 = np.zeros(4)
    rep = analyse(chain([(W1, None, ops.NActivation(t1, t1 + 1)), (np.abs(W2), None, None)], 6))
    assert "not monotone" in " ".join(rep.layers[0].reasons)


def test_collatz_wielandt_bounds_are_sound():
    rng = np.random.default_rng(3)
    mats = [rng.random((20, 20)) * (rng.random((20, 20)) < 0.2) for _ in range(30)]
    mats.append(np.roll(np.eye(6), 1, axis=0) * 0.7)  # periodic (cyclic), rho = 0.7
    mats.append(np.block([[np.eye(3) * 0.2, np.ones((3, 3))], [np.zeros((3, 3)), np.eye(3) * 0.9]]))  # reducible
    mats.append(np.zeros((5, 5)))
    for P in mats:
        lo, hi = perron_bounds(lambda v: P @ v, len(P))
        r = rho(P)
        assert lo <= r + 1e-12 and r <= hi, (lo, r, hi)


def test_not_square_is_refused():
    g = chain([(np.ones((3, 4)), None, ops.Relu())], 4)
    with pytest.raises(ModelError, match="R\\^4 -> R\\^3"):
        analyse(g)


def test_shipped_autoencoder_fixed_point(tmp_path, capsys):
    out = tmp_path / "fp.json"
    assert cli_main(["fixedpoint", str(MODELS / "mnist_ae_nonneg.onnx"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rho(T_inf)" in text and "||W_n ... W_1||_2" in text
    rep = json.loads(out.read_text())
    assert rep["monotone"] and rep["rho_upper"] < 1 and rep["converged"]
    assert rep["norm_product"] >= rep["product_norm"] >= rep["rho_upper"] * (1 - 1e-6)
    from certkit.onnx.importer import load_onnx
    g = load_onnx(MODELS / "mnist_ae_nonneg.onnx")
    x = torch.tensor(rep["fixed_point"], dtype=torch.float64)[None]
    assert float((g.forward(x) - x).abs().max()) <= 1e-8


def test_cli_errors():
    assert cli_main(["fixedpoint", str(MODELS / "mnist_std.onnx")]) == 3
    assert cli_main(["fixedpoint", str(MODELS / "mnist_ae_nonneg.onnx"), "--max-iter", "0"]) == 2


def test_python_api():
    import certkit

    rep = certkit.fixedpoint(certkit.load_model(MODELS / "mnist_ae_nonneg.onnx"))
    assert isinstance(rep, certkit.FixedPointReport) and rep.converged and rep.rho_upper < 1


def test_clip_with_positive_floor_is_not_scalable():
    """clip(t, 0.1, 5) has f(0) > 0 but f(r t) = r f(t) on [0.1, 5]: weakly, not strictly scalable."""
    rng = np.random.default_rng(4)
    W1, W2 = rng.random((4, 6)) * 0.2, rng.random((6, 4)) * 0.2
    clip = ops.Clip(np.full(6, 0.1), np.full(6, 5.0))
    rep = analyse(chain([(W1, np.zeros(4), ops.Relu()), (W2, np.zeros(6), clip)], 6))
    assert rep.weakly_scalable and not rep.scalable and rep.rho_upper == 0.0 and rep.converged


def test_diverging_iteration_stops():
    """Not monotone (negative weights): the iteration is tried, stops when it overflows."""
    W = -np.eye(3) * 1e200
    rep = analyse(chain([(W, np.ones(3), None), (W, None, None)], 3), max_iter=50)
    assert not rep.monotone and not rep.converged and rep.iterations < 50
