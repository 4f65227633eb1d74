"""Which branch and bound runs where (issue 13): input splitting by free input dimensions, its
measured-rate hand-over, the closed volume it tracks, and FSB branching in ReLU splitting."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from certkit.model import Model
from certkit.onnx.importer import import_model
from certkit.spec.spec import Disjunct, Property, Spec
from certkit.verify.certify import certify
from certkit.verify.input_split import HOPELESS, SplitConfig, input_split
from certkit.verify.procedures import free_dims
from certkit.verify.query import Budget, Query
from certkit.verify.relu_split import ReluSplitConfig, relu_split
from tests.helpers.onnx_builders import tiny_relu_onnx
from tests.test_complete import grid_top


def _model(proto, tmp_path, name="t.onnx") -> Model:
    path = tmp_path / name
    onnx.save(proto, path)
    return Model(import_model(proto, str(path)), str(path))


def _above(t: float, lo, hi) -> Property:
    """Unsafe: y >= t over the box."""
    return Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),))


@pytest.mark.parametrize("seed", range(3))
def test_pinned_inputs_of_a_sigmoid_net_get_input_splitting(seed, tmp_path):
    """20 inputs, 18 of them pinned (as dist_shift_2023 and pensieve pin most of theirs): 2 free
    dimensions, so input splitting decides -- before, a net ReLU splitting does not handle was left
    open above 16 inputs."""
    model = _model(tiny_relu_onnx(seed, n_in=20, hidden=(10, 10), act="Sigmoid"), tmp_path)
    rng = np.random.default_rng(seed)
    pin = rng.uniform(-1, 1, 20)
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 301), np.linspace(-1, 1, 301)), -1).reshape(-1, 2)
    xs = np.repeat(pin[None], len(g), 0)
    xs[:, :2] = g
    ys = model.graph(xs)[:, 0]
    top, spread = ys.max(), ys.max() - ys.min() + 1e-9
    lo, hi = pin.copy(), pin.copy()
    lo[:2], hi[:2] = -1, 1
    for t, expect in ((top + 0.03 * spread, "unsat"), (top - 0.03 * spread, "sat")):
        prop = _above(t, lo, hi)
        assert free_dims(Query.of_property(model.graph, prop, 0, model.runner)) == 2
        assert certify(model, Spec((prop,), 20, 1), "bab", timeout=60).verdict == expect, (seed, t, top)


def test_input_split_gives_up_on_its_measured_rate(tmp_path):
    """With no time to judge (give_up_after=0), an open root box hands over at once, saying why; run
    to the end, the closed leaves make up the whole box."""
    model = _model(tiny_relu_onnx(1), tmp_path)
    lo, hi = -np.ones(2), np.ones(2)
    top, spread = grid_top(model)
    q = Query.of_property(model.graph, _above(top + 0.01 * spread, lo, hi), 0, model.runner)
    out = input_split(q, Budget.of(60), SplitConfig(alpha_iterations=0, give_up_after=0.0))
    assert out.status == "unknown" and out.message == HOPELESS
    full = input_split(q, Budget.of(60), SplitConfig(alpha_iterations=0))
    assert full.status == "verified"
    assert full.closed_volume == pytest.approx(1.0, rel=1e-9)
    no_deadline = input_split(q, Budget(), SplitConfig(alpha_iterations=0, give_up_after=0.0))
    assert no_deadline.status == "verified"  # without a deadline there is no rate to judge by


@pytest.mark.parametrize("seed", range(3))
def test_fsb_branching_agrees_with_grid(seed, tmp_path):
    """FSB only changes which neuron is split: the verdicts stay those of the grid oracle."""
    model = _model(tiny_relu_onnx(seed + 20, n_in=2, hidden=(10, 10)), tmp_path)
    lo, hi = -np.ones(2), np.ones(2)
    top, spread = grid_top(model)
    cfg = ReluSplitConfig(batch=8, branching="fsb", fsb_candidates=3)
    for t, expect in ((top + 0.05 * spread, "verified"), (top - 0.02 * spread, "falsified")):
        q = Query.of_property(model.graph, _above(t, lo, hi), 0, model.runner)
        assert relu_split(q, Budget.of(60), cfg).status == expect, (seed, t, top)


def test_fsb_estimates_per_candidate_match_one_at_a_time(tmp_path):
    """The children of k candidates are bounded in one batch; each candidate's estimates equal those
    of its children built by ``children`` and bounded on their own bounds (the batch's order of
    domains, candidates and bounds agrees)."""
    import torch

    from certkit.bounds.deeppoly import BoundState
    from certkit.verify.relu_domains import branch_candidates
    from certkit.verify.relu_split import _root, _Tree

    model = _model(tiny_relu_onnx(5, n_in=3, hidden=(12, 12)), tmp_path)
    q = Query.of_property(model.graph, _above(1e3, -np.ones(3), np.ones(3)), 0, model.runner)
    cfg = ReluSplitConfig(branching="fsb", fsb_candidates=3)
    tree = _Tree(q, np.array([0]), cfg)
    dom, _ = tree.root(_root(q, tree.relus, cfg))
    kids, _ = tree.children(dom)
    kids, _ = tree.bound(kids, 0)
    bounds = kids.bounds_list(len(model.graph.nodes))
    cands = branch_candidates(kids, {}, tree.relus, tree.pre, 3)
    assert bool((cands[..., 0] >= 0).all())
    with torch.no_grad():
        together = tree._children_bounds(kids, cands, bounds)
        nodes = len(model.graph.nodes)
        for c in range(3):
            parents = kids.map(lambda t: t)
            parents.branch = cands[:, c]
            ch, _ = tree.children(parents)
            st = BoundState(tree.exact, tree._inputs(len(ch)), intersect=True, bounds=ch.bounds_list(nodes),
                            splits=ch.splits, refined=set(range(nodes)), alpha={("out", r): ch.alpha[r] for r in tree.relus},
                            beta=ch.beta, alpha_out_only=True, errors=dict.fromkeys(range(nodes)))
            A_in, const = st.backsub(model.graph.output, tree.C.expand(len(ch), -1, -1), tag="out")
            alone = (tree._inputs(len(ch)).concretize_lower(A_in, const) - tree.d).amax(dim=1)
            alone = torch.where(st.infeasible(), torch.full_like(alone, float("inf")), alone)
            assert torch.allclose(together[:, c], alone.reshape(-1, 2), rtol=1e-12, atol=1e-12)
    assert any(not torch.equal(lo[0], lo[1]) or not torch.equal(hi[0], hi[1]) for lo, hi in kids.bounds.values())


def test_unknown_branching_is_refused():
    with pytest.raises(ValueError, match="unknown branching 'fbs'"):
        ReluSplitConfig(branching="fbs")


@pytest.mark.parametrize("seed,scale", [(0, 300.0), (1, 1e4), (2, 1e-3)])
def test_pinned_sigmoid_net_verdicts_survive_onnxruntime(seed, scale, tmp_path):
    """Huge and tiny weights (saturated sigmoids, cancellations near float32's resolution), 18 of 20
    inputs pinned, thresholds at the top of onnxruntime's own outputs: an unsat is never contradicted
    by 10^5 onnxruntime samples of the box, a sat's witness is one of the box and reaches the threshold
    in onnxruntime."""
    model = _model(tiny_relu_onnx(seed, n_in=20, hidden=(10, 10), act="Sigmoid", scale=scale), tmp_path)
    rng = np.random.default_rng(seed)
    pin = rng.uniform(-1, 1, 20).astype(np.float32).astype(np.float64)
    lo, hi = pin.copy(), pin.copy()
    lo[:2], hi[:2] = -1, 1
    xs = np.repeat(pin[None], 100_000, 0).astype(np.float32)
    xs[:, :2] = rng.uniform(-1, 1, (100_000, 2))
    ys = model.runner(xs)[:, 0].astype(np.float64)
    spread = ys.max() - ys.min()
    for t in (ys.max() + max(0.01 * spread, 1e-5 * (1 + abs(ys.max()))), ys.max(), np.quantile(ys, 0.999)):
        res = certify(model, Spec((_above(t, lo, hi),), 20, 1), "bab", timeout=20)
        if res.verdict == "unsat":
            assert (ys < t).all(), (scale, t)
        elif res.verdict == "sat":
            w = res.properties[0].witness
            assert (w.x >= lo).all() and (w.x <= hi).all()
            assert model.runner(np.asarray(w.x, dtype=np.float32)[None])[0, 0] >= t
