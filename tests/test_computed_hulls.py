"""The computed output's own range (``COMPUTED_HULLS`` and the nonnegative Dense of
:func:`certkit.bounds.fperror.interval_and_error`) and ``BoundState.refresh`` (issue 13, carvana).

An op whose rounding error is relative to its value (Exp, Reciprocal; a Dense of nonnegative weights on
nonnegative inputs) has, over a box, a computed range between its values at the ends with *their own*
errors, much tighter than the image widened by the box's largest error: the interval images of a
softmax's exponentials and sums are then tight enough to decide its comparisons. Each hull is tried
against onnxruntime at the ends of the box, next to them and inside, over scales from subnormal to
overflow; a carvana-style count of correctly classified pixels is then bounded below by its decided
pixels, and never above what onnxruntime computes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from certkit.bounds.backends import BACKENDS
from certkit.bounds.fperror import FLOAT32, compute_steps, interval_and_error
from certkit.graph import elementwise as ew
from certkit.graph import ops
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from tests.helpers.onnx_builders import X, count_model, graph_model, ort_run

N = helper.make_node
F32 = np.float32


def _points(lo: np.ndarray, hi: np.ndarray, rng, k: int = 24) -> np.ndarray:
    """(k + 4, n) float32 points of the boxes ``[lo, hi]`` (float32 ends): the ends, their inner
    neighbours and ``k`` uniform points (log-uniform where the box spans decades)."""
    lo32, hi32 = lo.astype(F32), hi.astype(F32)
    inner_lo = np.minimum(np.nextafter(lo32, F32(np.inf)), hi32)
    inner_hi = np.maximum(np.nextafter(hi32, F32(-np.inf)), lo32)
    t = rng.uniform(size=(k, lo.size))
    lin = lo + t * (hi - lo)
    pos = (lo > 0) & (hi / np.where(lo > 0, lo, 1) > 100)
    logu = np.exp(np.log(np.where(pos, lo, 1)) + t * (np.log(np.where(pos, hi, 1)) - np.log(np.where(pos, lo, 1))))
    mid = np.where(pos, logu, lin)
    pts = np.vstack([lo32, hi32, inner_lo, inner_hi, np.clip(mid, lo, hi).astype(F32)])
    return np.clip(pts, lo32, hi32)


def _unary_model(op_type: str, n: int):
    return graph_model([N(op_type, [X], ["Y"])], (1, n))


def _boxes(kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    if kind == "exp":
        lo = np.concatenate([rng.uniform(-120, 100, 60), [-20.0, 0.0, 88.0, 88.7, -104.0, -87.5, 0.458, -1e-30]])
        w = np.concatenate([rng.choice([0.0, 1e-6, 0.3, 5.0, 40.0], 60), [40.0, 0.0, 0.72, 1.0, 20.0, 1.0, 14.8, 2e-30]])
    else:
        mags = 10.0 ** rng.uniform(-39, 38, 40)
        lo = np.concatenate([mags, -mags * 3, [1e-45, 1.17e-38, 1.0, 2.58, -1.0, -1e-40, 0.0]])
        w = np.concatenate([mags * rng.choice([0.0, 1e-7, 1.0, 100.0], 40), mags * 2,
                            [1e-38, 1e-38, 1e6, 4.25e6, 1.0, 1e-40, 1.0]])
    lo = lo.astype(F32).astype(np.float64)
    hi = np.minimum((lo + w).astype(F32).astype(np.float64), 3e38)
    return lo, np.maximum(hi, lo)


@pytest.mark.parametrize("kind", ["exp", "reciprocal"])
def test_relative_hull_contains_onnxruntime(kind):
    """Exp over [-120, 188], Reciprocal from subnormal to 1e38 on both signs and across 0: every
    onnxruntime value at the ends, next to them and inside lies within the hull (infinite where the
    value may overflow, or the input may be 0 or subnormal); on the box [-20, 20] Exp's lower bound is
    positive (the widened image's was about -2969)."""
    rng = np.random.default_rng(0 if kind == "exp" else 1)
    lo, hi = _boxes(kind, rng)
    op = ew.Exp() if kind == "exp" else ew.Reciprocal()
    a, b, _ = interval_and_error(op, [(torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])], FLOAT32, 1)
    a, b = a[0].numpy(), b[0].numpy()
    pts = _points(lo, hi, rng)
    with np.errstate(divide="ignore", over="ignore"):
        y = ort_run(_unary_model("Exp" if kind == "exp" else "Reciprocal", lo.size), pts)
    assert not np.isnan(y).any()
    assert np.all(y >= a) and np.all(y <= b), (kind, np.flatnonzero(((y < a) | (y > b)).any(0)))
    if kind == "exp":
        assert lo[-8] == -20.0 and hi[-8] == 20.0 and a[-8] > 0
        assert np.isinf(b[hi > 88.8]).all() and (hi > 88.8).any()  # may overflow: no finite upper bound
    else:
        crosses = (lo <= 0) & (hi >= 0)
        assert np.isinf(a[crosses]).all() and np.isinf(b[crosses]).all()


def test_nonnegative_dense_hull_contains_onnxruntime():
    """A Gemm of nonnegative weights (zeros, 1e-20 .. 1e20) and bias on nonnegative inputs spanning
    decades: onnxruntime's outputs at the corners and inside lie within the hull, and a softmax's
    ``1 + e^d`` over ``e^d`` in [2.58, 4.25e6] keeps a lower bound above 3.5 (the widened image's was 0.8)."""
    rng = np.random.default_rng(2)
    n_in, n_out = 12, 7
    W = (10.0 ** rng.uniform(-20, 20, (n_out, n_in)) * (rng.uniform(size=(n_out, n_in)) < 0.7)).astype(F32)
    W[0] = 0.0
    W[1] = 1.0
    bias = (10.0 ** rng.uniform(-5, 5, n_out)).astype(F32)
    m = graph_model([N("Gemm", [X, "W", "B"], ["Y"], transB=1)], (1, n_in), consts={"W": W, "B": bias})
    g = import_model(m)
    dense = next(nd.op for nd in g.nodes if isinstance(nd.op, ops.Dense))
    lo = (10.0 ** rng.uniform(-30, 3, n_in)).astype(F32).astype(np.float64)
    hi = (lo * 10.0 ** rng.uniform(0, 8, n_in)).astype(F32).astype(np.float64)
    lo[1], hi[1] = 2.58, 4.25e6
    a, b, _ = interval_and_error(dense, [(torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])], FLOAT32,
                                 compute_steps(g))
    pts = np.vstack([_points(lo, hi, rng, 64),
                     np.where(rng.uniform(size=(64, n_in)) < 0.5, lo, hi).astype(F32)])
    y = ort_run(m, pts)
    assert np.all(y >= a[0].numpy()) and np.all(y <= b[0].numpy())
    one = ops.Dense(np.ones((1, 1)), np.ones(1))
    box = (torch.tensor([[2.58]], dtype=torch.float64), torch.tensor([[4.25e6]], dtype=torch.float64))
    assert float(interval_and_error(one, [box], FLOAT32, 4)[0]) > 3.5


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_count_of_pixels_is_bounded_by_its_decided_pixels(scale):
    """10x12 pixels, logit margins exact intervals (a 1x1 conv of a box): deeppoly+interval and
    alpha-CROWN bound the count below by at least the pixels whose margin keeps a sign with room to
    spare (1e-3), and 3000 onnxruntime samples (uniform and corners) are never below the bound (measured
    before the hulls and ``BoundState.refresh``: 111 with deeppoly+interval, 102-106 with alpha-CROWN, of
    114 decided). At ``scale`` 30 the exponentials span about e^-60 .. e^60."""
    rng = np.random.default_rng(5)
    h, w_ = 10, 12
    W = (scale * rng.normal(size=(2, 2, 1, 1))).astype(F32)
    x = rng.uniform(-1, 1, (1, 3, h, w_)).astype(F32)
    logits = np.einsum("oc,chw->ohw", W[:, :, 0, 0].astype(np.float64), x[0, :2].astype(np.float64))
    x[0, 2] = logits.argmax(0) == 1
    m = count_model((1, 3, h, w_), W)
    g = import_model(m)
    eps = 0.05
    lo, hi = x.reshape(-1).astype(np.float64).copy(), x.reshape(-1).astype(np.float64).copy()
    lo[:2 * h * w_] -= eps
    hi[:2 * h * w_] += eps
    lo, hi = lo.astype(F32).astype(np.float64), hi.astype(F32).astype(np.float64)
    d = (W[1, :, 0, 0] - W[0, :, 0, 0]).astype(np.float64)  # margin of class 1 over class 0
    img_lo, img_hi = lo[:2 * h * w_].reshape(2, -1), hi[:2 * h * w_].reshape(2, -1)
    m_lo = np.where(d[:, None] > 0, img_lo, img_hi).T @ d
    m_hi = np.where(d[:, None] > 0, img_hi, img_lo).T @ d
    mask = x[0, 2].reshape(-1) > 0
    decided = int(np.sum(np.where(mask, m_lo > 1e-3, m_hi < -1e-3)))
    assert 0 < decided < h * w_
    S = InputSet.box(lo[None], hi[None])
    C = torch.ones(1, 1, dtype=torch.float64)
    pts = np.vstack([lo + rng.uniform(size=(2000, lo.size)) * (hi - lo),
                     np.where(rng.uniform(size=(1000, lo.size)) < 0.5, lo, hi)]).astype(F32)
    y = ort_run(m, pts)[:, 0]
    for name in ("deeppoly+interval", "alpha"):
        low = float(BACKENDS[name].lower(g, S, C))
        assert low > decided - 0.01, (name, low, decided)  # the IR charges the sum a float rounding
        assert np.all(y >= low), name


def test_reciprocal_hull_covers_flushed_subnormal_inputs():
    """Under denormals-are-zero (which onnxruntime can be asked for) a subnormal input is read as +-0 and
    its reciprocal is +-inf: a positive box reaching below the smallest normal has no finite upper bound,
    a negative one no finite lower bound, even where 1/x of the subnormal itself is finite (2^127); a
    box of normal numbers keeps finite ends."""
    tiny = FLOAT32.tiny
    lo = torch.tensor([[2.0 ** -127, -1.0, 2.0 * tiny, -1.0, 2.0 ** -140]], dtype=torch.float64)
    hi = torch.tensor([[1.0, -(2.0 ** -127), 1.0, -2.0 * tiny, 2.0 ** -139]], dtype=torch.float64)
    a, b, _ = interval_and_error(ew.Reciprocal(), [(lo, hi)], FLOAT32, 1)
    a, b = a[0].tolist(), b[0].tolist()
    assert b[0] == float("inf") and a[0] > 0.99  # 1/+0: +inf; the normal end still bounds below
    assert a[1] == -float("inf") and b[1] < -0.99  # 1/-0: -inf
    assert all(np.isfinite([a[2], b[2], a[3], b[3]]))
    assert b[4] == float("inf")  # beyond the largest float32 even without the flush


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_softmax_sum_reciprocal_bounds_contain_onnxruntime(scale):
    """Huge, cancelling logit weights (columns ``w`` and ``-w + 1e-3``) -> Softmax -> a Gemm of nonnegative
    weights and bias -> Reciprocal: the refreshed images and the hulls of every node on the way keep
    onnxruntime's outputs inside the bounds of deeppoly+interval and alpha-CROWN at 300 points."""
    from tests.helpers.onnx_builders import assert_bounds_contain_ort

    rng = np.random.default_rng(7)
    w = scale * rng.normal(size=(4, 3))
    W1 = np.concatenate([w, -w + 1e-3], axis=1).astype(F32)
    W2 = np.abs(rng.normal(size=(6, 3))).astype(F32)
    W2[:, 0] = 0.0
    m = graph_model([N("Gemm", [X, "W1"], ["z"]), N("Softmax", ["z"], ["p"], axis=1),
                     N("Gemm", ["p", "W2", "b2"], ["s"]), N("Reciprocal", ["s"], ["Y"])], (1, 4),
                    consts={"W1": W1, "W2": W2, "b2": np.array([0.5, 1e-3, 2.0], F32)})
    assert_bounds_contain_ort(m, -2.0, 2.0, n=300, backends=("deeppoly+interval", "alpha"))
