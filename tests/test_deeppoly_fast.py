"""DeepPoly's fast paths (issue 12) give the bounds of the generic back-substitution.

* ``BoundState._fast_step``: the ReLU-like step on the alive columns with intercepts as products and
  the fused Dense; against the generic step (the fast step switched off), to 1e-12 relative.
* ``BoundState._inactive_by_reference``/``_refine_upper``: neurons that the interval image of the
  back-substituted layer before shows ``<= 0`` get their upper rows only (both where that upper
  bound is > 0 after all); the bounds are the generic ones, with fewer rows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certkit.bounds import deeppoly_rows
from certkit.bounds.deeppoly import BoundState, deeppoly_lower
from certkit.bounds.products32 import with_arithmetic
from certkit.spec.sets import InputSet
from tests.helpers import random_nets

D = torch.float64
NETS = {
    "deep_relu": lambda seed: random_nets.mlp("relu", seed, (6, 24, 24, 24, 24, 24, 3)),
    "mixed": lambda seed: random_nets.mlp("mixed", seed, (6, 16, 16, 16, 16, 3)),
    "sigmoid": lambda seed: random_nets.mlp("sigmoid", seed, (5, 12, 12, 12, 3)),
    "conv": random_nets.conv_net,
    "residual": random_nets.residual_net,
    "max": random_nets.max_net,
}


def _case(g, seed: int, batch: int = 2, width: float = 0.3):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, (batch, g.n_inputs))
    r = rng.uniform(0.02, width, (batch, g.n_inputs))
    S = InputSet(torch.tensor(c - r, dtype=D), torch.tensor(c + r, dtype=D))
    n = g.n_outputs
    C = torch.tensor(rng.normal(size=(2 * n + 1, n)), dtype=D)
    return S, C


def _generic(monkeypatch):
    monkeypatch.setattr(BoundState, "_fast_step", lambda self, i: None)
    monkeypatch.setattr(BoundState, "_inactive_by_reference", lambda self, j, mask: None)


def _rows(monkeypatch) -> dict:
    """Counts the rows every intermediate back-substitution starts with."""
    count = {"rows": 0}
    orig, signed = BoundState.bound_rows, BoundState._signed_rows

    def counting(self, j, idx):
        count["rows"] += 2 * int(idx.shape[-1])
        return orig(self, j, idx)

    def counting_signed(self, j, sel, sign):
        count["rows"] += int(sel.numel())
        return signed(self, j, sel, sign)

    monkeypatch.setattr(BoundState, "bound_rows", counting)
    monkeypatch.setattr(BoundState, "_signed_rows", counting_signed)
    return count


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("intersect", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_paths_give_the_generic_bounds(monkeypatch, name, intersect, seed):
    monkeypatch.setattr(deeppoly_rows, "MIN_SKIP_WORK", 0)  # skip rows even in these small nets
    g = NETS[name](seed)
    S, C = _case(g, seed)
    fast = deeppoly_lower(g, S, C, intersect)
    with monkeypatch.context() as m:
        _generic(m)
        ref = deeppoly_lower(g, S, C, intersect)
    assert bool(torch.isfinite(fast).all())
    assert torch.allclose(fast, ref, rtol=1e-12, atol=1e-12)


def _fast_and_generic(monkeypatch, g, S, C):
    """``(bounds, rows)`` of pure CROWN with the row savings, then with the generic steps."""
    count = _rows(monkeypatch)
    fast = deeppoly_lower(g, S, C, intersect=False)
    n_fast = count["rows"]
    with monkeypatch.context() as m:
        _generic(m)
        count["rows"] = 0
        ref = deeppoly_lower(g, S, C, intersect=False)
        n_ref = count["rows"]
    return fast, n_fast, ref, n_ref


def test_inactive_neurons_get_upper_rows_only(monkeypatch):
    """A deep ReLU net on wide boxes: the interval pass leaves every neuron of the deeper layers
    unstable (all rows), the back-substituted layer before shows many of them <= 0: upper rows only."""
    monkeypatch.setattr(deeppoly_rows, "MIN_SKIP_WORK", 0)
    skipped = 0
    for seed in range(4):
        g = NETS["deep_relu"](seed)
        S, C = _case(g, seed, batch=1, width=0.5)
        fast, n_fast, ref, n_ref = _fast_and_generic(monkeypatch, g, S, C)
        assert n_fast <= n_ref
        skipped += n_ref - n_fast
        assert torch.allclose(fast, ref, rtol=1e-12, atol=1e-12)
    assert skipped > 0


def test_reference_needs_relu_consumers_only(monkeypatch):
    """Not for an affine node feeding a LeakyReLU (its negative side reaches the next layer)."""
    monkeypatch.setattr(deeppoly_rows, "MIN_SKIP_WORK", 0)
    g = random_nets.mlp("leaky_relu", 0, (6, 24, 24, 24, 3))
    S, _ = _case(g, 0, batch=1, width=0.5)
    st = BoundState(g, S, intersect=False)
    for j, node in enumerate(g.nodes):
        if j and g.consumers[j] and node.inputs != (0,):
            mask = torch.ones(1, g.size(j), dtype=torch.bool)
            assert st._inactive_by_reference(j, mask) is None


def test_batch_rows_per_sample(monkeypatch):
    """A batch (three copies of one box) with inactive neurons by reference: each sample
    back-substitutes its own rows (lower and upper, or upper only), with the generic bounds (here
    many upper rows come out > 0, looser than the reference, and take their lower rows after)."""
    monkeypatch.setattr(deeppoly_rows, "MIN_SKIP_WORK", 0)
    monkeypatch.setattr(deeppoly_rows, "PER_SAMPLE_ROWS", 1.0)
    calls = {"per_sample": 0}
    orig = BoundState._rows_per_sample

    def spy(self, *a):
        calls["per_sample"] += 1
        return orig(self, *a)

    monkeypatch.setattr(BoundState, "_rows_per_sample", spy)
    g = NETS["deep_relu"](0)
    one, C = _case(g, 0, batch=1, width=0.3)
    S = InputSet(one.lower.repeat(3, 1), one.upper.repeat(3, 1))
    fast, n_fast, ref, _ = _fast_and_generic(monkeypatch, g, S, C)
    assert calls["per_sample"] > 0 and n_fast > 0
    assert torch.allclose(fast, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arithmetic", ["float64", "float32"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_error_charged_in_the_activation_step(monkeypatch, arithmetic, seed):
    """The rounding error of a Conv feeding a ReLU alone is charged in the ReLU's fast step
    (``RowSavings._folds_below``: ``|A'| e = A+ lw e - A- uw e``) instead of at the Conv: the bounds of
    the charge at the Conv, to 1e-12, with the bound products in float64 and in float32."""
    g = with_arithmetic(random_nets.conv_net(seed), arithmetic)
    S, C = _case(g, seed)
    taken = {"n": 0}
    orig = BoundState._folds_below

    def spy(self, *a):
        got = orig(self, *a)
        taken["n"] += int(got)
        return got

    monkeypatch.setattr(BoundState, "_folds_below", spy)
    folded = deeppoly_lower(g, S, C, True)
    monkeypatch.setattr(BoundState, "_folds_below", lambda self, *a: False)
    ref = deeppoly_lower(g, S, C, True)
    assert taken["n"] > 0
    assert bool(torch.isfinite(folded).all())
    assert torch.allclose(folded, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act,gain", [("leaky_relu", 1.5), ("relu", 1e38)])
def test_conv_error_charged_at_the_conv_where_it_cannot_fold(monkeypatch, act, gain):
    """No fold where it would not be ``|A'| e``: a LeakyReLU's negative slope, or an error that
    overflows (weights of 1e38: ``inf`` errors, charged at the Conv, ``-inf`` rather than NaN bounds
    where they reach). The bounds are those of the charge at the Conv, and no NaN."""
    rng = np.random.default_rng(0)
    b = random_nets.Builder((1, 2, 5, 5), rng)
    x = b.act(b.conv(0, 3, 3, 1, (1, 1, 1, 1), gain=gain), act)
    x = b.act(b.conv(x, 3, 3, 2, (1, 1, 1, 1)), act)
    b.dense(x, 2)
    g = b.graph()
    S, C = _case(g, 0, width=0.05)
    folded = deeppoly_lower(g, S, C, True)
    monkeypatch.setattr(BoundState, "_folds_below", lambda self, *a: False)
    ref = deeppoly_lower(g, S, C, True)
    assert not bool(torch.isnan(folded).any())
    assert torch.equal(torch.isinf(folded), torch.isinf(ref))
    fin = torch.isfinite(ref)
    assert torch.allclose(folded[fin], ref[fin], rtol=1e-12, atol=1e-12)
