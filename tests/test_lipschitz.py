"""Lipschitz bounds (certkit.lipschitz): every upper bound is attacked by sampled Jacobian
norms and difference quotients; exact cases are compared with explicitly formed products."""
from __future__ import annotations

import json

import numpy as np
import pytest

from certkit.cli import main
from certkit.errors import UnsupportedOpError
from certkit.graph import ops
from certkit.graph.graph import Graph
from certkit.lipschitz import NotApplicable, lipschitz_bounds
from certkit.lipschitz.blocks import block_matrix
from certkit.lipschitz.lower import sampled_lower
from certkit.lipschitz.norms import conv_norm2, matrix_norm
from tests.helpers.jacobians import jacobian_norms
from tests.helpers.random_nets import ALL_NETS, Builder

INF = float("inf")


def assert_sound(g: Graph, upper: float, p: float, seed: int = 0) -> None:
    worst = max(float(jacobian_norms(g, p, seed=seed).max()), sampled_lower(g, p, samples=16, seed=seed).value)
    assert upper >= worst * (1 - 1e-9), (upper, worst)


def nonneg_mlp(seed: int, act: str | None, sizes=(6, 12, 10, 4)) -> Graph:
    rng = np.random.default_rng(seed)
    b = Builder((1, sizes[0]), rng)
    x = 0
    for n in sizes[1:-1]:
        x = b.add(ops.Dense(rng.random((n, b.size(x))) / b.size(x) ** 0.5, rng.normal(0, 1, n)), x, (1, n))
        if act is not None:
            x = b.act(x, act)
    b.add(ops.Dense(rng.random((sizes[-1], b.size(x))), rng.normal(0, 1, sizes[-1])), x, (1, sizes[-1]))
    return b.graph()


def nonneg_conv(seed: int, act: str | None = "relu") -> Graph:
    """Conv(pad 1) -> act -> Conv(stride 2) -> act -> avgpool -> Dense, all weights >= 0."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 2, 8, 8), rng)
    x = b.conv(0, 3, 3, 1, (1, 1, 1, 1))
    x = b.act(x, act) if act else x
    x = b.conv(x, 4, 3, 2, (0, 1, 1, 0))
    x = b.act(x, act) if act else x
    x = b.avgpool_conv(x, 2, 2)
    b.add(ops.Dense(rng.random((3, b.size(x))), None), x, (1, 3))
    nodes = tuple(n if not isinstance(n.op, ops.Conv) else
                  type(n)(n.name, ops.Conv(np.abs(n.op.weight), n.op.bias, n.op.in_shape, n.op.out_shape,
                                           n.op.strides, n.op.pads, n.op.dilations, n.op.groups), n.inputs)
                  for n in b.graph().nodes)
    g = b.graph()
    return Graph(nodes, g.shapes, g.output)


def product(g: Graph) -> np.ndarray:
    """The explicit product of every linear op of a chain (activations as the identity)."""
    m = np.eye(g.n_inputs)
    for i, n in enumerate(g.nodes[1:], start=1):
        if isinstance(n.op, ops.LinearOp):
            m = block_matrix([n.op], g.size(n.inputs[0])) @ m
    return m


# --------------------------------------------------------------------------- nonneg


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", None])
@pytest.mark.parametrize("p", [2.0, INF])
def test_nonneg_dense_exact_and_sound(act, p):
    for seed in range(2):
        g = nonneg_mlp(seed, act)
        r = lipschitz_bounds(g, p, "nonneg", samples=8)
        m = product(g)
        exact = np.abs(m).sum(1).max() if p == INF else np.linalg.norm(m, 2)
        if act != "sigmoid":  # sigmoid slopes are <= 1/4: the bound is (1/4)^k times the product
            assert r.upper == pytest.approx(exact, rel=1e-6)
        assert r.upper >= exact * (0.25 ** 2 if act == "sigmoid" else 1) * (1 - 1e-9)
        assert_sound(g, r.upper, p, seed)
        if act is None:  # linear net: the lower end meets the upper end
            assert r.lower == pytest.approx(r.upper, rel=1e-6)


@pytest.mark.parametrize("p", [2.0, INF])
def test_nonneg_conv_exact_and_sound(p):
    for seed in range(2):
        g = nonneg_conv(seed)
        r = lipschitz_bounds(g, p, "nonneg", samples=8)
        m = product(g)
        exact = np.abs(m).sum(1).max() if p == INF else np.linalg.norm(m, 2)
        assert r.upper == pytest.approx(exact, rel=1e-6)
        assert_sound(g, r.upper, p, seed)
    g = nonneg_conv(0, None)
    r = lipschitz_bounds(g, p, "nonneg", samples=8)
    assert r.lower == pytest.approx(r.upper, rel=1e-6)


def test_nonneg_refuses_naming_layer_and_entry():
    g = nonneg_mlp(0, "relu")
    w = g.nodes[3].op.weight.copy()
    w[2, 5] = -0.5
    nodes = list(g.nodes)
    nodes[3] = type(nodes[3])("fc_hidden", ops.Dense(w, None), nodes[3].inputs)
    bad = Graph(tuple(nodes), g.shapes, g.output)
    with pytest.raises(NotApplicable, match=r"'fc_hidden' \(dense\) has a negative weight at row=2, col=5"):
        lipschitz_bounds(bad, 2, "nonneg", lower=False)
    g2 = nonneg_mlp(0, "leaky_relu_neg")
    with pytest.raises(NotApplicable, match="negative slopes"):
        lipschitz_bounds(g2, 2, "nonneg", lower=False)


# --------------------------------------------------------------------------- any net


@pytest.mark.parametrize("name", sorted(ALL_NETS))
@pytest.mark.parametrize("p", [2.0, INF])
def test_every_bound_is_sound_on_random_nets(name, p):
    g = ALL_NETS[name](0)
    if name == "ibnn_no_contraction":  # q >= 1: no Lipschitz rule for the implicit layer, said so
        with pytest.raises(UnsupportedOpError, match="q >= 1"):
            lipschitz_bounds(g, p, "auto", samples=8)
        return
    r = lipschitz_bounds(g, p, "auto", samples=8)
    assert r.methods, r.refused
    worst = max(float(jacobian_norms(g, p).max()), r.lower)
    for m in r.methods.values():
        assert m.upper >= worst * (1 - 1e-9), (m.method, m.upper, worst)
    assert r.upper == pytest.approx(min(m.upper for m in r.methods.values()), rel=1e-9)


def test_input_normalisation_is_exact():
    """(x - mu) / sigma before a nonnegative net: the bound is ||P diag(1/sigma)||, exactly."""
    rng = np.random.default_rng(3)
    g0 = nonneg_mlp(3, None)
    sigma = rng.uniform(0.2, 2.0, g0.n_inputs)
    b = Builder((1, g0.n_inputs), rng)
    x = b.add(ops.Scale(1 / sigma, -rng.random(g0.n_inputs) / sigma), 0, (1, g0.n_inputs))
    for n, shape in zip(g0.nodes[1:], g0.shapes[1:]):
        x = b.add(n.op, x, shape)
    g = b.graph()
    exact = np.linalg.norm(product(g0) @ np.diag(1 / sigma), 2)
    for method in ("nonneg", "separable", "signed"):
        assert lipschitz_bounds(g, 2, method, lower=False).upper == pytest.approx(exact, rel=1e-6)


def test_matrix_and_conv_norms():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(7, 4))
    nb = matrix_norm(m, 2)
    s = np.linalg.norm(m, 2)
    assert nb.lower <= s <= nb.upper and nb.upper == pytest.approx(s, rel=1e-8)
    b = Builder((1, 3, 7, 7), rng)
    for stride, pads in ((1, (1, 1, 1, 1)), (2, (0, 1, 1, 0))):
        i = b.conv(0, 4, 3, stride, pads)
        op = b.nodes[i].op
        exact = np.linalg.norm(block_matrix([op], 147), 2)
        assert conv_norm2(op).upper >= exact * (1 - 1e-12)


# --------------------------------------------------------------------------- ABBA


def test_abba_matrix_norm_is_that_of_the_sum_matrix():
    """DESIGN.md section 4: for A, B >= 0, ||[[A, B], [B, A]]||_2 = ||A + B||_2."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        A, B = rng.random((4, 6)), rng.random((4, 6))
        M = np.block([[A, B], [B, A]])
        assert np.linalg.norm(M, 2) == pytest.approx(np.linalg.norm(A + B, 2), rel=1e-12)


def test_cli_json_and_errors(tmp_path, capsys):
    from tests.helpers.examples import FC

    out = tmp_path / "lip.json"
    assert main(["lipschitz", str(FC), "--method", "separable", "--samples", "4", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["lower"] <= doc["upper"] and doc["method"] == {"lower": "sampled", "upper": "separable"}
    assert main(["lipschitz", str(FC), "--method", "nonneg"]) == 3
    assert "has a negative weight" in capsys.readouterr().err
    assert main(["lipschitz", str(tmp_path / "missing.onnx")]) == 3


def test_sdp_is_sound_and_tighter_than_separable():
    pytest.importorskip("cvxpy")
    g = ALL_NETS["mlp_tanh"](1) if "mlp_tanh" in ALL_NETS else nonneg_mlp(1, "tanh")
    r = lipschitz_bounds(g, 2, "auto", samples=8)
    assert "sdp" in r.methods, r.refused
    sdp = r.methods["sdp"].upper
    assert sdp <= r.methods["separable"].upper * (1 + 1e-6)
    assert sdp >= float(jacobian_norms(g, 2).max())


def test_average_pooling_has_norm_one_over_k():
    """Paper 000: a k x k average pooling with stride k has Lipschitz constant 1/k (L_2)."""
    for k in (2, 3):
        b = Builder((1, 2, 6, 6), np.random.default_rng(0))
        b.avgpool_conv(0, k, k)
        g = b.graph()
        for method in ("nonneg", "separable", "signed"):
            assert lipschitz_bounds(g, 2, method, lower=False).upper == pytest.approx(1 / k, rel=1e-8)
        assert lipschitz_bounds(g, "inf", "nonneg", lower=False).upper == pytest.approx(1.0, rel=1e-8)
