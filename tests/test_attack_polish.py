"""The stronger falsifier of issue 13: trust-region LP polishing (certkit.verify.polish), step sizes
cycled across PGD restarts, and attacks inside the open domains of input splitting. Every hit is a
candidate only; the witnesses here are confirmed with onnxruntime."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from certkit.model import Model
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from certkit.spec.spec import Disjunct, Property
from certkit.verify.falsify import AttackConfig, attack
from certkit.verify.input_split import SplitConfig, _Bounded, _Problem, input_split
from certkit.verify.polish import polish
from certkit.verify.query import Budget, Query
from tests.helpers.examples import SHARED
from tests.helpers.onnx_builders import X, graph_model


def _mlp(seed: int, n_in: int = 4, hidden=(32, 32), n_out: int = 3):
    rng = np.random.default_rng(seed)
    sizes = (n_in, *hidden, n_out)
    nodes, consts, prev = [], {}, X
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        consts[f"W{k}"] = rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)
        consts[f"b{k}"] = rng.normal(0, 0.1, b).astype(np.float32)
        nodes += [helper.make_node("MatMul", [prev, f"W{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"])]
        prev = f"a{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{k}"]))
            prev = f"r{k}"
    nodes.append(helper.make_node("Identity", [prev], ["Y"]))
    return graph_model(nodes, (1, n_in), consts=consts)


def _model(tmp_path, proto) -> Model:
    path = tmp_path / "net.onnx"
    onnx.save(proto, path)
    return Model(import_model(proto, str(path)), str(path))


def _output_box_prop(model: Model, x_star: np.ndarray, lo, hi, half: float) -> Property:
    """Unsafe: every output within ``half`` of the output at ``x_star`` (a conjunction of 2 m rows,
    like reach_prob_density's output boxes): a small target that exists by construction."""
    y = model.graph.forward(torch.as_tensor(x_star[None]))[0].numpy()
    m = len(y)
    C = np.vstack([np.eye(m), -np.eye(m)])
    d = np.r_[y + half, -(y - half)]
    return Property(np.asarray(lo, float), np.asarray(hi, float), (Disjunct(C, d),))


def test_polish_solves_a_linear_conjunction_in_a_few_programs():
    """On an affine map the first-order model is exact: the LP steps reach a thin sliver that sign
    steps along one row at a time would zigzag around."""
    A = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([0.001, 0.001, 1.5], dtype=torch.float64)  # |x0 - x1| <= 0.001, x0 + x1 <= 1.5 ... and
    A = torch.cat([A, torch.tensor([[-1.0, -1.0]], dtype=torch.float64)])
    b = torch.cat([b, torch.tensor([-1.49], dtype=torch.float64)])  # x0 + x1 >= 1.49: a short thin segment
    calls = []

    def f(x):
        calls.append(x.shape[0])
        return x @ A.T - b

    lo, hi = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    x, v = polish(f, lo, hi, torch.tensor([[0.05, 0.9]], dtype=torch.float64), steps=30)
    assert float(v) <= 0 and bool((x >= lo).all() and (x <= hi).all())
    assert float((f(x[None])).max()) <= 0
    assert len(calls) < 30  # a few linear programs, not a long walk


def test_polish_keeps_the_start_without_improvement():
    f = lambda x: (x ** 2).sum(dim=1, keepdim=True) + 1.0  # noqa: E731 - never <= 0
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    x, v = polish(f, lo, hi, torch.zeros(1, 3, dtype=torch.float64))
    assert float(v) == 1.0 and bool((x == 0).all())


def test_attack_with_polish_hits_a_small_output_box(tmp_path):
    """A ReLU net's output box of half-width 2e-3 around f(x*): the polished attack finds a point
    whose onnxruntime output is in it, for every seed."""
    model = _model(tmp_path, _mlp(1))
    rng = np.random.default_rng(5)
    lo, hi = -np.ones(4), np.ones(4)
    hits = 0
    for seed in range(4):
        x_star = rng.uniform(-0.8, 0.8, 4)
        prop = _output_box_prop(model, x_star, lo, hi, 2e-3)
        q = Query.of_property(model.graph, prop, 0, model.runner)
        cfg = AttackConfig(samples=256, restarts=8, steps=50, polish=8)
        x, v = attack(q.graph, q.region, torch.as_tensor(q.C), torch.as_tensor(q.d), q.owner, cfg, seed=seed)
        if v[0] <= 0:
            w = q.confirm(x)
            hits += w is not None
            if w is not None:
                assert ((w.x >= lo) & (w.x <= hi)).all()
                y = model.runner(w.x[None])[0]
                assert (prop.disjuncts[0].C @ y <= prop.disjuncts[0].d).all()
    assert hits == 4


def test_polish_never_leaves_the_box_and_never_invents_a_hit(tmp_path):
    """An unreachable output box (far from every output): polishing reports no point <= 0, and every
    point it returns lies in the box."""
    model = _model(tmp_path, _mlp(2))
    lo, hi = -np.ones(4), np.ones(4)
    prop = _output_box_prop(model, np.zeros(4), lo, hi, 1e-3)
    C, d = prop.disjuncts[0].C, prop.disjuncts[0].d + np.r_[np.full(3, -50.0), np.full(3, 50.0)]  # y <= y0 - 50
    q = Query.of_property(model.graph, Property(lo, hi, (Disjunct(C, d),)), 0, model.runner)
    x, v = attack(q.graph, q.region, torch.as_tensor(q.C), torch.as_tensor(q.d), q.owner,
                  AttackConfig(samples=64, restarts=4, steps=20, polish=4), seed=0)
    assert v[0] > 0 and ((x >= lo) & (x <= hi)).all()


def test_step_sizes_cycle_across_restarts(tmp_path, monkeypatch):
    """A counterexample only at a corner of the box (y = w . x with every sign needed): eight steps
    of 0.1 half-widths cannot reach it from inside, the restart with five times the step does."""
    w = np.array([[1.0], [-1.0], [1.0], [-1.0], [1.0], [-1.0]], np.float32)
    proto = graph_model([helper.make_node("MatMul", [X, "W"], ["Y"])], (1, 6), consts={"W": w})
    model = _model(tmp_path, proto)
    lo, hi = -np.ones((1, 6)), np.ones((1, 6))
    C, d = np.array([[-1.0]]), np.array([-5.99])  # unsafe: y >= 5.99 (max 6 at the sign vertex)
    cfg = AttackConfig(samples=2, restarts=3, steps=8, step_size=0.1)
    x, v = attack(model.graph, InputSet.box(lo, hi), C, d, np.zeros(1, int), cfg, seed=0)
    assert v[0] <= 0
    import certkit.verify.falsify as falsify
    monkeypatch.setattr(falsify, "STEP_SCALES", torch.ones(3, dtype=torch.float64))
    x, v = attack(model.graph, InputSet.box(lo, hi), C, d, np.zeros(1, int), cfg, seed=0)
    assert v[0] > 0


def test_input_split_attacks_its_open_domains(tmp_path):
    """The open domain of lowest value holds a counterexample the bounds cannot show: the attack
    inside it finds it and onnxruntime confirms it."""
    model = _model(tmp_path, _mlp(3, n_in=2, hidden=(16, 16), n_out=2))
    lo, hi = -np.ones(2), np.ones(2)
    x_star = np.array([0.3, -0.4])
    prop = _output_box_prop(model, x_star, lo, hi, 1e-3)
    q = Query.of_property(model.graph, prop, 0, model.runner)
    pb = _Problem(q, SplitConfig(), Budget.of(30))
    boxes = torch.tensor([[0.2, -0.5, 0.4, -0.3], [-1.0, -1.0, 0.0, 0.0]], dtype=torch.float64)
    queue = _Bounded(boxes[:, :2], boxes[:, 2:], torch.tensor([-1.0, -5.0]), torch.zeros(2, 2),
                     torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), torch.ones(2))
    # only the first domain holds x*, but it is the second that has the lowest value: with one domain
    # attacked the attack misses, with both it finds the point
    assert pb.attack_open(queue.rows(slice(0, 2)), seed=0) is not None
    one = _Problem(q, SplitConfig(attack_domains=1), Budget.of(30))
    assert one.attack_open(queue, seed=0) is None


def test_input_split_finds_a_tiny_counterexample(tmp_path):
    """End to end: an output box of half-width 1e-4 (too small for the top-level attack's samples);
    input splitting with domain attacks ends falsified, never verified."""
    model = _model(tmp_path, _mlp(4, n_in=3, hidden=(16, 16), n_out=2))
    lo, hi = -np.ones(3), np.ones(3)
    prop = _output_box_prop(model, np.array([0.1, -0.7, 0.45]), lo, hi, 1e-4)
    q = Query.of_property(model.graph, prop, 0, model.runner)
    out = input_split(q, Budget.of(60), SplitConfig(attack_every=2))
    assert out.status == "falsified" and out.witness is not None
    y = model.runner(out.witness.x[None])[0]
    assert (prop.disjuncts[0].C @ y <= prop.disjuncts[0].d).all()


def test_milp_still_solves_after_polishing():
    """HiGHS's thread scheduler is global to the process: polishing uses one thread as every other
    HiGHS solve of certkit, so a MILP after it still runs (it failed with run status kError when the
    polishing solver kept HiGHS's default thread count)."""
    pytest.importorskip("highspy")
    import scipy.sparse as sp

    from certkit import solvers
    from certkit.solvers.problem import MipProblem

    f = lambda x: x @ torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64).T + 0.5  # noqa: E731
    polish(f, -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
           torch.tensor([[0.9, 0.9]], dtype=torch.float64))
    p = MipProblem(np.array([-1.0, -1.0]), np.zeros(2), np.full(2, 3.0), np.array([True, False]),
                   sp.csr_matrix(np.array([[1.0, 1.0]])), np.array([-np.inf]), np.array([2.5]))
    res = solvers.solve_mip(p)
    assert res.status == "optimal" and res.objective == pytest.approx(-2.5)


def test_polishing_skips_disjuncts_too_large(tmp_path, monkeypatch):
    """A disjunct with more rows than POLISH_MAX_ROWS is not polished (its Jacobian would need that many
    forward copies of the input): the attack returns PGD's point, and polish() is never called."""
    import certkit.verify.falsify as falsify

    model = _model(tmp_path, _mlp(1))
    prop = _output_box_prop(model, np.array([0.3, -0.2, 0.5, -0.6]), -np.ones(4), np.ones(4), 1e-5)  # 6 rows
    q = Query.of_property(model.graph, prop, 0, model.runner)
    calls = []
    monkeypatch.setattr(falsify, "polish", lambda *a, **k: calls.append(1) or (a[3][0], torch.tensor(1.0)))
    monkeypatch.setattr(falsify, "POLISH_MAX_ROWS", 5)
    attack(q.graph, q.region, torch.as_tensor(q.C), torch.as_tensor(q.d), q.owner,
           AttackConfig(samples=16, restarts=2, steps=5, polish=2), seed=0)
    assert not calls
    monkeypatch.setattr(falsify, "POLISH_MAX_ROWS", 64)
    attack(q.graph, q.region, torch.as_tensor(q.C), torch.as_tensor(q.d), q.owner,
           AttackConfig(samples=16, restarts=2, steps=5, polish=2), seed=0)
    assert calls


def test_polish_stops_at_its_deadline():
    """A deadline already past: no linear program runs, the best start comes back as it is."""
    f = lambda x: x @ torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64).T + 3.0  # noqa: E731
    start = torch.tensor([[0.2, 0.3]], dtype=torch.float64)
    x, v = polish(f, -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), start,
                  deadline=time.monotonic() - 1.0)
    assert torch.equal(x, start[0]) and float(v) == float(f(start).max())


def test_lattice_enumerates_corners_edge_and_face_centres_of_the_free_inputs():
    from certkit.verify.falsify import lattice

    free = torch.tensor([[True, False, True, True]])
    grid = lattice(free, 27)
    assert grid.shape == (27, 4) and bool((grid[:, 1] == 0).all())
    assert {tuple(p) for p in grid[:, [0, 2, 3]].tolist()} == \
        {(a, b, c) for a in (0, .5, 1) for b in (0, .5, 1) for c in (0, .5, 1)}
    assert lattice(free, 26) is None  # too many: the attack keeps its random samples
    assert lattice(torch.zeros(1, 3, dtype=torch.bool), 1).shape == (1, 3)  # a point: its centre


def test_attack_finds_a_counterexample_only_a_face_centre_holds():
    """y = 10 |x_2| + sum of the other inputs' distances to their upper bounds, unsafe below 0.01: only
    points within 1e-3 of the centre of a face violate it, a set random samples never hit; the samples
    hold every point of the lattice {lo, mid, hi}^5, so the attack's sampling phase finds it."""
    w = np.zeros((5, 1), dtype=np.float32)
    w[[0, 1, 3, 4], 0] = -1.0
    consts = {"W": w, "c": np.float32([[4.0]]), "e": np.float32([[0, 0, 10, 0, 0]]).T}
    nodes = [helper.make_node("Abs", [X], ["a"]), helper.make_node("MatMul", ["a", "e"], ["p"]),
             helper.make_node("MatMul", [X, "W"], ["q"]), helper.make_node("Add", ["p", "q"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["Y"])]
    g = import_model(graph_model(nodes, (1, 5), consts=consts))
    lo, hi = torch.full((1, 5), -1.0, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64)
    C, d = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([0.01], dtype=torch.float64)
    x, v = attack(g, InputSet(lo, hi), C, d, np.zeros(1, dtype=np.int64),
                  AttackConfig(samples=512, restarts=0, steps=0, polish=0), seed=3)
    assert v[0] <= 0 and np.allclose(x[0], [1, 1, 0, 1, 1])


@pytest.mark.skipif(not (SHARED / "benchmarks" / "acasxu").is_dir(), reason="needs ../shared/benchmarks/acasxu")
def test_acas_1_9_prop_7_counterexample_is_found_by_the_medium_attack():
    """Its counterexample sits at a face centre of the box (X_3 at its midpoint, the other inputs at their
    bounds); a regression: it had been found only by luck among input splitting's first candidates."""
    import certkit
    from certkit.verify.certify import queries_of
    from certkit.verify.pipeline import MEDIUM_ATTACK

    acas = SHARED / "benchmarks" / "acasxu"
    model = certkit.load_model(acas / "onnx" / "ACASXU_run2a_1_9_batch_2000.onnx")
    q = queries_of(model, certkit.load_spec(acas / "vnnlib" / "prop_7.vnnlib"))[0]
    S = q.region
    x, v = attack(q.graph, S, q.C, q.d, q.owner, MEDIUM_ATTACK, seed=0)
    assert v[0] <= 0
    assert q.confirm(torch.as_tensor(x)) is not None


@pytest.mark.skipif(not (SHARED / "benchmarks" / "acasxu").is_dir(), reason="needs ../shared/benchmarks/acasxu")
def test_acas_5_3_prop_2_sliver_is_found_by_input_splitting_nearest_first():
    """Its unsafe set is a sliver (the witness's margin is 1e-6) that no attack finds; input splitting finds
    it among its domains' candidate points. With the open children stacked nearest-to-a-counterexample on
    top, the DeepPoly configuration reaches it within 8000 domains (5901); in the parents' order it took
    more than 8000 (the pipeline found it only in its alpha-CROWN run, after 13649)."""
    import certkit
    from certkit.verify.certify import queries_of

    acas = SHARED / "benchmarks" / "acasxu"
    model = certkit.load_model(acas / "onnx" / "ACASXU_run2a_5_3_batch_2000.onnx")
    q = queries_of(model, certkit.load_spec(acas / "vnnlib" / "prop_2.vnnlib"))[0]
    out = input_split(q, Budget.of(600), SplitConfig(lookahead=5, alpha_iterations=0, max_domains=8000))
    assert out.status == "falsified", (out.status, out.domains)
