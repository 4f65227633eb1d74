"""Forward-mode linear bounds (certkit.bounds.forward): soundness at every node, against sampling and
onnxruntime, on the random nets of every op, with pinned inputs, huge weights, cancellations and
overflow; where they apply; the ``forward`` stage in the pipeline and in ``certkit check``."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import certkit
from certkit.bounds.backends import BACKENDS
from certkit.bounds.deeppoly import BoundState
from certkit.bounds import forward
from certkit.bounds.deeppoly import deeppoly_output_bounds
from certkit.bounds.forward import FORWARD_MAX_DIM, applies, forward_bounds, start_bounds, starts_forward
from certkit.bounds.fperror import FLOAT32, round_input_set
from certkit.bounds.interval import interval_bounds
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from tests.helpers.onnx_builders import assert_bounds_contain_ort, box_samples, ort_run
from tests.helpers.random_nets import ALL_NETS

REL_TOL = 1e-9


def _box(n: int, rng: np.random.Generator, batch: int = 2, pinned: int = 1) -> InputSet:
    c = rng.uniform(0, 1, (batch, n))
    lo, hi = c - rng.uniform(0, 0.4, (batch, n)), c + rng.uniform(0, 0.4, (batch, n))
    hi[:, :pinned] = lo[:, :pinned]  # pinned inputs become constants of the functions
    return InputSet.box(lo, hi)


def _points(S: InputSet, k: int, rng: np.random.Generator) -> torch.Tensor:
    """(k, n) points of each set of the batch: vertices and uniform ones, (b, k, n)."""
    lo, hi = S.lower.numpy(), S.upper.numpy()
    vert = rng.integers(0, 2, (lo.shape[0], k // 2, lo.shape[1])).astype(float)
    unif = rng.uniform(0, 1, (lo.shape[0], k - k // 2, lo.shape[1]))
    t = np.concatenate([vert, unif], axis=1)
    return torch.as_tensor(lo[:, None] + t * (hi - lo)[:, None])


@pytest.mark.parametrize("name", sorted(ALL_NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_node_contains_sampled_values(name, seed):
    """At 4000 points per set (half vertices), every live node's value lies in its forward bounds,
    which are finite and never looser than interval bounds (but for the last ulps)."""
    g = ALL_NETS[name](seed)
    rng = np.random.default_rng(seed)
    S = _box(g.n_inputs, rng)
    fb, ib = forward_bounds(g, S), interval_bounds(g, S)
    X = _points(S, 4000, rng)
    for b in range(S.batch):
        with torch.no_grad():
            vals = g.forward(X[b], keep=True)
        for i in g.live:
            lo, hi = fb[i]
            assert bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()), (name, i)
            ulps = 1e-12 * (1 + ib[i][0].abs() + ib[i][1].abs())  # interval images of other bounds round apart
            assert bool((lo >= ib[i][0] - ulps).all() and (hi <= ib[i][1] + ulps).all()), (name, i, "looser than IBP")
            v = vals[i]
            t = REL_TOL * (1 + v.abs())
            assert bool((v >= lo[b] - t).all()), (name, i, float((lo[b] - v).max()))
            assert bool((v <= hi[b] + t).all()), (name, i, float((v - hi[b]).max()))


@pytest.mark.parametrize("name", ["conv", "mlp_relu", "onnx_mlp", "residual"])
def test_every_input_pinned(name):
    """A degenerate box (no free input, k = 0: constant functions) bounds the point's value."""
    g = ALL_NETS[name](0)
    x = np.random.default_rng(0).uniform(0, 1, (1, g.n_inputs))
    lo, hi = forward_bounds(g, InputSet.box(x, x))[g.output]
    y = torch.as_tensor(g(x))
    t = REL_TOL * (1 + y.abs())
    assert bool((y >= lo - t).all() and (y <= hi + t).all()) and bool(torch.isfinite(hi - lo).all())


def test_tighter_than_interval_on_a_deep_net():
    """The point of it: on a deep ReLU net from few inputs the forward bounds of the last layer are
    much tighter than interval ones (the functions keep the inputs' correlations)."""
    g = ALL_NETS["mlp_relu_deep"](0)
    S = _box(g.n_inputs, np.random.default_rng(0), pinned=0)
    fb, ib = forward_bounds(g, S), interval_bounds(g, S)
    wf = float((fb[g.output][1] - fb[g.output][0]).mean())
    wi = float((ib[g.output][1] - ib[g.output][0]).mean())
    assert wf < 0.7 * wi, (wf, wi)


def _conv_gan_onnx(seed: int, scale: float = 1.0) -> onnx.ModelProto:
    """A small generator-discriminator like cgan_2023's: Gemm from 3 inputs, ConvTranspose, Relu,
    Conv, Relu, Gemm -> 2 outputs (float32 weights N(0, scale^2))."""
    rng = np.random.default_rng(seed)
    w = lambda name, *s: numpy_helper.from_array((scale * rng.normal(0, 1, s)).astype(np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h0"], transB=1),
        helper.make_node("Reshape", ["h0", "shape"], ["h0r"]),
        helper.make_node("ConvTranspose", ["h0r", "Wt", "bt"], ["h1"], strides=[2, 2]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "Wc", "bc"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "W3", "b3"], ["y"], transB=1),
    ]
    inits = [w("W0", 8, 3), w("b0", 8), numpy_helper.from_array(np.array([1, 2, 2, 2], np.int64), "shape"),
             w("Wt", 2, 3, 3, 3), w("bt", 3), w("Wc", 4, 3, 3, 3), w("bc", 4), w("W3", 2, 4 * 5 * 5), w("b3", 2)]
    g = helper.make_graph(nodes, "gan", [helper.make_tensor_value_info("x", 1, [1, 3])],
                          [helper.make_tensor_value_info("y", 1, [1, 2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e-3])
def test_forward_backend_contains_onnxruntime(scale):
    """The ``forward`` stage's output bounds contain onnxruntime's float32 outputs at 2000 points of
    the box, beside every other bound backend, weights from 1e-3 to 1e3."""
    m = _conv_gan_onnx(0, scale)
    g = assert_bounds_contain_ort(m, -1.0, 1.0, n=200, backends=("forward",))  # the IR is the model
    lo, hi = np.full(3, -1.0), np.full(3, 1.0)
    x = box_samples(lo, hi, 2000, seed=1)
    y = ort_run(m, x)
    S = round_input_set(InputSet.box(lo[None], hi[None]), FLOAT32)
    C = torch.cat([torch.eye(2), -torch.eye(2)]).to(torch.float64)
    for name in ("forward", "deeppoly+interval", "deeppoly+reference", "alpha"):
        low = BACKENDS[name].lower(g, S, C)[0].numpy()
        assert (y >= low[:2]).all() and (y <= -low[2:]).all(), name  # no tolerance: float32 as it ran


@pytest.mark.parametrize("name", sorted(ALL_NETS))
def test_deeppoly_from_forward_bounds_contains_samples(name, monkeypatch):
    """DeepPoly (intersected) starting from forward bounds -- every net counted wide -- contains the
    outputs at 4000 points of each box."""
    monkeypatch.setattr(forward, "FORWARD_START_WIDTH", 0)
    g = ALL_NETS[name](3)
    rng = np.random.default_rng(3)
    S = _box(g.n_inputs, rng)
    lo, hi = deeppoly_output_bounds(g, S, intersect=True)
    X = _points(S, 4000, rng)
    for b in range(S.batch):
        y = torch.as_tensor(g(X[b].numpy()))
        t = REL_TOL * (1 + y.abs())
        assert bool((y >= lo[b] - t).all() and (y <= hi[b] + t).all()), name


def test_cancellation_is_charged():
    """y = (W x) - (W x) through two identical paths of huge weights: real value 0, onnxruntime 0 too,
    but the coefficients certkit forms cancel in float64 only up to rounding, which the slack covers:
    the bounds contain 0 and are finite, and the large-magnitude hidden layer stays enclosed."""
    rng = np.random.default_rng(3)
    W = (rng.normal(0, 1, (6, 4)) * 1e7).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "P", "z"], ["y"], transB=1)]
    P = np.concatenate([np.eye(3), -np.eye(3)], axis=1).astype(np.float32)  # r[:3] - r[3:]
    W[3:] = W[:3]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.zeros(6, np.float32), "b"),
             numpy_helper.from_array(P, "P"), numpy_helper.from_array(np.zeros(3, np.float32), "z")]
    g = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", 1, [1, 4])],
                          [helper.make_tensor_value_info("y", 1, [1, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    graph = import_model(m)
    S = round_input_set(InputSet.box(np.full((1, 4), 0.1), np.full((1, 4), 0.3)), FLOAT32)
    lo, hi = forward_bounds(graph, S)[graph.output]
    assert bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
    assert bool((lo <= 0).all() and (hi >= 0).all())
    x = box_samples(np.full(4, 0.1), np.full(4, 0.3), 500)
    y = ort_run(m, x)
    assert (y >= lo.numpy()).all() and (y <= hi.numpy()).all()


def test_overflow_ends_the_forward_pass_soundly():
    """Weights of 1e30 on inputs near 1e10 overflow float32: the bounds from there are infinite (no
    NaN), never a finite bound that onnxruntime's inf would break."""
    m = _conv_gan_onnx(1, 1e30)
    graph = import_model(m)
    S = round_input_set(InputSet.box(np.full((1, 3), 1e9), np.full((1, 3), 1e10)), FLOAT32)
    fb = forward_bounds(graph, S)
    lo, hi = fb[graph.output]
    assert not bool(torch.isnan(lo).any() or torch.isnan(hi).any())
    assert bool((~torch.isfinite(lo) | ~torch.isfinite(hi)).any())


def test_where_it_applies():
    """Boxes of at most FORWARD_MAX_DIM free inputs (pinned ones do not count); not balls; not when
    the functions would not fit in the memory budget. ``start_bounds`` is interval bounds elsewhere."""
    from certkit.verify.query import Budget

    g = ALL_NETS["mlp_relu"](0)
    n = FORWARD_MAX_DIM + 8
    lo = np.zeros((1, n))
    hi = lo.copy()
    hi[0, :FORWARD_MAX_DIM] = 1.0
    assert applies(InputSet.box(lo, hi))
    hi[0, :] = 1.0
    assert not applies(InputSet.box(lo, hi))
    assert not applies(InputSet.ball(np.full((1, 5), 0.5), 0.1, 2.0))
    S = _box(g.n_inputs, np.random.default_rng(0))
    assert applies(S, g) and not applies(S, g, Budget(memory=1))
    ib = interval_bounds(g, InputSet.ball(np.full((1, 5), 0.5), 0.1, 2.0))
    sb = start_bounds(g, InputSet.ball(np.full((1, 5), 0.5), 0.1, 2.0))
    assert all(a is None and b is None or torch.equal(a[0], b[0]) for a, b in zip(ib, sb))


def test_intersect_mode_starts_from_forward_bounds(monkeypatch):
    """DeepPoly with intersected bounds starts from the forward bounds on wide nets (here: any width),
    so fewer neurons need rows; pure CROWN (intersect=False) starts from interval bounds; so does every
    DeepPoly on nets narrower than FORWARD_START_WIDTH."""
    g = ALL_NETS["mlp_relu_deep"](1)
    S = _box(g.n_inputs, np.random.default_rng(1), pinned=0)
    assert g.max_node_size < forward.FORWARD_START_WIDTH and not starts_forward(S, g)
    ib = interval_bounds(g, S)
    assert all(torch.equal(BoundState(g, S, intersect=True).bounds[i][0], ib[i][0]) for i in g.live)
    monkeypatch.setattr(forward, "FORWARD_START_WIDTH", 0)
    S = _box(g.n_inputs, np.random.default_rng(1), pinned=0)
    fb = forward_bounds(g, S)
    st = BoundState(g, S, intersect=True)
    assert all(torch.equal(st.bounds[i][0], fb[i][0]) for i in g.live)
    pure = BoundState(g, S, intersect=False)
    ib = interval_bounds(g, S)
    assert all(torch.equal(pure.bounds[i][0], ib[i][0]) for i in g.live)


def test_auto_runs_forward_and_skips_pure_crown(tmp_path, monkeypatch):
    """``auto`` on a net of 3 free inputs runs the forward stage and skips pure CROWN (deeppoly+interval
    starts from the forward bounds there, the net counted wide); a row proved by ``forward`` is
    re-derived by ``certkit check``."""
    monkeypatch.setattr(forward, "FORWARD_START_WIDTH", 0)
    m = _conv_gan_onnx(2)
    path = tmp_path / "gan.onnx"
    path.write_bytes(m.SerializeToString())
    graph = import_model(m)
    lo, hi = np.full(3, -0.01), np.full(3, 0.01)
    S = round_input_set(InputSet.box(lo[None], hi[None]), FLOAT32)
    low = BACKENDS["forward"].lower(graph, S, torch.tensor([[1.0, 0.0]]))
    thr = float(low[0, 0]) - 1e-3  # y0 >= thr over the box: the forward stage proves y0 < thr unsafe
    spec = tmp_path / "p.vnnlib"
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + "(declare-const Y_0 Real)\n"
                    "(declare-const Y_1 Real)\n" + "".join(f"(assert (>= X_{i} {float(lo[i])!r}))\n(assert (<= X_{i} {float(hi[i])!r}))\n"
                                                         for i in range(3)) + f"(assert (<= Y_0 {thr!r}))\n")
    model = certkit.load_model(path)
    res = certkit.certify(model, certkit.load_spec(spec, model), "auto", timeout=30)
    assert res.verdict == "unsat"
    assert "forward" in res.timings and "deeppoly" not in res.timings
    cert = tmp_path / "c.json"
    from certkit.cli import main

    assert main(["certify", str(path), str(spec), "--json", str(cert)]) == 0
    doc = json.loads(cert.read_text())
    assert doc["properties"][0]["disjuncts"][0]["row_stage"] == ["forward"]
    assert main(["check", str(cert)]) == 0
