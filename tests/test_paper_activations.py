"""The activations of papers 000 and 004 as IR ops (DESIGN.md section 5).

* ONNX import: the patterns written by ``certkit.nn.export_onnx`` and by hand (onnx.helper,
  both operand orders, per-channel constants, Split/Slice/Reshape variants of MaxMin) become
  one IR op each, and the imported graph matches onnxruntime; near-misses stay generic and
  still match.
* Soundness in every backend by sampling and attacks: interval, DeepPoly (both modes), alpha
  slopes, alpha-CROWN, the MaxMin pair relaxation alone, and the MILP (by lowering to
  primitive ops; its exact minimum lies between the DeepPoly bound and every sampled value).
  The elementwise relaxations are also in the dense-sampling suite tests/test_relaxations.py.
* ``certkit ops`` lists the new ops for every backend.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from certkit.bounds.alpha import alpha_lower
from certkit.bounds.deeppoly import BoundState, deeppoly_lower, deeppoly_output_bounds
from certkit.bounds.relaxations import RELAXATIONS
from certkit.cli import main as cli_main
from certkit.graph import ops
from certkit.graph.lower import lower_paper_ops
from certkit.nn import CappedLeakyReLU, MaxMin, NActivation, export_onnx
from certkit.onnx.importer import import_model, load_onnx
from certkit.spec.sets import InputSet
from certkit.verify.milp import milp_minimize
from tests.helpers.onnx_builders import X, assert_matches_ort, graph_model
from tests.helpers.random_nets import Builder
from tests.test_bounds_soundness import run_config

D = torch.float64


def kinds(g) -> list[str]:
    return [n.op.kind for n in g.nodes]


# --------------------------------------------------------------------------- random IR nets


def paper_net(act: str, seed: int, sizes=(5, 10, 8, 3)):
    """Dense -> act -> Dense -> act -> Dense with the given paper activation."""
    rng = np.random.default_rng(seed)
    b = Builder((1, sizes[0]), rng)
    x = 0
    for n in sizes[1:-1]:
        x = b.dense(x, n)
        if act == "n":
            t1 = rng.normal(-0.3, 0.5, n)
            op = ops.NActivation(t1, t1 + rng.uniform(0.0, 1.2, n))
        elif act == "capped":
            op = ops.CappedLeakyRelu(float(rng.uniform(0, 0.5)), float(rng.uniform(0.3, 1.5)))
        else:  # max_min, with a random pairing and output permutation
            p = rng.permutation(n)
            op = ops.MaxMin(p[: n // 2].astype(np.int64), p[n // 2: 2 * (n // 2)].astype(np.int64),
                            rng.permutation(2 * (n // 2)).astype(np.int64))
        x = b.add(op, x, (1, op.a.size * 2) if act == "max_min" else (1, n))
    b.dense(x, sizes[-1])
    return b.graph()


ACTS = ("n", "capped", "max_min")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("kind", ["box", "linf", "box_small"])
def test_no_point_escapes_the_bounds(act, kind):
    """interval, DeepPoly (both modes) and random alpha slopes: 4 * 10^4 samples + PGD."""
    res = run_config(f"paper_{act}", paper_net(act, 3), kind, 0, n_points=40_000, steps=20, restarts=2)
    assert res.ok, "\n".join(res.violations[:5])


@pytest.mark.parametrize("act", ACTS)
def test_alpha_crown_and_milp_sound(act):
    g = paper_net(act, 5, sizes=(4, 6, 6, 3))
    rng = np.random.default_rng(0)
    lo = rng.uniform(-1, 0, 4)
    hi = lo + rng.uniform(0.2, 1.5, 4)
    s = InputSet.box(lo, hi)
    c = np.array([1.0, -1.0, 0.5])
    x = lo + (hi - lo) * rng.random((200_000, 4))
    x = np.concatenate([x, lo + (hi - lo) * rng.integers(0, 2, (4096, 4))])  # vertices
    sampled = float((g(x) @ c).min())
    dp = float(deeppoly_lower(g, s, torch.tensor(c[None], dtype=D))[0, 0])
    al = float(alpha_lower(g, s, torch.tensor(c[None], dtype=D), iterations=5)[0, 0])
    mi = milp_minimize(g, (lo, hi), c, time_limit=60)
    assert dp <= sampled + 1e-9 and al <= sampled + 1e-9
    assert mi.bound <= sampled + 1e-7
    assert mi.bound >= dp - 1e-6  # exact minimum (up to the solver tolerance) >= any sound bound
    assert mi.x is not None
    found = float(g(mi.x[None])[0] @ c)  # the MILP minimiser, re-evaluated on the native ops
    assert mi.bound <= found + 1e-7 and found <= sampled + 1e-6


def test_max_min_pair_relaxation_by_sampling():
    """The pair relaxation alone: A y >= A_in x + const for random A and x in random boxes."""
    rng = np.random.default_rng(1)
    n, m, batch = 12, 5, 64
    p = rng.permutation(n)
    op = ops.MaxMin(p[:m].astype(np.int64), p[m:2 * m].astype(np.int64), rng.permutation(2 * m).astype(np.int64))
    c = rng.normal(0, 1, (batch, n))
    w = np.abs(rng.normal(0, 1, (batch, n))) * (rng.random((batch, n)) < 0.9)
    w[:4] = 0.0  # degenerate boxes
    l, u = torch.tensor(c - w, dtype=D), torch.tensor(c + w, dtype=D)
    r = RELAXATIONS[ops.MaxMin](op, l, u)
    A = torch.tensor(rng.normal(0, 1, (batch, 7, 2 * m)), dtype=D)
    (A_in,), const = r.backsub(A)
    t = torch.rand(3000, batch, n, dtype=D)
    t[:64] = torch.randint(0, 2, (64, batch, n)).to(D)  # vertices
    x = l + t * (u - l)
    y = op.forward(x.reshape(-1, n)).reshape(3000, batch, 2 * m)
    lhs = torch.einsum("bsn,kbn->kbs", A, y)
    rhs = torch.einsum("bsn,kbn->kbs", A_in, x) + const
    assert (lhs >= rhs - 1e-10 * (1 + lhs.abs())).all()
    # exact on degenerate boxes
    assert torch.allclose(lhs[0, :4], rhs[0, :4], atol=1e-10)


def test_interval_rules_contain_samples():
    rng = np.random.default_rng(2)
    n = 10
    t1 = rng.normal(0, 1, n)
    cases = [ops.NActivation(t1, t1 + rng.uniform(0, 2, n)), ops.CappedLeakyRelu(0.2, 0.7),
             ops.MaxMin(np.arange(5), np.arange(5, 10))]
    for op in cases:
        c = rng.normal(0, 2, (50, n))
        w = np.abs(rng.normal(0, 1.5, (50, n)))
        l, u = torch.tensor(c - w, dtype=D), torch.tensor(c + w, dtype=D)
        lo, hi = op.interval(l, u)
        x = l + torch.rand(2000, 50, n, dtype=D) * (u - l)
        y = op.forward(x.reshape(-1, n)).reshape(2000, 50, -1)
        assert (y >= lo - 1e-12).all() and (y <= hi + 1e-12).all(), op.kind


@pytest.mark.parametrize("act", ACTS)
def test_lowering_is_the_same_function(act):
    g = paper_net(act, 7)
    low = lower_paper_ops(g)
    assert not any(k in kinds(low) for k in ("n_activation", "capped_leaky_relu", "max_min"))
    x = np.random.default_rng(0).normal(0, 2, (500, g.n_inputs))
    assert np.allclose(low(x), g(x), atol=1e-12)


# --------------------------------------------------------------------------- ONNX import


def _export(model: nn.Module, tmp_path, shape):
    torch.manual_seed(0)
    path = export_onnx(model, tmp_path / "m.onnx", shape)
    return path, load_onnx(path)


def test_import_of_certkit_nn_export(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), NActivation(8), nn.Linear(8, 8), CappedLeakyReLU(0.1, 0.5),
                          nn.Linear(8, 8), MaxMin(), nn.Linear(8, 3))
    path, g = _export(model, tmp_path, (1, 6))
    assert kinds(g) == ["input", "dense", "n_activation", "dense", "capped_leaky_relu", "dense", "max_min", "dense"]
    assert_matches_ort(onnx.load(str(path)), n=16, lo=-3.0, hi=3.0)


def test_import_of_conv_export_per_channel(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), NActivation(4), nn.Conv2d(4, 4, 3), MaxMin(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    path, g = _export(model, tmp_path, (1, 2, 6, 6))
    assert "n_activation" in kinds(g) and "max_min" in kinds(g)
    assert_matches_ort(onnx.load(str(path)), n=8, lo=-2.0, hi=2.0)


def _n_model(t1, t2, shape, swap=False, two=2.0):
    mul = helper.make_node("Mul", ["two", "mx"] if swap else ["mx", "two"], ["m2"])
    nodes = [helper.make_node("Min", [X, "t2"], ["mn"]), helper.make_node("Max", ["mn", "t1"], ["mx"]), mul,
             helper.make_node("Sub", [X, "m2"], ["Y"])]
    return graph_model(nodes, shape, consts={"t1": t1, "t2": t2, "two": np.float32(two)})


@pytest.mark.parametrize("swap", [False, True])
def test_hand_built_n_activation(swap):
    t1 = np.array([[-0.5], [0.0], [0.2]], np.float32)[None]  # per channel (1, 3, 1)
    m = _n_model(t1, t1 + np.float32(0.6), (1, 3, 4), swap)
    g = import_model(m)
    assert kinds(g) == ["input", "n_activation"]
    assert_matches_ort(m, n=16, lo=-2.0, hi=2.0)


def test_hand_built_n_activation_with_scalar_clip():
    nodes = [helper.make_node("Clip", [X, "lo", "hi"], ["c"]), helper.make_node("Mul", ["c", "two"], ["m2"]),
             helper.make_node("Sub", [X, "m2"], ["Y"])]
    m = graph_model(nodes, (1, 5), consts={"lo": np.float32(-0.25), "hi": np.float32(0.5), "two": np.float32(2)})
    g = import_model(m)
    assert kinds(g) == ["input", "n_activation"]
    assert_matches_ort(m, n=16, lo=-2.0, hi=2.0)


def test_near_miss_stays_generic_and_correct():
    t1 = np.full((1, 4), -0.3, np.float32)
    m = _n_model(t1, t1 + np.float32(1.0), (1, 4), two=3.0)  # x - 3 clip(x): not the N-activation
    g = import_model(m)
    assert "n_activation" not in kinds(g)
    assert_matches_ort(m, n=16, lo=-2.0, hi=2.0)


def test_hand_built_capped_leaky_relu():
    nodes = [helper.make_node("Mul", ["alpha", X], ["ax"]),
             helper.make_node("Clip", [X, "nb", "b"], ["c"]),
             helper.make_node("Mul", ["c", "gamma"], ["gc"]),
             helper.make_node("Add", ["ax", "gc"], ["Y"])]
    m = graph_model(nodes, (1, 5), consts={"alpha": np.float32(0.3), "gamma": np.float32(0.7),
                                           "nb": np.float32(-0.8), "b": np.float32(0.8)})
    g = import_model(m)
    assert kinds(g) == ["input", "capped_leaky_relu"]
    assert g.nodes[1].op.gain == float(np.float32(0.7))  # exact float32 coefficients kept
    assert_matches_ort(m, n=16, lo=-3.0, hi=3.0)


def test_hand_built_max_min_split():
    nodes = [helper.make_node("Split", [X, "sp"], ["a", "b"], axis=1),
             helper.make_node("Max", ["a", "b"], ["mx"]), helper.make_node("Min", ["a", "b"], ["mn"]),
             helper.make_node("Concat", ["mn", "mx"], ["Y"], axis=1)]  # min first: a permutation
    m = graph_model(nodes, (1, 6), consts={"sp": np.array([3, 3])})
    g = import_model(m)
    assert kinds(g) == ["input", "max_min"]
    assert_matches_ort(m, n=16)


def test_hand_built_max_min_adjacent_pairs():
    """GroupSort(2) on adjacent pairs: Reshape (1, 3, 2), Split on the last axis, Max/Min,
    Concat on the last axis, Reshape back: output (max_0, min_0, max_1, min_1, ...)."""
    nodes = [helper.make_node("Reshape", [X, "s3"], ["r"]),
             helper.make_node("Split", ["r", "sp"], ["a", "b"], axis=2),
             helper.make_node("Max", ["a", "b"], ["mx"]), helper.make_node("Min", ["a", "b"], ["mn"]),
             helper.make_node("Concat", ["mx", "mn"], ["c"], axis=2),
             helper.make_node("Reshape", ["c", "s2"], ["Y"])]
    m = graph_model(nodes, (1, 6), consts={"s3": np.array([1, 3, 2]), "s2": np.array([1, 6]),
                                           "sp": np.array([1, 1])})
    g = import_model(m)
    assert kinds(g) == ["input", "max_min"]
    assert_matches_ort(m, n=16)


def test_certkit_ops_lists_them(capsys):
    assert cli_main(["ops"]) == 0
    out = capsys.readouterr().out
    for kind in ("n_activation", "capped_leaky_relu", "max_min"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(kind))
        assert " no" not in line, line


def test_bound_state_tightens_max_min_inputs():
    """DeepPoly refines the pre-activation bounds of MaxMin (never looser than IBP)."""
    g = paper_net("max_min", 9)
    rng = np.random.default_rng(0)
    s = InputSet.box(rng.uniform(-1, 0, 5), rng.uniform(0, 1, 5))
    st = BoundState(g, s, intersect=True)
    st.lower_of(g.output, torch.eye(3, dtype=D)[None])
    j = next(n.inputs[0] for n in g.nodes if n.op.kind == "max_min")
    assert j in st.refined


def test_max_min_uses_bounds_of_the_difference():
    """a = x + 0.1 and b = x over x in [-1, 1]: the boxes of a and b overlap, but a - b = 0.1 decides every
    pair, so max = a and min = b exactly (issue 13: the MaxMin relaxation with real bounds of a - b). From
    the boxes alone, max - min was bounded by [0.1, 2.0]; with the difference's own bounds, [0.1, 0.1].
    Random nets stay sound by sampling (test_no_point_escapes_the_bounds, test_alpha_crown_and_milp_sound)."""
    b = Builder((1, 2), np.random.default_rng(0))
    x = b.add(ops.Dense(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0.1, 0.0])), 0, (1, 2))
    m = b.add(ops.MaxMin(np.array([0]), np.array([1]), np.array([0, 1])), x, (1, 2))
    b.add(ops.Dense(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]), np.zeros(3)), m, (1, 3))
    g = b.graph()
    s = InputSet.box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    low = deeppoly_lower(g, s, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=D))[0]
    # max - min = 0.1 exactly, up to the float32 model's rounding charges (from the boxes: in [0.1, 2])
    assert abs(float(low[0]) - 0.1) < 1e-5 and abs(float(low[1]) + 0.1) < 1e-5
    lo, hi = deeppoly_output_bounds(g, s, True)
    assert abs(float(lo[0, 0]) + 0.9) < 1e-5 and abs(float(hi[0, 0]) - 1.1) < 1e-5  # max = x + 0.1
