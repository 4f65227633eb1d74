"""Back-substitution products in float32 (certkit.bounds.products32): the charge covers them.

* The assumption under the charge, tried: torch's float32 GEMM and the float32 (transposed)
  convolutions of ``Conv.backward``/``ConvTranspose.backward`` stay within ``gamma_{K+3} |A| |M|``
  of the float64 product, on cancelling sums, huge and tiny (underflowing) entries.
* ``adjoint_terms``: no column of an op's matrix has more nonzeros (brute force over strides,
  dilations, groups).
* The charge is needed and enough: on linear nets whose products cancel, bounds with float32
  products stay below the true minimum; without the charge they do not.
* Everything end to end in float32 arithmetic: sampled onnxruntime outputs inside the bounds of
  conv/residual/dense nets; floating-point traps never proven; overflow falls back to float64.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from certkit.bounds import deeppoly as deeppoly_module
from certkit.bounds.deeppoly import deeppoly_lower, deeppoly_output_bounds
from certkit.bounds.fperror import FLOAT32, with_precision
from certkit.bounds.products32 import (adjoint_terms, in_float32, product, product_charge,
                                       with_arithmetic)
from certkit.graph import ops
from certkit.graph.graph import Graph
from certkit.graph.conv_transpose import ConvTranspose
from certkit.spec.sets import InputSet
from certkit.tolerances import gamma
from tests.helpers import random_nets

D = torch.float64
U32, TINY32 = FLOAT32.u, FLOAT32.tiny


def _conv(rng, cin=3, cout=5, k=3, stride=1, dil=1, groups=1, hw=7, pad=1, scale=1.0):
    w = rng.standard_normal((cout, cin // groups, k, k)) * scale
    ho = (hw + 2 * pad - dil * (k - 1) - 1) // stride + 1
    return ops.Conv(w, rng.standard_normal(cout), (cin, hw, hw), (cout, ho, ho), (stride, stride),
                    (pad, pad, pad, pad), (dil, dil), groups)


def _convt(rng, cin=4, cout=3, k=3, stride=2, hw=4):
    w = rng.standard_normal((cin, cout, k, k))
    full = (hw - 1) * stride + k
    return ConvTranspose(w, None, (cin, hw, hw), (cout, full - 1, full - 1), (stride, stride), (0, 0))


def _ops(rng):
    yield ops.Dense(rng.standard_normal((37, 23)), rng.standard_normal(37))
    yield ops.Dense(rng.standard_normal((300, 40)), None)
    for stride, dil, groups, k in ((1, 1, 1, 3), (2, 1, 1, 4), (2, 2, 1, 3), (3, 1, 1, 5), (1, 2, 3, 3), (2, 1, 3, 1)):
        yield _conv(rng, cin=3 if groups == 1 else 6, cout=6, k=k, stride=stride, dil=dil, groups=groups, hw=9)
    yield _convt(rng)


def _matrix(op) -> torch.Tensor:
    """``M`` (n_out, n_in) of a linear op, column by column."""
    n_in = int(np.prod(op.in_shape)) if hasattr(op, "in_shape") else op.weight.shape[1]
    return op.apply(torch.eye(n_in, dtype=D)).T


def test_adjoint_terms_bound_every_column():
    rng = np.random.default_rng(0)
    for op in _ops(rng):
        M = _matrix(op)
        worst = int((M != 0).sum(0).max())
        assert worst <= adjoint_terms(op), (op.kind, worst, adjoint_terms(op))
        if isinstance(op, ops.Conv) and op.dilations == (1, 1):
            assert worst == adjoint_terms(op)  # tight where the kernel fits the strides


def _hard_A(rng, s, n, kind):
    A = rng.standard_normal((1, s, n))
    if kind == "cancel":  # big terms of both signs: the sums are small against their magnitudes
        A = A * 10.0 ** rng.integers(0, 7, (1, s, n))
    elif kind == "tiny":  # products in float32's subnormal range
        A = A * 1e-36
    elif kind == "huge":
        A = A * 1e30
    elif kind == "mixed":
        A = A * 10.0 ** rng.integers(-40, 30, (1, s, n))
    return torch.tensor(A, dtype=D)


def _within_charge(op, A, rng, kind, ref):
    """Assert |fl32 product - ref| |y| <= |A| per_neuron + floor over a random box of the op's input;
    the float32 product and the reference ``ref`` (float64 ``A M``)."""
    n_in = ref.shape[-1]
    lo = torch.tensor(-rng.uniform(0, 3, (1, n_in)), dtype=D)
    hi = torch.tensor(rng.uniform(0, 3, (1, n_in)), dtype=D)
    out, in32 = product(lambda a: op.backward(a)[0], A)
    assert in32
    charge = product_charge(op, lo, hi)
    err = ((out - ref).abs() * torch.maximum(lo.abs(), hi.abs())[:, None, :]).sum(-1)
    allowed = torch.einsum("bsk,bk->bs", A.abs(), charge.per_neuron) + charge.floor
    assert bool((err <= allowed).all()), (op.kind, kind, float((err / allowed).max()))
    return out, ref


@pytest.mark.parametrize("kind", ["plain", "cancel", "tiny", "huge", "mixed"])
def test_float32_products_within_the_charge(kind):
    """|fl32 product - A M| |y| <= |A| per_neuron + floor, for y in the box the charge is given, on
    every op kind (the float64 product is the reference: its own error is ~1e-16 relative)."""
    rng = np.random.default_rng(1)
    for op in _ops(rng):
        M = _matrix(op)
        n_out, n_in = M.shape
        A = _hard_A(rng, 16, n_out, kind)
        out, ref = _within_charge(op, A, rng, kind, torch.einsum("bsk,kc->bsc", A, M))
        # the largest per-entry error against the bound's form: gamma_{K+3} |A| |M|
        bound = gamma(adjoint_terms(op) + 3, U32) * torch.einsum("bsk,kc->bsc", A.abs(), M.abs()) + 1e-37
        assert bool(((out - ref).abs() <= bound * (1 + 1e-9) + 4 * TINY32 * adjoint_terms(op)).all())


@pytest.fixture(params=[2, 4])
def threads(request):
    """torch on several threads (certkit's default is every CPU): GEMMs and oneDNN convolutions split their
    work, and their sums, across threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)


@pytest.mark.parametrize("kind", ["cancel", "mixed"])
def test_float32_products_within_the_charge_on_threads(kind, threads):
    """The charge holds for products large enough to be split across threads (a 1024x1024 Dense, a 3x3
    convolution of 16 -> 32 channels on 16x16 and its transpose); the reference is the float64 product."""
    rng = np.random.default_rng(7)
    big = [ops.Dense(rng.standard_normal((1024, 1024)), None),
           _conv(rng, cin=16, cout=32, k=3, hw=16), _conv(rng, cin=16, cout=32, k=3, stride=2, hw=16),
           _convt(rng, cin=16, cout=8, k=4, stride=2, hw=16)]
    for op in big:
        n_out = int(np.prod(op.out_shape)) if hasattr(op, "out_shape") else op.weight.shape[0]
        A = _hard_A(rng, 64, n_out, kind)
        _within_charge(op, A, rng, kind, op.backward(A)[0])


def test_float32_overflow_falls_back_to_float64():
    op = ops.Dense(np.full((4, 3), 1e30), None)
    A = torch.full((1, 2, 4), 1e20, dtype=D)
    out, in32 = product(lambda a: op.backward(a)[0], A)
    assert not in32 and bool(torch.isfinite(out).all())
    assert torch.allclose(out, torch.full((1, 2, 3), 4e50, dtype=D))


def _linear_net(rng, n_in: int, widths: tuple[int, ...], cancel: float) -> Graph:
    """Dense layers without activations: back-substitution is exact in real arithmetic, so any
    rounding of the products that is not charged shows up as a bound above the true minimum."""
    b = random_nets.Builder((1, n_in), rng)
    x = 0
    for w in widths:
        W = rng.standard_normal((w, b.size(x))) * 10.0 ** rng.integers(0, cancel, (w, b.size(x)))
        x = b.add(ops.Dense(W, None), x, (1, w))
    g = b.graph()
    return with_precision(g, "exact")


def test_charge_is_needed_and_enough(monkeypatch):
    """Real arithmetic model ('exact', no model error terms) and a linear net: the exact minimum of
    ``c^T y`` over the box is ``min (c^T M) x``. Float32 products with their charge stay below it;
    with the charge switched off some bound lands above it (float32 rounding of cancelling sums)."""
    rng = np.random.default_rng(3)
    above_without = 0
    for seed in range(6):
        g = with_arithmetic(_linear_net(rng, 30, (60, 60, 8), cancel=5), "float32")
        S = InputSet.box(-rng.uniform(0.5, 1, 30), rng.uniform(0.5, 1, 30))
        C = torch.tensor(rng.standard_normal((8, 8)), dtype=D)
        P = C.clone()
        for node in reversed(g.nodes[1:]):
            P = P @ torch.as_tensor(node.op.weight, dtype=D)
        true_min = (P.clamp(min=0) @ S.lower[0] + P.clamp(max=0) @ S.upper[0])
        with torch.no_grad():
            low = deeppoly_lower(g, S, C, intersect=False)[0]
            assert bool((low <= true_min).all()), (seed, float((low - true_min).max()))
            with monkeypatch.context() as m:
                def uncharged_fn(op, lo, hi):
                    c = product_charge(op, lo, hi)
                    return dataclasses.replace(c, per_neuron=0 * c.per_neuron, floor=0 * c.floor)
                m.setattr(deeppoly_module, "product_charge", uncharged_fn)
                uncharged = deeppoly_lower(g, S, C, intersect=False)[0]
        above_without += int((uncharged > true_min).sum())
    assert above_without > 0, "the products' rounding never mattered: the test lost its teeth"


NETS = {"conv": random_nets.conv_net, "conv2": random_nets.conv_net2, "residual": random_nets.residual_net,
        "deep_relu": lambda seed: random_nets.mlp("relu", seed, (6, 24, 24, 24, 3))}


@pytest.mark.parametrize("net", sorted(NETS))
def test_float32_bounds_contain_samples(net):
    """The float32-arithmetic bounds contain the float64 reference on 20,000 points and PGD minima are not
    needed: they are never tighter than float64's by more than the rounding of their last sums."""
    g32 = with_arithmetic(NETS[net](0), "float32")
    g64 = with_arithmetic(g32, "float64")
    rng = np.random.default_rng(5)
    c = rng.uniform(0, 1, (2, g32.n_inputs))
    S = InputSet(torch.tensor(c - 0.2), torch.tensor(c + 0.2))
    with torch.no_grad():
        lo32, hi32 = deeppoly_output_bounds(g32, S)
        lo64, hi64 = deeppoly_output_bounds(g64, S)
        for k in range(2):
            x = torch.tensor(rng.uniform(S.lower[k].numpy(), S.upper[k].numpy(), (20000, g32.n_inputs)))
            y = g32.forward(x)
            assert bool((y >= lo32[k] - 1e-9).all() and (y <= hi32[k] + 1e-9).all())
    width = float((hi64 - lo64).max())
    assert float((lo32 - lo64).max()) <= 1e-6 * width and float((hi64 - hi32).max()) <= 1e-6 * width


def test_arithmetic_choice():
    g = random_nets.conv_net(0)
    tiny = next(n.op for n in g.nodes if isinstance(n.op, ops.Conv))
    assert not in_float32(g, tiny) and in_float32(with_arithmetic(g, "float32"), tiny)  # auto: too small to pay
    conv = _conv(np.random.default_rng(0), cin=16, cout=32, hw=16)  # 32 x 9 x 16 x 16 x 16 = 1.2M per row
    small = ops.Dense(np.ones((10, 10)), None)
    big = ops.Dense(np.ones((2048, 2048)), None)
    assert in_float32(g, conv) and not in_float32(g, small) and in_float32(g, big)  # auto
    assert not in_float32(with_precision(g, "float64"), conv) and not in_float32(with_precision(g, "exact"), conv)
    assert in_float32(with_arithmetic(with_precision(g, "exact"), "float32"), conv)
    assert not in_float32(with_arithmetic(g, "float64"), conv)
    assert in_float32(with_arithmetic(g, "float32"), small)
    with pytest.raises(ValueError, match="unknown arithmetic"):
        with_arithmetic(g, "float16")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # bfloat16 products would not be float32
        assert not in_float32(with_arithmetic(g, "float32"), conv)
    finally:
        torch.set_float32_matmul_precision(old)


TRAPS = [("cancel", 0), ("deep", 0), ("conv", 0), ("float64", 0)]


@pytest.mark.parametrize("family,seed", TRAPS)
@pytest.mark.parametrize("backend", ["deeppoly", "alpha", "bab"])
def test_no_trap_proven_in_float32_arithmetic(tmp_path, family, seed, backend):
    """The floating-point traps (tests/helpers/fp_traps.py) with every product in float32: never
    ``unsat``, a ``sat`` witness violates in onnxruntime, and the output bounds contain onnxruntime's
    output at the trap point."""
    import certkit
    from certkit.bounds.fperror import FLOAT32, round_input_set
    from certkit.model import Model
    from tests.helpers.fp_traps import ort_outputs
    from tests.test_float_soundness import trap_files

    trap, onnx_path, spec_path = trap_files(tmp_path, family, seed)
    loaded = certkit.load_model(onnx_path)
    model = Model(with_arithmetic(loaded.graph, "float32"), str(onnx_path))
    spec = certkit.load_spec(spec_path, model)
    res = certkit.certify(model, spec, backend, timeout=10)
    assert res.verdict != "unsat", (trap.name, backend, res.stage)
    if res.verdict == "sat":
        assert ort_outputs(trap.model, res.witness.x[None])[0] >= trap.threshold
    S = round_input_set(InputSet.box(trap.lower, trap.upper), FLOAT32)
    lo, hi = deeppoly_output_bounds(model.graph, S)
    y = ort_outputs(trap.model, trap.witness[None])
    assert float(lo[0, 0]) <= y.min() and y.max() <= float(hi[0, 0])


def test_cli_arithmetic(tmp_path, capsys):
    """``--arithmetic`` on ``bounds`` and ``certify``: recorded in the JSON, the same list as the module's."""
    import json

    from certkit import cli
    from certkit.bounds.products32 import ARITHMETICS
    from tests.test_float_soundness import trap_files

    assert cli.ARITHMETICS == ARITHMETICS
    _, onnx_path, spec_path = trap_files(tmp_path, "conv", 0)
    out = tmp_path / "b.json"
    assert cli.main(["bounds", str(onnx_path), str(spec_path), "--arithmetic", "float32", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["arithmetic"] == "float32"
    cert = tmp_path / "c.json"
    assert cli.main(["certify", str(onnx_path), str(spec_path), "--arithmetic", "float64", "--timeout", "10",
                     "--json", str(cert)]) == 0
    assert json.loads(cert.read_text())["options"]["arithmetic"] == "float64"
    assert "unsat" not in capsys.readouterr().out.split()
    assert cli.main(["bounds", str(onnx_path), str(spec_path), "--arithmetic", "float16"]) != 0


@pytest.mark.parametrize("scale", [1e18, 1e30, 3e38])
def test_float32_products_near_overflow_and_nan(scale):
    """Weights large enough that the coefficients or the values overflow float32 (and, at 3e38, the
    model itself): no NaN bound, every bound still below/above the float64 reference at sampled points,
    and an infinite bound where the values may overflow; NaN coefficients fall back to float64."""
    rng = np.random.default_rng(4)
    b = random_nets.Builder((1, 4), rng)
    x = b.add(ops.Dense(rng.standard_normal((8, 4)) * scale, rng.standard_normal(8)), 0, (1, 8))
    x = b.act(x, "relu")
    x = b.add(ops.Dense(rng.standard_normal((8, 8)) * scale, None), x, (1, 8))
    x = b.act(x, "relu")
    b.add(ops.Dense(rng.standard_normal((3, 8)), None), x, (1, 3))
    g = with_arithmetic(b.graph(), "float32")
    S = InputSet.box(np.zeros(4), np.full(4, 0.5))
    with torch.no_grad():
        lo, hi = deeppoly_output_bounds(g, S)
        assert not bool(torch.isnan(lo).any() or torch.isnan(hi).any())
        y = g.forward(torch.tensor(rng.uniform(0, 0.5, (5000, 4))))
        assert bool((y >= lo[0] - 1e-9 * y.abs()).all() and (y <= hi[0] + 1e-9 * y.abs()).all())
        if scale > 1e37:
            assert not bool(torch.isfinite(hi).all())
    op = ops.Dense(np.ones((3, 2)), None)
    out, in32 = product(lambda a: op.backward(a)[0], torch.tensor([[[float("nan"), 1.0, 2.0]]], dtype=D))
    assert not in32  # recomputed in float64 (and the NaN is there for the bound's own NaN handling)
