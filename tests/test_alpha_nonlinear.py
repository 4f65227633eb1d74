"""alpha-CROWN beyond ReLU (issue 13): the tangent points of the convex or concave Exp, Log, Sqrt and
Reciprocal, the slopes of Clip, Abs and the paper activations, and the convex combinations of
McCormick's two planes per side for products of two variables. Every parameter value must give a sound relaxation (dense sampling, adversarial boxes,
parameters outside [0, 1]); the first iterate is DeepPoly's relaxation; gradients stay finite where
no line exists; alpha-CROWN on an attention block is sound and never looser than DeepPoly; the early
stop ends the optimisation at the first iterate that proves every row."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from certkit.bounds.alpha import alpha_lower
from certkit.bounds.deeppoly import deeppoly_lower
from certkit.bounds.fperror import input_set
from certkit.bounds.relax_bilinear import McCormick
from certkit.bounds.relax_elementwise import line_cap
from certkit.bounds.relaxations import ALPHA_PARAMS, RELAXATIONS
from certkit.graph import ops
from certkit.onnx.importer import import_model
from tests.helpers.onnx_builders import X, box_samples, graph_model, ort_run
from tests.test_elementwise_ops import ALLOW, _intervals, _samples
from tests.test_products import _boxes

D = torch.float64
TANGENT_OPS = [ops.Exp(), ops.Log(), ops.Sqrt(), ops.Reciprocal()]
IDS = [type(o).__name__ for o in TANGENT_OPS]


def _thetas(n: int, kind: str, seed: int = 4) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return torch.tensor(rng.uniform(0, 1, n))
    if kind == "wild":  # clamped into [0, 1]
        return torch.tensor(rng.normal(0, 5, n))
    return torch.full((n,), float(kind), dtype=D)


@pytest.mark.parametrize("op", TANGENT_OPS, ids=IDS)
@pytest.mark.parametrize("kind", ["random", "wild", "0", "1"])
@pytest.mark.parametrize("seed", [0, 1])
def test_tangent_lines_are_sound_for_every_parameter(op, kind, seed):
    l, u = _intervals(op, seed)
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    lines = RELAXATIONS[type(op)](op, lt, ut, _thetas(l.size, kind, seed)[None])
    _lines_hold(op, kind, l, u, lines)


def _lines_hold(op, kind: str, l: np.ndarray, u: np.ndarray, lines) -> None:
    """Dense sampling of the lines (lw, lb, uw, ub), each (1, n), on the boxes [l, u] (n,): no NaN, and
    ``f`` between them within the rounding allowance (an integer-valued input's op: at the integers only)."""
    lw, lb, uw, ub = lines
    assert not any(bool(torch.isnan(t).any()) for t in (lw, lb, uw, ub))
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    x = torch.tensor(_samples(l, u), dtype=D)
    defined = torch.ones_like(x, dtype=torch.bool)
    if getattr(op, "integer_input", False):  # its input takes integer values only: sample those
        x = torch.round(x)
        defined = (x >= lt) & (x <= ut)
    fx = op.forward(x)
    lo, hi = op.interval(lt, ut)
    allow = ALLOW * (line_cap(op, lt, ut) + torch.maximum(lo.abs(), hi.abs()))
    allow = torch.where(torch.isfinite(allow), allow, torch.zeros_like(allow))
    defined = defined & ~torch.isnan(fx)
    with np.errstate(all="ignore"):
        for side, v in (("lower", lw * x + lb - fx - allow), ("upper", fx - uw * x - ub - allow)):
            v = torch.nan_to_num(torch.where(defined, v, torch.zeros_like(v)), nan=0.0, neginf=0.0)
            if bool((v > 0).any()):
                r, c = np.unravel_index(int(torch.argmax(v)), v.shape)
                pytest.fail(f"{type(op).__name__} {kind}: {side} line violated on [{l[c]!r}, {u[c]!r}] "
                            f"at x={x[r, c].item()!r}")


@pytest.mark.parametrize("op", TANGENT_OPS, ids=IDS)
def test_the_first_iterate_is_deeppolys_relaxation(op):
    rng = np.random.default_rng(2)
    lo = 0.05 if not isinstance(op, ops.Exp) else -30.0
    l = rng.uniform(lo, 5.0, 400)
    u = l + np.exp(rng.uniform(np.log(1e-6), np.log(20.0), 400))
    lt, ut = torch.tensor(l)[None], torch.tensor(u)[None]
    base = RELAXATIONS[type(op)](op, lt, ut, None)
    mine = RELAXATIONS[type(op)](op, lt, ut, ALPHA_PARAMS[type(op)].start(op, lt, ut, base))
    for a, b in zip(mine, base):  # the same lines up to the rounding of the tangent point
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("op", TANGENT_OPS, ids=IDS)
def test_gradients_stay_finite_where_no_line_exists(op):
    """Boxes off the domain, across a pole, with infinite ends or overflowing: the lines there are
    DeepPoly's (infinite intercepts), and the parameters' gradient is finite everywhere (a NaN in an
    unselected branch would poison the whole optimisation)."""
    l, u = _intervals(op, 3)
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    theta = torch.full_like(lt, 0.3).requires_grad_(True)
    lw, lb, uw, ub = RELAXATIONS[type(op)](op, lt, ut, theta)
    total = sum(torch.where(torch.isfinite(t), t, torch.zeros_like(t)).sum() for t in (lw, lb, uw, ub))
    total.backward()
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_mccormick_planes_are_sound(seed):
    l1, u1, l2, u2 = (torch.tensor(t) for t in _boxes(300, seed))
    rel = McCormick((l1[None], u1[None]), (l2[None], u2[None]))
    rng = np.random.default_rng(seed)
    A = torch.tensor(rng.normal(0, 1, (1, 5, 300)))
    a = torch.tensor(rng.uniform(-0.5, 1.5, (1, 5, 300)))
    b = torch.tensor(rng.uniform(-0.5, 1.5, (1, 5, 300)))
    (A1, A2), c = rel.backsub_mixed(A, a, b)
    t1, t2 = rng.random((2, 200, 300))
    x1 = l1 + torch.tensor(t1) * (u1 - l1)
    x2 = l2 + torch.tensor(t2) * (u2 - l2)
    y = x1 * x2  # (200 points, 300 neurons)
    lhs = torch.einsum("sn,pn->sp", A[0], y)
    rhs = torch.einsum("sn,pn->sp", A1[0], x1) + torch.einsum("sn,pn->sp", A2[0], x2) + c[0][:, None]
    scale = torch.einsum("sn,pn->sp", A[0].abs(), (x1.abs() + 1) * (x2.abs() + 1))
    viol = rhs - lhs - 1e-12 * scale
    assert bool((viol <= 0).all()), float(viol.max())
    # McCormick's own choice is the mixture with weights pick
    (B1, B2), c0 = rel.backsub(A)
    (M1, M2), c1 = rel.backsub_mixed(A, rel.pick_lo[:, None, :], rel.pick_up[:, None, :])
    assert torch.allclose(B1, M1) and torch.allclose(B2, M2) and torch.allclose(c0, c1)


def _attention(seed: int = 0, tokens: int = 3, dim: int = 4, scale: float = 0.8):
    """x (1, tokens*dim) -> Q = x Wq, K = x Wk, V = x Wv; softmax(Q K^T) V -> Relu -> Dense (3 outputs)."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(0, scale, s).astype(np.float32)  # noqa: E731
    consts = {"shape": np.array([tokens, dim], np.int64), "Wq": w(dim, dim), "Wk": w(dim, dim), "Wv": w(dim, dim),
              "flat": np.array([1, tokens * dim], np.int64), "Wo": w(tokens * dim, 3)}
    nodes = [helper.make_node("Reshape", [X, "shape"], ["t"]),
             helper.make_node("MatMul", ["t", "Wq"], ["q"]), helper.make_node("MatMul", ["t", "Wk"], ["k"]),
             helper.make_node("MatMul", ["t", "Wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"]), helper.make_node("Relu", ["o"], ["r"]),
             helper.make_node("Reshape", ["r", "flat"], ["f"]), helper.make_node("MatMul", ["f", "Wo"], ["Y"])]
    return graph_model(nodes, (1, tokens * dim), consts=consts)


def _alpha_sound_and_not_looser(m, n_in: int, radius: float, kinds: set, seed: int, gains: bool) -> None:
    """alpha-CROWN on model ``m`` over a random box: never looser than DeepPoly, below onnxruntime's
    outputs at samples, with parameters of every op class in ``kinds``; strictly tighter somewhere
    when ``gains``."""
    g = import_model(m)
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, n_in)
    lo, hi = c - radius, c + radius
    S = input_set(g, lo[None], hi[None])
    C = torch.tensor(rng.normal(size=(5, 3)))
    dp = deeppoly_lower(g, S, C, intersect=True)
    report: dict = {}
    low = alpha_lower(g, S, C, report=report)
    assert bool((low >= dp - 1e-9).all())
    assert kinds <= {type(g.nodes[k[1]].op) for k in report["state"].alpha if k != "shared"}
    y = ort_run(m, box_samples(lo, hi, 3000, seed)).astype(np.float64) @ C.numpy().T
    assert bool((low[0].numpy() <= y.min(axis=0) + 1e-6).all())
    assert not gains or bool((low > dp + 1e-6).any())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_on_attention_is_sound_and_not_looser_than_deeppoly(seed):
    """The products' planes and the softmax's tangents optimised, and it gains somewhere."""
    _alpha_sound_and_not_looser(_attention(seed), 12, 0.3, {ops.Product, ops.Exp, ops.Relu}, seed, True)


@pytest.mark.parametrize("scale,radius", [(30.0, 0.02), (30.0, 0.3), (1e-4, 0.3)])
def test_alpha_on_attention_with_huge_and_tiny_weights(scale, radius):
    """Scores of hundreds (saturated softmax, exp near its float32 range) and products of tiny factors:
    still below every onnxruntime output sampled, never looser than DeepPoly."""
    _alpha_sound_and_not_looser(_attention(3, scale=scale), 12, radius, {ops.Product}, 3, False)


def test_mixed_planes_of_unbounded_factors_give_no_bound_never_nan():
    """As McCormick's own planes (test_products): a row reaching a factor with an infinite or NaN bound
    gets the constant -inf, whatever the weights; a row reaching only bounded ones stays finite."""
    inf, nan = float("inf"), float("nan")
    t = lambda a: torch.as_tensor(a, dtype=D)[None]  # noqa: E731
    rel = McCormick((t([-inf, 1.0, nan, -1.0]), t([1.0, inf, 1.0, 1.0])), (t([0.0, 0.0, 0.0, 1.0]), t([0.0, 2.0, 1.0, 2.0])))
    A = torch.zeros(1, 2, 4, dtype=D)
    A[0, 0, 3], A[0, 1, :3] = 1.0, torch.tensor([-1.0, 2.0, 1.0], dtype=D)
    for w in (0.0, 0.37, 1.0):
        a = torch.full((1, 2, 4), w, dtype=D)
        (A1, A2), c = rel.backsub_mixed(A, a, 1 - a)
        assert torch.isfinite(c[0, 0]) and c[0, 1] == -inf
        assert not torch.isnan(A1).any() and not torch.isnan(A2).any()


def test_alpha_stops_at_the_first_iterate_that_is_enough():
    g = import_model(_attention(0))
    S = input_set(g, np.full((1, 12), -0.2), np.full((1, 12), 0.2))
    C = torch.eye(3, dtype=D)
    for enough, steps in ((lambda low: True, 1), (lambda low: False, 20), (None, 20)):
        report: dict = {}
        alpha_lower(g, S, C, iterations=20, report=report, enough=enough)
        assert report["iterations"] == steps


def test_the_memory_estimate_counts_the_new_parameters():
    from certkit.bounds.alpha import alpha_bytes
    from certkit.bounds.forward import start_bounds

    g = import_model(_attention(0))
    S = input_set(g, np.full((1, 12), -0.2), np.full((1, 12), 0.2))
    ibp = start_bounds(g, S, None, {})
    assert alpha_bytes(g, ibp, 3, 1, False) > alpha_bytes(g, ibp, 3, 1, True) > 0


PWL = [ops.Clip(np.full(6, -0.5), np.full(6, 0.7)), ops.Abs(), ops.NActivation(np.full(6, -0.4), np.full(6, 0.6)),
       ops.CappedLeakyRelu(0.1, 0.5), ops.LeakyRelu(2.0), ops.LeakyRelu(-0.3)]


@pytest.mark.parametrize("op", PWL, ids=[f"{type(o).__name__}{k}" for k, o in enumerate(PWL)])
def test_piecewise_linear_first_iterate_is_deeppoly(op):
    """Every registered parameter starts where DeepPoly's lines are, for the piecewise-linear ops too
    (Clip's one parameter is the lower slope at its lower kink and the upper slope at its upper one)."""
    rng = np.random.default_rng(1)
    l = torch.tensor(rng.uniform(-2, 2, (1, 6)))
    u = l + torch.tensor(rng.uniform(0, 3, (1, 6)))
    base = RELAXATIONS[type(op)](op, l, u, None)
    mine = RELAXATIONS[type(op)](op, l, u, ALPHA_PARAMS[type(op)].start(op, l, u, base))
    for a, b in zip(mine, base):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    lo, hi = ALPHA_PARAMS[type(op)].bounds(op)
    assert lo < hi


def _pwl_net(seed: int):
    """x (1, 4) -> Dense 6 -> Clip -> Dense 6 -> Abs -> Dense 6 -> LeakyRelu(-0.3) -> Dense 3."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(0, 0.9, s).astype(np.float32)  # noqa: E731
    consts = {"W1": w(4, 6), "W2": w(6, 6), "W3": w(6, 6), "W4": w(6, 3), "lo": np.float32(-0.5), "hi": np.float32(0.7)}
    nodes = [helper.make_node("MatMul", [X, "W1"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
             helper.make_node("MatMul", ["b", "W2"], ["c"]), helper.make_node("Abs", ["c"], ["d"]),
             helper.make_node("MatMul", ["d", "W3"], ["e"]), helper.make_node("LeakyRelu", ["e"], ["f"], alpha=-0.3),
             helper.make_node("MatMul", ["f", "W4"], ["Y"])]
    return graph_model(nodes, (1, 4), consts=consts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_on_piecewise_linear_ops_is_sound_and_not_looser(seed):
    _alpha_sound_and_not_looser(_pwl_net(seed), 4, 0.8, {ops.Clip, ops.Abs, ops.LeakyRelu}, seed, False)


#: the ops relaxed by :func:`~certkit.bounds.relax_elementwise.best_lines` whose slopes alpha-CROWN moves
#: (:func:`~certkit.bounds.relax_elementwise.moved_lines`): S-shaped, periodic, powers and steps
MOVED_OPS = [ops.Erf(), ops.Sin(), ops.Cos(), ops.Pow(3.0), ops.Pow(2.0), ops.Pow(0.5), ops.Pow(-2.0), ops.Sign(),
             ops.Sign(integer_input=True), ops.Floor()]
MOVED_IDS = ["erf", "sin", "cos", "pow3", "pow2", "pow0.5", "pow-2", "sign", "sign_int", "floor"]


def _moves(n: int, kind: str, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return torch.tensor(rng.uniform(-1, 1, n))
    if kind == "wild":  # clamped into [-1, 1]
        return torch.tensor(rng.normal(0, 5, n))
    return torch.full((n,), float(kind), dtype=D)


@pytest.mark.parametrize("op", MOVED_OPS, ids=MOVED_IDS)
@pytest.mark.parametrize("kind", ["random", "wild", "-1", "0", "1"])
@pytest.mark.parametrize("seed", [0, 1])
def test_moved_lines_are_sound_for_every_parameter(op, kind, seed):
    """Both lines of every neuron, for parameters anywhere (clamped), on the adversarial boxes of the
    elementwise tests (tiny, degenerate, far out, infinite ends, integers), by dense sampling; every
    slope within ``line_cap`` (the floating-point rule's assumption)."""
    l, u = _intervals(op, seed)
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    lines = RELAXATIONS[type(op)](op, lt[:, None], ut[:, None], _moves(l.size, kind, seed)[None, None])
    lines = tuple(t[:, 0] for t in lines)
    mag = torch.maximum(lt.abs(), ut.abs())
    for k in (lines[0], lines[2]):
        assert bool(((k.abs() * mag <= line_cap(op, lt, ut) * (1 + 1e-12)) | (k == 0)).all())
    _lines_hold(op, kind, l, u, lines)


@pytest.mark.parametrize("op", MOVED_OPS, ids=MOVED_IDS)
def test_moved_lines_start_at_deeppolys(op):
    """The first iterate (parameter 0) is DeepPoly's relaxation, on the adversarial boxes too; the two
    call paths (the relaxation with a parameter, and ``from_base`` on DeepPoly's lines) agree."""
    l, u = _intervals(op, 5)
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    base = RELAXATIONS[type(op)](op, lt, ut, None)
    param = ALPHA_PARAMS[type(op)]
    a = param.start(op, lt, ut, base)[:, None].expand(1, 2, -1)
    for mine in (RELAXATIONS[type(op)](op, lt[:, None], ut[:, None], a), param.from_base(op, lt, ut, base, a)):
        for x, y in zip(mine, base):
            assert torch.equal(x[:, 0], y) and torch.equal(x[:, 1], y)


@pytest.mark.parametrize("op", MOVED_OPS, ids=MOVED_IDS)
def test_moved_lines_keep_gradients_finite(op):
    l, u = _intervals(op, 3)
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    for w in (0.3, -0.7):
        a = torch.full((1, 1, l.size), w, dtype=D).requires_grad_(True)
        lines = RELAXATIONS[type(op)](op, lt[:, None], ut[:, None], a)
        total = sum(torch.where(torch.isfinite(t), t, torch.zeros_like(t)).sum() for t in lines)
        total.backward()
        assert a.grad is not None and bool(torch.isfinite(a.grad).all())


def _smooth_net(seed: int):
    """x (1, 4) -> Dense 6 -> Erf -> Dense 6 -> Sin -> Dense 6 -> Pow 3 -> Dense 6 -> Sign -> Dense 3."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(0, 0.9, s).astype(np.float32)  # noqa: E731
    consts = {"W1": w(4, 6), "W2": w(6, 6), "W3": w(6, 6), "W4": w(6, 6), "W5": w(6, 3), "p": np.float32(3.0)}
    nodes = [helper.make_node("MatMul", [X, "W1"], ["a"]), helper.make_node("Erf", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "W2"], ["c"]), helper.make_node("Sin", ["c"], ["d"]),
             helper.make_node("MatMul", ["d", "W3"], ["e"]), helper.make_node("Pow", ["e", "p"], ["f"]),
             helper.make_node("MatMul", ["f", "W4"], ["g"]), helper.make_node("Sign", ["g"], ["h"]),
             helper.make_node("MatMul", ["h", "W5"], ["Y"])]
    return graph_model(nodes, (1, 4), consts=consts)


@pytest.mark.parametrize("seed,gains", [(0, False), (1, True), (2, True), (3, False), (5, True)])
def test_alpha_on_s_shaped_periodic_and_step_ops_is_sound_and_not_looser(seed, gains):
    """Erf, Sin, Pow and Sign with moving slopes: below onnxruntime's outputs, never looser than DeepPoly,
    tighter on three of the five nets (on the other two the Signs are constant on the box where it matters).
    A Sign constant on its box has flat DeepPoly lines that alpha can tilt: a back-substitution that skipped
    those "dead" columns had dropped the tilted lines' slopes and kept their offsets (bounds 10 above the
    true minimum before ``AlphaParam.revives``)."""
    _alpha_sound_and_not_looser(_smooth_net(seed), 4, 0.3, {ops.Erf, ops.Sin, ops.Pow, ops.Sign}, seed, gains)


def test_alpha_keeps_every_column_of_a_step_that_its_slopes_can_tilt():
    """One Sign layer constant on the box (every DeepPoly line flat): alpha's bound stays below the
    constant output."""
    rng = np.random.default_rng(0)
    w = lambda *s: rng.normal(0, 0.9, s).astype(np.float32)  # noqa: E731
    consts = {"W1": w(4, 6), "W2": w(6, 3)}
    nodes = [helper.make_node("MatMul", [X, "W1"], ["a"]), helper.make_node("Sign", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "W2"], ["Y"])]
    _alpha_sound_and_not_looser(graph_model(nodes, (1, 4), consts=consts), 4, 0.05, {ops.Sign}, 0, False)


#: a 4-12-2 sigmoid net with a first layer of weights up to 170 (the fuzzer's bounds mode, seed 52 case 239,
#: rounded): several units cross 0 with one end beyond 37, where s' rounds to 0 and DeepPoly's lines are flat
_SIG_W0 = [[-25.7, 45.4, 9.3, 37.5], [-15.0, 42.0, -41.6, -11.6], [76.8, -55.4, 6.8, 99.5], [-61.6, -27.1, -23.6, 167.3],
           [-61.1, 149.0, -63.4, -19.5], [2.7, 84.4, 97.5, -90.0], [17.0, 50.7, -30.0, 128.5], [35.4, -40.3, -5.3, -88.3],
           [-50.6, -53.0, -20.5, -26.9], [-133.4, -66.2, -39.7, -54.1], [-42.7, -148.2, 18.5, 90.1], [23.2, 52.9, 29.1, 8.7]]
_SIG_B0 = [0.0, 0.3, 0.3, -0.4, 0.8, 0.5, 0.9, 0.3, -0.8, 0.2, -0.9, -0.7]
_SIG_W1 = [[-0.7, -0.2, 0.7, 0.2, -0.6, -0.8, 0.7, -0.6, -0.9, 0.3, 0.3, 0.5],
           [0.2, -0.3, -0.3, 0.7, 0.2, 0.6, -0.2, -0.7, -0.1, -0.5, -0.9, -0.6]]
_SIG_BOX = ([-0.236, 1.033, -1.135, -0.212], [0.833, 2.315, -0.743, 0.203])


def test_alpha_keeps_the_columns_its_tangents_revive():
    """A sigmoid unit whose DeepPoly lines are flat (across 0, ``s'`` rounding to 0 at one end) gets a sloped
    tangent under alpha-CROWN; the back-substitution must not skip it as a dead column (it kept the tangent's
    intercept and dropped its slope: an upper bound 0.5625 on Y_1 where onnxruntime reaches 0.5911).
    ``AlphaParam.revives`` is True unless an op is shown not to revive (ReLU-like units)."""
    m = graph_model([helper.make_node("Gemm", [X, "W0", "b0"], ["z"], transB=1), helper.make_node("Sigmoid", ["z"], ["s"]),
                     helper.make_node("Gemm", ["s", "W1"], ["Y"], transB=1)], (1, 4),
                    consts={"W0": np.array(_SIG_W0), "b0": np.array(_SIG_B0), "W1": np.array(_SIG_W1)})
    graph = import_model(m)
    lo, hi = (np.array(b, np.float32) for b in _SIG_BOX)
    x = box_samples(lo, hi, 30_000)
    y = ort_run(m, x).astype(np.float64)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=D)
    low = alpha_lower(graph, input_set(graph, lo, hi), rows, iterations=20)[0].numpy()
    assert (y.min(axis=0) >= low[:2] - 1e-6).all() and (y.max(axis=0) <= -low[2:] + 1e-6).all()
    assert all(ALPHA_PARAMS[c].revives for c in (ops.Sigmoid, ops.Tanh, ops.Abs, ops.Clip))
    assert not ALPHA_PARAMS[ops.Relu].revives
