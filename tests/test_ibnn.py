"""Implicit-bias layers (paper 003; DESIGN.md section 8) in the importer, the bounds, the Lipschitz
bounds and ``certkit ibnn``: every derived statement tested numerically.

* the canonical ONNX function is one :class:`ImplicitLayer`, equal to onnxruntime; an edited body or
  metadata that disagree are inlined and analysed op by op;
* the interval and DeepPoly enclosures contain onnxruntime's float32 values at 10^4 sampled inputs
  per configuration (contraction, damping, no contraction at all), and the fixed point itself
  within the truncation bound when ``q < 1``;
* the Lipschitz bounds lie above every sampled Jacobian norm, entrywise bound included;
* thresholds: below them one fixed point (Krawczyk certifies it); above the contraction and energy
  thresholds two distinct fixed points certified by Krawczyk; with lambda < 0 and large, a unique
  fixed point (energy) where plain iteration oscillates and damping converges;
* ``certkit ibnn`` reports and refuses bad input with one line.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from certkit.bounds.deeppoly import deeppoly_output_bounds
from certkit.bounds.interval import interval_bounds
from certkit.graph.implicit import ImplicitLayer
from certkit.ibnn import _krawczyk, enclose_fixed_point, layer_report
from certkit.onnx.ibnn import DOMAIN, META_KEY, IBNNParams, attach, recognise
from certkit.onnx.importer import load_onnx
from certkit.spec.sets import InputSet

ROOT = Path(__file__).resolve().parents[1]


def _uniform(m: int) -> np.ndarray:
    w = np.full((m, m), 1.0 / (m - 1), np.float32)
    np.fill_diagonal(w, 0.0)
    return w


def ibnn_onnx(path: Path, q: float = 0.8, eta: float = 1.0, K: int = 20, n_in: int = 4, n: int = 6,
              head: bool = True, seed: int = 0) -> Path:
    """x -> MatMul + Add -> IBNN (uniform kernel, alpha 10, beta 1, lambda for contraction number q)
    [-> Relu -> MatMul 3]."""
    rng = np.random.default_rng(seed)
    M = rng.normal(0, 1.5, (n_in, n)).astype(np.float32)
    b = rng.normal(0, 0.5, n).astype(np.float32)
    lam = q / 20.0
    p = IBNNParams(lam=lam, alpha=10.0, beta=1.0, eta=eta, K=K, tol=1e-6, groups=1, m=n, shape=(1, n),
                   kernel="uniform")
    nodes = [helper.make_node("MatMul", ["x", "M"], ["xm"]), helper.make_node("Add", ["xm", "b"], ["a"]),
             helper.make_node("IBNN_0", ["a", "w"], ["z"], domain=DOMAIN)]
    inits = [numpy_helper.from_array(M, "M"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(_uniform(n), "w")]
    out, n_out = "z", n
    if head:
        W2 = rng.normal(0, 1.0, (n, 3)).astype(np.float32)
        nodes += [helper.make_node("Relu", ["z"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
        inits.append(numpy_helper.from_array(W2, "W2"))
        out, n_out = "y", 3
    g = helper.make_graph(nodes, "ibnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    attach(model, {"IBNN_0": p})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _ort(path: Path, X: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[None].astype(np.float32)})[0] for x in X])


def _implicit(graph) -> ImplicitLayer:
    (op,) = [n.op for n in graph.nodes if isinstance(n.op, ImplicitLayer)]
    return op


# --------------------------------------------------------------------------- import


def test_canonical_function_is_one_layer_equal_to_onnxruntime(tmp_path):
    path = ibnn_onnx(tmp_path / "m.onnx")
    g = load_onnx(path)
    op = _implicit(g)
    assert (op.K, op.groups, op.m, op.alpha) == (20, 1, 6, 10.0) and op.c == np.float32(0.04)
    assert g.meta["ibnn"] == {"implicit": ["IBNN_0"], "inlined": {}}
    X = np.random.default_rng(1).uniform(-1, 1, (1000, 4)).astype(np.float32)
    assert np.abs(g(X.astype(np.float64)) - _ort(path, X)).max() < 1e-5


def _edit(path: Path, what: str) -> Path:
    m = onnx.load(path)
    if what == "body":  # alpha 10 -> 11 inside the function
        for node in m.functions[0].node:
            if node.output[0] == "alpha":
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(11.0, np.float32), "alpha_v"))
    elif what == "metadata":  # the record says lambda 0.03: the body's c = 0.04 disagrees
        e = next(e for e in m.metadata_props if e.key == META_KEY)
        d = json.loads(e.value)
        d["layers"]["IBNN_0"]["lam"] = 0.03
        e.value = json.dumps(d)
    out = path.with_name(f"{what}.onnx")
    onnx.save(m, out)
    return out


@pytest.mark.parametrize("what", ["body", "metadata"])
def test_edited_layers_are_inlined_and_analysed_as_computed(tmp_path, what):
    path = _edit(ibnn_onnx(tmp_path / "m.onnx"), what)
    accepted, refused = recognise(onnx.load(path))
    assert not accepted and "canonical" in refused["IBNN_0"]
    g = load_onnx(path)
    assert not any(isinstance(n.op, ImplicitLayer) for n in g.nodes) and "IBNN_0" in g.meta["ibnn"]["inlined"]
    X = np.random.default_rng(2).uniform(-1, 1, (300, 4)).astype(np.float32)
    assert np.abs(g(X.astype(np.float64)) - _ort(path, X)).max() < 1e-4
    # the inlined ops' bounds contain onnxruntime's values too
    S = InputSet(torch.full((1, 4), -0.2, dtype=torch.float64), torch.full((1, 4), 0.2, dtype=torch.float64))
    lo, hi = interval_bounds(g, S)[g.output]
    Y = _ort(path, np.random.default_rng(3).uniform(-0.2, 0.2, (500, 4)))
    assert (Y >= lo.numpy() - 1e-9).all() and (Y <= hi.numpy() + 1e-9).all()


# --------------------------------------------------------------------------- enclosures


def _samples(lo: np.ndarray, hi: np.ndarray, n: int, rng) -> np.ndarray:
    t = np.concatenate([rng.integers(0, 2, (n // 4, lo.size)).astype(float), rng.uniform(0, 1, (n - n // 4, lo.size))])
    return (lo + t * (hi - lo)).astype(np.float32)


@pytest.mark.parametrize("q,eta,K,width", [(0.5, 1.0, 20, 0.5), (0.95, 1.0, 40, 0.2), (0.9, 0.5, 30, 0.05),
                                           (3.0, 1.0, 8, 0.3), (0.8, 1.0, 1, 0.3), (0.8, 1.0, 20, 1e-4)])
def test_enclosures_contain_onnxruntime_values(tmp_path, q, eta, K, width):
    """Interval and DeepPoly bounds of z_K over a box contain onnxruntime's float32 z_K at 10^4 points
    (a tiny box too, where the float32 terms show); with q < 1 the fixed point lies within them up
    to the truncation bound."""
    path = ibnn_onnx(tmp_path / "m.onnx", q=q, eta=eta, K=K, head=False)
    g = load_onnx(path)
    op = _implicit(g)
    rng = np.random.default_rng(int(q * 100) + K)
    c = rng.uniform(-0.5, 0.5, 4)
    lo, hi = c - width, c + width
    S = InputSet(torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    X = _samples(lo, hi, 10_000, rng)
    Y = _ort(path, X)
    for name, (bl, bh) in {"interval": interval_bounds(g, S)[g.output],
                           "deeppoly": deeppoly_output_bounds(g, S)}.items():
        bl, bh = bl.numpy()[0], bh.numpy()[0]
        assert (Y >= bl).all() and (Y <= bh).all(), (name, float((bl - Y).max()), float((Y - bh).max()))
        if q < 1.0:
            a = torch.as_tensor(X.astype(np.float64)) @ torch.as_tensor(onnx_weights(path)[0]) \
                + torch.as_tensor(onnx_weights(path)[1])
            zs, _ = op.fixed_point(a[:500])
            t = op.truncation() + 1e-9
            assert (zs.numpy() >= bl - t).all() and (zs.numpy() <= bh + t).all()


def onnx_weights(path: Path) -> tuple[np.ndarray, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    return inits["M"].astype(np.float64), inits["b"].astype(np.float64)


def test_whole_net_bounds_hold_and_certify_checks(tmp_path):
    from certkit.cli import main

    path = ibnn_onnx(tmp_path / "m.onnx")
    g = load_onnx(path)
    X = np.random.default_rng(4).uniform(0, 0.1, (2000, 4)).astype(np.float32)
    Y = _ort(path, X)
    S = InputSet(torch.zeros(1, 4, dtype=torch.float64), torch.full((1, 4), 0.1, dtype=torch.float64))
    lo, hi = deeppoly_output_bounds(g, S)
    assert (Y >= lo.numpy()).all() and (Y <= hi.numpy()).all()
    # a spec just below the sampled minimum of y_0: proved, and the certificate re-checks
    t = float(lo[0, 0]) - 0.05
    spec = tmp_path / "s.vnnlib"
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(4))
                    + "".join(f"(declare-const Y_{i} Real)\n" for i in range(3))
                    + "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))\n" for i in range(4))
                    + f"(assert (<= Y_0 {t}))\n")
    assert main(["certify", str(path), str(spec), "--json", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["verdict"] == "unsat"
    assert main(["check", str(tmp_path / "c.json")]) == 0


# --------------------------------------------------------------------------- Lipschitz


@pytest.mark.parametrize("q,eta", [(0.8, 1.0), (0.95, 0.5), (0.3, 1.0)])
def test_lipschitz_bounds_above_sampled_jacobians(tmp_path, q, eta):
    from certkit.lipschitz import lipschitz_bounds
    from certkit.lipschitz.slopes import slopes_of

    path = ibnn_onnx(tmp_path / "m.onnx", q=q, eta=eta, K=30)
    g = load_onnx(path)
    op = _implicit(g)
    block = slopes_of(op).block
    rng = np.random.default_rng(5)
    A = torch.as_tensor(rng.normal(0, 0.3, (300, op.m)))
    for a in A:
        J = torch.func.jacrev(lambda v: op.forward(v[None])[0])(a).numpy()
        assert np.abs(J).sum(1).max() <= op.lipschitz("inf") * (1 + 1e-9)
        assert np.linalg.norm(J, 2) <= op.lipschitz("2") * (1 + 1e-9)
        assert (np.abs(J) <= block + 1e-12).all()
    for norm in ("2", "inf"):
        r = lipschitz_bounds(g, norm, samples=64, lower_time=2.0)
        assert r.lower <= r.upper
        X = torch.as_tensor(rng.uniform(-1, 1, (100, 4)))
        for x in X:
            J = torch.func.jacrev(lambda v: torch.as_tensor(g.forward(v[None]))[0])(x).numpy()
            val = np.linalg.norm(J, 2) if norm == "2" else np.abs(J).sum(1).max()
            assert val <= r.upper * (1 + 1e-9)


def test_no_lipschitz_bound_without_contraction(tmp_path):
    from certkit.errors import UnsupportedOpError
    from certkit.lipschitz import lipschitz_bounds

    g = load_onnx(ibnn_onnx(tmp_path / "m.onnx", q=1.5))
    with pytest.raises(UnsupportedOpError, match="q >= 1"):
        lipschitz_bounds(g, "2", lower=False)


# --------------------------------------------------------------------------- thresholds


def _pair(c: float, eta: float = 1.0, K: int = 50) -> ImplicitLayer:
    return ImplicitLayer(c=c, alpha=10.0, eta=eta, K=K, w=np.array([[0.0, 1.0], [1.0, 0.0]]), groups=1, m=2,
                         lam=c, beta=1.0)


def _iterate(op: ImplicitLayer, a: np.ndarray, z0: np.ndarray, steps: int = 2000) -> np.ndarray:
    a3, z = torch.as_tensor(a).reshape(1, 1, -1), torch.as_tensor(z0).reshape(1, 1, -1)
    for _ in range(steps):
        z = op._step(z, a3)
    return z.reshape(-1).numpy()


def _certified(op: ImplicitLayer, a: np.ndarray, z: np.ndarray):
    H = z - a + op.c * (np.tanh(op.alpha * (z[None] - z[:, None])) * op.w).sum(1)
    return _krawczyk(op, z, H, np.full(2, 1e-15), 1e-12)


def test_below_the_thresholds_one_fixed_point():
    op = _pair(0.04)  # q = 0.8, q_E = 0.8 (Lambda = 2 for two neurons)
    rep = layer_report(op, "n")
    assert rep.contraction and rep.energy_unique
    a = np.array([0.01, -0.02])
    ends = {tuple(np.round(_iterate(op, a, z0), 12)) for z0 in np.random.default_rng(6).normal(0, 1, (20, 2))}
    assert len(ends) == 1
    assert enclose_fixed_point(op, a).radius_krawczyk is not None


def test_above_the_thresholds_two_certified_fixed_points():
    """q = 20, lambda > 0: d = z_1 - z_2 solves d = 2 c tanh(alpha d) with three roots; iteration from
    different starts ends at different points, and Krawczyk proves each the only one of its box."""
    op = _pair(1.0)
    rep = layer_report(op, "n")
    assert not rep.contraction and rep.energy_unique is False
    assert any("several fixed points" in c for c in rep.conclusions)
    a = np.zeros(2)
    z1, z2 = _iterate(op, a, np.array([0.3, -0.3])), _iterate(op, a, np.array([-0.3, 0.3]))
    assert np.abs(z1 - z2).max() > 1.0
    r1, r2 = _certified(op, a, z1), _certified(op, a, z2)
    assert r1 is not None and r2 is not None and np.abs(z1 - z2).max() > r1[1] + r2[1]


def test_negative_lambda_unique_but_plain_iteration_oscillates():
    """lambda < 0: the energy is convex, one fixed point; with |c| alpha Lambda = 10 plain iteration
    (eta = 1) oscillates, damping eta = 1/32 converges to the point Krawczyk certifies."""
    op = _pair(-0.5)
    assert layer_report(op, "n").energy_unique is True and op.q() >= 1
    a = np.array([0.3, -0.3])
    z = _iterate(op, a, a)
    step = _iterate(op, a, z, steps=1) - z
    assert np.abs(step).max() > 1e-3  # still moving after 2000 steps
    damped = _pair(-0.5, eta=1 / 32)
    zd = _iterate(damped, a, a)
    assert np.abs(_iterate(damped, a, zd, steps=1) - zd).max() < 1e-12
    assert _certified(op, a, zd) is not None


# --------------------------------------------------------------------------- CLI


def test_cli_reports_the_shipped_model(tmp_path, capsys):
    from certkit.cli import main

    model = ROOT / "models" / "ibnn_dense.onnx"
    if not model.exists():
        pytest.skip("models/ibnn_dense.onnx is built by scripts/train_ibnn.py")
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(7).uniform(0, 1, 784).astype(np.float32))
    assert main(["ibnn", str(model), "--input", str(x), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "unique by contraction: q = 0.8" in out and "Krawczyk: the only fixed point" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    (layer,) = doc["layers"]
    assert layer["contraction"] and math.isclose(layer["lipschitz_inf"], 5.0, rel_tol=1e-6)
    assert layer["at_input"]["radius_krawczyk"] < 1e-9
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(10, np.float32))
    assert main(["ibnn", str(model), "--input", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "10 values, the model takes 784" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["ibnn", str(model), "--input", str(x), "--dataset", str(x)]) == 2


@pytest.mark.parametrize("scale,q,K", [(1e5, 0.8, 20), (1.0, 50.0, 3), (3e3, 0.99, 60)])
def test_enclosures_hold_with_huge_weights_and_strong_coupling(tmp_path, scale, q, K):
    """Adversarial: pre-activations of size 1e5 (float32 rounding of the steps dominates), q = 50 (no
    contraction at all), q = 0.99 with large inputs; tiny to wide boxes: onnxruntime's values stay inside."""
    path = ibnn_onnx(tmp_path / "m.onnx", q=q, K=K, head=False)
    m = onnx.load(path)
    for t in m.graph.initializer:
        if t.name == "M":
            t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * scale).astype(np.float32), "M"))
    onnx.save(m, path)
    g = load_onnx(path)
    rng = np.random.default_rng(0)
    for width in (1e-6, 1e-3, 0.3):
        lo = rng.uniform(-0.5, 0.5, 4)
        hi = lo + width
        S = InputSet(torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
        Y = _ort(path, _samples(lo, hi, 3000, rng))
        for bl, bh in (interval_bounds(g, S)[g.output], deeppoly_output_bounds(g, S)):
            assert (Y >= bl.numpy()[0]).all() and (Y <= bh.numpy()[0]).all(), (scale, q, width)


def test_non_finite_kernel_is_a_model_error(tmp_path):
    from certkit.errors import ModelError

    path = ibnn_onnx(tmp_path / "m.onnx")
    m = onnx.load(path)
    for t in m.graph.initializer:
        if t.name == "w":
            w = numpy_helper.to_array(t).copy()
            w[0, 1] = np.nan
            t.CopyFrom(numpy_helper.from_array(w, "w"))
    onnx.save(m, path)
    with pytest.raises(ModelError, match="NaN|non-finite|not finite"):
        load_onnx(path)
