"""MILP on hard leaves of ReLU splitting (issue 13): a domain whose bound stops rising is decided by
the exact MILP of the net on that domain; the proof records it as a ``milp`` leaf, ``certkit check``
solves that MILP again, and a proof replayed against a property it does not prove fails."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certkit.spec.spec import Disjunct, Property
from certkit.verify.query import Budget, Query
from certkit.verify.relu_domains import Domains
from certkit.verify.relu_split import LEAF_KINDS, ReluSplitConfig, _stalled, relu_split
from tests.test_complete import _tiny_relu_onnx
from tests.test_relu_split import _model

pytest.importorskip("highspy")

#: every open child goes to its MILP at once (no stall needed), many per batch
EAGER = ReluSplitConfig(batch=4, milp_leaves=True, milp_stall=0, milp_per_batch=8, milp_seconds=20.0, milp_share=10.0)


def _net(tmp_path, seed=40, scale=1.0):
    from certkit.verify.milp import milp_bound

    model = _model(_tiny_relu_onnx(seed, n_in=20, hidden=(12, 12), scale=scale), tmp_path)
    lo, hi = -0.3 * np.ones(20), 0.3 * np.ones(20)
    top = -milp_bound(model.graph, (lo, hi), np.array([-1.0]), time_limit=30)
    bottom = milp_bound(model.graph, (lo, hi), np.array([1.0]), time_limit=30)
    return model, lo, hi, top, top - bottom


def _query(model, lo, hi, t):
    prop = Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),))  # unsafe: y >= t
    return Query.of_property(model.graph, prop, 0, model.runner)


def _kinds(trees):
    kinds = []
    for t in trees:
        kinds += [t.kinds[-1 - c] for c in t.codes[:, 0] if c < 0]
    return kinds


@pytest.mark.parametrize("seed", [40, 41])
def test_milp_leaves_prove_and_recheck(seed, tmp_path):
    from certkit.verify.relu_recheck import recheck

    model, lo, hi, top, spread = _net(tmp_path, seed)
    q = _query(model, lo, hi, top + 0.01 * spread)
    out = relu_split(q, Budget.of(60), EAGER)
    assert out.status == "verified" and out.milp_tried >= 1
    kinds = _kinds(out.trees)
    assert kinds.count("milp") == out.milp_closed >= 1
    assert all(v > 0 for t in out.trees for v in t.leaf_values)
    rep = recheck(q, out.trees)
    assert rep.ok and rep.failed == 0 and rep.leaves == len(kinds), rep
    # the same proof replayed against a property that is false (a threshold below the maximum)
    bad = _query(model, lo, hi, top - 0.05 * spread)
    assert recheck(bad, out.trees, time_per_leaf=1.0, milp_seconds=5.0).failed > 0


def test_milp_leaf_finds_counterexample(tmp_path):
    model, lo, hi, top, spread = _net(tmp_path, 42)
    t = top - 0.02 * spread
    out = relu_split(_query(model, lo, hi, t), Budget.of(60), EAGER)
    assert out.status == "falsified"
    x = out.witness.x.astype(np.float64)
    assert (x >= lo).all() and (x <= hi).all() and out.witness.y[0] >= t


@pytest.mark.parametrize("scale", [1e2, 1e-3])
def test_milp_leaves_never_prove_a_false_property_on_extreme_weights(scale, tmp_path):
    """Weights scaled by 1e2 (huge, cancelling pre-activations) or 1e-3 (margins near the rounding):
    just below the exact maximum the leaves' MILPs find a counterexample or leave it open, never
    ``verified``; a found counterexample is re-run in onnxruntime; dense sampling agrees with a proof
    just above."""
    model, lo, hi, top, spread = _net(tmp_path, 43, scale)
    below = relu_split(_query(model, lo, hi, top - 0.01 * spread), Budget.of(30), EAGER)
    assert below.status != "verified"
    if below.status == "falsified":
        y = model.runner(below.witness.x[None].astype(np.float32))[0]
        assert y[0] >= top - 0.01 * spread
    above = relu_split(_query(model, lo, hi, top + 0.01 * spread), Budget.of(30), EAGER)
    if above.status == "verified":
        x = np.random.default_rng(0).uniform(lo, hi, (20000, 20)).astype(np.float32)
        assert float(model.runner(x)[:, 0].max()) < top + 0.01 * spread


def test_bad_milp_solver_is_refused():
    with pytest.raises(ValueError, match="unknown MILP solver 'cplex'"):
        ReluSplitConfig(milp_solver="cplex")


def test_milp_leaves_off(tmp_path):
    model, lo, hi, top, spread = _net(tmp_path, 40)
    cfg = ReluSplitConfig(batch=4)  # off by default
    out = relu_split(_query(model, lo, hi, top + 0.01 * spread), Budget.of(60), cfg)
    assert out.milp_tried == 0
    if out.status == "verified":
        assert "milp" not in _kinds(out.trees)
    assert LEAF_KINDS.index("milp") == 3  # appended: the kinds of older proofs keep their codes


def test_stall_counter():
    """A child's counter grows while its bound rises by less than milp_gain of the parent's deficit,
    resets on real progress, and stays -1 once its MILP was tried; NaN and infinite floors never count
    as slow."""
    cfg = ReluSplitConfig(milp_gain=0.1)
    n = 6
    value = torch.tensor([-0.95, -0.5, -0.99, 0.5, float("nan"), -1.0], dtype=torch.float64)
    floor = torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0, float("-inf")], dtype=torch.float64)
    dom = Domains({}, {}, {}, {}, value, torch.zeros(n, 2, dtype=torch.long), torch.arange(n),
                  torch.tensor([2, 2, -1, 0, 1, 1]))
    assert _stalled(dom, floor, cfg).tolist() == [3, 0, -1, 0, 0, 0]
