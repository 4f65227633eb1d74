"""alpha-CROWN and input-split branch and bound: soundness by sampling, and agreement
with a brute-force oracle on tiny nets (issue 3)."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from certkit.bounds.alpha import alpha_lower
from certkit.bounds.deeppoly import deeppoly_lower
from certkit.model import Model
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from certkit.spec.spec import Disjunct, Property, Spec
from certkit.verify.certify import certify
from certkit.verify.input_split import SplitConfig, input_split
from certkit.verify.query import Budget, Query
from tests.helpers.onnx_builders import tiny_relu_onnx as _tiny_relu_onnx
from tests.helpers.random_nets import ALL_NETS



@pytest.mark.parametrize("net", ["mlp_relu", "mlp_relu_deep", "mlp_leaky_relu", "residual", "conv", "max",
                                 "mlp_sigmoid", "mlp_tanh", "mlp_mixed"])
def test_alpha_sound_and_not_looser(net):
    graph = ALL_NETS[net](0)
    rng = np.random.default_rng(1)
    n = graph.n_inputs
    centre = rng.uniform(-0.5, 0.5, n)
    S = InputSet.box(centre - 0.3, centre + 0.3)
    m = graph.n_outputs
    C = torch.as_tensor(rng.choice([-1.0, 1.0], size=(4, m)) * (rng.random((4, m)) < 0.6))
    a = alpha_lower(graph, S, C, iterations=10)
    dp = torch.maximum(deeppoly_lower(graph, S, C, intersect=True), deeppoly_lower(graph, S, C, intersect=True))
    assert (a >= dp - 1e-9).all()
    # sampling: no point of the box goes below the bound
    x = torch.as_tensor(rng.uniform(centre - 0.3, centre + 0.3, size=(100_000, n)))
    x[: 2 ** min(n, 12)] = torch.as_tensor(np.where(rng.random((2 ** min(n, 12), n)) < 0.5, centre - 0.3,
                                                    centre + 0.3))
    with torch.no_grad():
        vals = graph.forward(x) @ C.T
    assert (vals.min(dim=0).values >= a[0] - 1e-9 * (1 + a[0].abs())).all()


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "mixed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_tangent_points_sound_on_wide_boxes(act, seed):
    """alpha-CROWN's tangent points of sigmoid and tanh (certkit.bounds.relaxations._s_shaped_tangents),
    on boxes wide enough that most units cross their inflection point: every row's bound stays below
    the network at 200000 samples and the box's vertices, for random rows and several schedules."""
    from tests.helpers.random_nets import mlp

    graph = mlp(act, seed, (4, 16, 16, 16, 3))
    rng = np.random.default_rng(seed)
    n = graph.n_inputs
    centre = rng.uniform(-1, 1, n)
    S = InputSet.box(centre - 2.0, centre + 2.0)
    C = torch.as_tensor(rng.normal(0, 1, (5, graph.n_outputs)))
    x = torch.as_tensor(rng.uniform(centre - 2.0, centre + 2.0, size=(200_000, n)))
    x[: 2 ** n] = torch.as_tensor(np.array(np.meshgrid(*[[c - 2.0, c + 2.0] for c in centre])).reshape(n, -1).T)
    with torch.no_grad():
        vals = (graph.forward(x) @ C.T).min(dim=0).values
    for it, lr in ((1, 0.3), (15, 0.3), (15, 3.0)):
        a = alpha_lower(graph, S, C, iterations=it, lr=lr)
        assert (vals >= a[0] - 1e-9 * (1 + a[0].abs())).all(), (it, lr, vals, a)


def grid_top(model) -> tuple[float, float]:
    """The oracle of the 2-input tests: max and spread of the output on a 401 x 401 grid of [-1, 1]^2."""
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 401), np.linspace(-1, 1, 401)), -1).reshape(-1, 2)
    ys = model.graph(g)[:, 0]
    return ys.max(), ys.max() - ys.min() + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_input_split_agrees_with_grid(seed, tmp_path):
    proto = _tiny_relu_onnx(seed)
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, path)
    model = Model(import_model(proto, str(path)), str(path))
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    top, spread = grid_top(model)
    for t, expect in ((top + 0.02 * spread, "verified"), (top - 0.02 * spread, "falsified")):
        # unsafe: y >= t, i.e. -y <= -t
        prop = Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),))
        out = input_split(Query.of_property(model.graph, prop, 0, model.runner), Budget.of(60), SplitConfig(alpha_iterations=0))
        assert out.status == expect, (seed, t, top)
        if expect == "falsified":
            x = out.witness.x.astype(np.float64)
            assert (x >= lo).all() and (x <= hi).all() and out.witness.y[0] >= t
        out_a = input_split(Query.of_property(model.graph, prop, 0, model.runner), Budget.of(60),
                            SplitConfig(alpha_iterations=3))
        assert out_a.status == expect


def test_certify_bab_stage_on_tiny_net(tmp_path):
    proto = _tiny_relu_onnx(3, n_in=3, hidden=(10, 10, 10))
    path = tmp_path / "tiny3.onnx"
    onnx.save(proto, path)
    model = Model(import_model(proto, str(path)), str(path))
    lo, hi = -np.ones(3), np.ones(3)
    rng = np.random.default_rng(0)
    ys = model.graph(rng.uniform(-1, 1, (200_000, 3)))[:, 0]
    t = ys.max() + 0.05 * (ys.max() - ys.min())
    spec = Spec((Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),)),), 3, 1)
    res = certify(model, spec, "bab", timeout=60)
    assert res.verdict == "unsat" and res.stage in ("deeppoly+interval", "bab")
    res = certify(model, spec, "auto", timeout=60)
    assert res.verdict == "unsat"


@pytest.mark.parametrize("seed", range(4))
def test_milp_and_bab_agree(seed, tmp_path):
    """Both complete procedures give the same verdict on tiny nets (issue 3)."""
    pytest.importorskip("highspy")
    proto = _tiny_relu_onnx(seed + 10, n_in=2, hidden=(6, 6))
    path = tmp_path / "t.onnx"
    onnx.save(proto, path)
    model = Model(import_model(proto, str(path)), str(path))
    rng = np.random.default_rng(seed)
    ys = model.graph(rng.uniform(-1, 1, (50_000, 2)))[:, 0]
    for t in (ys.max() + 0.03 * (ys.max() - ys.min()), ys.max() - 0.03 * (ys.max() - ys.min())):
        spec = Spec((Property(-np.ones(2), np.ones(2), (Disjunct(np.array([[-1.0]]), np.array([-t])),)),), 2, 1)
        verdicts = {b: certify(model, spec, b, timeout=60).verdict for b in ("bab", "milp")}
        assert verdicts["bab"] == verdicts["milp"] and verdicts["bab"] in ("sat", "unsat"), verdicts


def test_milp_without_solver_is_a_backend_error(monkeypatch, capsys):
    """No highspy/scipy: `--backend milp` is exit 5 with a one-line hint; `auto` skips the stage."""
    import sys

    from certkit.cli import main

    monkeypatch.setitem(sys.modules, "certkit.verify.milp", None)
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    fc, spec = str(root / "models" / "digits_fc.onnx"), str(root / "vnnlib" / "digits_fc_0_eps0.02.vnnlib")
    assert main(["certify", fc, spec, "--backend", "milp"]) in (0, 5)  # deeppoly may decide first
    hard = str(root / "vnnlib" / "digits_fc_margin.vnnlib")
    model = Model(import_model(onnx.load(fc), fc), fc)
    from certkit.spec.vnnlib import parse_vnnlib
    from certkit.verify.procedures import run_milp
    from certkit.verify.query import Budget as B, Query as Q
    from certkit.errors import BackendError
    with pytest.raises(BackendError, match="highspy"):
        run_milp(Q.of_property(model.graph, parse_vnnlib(hard).properties[0], 0), B(), True)
    assert run_milp(Q.of_property(model.graph, parse_vnnlib(hard).properties[0], 0), B(), False) is None


def test_milp_uses_auto_solver_and_falls_back(monkeypatch, tmp_path):
    """`auto`'s MILP stage asks for Gurobi first (MILP_SOLVER = "auto"); a Gurobi that is missing or
    refuses the model (licence) leaves the decision to HiGHS, with the same verdict."""
    pytest.importorskip("highspy")
    from certkit.errors import BackendError
    from certkit.solvers import BACKENDS
    from certkit.verify import procedures

    assert procedures.MILP_SOLVER == "auto"
    proto = _tiny_relu_onnx(11, n_in=2, hidden=(6, 6))
    path = tmp_path / "t.onnx"
    onnx.save(proto, path)
    model = Model(import_model(proto, str(path)), str(path))
    ys = model.graph(np.random.default_rng(0).uniform(-1, 1, (50_000, 2)))[:, 0]
    t = ys.max() + 0.03 * (ys.max() - ys.min())
    prop = Property(-np.ones(2), np.ones(2), (Disjunct(np.array([[-1.0]]), np.array([-t])),))
    query = Query.of_property(model.graph, prop, 0)

    def refuse(*a, **k):
        raise BackendError("Gurobi: model too large for the size-limited licence")

    monkeypatch.setattr(BACKENDS["gurobi"], "available", lambda: True)
    monkeypatch.setattr(BACKENDS["gurobi"], "solve_mip", refuse)
    out = procedures.run_milp(query, Budget(deadline=time.monotonic() + 60), True)
    assert out.status.name == "PROVED" and out.proof.milp["solver"] == "highs"
