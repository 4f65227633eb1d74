"""certkit sparsify (paper 002's VNN LP): constraints, solvers, export, CLI errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from certkit.cli import main
from certkit.errors import BackendError, ModelError, UsageError
from certkit.graph import ops
from certkit.model import load_model
from certkit.sparsify import LpOptions, SolverOptions, export_onnx, prune, sparsify
from certkit.sparsify.downstream import tail_rows
from certkit.sparsify.layers import find_layers, layer_system, values
from certkit.sparsify.lp import coupled_lp, row_bounds, unit_lp, violation
from certkit.sparsify.solve import ROW_TOL, solve_lp
from certkit.solvers import solver_available
from tests.helpers.examples import SHARED
from tests.helpers.random_nets import Builder, mlp

HIGHS = SolverOptions("highs", threads=1)


def _data(g, n=40, seed=0, flip=3):
    """Inputs in [0, 1] with the net's own labels, ``flip`` of them wrong (misclassified)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, g.n_inputs))
    y = g(x).argmax(1)
    y[:flip] = (y[:flip] + 1) % g.n_outputs
    return x, y


def _conv_relu_net(seed=0):
    rng = np.random.default_rng(seed)
    b = Builder((1, 1, 6, 6), rng)
    x = b.act(b.conv(0, 3, 3, 1, (1, 1, 1, 1)), "relu")
    x = b.act(b.conv(x, 4, 3, 2, (1, 0, 0, 1), groups=1), "relu")
    x = b.act(b.dense(x, 6), "relu")
    b.dense(x, 3)
    return b.graph()


def _rows_hold(g0, g1, x, y, opts: LpOptions):
    """Every own-layer row of every re-solved layer holds on the correctly classified samples,
    with the sparsified earlier layers feeding it (paper 002, section 2.6): the reference is the
    original layer on the new inputs, a reference within 1e-7 of 0 keeping the original state."""
    ok = g0(x).argmax(1) == y
    v_old, v_new = values(g0, x[ok]), values(g1, x[ok])
    for L in find_layers(g0):
        z_ref = layer_system(g0.nodes[L.node].op, v_new[g0.nodes[L.node].inputs[0]]).pre_activations()
        act = np.where(np.abs(z_ref) <= 1e-7, v_old[L.node] > 0, z_ref > 0)
        lo, hi = row_bounds(z_ref, opts, act)
        assert violation(v_new[L.node], lo, hi).max() <= ROW_TOL


@pytest.mark.parametrize("mode,eps", [("relative", 0.0), ("additive", 0.0), ("relative", 0.2), ("additive", 0.3)])
def test_per_unit_lp_keeps_every_constraint(mode, eps):
    g = mlp("relu", 3, (6, 12, 10, 4))
    x, y = _data(g)
    opts = LpOptions(eps, mode)
    r = sparsify(g, x, y, lp=opts, solver=HIGHS)
    _rows_hold(g, r.graph, x, y, opts)
    assert r.check.predictions_kept == r.check.samples == 37
    if eps == 0:  # outputs unchanged: every later state and prediction is kept
        assert r.check.ok
    for L in r.layers:
        assert L.nnz_after <= L.nnz_before and not L.failures and L.method == "per-unit LP"
    assert sum(L.nnz_after for L in r.layers) < sum(L.nnz_before for L in r.layers)


def test_all_samples_keeps_every_prediction():
    g = mlp("relu", 3, (6, 12, 10, 4))
    x, y = _data(g, flip=5)
    r = sparsify(g, x, y, solver=HIGHS, all_samples=True)
    assert r.check.ok and r.check.samples == 40
    assert (r.graph(x).argmax(1) == g(x).argmax(1)).all()


def test_lp_is_no_worse_than_the_original_weights():
    g = mlp("relu", 5, (6, 12, 10, 4))
    x, y = _data(g)
    r = sparsify(g, x, y, layers="1", solver=HIGHS)
    op = g.nodes[find_layers(g)[0].node].op
    assert r.layers[0].objective <= np.abs(op.weight).sum() + np.abs(op.bias).sum() + 1e-9


def test_coupled_lp_without_tail_equals_the_per_unit_lps():
    g = mlp("relu", 7, (5, 8, 6, 3))
    x, y = _data(g, 30, flip=0)
    L = find_layers(g)[0]
    v = values(g, x)
    system = layer_system(g.nodes[L.node].op, v[0])
    opts = LpOptions(0.1, "additive")
    z = v[L.node]
    lo, hi = row_bounds(z, opts)
    total = 0.0
    for u in range(system.n_units):
        res = solve_lp(unit_lp(system.matrix(u), lo[:, u], hi[:, u]).problem, HIGHS)
        total += res.objective
    res = solve_lp(coupled_lp(system, z, opts, None).problem, HIGHS)
    assert res.objective == pytest.approx(total, abs=1e-6)


@pytest.mark.parametrize("mode", ["relative", "additive"])
def test_downstream_keeps_later_states_and_margin(mode):
    g = mlp("relu", 11, (6, 10, 8, 4))
    x, y = _data(g, 30)
    opts = LpOptions(0.3, mode, margin=0.5, downstream=True)
    r = sparsify(g, x, y, lp=opts, solver=HIGHS)
    assert [L.method for L in r.layers] == ["coupled LP", "coupled LP"]
    assert not any(L.failures for L in r.layers)
    assert r.check.ok and r.check.margin_violations == 0 and r.check.state_violations == 0
    _rows_hold(g, r.graph, x, y, opts)
    # the tail rows are exact: with the states fixed the rest of the net is affine
    L = find_layers(g)[0]
    v = values(g, x[:5])
    t = tail_rows(g, L.relu, v, y[:5], 0.0)
    pred = np.einsum("stn,sn->st", t.G, v[L.relu]) + t.g
    assert np.allclose(pred[:, :t.n_state_rows], v[find_layers(g)[1].node])
    out = v[g.output]
    want = [out[s, y[s]] - out[s, k] for s in range(5) for k in range(4) if k != y[s]]
    assert np.allclose(pred[:, t.n_state_rows:].reshape(-1), want)


def test_conv_layers_and_onnx_export(tmp_path):
    g = _conv_relu_net()
    x, y = _data(g, 25)
    assert [L.kind for L in find_layers(g)] == ["conv", "conv", "dense"]
    r = sparsify(g, x, y, lp=LpOptions(0.0, "additive"), solver=HIGHS)
    assert r.check.ok
    _rows_hold(g, r.graph, x, y, LpOptions(0.0, "additive"))
    assert r.layers[0].n_lps == 3  # one LP per output channel: the kernel taps and the bias
    path = str(tmp_path / "s.onnx")
    export_onnx(r.graph, path)
    m = load_model(path)
    assert np.allclose(m.runner(x.astype(np.float32)), r.graph(x), atol=1e-4)
    assert np.allclose(m.graph(x), r.graph(x), atol=1e-5)


def test_export_of_a_relu_dag():
    rng = np.random.default_rng(2)
    b = Builder((1, 6), rng)
    s = b.add(ops.Scale(rng.uniform(0.5, 2, 6), rng.normal(0, 1, 6)), 0, (1, 6))
    h = b.act(b.dense(s, 8), "relu")
    sel = b.add(ops.Select(np.array([3, 0, -1, 7, 7], dtype=np.int64), 8, np.array([0, 0, 0.5, 0, 0])), h, (1, 5))
    skip = b.dense(0, 5)
    sm = b.add(ops.Sum((1.0, -0.5)), (sel, skip), (1, 5))
    cat = b.add(ops.Concat((5, 8), rng.permutation(13)), (b.act(sm, "relu"), h), (1, 13))
    b.dense(cat, 3)
    g = b.graph()
    from certkit.sparsify.export import to_onnx
    import onnxruntime as ort

    sess = ort.InferenceSession(to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.uniform(0, 1, (7, 6))
    out = sess.run(None, {g.input_name: x.astype(np.float32)})[0]
    assert np.allclose(out, g(x), atol=1e-5)
    r = sparsify(g, x, g(x).argmax(1), solver=HIGHS)
    assert r.check.ok and len(r.layers) == 1  # the Dense before Sum is not followed by a ReLU


@pytest.mark.skipif(not solver_available("gurobi"), reason="gurobipy not installed")
def test_highs_and_gurobi_agree():
    g = mlp("relu", 13, (5, 8, 6, 3))
    x, y = _data(g, 30, flip=0)
    opts = LpOptions(0.1, "relative")
    L = find_layers(g)[0]
    v = values(g, x)
    system = layer_system(g.nodes[L.node].op, v[0])
    lo, hi = row_bounds(v[L.node], opts)
    for u in range(system.n_units):
        p = unit_lp(system.matrix(u), lo[:, u], hi[:, u]).problem
        a = solve_lp(p, HIGHS)
        try:
            b = solve_lp(p, SolverOptions("gurobi"))
        except BackendError as e:  # no licence at all on this machine
            pytest.skip(str(e))
        assert a.objective == pytest.approx(b.objective, abs=1e-6)


def test_gurobi_size_limit_is_reported_or_falls_back():
    g = mlp("relu", 13, (40, 60, 3))
    x, y = _data(g, 30, flip=0)
    opts = LpOptions(0.1, "relative", downstream=True)
    L = find_layers(g)[0]
    v = values(g, x)
    p = coupled_lp(layer_system(g.nodes[L.node].op, v[0]), v[L.node], opts,
                   tail_rows(g, L.relu, v, y, 0.0)).problem
    assert p.n_cols > 2000
    if not solver_available("gurobi"):
        with pytest.raises(BackendError, match="not installed"):
            sparsify(g, x, y, solver=SolverOptions("gurobi"))
        return
    try:
        res = solve_lp(p, SolverOptions("gurobi"))
    except BackendError as e:
        assert "size-limited" in str(e) or "licence" in str(e)
        res = solve_lp(p, SolverOptions("gurobi", fallback="highs"))
        assert res.solver == "highs" and "fell back" in res.message
    assert res.x is not None


def test_mbp_reaches_the_sparsity():
    g = mlp("relu", 3, (6, 12, 10, 4))
    x, y = _data(g)
    r = prune(g, x, y, 0.5)
    for L in r.layers:
        assert L.nnz_after == L.params - round(0.5 * L.params)


def test_errors_are_clear():
    g = mlp("tanh", 3, (6, 12, 10, 4))
    x, y = _data(g)
    with pytest.raises(ModelError, match="ReLU net.*tanh"):
        sparsify(g, x, y)
    g = mlp("relu", 3, (6, 12, 10, 4))
    with pytest.raises(UsageError, match="layers 1..2"):
        sparsify(g, x, y, layers="3")
    with pytest.raises(BackendError, match="unknown LP solver"):
        sparsify(g, x, y, solver=SolverOptions("cplex"))
    with pytest.raises(UsageError, match="relative --eps"):
        sparsify(g, x, y, lp=LpOptions(1.5, "relative"))


def _files(tmp_path, g, n=40):
    path = str(tmp_path / "net.onnx")
    export_onnx(g, path)
    x, y = _data(g, n)
    np.savez(tmp_path / "val.npz", x=x.astype(np.float32), y=y)
    xt, yt = _data(g, 20, seed=1, flip=0)
    np.savez(tmp_path / "test.npz", x=xt.astype(np.float32), y=yt)
    return path, str(tmp_path / "val.npz"), str(tmp_path / "test.npz")


def test_cli_end_to_end(tmp_path, capsys):
    g = mlp("relu", 3, (6, 12, 10, 4))
    net, val, test = _files(tmp_path, g)
    out, rep = str(tmp_path / "out.onnx"), str(tmp_path / "r.json")
    rc = main(["sparsify", net, "--data", val, "--test", test, "-o", out, "--json", rep, "--threads", "2",
               "--verify-eps", "0.01,0.05"])
    cap = capsys.readouterr()
    text = cap.out
    assert rc == 0, text + cap.err
    assert "validation check (37 constrained samples): kept" in text and "Org     VNN" in text
    doc = json.load(open(rep))
    assert doc["check"]["ok"] and doc["onnxruntime"]["same_predictions"] == 40
    assert len(doc["verify"]["rows"]) == 2 and doc["layers"][0]["nnz_after"] <= doc["layers"][0]["nnz_before"]
    # certkit certify accepts the sparsified net
    assert main(["certify", out, "--dataset", test, "--eps", "0.01", "--backend", "deeppoly"]) == 0
    assert "certified:" in capsys.readouterr().out
    assert main(["sparsify", net, "--data", val, "-o", out, "--method", "mbp", "--sparsity", "0.3"]) == 0


def test_cli_errors(tmp_path, capsys):
    g = mlp("relu", 3, (6, 12, 10, 4))
    net, val, _ = _files(tmp_path, g)
    out = str(tmp_path / "o.onnx")
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 7), np.float32), y=np.zeros(5, np.int64))
    assert main(["sparsify", net, "--data", str(tmp_path / "bad.npz"), "-o", out]) == 4
    assert "7 values" in capsys.readouterr().err
    assert main(["sparsify", net, "--data", val, "-o", out, "--solver", "nosuch"]) == 5
    assert "unknown LP solver" in capsys.readouterr().err
    tanh = str(tmp_path / "tanh.onnx")
    import onnx

    m = onnx.load(net)  # the same net with Tanh in place of Relu
    for n in m.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Tanh"
    onnx.save(m, tanh)
    assert main(["sparsify", tanh, "--data", val, "-o", out]) == 3
    assert "ReLU net" in capsys.readouterr().err
    assert main(["sparsify", net, "--data", val, "-o", out, "--method", "mbp"]) == 2


def test_unavailable_solver_fails_fast(monkeypatch):
    import certkit.sparsify.solve as solve

    monkeypatch.setattr(solve, "solver_available", lambda name: False)
    g = mlp("relu", 3, (6, 12, 10, 4))
    x, y = _data(g)
    with pytest.raises(BackendError, match="'gurobi' is not installed"):
        sparsify(g, x, y, solver=SolverOptions("gurobi"))
    with pytest.raises(BackendError, match="'highs' is not installed"):
        sparsify(g, x, y, solver=SolverOptions("highs"))


@pytest.mark.skipif(not (SHARED / "data").exists(), reason="needs ../shared/data (paper 002's nets and MNIST)")
def test_vnn_2x50_first_layer_on_50_validation_images(tmp_path):
    d = np.load(SHARED / "data" / "mnist.npz")
    x = d["x_test"][1:51].reshape(-1, 784) / 255.0
    y = d["y_test"][1:51].astype(np.int64)
    g = load_model(SHARED / "data" / "vnn_models" / "mnist_relu_2_50.onnx").graph
    r = sparsify(g, x, y, layers="1", solver=HIGHS)
    assert r.check.ok and r.check.samples == int((g(x).argmax(1) == y).sum())
    assert r.layers[0].nnz_after < 0.2 * r.layers[0].nnz_before
    export_onnx(r.graph, str(tmp_path / "v.onnx"))
    assert (load_model(str(tmp_path / "v.onnx")).runner(x.astype(np.float32)).argmax(1) == r.graph(x).argmax(1)).all()


def test_clean_zeroes_tiny_entries_only_when_the_rows_still_hold():
    from certkit.sparsify.solve import clean

    A = np.array([[1.0, 1e12, 1.0]])
    v = np.array([2.0, 1e-13, 0.5])
    # zeroing v[1] moves the row by 0.1: kept when the row is an equality, cleaned when it is loose
    w, done = clean(v, A, np.array([2.6]), np.array([2.6]))
    assert not done and w[1] == 1e-13
    w, done = clean(v, A, np.array([0.0]), np.array([5.0]))
    assert done and w[1] == 0.0 and w[0] == 2.0


def test_a_failed_lp_keeps_the_weights_and_the_native_status(monkeypatch):
    import certkit.sparsify.solve as solve
    from certkit.solvers import MipResult

    monkeypatch.setattr(solve, "solve_mip", lambda *a, **k: MipResult(
        "error", solver="highs", native_status="Solve error", message="HiGHS Solve error (run status kError)"))
    g = mlp("relu", 3, (6, 12, 10, 4))
    x, y = _data(g)
    r = sparsify(g, x, y, layers="1", solver=HIGHS)
    L = r.layers[0]
    assert L.nnz_after == L.nnz_before and len(L.failures) == 12
    assert "HiGHS Solve error (run status kError)" in L.failures[0]
    assert r.check.ok and np.allclose(r.graph(x), g(x))


def test_downstream_on_conv_layers():
    g = _conv_relu_net()
    x, y = _data(g, 12)
    opts = LpOptions(0.2, "relative", margin=0.3, downstream=True)
    r = sparsify(g, x, y, lp=opts, solver=HIGHS)
    assert [L.method for L in r.layers] == ["coupled LP"] * 3 and not any(L.failures for L in r.layers)
    assert r.check.ok
    _rows_hold(g, r.graph, x, y, opts)
