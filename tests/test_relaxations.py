"""Soundness of every linear relaxation and interval rule by dense sampling.

For every op registered in ``RELAXATIONS`` and many random intervals ``[l, u]``
(tiny, ordinary and wide; touching 0 / the clip bounds / the softplus threshold
exactly; degenerate points) we sample ``x`` densely in ``[l, u]`` -- the end points
and the kinks always included -- and check

    lw * x + lb <= f(x) <= uw * x + ub

with and without the free lower slope ``slope`` (alpha-CROWN), also for slopes
outside their legal range (the relaxation must clamp them). ``op.interval`` of
every activation and of MaxGroup must contain ``f`` of every sample, and the
MaxGroup relaxation of :mod:`certkit.bounds.deeppoly` must hold too.

The tolerance is relative and tight (``TOL * (1 + |x| + |f(x)| + |l| + |u|)``,
TOL = 1e-12): floating-point rounding of a chord is ~1e-16 relative, so anything
larger is a logic error, e.g. a bound that is off by the interval's width.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certkit.bounds.deeppoly import _max_relax
from certkit.bounds.relaxations import RELAXATIONS
from certkit.graph import ops
from certkit.graph.elementwise import Unary



D = torch.float64
TOL = 1e-12
N_INTERVALS = 1500  # per op case
N_SAMPLES = 160  # per interval (plus end points and kinks)
INF = np.inf


# --------------------------------------------------------------------------- op cases

def _clip(lo, hi, n=N_INTERVALS):
    return ops.Clip(np.broadcast_to(np.asarray(lo, dtype=np.float64), (n,)).copy(),
                    np.broadcast_to(np.asarray(hi, dtype=np.float64), (n,)).copy())


def _random_clip(n=N_INTERVALS, seed=7):
    rng = np.random.default_rng(seed)
    lo = rng.normal(0, 2, n)
    hi = lo + np.abs(rng.normal(0, 2, n)) * (rng.random(n) > 0.05)  # 5% degenerate lo == hi
    lo[rng.random(n) < 0.15] = -INF
    hi[rng.random(n) < 0.15] = INF
    return ops.Clip(lo, hi)


def op_cases():
    cases = [("relu", ops.Relu())]
    cases += [(f"leaky_relu[{s}]", ops.LeakyRelu(s)) for s in (0.01, 0.3, 1.0, 2.0, -0.5, 0.0)]
    cases += [
        ("clip[-1,2]", _clip(-1.0, 2.0)),
        ("clip[0,1]", _clip(0.0, 1.0)),
        ("clip[0,inf]", _clip(0.0, INF)),
        ("clip[-inf,1]", _clip(-INF, 1.0)),
        ("clip[-inf,inf]", _clip(-INF, INF)),
        ("clip[0.5,0.5]", _clip(0.5, 0.5)),
        ("clip[1e-9 wide]", _clip(0.3, 0.3 + 1e-9)),
        ("clip[-40,40]", _clip(-40.0, 40.0)),
        ("clip[random]", _random_clip()),
        ("abs", ops.Abs()),
        ("sigmoid", ops.Sigmoid()),
        ("tanh", ops.Tanh()),
        ("softplus", ops.Softplus()),
        # paper activations (tests/test_paper_activations.py tests MaxMin, which is pairwise)
        ("n_activation[-1,2]", ops.NActivation(np.full(N_INTERVALS, -1.0), np.full(N_INTERVALS, 2.0))),
        ("n_activation[0.5,0.5]", ops.NActivation(np.full(N_INTERVALS, 0.5), np.full(N_INTERVALS, 0.5))),
        ("n_activation[random]", _random_n()),
        ("capped_leaky_relu[0.1,1]", ops.CappedLeakyRelu(0.1, 1.0)),
        ("capped_leaky_relu[0,2]", ops.CappedLeakyRelu(0.0, 2.0)),
        ("capped_leaky_relu[f32]", ops.CappedLeakyRelu(float(np.float32(0.1)), 0.5, float(np.float32(0.9)))),
    ]
    return cases


def _random_n(n=N_INTERVALS, seed=8):
    rng = np.random.default_rng(seed)
    t1 = rng.normal(0, 2, n)
    return ops.NActivation(t1, t1 + np.abs(rng.normal(0, 2, n)) * (rng.random(n) > 0.05))


CASES = op_cases()


def test_every_registered_relaxation_is_covered():
    covered = {type(op) for _, op in CASES} | {ops.MaxMin}  # MaxMin: tests/test_paper_activations.py
    covered |= {c for c in RELAXATIONS if issubclass(c, Unary)}  # tests/test_elementwise_ops.py
    covered |= {ops.Product}  # several inputs: tests/test_products.py
    assert set(RELAXATIONS) <= covered, set(RELAXATIONS) - covered


def kinks(op) -> list[np.ndarray]:
    """Points where f is not smooth / changes curvature (per interval, length N)."""
    n = N_INTERVALS
    if isinstance(op, ops.Clip):
        return [np.where(np.isfinite(op.lo), op.lo, 0.0), np.where(np.isfinite(op.hi), op.hi, 0.0)]
    if isinstance(op, ops.NActivation):
        return [np.asarray(op.t1, np.float64), np.asarray(op.t2, np.float64)]
    if isinstance(op, ops.CappedLeakyRelu):
        return [np.full(n, -op.beta), np.full(n, op.beta)]
    if isinstance(op, ops.Softplus):  # torch's F.softplus switches to x at 20 (ops uses logaddexp)
        return [np.zeros(n), np.full(n, 20.0)]
    return [np.zeros(n)]


def make_intervals(op, seed: int, n: int = N_INTERVALS) -> tuple[np.ndarray, np.ndarray]:
    """(l, u) arrays of length n: a mix of widths and of positions relative to the kinks."""
    rng = np.random.default_rng(seed)
    ks = kinks(op)
    kink = np.choose(rng.integers(0, len(ks), n), ks)
    width = np.exp(rng.uniform(np.log(1e-12), np.log(100.0), n))
    width[rng.random(n) < 0.05] = 0.0
    special = rng.random(n) < 0.1
    width[special] = rng.choice([1e-10, 1e-9, 2e-9, 1e-8, 1e-7, 1e-6, 1.5e-6, 50.0], int(special.sum()))
    mode = rng.integers(0, 7, n)
    frac = rng.random(n)
    off = rng.normal(0, 1, n) * np.choose(rng.integers(0, 4, n), [np.full(n, s) for s in (1e-9, 1e-3, 1.0, 20.0)])
    l = np.empty(n)
    l[mode == 0] = (kink + off)[mode == 0]                       # anywhere near a kink
    l[mode == 1] = (kink - frac * width)[mode == 1]              # spanning the kink
    l[mode == 2] = kink[mode == 2]                               # starting at the kink
    l[mode == 3] = (kink - width)[mode == 3]                     # ending at the kink
    l[mode == 4] = rng.normal(0, 30, n)[mode == 4]               # wide spread
    l[mode == 5] = (kink - frac * width)[mode == 5]
    l[mode == 6] = (rng.choice([-1.0, 1.0], n) * rng.uniform(15, 60, n))[mode == 6]  # saturated regions
    u = l + width
    u[mode == 3] = kink[mode == 3]
    # tiny widths across the kink (the chord of a straddling unit is steep)
    tiny = rng.random(n) < 0.1
    w2 = np.exp(rng.uniform(np.log(1e-13), np.log(1e-6), n))
    l[tiny] = (kink - frac * w2)[tiny]
    u[tiny] = (kink + (1 - frac) * w2)[tiny]
    # spanning every kink (e.g. both clip bounds)
    span = rng.random(n) < 0.08
    kmin, kmax = np.minimum.reduce(ks), np.maximum.reduce(ks)
    l[span] = (kmin - width * rng.random(n))[span]
    u[span] = (kmax + width * rng.random(n))[span]
    u = np.maximum(u, l)
    return l, u


def samples(op, l: np.ndarray, u: np.ndarray, seed: int, m: int = N_SAMPLES) -> np.ndarray:
    """(m', n) points of [l, u] per column: grid, random, end points, kinks inside."""
    rng = np.random.default_rng(seed)
    t = np.concatenate([np.linspace(0, 1, m // 2), rng.random(m - m // 2),
                        rng.random(8) * 1e-6, 1 - rng.random(8) * 1e-6])
    x = l[None] + t[:, None] * (u - l)[None]
    extra = [l, u, np.nextafter(l, u), np.nextafter(u, l)]
    for k in kinks(op):
        for kk in (k, np.nextafter(k, -INF), np.nextafter(k, INF)):
            extra.append(np.where((kk >= l) & (kk <= u), kk, l))
    x = np.concatenate([x, np.stack(extra)], 0)
    return np.clip(x, l[None], u[None])


def check_relaxation(op, l, u, slope=None, what=""):
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    st = None if slope is None else torch.tensor(slope, dtype=D)[None]
    lw, lb, uw, ub = (t.reshape(1, -1) for t in RELAXATIONS[type(op)](op, lt, ut, st))
    for t, name in zip((lw, lb, uw, ub), ("lw", "lb", "uw", "ub")):
        bad = np.flatnonzero(~torch.isfinite(t)[0].numpy())
        assert bad.size == 0, f"{what}: {name} not finite at l={l[bad[:3]]}, u={u[bad[:3]]}"
    x = torch.tensor(samples(op, l, u, 1), dtype=D)
    fx = op.forward(x)
    lo_line = lw * x + lb
    hi_line = uw * x + ub
    tol = TOL * (1 + x.abs() + fx.abs() + lt.abs() + ut.abs())
    for side, viol in (("lower", lo_line - fx - tol), ("upper", fx - hi_line - tol)):
        bad = viol > 0
        if bad.any():
            r, c = np.unravel_index(int(torch.argmax(viol)), viol.shape)
            pytest.fail(f"{what}: {side} relaxation violated at l={l[c]!r}, u={u[c]!r}, x={x[r, c].item()!r}: "
                        f"f={fx[r, c].item()!r}, line={[lo_line, hi_line][side == 'upper'][r, c].item()!r} "
                        f"(lw={lw[0, c].item()!r}, lb={lb[0, c].item()!r}, uw={uw[0, c].item()!r}, "
                        f"ub={ub[0, c].item()!r}, slope={None if slope is None else slope[c]}); "
                        f"{int(bad.any(0).sum())} intervals bad")


@pytest.mark.parametrize("name,op", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relaxation_sound(name, op, seed):
    l, u = make_intervals(op, seed)
    check_relaxation(op, l, u, None, f"{name} seed={seed}")


@pytest.mark.parametrize("name,op", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("slope_range", ["legal", "wild"])
def test_relaxation_sound_with_slopes(name, op, slope_range):
    """alpha-CROWN's free slopes: any value must give a sound relaxation (clamped)."""
    l, u = make_intervals(op, 11)
    rng = np.random.default_rng(5)
    n = len(l)
    if slope_range == "legal":
        slope = rng.uniform(0, 1, n)
        slope[rng.random(n) < 0.2] = 0.0
        slope[rng.random(n) < 0.2] = 1.0
    else:
        slope = rng.normal(0, 3, n)
        slope[rng.random(n) < 0.1] = rng.choice([-1e6, 1e6, -1.0, 2.0, 1.0 + 1e-12, -1e-12])
    check_relaxation(op, l, u, slope, f"{name} slopes={slope_range}")


@pytest.mark.parametrize("name,op", CASES, ids=[c[0] for c in CASES])
def test_relaxation_exact_on_stable_points(name, op):
    """On a degenerate interval [x, x] both lines pass through f(x) (up to rounding)."""
    rng = np.random.default_rng(3)
    l = np.concatenate([rng.normal(0, 5, N_INTERVALS - 4), [0.0, -1.0, 1.0, 20.0]])
    if isinstance(op, ops.Clip):
        l = l[:N_INTERVALS]
    lt = torch.tensor(l, dtype=D)[None]
    lw, lb, uw, ub = RELAXATIONS[type(op)](op, lt, lt)
    fx = op.forward(lt)
    tol = 1e-12 * (1 + lt.abs() + fx.abs())
    assert ((lw * lt + lb - fx) <= tol).all() and ((fx - uw * lt - ub) <= tol).all()


# --------------------------------------------------------------------------- interval rules

def _check_interval(name, op, tol_rel):
    l, u = make_intervals(op, 21)
    lt, ut = torch.tensor(l, dtype=D)[None], torch.tensor(u, dtype=D)[None]
    lo, hi = op.interval(lt, ut)
    x = torch.tensor(samples(op, l, u, 2), dtype=D)
    fx = op.forward(x)
    tol = tol_rel * (1 + fx.abs())
    assert (lo <= hi + tol_rel * (1 + hi.abs())).all(), f"{name}: interval with lo > hi"
    bad = (fx < lo - tol) | (fx > hi + tol)
    if bad.any():
        r, c = np.unravel_index(int(torch.argmax(bad.double())), bad.shape)
        pytest.fail(f"{name}: interval [{lo[0, c].item()!r}, {hi[0, c].item()!r}] of [{l[c]!r}, {u[c]!r}] "
                    f"misses f({x[r, c].item()!r}) = {fx[r, c].item()!r}; {int(bad.sum())} samples bad")


@pytest.mark.parametrize("name,op", CASES, ids=[c[0] for c in CASES])
def test_interval_contains_samples(name, op):
    """Tight tolerance (1e-12 relative)."""
    _check_interval(name, op, TOL)


@pytest.mark.parametrize("name,op", CASES, ids=[c[0] for c in CASES])
def test_interval_contains_samples_1e9(name, op):
    """The product tolerance (1e-9 relative)."""
    _check_interval(name, op, 1e-9)


@pytest.mark.parametrize("k", [1, 2, 4, 9])
@pytest.mark.parametrize("seed", [0, 1])
def test_maxgroup_interval_and_relaxation(k, seed):
    rng = np.random.default_rng(100 + seed)
    n_in, n_out = 30, 40
    idx = rng.integers(0, n_in, (n_out, k))
    idx[rng.random((n_out, k)) < 0.3] = -1  # padding
    idx[:, 0] = np.where(idx[:, 0] < 0, rng.integers(0, n_in, n_out), idx[:, 0])
    idx = np.take_along_axis(idx, rng.permuted(np.tile(np.arange(k), (n_out, 1)), axis=1), 1)
    op = ops.MaxGroup(idx.astype(np.int64))
    b = 20
    c = rng.normal(0, 1, (b, n_in)) * rng.choice([1e-9, 0.1, 1, 10], (b, 1))
    w = np.exp(rng.uniform(np.log(1e-10), np.log(10), (b, n_in)))
    w[rng.random((b, n_in)) < 0.1] = 0.0
    c[:, :3] = c[:, 3:6]  # ties in the lower bounds
    lo, hi = c - w * rng.random((b, n_in)), c + w * rng.random((b, n_in))
    lt, ut = torch.tensor(lo), torch.tensor(hi)
    ylo, yhi = op.interval(lt, ut)
    r = _max_relax(op, lt, ut)
    m = 4000
    t = rng.random((m, b, n_in))
    t[: m // 4] = rng.integers(0, 2, (m // 4, b, n_in))  # vertices
    x = torch.tensor(lo[None] + t * (hi - lo)[None])
    x = torch.minimum(torch.maximum(x, lt[None]), ut[None]).reshape(m * b, n_in)
    y = op.forward(x).reshape(m, b, n_out)
    xs = x.reshape(m, b, n_in).gather(2, r.sel[None].expand(m, -1, -1))
    tol = TOL * (1 + y.abs())
    assert (y >= ylo[None] - tol).all() and (y <= yhi[None] + tol).all()
    assert (y >= xs - tol).all(), "MaxGroup lower relaxation y >= x[sel] violated"
    assert (y <= r.uw[None] * xs + r.ub[None] + tol).all(), "MaxGroup upper relaxation violated"


@pytest.mark.parametrize("name,op", [c for c in CASES if isinstance(c[1], ops.Clip)],
                         ids=[c[0] for c in CASES if isinstance(c[1], ops.Clip)])
def test_clip_intervals_cover_every_case(name, op):
    """The generated intervals hit every Clip case (so the tests above exercise them all)."""
    l, u = make_intervals(op, 0)
    lo, hi = op.lo, op.hi
    cases = {
        "below": u <= lo, "above": l >= hi, "inside": (l >= lo) & (u <= hi),
        "span lo": (l < lo) & (u > lo) & (u <= hi), "span hi": (l >= lo) & (l < hi) & (u > hi),
        "span both": (l < lo) & (u > hi), "touch lo": (l == lo) | (u == lo), "touch hi": (l == hi) | (u == hi),
    }
    possible = {"below": np.isfinite(lo).any(), "above": np.isfinite(hi).any(), "inside": (lo < hi).any(),
                "span lo": (np.isfinite(lo) & (lo < hi)).any(), "span hi": (np.isfinite(hi) & (lo < hi)).any(),
                "span both": (np.isfinite(lo) & np.isfinite(hi)).any(),
                "touch lo": np.isfinite(lo).any(), "touch hi": np.isfinite(hi).any()}
    for k, m in cases.items():
        if possible[k]:
            assert m.sum() >= 5, f"{name}: only {m.sum()} intervals in case {k!r}"


@pytest.mark.parametrize("op", [ops.Sigmoid(), ops.Tanh()], ids=["sigmoid", "tanh"])
def test_s_shaped_tangents_sound_on_unbounded_and_extreme_intervals(op):
    """alpha's tangent points on intervals with an infinite end, far in the tails, and huge: the lines
    stay on their sides of f at dense samples of the finite part, for every parameter value; an
    unbounded interval keeps DeepPoly's lines."""
    inf = float("inf")
    l = torch.tensor([-inf, -inf, -3.0, -80.0, 50.0, -1e6, -0.5, -100.0], dtype=D)
    u = torch.tensor([2.0, inf, inf, -60.0, 90.0, 1e6, 1e-300, 100.0], dtype=D)
    for th in (0.0, 0.3, 1.0):
        lw, lb, uw, ub = RELAXATIONS[type(op)](op, l[None], u[None], torch.full((1, 1, 8), th, dtype=D))
        lo = torch.where(torch.isfinite(l), l, torch.full_like(l, -1e3))
        hi = torch.where(torch.isfinite(u), u, torch.full_like(u, 1e3))
        x = torch.linspace(0, 1, 20001, dtype=D)[:, None] * (hi - lo) + lo
        fx = op.forward(x)
        tol = TOL * (1 + x.abs() + fx.abs())
        # a NaN intercept (DeepPoly's line on an unbounded interval, 0 * inf) is no bound downstream
        ok_lo, ok_up = torch.isfinite(lb[0]), torch.isfinite(ub[0])
        assert bool(torch.where(ok_lo, lw[0] * x + lb[0] - fx <= tol, True).all()), th
        assert bool(torch.where(ok_up, fx - uw[0] * x - ub[0] <= tol, True).all()), th
        base = RELAXATIONS[type(op)](op, l[None], u[None])
        unbounded = ~(torch.isfinite(l) & torch.isfinite(u))
        for mine, theirs in zip((lw, lb, uw, ub), base):  # unbounded: DeepPoly's lines, untouched
            assert torch.equal(mine.reshape(-1)[unbounded].nan_to_num(7.0), theirs.reshape(-1)[unbounded].nan_to_num(7.0))


def test_relu_alpha_fast_path_equals_relu_like():
    """alpha-CROWN's ReLU lines (DeepPoly's with the lower slope replaced on unstable neurons) are
    relu_like's with ``slope=a``: values and gradients, on degenerate and non-finite bounds too."""
    from certkit.bounds.relaxations import ALPHA_PARAMS, relu_like

    torch.manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1e-300, -1e-300, float("inf"), float("-inf"), float("nan"), 2.0, -2.0])
    l = torch.cat([torch.randn(3, 40, dtype=torch.float64), special.double().expand(3, -1)], dim=1)
    u = torch.cat([torch.randn(3, 40, dtype=torch.float64), special.double().flip(0).expand(3, -1)], dim=1)
    l, u = torch.minimum(l, u), torch.maximum(l, u)
    l[:, -1], u[:, -3] = float("nan"), float("nan")
    base = relu_like(l, u)
    a1 = (torch.rand(3, 5, l.shape[1], dtype=torch.float64) * 1.6 - 0.3).requires_grad_(True)
    a2 = a1.detach().clone().requires_grad_(True)
    fast = ALPHA_PARAMS[ops.Relu].from_base(ops.Relu(), l, u, base, a1)
    ref = relu_like(l[:, None, :], u[:, None, :], 0.0, a2)
    w = torch.randn(3, 5, l.shape[1], dtype=torch.float64)
    for f, r in zip(fast, ref):
        assert f.shape == r.shape
        assert torch.equal(torch.isnan(f.expand_as(r)), torch.isnan(r.expand_as(f)))
        assert torch.equal(f.expand_as(r).nan_to_num(), r.expand_as(f).nan_to_num())
    (fast[0] * w).sum().backward()
    (ref[0] * w).sum().backward()
    assert torch.equal(a1.grad, a2.grad)
