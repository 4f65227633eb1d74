"""Closing small boxes by running every input they hold (certkit.verify.enumeration).

The grid must be exactly the model-precision inputs a box's real points round to (no fewer: that
would leave inputs unchecked); a property whose margin is below the worst-case error terms closes
only this way, ``certkit check`` re-runs such leaves, and a leaf whose inputs violate the property
never closes.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import certkit
from certkit.cli import main
from certkit.bounds.fperror import FLOAT32, round_outward
from certkit.verify import enumeration as grid
from certkit.verify.input_split import SplitConfig, input_split
from certkit.verify.query import Budget, Query
from tests.helpers.fp_traps import ort_outputs


def _query(lower, upper):
    """What the grid functions read of a query: its box."""
    return SimpleNamespace(lower=np.asarray(lower, np.float64), upper=np.asarray(upper, np.float64))


@pytest.mark.parametrize("lo,hi", [(0.5, 0.5 + 1e-5), (0.1, 0.1), (-3e-7, 2e-7), (1.0, 1.0), (0.3, 0.3000002),
                                   (-1e-45, 1e-45), (-2.5e-7, -2.5e-7 + 5e-11)])
def test_axes_hold_the_rounding_of_every_point_of_the_box(lo, hi):
    """Soundness direction: every real of the box rounds to a number of the grid (sampled densely,
    end points and rounding ties included); and nothing beyond the numbers from RN(lo) to RN(hi)."""
    q = _query([lo], [hi])
    dom = round_outward(np.array([lo]), np.array([hi]), FLOAT32)  # the search's root box
    ax = grid.axes(q, *dom, np.float32)
    if ax is None:  # around zero: every tiny and denormal number, far too many
        assert lo < 0 < hi and hi - lo > 1e-30
        return
    got = {(float(v), bool(np.signbit(v))) for v in ax[0]}
    reals = np.concatenate([[lo, hi], np.linspace(lo, hi, 20001)])
    f = reals.astype(np.float32)
    ties = (f.astype(np.float64) + np.nextafter(f, np.float32(np.inf)).astype(np.float64)) / 2
    reals = np.concatenate([reals, ties[(ties >= lo) & (ties <= hi)]])
    for r in np.unique(reals.astype(np.float32)):
        assert (float(r), bool(np.signbit(r))) in got, (lo, hi, r)
    walk, x = 0, np.float32(lo)
    while x <= np.float32(hi):
        walk, x = walk + 1, np.nextafter(x, np.float32(np.inf))
    assert len(got) <= walk + 1  # + a -0.0


def test_pinned_decimal_has_its_rounding_only():
    """A pinned decimal: its rounded-outward interval holds two float32 numbers, of which the model
    sees only the rounding to nearest; a sub-box holding no float32 at all holds no input."""
    q = _query([0.1], [0.1])
    ax = grid.axes(q, *round_outward(np.array([0.1]), np.array([0.1]), FLOAT32), np.float32)
    assert [float(v) for v in ax[0]] == [float(np.float32(0.1))]
    assert grid.axes(q, np.array([0.1]), np.array([0.1]), np.float32) == []


def test_negative_zero_where_a_negative_input_rounds_to_it():
    q = _query([-1e-7], [1e-7])
    ax = grid.axes(q, np.array([-1e-7]), np.array([1e-7]), np.float32)
    assert ax is None or any(v == 0 and np.signbit(v) for v in ax[0])
    q = _query([0.0], [1e-44])
    ax = grid.axes(q, np.array([0.0]), np.array([1e-44]), np.float32)
    assert not any(v == 0 and np.signbit(v) for v in ax[0])  # no negative input: no -0.0


def test_points_and_small_agree():
    q = _query([0.5, 0.25, 0.0], [0.5 + 2e-7, 0.25 + 1e-7, 0.0])
    lo, hi = q.lower, q.upper
    ax = grid.axes(q, lo, hi, np.float32)
    pts = grid.points(ax)
    assert pts.shape == (np.prod([len(a) for a in ax]), 3)
    assert len({tuple(p) for p in pts.tolist()}) == len(pts)
    assert grid.small(q, lo[None], hi[None], np.float32)[0]
    big = _query([0.0], [1.0])
    assert not grid.small(big, big.lower[None], big.upper[None], np.float32)[0]
    assert grid.axes(big, big.lower, big.upper, np.float32) is None


# --------------------------------------------------------------------------- a dual net


def _dual(seed: int = 0, hidden: int = 512):
    """y = g(x0) - g(x1), g a 1 -> hidden ReLU -> 1 net with large hidden values: on a box where x0
    spans a few hundred float32 numbers near x1, |y| is small, while the worst-case rounding of the
    output sum (fan-in 2 * hidden, terms ~1e3) is far larger."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 300, hidden)
    b = rng.normal(0, 300, hidden)
    v = rng.normal(0, 1, hidden)
    W1 = np.zeros((2, 2 * hidden))
    W1[0, :hidden], W1[1, hidden:] = w, w
    b1 = np.concatenate([b, b])
    W2 = np.concatenate([v, -v])[:, None]
    inits = {"W1": W1, "b1": b1, "W2": W2}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"])]
    g = helper.make_graph(nodes, "dual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                          [numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _dual_files(tmp_path, threshold: float | None = None, points: int = 600):
    model = _dual()
    x1 = np.float32(0.75)
    k = np.arange(points + 1, dtype=np.int32)
    xs = np.stack([(x1.view(np.int32) + k).view(np.float32), np.full(points + 1, x1)], axis=1)  # x0: the grid
    top = xs[-1, 0]
    ys = ort_outputs(model, xs)
    t = float(ys.max()) * 4 + 1e-3 if threshold is None else threshold
    path = tmp_path / "dual.onnx"
    onnx.save(model, path)
    spec = tmp_path / "dual.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    f"(assert (>= X_0 {float(x1)!r}))\n(assert (<= X_0 {float(top)!r}))\n"
                    f"(assert (>= X_1 {float(x1)!r}))\n(assert (<= X_1 {float(x1)!r}))\n"
                    f"(assert (>= Y_0 {t!r}))\n")
    return path, spec, ys, t


def _split(path, spec, enumerate_: bool, seconds: float = 10.0):
    model = certkit.load_model(path)
    prop = certkit.load_spec(spec, model).properties[0]
    q = Query.of_property(model.graph, prop, 0, model.runner)
    return input_split(q, Budget.of(seconds), SplitConfig(enumerate=enumerate_, alpha_iterations=0))


def test_margin_below_the_error_terms_closes_only_by_running_the_inputs(tmp_path):
    path, spec, ys, t = _dual_files(tmp_path)
    assert float(ys.max()) < t
    without = _split(path, spec, False, seconds=5.0)
    assert without.status != "verified"  # the error terms alone exceed the margin
    got = _split(path, spec, True)
    assert got.status == "verified"
    kinds = [got.tree.kinds[-1 - c] for c in got.tree.codes[:, 0] if c < 0]
    assert "enumerated" in kinds


def test_certify_and_check_rerun_enumerated_leaves(tmp_path, capsys):
    path, spec, _, _ = _dual_files(tmp_path)
    cert = tmp_path / "c.json"
    assert main(["certify", str(path), str(spec), "--backend", "bab", "--timeout", "30", "--json", str(cert)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "unsat"
    assert main(["check", str(cert)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("valid")
    assert json.loads(cert.read_text())["verdict"] == "unsat"


def test_a_violated_box_never_closes(tmp_path):
    """The threshold below onnxruntime's largest output on the grid: running the inputs finds the
    counterexample (confirmed in onnxruntime), never a proof."""
    path, spec, ys, _ = _dual_files(tmp_path, threshold=None)
    t = float(np.sort(ys.ravel())[-3])  # at most a few grid points reach it
    path, spec, ys, t = _dual_files(tmp_path, threshold=t)
    got = _split(path, spec, True)
    assert got.status == "falsified"
    assert ort_outputs(onnx.load(path), got.witness.x[None].astype(np.float32))[0] >= t
    model = certkit.load_model(path)
    prop = certkit.load_spec(spec, model).properties[0]
    q = Query.of_property(model.graph, prop, 0, model.runner)
    value, w = grid.run_box(q, q.lower, q.upper)
    assert not value > 0 and w is not None


def test_recheck_refuses_a_forged_enumerated_leaf(tmp_path):
    """A proof tree whose only leaf is the root, marked enumerated, on a property onnxruntime violates:
    the recheck runs the inputs and fails."""
    from certkit.verify.input_split import LEAF_KINDS, recheck
    from certkit.verify.proof import ProofTree

    _, _, ys, _ = _dual_files(tmp_path)
    path, spec, ys, t = _dual_files(tmp_path, threshold=float(np.sort(ys.ravel())[-2]))
    model = certkit.load_model(path)
    prop = certkit.load_spec(spec, model).properties[0]
    q = Query.of_property(model.graph, prop, 0, model.runner)
    tree = ProofTree("input_split", np.array([[-1 - LEAF_KINDS.index("enumerated"), -1]]), np.array([1.0]),
                     LEAF_KINDS, {}, {"alpha_iterations": 0})
    rep = recheck(q, tree, time_per_leaf=2.0)
    assert rep.failed == 1 and not rep.ok


# --------------------------------------------------------------------------- trying to break it


def _ulps_around(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The box of ``k`` float32 numbers either side of each coordinate of ``x``."""
    bits = np.asarray(x, np.float32).view(np.int32)
    a, b = (bits - k).view(np.float32).astype(np.float64), (bits + k).view(np.float32).astype(np.float64)
    return np.minimum(a, b), np.maximum(a, b)  # (for a negative number, bits - k is the larger one)


def _box_spec(path, lo, hi, threshold: float) -> None:
    n = len(lo)
    lines = [f"(declare-const X_{i} Real)" for i in range(n)] + ["(declare-const Y_0 Real)"]
    lines += [f"(assert (>= X_{i} {float(lo[i])!r}))\n(assert (<= X_{i} {float(hi[i])!r}))" for i in range(n)]
    lines.append(f"(assert (>= Y_0 {threshold!r}))")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("family,seed", [("cancel", 0), ("cancel", 1), ("deep", 0)])
def test_a_trap_in_a_small_box_is_sat_never_unsat(tmp_path, family, seed):
    """A floating-point trap (real output 0, onnxruntime's up to twice the threshold) in a box of 41 x 41
    float32 inputs around its witness: every bound proves the real property, so only running the inputs
    decides it, and it must find onnxruntime's counterexample."""
    from tests.helpers.fp_traps import make_trap

    trap = make_trap(family, seed, samples=400)
    lo, hi = _ulps_around(trap.witness, 20)
    path, spec = tmp_path / "trap.onnx", tmp_path / "trap.vnnlib"
    onnx.save(trap.model, path)
    _box_spec(spec, lo, hi, trap.threshold)
    res = certkit.certify(certkit.load_model(path), spec, "bab", timeout=20)
    assert res.verdict == "sat", res.verdict
    assert ort_outputs(trap.model, res.witness.x[None].astype(np.float32))[0] >= trap.threshold


def test_nan_outputs_never_close_a_box(tmp_path):
    """Sqrt of negative inputs: onnxruntime outputs NaN, which lies in no disjunct (no counterexample)
    and proves nothing (the box stays open)."""
    node = helper.make_node("Sqrt", ["x"], ["y"])
    g = helper.make_graph([node], "sqrt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path, spec = tmp_path / "sqrt.onnx", tmp_path / "sqrt.vnnlib"
    onnx.save(m, path)
    lo, hi = _ulps_around(np.array([-1.0]), 10)
    _box_spec(spec, lo, hi, 5.0)
    model = certkit.load_model(path)
    q = Query.of_property(model.graph, certkit.load_spec(spec, model).properties[0], 0, model.runner)
    value, w = grid.run_box(q, q.lower, q.upper)
    assert w is None and not value > 0
    assert certkit.certify(model, spec, "bab", timeout=5).verdict != "unsat"


def test_running_the_inputs_stops_at_the_deadline(tmp_path):
    """Many small open domains in one batch: the budget is checked before each one's runs."""
    from certkit.errors import VerificationTimeout
    from certkit.verify.input_split import _Bounded, _Problem

    path, spec, _, _ = _dual_files(tmp_path)
    model = certkit.load_model(path)
    q = Query.of_property(model.graph, certkit.load_spec(spec, model).properties[0], 0, model.runner)
    lo = torch.as_tensor(q.lower)[None].repeat(50, 1)
    hi = torch.as_tensor(q.upper)[None].repeat(50, 1)
    b = _Bounded(lo, hi, torch.full((50,), -1.0, dtype=torch.float64), torch.zeros_like(lo),
                 torch.zeros(50, dtype=torch.int64), torch.full((50,), -1, dtype=torch.int64), torch.ones(50))
    pb = _Problem(q, SplitConfig(), Budget.of(0.0))
    with pytest.raises(VerificationTimeout):
        pb.enumerate_open(b)


def test_a_point_that_violates_only_when_run_alone_keeps_the_box_open():
    """onnxruntime can round an input alone differently from the same input in a batch (a net of
    benchmarks/fuzz_certify.py: 1 ulp). Here a mock runner gives y = 1 - x in any batch and -1 for the
    box's smallest input run alone -- the point of *largest* margin in the batch, which the former rule
    (only the 32 points of least margin re-run alone) never re-ran: the box must not close, and that
    input, run alone as a checker runs it, is the counterexample."""
    from certkit.spec.spec import Disjunct, Property

    lo, hi = 0.5, 0.5 + 1e-5  # about 168 float32 inputs
    prop = Property(np.array([lo]), np.array([hi]), (Disjunct(np.array([[1.0]]), np.array([0.0])),))  # y <= 0

    def runner(x):
        x = np.atleast_2d(np.asarray(x, np.float32))
        y = (1.0 - x.astype(np.float64)).astype(np.float32)
        if len(x) == 1 and x[0, 0] == np.float32(lo):
            y[0, 0] = -1.0
        return y

    q = Query.of_property(None, prop, 0, runner)
    assert len(grid.points(grid.axes(q, q.lower, q.upper, np.float32))) > 100
    value, w = grid.run_box(q, q.lower, q.upper)
    assert not value > 0
    assert w is not None and w.x[0] == np.float32(lo) and w.y[0] == -1.0
