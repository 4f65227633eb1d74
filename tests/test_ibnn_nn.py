"""certkit.nn.ibnn: implicit-bias layers (paper 003; DESIGN.md section 8) in torch -- the solver
reaches the fixed point, implicit-function-theorem gradients are right, the a-priori bound of
``q``/``K_for`` holds, exports run identically in onnxruntime and are recognised as canonical
IBNN functions; and what happens above the contraction threshold."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from certkit.nn import (IBNNConv2d, IBNNLinear, IBNNLite, IBNNLiteConv2d, export_onnx, freeze,
                        uniform_kernel, window_kernel)
from certkit.nn.ibnn import (_FixedPoint, damped_steps, fixed_point, g_map, interaction, jacobian,
                             neighbours)
from certkit.onnx.ibnn import recognise

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


def _inf(t: torch.Tensor) -> float:
    return float(t.abs().max())


# --------------------------------------------------------------------------- kernels


def test_kernels():
    w = uniform_kernel(5)
    assert torch.equal(w, w.T) and (w.diagonal() == 0).all() and torch.allclose(w.sum(1), torch.ones(5))
    k = window_kernel(4, 5, 3)
    assert k.shape == (20, 20) and torch.equal(k, k.T) and (k.diagonal() == 0).all()
    rows = k.sum(1).reshape(4, 5)
    assert torch.allclose(rows[1:3, 1:4], torch.ones(2, 3))                    # interior: 8 neighbours
    assert abs(float(rows[0, 0]) - 3 / 8) < 1e-7 and abs(float(rows[0, 2]) - 5 / 8) < 1e-7
    assert float(k[0, 6]) == 1 / 8 and float(k[0, 2]) == 0.0                   # (0,0)~(1,1), not (0,2)
    assert float(window_kernel(5, 5, 5).sum(1).max()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        window_kernel(4, 4, 2)
    with pytest.raises(ValueError):
        IBNNLinear(3, 3, lam=0.1, kernel=torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]))  # not symmetric
    assert sum(p.numel() for p in IBNNLinear(7, 4, lam=0.1).parameters()) == 7 * 4 + 4


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_forward_reaches_fixed_point(eta):
    torch.manual_seed(0)
    lay = IBNNLinear(6, 9, lam=0.04, eta=eta, tol=1e-9).double()
    x = torch.randn(5, 6, dtype=torch.float64) * 3
    z = lay(x)
    a = lay.affine(x).detach()
    res = _inf(g_map(z, a, lay.w, lay.c(), lay.alpha) - z)
    # stop at ||z_{k+1} - z_k|| <= tol, so ||G(z) - z|| <= rho tol / eta
    assert res <= lay.rho() * lay.tol / eta + 1e-15
    assert lay.last_solve["steps"] <= lay.K_for(lay.tol * (1 - lay.q()))
    conv = IBNNConv2d(2, 3, 3, stride=2, padding=1, lam=0.04, ib_kernel=3, in_size=(8, 8), tol=1e-9,
                      eta=eta).double()
    xc = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    zc = conv(xc)
    assert zc.shape == (4, 3, 4, 4)
    ac = conv.affine(xc).detach().reshape(4, 3, 16)
    res = _inf(g_map(zc.reshape(4, 3, 16), ac, conv.w, conv.c(), conv.alpha) - zc.reshape(4, 3, 16))
    assert res <= conv.rho() * conv.tol / eta + 1e-15
    # groups do not interact: one channel alone gives the same values
    alone = fixed_point(ac[:, 1:2], conv.w, conv.c(), conv.alpha, eta, 1e-12, 1000)[0]
    assert _inf(alone - zc.reshape(4, 3, 16)[:, 1:2]) < 1e-9


def test_sparse_window_kernel_iteration():
    """A window kernel on a large enough map is iterated in its sparse form (same values)."""
    torch.manual_seed(9)
    conv = IBNNConv2d(1, 2, 3, lam=0.04, ib_kernel=3, in_size=(10, 10), tol=1e-12).double()
    assert conv.nbr_idx is not None and conv.nbr_idx.shape == (64, 8)
    nbr = neighbours(conv.w)
    z = torch.randn(3, 2, 64, dtype=torch.float64)
    assert _inf(interaction(z, conv.w, 10.0) - interaction(z, nbr, 10.0)) < 1e-14
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    out = conv(x)
    dense = fixed_point(conv.affine(x).detach().reshape(3, 2, 64), conv.w, conv.c(), 10.0, 1.0, 1e-13, 1000)[0]
    assert _inf(out.reshape(3, 2, 64) - dense) < 1e-11
    r = torch.randn_like(out)
    (out * r).sum().backward()
    g_ift = conv.affine.weight.grad.clone()
    conv.zero_grad()
    a = conv.affine(x).reshape(3, 2, 64)
    (damped_steps(a, conv.w, conv.c(), 10.0, 1.0, 300).reshape(out.shape) * r).sum().backward()
    assert torch.allclose(g_ift, conv.affine.weight.grad, atol=1e-10, rtol=1e-8)
    assert neighbours(uniform_kernel(10)) is None


def test_float32_forward_close_to_float64():
    torch.manual_seed(1)
    lay = IBNNLinear(10, 16, lam=0.04)
    x = torch.rand(8, 10)
    z32 = lay(x)
    z64 = lay.double()(x.double())
    assert _inf(z32.double() - z64) < 1e-5


# --------------------------------------------------------------------------- gradients


def _solver(alpha: float, eta: float, adjoint: str, w: torch.Tensor):
    def f(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return _FixedPoint.apply(a, c, w, alpha, eta, 1e-14, 5000, adjoint, None)
    return f


@pytest.mark.parametrize("adjoint,eta", [("direct", 1.0), ("iterative", 1.0), ("iterative", 0.75)])
def test_ift_gradients_match_finite_differences(adjoint, eta):
    torch.manual_seed(2)
    w = window_kernel(3, 3, 3).double()
    a = (torch.randn(2, 2, 9, dtype=torch.float64) * 0.1).requires_grad_(True)   # close values: tanh not saturated
    c = torch.tensor(0.035, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_solver(10.0, eta, adjoint, w), (a, c), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_ift_gradients_match_unrolled_autograd():
    torch.manual_seed(3)
    lay = IBNNLinear(5, 7, lam=0.03, train_lam=True, tol=1e-13).double()
    x = torch.randn(4, 5, dtype=torch.float64) * 0.3
    r = torch.randn(4, 7, dtype=torch.float64)
    (lay(x) * r).sum().backward()
    ift = [p.grad.clone() for p in (lay.affine.weight, lay.affine.bias, lay.lam)]
    lay.zero_grad()
    a = lay.affine(x)
    z = damped_steps(a, lay.w, lay.lam * lay.beta, lay.alpha, 1.0, 400)    # the graph through 400 steps
    (z * r).sum().backward()
    for g_ift, p in zip(ift, (lay.affine.weight, lay.affine.bias, lay.lam)):
        assert torch.allclose(g_ift, p.grad, atol=1e-10, rtol=1e-8)


def test_jacobian_is_dG_dz():
    torch.manual_seed(4)
    w, a = uniform_kernel(6).double(), torch.randn(6, dtype=torch.float64) * 0.2
    z = torch.randn(6, dtype=torch.float64) * 0.2
    auto = torch.autograd.functional.jacobian(lambda t: g_map(t, a, w, 0.05, 10.0), z)
    assert torch.allclose(jacobian(z, w, 0.05, 10.0), auto, atol=1e-12)
    assert float(jacobian(z, w, 0.05, 10.0).abs().sum(1).max()) <= 2 * 0.05 * 10.0 + 1e-12   # <= q


# --------------------------------------------------------------------------- q and K_for


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_q_and_a_priori_bound(eta):
    lay = IBNNLinear(4, 12, lam=0.04, alpha=10.0, eta=eta).double()
    assert lay.q() == pytest.approx(0.8, rel=1e-6)
    assert lay.rho() == pytest.approx(1 - eta * 0.2, rel=1e-6)
    for tol in (1e-2, 1e-6):
        K = lay.K_for(tol)
        assert lay.bound(K) <= tol < lay.bound(K - 1)
    torch.manual_seed(5)
    a = torch.randn(64, 1, 12, dtype=torch.float64) * torch.logspace(-2, 0, 64, dtype=torch.float64)[:, None, None]
    zs = fixed_point(a, lay.w, lay.c(), lay.alpha, 1.0, 1e-15, 10_000)[0]
    z = a
    for K in range(1, lay.K_for(1e-8) + 1):
        z = damped_steps(a, lay.w, lay.c(), lay.alpha, eta, 1, z0=z)
        assert _inf(z - zs) <= lay.bound(K) + 1e-13
    conv = IBNNConv2d(1, 2, 3, lam=0.04, ib_kernel=3, in_size=(6, 6))
    assert conv.q() == pytest.approx(0.8, rel=1e-6) and conv.max_row_sum() == pytest.approx(1.0)
    hot = IBNNLinear(3, 3, lam=0.2, max_iter=77)
    assert hot.q() >= 1 and hot.K_for() == 77 and hot.params().K == 77
    capped = IBNNLinear(3, 3, lam=0.049, max_iter=20)         # q = 0.98: K_for(1e-6) > 20
    assert capped.K_for() > 20 and capped.params().K == 20
    assert capped.params().tol == pytest.approx(capped.bound(20))


# --------------------------------------------------------------------------- export


def _ort(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def _exported(model: nn.Module, path, shape) -> tuple[onnx.ModelProto, dict]:
    export_onnx(model, path, shape)                 # checks onnxruntime == torch's K steps to 1e-5
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    accepted, refused = recognise(proto)
    assert refused == {}
    return proto, accepted


def test_export_dense(tmp_path):
    torch.manual_seed(6)
    model = nn.Sequential(IBNNLinear(8, 10, lam=0.04), nn.ReLU(), IBNNLinear(10, 6, lam=0.02, eta=0.5),
                          nn.ReLU(), nn.Linear(6, 3)).eval()
    proto, acc = _exported(model, tmp_path / "d.onnx", (1, 8))
    assert sorted(acc) == ["IBNN_0", "IBNN_1"]
    assert acc["IBNN_0"].K == model[0].K_for() and acc["IBNN_0"].shape == (1, 10) and acc["IBNN_0"].groups == 1
    assert acc["IBNN_1"].eta == 0.5 and acc["IBNN_1"].K == model[2].K_for()
    calls = [n for n in proto.graph.node if n.domain == "ai.certkit.ibnn"]
    assert [n.op_type for n in calls] == ["IBNN_0", "IBNN_1"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert np.array_equal(inits[calls[0].input[1]], model[0].w.numpy())
    x = torch.rand(16, 8)
    with torch.no_grad():
        ref = model(x).numpy()                        # solved to tol, not the K steps
    assert np.abs(_ort(tmp_path / "d.onnx", x.numpy()) - ref).max() < 1e-5


def test_export_conv_and_lite(tmp_path):
    torch.manual_seed(7)
    model = nn.Sequential(IBNNConv2d(1, 3, 3, stride=2, lam=0.04, ib_kernel=3, in_size=(9, 9)), nn.ReLU(),
                          IBNNLiteConv2d(3, 2, 3, padding=1, lam=0.1, in_size=(4, 4)), nn.ReLU(), nn.Flatten(),
                          IBNNLite(32, 5, lam=0.3), nn.Linear(5, 2)).eval()
    proto, acc = _exported(model, tmp_path / "c.onnx", (1, 1, 9, 9))
    p0, p1, p2 = acc["IBNN_0"], acc["IBNN_1"], acc["IBNN_2"]
    assert (p0.groups, p0.m, p0.shape, p0.kernel) == (3, 16, (1, 3, 4, 4), "k3")
    assert (p1.K, p1.eta, p1.kernel, p2.K) == (1, 1.0, "uniform", 1)
    x = torch.rand(6, 1, 9, 9)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_ort(tmp_path / "c.onnx", x.numpy()) - ref).max() < 1e-5
    assert not any(isinstance(m, (IBNNConv2d, IBNNLinear)) for m in freeze(model).modules())


def test_lite_is_one_step():
    torch.manual_seed(8)
    lite = IBNNLite(5, 6, lam=0.3, alpha=5.0, beta=2.0)
    x = torch.randn(3, 5)
    a = lite.affine(x)
    one = a - 0.3 * 2.0 * interaction(a, lite.w, 5.0)
    assert torch.allclose(lite(x), one, atol=1e-6)
    assert torch.equal(lite(x), damped_steps(a, lite.w, lite.lam * lite.beta, lite.alpha, 1.0, 1))
    p = lite.params()
    assert (p.K, p.eta, p.tol) == (1, 1.0, 0.0)


# --------------------------------------------------------------------------- above the threshold


def test_above_threshold_several_fixed_points():
    """Two neurons, ``w = [[0, 1], [1, 0]]``, ``a = 0``: with ``d = z_1 - z_2`` the fixed points are
    ``z = (d/2, -d/2)`` with ``d = 2 c tanh(alpha d)``. ``q = 2 |c| alpha``; for ``q <= 1`` the only
    solution is ``d = 0``, for ``q > 1`` there are three (``0`` and ``+-d*``): the condition ``q < 1`` is
    sharp here. Picard from ``a`` stays on the unstable ``d = 0``; from starts tilted either way it
    converges (fast: ``tanh`` saturates) to ``+d*`` or ``-d*`` -- the layer is then not a function of x."""
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    hot = IBNNLinear(1, 2, lam=1.0, alpha=10.0, kernel=w, tol=1e-12).double()      # q = 20
    assert hot.q() == pytest.approx(20.0)
    a = torch.zeros(1, 2, dtype=torch.float64)
    ends = [hot.solve(a, z0=torch.tensor([s], dtype=torch.float64)) for s in ([0.0, 0.0], [0.1, 0.0], [0.0, 0.1])]
    for z in ends:
        assert _inf(g_map(z, a, hot.w, hot.c(), hot.alpha) - z) < 1e-10          # all are fixed points
    assert torch.allclose(ends[0], a)
    assert torch.allclose(ends[1], torch.tensor([[1.0, -1.0]], dtype=torch.float64), atol=1e-8)
    assert torch.allclose(ends[2], torch.tensor([[-1.0, 1.0]], dtype=torch.float64), atol=1e-8)
    # just above the threshold (q = 1.2) already two stable fixed points, d* = 2c tanh(alpha d*) > 0
    warm = IBNNLinear(1, 2, lam=0.06, alpha=10.0, kernel=w, tol=1e-13, max_iter=20_000).double()
    zp = warm.solve(a, z0=torch.tensor([[1e-3, 0.0]], dtype=torch.float64))
    zm = warm.solve(a, z0=torch.tensor([[0.0, 1e-3]], dtype=torch.float64))
    d = float(zp[0, 0] - zp[0, 1])
    assert d > 0.05 and abs(d - 2 * warm.c() * np.tanh(10 * d)) < 1e-10 and torch.allclose(zm, zp.flip(1))
    # below it (q = 0.8) every start ends at the same (unique) fixed point
    cool = IBNNLinear(1, 2, lam=0.04, alpha=10.0, kernel=w, tol=1e-13).double()
    for s in ([1.0, -1.0], [-1.0, 1.0], [0.3, 0.0]):
        assert _inf(cool.solve(a, z0=torch.tensor([s], dtype=torch.float64)) - a) < 1e-11
