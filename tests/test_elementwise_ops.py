"""The unary elementwise ops of certkit.graph.elementwise (Exp, Log, Reciprocal, Sqrt, Pow, Sin, Cos,
Erf, Sign, Floor): import against onnxruntime, relaxation and interval soundness by dense sampling,
the floating-point error rule against onnxruntime's float32 error, end-to-end bounds that contain
10^4 onnxruntime samples, overflow and domain errors giving infinite bounds (never NaN), and the
backends that refuse them.

Relaxation tolerance: certkit charges its own float64 rounding of a relaxation line as
``2 gamma_L(2^-53) * 4 (|k| |x| + |f|)`` (fperror_elementwise, L >= 17), which is what the
sampling test allows (``ALLOW`` with L = 17, the smallest L of any graph).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from certkit.bounds.backends import BACKENDS
from certkit.bounds.fperror import FLOAT32, node_error
from certkit.bounds.relax_elementwise import line_cap
from certkit.bounds.relaxations import RELAXATIONS
from certkit.errors import BackendError, CertkitError
from certkit.graph import ops
from certkit.graph.elementwise import Unary
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from certkit.tolerances import U64, gamma
from tests.helpers.onnx_builders import X, graph_model, ort_run, single

D = torch.float64
INF = math.inf
ALLOW = 2.0 * gamma(17, U64) * 4.0

#: (id, op, ONNX op type, extra constant inputs, sample range for the single-node test)
CASES = [
    ("exp", ops.Exp(), "Exp", (), (-20.0, 20.0)),
    ("log", ops.Log(), "Log", (), (1e-3, 50.0)),
    ("reciprocal", ops.Reciprocal(), "Reciprocal", (), (0.05, 9.0)),
    ("sqrt", ops.Sqrt(), "Sqrt", (), (0.0, 50.0)),
    ("pow2", ops.Pow(2.0), "Pow", (np.float32(2.0),), (-10.0, 10.0)),
    ("pow3", ops.Pow(3.0), "Pow", (np.float32(3.0),), (-10.0, 10.0)),
    ("pow4", ops.Pow(4.0), "Pow", (np.float32(4.0),), (-5.0, 5.0)),
    ("pow0.5", ops.Pow(0.5), "Pow", (np.float32(0.5),), (0.0, 10.0)),
    ("pow1.5", ops.Pow(1.5), "Pow", (np.float32(1.5),), (0.0, 10.0)),
    ("pow-2", ops.Pow(-2.0), "Pow", (np.float32(-2.0),), (0.1, 10.0)),
    ("pow-0.5", ops.Pow(-0.5), "Pow", (np.float32(-0.5),), (0.1, 10.0)),
    ("pow3int", ops.Pow(3.0), "Pow", (np.int64(3),), (-3.0, 3.0)),
    ("sin", ops.Sin(), "Sin", (), (-30.0, 30.0)),
    ("cos", ops.Cos(), "Cos", (), (-30.0, 30.0)),
    ("erf", ops.Erf(), "Erf", (), (-4.0, 4.0)),
    ("sign", ops.Sign(), "Sign", (), (-3.0, 3.0)),
    ("floor", ops.Floor(), "Floor", (), (-5.0, 5.0)),
]
IDS = [c[0] for c in CASES]


def _model(op_type: str, consts, shape=(1, 7)) -> onnx.ModelProto:
    return single(op_type, shape, X, *consts)


def test_every_elementwise_op_is_covered():
    ours = {c for c in ops.OPS.values() if issubclass(c, Unary)}
    covered = {type(c[1]) for c in CASES}
    assert ours <= covered, ours - covered
    assert {c for c in RELAXATIONS if issubclass(c, Unary)} <= covered


# --------------------------------------------------------------------------- import vs onnxruntime


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_single_node_matches_onnxruntime(case):
    name, op, op_type, consts, (lo, hi) = case
    model = _model(op_type, consts)
    g = import_model(model)
    assert any(type(n.op) is type(op) for n in g.nodes)
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, (64, 1, 7)).astype(np.float32)
    if op_type in ("Sign", "Floor", "Sqrt", "Pow") and lo <= 0 <= hi:
        x[0, 0, :3] = [0.0, -0.0, 0.0]
    if op_type == "Floor":
        x[1, 0, :4] = [1.0, -1.0, 2.5, -2.5]
    ref = ort_run(model, x)
    ours = g(x.reshape(64, -1))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * (1 + np.abs(ref).max()))


def test_special_values_match_onnxruntime():
    """Off the domain certkit's forward is onnxruntime's: NaN below 0 for Log/Sqrt, +-inf at +-0."""
    x = np.array([[[-1.0, -0.0, 0.0, 1e-40, 100.0, -100.0, 1e30]]], np.float32)
    for op_type, consts in (("Log", ()), ("Sqrt", ()), ("Reciprocal", ()), ("Exp", ()), ("Sign", ()),
                            ("Pow", (np.float32(-1.0),)), ("Pow", (np.float32(0.5),))):
        model = _model(op_type, consts, (1, 7))
        ref = ort_run(model, x)
        ours = import_model(model)(x.reshape(1, -1).astype(np.float64))
        # 1e-40 (subnormal) is no special value for our float64 forward, nor is exp(100) (it
        # overflows only in float32: the error rule's business)
        keep = np.arange(7) != (3 if op_type in ("Reciprocal", "Pow") else 4 if op_type == "Exp" else -1)
        np.testing.assert_array_equal(np.isnan(ours)[:, keep], np.isnan(ref)[:, keep], err_msg=op_type)
        fin = np.isfinite(ref) & keep
        np.testing.assert_array_equal(ours[~fin & keep & ~np.isnan(ref)], ref[~fin & keep & ~np.isnan(ref)])


@pytest.mark.parametrize("p,expect", [(1.0, None), (0.0, ops.Scale), (-1.0, ops.Reciprocal), (2.0, ops.Pow)])
def test_pow_lowerings(p, expect):
    model = _model("Pow", (np.float32(p),))
    g = import_model(model)
    kinds = [type(n.op) for n in g.nodes[1:]]
    if expect is not None:
        assert expect in kinds
    x = np.random.default_rng(1).uniform(0.5, 3, (8, 1, 7)).astype(np.float32)
    np.testing.assert_allclose(g(x.reshape(8, -1)), ort_run(model, x), rtol=1e-6)


def test_pow_refusals():
    m = graph_model([helper.make_node("Abs", [X], ["E"]), helper.make_node("Pow", [X, "E"], ["Y"])], (1, 3))
    with pytest.raises(CertkitError, match="variable exponent"):
        import_model(m)
    with pytest.raises(CertkitError, match="non-scalar exponent"):
        import_model(_model("Pow", (np.array([2.0, 3.0, 2.0], np.float32),), (1, 3)))


# --------------------------------------------------------------------------- relaxations and intervals


def _intervals(op, seed: int, n: int = 2500) -> tuple[np.ndarray, np.ndarray]:
    """Random [l, u]: ordinary, tiny, degenerate, wide, far out, touching 0 and domain ends, and
    the extremes (float32 overflow of exp, huge sin arguments, infinite ends)."""
    rng = np.random.default_rng(seed)
    centre = rng.choice([0.0, 1.0, 3.0, 10.0, 100.0], n) * rng.standard_normal(n)
    width = np.exp(rng.uniform(math.log(1e-13), math.log(40.0), n))
    width[rng.random(n) < 0.06] = 0.0
    l = centre - width * rng.random(n)
    special = rng.random(n) < 0.25
    pick = rng.integers(0, 9, n)
    extra = np.stack([
        np.zeros(n), np.full(n, 1e-300), np.full(n, -1e-12), np.full(n, 88.0),  # at 0, exp overflow
        rng.uniform(-1e6, 1e6, n), rng.uniform(-1e15, 1e15, n), np.full(n, 1e30),  # far out
        np.full(n, -INF), np.round(centre)])  # infinite end, integers (steps)
    l = np.where(special, extra[pick, np.arange(n)], l)
    u = l + width
    u[special & (pick == 7)] = rng.choice([-5.0, 0.0, 5.0, INF], int((special & (pick == 7)).sum()))
    u[rng.random(n) < 0.02] = INF
    return l, np.maximum(u, l)


def _samples(l: np.ndarray, u: np.ndarray, m: int = 200) -> np.ndarray:
    rng = np.random.default_rng(3)
    lf = np.where(np.isfinite(l), l, np.where(np.isfinite(u), u - 1e3, -1e3))
    uf = np.where(np.isfinite(u), u, lf + 1e3)
    t = np.concatenate([np.linspace(0, 1, m // 2), rng.random(m // 2), rng.random(4) * 1e-9, 1 - rng.random(4) * 1e-9])
    x = lf[None] + t[:, None] * (uf - lf)[None]
    near = [np.nextafter(lf, uf), np.nextafter(uf, lf), np.clip(np.round(lf), lf, uf),
            np.clip(np.zeros_like(lf), lf, uf), np.clip(np.floor(uf), lf, uf)]
    return np.clip(np.concatenate([x, np.stack(near)]), lf, uf)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_relaxation_and_interval_sound(case, seed):
    op = case[1]
    l, u = _intervals(op, seed)
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    lw, lb, uw, ub = RELAXATIONS[type(op)](op, lt, ut, None)
    lo, hi = op.interval(lt, ut)
    for t, what in ((lw, "lw"), (lb, "lb"), (uw, "uw"), (ub, "ub"), (lo, "lo"), (hi, "hi")):
        assert not torch.isnan(t).any(), f"{what} NaN at l={l[torch.isnan(t)[0].numpy()][:3]}"
    assert torch.isfinite(lw).all() and torch.isfinite(uw).all()
    x = torch.tensor(_samples(l, u), dtype=D)
    fx = op.forward(x)
    allow = ALLOW * (line_cap(op, lt, ut) + torch.maximum(lo.abs(), hi.abs()))
    allow = torch.where(torch.isfinite(allow), allow, torch.zeros_like(allow))
    defined = ~torch.isnan(fx)
    # where f may be NaN on the box (off the domain) no finite bound may be claimed
    nan_box = (~defined).any(0, keepdim=True)
    for t in (lb, lo):
        assert (t[nan_box] == -INF).all()
    for t in (ub, hi):
        assert (t[nan_box] == INF).all()
    lines = (lw * x + lb, uw * x + ub)
    with np.errstate(all="ignore"):
        viol_lo = torch.where(defined, lines[0] - fx - allow, torch.zeros_like(fx))
        viol_hi = torch.where(defined, fx - lines[1] - allow, torch.zeros_like(fx))
        viol_lo = torch.nan_to_num(viol_lo, nan=0.0, neginf=0.0)  # -inf line at an inf f: fine
        viol_hi = torch.nan_to_num(viol_hi, nan=0.0, neginf=0.0)
    for side, v in (("lower", viol_lo), ("upper", viol_hi)):
        if (v > 0).any():
            r, c = np.unravel_index(int(torch.argmax(v)), v.shape)
            pytest.fail(f"{case[0]}: {side} line violated on [{l[c]!r}, {u[c]!r}] at x={x[r, c].item()!r}: "
                        f"f={fx[r, c].item()!r}, lw={lw[0, c].item()!r} lb={lb[0, c].item()!r} "
                        f"uw={uw[0, c].item()!r} ub={ub[0, c].item()!r}")
    bad = defined & ((fx < lo - allow) | (fx > hi + allow))
    assert not bad.any(), f"{case[0]}: interval misses samples at l={l[bad.any(0).numpy()][:3]}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_relaxation_tight_on_points(case):
    """On a degenerate box [x, x] inside the domain both lines pass through f(x)."""
    op = case[1]
    lo, hi = case[4]
    x = torch.linspace(lo + 1e-3, hi, 301, dtype=D)[None]
    lw, lb, uw, ub = RELAXATIONS[type(op)](op, x, x, None)
    fx = op.forward(x)
    tol = 1e-12 * (1 + fx.abs() + x.abs())
    assert ((lw * x + lb - fx).abs() <= tol).all() and ((uw * x + ub - fx).abs() <= tol).all()


def test_relaxation_is_tighter_than_interval():
    """The lines beat the interval bounds on average (convex: chord/tangent; S-shapes; steps)."""
    l = torch.tensor([[0.5, -2.0, 0.1, 0.2, -1.0]], dtype=D)
    u = l + 1.5
    for op in (ops.Exp(), ops.Log(), ops.Sqrt(), ops.Reciprocal(), ops.Sin(), ops.Erf(), ops.Pow(3.0)):
        if isinstance(op, (ops.Log, ops.Sqrt, ops.Reciprocal)):
            ll, uu = l.abs() + 0.1, l.abs() + 1.6
        else:
            ll, uu = l, u
        lw, lb, uw, ub = RELAXATIONS[type(op)](op, ll, uu, None)
        lo, hi = op.interval(ll, uu)
        m = (ll + uu) / 2
        assert ((uw * m + ub) - (lw * m + lb) < hi - lo - 1e-3).all(), op.kind


# --------------------------------------------------------------------------- floating-point error rule


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_error_rule_covers_onnxruntime(case):
    """On float32 points (degenerate boxes) onnxruntime's result lies within the op's error rule of
    the exact value (the budget is 5x the measured maximum: benchmarks/elementwise_errors.py)."""
    name, op, op_type, consts, (lo, hi) = case
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(lo, hi, 3000), rng.uniform(lo, hi, 200) * 1e-3]).astype(np.float32)
    if op_type in ("Exp",):
        x = np.concatenate([x, rng.uniform(-100, 88, 2000).astype(np.float32)])
    if op_type in ("Sin", "Cos"):
        x = np.concatenate([x, rng.uniform(-1e5, 1e5, 2000).astype(np.float32)])
    model = _model(op_type, consts, (1, len(x)))
    y = ort_run(model, x[None])[0]
    xt = torch.tensor(x, dtype=D)[None]
    exact = op.forward(xt)[0].numpy()
    box = (xt, xt)
    err = node_error(op, [box], op.interval(*box), FLOAT32, 17)[0].numpy()
    ok = np.isfinite(exact)
    assert (np.abs(y - exact)[ok] <= err[ok]).all(), float(np.max(np.abs(y - exact)[ok] / err[ok]))


# --------------------------------------------------------------------------- end to end


def _net(op_type: str, consts=(), n_in: int = 3, hidden: int = 6, seed: int = 0, w_scale: float = 0.6,
         bias=0.0) -> onnx.ModelProto:
    """x -> Gemm -> op -> Gemm (2 outputs)."""
    rng = np.random.default_rng(seed)
    names = ["h"] + [f"c{k}" for k in range(len(consts))]
    nodes = [helper.make_node("Gemm", [X, "W0", "b0"], ["h"]),
             helper.make_node(op_type, names, ["a"]),
             helper.make_node("Gemm", ["a", "W1", "b1"], ["Y"])]
    cs = {"W0": rng.normal(0, w_scale, (n_in, hidden)), "b0": rng.normal(0, 0.3, hidden) + bias,
          "W1": rng.normal(0, 1, (hidden, 2)), "b1": rng.normal(0, 0.3, 2)}
    cs.update({f"c{k}": c for k, c in enumerate(consts)})
    return graph_model(nodes, (1, n_in), consts=cs)


def _ort_batch(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime in float32 on a batch, through a copy of the model with a free batch dimension."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del m.graph.output[0].type.tensor_type.shape.dim[:]
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.astype(np.float32)})[0].astype(np.float64)


E2E = [("Exp", (), 0.0), ("Log", (), 3.0), ("Sqrt", (), 3.0), ("Reciprocal", (), 3.0), ("Sin", (), 0.0),
       ("Cos", (), 0.0), ("Erf", (), 0.0), ("Sign", (), 0.0), ("Floor", (), 0.0),
       ("Pow", (np.float32(2.0),), 0.0), ("Pow", (np.float32(3.0),), 0.0), ("Pow", (np.float32(0.5),), 3.0)]


@pytest.mark.parametrize("op_type,consts,bias", E2E, ids=[f"{t}{c[0] if c else ''}" for t, c, _ in E2E])
def test_end_to_end_bounds_contain_onnxruntime(op_type, consts, bias):
    """Dense -> op -> Dense: interval, deeppoly and alpha output bounds contain 10^4 float32
    onnxruntime samples of the box (its corners included)."""
    model = _net(op_type, consts, bias=bias)
    g = import_model(model)
    lo, hi = np.full(3, -1.0), np.full(3, 1.5)
    rng = np.random.default_rng(2)
    x = rng.uniform(lo, hi, (10_000, 3))
    x[:8] = np.array(np.meshgrid(*zip(lo, hi))).reshape(3, -1).T
    y = _ort_batch(model, x)
    assert np.isfinite(y).all()
    box = InputSet.box(lo[None], hi[None])
    C = torch.cat([torch.eye(2), -torch.eye(2)]).to(D)
    widths = {}
    for name in ("interval", "deeppoly", "alpha"):
        low = BACKENDS[name].lower(g, box, C)[0].numpy()
        y_lo, y_hi = low[:2], -low[2:]
        assert np.isfinite(low).all(), (name, low)
        assert (y >= y_lo).all() and (y <= y_hi).all(), (name, y_lo, y_hi, y.min(0), y.max(0))
        widths[name] = (y_hi - y_lo).sum()
    if op_type not in ("Sign", "Floor"):  # a step's lines can lose to its interval after a Dense
        assert widths["deeppoly"] <= widths["interval"] * (1 + 1e-9) + 1e-9


def test_discontinuous_ops_see_the_computed_input():
    """Sign/Floor of an affine node whose exact value is just off an integer (or 0) while float32
    rounds it onto it: the bounds come from the error-widened input, so they contain onnxruntime's
    jump. 0.7f * 10 = 6.99999988 (exact) rounds to 7 in float32; minus 7: -1.2e-7 exactly, 0 in
    onnxruntime (Floor -1 vs 0, Sign -1 vs 0); 0.1f * 10 - 1 = +1.5e-8 exactly, 0 in float32."""
    jumps = 0
    for op_type, x0, a, b in (("Floor", 0.7, 10.0, -7.0), ("Sign", 0.7, 10.0, -7.0), ("Sign", 0.1, 10.0, -1.0),
                              ("Floor", 0.1, 10.0, -1.0)):
        x0 = np.float32(x0)
        nodes = [helper.make_node("Mul", [X, "a"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"]),
                 helper.make_node(op_type, ["h"], ["Y"])]
        model = graph_model(nodes, (1, 1), consts={"a": np.float32(a), "b": np.float32(b)})
        g = import_model(model)
        y = _ort_batch(model, np.array([[x0]]))[0]
        jumps += int(g(np.array([[float(x0)]]))[0, 0] != y[0])
        box = InputSet.box(np.array([[float(x0)]]), np.array([[float(x0)]]))
        C = torch.tensor([[1.0], [-1.0]], dtype=D)
        for name in ("interval", "deeppoly", "alpha"):
            low = BACKENDS[name].lower(g, box, C)[0].numpy()
            assert low[0] <= y[0] <= -low[1], (op_type, name, low, y)
    assert jumps >= 3  # the real network's step differs from onnxruntime's


@pytest.mark.parametrize("op_type,consts,xs", [
    ("Exp", (), (50.0, 120.0)),  # float32 exp overflows above 88.7
    ("Reciprocal", (), (-1.0, 1.0)),  # the box contains the pole
    ("Log", (), (-2.0, 1.0)),  # NaN below 0
    ("Sqrt", (), (-2.0, 1.0)),
    ("Pow", (np.float32(-2.0),), (-1.0, 1.0)),
    ("Pow", (np.float32(40.0),), (10.0, 20.0)),  # 20^40 overflows
])
def test_overflow_and_domain_errors_give_infinite_bounds(op_type, consts, xs):
    """x -> op -> Dense: no finite bound (never NaN) on outputs that depend on the bad neuron,
    in every backend."""
    nodes = [helper.make_node(op_type, [X] + [f"c{k}" for k in range(len(consts))], ["a"]),
             helper.make_node("Gemm", ["a", "W", "b"], ["Y"])]
    W = np.array([[1.0, 0.0], [2.0, 0.0]], np.float32)  # output 1 ignores both neurons
    cs = {"W": W, "b": np.zeros(2, np.float32)} | {f"c{k}": c for k, c in enumerate(consts)}
    g = import_model(graph_model(nodes, (1, 2), consts=cs))
    box = InputSet.box(np.array([[xs[0], 1.0]]), np.array([[xs[1], 1.5]]))
    C = torch.cat([torch.eye(2), -torch.eye(2)]).to(D)
    for name in ("interval", "deeppoly", "alpha"):
        low = BACKENDS[name].lower(g, box, C)[0].numpy()
        assert not np.isnan(low).any(), (name, low)
        assert low[0] == -INF or low[2] == -INF, (name, low)


def test_milp_and_lipschitz_refuse():
    from certkit.verify.milp.encoding import check_encodable

    g = import_model(_net("Exp"))
    with pytest.raises(BackendError, match="exp"):
        check_encodable(g)
    from certkit.lipschitz.structure import Structure

    with pytest.raises(CertkitError, match="no slope range"):
        Structure.of(g)
    Structure.of(import_model(_net("Sin")))  # slopes in [-1, 1]: accepted


def test_propagated_error_uses_region_slopes():
    """The real-vs-computed error carried through an op: finite for the smooth ops (their slope over
    the region), infinite for the steps whose region holds a jump, and never NaN or 1.8e308."""
    from certkit.bounds.fperror import propagated_error

    box = InputSet.box(np.full((1, 3), -1.0), np.full((1, 3), 1.5))
    for op_type, bias, finite in (("Sin", 0.0, True), ("Exp", 0.0, True), ("Log", 3.0, True),
                                  ("Floor", 0.0, False), ("Sign", 0.0, False)):
        g = import_model(_net(op_type, bias=bias))
        E, E2 = propagated_error(g, box)
        assert not torch.isnan(E).any() and not torch.isnan(E2).any()
        if finite:
            assert torch.isfinite(E).all() and (E < 1e-2).all(), (op_type, E)
        else:
            assert (E == INF).all() and (E2 == INF).all(), (op_type, E)


def test_constant_divided_by_variable():
    """``c / x`` lowers to ``c * Reciprocal(x)`` (onnx/converters/affine.py via products.divide) and
    its bounds contain onnxruntime's on a box away from the pole."""
    nodes = [helper.make_node("Div", ["c", X], ["Y"])]
    model = graph_model(nodes, (1, 3), consts={"c": np.array([2.0, -3.0, 0.5], np.float32)})
    g = import_model(model)
    assert any(isinstance(n.op, ops.Reciprocal) for n in g.nodes)
    lo, hi = np.array([0.3, 1.0, -4.0]), np.array([2.0, 5.0, -0.1])
    x = np.random.default_rng(4).uniform(lo, hi, (2000, 3))
    y = _ort_batch(model, x)
    np.testing.assert_allclose(g(x.astype(np.float32).astype(np.float64)), y, rtol=1e-6)
    C = torch.cat([torch.eye(3), -torch.eye(3)]).to(D)
    for name in ("interval", "deeppoly"):
        low = BACKENDS[name].lower(g, InputSet.box(lo[None], hi[None]), C)[0].numpy()
        assert (y >= low[:3]).all() and (y <= -low[3:]).all(), name
