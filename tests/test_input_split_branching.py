"""Input splitting (issue 13): the row that guides branching, the candidate dimensions, and alpha-CROWN
started from the parent's slopes -- each checked for soundness against sampling and a grid oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certkit.bounds.alpha import alpha_lower
from certkit.bounds.deeppoly import BoundState
from certkit.spec.sets import InputSet
from certkit.spec.spec import Disjunct, Property
from certkit.verify.input_split import SplitConfig, candidates, guide_row, input_split, recheck
from certkit.verify.query import Budget, Query
from tests.helpers.onnx_builders import saved_model, tiny_relu_onnx
from tests.helpers.random_nets import ALL_NETS
from tests.test_complete import grid_top

WARM = SplitConfig(alpha_iterations=2, alpha_shared=True, alpha_warm=True)


def test_guide_row_is_the_best_row_of_the_worst_disjunct():
    # disjunct 0: rows 0, 1; disjunct 1: rows 2, 3
    own = torch.tensor([0, 0, 1, 1])
    slack = torch.tensor([[-5.0, -0.1, 3.0, -1.0],     # disjunct 0 is the open one: its best row is 1
                          [2.0, -9.0, -0.5, -0.2],     # disjunct 1 is open: row 3
                          [-1.0, float("nan"), -2.0, -3.0]], dtype=torch.float64)  # disjunct 1 is worse
    assert guide_row(slack, own, 2).tolist() == [1, 3, 2]
    assert guide_row(torch.tensor([[float("nan"), -1.0]], dtype=torch.float64), torch.tensor([0, 0]), 1).tolist() == [1]
    # a conjunction (one disjunct): the row closest to closing, not the farthest
    assert guide_row(torch.tensor([[-0.049, -1e-8, -0.04]]), torch.tensor([0, 0, 0]), 1).tolist() == [1]


def test_candidates_include_the_widest_dimension():
    score = torch.tensor([[5.0, 4.0, 0.0, 1.0], [5.0, 4.0, 0.0, 1.0], [1.0, -1.0, 2.0, 3.0]])
    rel = torch.tensor([[0.1, 0.1, 0.5, 0.1], [0.5, 0.1, 0.1, 0.1], [0.1, 0.9, 0.2, 0.1]])
    dims = candidates(score, rel, 2)
    assert dims[0].tolist() == [0, 2]  # the zero-coefficient wide dimension replaces the runner-up
    assert dims[1].tolist() == [0, 1]  # already among the best: unchanged
    assert 1 not in dims[2].tolist()  # a dimension of no width (score -1) is never offered
    assert candidates(score, rel, 1).tolist() == [[0], [0], [3]]
    # look-ahead 1: the widest input instead of the score's pick only when that one is 1024x narrower
    thin = torch.tensor([[1e-16, 1.0 / 32, 1e-16]])
    assert candidates(torch.tensor([[3.0, 0.0, 1.0]]), thin, 1).tolist() == [[1]]
    assert candidates(torch.tensor([[3.0, 0.0, 1.0]]), torch.tensor([[0.01, 0.5, 0.01]]), 1).tolist() == [[0]]


@pytest.mark.parametrize("net", ["mlp_relu", "mlp_relu_deep", "residual"])
def test_alpha_from_given_slopes_is_sound(net):
    """alpha-CROWN started from other slopes (random, in range, NaN in places: DeepPoly's choice there)
    never goes below the network on 20000 samples."""
    graph = ALL_NETS[net](3)
    rng = np.random.default_rng(0)
    n = graph.n_inputs
    c = rng.uniform(-0.5, 0.5, n)
    S = InputSet.box(c - 0.4, c + 0.4)
    C = torch.as_tensor(rng.choice([-1.0, 1.0], size=(3, graph.n_outputs)))
    _, st = alpha_lower(graph, S, C, iterations=3, shared=True, keep_state=True)
    init = {}
    for k, v in st.alpha.items():
        if isinstance(v, torch.Tensor):
            r = torch.rand(v.shape, dtype=v.dtype)
            init[k] = torch.where(torch.rand(v.shape) < 0.2, torch.full_like(r, float("nan")), r)
    low = alpha_lower(graph, S, C, iterations=2, shared=True, init=init)
    x = torch.as_tensor(rng.uniform(c - 0.4, c + 0.4, size=(20_000, n)))
    with torch.no_grad():
        vals = graph.forward(x) @ C.T
    assert (vals.min(dim=0).values >= low[0] - 1e-9 * (1 + low[0].abs())).all()
    # the given slopes are where the optimisation starts: one iterate reproduces a state built on them
    st0 = BoundState(graph, S, intersect=True, alpha={"shared": True}, alpha_init=init)
    first = st0.lower_of(graph.output, C[None], tag="out")
    assert torch.allclose(alpha_lower(graph, S, C, iterations=1, shared=True, init=init), first.detach())


@pytest.mark.parametrize("seed", range(4))
def test_warm_started_input_split_agrees_with_grid_and_rechecks(seed, tmp_path):
    model = saved_model(tiny_relu_onnx(seed), tmp_path)
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    top, spread = grid_top(model)
    for t, expect in ((top + 0.02 * spread, "verified"), (top - 0.02 * spread, "falsified")):
        prop = Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),))
        q = Query.of_property(model.graph, prop, 0, model.runner)
        out = input_split(q, Budget.of(60), WARM)
        assert out.status == expect, (seed, t, top)
        if expect == "verified":
            assert out.tree.meta["alpha_warm"] and out.tree.meta["alpha_shared"]
            rep = recheck(q, out.tree)
            assert rep.failed == 0 and rep.leaves == len(out.tree.leaf_values)


def test_warm_start_needs_shared_slopes(tmp_path):
    model = saved_model(tiny_relu_onnx(0), tmp_path)
    prop = Property(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), (Disjunct(np.array([[-1.0]]), np.array([-1e3])),))
    with pytest.raises(ValueError, match="alpha_shared"):
        input_split(Query.of_property(model.graph, prop, 0, model.runner), Budget.of(5),
                    SplitConfig(alpha_warm=True))


@pytest.mark.parametrize("share, cfg, arg", [
    ("WARM_SLOPES_SHARE", WARM, "init"),
    ("KEPT_BOUNDS_SHARE", SplitConfig(lookahead=1, alpha_iterations=0, inherit=True), "kept"),
])
def test_kept_state_within_its_memory_share(share, cfg, arg, tmp_path, monkeypatch):
    """Past their share of the memory headroom the kept slopes (the kept intermediate bounds) are dropped and
    the search goes on from DeepPoly's slopes (the children's own bounds): the same verdict, a proof that
    rechecks."""
    import certkit.verify.input_split as split

    monkeypatch.setattr(split, share, 1e-12)
    model = saved_model(tiny_relu_onnx(1, hidden=(12, 12, 12) if arg == "kept" else (8, 8)), tmp_path)
    top, spread = grid_top(model)
    prop = Property(np.array([-1.0, -1.0]), np.array([1.0, 1.0]),
                    (Disjunct(np.array([[-1.0]]), np.array([-(top + 0.02 * spread)])),))
    q = Query.of_property(model.graph, prop, 0, model.runner)
    seen = []
    bound = split._Problem.bound
    monkeypatch.setattr(split._Problem, "bound", lambda self, lo, hi, init=None, kept=None: (
        seen.append({"init": init, "kept": kept}[arg]), bound(self, lo, hi, init, kept))[1])
    out = input_split(q, Budget.of(60), cfg)
    assert out.status == "verified" and recheck(q, out.tree).failed == 0
    assert len(seen) > 2 and all(i is None for i in seen[2:])  # nothing handed on after the first children


def test_lookahead_only_along_free_inputs(tmp_path):
    """With one free input of three, look-ahead 5 bounds the same children as look-ahead 1: a candidate
    of no width would only bound its parent again (it did, 8 of every 10 children on nn4sys's
    mscn_128d_dual, one free input of 308)."""
    model = saved_model(tiny_relu_onnx(2, n_in=3), tmp_path)
    x = np.array([0.1, -0.2, 0.3])
    lo, hi = x.copy(), x.copy()
    lo[0], hi[0] = -1.0, 1.0
    y = np.array([model.runner(np.array([[v, -0.2, 0.3]], np.float32))[0, 0] for v in np.linspace(-1, 1, 2001)])
    prop = Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-(y.max() + 0.01 * (np.ptp(y) + 1e-3))])),))
    q = Query.of_property(model.graph, prop, 0, model.runner)
    one = input_split(q, Budget.of(60), SplitConfig(lookahead=1, alpha_iterations=0))
    five = input_split(q, Budget.of(60), SplitConfig(lookahead=5, alpha_iterations=0))
    assert one.status == five.status == "verified"
    assert five.domains == one.domains
    assert recheck(q, five.tree).failed == 0


def test_timeout_inside_a_bound_keeps_the_domain_count(tmp_path, monkeypatch):
    """The budget running out inside a bound computation ends the search with ``timeout`` and the
    domains bounded so far (it reported 0: nn4sys's mscn_128d_dual query 11 bounded 38 batches in 30 s)."""
    import certkit.verify.input_split as split

    model = saved_model(tiny_relu_onnx(1, hidden=(8, 8)), tmp_path)
    top, spread = grid_top(model)
    prop = Property(np.array([-1.0, -1.0]), np.array([1.0, 1.0]),
                    (Disjunct(np.array([[-1.0]]), np.array([-(top + 0.02 * spread)])),))
    q = Query.of_property(model.graph, prop, 0, model.runner)
    calls = {"n": 0, "domains": 0}
    inner = split._Problem._bound

    def bound(self, lo, hi, init, kept):
        calls["n"] += 1
        calls["domains"] += lo.shape[0]
        if calls["n"] == 3:
            raise split.BudgetExpired("the test's deadline")
        return inner(self, lo, hi, init, kept)

    monkeypatch.setattr(split._Problem, "_bound", bound)
    out = input_split(q, Budget.of(60), SplitConfig(lookahead=1, alpha_iterations=0))
    assert out.status == "timeout"
    assert out.domains == calls["domains"] > 3  # the root, its children, and the batch the deadline stopped
