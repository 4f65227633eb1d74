"""Weighted sums of a disjunct's rows (certkit.bounds.conjunction): they close what no single row does,
their bound never exceeds the best row at any sampled point, and their rounding charge keeps a point
that satisfies every row of a conjunction from ever being proven away (huge, tiny and ordinary
magnitudes, weights that do not add up exactly in float64)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from certkit.bounds import conjunction
from certkit.bounds.deeppoly import BoundState
from certkit.bounds.fperror import row_margin
from certkit.spec.sets import InputSet
from certkit.spec.spec import Disjunct, Property
from certkit.verify.input_split import SplitConfig, input_split, recheck
from certkit.verify.query import Budget, Query
from tests.helpers.onnx_builders import saved_model
from tests.helpers.random_nets import ALL_NETS


def linear_onnx(W: np.ndarray) -> onnx.ModelProto:
    """``y = W x`` as one Gemm (float32), inputs (1, W.shape[1])."""
    n_out, n_in = W.shape
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)], "lin",
                          [helper.make_tensor_value_info("x", 1, [1, n_in])],
                          [helper.make_tensor_value_info("y", 1, [1, n_out])],
                          [numpy_helper.from_array(W.astype(np.float32), "W"),
                           numpy_helper.from_array(np.zeros(n_out, np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _query(tmp_path, W, lo, hi, C, d):
    model = saved_model(linear_onnx(np.asarray(W, float)), tmp_path)
    prop = Property(np.asarray(lo, float), np.asarray(hi, float), (Disjunct(np.asarray(C, float), np.asarray(d, float)),))
    return Query.of_property(model.graph, prop, 0, model.runner)


def test_weighted_row_closes_what_no_row_does(tmp_path):
    """y1 = x, y2 = -x; the unsafe set ``y1 <= -0.1 and y2 <= -0.1`` (x <= -0.1 and x >= 0.1) is empty, but
    over x in [-1, 1] each row alone is satisfiable: only their sum (0.2 > 0) proves it at the root."""
    q = _query(tmp_path, [[1.0], [-1.0]], [-1.0], [1.0], [[1.0, 0.0], [0.0, 1.0]], [-0.1, -0.1])
    with_sum = input_split(q, Budget.of(30), SplitConfig(alpha_iterations=0))
    assert with_sum.status == "verified" and with_sum.domains == 1
    assert recheck(q, with_sum.tree).failed == 0
    rows_only = input_split(q, Budget.of(30), SplitConfig(alpha_iterations=0, conjunctions=False))
    assert rows_only.status == "verified" and rows_only.domains > 1


def test_weighted_row_never_proves_a_satisfiable_conjunction(tmp_path):
    """x = 0.05 lies in ``y1 <= 0.1 and y2 <= 0.1`` (y = (x, -x)): never proven, splitting or not."""
    q = _query(tmp_path, [[1.0], [-1.0]], [-1.0], [1.0], [[1.0, 0.0], [0.0, 1.0]], [0.1, 0.1])
    out = input_split(q, Budget.of(5), SplitConfig(alpha_iterations=0))
    assert out.status in ("falsified", "timeout", "unknown")


@pytest.mark.parametrize("a", [1e8, 3.0, 0.1, 1e-30, 2.0 ** -140, 7.3e300])
def test_charge_keeps_a_point_on_both_rows_open(a):
    """The point y = a satisfies ``y <= a`` and ``-y <= -a``; the exact weighted sum is 0 there. Given the
    tightest sound ``low`` for ``C~ y`` (the exact product rounded down), the weighted bound stays <= 0
    for every weight pair (none dyadic: forming ``C~`` and ``D`` rounds), with the rows' margins 0 so
    the charge alone covers that rounding; without the charge some pairs go above 0."""
    from fractions import Fraction

    C = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    d = torch.tensor([[a, -a]], dtype=torch.float64)
    own = torch.zeros(2, dtype=torch.int64)
    y = torch.tensor([[a]], dtype=torch.float64)
    margin = torch.zeros(1, 2, dtype=torch.float64)
    rng = np.random.default_rng(0)
    above = 0
    for w in torch.as_tensor(rng.uniform(0, 1, (2000, 2))):
        Ct, D, W, E = conjunction.combined_rows(C, d, margin, (w / w.sum())[None], own, 1)
        exact = Fraction(float(Ct[0, 0, 0])) * Fraction(a)
        low = float(exact)
        if Fraction(low) > exact:
            low = float(np.nextafter(low, -np.inf))
        low_t = torch.tensor([[low]], dtype=torch.float64)
        v = conjunction.charge(low_t, D, W, E, y, y, 2)
        assert float(v) <= 0.0, (a, w.tolist(), float(v))
        above += float(low_t - D) > 0
    if a in (3.0, 0.1):
        assert above > 0  # the rounding the charge covers is real


@pytest.mark.parametrize("net", ["mlp_relu", "mlp_relu_deep", "residual"])
@pytest.mark.parametrize("K", [1, 2])
def test_weighted_bound_below_the_best_row_everywhere(net, K):
    """On random nets, boxes and conjunctions: at 20000 sampled points every disjunct's weighted
    bound is at most its best row's ``C_i y - d_i - m_i`` (a weighted sum never exceeds the max)."""
    graph = ALL_NETS[net](4)
    rng = np.random.default_rng(1)
    n, m = graph.n_inputs, graph.n_outputs
    for trial in range(3):
        c = rng.uniform(-0.5, 0.5, n)
        S = InputSet.box(c - 0.3, c + 0.3)
        s = 3 * K
        C = torch.as_tensor(rng.normal(0, 1, (s, m)))
        own = torch.arange(s) % K
        xs = torch.as_tensor(rng.uniform(S.lower[0].numpy(), S.upper[0].numpy(), (20000, n)))
        with torch.no_grad():
            ys = graph.forward(xs)
            vals = ys @ C.T
            # d at a low quantile of each row: rows individually satisfiable, often not together
            d = torch.quantile(vals, 0.3, dim=0)
            st = BoundState(graph, S, True)
            A_in, const = st.backsub(graph.output, C.expand(1, -1, -1))
            y_lo, y_hi = st.bounds[graph.output]
            margin = row_margin(C, d, y_lo, y_hi)
            v = conjunction.weighted_bound(lambda Ct: st.backsub(graph.output, Ct), S, C, d, margin, y_lo, y_hi,
                                           own, K, A_in, const - d - margin)
        g = vals - d - margin  # (N, s)
        best = torch.full((xs.shape[0], K), float("-inf"), dtype=g.dtype).scatter_reduce(
            1, own.expand(xs.shape[0], -1), g, "amax")
        assert torch.isfinite(v).all()
        assert bool((v <= best.min(dim=0).values + 1e-9).all()), (trial, v, best.min(dim=0).values)


def test_non_finite_rows_and_outputs_prove_nothing():
    """A row whose linear bound is NaN or infinite gets weight 0 (and no say in the steps); an output
    bound of inf (overflow) makes the weighted bound -inf: nothing is proven on a NaN or an overflow."""
    own = torch.zeros(3, dtype=torch.int64)
    A = torch.tensor([[[1.0, 0.0], [float("nan"), 1.0], [-1.0, 0.0]]], dtype=torch.float64)
    c = torch.tensor([[0.5, 0.0, float("inf")]], dtype=torch.float64)
    lo, hi = torch.tensor([[-1.0, -1.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    lam = conjunction.weights(A, c, lo, hi, own, 1)
    assert torch.isfinite(lam).all() and float(lam[0, 1]) == 0.0 and float(lam[0, 2]) == 0.0
    assert abs(float(lam.sum()) - 1.0) < 1e-12
    C = torch.eye(3, dtype=torch.float64)
    d = torch.zeros(1, 3, dtype=torch.float64)
    Ct, D, W, E = conjunction.combined_rows(C, d, torch.zeros(1, 3, dtype=torch.float64), lam, own, 1)
    y_lo = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    y_hi = torch.tensor([[1.0, float("inf"), 1.0]], dtype=torch.float64)
    v = conjunction.charge(torch.tensor([[5.0]], dtype=torch.float64), D, W, E, y_lo, y_hi, 3)
    assert float(v) == float("-inf")
    v = conjunction.charge(torch.tensor([[float("nan")]], dtype=torch.float64), D, W, E, y_lo, y_lo + 1, 3)
    assert float(v) == float("-inf")
