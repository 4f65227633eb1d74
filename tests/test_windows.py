"""Windowed rows through convolutions (``certkit/bounds/windows.py``) give the dense steps' bounds.

Each net is bounded by DeepPoly twice, windows forced on (every chain, whatever its share of the
map; rows of a later node that reach a conv within half its map handed over to windows) and switched off; the bounds agree to 1e-9 relative, hold on sampled points, and the windows
were used. Strides, dilations, asymmetric padding, groups, LeakyReLU/sigmoid/Scale in the chain, a
residual Sum (windows stop before it), batches, and overflowing weights (-inf, never NaN).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certkit.bounds import windows
from certkit.bounds.deeppoly import BoundState, deeppoly_output_bounds
from certkit.bounds.products32 import with_arithmetic
from certkit.graph import ops
from certkit.graph.conv_transpose import ConvTranspose
from certkit.spec.sets import InputSet
from tests.helpers import random_nets
from tests.helpers.random_nets import Builder

D = torch.float64


def chain_net(seed: int, gain: float = 1.5):
    """Conv(pad 1) -> relu -> Conv(stride 2, asymmetric pads, groups 2) -> leaky_relu -> Scale ->
    Conv(dilation 2, pad 2) -> sigmoid -> Conv(1x1) -> relu -> Dense, on a 2x11x13 input."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 2, 11, 13), rng)
    x = b.act(b.conv(0, 4, 3, 1, (1, 1, 1, 1), gain=gain), "relu")
    x = b.act(b.conv(x, 4, 3, 2, (1, 0, 0, 1), groups=2, gain=gain), "leaky_relu")
    n = b.size(x)
    x = b.add(ops.Scale(rng.normal(1, 0.5, n), rng.normal(0, 0.3, n)), x, b.shapes[x])
    x = b.act(b.conv(x, 3, 3, 1, (2, 2, 2, 2), dil=2, gain=gain), "sigmoid")
    x = b.act(b.conv(x, 3, 1, 1, gain=gain), "relu")
    b.dense(x, 4)
    return b.graph()


def residual_conv_net(seed: int):
    """Conv -> relu -> Conv -> Sum with the first conv's output -> relu -> Conv -> Dense."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 2, 9, 9), rng)
    c1 = b.conv(0, 3, 3, 1, (1, 1, 1, 1))
    x = b.act(c1, "relu")
    c2 = b.conv(x, 3, 3, 1, (1, 1, 1, 1))
    s = b.add(ops.Sum((1.0, 1.0)), (c2, c1), b.shapes[c2])
    x = b.act(s, "relu")
    x = b.act(b.conv(x, 2, 3, 1, (0, 0, 0, 0)), "relu")
    b.dense(x, 3)
    return b.graph()


def margin_net(seed: int):
    """A segmentation-like net (carvana's shape): Conv -> relu -> Conv(2 channels) on a 2x10x12 map, then
    per-pixel margins (a Dense whose rows read one pixel's two channels: local rows, handed over to
    windows at the conv), sigmoid, and a Dense summing them."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 2, 10, 12), rng)
    x = b.act(b.conv(0, 4, 3, 1, (1, 1, 1, 1)), "relu")
    x = b.act(b.conv(x, 4, 3, 1, (1, 1, 1, 1)), "relu")
    c = b.conv(x, 2, 1, 1)
    n = 10 * 12
    w = np.zeros((n, 2 * n))
    w[np.arange(n), np.arange(n)], w[np.arange(n), n + np.arange(n)] = 1.0, -1.0
    d = b.add(ops.Dense(w, None), c, (1, n))
    s = b.act(d, "sigmoid")
    b.dense(s, 3)
    return b.graph()


def convt(b: Builder, x: int, c_out: int, k: int, stride=(2, 2), begin=(0, 0), dil=(1, 1), groups: int = 1,
          extra=(0, 0)) -> int:
    """A ConvTranspose node: output = the full result's window at ``begin``, ``extra`` rows/columns longer
    (positive: output padding past the full result; negative: cropped)."""
    c_in, h, w = b.shapes[x][1:]
    wt = b.rng.normal(0, 1.5 / np.sqrt(c_in // groups * k * k), (c_in, c_out // groups, k, k))
    full = [(n - 1) * s + d * (k - 1) + 1 for n, s, d in zip((h, w), stride, dil)]
    ho, wo = full[0] - begin[0] + extra[0], full[1] - begin[1] + extra[1]
    op = ConvTranspose(wt, b.rng.normal(0, 0.3, c_out), (c_in, h, w), (c_out, ho, wo), tuple(stride), tuple(begin),
                       tuple(dil), groups)
    return b.add(op, x, (1, c_out, ho, wo))


def generator_net(seed: int):
    """cGAN-like: ConvTranspose(k4, s2) -> relu -> ConvTranspose(k3, strides (2, 1), begin (1, 2), groups 2,
    cropped) -> leaky_relu -> Scale -> ConvTranspose(k3, s1, dilation 2, output padding) -> relu -> Conv(s2)
    -> relu -> Dense, on a 2x3x4 input."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 2, 3, 4), rng)
    x = b.act(convt(b, 0, 4, 4), "relu")
    x = b.act(convt(b, x, 4, 3, (2, 1), (1, 2), groups=2, extra=(-1, 0)), "leaky_relu")
    n = b.size(x)
    x = b.add(ops.Scale(rng.normal(1, 0.5, n), rng.normal(0, 0.3, n)), x, b.shapes[x])
    x = b.act(convt(b, x, 3, 3, (1, 1), (0, 0), (2, 2), extra=(1, 2)), "relu")
    x = b.act(b.conv(x, 3, 3, 2, (1, 1, 1, 1)), "relu")
    b.dense(x, 4)
    return b.graph()


def _scaled(g, gain: float):
    """``g`` with every ConvTranspose kernel times ``gain`` (overflowing products)."""
    for n in g.nodes:
        if isinstance(n.op, ConvTranspose):
            object.__setattr__(n.op, "weight", n.op.weight * gain)
    return g


NETS = {
    "generator": generator_net,
    "margins": margin_net,
    "chain": chain_net,
    "conv_net": random_nets.conv_net,
    "conv_net2": random_nets.conv_net2,
    "residual": residual_conv_net,
}


def _box(g, seed: int, batch: int, width: float):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, (batch, g.n_inputs))
    r = rng.uniform(0.01, width, (batch, g.n_inputs))
    return InputSet(torch.tensor(c - r, dtype=D), torch.tensor(c + r, dtype=D))


def _bounds(g, S, intersect: bool, use: bool, monkeypatch) -> tuple[torch.Tensor, torch.Tensor, int]:
    calls = {"windowed": 0}
    orig, hand = windows.WindowRows._window_lower, windows.WindowRows._window_hand_over

    def counting(self, j, sel, sign):
        low = orig(self, j, sel, sign)
        calls["windowed"] += low is not None
        return low

    def counting_handover(self, i, A, t, tag):
        got = hand(self, i, A, t, tag)
        calls["windowed"] += got is not None
        return got

    with monkeypatch.context() as m:
        m.setattr(windows, "MAX_WORK", 1.0)
        m.setattr(windows, "MAX_COVER", 1.0)
        m.setattr(windows, "HANDOVER_COVER", 0.5)
        if use:
            m.setattr(windows.WindowRows, "_window_lower", counting)
            m.setattr(windows.WindowRows, "_window_hand_over", counting_handover)
        else:
            m.setattr(windows.WindowRows, "_window_plan", lambda self, j, start=(1, 1): None)
        st = BoundState(g, S, intersect=intersect)
        lo, hi = deeppoly_output_bounds(g, S, intersect=intersect, state=st)
    return lo, hi, calls["windowed"]


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("intersect", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_equal_dense_steps(name, intersect, seed, monkeypatch):
    g = NETS[name](seed)
    S = _box(g, seed, batch=2, width=0.3)
    lo_w, hi_w, used = _bounds(g, S, intersect, True, monkeypatch)
    lo_d, hi_d, _ = _bounds(g, S, intersect, False, monkeypatch)
    assert used > 0
    scale = 1e-9 * (1 + torch.maximum(lo_d.abs(), hi_d.abs()))
    assert torch.all((lo_w - lo_d).abs() <= scale) and torch.all((hi_w - hi_d).abs() <= scale)
    x = S.lower[:, None, :] + (S.upper - S.lower)[:, None, :] * torch.rand(2, 2000, g.n_inputs, dtype=D)
    y = g.forward(x.reshape(-1, g.n_inputs)).reshape(2, 2000, -1)
    assert torch.all(y >= lo_w[:, None, :] - 1e-9) and torch.all(y <= hi_w[:, None, :] + 1e-9)


def test_margin_rows_are_handed_over_to_windows(monkeypatch):
    """The per-pixel margin rows reach the conv with one pixel each: windows from there (default
    thresholds), the dense steps' bounds."""
    g = margin_net(0)
    S = _box(g, 0, batch=1, width=0.2)
    used = {"n": 0}
    hand = windows.WindowRows._window_hand_over

    def counting(self, i, A, t, tag):
        got = hand(self, i, A, t, tag)
        used["n"] += got is not None
        return got

    with monkeypatch.context() as m:
        m.setattr(windows.WindowRows, "_window_hand_over", counting)
        lo_w, hi_w = deeppoly_output_bounds(g, S, state=BoundState(g, S))
    with monkeypatch.context() as m:
        m.setattr(windows.WindowRows, "_window_plan", lambda self, j, start=(1, 1): None)
        lo_d, hi_d = deeppoly_output_bounds(g, S, state=BoundState(g, S))
    assert used["n"] > 0
    assert torch.allclose(lo_w, lo_d, rtol=1e-9, atol=1e-12) and torch.allclose(hi_w, hi_d, rtol=1e-9, atol=1e-12)


def test_plan_stops_before_residual_sum_and_never_on_a_charged_conv():
    g = residual_conv_net(0)
    S = _box(g, 0, batch=1, width=0.2)
    st = BoundState(g, S)
    plans = {j: st._window_plan(j) for j in range(len(g.nodes))}
    for j, plan in plans.items():
        if plan is None:
            continue
        steps, stop, shape = plan
        assert all(not isinstance(g.nodes[s.node].op, ops.Sum) for s in steps)
        assert g.size(stop) == int(np.prod(shape))
        cons = g.consumers[stop]
        assert not (stop != 0 and len(cons) == 1 and st._relu_charged_below(cons[0]))


def test_default_gate_skips_small_maps_and_windows_large_ones():
    """With the default thresholds a 6x6 net keeps the dense rows beyond its first conv (whose rows
    end on the input at once); a conv stack on a 40x40 map windows."""
    small = random_nets.conv_net(0)
    st = BoundState(small, _box(small, 0, 1, 0.1))
    assert all(st._window_plan(j) is None for j in range(2, len(small.nodes)))
    rng = np.random.default_rng(0)
    b = Builder((1, 1, 40, 40), rng)
    x = b.act(b.conv(0, 3, 3, 1, (1, 1, 1, 1)), "relu")
    x = b.act(b.conv(x, 3, 3, 1, (1, 1, 1, 1)), "relu")
    b.conv(x, 2, 3, 1, (1, 1, 1, 1))
    big = b.graph()
    st = BoundState(big, _box(big, 0, 1, 0.1))
    assert st._window_plan(3) is not None and st._window_plan(5) is not None


@pytest.mark.parametrize("arithmetic", ["auto", "float32"])
@pytest.mark.parametrize("net", ["chain", "generator"])
def test_overflowing_weights_give_minus_inf_never_nan(net, arithmetic, monkeypatch):
    g = chain_net(0, gain=1e120) if net == "chain" else _scaled(generator_net(0), 1e120)
    g = with_arithmetic(g, arithmetic)
    S = _box(g, 0, batch=1, width=0.3)
    lo_w, hi_w, used = _bounds(g, S, True, True, monkeypatch)
    lo_d, hi_d, _ = _bounds(g, S, True, False, monkeypatch)
    assert used > 0
    assert not torch.isnan(lo_w).any() and not torch.isnan(hi_w).any()
    assert torch.equal(torch.isinf(lo_w), torch.isinf(lo_d)) and torch.equal(torch.isinf(hi_w), torch.isinf(hi_d))


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_balls_equal_dense_steps(p, monkeypatch):
    """An L_2 / L_1 ball: the first conv's rows are back-substituted too (a ball is not a box), windows
    end on the input and are concretised over the ball."""
    g = chain_net(3)
    rng = np.random.default_rng(3)
    S = InputSet.ball(rng.uniform(0, 1, (2, g.n_inputs)), [0.3, 0.6], p)
    lo_w, hi_w, used = _bounds(g, S, True, True, monkeypatch)
    lo_d, hi_d, _ = _bounds(g, S, True, False, monkeypatch)
    assert used > 0
    assert torch.allclose(lo_w, lo_d, rtol=1e-9, atol=1e-12) and torch.allclose(hi_w, hi_d, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["generator", "chain", "margins", "conv_net2"])
@pytest.mark.parametrize("gain", [1.0, 40.0])
def test_float32_windowed_products_hold_and_match_dense_float32(name, gain, monkeypatch):
    """With the bound products in float32 (``with_arithmetic(g, "float32")``) the windowed convolutions
    run in float32 with their bracket (:meth:`WindowRows._window_product`): the bounds hold on sampled
    points (large gains: big, cancelling coefficients), differ from the dense float32 steps' only by
    rounding, and the float32 path was taken."""
    g = NETS[name](1)
    if gain != 1.0:
        for n in g.nodes:
            if isinstance(n.op, (ops.Conv, ConvTranspose)):
                object.__setattr__(n.op, "weight", n.op.weight * gain)
    g = with_arithmetic(g, "float32")
    S = _box(g, 1, batch=2, width=0.3)
    in32 = {"n": 0}
    orig = windows.WindowRows._window_product

    def counting(self, i, *args):
        in32["n"] += self._in_float32(i)
        return orig(self, i, *args)

    with monkeypatch.context() as m:
        m.setattr(windows.WindowRows, "_window_product", counting)
        lo_w, hi_w, used = _bounds(g, S, True, True, monkeypatch)
    lo_d, hi_d, _ = _bounds(g, S, True, False, monkeypatch)
    assert used > 0 and in32["n"] > 0
    scale = 1e-5 * (1 + torch.maximum(lo_d.abs(), hi_d.abs()))
    assert torch.all((lo_w - lo_d).abs() <= scale) and torch.all((hi_w - hi_d).abs() <= scale)
    x = S.lower[:, None, :] + (S.upper - S.lower)[:, None, :] * torch.rand(2, 2000, g.n_inputs, dtype=D)
    y = g.forward(x.reshape(-1, g.n_inputs)).reshape(2, 2000, -1)
    tol = 1e-9 * (1 + y.abs())
    assert torch.all(y >= lo_w[:, None, :] - tol) and torch.all(y <= hi_w[:, None, :] + tol)


def test_gather_matches_a_loop_with_windows_off_every_side():
    """``windows._gather``: each row's (h, w) window of a per-neuron tensor, 0 off the map, on windows that hang
    off each side of the map, lie wholly outside it, or are empty (no rows)."""
    rng = np.random.default_rng(0)
    b, C, H, W, h, w = 2, 3, 5, 7, 4, 3
    t = torch.as_tensor(rng.normal(size=(b, C * H * W)))
    t[0, 4] = float("inf")
    y0 = torch.as_tensor([-3, -1, 0, 2, 4, 9, -6])
    x0 = torch.as_tensor([-2, 5, 0, 6, -1, 0, 8])
    ys, xs = windows._grid(y0, x0, h, w)
    got = windows._gather(t, (C, H, W), ys, xs)
    want = torch.zeros(b, len(y0), C, h, w, dtype=t.dtype)
    m = t.reshape(b, C, H, W)
    for r in range(len(y0)):
        for i in range(h):
            for j in range(w):
                y, x = int(y0[r]) + i, int(x0[r]) + j
                if 0 <= y < H and 0 <= x < W:
                    want[:, r, :, i, j] = m[:, :, y, x]
    assert torch.equal(got, want)
    empty = windows._gather(t, (C, H, W), ys[:0], xs[:0])
    assert empty.shape == (b, 0, C, h, w)
