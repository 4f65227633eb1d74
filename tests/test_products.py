"""Products of variable tensors (``Product``: Mul, Div, MatMul of variables), Softmax/LogSoftmax and
LayerNormalization: single-node models against onnxruntime, the interval image and the McCormick
relaxation by dense sampling (adversarial boxes included: infinite, zero and degenerate bounds),
the floating-point error rule against onnxruntime's float32 products, and bounds of every backend
containing onnxruntime's outputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from certkit.bounds.fperror import FLOAT32, interval_with_error
from certkit.bounds.relax_bilinear import McCormick
from certkit.graph import ops
from tests.helpers.onnx_builders import X, assert_bounds_contain_ort, assert_matches_ort, graph_model

D = torch.float64
INF = float("inf")
RNG = np.random.default_rng(2024)


def r(*shape: int, s: float = 1.0) -> np.ndarray:
    return (s * RNG.standard_normal(shape)).astype(np.float32)


# --------------------------------------------------------------------------- boxes

def _boxes(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """``n`` random boxes ``[l1, u1] x [l2, u2]``: ordinary, wide, tiny, degenerate, touching 0."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-6, 3, (4, n))
    c = rng.normal(0, 1, (2, n)) * scale[:2]
    w = np.abs(rng.normal(0, 1, (2, n))) * scale[2:]
    w[:, rng.random(n) < 0.1] = 0.0  # degenerate factors
    l, u = c - w, c + w
    zero_at = rng.random((2, n))
    l = np.where(zero_at < 0.05, 0.0, l)
    u = np.where((zero_at > 0.95) & (l <= 0), 0.0, u)
    l, u = np.minimum(l, u), np.maximum(l, u)
    return l[0], u[0], l[1], u[1]


def _samples(l: np.ndarray, u: np.ndarray, k: int, rng) -> np.ndarray:
    """(k + 2, n): the end points and uniform points of each interval."""
    t = rng.random((k, l.size))
    return np.concatenate([l[None], u[None], l + t * (u - l)])


@pytest.mark.parametrize("seed", [0, 1])
def test_product_interval_and_mccormick_by_dense_sampling(seed):
    l1, u1, l2, u2 = _boxes(2000, seed)
    rng = np.random.default_rng(seed + 10)
    x1, x2 = _samples(l1, u1, 30, rng), _samples(l2, u2, 30, rng)
    # every pair of samples, corners included
    X1 = np.repeat(x1, x2.shape[0], axis=0)
    X2 = np.tile(x2, (x1.shape[0], 1))
    y = X1 * X2
    t = lambda a: torch.as_tensor(a, dtype=D)[None]  # noqa: E731
    lo, hi = ops.Product().interval((t(l1), t(u1)), (t(l2), t(u2)))
    tol = 1e-12 * (1 + np.abs(y) + np.abs(l1 * l2) + np.abs(u1 * u2) + np.abs(l1 * u2) + np.abs(u1 * l2))
    assert (y >= lo.numpy()[0] - tol).all() and (y <= hi.numpy()[0] + tol).all()
    # exact: the image's ends are attained at corners
    assert np.allclose(lo.numpy()[0], y.min(0), rtol=1e-12, atol=0)
    assert np.allclose(hi.numpy()[0], y.max(0), rtol=1e-12, atol=0)
    r_ = McCormick((t(l1), t(u1)), (t(l2), t(u2)))
    (a1, a2, c), (b1, b2, d) = ([v.numpy()[0] for v in p] for p in (r_.lo, r_.up))
    assert not r_.wild.any()
    assert (a1 * X1 + a2 * X2 + c <= y + tol).all()
    assert (b1 * X1 + b2 * X2 + d >= y - tol).all()
    # backsub with mixed-sign coefficients keeps a lower bound of A y at every sample
    A = torch.as_tensor(rng.normal(0, 1, (1, 3, l1.size)))
    (A1, A2), const = r_.backsub(A)
    for k in range(0, X1.shape[0], 97):
        lhs = (A[0] * torch.as_tensor(y[k])).sum(-1)
        rhs = (A1[0] * torch.as_tensor(X1[k])).sum(-1) + (A2[0] * torch.as_tensor(X2[k])).sum(-1) + const[0]
        assert (lhs >= rhs - 1e-9 * (1 + lhs.abs())).all()


def test_mccormick_square_is_sound_and_tighter():
    """x * x (one node on both inputs): tangent at the midpoint below, the chord above."""
    l, u, _, _ = _boxes(2000, 5)
    rng = np.random.default_rng(3)
    x = _samples(l, u, 200, rng)
    t = lambda a: torch.as_tensor(a, dtype=D)[None]  # noqa: E731
    sq = McCormick((t(l), t(u)), (t(l), t(u)), same=True)
    mc = McCormick((t(l), t(u)), (t(l), t(u)), same=False)
    tol = 1e-12 * (1 + x * x + l * l + u * u)
    for r_ in (sq, mc):  # McCormick with identical inputs is sound too
        (a1, a2, c), (b1, b2, d) = ([v.numpy()[0] for v in p] for p in (r_.lo, r_.up))
        assert ((a1 + a2) * x + c <= x * x + tol).all()
        assert ((b1 + b2) * x + d >= x * x - tol).all()
    # the square's lower line is never further below x^2 at the midpoint than McCormick's
    m = (l + u) / 2
    gap = lambda r_: m * m - ((r_.lo[0] + r_.lo[1]).numpy()[0] * m + r_.lo[2].numpy()[0])  # noqa: E731
    assert (gap(sq) <= gap(mc) + 1e-9 * (1 + m * m)).all()


def test_product_unbounded_factors_give_infinite_bounds_never_nan():
    t = lambda a: torch.as_tensor(a, dtype=D)[None]  # noqa: E731
    nan = float("nan")
    l1 = t([-INF, 1.0, 0.0, 2.0, nan, -1.0, 1e200])
    u1 = t([1.0, INF, 0.0, 3.0, 1.0, 1.0, 1e200])
    l2 = t([0.0, 0.0, -INF, -INF, 0.0, 1.0, 1e200])
    u2 = t([0.0, 2.0, INF, 1.0, 1.0, 2.0, 1e200])
    lo, hi = ops.Product().interval((l1, u1), (l2, u2))
    assert not torch.isnan(lo).any() and not torch.isnan(hi).any()
    assert lo[0, 0] == -INF and hi[0, 0] == INF  # inf * 0: the computed product may be NaN
    assert lo[0, 1] == -INF and hi[0, 1] == INF  # [1, inf] * [0, 2]: inf * 0 again
    assert lo[0, 2] == -INF and hi[0, 2] == INF
    assert lo[0, 4] == -INF and hi[0, 4] == INF  # NaN bound
    assert lo[0, 5] == -2 and hi[0, 5] == 2
    assert hi[0, 6] == INF  # overflow of the float64 product
    r_ = McCormick((l1, u1), (l2, u2))
    A = torch.zeros(1, 2, 7, dtype=D)
    A[0, 0, 5] = 1.0  # a row reaching only the bounded neuron
    A[0, 1, 0] = -1.0  # a row reaching an unbounded one
    (A1, A2), const = r_.backsub(A)
    assert torch.isfinite(const[0, 0]) and const[0, 1] == -INF
    assert not torch.isnan(A1).any() and not torch.isnan(A2).any()
    # the error rule: infinite where the product may overflow float32, never NaN
    steps = 64
    lo_e, hi_e = interval_with_error(ops.Product(), [(l1, u1), (l2, u2)], FLOAT32, steps)
    assert not torch.isnan(lo_e).any() and not torch.isnan(hi_e).any()
    assert hi_e[0, 6] == INF and torch.isfinite(hi_e[0, 5])


def test_product_error_rule_contains_float32_products():
    """``interval_with_error`` on point boxes contains the float32 product (normal, subnormal,
    underflowing to 0, near overflow)."""
    rng = np.random.default_rng(11)
    a = (rng.normal(0, 1, 4000) * 10.0 ** rng.uniform(-30, 19, 4000)).astype(np.float32)
    b = (rng.normal(0, 1, 4000) * 10.0 ** rng.uniform(-30, 19, 4000)).astype(np.float32)
    a[:5] = [1e-20, 3e-39, 1e19, 1.5, -2.0**-149]
    b[:5] = [1e-20, 0.5, 3.4e19, 1.0 / 3, 0.5]
    with np.errstate(over="ignore", under="ignore"):
        prod32 = (a * b).astype(np.float64)
    ta, tb = torch.as_tensor(a, dtype=D)[None], torch.as_tensor(b, dtype=D)[None]
    lo, hi = interval_with_error(ops.Product(), [(ta, ta), (tb, tb)], FLOAT32, 64)
    fin = np.isfinite(prod32)
    assert (prod32[fin] >= lo.numpy()[0][fin]).all() and (prod32[fin] <= hi.numpy()[0][fin]).all()
    assert (~np.isfinite(hi.numpy()[0][~fin])).all()  # overflow: an infinite bound


# --------------------------------------------------------------------------- ONNX Mul / Div / MatMul

def _two_var(op_type: str, x_shape, split: int, y_shape, opset: int = 13, **attrs):
    """A model whose one input ``X`` is sliced into two variable tensors ``a`` (reshaped to
    ``x_shape``-derived) and ``b`` combined by ``op_type``."""
    n_a = int(np.prod(x_shape))
    n_b = int(np.prod(y_shape))
    consts = {"sa": np.array([0], np.int64), "ea": np.array([n_a], np.int64),
              "sb": np.array([n_a], np.int64), "eb": np.array([n_a + n_b], np.int64),
              "ax": np.array([1], np.int64),
              "shape_a": np.array(x_shape, np.int64), "shape_b": np.array(y_shape, np.int64)}
    nodes = [helper.make_node("Slice", [X, "sa", "ea", "ax"], ["fa"]),
             helper.make_node("Slice", [X, "sb", "eb", "ax"], ["fb"]),
             helper.make_node("Reshape", ["fa", "shape_a"], ["a"]),
             helper.make_node("Reshape", ["fb", "shape_b"], ["b"]),
             helper.make_node(op_type, ["a", "b"], ["Y"], **attrs)]
    return graph_model(nodes, (1, n_a + n_b), opset=opset, consts=consts)


MUL_SHAPES = [((1, 6), (1, 6)), ((2, 3), (3,)), ((2, 1, 4), (1, 3, 1)), ((1, 5), (1, 1))]
MATMUL_SHAPES = [((2, 3), (3, 4)), ((2, 3, 4), (2, 4, 5)), ((3, 4), (4,)), ((4,), (4, 2)),
                 ((2, 1, 3, 4), (3, 4, 2)), ((1, 3, 4), (4, 2))]


@pytest.mark.parametrize("sa,sb", MUL_SHAPES)
def test_mul_of_two_variables_matches_ort_and_bounds_contain_it(sa, sb):
    m = _two_var("Mul", sa, 0, sb)
    g = assert_bounds_contain_ort(m, -2.0, 2.0, n=300)
    assert any(isinstance(nd.op, ops.Product) for nd in g.nodes)


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_of_two_variables_matches_ort_and_bounds_contain_it(sa, sb):
    m = _two_var("MatMul", sa, 0, sb)
    assert_bounds_contain_ort(m, -1.5, 1.0, n=300)


def test_mul_of_a_variable_with_itself_is_a_square():
    m = graph_model([helper.make_node("Mul", [X, X], ["Y"])], (1, 7))
    g = assert_bounds_contain_ort(m, -1.0, 3.0, n=300)
    prod = [nd for nd in g.nodes if isinstance(nd.op, ops.Product)]
    assert len(prod) == 1 and prod[0].inputs[0] == prod[0].inputs[1]


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 2)), ((2, 3), (3, 1)), ((3,), (3, 2))])
def test_matmul_constant_left_operand_is_linear(sa, sb):
    c = r(*sa)
    nodes = [helper.make_node("Reshape", [X, "shape"], ["b"]), helper.make_node("MatMul", ["C", "b"], ["Y"])]
    m = graph_model(nodes, (1, int(np.prod(sb))), consts={"C": c, "shape": np.array(sb, np.int64)})
    g = assert_matches_ort(m)
    assert all(isinstance(nd.op, ops.LinearOp) for nd in g.nodes[1:])
    assert_bounds_contain_ort(m, -1.0, 1.0, n=100)


def test_attention_scores_shapes_and_matmul_memory():
    """Q K^T of 3 heads, 17 tokens, 16 dims: the pairwise layout has 3 * 17 * 17 * 16 products."""
    nodes = [helper.make_node("Reshape", [X, "s"], ["q"]), helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["Y"])]
    m = graph_model(nodes, (1, 3 * 17 * 16), consts={"s": np.array([3, 17, 16], np.int64)})
    g = assert_matches_ort(m)
    assert max(g.size(i) for i in range(len(g.nodes))) == 3 * 17 * 17 * 16
