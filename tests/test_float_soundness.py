"""Floating-point soundness (DESIGN.md section 2, certkit.bounds.fperror; issue "Trust").

Every verdict is about the model as onnxruntime computes it. These tests try to break that:
trap nets whose real-valued output is 0 while onnxruntime's is not (tests/helpers/fp_traps.py)
must never get ``unsat`` from any backend; the error terms must bound the measured difference
between onnxruntime and certkit's float64 reference on sampled points; NaN and infinite bounds
must never close anything; the verdict gate must refuse incomplete proofs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import certkit
from certkit.bounds.deeppoly import deeppoly_output_bounds
from certkit.bounds.forward import forward_bounds
from certkit.bounds.fperror import (EXACT, FLOAT32, propagated_error, round_input_set, round_outward,
                                    with_precision)
from certkit.bounds.interval import interval_bounds
from certkit.model import Model
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from certkit.spec.vnnlib import parse_vnnlib
from certkit.tolerances import gamma
from certkit.verify import gate
from certkit.verify.proof import ProofTree
from tests.helpers.fp_traps import FAMILIES, make_trap, ort_outputs

BACKENDS = ("interval", "forward", "deeppoly", "alpha", "bab", "milp", "auto")


def trap_files(tmp_path, family: str, seed: int):
    trap = make_trap(family, seed, samples=400)
    assert trap is not None, (family, seed)
    onnx_path = tmp_path / f"{trap.name}.onnx"
    onnx_path.write_bytes(trap.model.SerializeToString())
    spec_path = tmp_path / f"{trap.name}.vnnlib"
    spec_path.write_text(trap.vnnlib())
    return trap, onnx_path, spec_path


TRAPS = [("cancel", 0), ("cancel", 1), ("deep", 0), ("conv", 0), ("float64", 0)]


@pytest.mark.parametrize("family,seed", [t for t in TRAPS if t[0] != "float64"])
def test_trap_is_a_trap(tmp_path, family, seed):
    """The real-valued network satisfies the property (certkit's analysis without the model's
    error terms proves it), while onnxruntime violates it at the recorded point. (Not for the
    float64 family: with magnitudes of 1e16 certkit's own float64 arithmetic is too coarse to
    prove even the real-valued property, and it says so by not proving it.)"""
    trap, onnx_path, spec_path = trap_files(tmp_path, family, seed)
    assert ort_outputs(trap.model, trap.witness[None])[0] >= trap.threshold
    model = certkit.load_model(onnx_path)
    exact = Model(with_precision(model.graph, "exact"), str(onnx_path))
    spec = parse_vnnlib(str(spec_path), model.n_inputs, model.n_outputs)
    assert certkit.certify(exact, spec, "deeppoly", timeout=20).verdict == "unsat"


@pytest.mark.parametrize("family,seed", TRAPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_backend_proves_a_trap(tmp_path, family, seed, backend):
    trap, onnx_path, spec_path = trap_files(tmp_path, family, seed)
    model = certkit.load_model(onnx_path)
    spec = certkit.load_spec(spec_path, model)
    res = certkit.certify(model, spec, backend, timeout=10)
    assert res.verdict != "unsat", (trap.name, backend, res.stage)
    if res.verdict == "sat":
        assert ort_outputs(trap.model, res.witness.x[None])[0] >= trap.threshold


@pytest.mark.parametrize("family,seed", TRAPS)
def test_bounds_contain_onnxruntime(tmp_path, family, seed):
    """Interval, DeepPoly (with and without reference bounds) and forward-mode output bounds contain onnxruntime's outputs at the trap point and on
    random points; the propagated error bounds |onnxruntime - float64 reference|."""
    trap, onnx_path, _ = trap_files(tmp_path, family, seed)
    g = certkit.load_model(onnx_path).graph
    S = round_input_set(InputSet.box(trap.lower, trap.upper), FLOAT32)
    rng = np.random.default_rng(seed)
    xs = np.concatenate([trap.witness[None], rng.uniform(0, 1, (64, len(trap.lower)))]).astype(trap.witness.dtype)
    ys = ort_outputs(trap.model, xs)
    lo, hi = interval_bounds(g, S)[g.output]
    assert (lo[0, 0] <= ys.min()) and (ys.max() <= hi[0, 0])
    dlo, dhi = deeppoly_output_bounds(g, S)
    assert (dlo[0, 0] <= ys.min()) and (ys.max() <= dhi[0, 0])
    for intersect in (True, False):  # the reference bounds (deeppoly+reference) carry the error terms too
        rlo, rhi = deeppoly_output_bounds(g, S, intersect=intersect, reference=True)
        assert (rlo[0, 0] <= ys.min()) and (ys.max() <= rhi[0, 0]), (trap.name, intersect)
    flo, fhi = forward_bounds(g, S)[g.output]  # forward mode's slack carries them as well
    assert (flo[0, 0] <= ys.min()) and (ys.max() <= fhi[0, 0]), (trap.name, "forward")
    E, E2 = propagated_error(g, S)
    ref = g(xs.astype(np.float64))[:, 0]
    assert np.all(np.abs(ys - ref) <= E[0, 0].item()), (np.abs(ys - ref).max(), E)
    assert np.all(np.abs(ys - ref) <= E2[0].item())


def test_rounding_bound_of_dot_products():
    """|fl32(w.x + b) - (w.x + b)| <= gamma_{n+1} (|w|.|x| + |b|) for random orders and sizes
    (numpy's float32 matmul, and naive left-to-right sums in float32)."""
    rng = np.random.default_rng(0)
    u = 2.0 ** -24
    for n in (3, 50, 784, 4096):
        w = (rng.standard_normal((16, n)) * 10.0 ** rng.integers(-3, 5, (16, n))).astype(np.float32)
        x = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(16).astype(np.float32) * 1e4
        exact = w.astype(np.float64) @ x.astype(np.float64) + b
        bound = gamma(n + 1, u) * (np.abs(w).astype(np.float64) @ np.abs(x) + np.abs(b))
        blas = (w @ x + b).astype(np.float64)
        assert np.all(np.abs(blas - exact) <= bound)
        naive = np.zeros(16, np.float32)
        for k in rng.permutation(n):
            naive = naive + w[:, k] * x[k]
        naive = (naive + b).astype(np.float64)
        assert np.all(np.abs(naive - exact) <= bound)


def test_dot_product_rule_at_points():
    """The sharper rule of fperror._dot (gamma_n max(P, N) + ...) holds for float32 sums in many
    orders, on terms of mixed signs and of one sign, with onnxruntime's Gemm among them."""
    import torch as th

    from certkit.bounds.fperror import FLOAT32, node_error
    from certkit.graph import ops as irops
    from tests.helpers.fp_traps import ort_outputs

    rng = np.random.default_rng(3)
    for n, sign in ((64, 0), (784, 0), (784, 1), (2048, -1)):
        w = rng.standard_normal((8, n)).astype(np.float32)
        if sign:
            w = (np.abs(w) * sign).astype(np.float32)
        b = (rng.standard_normal(8) * 100).astype(np.float32)
        x = rng.uniform(0, 3, n).astype(np.float32)
        op = irops.Dense(w.astype(np.float64), b.astype(np.float64))
        xt = th.as_tensor(x.astype(np.float64))[None]
        err = node_error(op, [(xt, xt)], None, FLOAT32, n + 16)[0].numpy()
        exact = w.astype(np.float64) @ x.astype(np.float64) + b
        sums = [(w @ x + b).astype(np.float64)]
        for _ in range(3):
            acc = np.zeros(8, np.float32)
            for k in rng.permutation(n):
                acc = acc + w[:, k] * x[k]
            sums.append((acc + b).astype(np.float64))
        acc = b.copy()  # the bias first, then descending terms: large partial sums
        for k in np.argsort(-np.abs(w[0] * x)):
            acc = acc + w[:, k] * x[k]
        sums.append(acc.astype(np.float64))
        from onnx import TensorProto, helper, numpy_helper
        g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        import onnxruntime as ort
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        sums.append(sess.run(None, {"x": x[None]})[0][0].astype(np.float64))
        for s_ in sums:
            assert np.all(np.abs(s_ - exact) <= err), (n, sign, np.abs(s_ - exact).max(), err.min())


def _one_node_model(node, x_shape, inits: dict):
    from onnx import TensorProto, helper, numpy_helper
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _conv_transpose_model(w: np.ndarray, b: np.ndarray, side: int, strides: int, pads: int, dilations: int = 1):
    from onnx import helper
    node = helper.make_node("ConvTranspose", ["x", "W", "b"], ["y"], strides=[strides] * 2, pads=[pads] * 4,
                            dilations=[dilations] * 2)
    return _one_node_model(node, (1, w.shape[0], side, side), {"W": w, "b": b})


@pytest.mark.parametrize("k,s,pads,dil", [(4, 2, 1, 1), (3, 2, 0, 1), (5, 3, 2, 1), (3, 1, 1, 1), (2, 2, 0, 1),
                                          (4, 4, 0, 1), (3, 2, 1, 2), (3, 3, 0, 2)])
def test_conv_transpose_fan_in_bounds_the_products_of_an_output(tmp_path, k, s, pads, dil):
    """ConvTranspose.fan_in (the n of the rounding rule) is at least the number of products onnxruntime
    sums into any one output: with ones for the kernel and the input, the output counts them. Without
    dilation the bound is attained (stride 2, kernel 4: 2 x 2 taps of the 16)."""
    import onnxruntime as ort

    cin = 3
    rng = np.random.default_rng(k * 100 + s * 10 + dil)
    for sparse in (False, True):  # the kernel's zeros are structural zeros too
        w = np.ones((cin, 2, k, k), np.float32)
        if sparse:
            w = (rng.uniform(size=w.shape) < 0.4).astype(np.float32)
        m = _conv_transpose_model(w, np.zeros(2, np.float32), 7, s, pads, dil)
        counts = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": np.ones((1, cin, 7, 7), np.float32)})[0]
        path = tmp_path / "ct.onnx"
        path.write_bytes(m.SerializeToString())
        op = [n.op for n in certkit.load_model(path).graph.nodes if type(n.op).__name__ == "ConvTranspose"][0]
        assert op.fan_in >= counts.max()
        if dil == 1:
            assert op.fan_in == counts.max()
            if not sparse:
                assert op.fan_in == cin * min(k, -(-k // s)) ** 2


def test_pruned_weights_rounding_rule_against_onnxruntime(tmp_path):
    """A zero weight's product is an exact zero and adds no rounding, so the fan-in of the rounding rule
    is the most nonzero weights of an output (ops.nonzero_fan_in): 8 of 512 for a block-diagonal Gemm,
    the surviving taps of a pruned Conv. The rule with that n bounds onnxruntime's float32 error on
    one-signed terms of mixed magnitudes, where partial sums are largest."""
    import onnxruntime as ort
    from onnx import helper

    from certkit.bounds.fperror import node_error, own_steps
    from certkit.graph import ops as irops

    rng = np.random.default_rng(11)
    big = lambda shape: (rng.uniform(0, 1, shape) * 10.0 ** rng.integers(-2, 4, shape)).astype(np.float32)
    # block-diagonal Gemm: 64 blocks of 8 x 8
    W = np.zeros((512, 512), np.float32)
    for blk in range(64):
        W[blk * 8:(blk + 1) * 8, blk * 8:(blk + 1) * 8] = big((8, 8))
    b = (rng.standard_normal(512) * 100).astype(np.float32)
    x = rng.uniform(0, 3, (1, 512)).astype(np.float32)
    gemm = _one_node_model(helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1), (1, 512), {"W": W, "b": b})
    # pruned Conv: 64 input channels, 3x3, 90% of the kernel zero
    K = big((8, 64, 3, 3)) * (rng.uniform(size=(8, 64, 3, 3)) < 0.1)
    cb = (rng.standard_normal(8) * 100).astype(np.float32)
    xc = rng.uniform(0, 3, (1, 64, 6, 6)).astype(np.float32)
    conv = _one_node_model(helper.make_node("Conv", ["x", "K", "cb"], ["y"], pads=[1] * 4), (1, 64, 6, 6),
                           {"K": K.astype(np.float32), "cb": cb})
    for model, xin, kind in ((gemm, x, irops.Dense), (conv, xc, irops.Conv)):
        path = tmp_path / "m.onnx"
        path.write_bytes(model.SerializeToString())
        op = [n.op for n in certkit.load_model(path).graph.nodes if isinstance(n.op, kind)][0]
        w = np.asarray(op.weight)
        full = w.shape[1] if kind is irops.Dense else int(np.prod(w.shape[1:]))
        assert op.fan_in == int((w != 0).reshape(w.shape[0], -1).sum(1).max()) < full / 5
        assert own_steps(op) == op.fan_in + 1 + 4 + op.fp_extra
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": xin})[0].astype(np.float64).reshape(-1)
        xt = torch.as_tensor(xin.astype(np.float64)).reshape(1, -1)
        exact = op.apply(xt)[0].numpy() + (0 if op.bias_vector() is None else np.asarray(op.bias_vector()))
        err = node_error(op, [(xt, xt)], None, FLOAT32, full + 16)[0].numpy()
        ratio = float((np.abs(got - exact) / err).max())
        assert 0 < ratio <= 1, (kind.__name__, ratio)


def test_conv_transpose_rounding_rule_against_onnxruntime():
    """The rounding rule with ConvTranspose's fan-in (the taps that reach an output, a quarter of the
    kernel at stride 2) bounds onnxruntime's float32 error on one-signed terms of mixed magnitudes,
    where the partial sums are largest, at every output."""
    import onnxruntime as ort
    import torch as th

    from certkit.bounds.fperror import node_error
    from certkit.graph import ops as irops

    rng = np.random.default_rng(5)
    for sign in (1, 0):
        cin, cout, k, side = 256, 4, 4, 6
        w = (rng.uniform(0, 1, (cin, cout, k, k)) * 10.0 ** rng.integers(-2, 3, (cin, cout, k, k))).astype(np.float32)
        if not sign:
            w = (w * rng.choice([-1, 1], w.shape)).astype(np.float32)
        b = (rng.standard_normal(cout) * 100).astype(np.float32)
        x = rng.uniform(0, 3, (1, cin, side, side)).astype(np.float32)
        m = _conv_transpose_model(w, b, side, 2, 1)
        got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        exact = th.nn.functional.conv_transpose2d(th.as_tensor(x, dtype=th.float64), th.as_tensor(w, dtype=th.float64),
                                                  th.as_tensor(b, dtype=th.float64), 2, 1).numpy()
        op = irops.ConvTranspose(w.astype(np.float64), b.astype(np.float64), (cin, side, side), exact.shape[1:],
                                 (2, 2), (1, 1))
        assert op.fan_in == cin * 4
        xt = th.as_tensor(x.astype(np.float64)).reshape(1, -1)
        err = node_error(op, [(xt, xt)], None, FLOAT32, op.fan_in + 16)[0].numpy().reshape(exact.shape[1:])
        diff = np.abs(got[0].astype(np.float64) - exact[0])
        assert np.all(diff <= err), (sign, float((diff / err).max()))


def test_round_outward():
    lo, hi = round_outward(np.array([0.1, -0.1, 1.0]), np.array([0.2, 0.3, 1.0]), FLOAT32)
    assert np.all(lo <= [0.1, -0.1, 1.0]) and np.all(hi >= [0.2, 0.3, 1.0])
    assert np.array_equal(lo.astype(np.float32).astype(np.float64), lo)
    assert lo[2] == hi[2] == 1.0  # representable end points stay
    # every float64 point of the box rounds (to nearest float32) into the rounded box
    xs = np.random.default_rng(1).uniform(0.1, 0.2, 10000)
    r = xs.astype(np.float32).astype(np.float64)
    assert np.all((r >= lo[0]) & (r <= hi[0]))
    assert round_outward(np.array([0.1]), np.array([0.2]), EXACT)[0][0] == 0.1


def test_overflow_gives_no_finite_bound(tmp_path):
    """Weights near the float32 maximum: the computed values may overflow, so no bound is finite
    and nothing is proven, and the run prints no warnings."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    W = np.full((2, 2), 3e38, np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["y"])],
                          "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                          [numpy_helper.from_array(W, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = import_model(m)
    lo, hi = interval_bounds(graph, InputSet.box(np.zeros(2), np.ones(2)))[graph.output]
    assert not torch.isfinite(hi).all()
    low = gate.domain_value(torch.tensor([[float("nan")]]), torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64), 1)
    assert not bool(gate.closed(low)[0])
    onnx.checker.check_model(m)


def test_gate_refuses_non_finite_and_incomplete_proofs():
    owner = np.array([0, 1])
    ok = gate.Proof("bounds", "deeppoly", np.array([1.0, 2.0]), np.array([1e-12, 1e-12]), owner)
    assert gate.check_proof(ok, 2)[0]
    for lower in ([np.nan, 2.0], [np.inf, 2.0], [1.0, -0.5], [1e-13, 2.0]):
        bad = gate.Proof("bounds", "deeppoly", np.array(lower), np.array([1e-12, 1e-12]), owner)
        assert not gate.check_proof(bad, 2)[0], lower
    leaf = ProofTree("input_split", np.array([[-1, -1]]), np.array([0.5]), ("deeppoly", "alpha"))
    split = ProofTree("input_split", np.array([[0, 1], [-1, -1]]), np.array([0.5]), ("deeppoly", "alpha"))
    assert gate.check_proof(gate.Proof("input_split", "bab", trees=[leaf], groups=[[0, 1]]), 2)[0]
    assert not gate.check_proof(gate.Proof("input_split", "bab", trees=[split], groups=[[0, 1]]), 2)[0]
    assert not gate.check_proof(gate.Proof("input_split", "bab", trees=[leaf], groups=[[0]]), 2)[0]
    nan_leaf = ProofTree("input_split", np.array([[-1, -1]]), np.array([np.nan]), ("deeppoly", "alpha"))
    assert not gate.check_proof(gate.Proof("input_split", "bab", trees=[nan_leaf], groups=[[0, 1]]), 2)[0]
    milp = gate.Proof("milp", "milp", milp={"bounds": [0.1, np.nan], "tolerances": [0.01, 0.01],
                                            "methods": ["milp", "milp"]})
    assert not gate.check_proof(milp, 2)[0]


def test_bounds_match_exact_analysis_up_to_the_error_terms():
    """On an ordinary net the float32 error terms cost little: the bounds differ from the exact
    analysis by at most 1e-3 of their width (DeepPoly, a random box)."""
    from tests.helpers.random_nets import ALL_NETS

    g = ALL_NETS["mlp_mixed"](0)
    S = InputSet.box(-np.ones(g.n_inputs), np.ones(g.n_inputs))
    lo32, hi32 = deeppoly_output_bounds(g, S)
    lo, hi = deeppoly_output_bounds(with_precision(g, "exact"), S)
    width = (hi - lo).clamp(min=1e-9)
    assert torch.all(lo32 <= lo + 1e-12) and torch.all(hi32 >= hi - 1e-12)
    assert float(((lo - lo32) / width).max()) < 1e-3 and float(((hi32 - hi) / width).max()) < 1e-3


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_build(family):
    trap = make_trap(family, 0, samples=200)
    assert trap is not None and trap.output >= trap.threshold > 0


@pytest.mark.parametrize("seed", range(3))
def test_milp_alone_never_proves_a_cancellation_trap(tmp_path, seed):
    """The cancellation trap (weights 1e4, biases 1e5) on 24 inputs: ``auto`` hands it to the MILP alone
    (tiny net, 17-64 free inputs), which must not answer ``unsat``; a ``sat`` holds in onnxruntime."""
    from certkit.verify.certify import queries_of
    from certkit.verify.procedures import milp_alone

    trap = make_trap("cancel", seed, samples=400, n_in=24)
    assert trap is not None
    onnx_path, spec_path = tmp_path / "t.onnx", tmp_path / "t.vnnlib"
    onnx_path.write_bytes(trap.model.SerializeToString())
    spec_path.write_text(trap.vnnlib())
    model = certkit.load_model(onnx_path)
    spec = certkit.load_spec(spec_path, model)
    assert milp_alone(queries_of(model, spec)[0])
    res = certkit.certify(model, spec, "auto", timeout=10)
    assert res.verdict != "unsat", res.stage
    if res.verdict == "sat":
        assert ort_outputs(trap.model, res.witness.x[None])[0] >= trap.threshold


def test_a_max_group_is_charged_its_own_groups_magnitudes():
    """The float64 allowance of a MaxGroup output uses its own group's inputs (``fperror._max``): a softmax of
    logits hundreds apart -- lowered with guarded sums of ``e^78.9`` beside denominators ``max(sum, 1)`` of 1 --
    has its rows (the back-substituted bounds, before any interval meets them) within 1e-4 at a point, holding for
    onnxruntime there. With every group charged
    the whole input's largest magnitude they were -1e18 (the fuzzer's sharp-attention nets)."""
    from onnx import helper

    from tests.helpers.onnx_builders import X, graph_model, ort_run

    w = np.array([[1.0, 0.0], [300.0, 0.0], [-300.0, 1.0], [0.0, 2.0]])
    m = graph_model([helper.make_node("MatMul", [X, "W"], ["z"]), helper.make_node("Softmax", ["z"], ["Y"], axis=1)],
                    (1, 2), consts={"W": w.T})
    from certkit.bounds.deeppoly import BoundState

    graph = import_model(m)
    x = np.array([[1.0, 0.5]], np.float32)
    rows = torch.tensor([[[-1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]]], dtype=torch.float64)  # +-(Y_1 - Y_0)
    state = BoundState(graph, round_input_set(InputSet.box(x, x), FLOAT32), intersect=True)
    low = state.lower_of(graph.output, rows)[0].numpy()
    ref = ort_run(m, x)[0].astype(np.float64)
    assert low[0] <= ref[1] - ref[0] <= -low[1]
    assert -low[1] - low[0] < 1e-4


def test_group_max_takes_each_outputs_own_group():
    """``fperror.group_max``: per output of a MaxGroup (padded groups) or a MaxMin (pairs, permuted outputs),
    the largest input value of its own group -- against a loop over the groups."""
    from certkit.bounds.fperror import group_max
    from certkit.graph import ops

    v = torch.tensor([[1.0, 5.0, 2.0, 9.0, 0.5, 3.0]], dtype=torch.float64)
    mg = ops.MaxGroup(index=np.array([[0, 1, -1], [2, 4, 5], [3, -1, -1]]))
    assert group_max(mg, v).tolist() == [[5.0, 3.0, 9.0]]
    mm = ops.MaxMin(a=np.array([0, 2, 4]), b=np.array([1, 3, 5]), perm=np.array([3, 0, 4, 1, 5, 2]))
    plain = [max(v[0, a], v[0, b]).item() for a, b in zip(mm.a, mm.b)] * 2  # maxima, then minima
    assert group_max(mm, v).tolist() == [[plain[k] for k in mm.perm]]
