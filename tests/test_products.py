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

from certkit.bounds.backends import BACKENDS
from certkit.bounds.fperror import FLOAT32, input_set, interval_with_error
from certkit.bounds.interval import interval_bounds
from certkit.bounds.relax_bilinear import McCormick
from certkit.graph import ops
from certkit.onnx.importer import import_model
from tests.helpers.onnx_builders import (X, assert_bounds_contain_ort, assert_close, assert_matches_ort, box_samples,
                                        graph_model, ort_run, single)

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


# --------------------------------------------------------------------------- Softmax / LogSoftmax

SOFTMAX_CASES = [(13, (1, 5), -1), (13, (2, 3, 4), 1), (13, (2, 3, 4), 0), (11, (2, 3, 4), 1),
                 (9, (1, 3, 5, 5), 3), (11, (2, 3, 4), 2), (13, (1, 70), -1), (13, (3, 1), 1)]


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,shape,axis", SOFTMAX_CASES)
def test_softmax_matches_ort_and_bounds_contain_it(op, opset, shape, axis):
    m = single(op, shape, X, opset=opset, axis=axis)
    assert_matches_ort(m, lo=-3.0, hi=3.0)
    assert_matches_ort(m, lo=-300.0, hi=300.0, seed=1)  # spreads far beyond exp's range
    assert_bounds_contain_ort(m, -2.0, 2.0, n=200)


def _point_bounds(g, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds (with the error model) of the output on the degenerate boxes ``[x, x]``."""
    S = input_set(g, x.astype(np.float64), x.astype(np.float64))
    with torch.no_grad():
        lo, hi = interval_bounds(g, S)[g.output]
    return lo.numpy(), hi.numpy()


def _adversarial_rows(n: int, k: int, rng) -> np.ndarray:
    """Rows of logits: random at several scales, ties, one dominant logit, offsets of 1e4,
    spreads beyond float32's exp range (underflow to 0) and near-overflowing magnitudes."""
    parts = [rng.standard_normal((k, n)) * s for s in (0.1, 1.0, 10.0, 60.0, 1e3)]
    parts.append(np.round(rng.standard_normal((k, n))))  # ties
    dom = rng.standard_normal((k, n))
    dom[:, 0] += 90.0  # every other exponential underflows
    parts += [dom, rng.standard_normal((k, n)) + 1e4, rng.standard_normal((k, n)) * 1e37]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("n", [2, 5, 17, 70])
def test_softmax_error_model_contains_ort_float32(op, n):
    """The IR's error model on point boxes contains onnxruntime's float32 Softmax/LogSoftmax, and
    rows whose logits may overflow in onnxruntime (NaN) get infinite bounds, never a finite
    wrong one or NaN."""
    rng = np.random.default_rng(n)
    m = single(op, (1, n), X, opset=13, axis=-1)
    g = import_model(m)
    x = _adversarial_rows(n, 40, rng)
    ref = ort_run(m, x)
    lo, hi = _point_bounds(g, x)
    assert not np.isnan(lo).any() and not np.isnan(hi).any()
    fin = np.isfinite(ref)
    assert (ref[fin] >= lo[fin]).all() and (ref[fin] <= hi[fin]).all()
    assert (lo[~fin] == -INF).all() and (hi[~fin] == INF).all()
    ordinary = np.abs(x).max(1) < 1e5
    assert np.isfinite(lo[ordinary]).all() and np.isfinite(hi[ordinary]).all()


def test_softmax_of_overflowing_logits_gives_infinite_bounds():
    """Logits that overflow float32 before the Softmax (onnxruntime: inf - inf = NaN) give infinite
    bounds in every backend, never NaN or a finite value."""
    nodes = [helper.make_node("Mul", [X, "k"], ["z"]), helper.make_node("Softmax", ["z"], ["Y"], axis=-1)]
    m = graph_model(nodes, (1, 4), consts={"k": np.float32(100.0)})
    g = import_model(m)
    lo_x, hi_x = np.full((1, 4), 1e37), np.full((1, 4), 3e37)
    assert np.isnan(ort_run(m, lo_x.astype(np.float32))).all()
    C = torch.cat([torch.eye(4), -torch.eye(4)]).double()
    for name in ("interval", "deeppoly", "deeppoly+interval"):
        low = BACKENDS[name].lower(g, input_set(g, lo_x, hi_x), C)[0].numpy()
        assert not np.isnan(low).any() and (low == -INF).all(), (name, low)


# --------------------------------------------------------------------------- LayerNormalization

def _layernorm_model(shape, axis, rng):
    tail = shape[axis % len(shape):]
    gamma, beta = rng.normal(1, 0.3, tail), rng.normal(0, 0.3, tail)
    return single("LayerNormalization", shape, X, gamma, beta, opset=17, axis=axis, epsilon=1e-5)


def _decomposed_layernorm(n: int, rng, pow_: bool = True):
    sq = helper.make_node("Pow", ["c", "two"], ["p"]) if pow_ else helper.make_node("Mul", ["c", "c"], ["p"])
    nodes = [helper.make_node("ReduceMean", [X], ["m"], axes=[-1]), helper.make_node("Sub", [X, "m"], ["c"]), sq,
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]), helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Div", ["c", "s"], ["d"]),
             helper.make_node("Mul", ["d", "g"], ["dg"]), helper.make_node("Add", ["dg", "b"], ["Y"])]
    return graph_model(nodes, (2, n), consts={"two": np.float32(2.0), "eps": np.float32(1e-5),
                                              "g": rng.normal(1, 0.3, n), "b": rng.normal(0, 0.3, n)})


@pytest.mark.parametrize("shape,axis", [((1, 8), -1), ((2, 3, 4), -1), ((2, 3, 4), 1), ((1, 5, 6), 2)])
def test_layernorm_matches_ort_and_bounds_contain_it(shape, axis):
    m = _layernorm_model(shape, axis, np.random.default_rng(3))
    assert_matches_ort(m, lo=-3.0, hi=3.0)
    assert_bounds_contain_ort(m, 0.5, 1.5, n=200)
    assert_bounds_contain_ort(m, -1.0, 1.0, n=200, backends=("interval", "deeppoly"))


@pytest.mark.parametrize("pow_", [True, False])
def test_decomposed_layernorm_gets_the_fused_kernels_budget(pow_):
    """onnxruntime fuses ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div into its LayerNorm kernel, whose
    variance is E[x^2] - mean^2: with a large mean and a small spread its float32 result is far from
    the op-by-op one; the IR's bounds on point boxes contain it anyway."""
    rng = np.random.default_rng(4)
    m = _decomposed_layernorm(6, rng, pow_)
    g = assert_matches_ort(m, lo=-3.0, hi=3.0)
    assert any(isinstance(nd.op, ops.KernelRounding) for nd in g.nodes)
    assert_bounds_contain_ort(m, 0.5, 1.5, n=200)
    x = (rng.normal(0, 1, (300, 12)) * 10.0 ** rng.uniform(-3, 1, (300, 1)) + rng.normal(0, 1, (300, 1)) * 10.0 **
         rng.uniform(0, 3, (300, 1))).astype(np.float32)
    ref = ort_run(m, x.reshape(300, 2, 6))
    lo, hi = _point_bounds(g, x)
    assert not np.isnan(lo).any() and not np.isnan(hi).any()
    assert (ref >= lo).all() and (ref <= hi).all()


def test_layernorm_error_model_contains_ort_with_a_dominant_mean():
    rng = np.random.default_rng(5)
    m = _layernorm_model((1, 16), -1, rng)
    g = import_model(m)
    x = (rng.normal(0, 1, (400, 16)) * 10.0 ** rng.uniform(-4, 1, (400, 1)) + rng.normal(0, 1, (400, 1)) * 10.0 **
         rng.uniform(0, 4, (400, 1))).astype(np.float32)
    ref = ort_run(m, x)
    lo, hi = _point_bounds(g, x)
    assert not np.isnan(lo).any() and not np.isnan(hi).any()
    fin = np.isfinite(ref)
    assert (ref[fin] >= lo[fin]).all() and (ref[fin] <= hi[fin]).all()
    xd = x.astype(np.float64)
    ordinary = np.abs(xd.mean(1)) < 30 * xd.std(1)  # E[x^2] - mean^2 loses few digits
    assert ordinary.sum() > 50 and np.isfinite(lo[ordinary]).all() and np.isfinite(hi[ordinary]).all()


def test_kernel_rounding_is_the_identity_on_its_first_input():
    op = ops.KernelRounding(what="t", rel=1.0, absolute=0.0, tinies=0.0, group=3, n_ref=6)
    a, b = torch.randn(2, 4, dtype=D), torch.randn(2, 6, dtype=D)
    assert torch.equal(op.forward(a, b), a) and torch.equal(op.apply_abs(a.abs(), b.abs()), a.abs())
    A = torch.randn(2, 3, 4, dtype=D)
    p1, p2 = op.backward(A)
    assert torch.equal(p1, A) and p2.shape == (2, 3, 6) and not p2.any()


# --------------------------------------------------------------------------- attention, end to end

def _attention_model(T: int = 4, d: int = 4, seed: int = 0):
    """softmax(Q K^T / sqrt(d)) V with Q, K, V linear in the input, then a Gemm to 3 logits."""
    rng = np.random.default_rng(seed)
    w = {k: rng.normal(0, 0.6, (d, d)) for k in ("wq", "wk", "wv")}
    nodes = [helper.make_node("MatMul", [X, "wq"], ["q"]), helper.make_node("MatMul", [X, "wk"], ["k"]),
             helper.make_node("MatMul", [X, "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["a"]),
             helper.make_node("Reshape", ["a", "flat"], ["af"]), helper.make_node("Gemm", ["af", "wo"], ["Y"])]
    consts = {**w, "scale": np.float32(1 / np.sqrt(d)), "flat": np.array([1, T * d], np.int64),
              "wo": rng.normal(0, 0.5, (T * d, 3))}
    return graph_model(nodes, (1, T, d), consts=consts)


def test_attention_block_bounds_contain_10k_onnxruntime_samples():
    m = _attention_model()
    g = import_model(m)
    x0 = np.random.default_rng(9).normal(0, 1, 16)
    lo, hi = x0 - 0.1, x0 + 0.1
    x = box_samples(lo, hi, 10_000, seed=2)
    ref = ort_run(m, x.reshape(-1, 1, 4, 4))
    assert_close(g(x), ref, 1e-5)
    C = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    S = input_set(g, lo[None], hi[None])
    widths = {}
    for name in ("interval", "deeppoly", "deeppoly+interval"):
        low = BACKENDS[name].lower(g, S, C)[0].numpy()
        y_lo, y_hi = low[:3], -low[3:]
        assert np.isfinite(low).all(), name
        assert (ref >= y_lo).all() and (ref <= y_hi).all(), name
        widths[name] = float((y_hi - y_lo).mean())
    assert widths["deeppoly"] < widths["interval"]


def test_refining_through_copies_and_monotone_ops_is_never_looser(monkeypatch):
    """DeepPoly refines the inputs of copies and elementwise ops instead of the ops themselves
    (BoundState._through): pure CROWN's figures are unchanged, and with intersection (more refined
    inputs) the bounds are within those of refining every node itself."""
    from certkit.bounds.deeppoly import BoundState, deeppoly_output_bounds

    nodes = [helper.make_node("Conv", [X, "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Sigmoid", ["p"], ["s"]), helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["Y"])]
    rng = np.random.default_rng(6)
    conv = graph_model(nodes, (1, 1, 4, 4), consts={"w": rng.normal(0, 1, (2, 1, 3, 3)), "g": rng.normal(0, 1, (8, 3))})
    from certkit.bounds.products32 import with_arithmetic

    for m, (lo, hi) in ((_attention_model(), (-0.1, 0.1)), (conv, (-0.5, 0.5))):
        # float64 products: float32 ones charge their rounding from the bounds at hand, which differ
        g = with_arithmetic(import_model(m), "float64")
        x0 = np.random.default_rng(1).normal(0, 1, g.n_inputs)
        S = input_set(g, (x0 + lo)[None], (x0 + hi)[None])
        fast = [torch.cat(deeppoly_output_bounds(g, S, intersect=i)) for i in (False, True)]
        with monkeypatch.context() as mp:
            mp.setattr(BoundState, "_through", lambda self, j, mask: None)
            slow = [torch.cat(deeppoly_output_bounds(g, S, intersect=i)) for i in (False, True)]
        for f, s in zip(fast, slow):
            n = f.shape[0] // 2
            assert (f[:n] >= s[:n] - 1e-9).all() and (f[n:] <= s[n:] + 1e-9).all()
        assert torch.allclose(fast[0], slow[0], rtol=1e-9, atol=1e-9)  # pure CROWN: the same figures


@pytest.mark.parametrize("sa,sb", [((1, 6), (1, 6)), ((2, 3), (3,)), ((2, 3), (2, 1))])
def test_div_by_a_variable_matches_ort_and_bounds_contain_it(sa, sb):
    """``x / y`` = ``x * Reciprocal(y)``: sound where the divisor keeps its sign; where the box reaches
    0 every backend's bounds are infinite, never NaN."""
    m = _two_var("Div", sa, 0, sb)
    g = assert_bounds_contain_ort(m, 0.5, 2.0, n=300)
    assert any(isinstance(nd.op, ops.Reciprocal) for nd in g.nodes)
    n_in = g.n_inputs
    lo, hi = np.full((1, n_in), -1.0), np.full((1, n_in), 1.0)
    C = torch.cat([torch.eye(g.n_outputs), -torch.eye(g.n_outputs)]).double()
    for name in ("interval", "deeppoly", "deeppoly+interval"):
        low = BACKENDS[name].lower(g, input_set(g, lo, hi), C)[0].numpy()
        assert not np.isnan(low).any() and (low == -INF).all(), name


def test_constant_divided_by_a_variable():
    m = single("Div", (1, 5), np.array([1.0, -2.0, 3.0, 0.5, -0.25], np.float32), X)
    assert_bounds_contain_ort(m, 0.25, 4.0, n=200)
    assert_bounds_contain_ort(m, -4.0, -0.25, n=200)


def test_row_margins_from_the_procedures_output_bounds_where_interval_bounds_overflow(monkeypatch):
    """The gate's row margins need bounds on |y|. Where interval bounds of the output are not finite
    (a vision transformer's: interval propagation overflows through the attention, back-substitution
    does not), they come from the bound procedure's own output bounds (2 n_out more rows), so a row
    can still be proved; with finite interval bounds nothing changes."""
    from certkit.verify import procedures

    m = _attention_model()
    g = import_model(m)
    x0 = np.random.default_rng(9).normal(0, 1, 16)
    S = input_set(g, (x0 - 0.01)[None], (x0 + 0.01)[None])
    C = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    d = torch.tensor([[0.0, -100.0]], dtype=torch.float64)
    low, margin, _ = procedures.rows_and_margins("deeppoly", g, S, C, d, None)
    real = procedures.interval_bounds

    def overflowing(graph, inputs, *a, **k):
        b = real(graph, inputs, *a, **k)
        lo, hi = b[graph.output]
        b[graph.output] = (torch.full_like(lo, -INF), torch.full_like(hi, INF))
        return b

    monkeypatch.setattr(procedures, "interval_bounds", overflowing)
    low2, margin2, _ = procedures.rows_and_margins("deeppoly", g, S, C, d, None)
    assert torch.allclose(low, low2) and torch.isfinite(margin2).all()
    assert (margin2 < 1e-9).all() and (low2[0, 1] - d[0, 1] > margin2[0, 1])


# --------------------------------------------------------------------------- a factor the property pins

def _masked_mlp(n_feat: int = 3, width: int = 6, seed: int = 5):
    """``Y = W2 (Relu(W1 x + b1) * m)``, ``X = [x, m]``: a hidden layer times a mask of the input (nn4sys's
    MSCN multiplies every set feature by its mask)."""
    rng = np.random.default_rng(seed)
    consts = {"s0": np.array([0], np.int64), "s1": np.array([n_feat], np.int64),
              "s2": np.array([n_feat + width], np.int64), "ax": np.array([1], np.int64),
              "W1": (0.5 * rng.standard_normal((n_feat, width))).astype(np.float32),
              "b1": np.array([3.0, -3.0, 3.0] + [0.1] * (width - 3), np.float32),  # 3 stable ReLUs, 3 not
              "W2": rng.standard_normal((width, 2)).astype(np.float32)}
    nodes = [helper.make_node("Slice", [X, "s0", "s1", "ax"], ["x"]),
             helper.make_node("Slice", [X, "s1", "s2", "ax"], ["m"]),
             helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("Mul", ["h", "m"], ["hm"]),
             helper.make_node("MatMul", ["hm", "W2"], ["Y"])]
    return graph_model(nodes, (1, n_feat + width), consts=consts)


MASKS = {"binary": [1.0, 0.0, 1.0, 0.5, 1.0, 0.0],  # nn4sys's masks
         "extreme": [1e4, -3.0, 0.0, 1e-7, -2.5e3, 1.0]}  # huge, negative, tiny and cancelling factors


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("pinned", ["all", "some"])
def test_product_with_a_pinned_factor_skips_rows_and_stays_sound(pinned, mask, monkeypatch):
    """Where a product's other factor is one point, its planes are exact whatever this factor's bounds: the
    factor's neurons get no rows there (DeepPoly's bounds within 1e-9 of the bounds with rows for all of them,
    fewer rows), and the bounds contain onnxruntime's outputs on 2000 samples of the box."""
    from certkit.bounds.deeppoly import BoundState, _needs_refine, deeppoly_output_bounds
    from certkit.spec.sets import InputSet

    n_feat, width = 3, 6
    model = _masked_mlp(n_feat, width)
    g = import_model(model)
    lo = np.concatenate([-np.ones(n_feat), MASKS[mask]])
    hi = lo.copy()
    hi[:n_feat] = 1.0
    if pinned == "some":
        lo[n_feat + 3], hi[n_feat + 3] = 0.0, 1.0  # one mask entry free: its neuron needs its rows
    S = InputSet.box(lo[None], hi[None])
    rows = {"n": 0}
    bound_rows = BoundState.bound_rows

    def counting(self, j, idx):
        rows["n"] += idx.shape[-1]
        return bound_rows(self, j, idx)

    monkeypatch.setattr(BoundState, "bound_rows", counting)
    new = deeppoly_output_bounds(g, S)
    n_new, rows["n"] = rows["n"], 0
    monkeypatch.setattr(BoundState, "_depends", lambda self, c, j, l, u: _needs_refine(g.nodes[c].op, l, u))
    old = deeppoly_output_bounds(g, S)
    assert rows["n"] > n_new
    for a, b in zip(new, old):
        assert torch.allclose(a, b, rtol=0, atol=1e-9 * (1 + float(b.abs().max())))
    x = box_samples(lo, hi, 2000, seed=1)
    y = ort_run(model, x.astype(np.float32))
    assert (y >= new[0].numpy()).all() and (y <= new[1].numpy()).all()
