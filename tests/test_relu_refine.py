"""ReLU splitting with re-optimised intermediate bounds (certkit.verify.relu_refine): the children's
bounds hold on their domains, the verdicts agree with the MILP, a false property is never proven, the
proof is re-derived by ``certkit check`` and a forged one is not (issue 13)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from certkit.cli import main
from certkit.model import load_model
from certkit.spec.spec import Disjunct, Property
from certkit.verify.procedures import refine_applies
from certkit.verify.proof import ProofTree
from certkit.verify.query import Budget, Query
from certkit.verify.relu_refine import LEAF_KINDS, RefineConfig, _Problem, recheck, refine_split
from tests.helpers.onnx_builders import saved_model, tiny_relu_onnx
from tests.helpers.random_nets import ALL_NETS

DEEP = (12, 12, 12, 12)
ROOT = Path(__file__).resolve().parents[1]


def _query(model, lo, hi, t):
    """'y >= t' is the violation (the property says y < t)."""
    prop = Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),))
    return Query.of_property(model.graph, prop, 0, model.runner)


def _extremes(model, lo, hi):
    from certkit.verify.milp import milp_bound

    top = -milp_bound(model.graph, (lo, hi), np.array([-1.0]), time_limit=30)
    bottom = milp_bound(model.graph, (lo, hi), np.array([1.0]), time_limit=30)
    return top, top - bottom


@pytest.mark.parametrize("seed", range(3))
def test_children_bounds_hold_on_their_domains(seed, tmp_path):
    """A split's children start from the parent's bounds with the neuron clamped and re-optimise every
    layer: each child's bounds of every node contain the values of every sampled point of the box
    that lies in the child (the neuron's sign), and its row bound is below the row there."""
    model = saved_model(tiny_relu_onnx(seed + 60, n_in=6, hidden=DEEP), tmp_path)
    lo, hi = -0.5 * np.ones(6), 0.5 * np.ones(6)
    q = _query(model, lo, hi, 0.0)
    prob = _Problem(q, RefineConfig(), Budget())
    values, bounds, empty = prob.bound(None, 1, 10)
    from certkit.verify.relu_refine import _Batch

    root = _Batch(bounds, torch.ones(1, 1, dtype=torch.bool), values.min(dim=1).values, torch.zeros(1, dtype=torch.int64))
    split = prob.choose(root)
    assert int(split[0, 0]) == 0  # the first layer with an unstable neuron
    kids_start = prob.children(root, split)
    values, kids, empty = prob.bound(kids_start, 2, 5)
    g = model.graph
    x = torch.as_tensor(np.random.default_rng(seed).uniform(lo, hi, (200_000, 6)))
    with torch.no_grad():
        vals = g.forward(x, keep=True)
    z = vals[prob.pre[int(split[0, 0])]][:, int(split[0, 1])]
    for side, inside in ((0, z >= 0), (1, z <= 0)):
        assert bool(inside.any())
        for j, b in enumerate(kids):
            if b is None or j == 0 or vals[j] is None:
                continue
            v = vals[j][inside].reshape(int(inside.sum()), -1)
            tol = 1e-9 * (1 + v.abs())
            assert (v >= b[0][side] - tol).all() and (v <= b[1][side] + tol).all(), (side, j)
        row = -vals[g.output][inside][:, 0]  # C y - d with C = -1, d = -t = 0
        assert float(row.min()) >= float(values[side, 0]) - 1e-9
    # and the split tightened something after it: a later layer's width shrank in some child
    later = [j for j in prob.pre[1:]]
    widths = lambda b, k: sum(float((b[j][1][k] - b[j][0][k]).sum()) for j in later)  # noqa: E731
    assert min(widths(kids, 0), widths(kids, 1)) < widths(bounds, 0)


def _robustness(model, index: int, eps: float) -> Property:
    """L_inf robustness of mnist_lip_test.npz image ``index`` (the repo's MNIST test images 8000..),
    clipped to [0, 1]: one disjunct per other class."""
    d = np.load(ROOT / "models" / "mnist_lip_test.npz")
    x, y = d["x"][index].astype(np.float64), int(d["y"][index])
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    return Property(lo, hi, tuple(Disjunct((np.eye(10)[y] - np.eye(10)[j])[None], np.zeros(1))
                                  for j in range(10) if j != y))


def test_proves_a_deep_mlp_instance_and_the_proof_rechecks():
    """The repo's trained 4x256 MNIST MLP, image 2 at eps 0.02 (alpha-CROWN leaves it open): the search
    proves it with one tree for all nine disjuncts, and the re-check re-derives every leaf from the root."""
    model = load_model(ROOT / "models" / "mnist_mlp_4x256.onnx")
    prop = _robustness(model, 2, 0.02)
    q = Query.of_property(model.graph, prop, 0, model.runner)
    out = refine_split(q, Budget.of(120))
    assert out.status == "verified" and out.groups == [list(range(9))]
    tree = out.trees[0]
    assert tree.well_formed() and tree.meta["refine"] == RefineConfig().iterations and tree.n_leaves > 1
    rep = recheck(Query.of_property(model.graph, prop, 0, model.runner), tree)
    assert rep.ok and rep.direct == rep.leaves == tree.n_leaves


@pytest.mark.parametrize("seed", range(3))
def test_a_false_property_is_never_proven(seed, tmp_path):
    """20 inputs, 4 ReLU layers, a threshold below the exact maximum (the MILP's): never ``verified``."""
    pytest.importorskip("highspy")
    model = saved_model(tiny_relu_onnx(seed + 70, n_in=20, hidden=DEEP), tmp_path)
    lo, hi = -0.3 * np.ones(20), 0.3 * np.ones(20)
    top, spread = _extremes(model, lo, hi)
    bad = refine_split(_query(model, lo, hi, top - 0.02 * spread), Budget.of(3))
    assert bad.status in ("timeout", "unknown") and bad.trees is None


@pytest.mark.parametrize("scale", [1e15, 1e-12])
def test_huge_and_tiny_weights_never_prove_a_false_property(scale, tmp_path):
    """Weights scaled by 1e15 (float32 rounding far above the margins) or 1e-12 (everything cancels to
    the biases): a threshold the box's centre already reaches (its counterexample) is never proven."""
    model = saved_model(tiny_relu_onnx(73, n_in=8, hidden=DEEP, scale=scale), tmp_path)
    lo, hi = -0.5 * np.ones(8), 0.5 * np.ones(8)
    y0 = float(model.graph(np.zeros((1, 8)))[0, 0])
    out = refine_split(_query(model, lo, hi, y0 - 1e-6 * (1 + abs(y0))), Budget.of(5))
    assert out.status in ("timeout", "unknown") and out.trees is None


def test_forged_proof_not_rederived(tmp_path):
    """A tree that claims the root closes on a property that does not hold: the re-check bounds the root
    itself, searches under it for the time it is given, and reports the leaf failed."""
    pytest.importorskip("highspy")
    model = saved_model(tiny_relu_onnx(71, n_in=20, hidden=DEEP), tmp_path)
    lo, hi = -0.3 * np.ones(20), 0.3 * np.ones(20)
    top, spread = _extremes(model, lo, hi)
    forged = ProofTree("relu_split", np.array([[-1, -1]]), np.array([1.0]), LEAF_KINDS, {},
                       {"refine": 3, "root_iterations": 30})
    rep = recheck(_query(model, lo, hi, top - 0.02 * spread), forged, time_per_leaf=0.5)
    assert not rep.ok and rep.failed == 1


def test_applies_to_deep_fully_connected_relu_nets_only(tmp_path):
    assert refine_applies(saved_model(tiny_relu_onnx(1, n_in=4, hidden=(8, 8, 8)), tmp_path).graph)
    assert not refine_applies(saved_model(tiny_relu_onnx(1, n_in=4, hidden=(8, 8)), tmp_path).graph)
    assert not refine_applies(ALL_NETS["conv"](0))  # not measured on conv nets
    assert not refine_applies(saved_model(tiny_relu_onnx(1, n_in=4, hidden=(8, 8, 8), act="Sigmoid"), tmp_path).graph)


def test_portfolio_proof_in_a_certificate_checks(tmp_path, capsys, monkeypatch):
    """Through ``certkit certify --backend bab`` on the 4x256 MLP: beta-CROWN's search made to report at once
    that no domain closed, the refined search proves the property, the certificate carries its one tree for
    every disjunct, and ``certkit check`` re-derives it."""
    from certkit.verify import procedures, relu_split

    monkeypatch.setattr(procedures, "INPUT_SPLIT_PROBE", 0.0)
    monkeypatch.setattr(relu_split, "relu_split",
                        lambda q, b, *a, **k: relu_split.ReluSplitOutcome("unknown", hopeless=True))
    model = load_model(ROOT / "models" / "mnist_mlp_4x256.onnx")
    prop = _robustness(model, 2, 0.02)
    spec = tmp_path / "r.vnnlib"
    lines = [f"(declare-const X_{i} Real)" for i in range(784)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, (a, b) in enumerate(zip(prop.lower, prop.upper)):
        lines += [f"(assert (>= X_{i} {float(a)!r}))", f"(assert (<= X_{i} {float(b)!r}))"]
    y = int(np.argmax(prop.disjuncts[0].C[0]))
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{y}))" for j in range(10) if j != y) + "))")
    spec.write_text("\n".join(lines) + "\n")
    cert = tmp_path / "cert.json"
    assert main(["certify", str(ROOT / "models" / "mnist_mlp_4x256.onnx"), str(spec), "--backend", "bab",
                 "--timeout", "120", "--json", str(cert)]) == 0
    proof = json.loads(cert.read_text())["properties"][0]["proof"]
    if proof["method"] == "bounds":
        pytest.skip("the bound stage already decides this instance")
    assert proof["method"] == "relu_split" and len(proof["trees"]) == 1
    assert proof["trees"][0]["meta"]["refine"] == RefineConfig().iterations
    capsys.readouterr()
    assert main(["check", str(cert)]) == 0
    for forged in (10 ** 9, "x", -3, 2.5, float("inf"), float("nan")):  # a count the re-check would repeat: one line, exit 4, no traceback
        doc = json.loads(cert.read_text())
        doc["properties"][0]["proof"]["trees"][0]["meta"]["refine"] = forged
        bad = tmp_path / "forged.json"
        bad.write_text(json.dumps(doc))
        capsys.readouterr()
        assert main(["check", str(bad)]) == 4, forged
        err = capsys.readouterr().err
        assert "malformed certificate" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_beta_crown_gives_up_where_no_domain_closes(monkeypatch):
    """ReluSplitConfig.hopeless_after: a search none of whose domains closes (here: closing switched off)
    stops after that share of its time as ``unknown`` with ``hopeless`` set; one that closes domains is
    not stopped."""
    import certkit.verify.relu_split as rs

    model = load_model(ROOT / "models" / "mnist_mlp_4x256.onnx")
    prop = _robustness(model, 2, 0.02)
    ok = rs.relu_split(Query.of_property(model.graph, prop, 0, model.runner), Budget.of(60),
                       rs.ReluSplitConfig(hopeless_after=0.01))
    assert ok.status == "verified" and not ok.hopeless
    monkeypatch.setattr(rs, "closed", lambda v: torch.zeros_like(v, dtype=torch.bool))
    t0 = time.monotonic()
    out = rs.relu_split(Query.of_property(model.graph, prop, 0, model.runner), Budget.of(8),
                        rs.ReluSplitConfig(hopeless_after=0.25))
    assert out.status == "unknown" and out.hopeless and time.monotonic() - t0 < 6


#: architectures beyond the fully connected nets ``auto`` hands to the search (refine_split itself takes any
#: piecewise-linear net that ReLU splitting supports): conv, residual sums, max-pooling, concatenation,
#: permutations and slices, elementwise scales, an imported ONNX conv net
BEYOND_MLPS = ("conv", "residual", "max", "concat", "select", "scale", "mlp_relu_deep", "onnx_conv")


@pytest.mark.parametrize("name", BEYOND_MLPS)
def test_other_architectures_sound_and_rechecked(name):
    """On every architecture above (two seeds): a threshold below a sampled output (a counterexample in
    the box) is never proven; a proof of a threshold above the sampled maximum is re-derived by
    :func:`recheck`."""
    from certkit.verify.relu_domains import supports

    for seed in range(2):
        g = ALL_NETS[name](seed)
        assert supports(g), name
        n = g.size(0)
        lo, hi = np.zeros(n), np.ones(n)
        x = torch.as_tensor(np.random.default_rng(seed).uniform(lo, hi, (20_000, n)))
        with torch.no_grad():
            top = float(g.forward(x)[:, 0].max())
        c = np.zeros((1, g.n_outputs))
        c[0, 0] = -1.0

        def query(t):
            return Query.of_property(g, Property(lo, hi, (Disjunct(c, np.array([-t])),)), 0, None)

        bad = refine_split(query(top - 1e-3 * (1 + abs(top))), Budget.of(1.0))
        assert bad.status in ("timeout", "unknown") and bad.trees is None, (name, seed)
        good = refine_split(query(top + 0.05 * (1 + abs(top))), Budget.of(1.0))
        if good.status == "verified":
            rep = recheck(query(top + 0.05 * (1 + abs(top))), good.trees[0], time_per_leaf=1.0)
            assert rep.ok, (name, seed)
