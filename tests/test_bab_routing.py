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


def _mixed_onnx(seed: int, n_in: int = 2, acts=("Relu", "Sigmoid", "Relu"), width: int = 10) -> onnx.ModelProto:
    """Gemm layers with the ONNX activations ``acts`` in turn (ReLU among others), one output."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = (n_in, *([width] * len(acts)), 1)
    nodes, inits, prev = [], [], "x"
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array(rng.normal(0, 1, (a, b)).astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(rng.normal(0, 0.5, b).astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{k}", f"b{k}"], [f"g{k}"]))
        prev = f"g{k}"
        if k < len(acts):
            nodes.append(helper.make_node(acts[k], [prev], [f"a{k}"]))
            prev = f"a{k}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", 1, [1, n_in])],
                          [helper.make_tensor_value_info("y", 1, [1, 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("seed,act", [(1, "Sigmoid"), (5, "Sigmoid"), (0, "Tanh")])
def test_relu_splitting_beside_other_activations(seed, act, tmp_path):
    """ReLU splitting on a net with an S-shaped layer before its ReLUs (as a vision transformer's
    softmax beside its MLP ReLUs): only ReLUs are split, the other layer keeps the root's input
    bounds. Against a 401 x 401 grid of the box: 10% of the spread above the maximum is verified after
    some splits (measured on these seeds) and the tree is re-derived by the recheck; 2% below is never
    verified, and a witness holds in onnxruntime."""
    from certkit.verify.relu_domains import piecewise_linear, supports
    from certkit.verify.relu_recheck import recheck

    model = _model(_mixed_onnx(seed, acts=(act, "Relu", "Relu"), width=12), tmp_path)
    assert supports(model.graph) and not piecewise_linear(model.graph)
    r = 0.1
    lo, hi = np.full(2, -r), np.full(2, r)
    g = np.stack(np.meshgrid(np.linspace(-r, r, 401), np.linspace(-r, r, 401)), -1).reshape(-1, 2)
    ys = model.graph(g)[:, 0]
    top, spread = ys.max(), ys.max() - ys.min()
    cfg = ReluSplitConfig(batch=8)
    q = Query.of_property(model.graph, _above(top + 0.1 * spread, lo, hi), 0, model.runner)
    out = relu_split(q, Budget.of(60), cfg)
    assert out.status == "verified" and out.domains > 1, (out.status, out.domains)
    rep = recheck(q, out.trees)
    assert rep.failed == 0 and rep.leaves > 1, rep
    t = top - 0.02 * spread
    out = relu_split(Query.of_property(model.graph, _above(t, lo, hi), 0, model.runner), Budget.of(60), cfg)
    assert out.status in ("falsified", "unknown"), out.status
    if out.status == "falsified":
        assert model.runner(out.witness.x[None])[0, 0] >= t


def test_batches_sized_by_measured_cost(tmp_path):
    """``batch_share``: with almost no share of the time, every batch is one parent (the search still
    decides, one domain pair at a time); the verdicts are the grid's."""
    model = _model(tiny_relu_onnx(2), tmp_path)
    lo, hi = -np.ones(2), np.ones(2)
    top, spread = grid_top(model)
    cfg = SplitConfig(alpha_iterations=0, batch_share=1e-12)
    q = Query.of_property(model.graph, _above(top + 0.02 * spread, lo, hi), 0, model.runner)
    out = input_split(q, Budget.of(60), cfg)
    assert out.status == "verified" and out.domains == 1 + 2 * cfg.lookahead * out.iterations, out  # one parent a batch
    q = Query.of_property(model.graph, _above(top - 0.02 * spread, lo, hi), 0, model.runner)
    assert input_split(q, Budget.of(60), cfg).status == "falsified"


def test_tiny_nets_with_many_free_inputs_go_to_the_milp_alone(tmp_path):
    """At most MILP_ONLY_NEURONS activation neurons and more free inputs than input splitting takes (at
    most MILP_ONLY_MAX_INPUTS):
    ``auto`` skips branch and bound and the MILP decides (safenlp_2024's nets, 128 ReLUs and 30 inputs);
    a named ``bab`` still runs; a sigmoid net, a larger net or a low-dimensional box are left as before."""
    from certkit.verify.procedures import (MILP_ONLY_MAX_INPUTS, MILP_ONLY_NEURONS, RELU_SPLIT_SHARE, bab_share,
                                           milp_alone, run_bab)

    model = _model(tiny_relu_onnx(3, n_in=20, hidden=(12,)), tmp_path)
    lo, hi = -np.ones(20), np.ones(20)
    rng = np.random.default_rng(0)
    ys = model.graph(rng.uniform(-1, 1, (20000, 20)))[:, 0]
    # the exact maximum of a one-layer net over the box is at a vertex; the MILP finds it exactly
    t_sat = float(ys.max())  # some point reaches it: sat
    q = Query.of_property(model.graph, _above(t_sat, lo, hi), 0, model.runner)
    assert milp_alone(q) and bab_share(q) == 0.0
    assert run_bab(q, Budget.of(30), explicit=False) is None
    assert run_bab(q, Budget.of(30), explicit=True) is not None
    res = certify(model, Spec((_above(t_sat, lo, hi),), 20, 1), "auto", timeout=60)
    assert res.verdict == "sat"
    # far above every sampled value: whatever proves it, never wrongly
    spread = float(ys.max() - ys.min())
    res = certify(model, Spec((_above(float(ys.max()) + 2 * spread, lo, hi),), 20, 1), "auto", timeout=60)
    assert res.verdict == "unsat"

    sig = _model(tiny_relu_onnx(3, n_in=20, hidden=(12,), act="Sigmoid"), tmp_path, "s.onnx")
    assert not milp_alone(Query.of_property(sig.graph, _above(t_sat, lo, hi), 0, sig.runner))
    big = _model(tiny_relu_onnx(3, n_in=20, hidden=(MILP_ONLY_NEURONS + 1,)), tmp_path, "b.onnx")
    qb = Query.of_property(big.graph, _above(t_sat, lo, hi), 0, big.runner)
    assert not milp_alone(qb) and bab_share(qb) == RELU_SPLIT_SHARE  # ReLU splitting, then the MILP
    few = lo.copy(), hi.copy()
    few[0][2:], few[1][2:] = 0.0, 0.0  # 2 free inputs: input splitting's
    assert not milp_alone(Query.of_property(model.graph, _above(t_sat, *few), 0, model.runner))
    wide = _model(tiny_relu_onnx(3, n_in=MILP_ONLY_MAX_INPUTS + 1, hidden=(12,)), tmp_path, "w.onnx")
    box = -np.ones(MILP_ONLY_MAX_INPUTS + 1), np.ones(MILP_ONLY_MAX_INPUTS + 1)
    assert not milp_alone(Query.of_property(wide.graph, _above(t_sat, *box), 0, wide.runner))  # MNIST-like


@pytest.mark.parametrize("seed", range(2))
def test_milp_alone_decides_near_the_exact_maximum(seed, tmp_path):
    """The maximum over the box located by bisection with the ``milp`` backend: 1% of the output's spread
    above it ``auto`` proves unsat in the MILP stage (18 free inputs, 16 ReLUs: no branch and bound ran),
    1% below it ``auto`` finds a counterexample (checked by onnxruntime, as every sat)."""
    model = _model(tiny_relu_onnx(seed, n_in=18, hidden=(16,)), tmp_path)
    lo, hi = -np.ones(18), np.ones(18)

    def spec(t: float) -> Spec:
        return Spec((_above(t, lo, hi),), 18, 1)

    ys = model.graph(np.random.default_rng(1).uniform(-1, 1, (20000, 18)))[:, 0]
    spread = float(ys.max() - ys.min())
    a, b = float(ys.max()), float(ys.max()) + 3 * spread  # sat at a (a sampled value), unsat at b
    assert certify(model, spec(b), "milp", timeout=30).verdict == "unsat"
    for _ in range(8):
        mid = (a + b) / 2
        if certify(model, spec(mid), "milp", timeout=30).verdict == "sat":
            a = mid
        else:
            b = mid
    above = certify(model, spec(b + 0.01 * spread), "auto", timeout=60)
    assert (above.verdict, above.stage) == ("unsat", "milp")
    assert certify(model, spec(a - 0.01 * spread), "auto", timeout=60).verdict == "sat"


@pytest.mark.parametrize("arithmetic", ["auto", "float32"])
@pytest.mark.parametrize("seed", range(3))
def test_root_error_terms_hold_for_the_domains_below(seed, arithmetic, tmp_path):
    """Domains below the root are bounded with the root's rounding-error terms (and float32 product
    charges, ``_Tree._root_terms``): within a hair of the bounds with their own, and sound on the
    points of each domain (a box of width 200 and weights of 30 make the terms count)."""
    import torch

    from certkit.bounds.products32 import with_arithmetic
    from certkit.verify.relu_split import _root, _Tree

    model = _model(tiny_relu_onnx(seed + 40, n_in=3, hidden=(12, 12), scale=30.0), tmp_path)
    graph = with_arithmetic(model.graph, arithmetic)
    lo, hi = -100 * np.ones(3), 100 * np.ones(3)
    q = Query.of_property(graph, _above(0.0, lo, hi), 0, model.runner)
    cfg = ReluSplitConfig()
    tree = _Tree(q, np.array([0]), cfg)
    dom, _ = tree.root(_root(q, tree.relus, cfg))
    assert tree._terms is not None and any(e is not None and bool((e > 0).any()) for e in tree._terms[0].values())
    if arithmetic == "float32":
        assert tree._terms[1]["charge"]  # the float32 products' charges are among them
    kids, _ = tree.children(dom)
    kids = kids.map(lambda t: t.repeat(8, *(1,) * (t.dim() - 1)))  # 16 domains: their splits deepened below
    rng = np.random.default_rng(seed)
    for b in range(2, len(kids)):
        for _ in range(3):
            r = tree.relus[rng.integers(len(tree.relus))]
            kids.splits[r][b, rng.integers(graph.size(r))] = int(rng.choice([-1, 1]))
    own_tree = _Tree(q, np.array([0]), cfg)
    own_tree.root(_root(q, own_tree.relus, cfg))
    own_tree._root_terms = lambda n: ({}, {})  # each batch its own terms
    own_tree._root_bounds = None  # ... and its own interval pass
    mine, _ = tree.bound(kids.map(lambda t: t.clone()), 0, optimise=False)
    own, _ = own_tree.bound(kids.map(lambda t: t.clone()), 0, optimise=False)
    finite = torch.isfinite(own.value)
    assert bool(finite.any())
    if arithmetic == "auto":  # error terms only grow with the bounds they rest on
        assert bool((mine.value[finite] <= own.value[finite] + 1e-12).all())
    # apart by about the error terms themselves (a few float32 ulps of the magnitudes), no more (a float32
    # product's bracket about the root's centre can also come out a little tighter)
    assert bool(((mine.value[finite] - own.value[finite]).abs() <= 1e-5 * (1 + own.value[finite].abs())).all())
    # sound: onnxruntime's output at every sampled point of a domain is within the domain's bound
    x = rng.uniform(lo, hi, (20000, 3))
    vals = graph.forward(torch.as_tensor(x), keep=True)
    y = model.runner(x.astype(np.float32))[:, 0].astype(np.float64)
    checked = 0
    for b in torch.nonzero(torch.isfinite(mine.value)).flatten().tolist():
        inside = np.ones(len(x), dtype=bool)
        for r in tree.relus:
            pre = vals[graph.nodes[r].inputs[0]].numpy()
            sign = kids.splits[r][b].numpy().astype(np.float64)
            inside &= ((sign * pre > 1e-6 * (1 + np.abs(pre))) | (sign == 0)).all(axis=1)
        checked += int(inside.sum())
        assert bool((-y[inside] >= float(mine.value[b])).all()), b
    assert checked > 0


@pytest.mark.parametrize("scale", [1e12, 1e20])
def test_relu_splitting_never_proves_an_overflowing_net(scale, tmp_path):
    """Weights that overflow float32 (infinite and NaN outputs in onnxruntime, infinite error terms at the
    root that every domain then inherits): never ``verified``, whatever the threshold."""
    model = _model(tiny_relu_onnx(41, n_in=3, hidden=(12, 12), scale=scale), tmp_path)
    lo, hi = -100 * np.ones(3), 100 * np.ones(3)
    y = model.runner(np.random.default_rng(0).uniform(lo, hi, (20000, 3)).astype(np.float32))[:, 0]
    assert not np.isfinite(y).all() or np.abs(y).max() > 1e30
    for t in (0.0, 3e38):
        q = Query.of_property(model.graph, _above(t, lo, hi), 0, model.runner)
        assert relu_split(q, Budget.of(5), ReluSplitConfig()).status != "verified"
