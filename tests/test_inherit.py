"""Input splitting with inherited intermediate bounds (``SplitConfig.inherit``): children start from
their parent's bounds. The bounds they carry hold on sampled points of the children's boxes (on nets of
every op kind, DeepPoly alone and with alpha-CROWN), verdicts agree with a grid oracle, the proof trees
record it and re-derive leaf by leaf (past their memory share the kept bounds are dropped:
``tests/test_input_split_branching.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import certkit.verify.input_split as split
from certkit.spec.spec import Disjunct, Property
from certkit.verify.input_split import SplitConfig, children, input_split, recheck, root_box
from certkit.verify.proof import leaves_in_preorder
from certkit.verify.query import Budget, Query
from tests.helpers.onnx_builders import saved_model, tiny_relu_onnx
from tests.helpers.random_nets import ALL_NETS
from tests.test_complete import grid_top

NETS = ("mlp_relu_deep", "mlp_mixed", "conv", "conv2", "residual", "max", "scale", "onnx_conv", "onnx_mlp")


def _inside(vals: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> bool:
    tol = 1e-6 * (1 + vals.abs())
    return bool(((vals >= lo - tol) & (vals <= hi + tol)).all())


@pytest.mark.parametrize("alpha", [0, 2])
@pytest.mark.parametrize("net", NETS)
def test_inherited_bounds_hold_on_the_children(net, alpha):
    """Two generations of children from kept bounds: every kept bound holds on 4000 samples and the
    corners of its box, a child's bounds lie within its parent's, and the children's values are never
    above what the samples show (their lower bound on the property's row)."""
    graph = ALL_NETS[net](1)
    rng = np.random.default_rng(2)
    n = graph.n_inputs
    c = rng.uniform(0.2, 0.8, n)
    C = rng.choice([-1.0, 1.0], size=(1, graph.n_outputs))
    prop = Property(c - 0.2, c + 0.2, (Disjunct(C, np.array([-1e6])),))
    q = Query.of_property(graph, prop, 0)
    pb = split._Problem(q, SplitConfig(alpha_iterations=alpha, inherit=True, conjunctions=False), Budget())
    lo, hi = root_box(q)
    parent, _ = pb.bound(lo, hi)
    assert parent.kept  # the nodes before activations
    for _ in range(2):
        dims = (parent.hi - parent.lo).argmax(dim=1, keepdim=True)
        c_lo, c_hi = children(parent.lo, parent.hi, dims)
        kept = {k: v.repeat_interleave(2, dim=0) for k, v in parent.kept.items()}
        kids, _ = pb.bound(c_lo.reshape(-1, n), c_hi.reshape(-1, n), None, kept)
        for k in range(kids.lo.shape[0]):
            x = torch.as_tensor(rng.uniform(kids.lo[k].numpy(), kids.hi[k].numpy(), size=(4000, n)))
            x = torch.cat([x, kids.lo[k:k + 1], kids.hi[k:k + 1]])
            with torch.no_grad():
                vals = graph.forward(x, keep=True)
            for j, v in kids.kept.items():
                assert _inside(vals[j], v[k, 0], v[k, 1]), (net, j)
                assert bool((v[k, 0] >= kept[j][k, 0]).all() and (v[k, 1] <= kept[j][k, 1]).all())
            y = vals[graph.output] @ torch.as_tensor(C).T - torch.as_tensor(prop.disjuncts[0].d)
            assert float(kids.value[k]) <= float(y.min()) + 1e-6 * (1 + float(y.abs().max()))
        parent = kids


def test_inherit_off_keeps_nothing():
    graph = ALL_NETS["conv"](0)
    n = graph.n_inputs
    prop = Property(np.full(n, 0.4), np.full(n, 0.6), (Disjunct(np.ones((1, graph.n_outputs)), np.array([-1e6])),))
    pb = split._Problem(Query.of_property(graph, prop, 0), SplitConfig(alpha_iterations=0), Budget())
    b, _ = pb.bound(*root_box(pb.query))
    assert b.kept is None


@pytest.mark.parametrize("alpha", [0, 2])
@pytest.mark.parametrize("seed", range(3))
def test_inherited_search_agrees_with_grid_and_rechecks(seed, alpha, tmp_path):
    model = saved_model(tiny_relu_onnx(seed, hidden=(12, 12, 12)), tmp_path)
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    top, spread = grid_top(model)
    cfg = SplitConfig(lookahead=1, alpha_iterations=alpha, inherit=True)
    for t, expect in ((top + 0.02 * spread, "verified"), (top - 0.02 * spread, "falsified")):
        prop = Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),))
        q = Query.of_property(model.graph, prop, 0, model.runner)
        out = input_split(q, Budget.of(60), cfg)
        assert out.status == expect, (seed, t, top)
        if expect == "verified":
            assert out.tree.meta["inherit"]
            rep = recheck(q, out.tree)
            assert rep.failed == 0 and rep.leaves == out.tree.n_leaves
            assert rep.direct == rep.leaves  # the replay bounds every leaf as the search did


def test_links_follow_the_preorder(tmp_path):
    """``_links`` (the replay's tree structure) visits the leaves in the order ``leaves_in_preorder`` does."""
    model = saved_model(tiny_relu_onnx(4, hidden=(12, 12, 12)), tmp_path)
    top, spread = grid_top(model)
    prop = Property(np.array([-1.0, -1.0]), np.array([1.0, 1.0]),
                    (Disjunct(np.array([[-1.0]]), np.array([-(top + 0.01 * spread)])),))
    q = Query.of_property(model.graph, prop, 0, model.runner)
    out = input_split(q, Budget.of(60), SplitConfig(lookahead=1, alpha_iterations=0))
    assert out.status == "verified" and out.tree.n_leaves > 3
    left, right = split._links(out.tree)
    order, stack = [], [0]
    while stack:
        i = stack.pop()
        if left[i] < 0:
            order.append(i)
        else:
            stack += [right[i], left[i]]
    expect = [k for k, _ in enumerate(leaves_in_preorder(out.tree, 0, lambda *a: 0))]
    assert len(order) == len(expect) == out.tree.n_leaves
    assert all(out.tree.codes[i, 0] < 0 for i in order) and order == sorted(order)


def _wide_query(top_margin: float = 0.05):
    """A net with a 1024-wide layer and 3 inputs (back-substitution starts from forward bounds: input
    splitting inherits there) and a property ``y_0 <= max + margin`` over a box."""
    from certkit.graph import ops
    from tests.helpers.random_nets import Builder

    rng = np.random.default_rng(5)
    b = Builder((1, 3), rng)
    x = b.act(b.dense(0, 1024), "relu")
    x = b.act(b.dense(x, 16), "relu")
    b.dense(x, 2)
    g = b.graph()
    lo, hi = np.full(3, 0.3), np.full(3, 0.7)
    grid = np.stack(np.meshgrid(*[np.linspace(0.3, 0.7, 41)] * 3), -1).reshape(-1, 3)
    y = g(grid)[:, 0]
    prop = Property(lo, hi, (Disjunct(np.array([[-1.0, 0.0]]), np.array([-(y.max() + top_margin * np.ptp(y))])),))
    assert isinstance(g.nodes[1].op, ops.Dense)
    return Query.of_property(g, prop, 0)


def test_wide_split_supersedes_root_alpha_and_reference():
    from certkit.verify.pipeline import superseded
    from certkit.verify.procedures import wide_split

    q = _wide_query()
    assert wide_split(q)
    plan = ("interval", "forward", "deeppoly+interval", "deeppoly+reference", "alpha", "bab")
    assert superseded("alpha", q, plan, None) and superseded("deeppoly+reference", q, plan, None)
    assert not superseded("deeppoly+interval", q, plan, None)
    assert not superseded("alpha", q, plan, "alpha")  # asked for by name
    assert not superseded("alpha", q, plan[:-1], None)  # no input splitting after it
    narrow = Query.of_property(ALL_NETS["mlp_relu_deep"](0), Property(np.zeros(4), np.full(4, 0.5), (
        Disjunct(np.ones((1, 3)), np.array([-1e3])),)), 0)
    assert not wide_split(narrow) and not superseded("alpha", narrow, plan, None)


def test_root_starts_from_the_remembered_deeppoly_and_rechecks():
    """The pipeline's DeepPoly of the root box (``remember_bounds``) is the root's start: the proof tree
    says so and its recheck runs that DeepPoly first; bounds of another box are not used."""
    from certkit.bounds.deeppoly import BoundState
    from certkit.spec.sets import InputSet
    from certkit.verify.procedures import WIDE_SPLIT

    q = _wide_query()
    lo, hi = root_box(q)
    S = InputSet(lo, hi)
    st = BoundState(q.graph, S, intersect=True)
    st.lower_of(q.graph.output, torch.as_tensor(q.C)[None])
    split.remember_bounds(q, S, st.bounds)
    out = input_split(q, Budget.of(120), WIDE_SPLIT)
    assert out.status == "verified" and out.tree.meta["root_from_deeppoly"] and out.tree.meta["inherit"]
    rep = recheck(q, out.tree)
    assert rep.failed == 0 and rep.direct == rep.leaves
    split.remember_bounds(q, InputSet(lo, hi + 1e-3), st.bounds)  # not this box: ignored
    again = input_split(q, Budget.of(120), WIDE_SPLIT)
    assert again.status == "verified" and not again.tree.meta["root_from_deeppoly"]


def test_pipeline_hands_its_deeppoly_to_the_root(monkeypatch):
    from certkit.verify.pipeline import decide

    q = _wide_query(0.3)
    calls = []
    orig = split.remember_bounds
    monkeypatch.setattr(split, "remember_bounds", lambda *a: (calls.append(a[0]), orig(*a)))
    used = []
    take = split._remembered
    monkeypatch.setattr(split, "_remembered", lambda *a: (lambda r: (used.append(r is not None), r)[1])(take(*a)))
    res = decide([q], ("deeppoly+interval", "bab"), Budget.of(120), quick=None, medium=None, long=None)
    assert calls == [q]
    assert res[0].status == "verified" and res[0].stage == "bab"  # DeepPoly alone does not prove it
    assert used == [True]  # the search started from its bounds
