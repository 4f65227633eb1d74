"""Reference bounds of intermediate layers (issue 13; ``BoundState._reference``).

The reference bounds of an affine layer are the interval image of the back-substituted bounds of the
layer before (auto_LiRPA's ``sparse_intermediate_bounds_with_ibp``). With ``reference`` (the bound
procedure ``deeppoly+reference``) pure CROWN lets the neurons they show stable keep them, as auto_LiRPA's
default CROWN does, and ``intersect`` intersects every neuron's bounds with them. On a deeper net of the VNN-COMP mnistfc family (mnist-net_256x2's hidden layer
repeated: the 256x4 net of the issue is held out) both are tighter than before, and every bound holds
on samples, corners and a sign-gradient attack; on random nets too.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certkit.bounds.deeppoly import BoundState, deeppoly_lower, deeppoly_output_bounds
from certkit.bounds.interval import interval_bounds
from certkit.graph import ops
from certkit.graph.graph import Graph, Node
from certkit.onnx.importer import load_onnx
from certkit.spec.sets import InputSet
from tests.helpers import random_nets
from tests.helpers.examples import SHARED

NET = SHARED / "benchmarks" / "mnistfc_2021" / "onnx" / "mnist-net_256x2.onnx"
MNIST = SHARED / "data" / "mnist.npz"
needs_shared = pytest.mark.skipif(not (NET.exists() and MNIST.exists()), reason="needs ../shared")


def _deep_mnistfc(hidden: int) -> Graph:
    """mnist-net_256x2 with its second hidden layer repeated: ``hidden`` layers of 256 ReLUs."""
    dense = [n.op for n in load_onnx(str(NET)).nodes if isinstance(n.op, ops.Dense)]
    layers = [dense[0]] + [dense[1]] * (hidden - 1) + [dense[2]]
    nodes, shapes = [Node("input", ops.Input(), ())], [(1, 784)]
    for k, d in enumerate(layers):
        nodes.append(Node(f"dense_{k}", ops.Dense(d.weight, d.bias), (len(nodes) - 1,)))
        shapes.append((1, d.weight.shape[0]))
        if k < len(layers) - 1:
            nodes.append(Node(f"relu_{k}", ops.Relu(), (len(nodes) - 1,)))
            shapes.append(shapes[-1])
    return Graph(tuple(nodes), tuple(shapes), len(nodes) - 1)


def _box(k: int, eps: float) -> InputSet:
    x = np.load(MNIST)["x_test"][k].reshape(-1).astype(np.float64) / 255.0
    return InputSet.box(np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1))


def _widths(g, S, intersect, reference=True):
    lo, hi = deeppoly_output_bounds(g, S, intersect=intersect, reference=reference)
    return lo, hi, hi - lo


def _samples(g, S, n: int, rng) -> torch.Tensor:
    """Outputs at uniform points, corners, and a sign-gradient ascent/descent on every output."""
    lo, hi = S.lower[0], S.upper[0]
    X = [lo + (hi - lo) * torch.rand(n, lo.numel(), generator=rng, dtype=torch.float64),
         torch.where(torch.rand(n, lo.numel(), generator=rng) < 0.5, lo, hi)]
    m = g.n_outputs
    Z = ((lo + hi) / 2).repeat(2 * m, 1).requires_grad_(True)
    sign = torch.cat([torch.eye(m), -torch.eye(m)]).to(torch.float64)
    for _ in range(25):
        obj = (g.forward(Z) * sign).sum()
        grad, = torch.autograd.grad(obj, Z)
        Z = torch.minimum(torch.maximum(Z.detach() + 0.2 * (hi - lo) * grad.sign(), lo), hi).requires_grad_(True)
    X.append(Z.detach())
    with torch.no_grad():
        return g.forward(torch.cat(X))


@needs_shared
@pytest.mark.parametrize("intersect", [True, False])
def test_tighter_than_before_on_a_deep_mnistfc_net(intersect):
    """4 hidden layers, L_inf 0.02-0.03 around MNIST test images: pure CROWN with the reference bounds is
    never looser than without (beyond 1e-9 relative) and tighter on some (measured: up to 1%, as
    auto_LiRPA's default is). With ``intersect`` every refined node meets the interval image of its
    inputs' bounds anyway (``BoundState.refresh``): the reference bounds change nothing, and both are
    4-14% narrower on average over the outputs than pure CROWN."""
    g = _deep_mnistfc(4)
    best = 1.0
    for k, eps in ((0, 0.02), (2, 0.02), (0, 0.03), (2, 0.03)):
        S = _box(k, eps)
        lo, hi, w = _widths(g, S, intersect)
        lo0, hi0, w0 = _widths(g, S, intersect, reference=False)
        tol = 1e-9 * float(w0.abs().max())
        assert bool((lo >= lo0 - tol).all()) and bool((hi <= hi0 + tol).all())
        if intersect:
            assert bool((lo <= lo0 + tol).all()) and bool((hi >= hi0 - tol).all())
            w0 = _widths(g, S, False, reference=False)[2]
        best = min(best, float((w / w0).mean()))
    assert best < (0.95 if intersect else 0.995)


@needs_shared
@pytest.mark.parametrize("hidden", [2, 4])
@pytest.mark.parametrize("intersect", [True, False])
def test_bounds_hold_on_samples_and_attacks(hidden, intersect):
    g = _deep_mnistfc(hidden)
    rng = torch.Generator().manual_seed(hidden)
    for k, eps in ((0, 0.03), (2, 0.05)):
        S = _box(k, eps)
        lo, hi = deeppoly_output_bounds(g, S, intersect=intersect, reference=True)
        Y = _samples(g, S, 1500, rng)
        assert bool((Y >= lo).all()) and bool((Y <= hi).all())
        if intersect:  # within the interval bounds too
            ib = interval_bounds(g, S)[g.output]
            assert bool((lo >= ib[0]).all()) and bool((hi <= ib[1]).all())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("intersect", [True, False])
def test_random_deep_nets(seed, intersect):
    """Random deep ReLU nets with large gains (many neurons unstable, CROWN's intermediate bounds
    often wider than the reference), a batch of boxes of mixed widths (one degenerate): every bound
    holds on samples and attacks; spec rows hold at the worst sampled point."""
    gen = np.random.default_rng(seed)
    g = random_nets.mlp("relu", seed, (6, 20, 20, 20, 20, 20, 3))
    c = gen.uniform(0, 1, (3, 6))
    r = np.stack([np.full(6, 0.4), gen.uniform(0.01, 0.2, 6), np.zeros(6)])
    S = InputSet(torch.tensor(c - r), torch.tensor(c + r))
    C = torch.tensor(gen.normal(size=(5, 3)))
    low = deeppoly_lower(g, S, C, intersect, reference=True)
    lo, hi = deeppoly_output_bounds(g, S, intersect=intersect, reference=True)
    rng = torch.Generator().manual_seed(seed)
    for b in range(3):
        one = InputSet(S.lower[b:b + 1], S.upper[b:b + 1])
        Y = _samples(g, one, 800, rng)
        assert bool((Y >= lo[b]).all()) and bool((Y <= hi[b]).all())
        assert bool(((Y @ C.T) >= low[b]).all())


def test_reference_is_the_image_of_the_refined_layer_before():
    """``_reference`` of a deeper Dense: the interval image of its input's bounds after refinement
    (tighter than the interval pass's), None for the first layer (fed by the input)."""
    g = random_nets.mlp("relu", 3, (6, 20, 20, 20, 3))
    S = InputSet(torch.full((1, 6), 0.1, dtype=torch.float64), torch.full((1, 6), 0.6, dtype=torch.float64))
    st = BoundState(g, S, intersect=True, reference=True)
    deeppoly_output_bounds(g, S, intersect=True, state=st)
    dense = [j for j, n in enumerate(g.nodes) if isinstance(n.op, ops.Dense)]
    assert st._reference(dense[0]) is None
    ibp = interval_bounds(g, S)
    j = dense[2]
    ref = st._reference(j)
    assert bool((ref[0] >= ibp[j][0] - 1e-12).all()) and bool((ref[1] <= ibp[j][1] + 1e-12).all())
    assert bool((st.bounds[j][0] >= ref[0]).all()) and bool((st.bounds[j][1] <= ref[1]).all())


def test_reference_stage_is_registered_not_in_auto():
    """``deeppoly+reference`` is a bound procedure of its own, with the same memory ladder as
    ``deeppoly+interval``; ``auto`` does not run it, since ``deeppoly+interval`` gives the same bounds
    (every refined node meets the interval image of its inputs' bounds: ``BoundState.refresh``)."""
    from certkit.bounds.backends import BACKENDS
    from certkit.bounds.fallback import LADDER
    from certkit.verify.plan import PLANS

    assert "deeppoly+reference" in BACKENDS and LADDER["deeppoly+reference"] == LADDER["deeppoly+interval"]
    auto = PLANS["auto"]
    assert "deeppoly+reference" not in auto and auto.index("deeppoly+interval") < auto.index("alpha")


def test_reference_stage_tighter_rows_on_acas_and_within_interval():
    """On ACAS Xu the reference bounds tighten the rows markedly (measured: 3_5 prop_1's worst row
    -2789.6 with pure CROWN, -2135.9 with deeppoly+interval before ``BoundState.refresh``, -1911.7 with
    the reference bounds and now with deeppoly+interval too); the rows are never below the interval rows."""
    onnx_path = SHARED / "benchmarks" / "acasxu" / "onnx" / "ACASXU_run2a_3_5_batch_2000.onnx"
    spec_path = SHARED / "benchmarks" / "acasxu" / "vnnlib" / "prop_1.vnnlib"
    if not (onnx_path.exists() and spec_path.exists()):
        pytest.skip("needs ../shared/benchmarks/acasxu")
    from certkit.bounds.backends import BACKENDS
    from certkit.spec.vnnlib import parse_vnnlib

    g = load_onnx(str(onnx_path))
    p = parse_vnnlib(str(spec_path)).properties[0]
    S = InputSet.box(p.lower[None], p.upper[None])
    C = torch.as_tensor(p.stacked()[0])
    plain = BACKENDS["deeppoly"].lower(g, S, C)
    ref = BACKENDS["deeppoly+reference"].lower(g, S, C)
    assert float((ref - plain).min()) > 100.0
    assert torch.allclose(BACKENDS["deeppoly+interval"].lower(g, S, C), ref, rtol=1e-9, atol=0)
    assert bool((ref >= BACKENDS["interval"].lower(g, S, C)).all())
    rng = torch.Generator().manual_seed(0)
    X = S.lower + (S.upper - S.lower) * torch.rand(20000, 5, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        assert bool(((g.forward(X) @ C.T) >= ref).all())


def _spied_pipeline(monkeypatch):
    """A function running the pipeline with a plan on a property the bounds leave open (no attacks),
    returning its results and the bound stages that ran."""
    import certkit
    from certkit.verify import pipeline
    from certkit.verify.certify import queries_of
    from certkit.verify.query import Budget
    from tests.helpers.examples import FC, SAT

    model, spec = certkit.load_model(FC), certkit.load_spec(SAT)
    ran: list = []
    orig = pipeline.bound_rows

    def spy(queries, stage, budget):
        ran.append(stage)
        return orig(queries, stage, budget)

    monkeypatch.setattr(pipeline, "bound_rows", spy)

    def run(plan):
        ran.clear()
        res = pipeline.decide(queries_of(model, spec), plan, Budget.of(60), quick=None, medium=None, long=None)
        return res, list(ran)
    return run


def test_pipeline_skips_a_repeat_that_would_take_too_long(monkeypatch):
    """A stage that repeats an earlier one's cost runs when that one was cheap, and is skipped when it
    took more than REPEAT_SHARE of the time left (a property the bounds leave open, no attacks)."""
    from certkit.verify import pipeline

    run = _spied_pipeline(monkeypatch)
    plan = ("deeppoly+interval", "deeppoly+reference")
    for share, expected in ((0.1, list(plan)), (0.0, ["deeppoly+interval"])):
        monkeypatch.setattr(pipeline, "REPEAT_SHARE", share)
        res, ran = run(plan)
        assert res[0].status == "open" and ran == expected


def test_pipeline_skips_both_repeats_of_a_slow_deeppoly(monkeypatch):
    """After a DeepPoly pass that took more than REPEAT_SHARE of the time left, ``auto`` goes straight to
    alpha-CROWN (whose first iterate is ``deeppoly+interval``'s bound): both repeats are skipped."""
    from certkit.verify import pipeline

    run = _spied_pipeline(monkeypatch)
    plan = ("deeppoly", "deeppoly+interval", "deeppoly+reference", "alpha")
    for share, expected in ((0.1, list(plan)), (0.0, ["deeppoly", "alpha"])):
        monkeypatch.setattr(pipeline, "REPEAT_SHARE", share)
        assert run(plan)[1] == expected
