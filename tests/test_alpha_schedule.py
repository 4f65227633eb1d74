"""alpha-CROWN's learning-rate schedule (issue 12): Adam with a per-step decay, as ``torch.optim.Adam``
stepped with ``ExponentialLR``; the schedule's figures are recorded where a proof is re-derived from them."""
from __future__ import annotations

import numpy as np
import torch

from certkit.bounds.adam import Adam
from certkit.bounds.alpha import LR, LR_DECAY, alpha_lower
from certkit.bounds.deeppoly import deeppoly_lower
from certkit.spec.sets import InputSet
from tests.helpers import random_nets


def test_decay_matches_torch_exponential_lr():
    target = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64)
    ours = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Adam([ours], lr=0.3, decay=0.9)
    topt = torch.optim.Adam([ref], lr=0.3)
    sched = torch.optim.lr_scheduler.ExponentialLR(topt, 0.9)
    for _ in range(6):
        for p, o in ((ours, opt), (ref, topt)):
            o.zero_grad()
            ((p - target) ** 2).sum().backward()
            o.step()
        sched.step()
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    assert abs(opt.groups[0]["lr"] - 0.3 * 0.9 ** 6) < 1e-15


def test_fused_kernel_matches_the_written_out_update(monkeypatch):
    """The fused kernel (contiguous parameters) and the written-out update (the rest, or a torch
    without the kernel) take the same steps, per group rate and decay included."""
    import importlib

    adam = importlib.import_module("certkit.bounds.adam")  # ``certkit.bounds`` is also the API function

    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        start = [torch.randn(1000, dtype=dtype), torch.randn(3, 5, dtype=dtype), torch.randn(7, 4, dtype=dtype).t()]
        runs = []
        for fused in (True, False):
            monkeypatch.setattr(adam, "_FUSED", fused)
            ps = [t.clone().requires_grad_(True) for t in start]
            opt = Adam([{"params": ps[:2], "lr": 0.3}, {"params": ps[2:], "lr": 0.01}], decay=0.98)
            for _ in range(25):
                opt.zero_grad()
                sum(((p - 0.3) ** 2 * torch.arange(p.numel(), dtype=dtype).reshape(p.shape)).sum()
                    for p in ps).backward()
                opt.step()
            runs.append([p.detach() for p in ps])
        for a, b in zip(*runs):
            assert torch.allclose(a, b, rtol=tol, atol=tol)
    assert not adam._fusable(torch.zeros(4, 3).t(), torch.zeros(3, 4))  # a transposed parameter: written out


def test_default_schedule_is_sound_and_not_looser_than_deeppoly():
    assert 0 < LR_DECAY <= 1 and LR > 0
    for seed in range(3):
        g = random_nets.mlp("relu", seed, (4, 16, 16, 16, 3))
        rng = np.random.default_rng(seed)
        c = rng.uniform(-1, 1, (1, 4))
        S = InputSet(torch.tensor(c - 0.4), torch.tensor(c + 0.4))
        C = torch.tensor(rng.normal(size=(5, 3)))
        low = alpha_lower(g, S, C)
        assert bool((low >= deeppoly_lower(g, S, C, intersect=True) - 1e-9).all())
        x = torch.tensor(rng.uniform(c - 0.4, c + 0.4, (4000, 4)))
        y = g.forward(x) @ C.T
        assert bool((low[0] <= y.min(dim=0).values + 1e-9).all())


def test_input_split_records_the_schedule(tmp_path):
    import onnx

    from certkit.model import Model
    from certkit.onnx.importer import import_model
    from certkit.spec.spec import Disjunct, Property
    from certkit.verify.input_split import SplitConfig, input_split
    from certkit.verify.query import Budget, Query
    from tests.helpers.onnx_builders import tiny_relu_onnx

    proto = tiny_relu_onnx(0)
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, path)
    model = Model(import_model(proto, str(path)), str(path))
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    y = model.graph.forward(torch.tensor(np.random.default_rng(0).uniform(-1, 1, (20000, 2))))[:, 0]
    t = float(y.max()) + 0.2 * float(y.max() - y.min())  # unsafe y >= t: provable
    prop = Property(lo, hi, (Disjunct(np.array([[-1.0]]), np.array([-t])),))
    out = input_split(Query.of_property(model.graph, prop, 0, model.runner), Budget.of(60),
                      SplitConfig(alpha_iterations=3))
    assert out.status == "verified"
    assert out.tree.meta["alpha_lr_decay"] == SplitConfig().alpha_lr_decay


def _boxes(g, seed: int, b: int = 2, r: float = 0.3) -> InputSet:
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, (b, g.n_inputs))
    return InputSet(torch.tensor(c - r), torch.tensor(c + r))


def test_compact_intermediate_slopes_give_the_same_bounds(monkeypatch):
    """An intermediate target's slope tensors hold rows only for the neurons its ReLUs leave unstable
    under the start bounds (BoundState._compact_rows): the same iterates, hence the same bounds, as
    rows for every neuron, on a batch of two boxes (positions per box); a node that also feeds another
    op (a residual net's Sum) keeps rows for all."""
    from certkit.bounds.deeppoly import BoundState

    for build, seed in ((lambda s: random_nets.mlp("relu", s, (4, 16, 16, 16, 3)), 0),
                        (random_nets.conv_net, 1), (random_nets.residual_net, 2)):
        g = build(seed)
        S = _boxes(g, 1, r=0.1)  # where the intermediate slopes move the final bound
        C = torch.tensor(np.random.default_rng(1).normal(size=(3, g.n_outputs)))
        low, st = alpha_lower(g, S, C, iterations=8, keep_state=True)
        n_rows = {k: a.shape[1] for k, a in st.alpha.items() if k[0] != "out"}
        with monkeypatch.context() as m:
            m.setattr(BoundState, "_compact_rows", lambda self, j: None)
            full, st_full = alpha_lower(g, S, C, iterations=8, keep_state=True)
        assert torch.equal(low, full)
        rows_full = {k: a.shape[1] for k, a in st_full.alpha.items() if k[0] != "out"}
        assert n_rows.keys() == rows_full.keys() and n_rows
        assert all(n_rows[k] <= rows_full[k] for k in n_rows)
        # some neuron is stable at the start (the residual net's pre-activations also feed a Sum: all rows)
        assert any(n_rows[k] < rows_full[k] for k in n_rows) == (build is not random_nets.residual_net)


def test_a_row_outside_the_compact_ones_keeps_deeppolys_slope(monkeypatch):
    """A row the start bounds did not foresee (not expected) gets DeepPoly's slope, fixed: the bound
    stays sound and not looser than DeepPoly's."""
    from certkit.bounds import deeppoly

    real = deeppoly.BoundState._compact_rows

    def drop_first(self, j):
        pos = real(self, j)
        if pos is None:
            return None
        first = (pos >= 0).long().argmax(dim=1, keepdim=True)  # each box's first held neuron: no row
        return pos.scatter(1, first, -1)

    monkeypatch.setattr(deeppoly.BoundState, "_compact_rows", drop_first)
    g = random_nets.mlp("relu", 3, (4, 16, 16, 16, 3))
    S = _boxes(g, 3, r=0.4)
    C = torch.tensor(np.random.default_rng(3).normal(size=(3, 3)))
    low = alpha_lower(g, S, C, iterations=8)
    assert bool((low >= deeppoly_lower(g, S, C, intersect=True) - 1e-9).all())
    rng = np.random.default_rng(4)
    for b in range(2):
        x = torch.tensor(rng.uniform(S.lower[b].numpy(), S.upper[b].numpy(), (4000, 4)))
        assert bool((low[b] <= (g.forward(x) @ C.T).min(dim=0).values + 1e-9).all())
