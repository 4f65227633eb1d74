"""The memory budget (issue 11): ``--memory-limit`` parsing, chunked back-substitution giving the same
bounds as unchunked, alpha-CROWN planning fewer slopes, and bounds that degrade (soundly, and saying
so in the output and the certificate) when a method does not fit.

Where a test needs an exact budget, the resident memory is pinned to 0 (``memory.rss``), so the
budget is the headroom itself and the chunk sizes are deterministic.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certkit.bounds import memory
from certkit.bounds.alpha import alpha_lower, plan_alpha
from certkit.bounds.backends import BACKENDS
from certkit.bounds.deeppoly import BoundState, deeppoly_lower
from certkit.bounds.fallback import lower_within_memory
from certkit.bounds.interval import interval_bounds
from certkit.cli import main
from certkit.spec.sets import InputSet
from certkit.verify.query import Budget
from tests.helpers import random_nets
from tests.helpers.examples import FC, UNSAT

D = torch.float64
#: Bytes of peak per float of a chunk's rows, as rows_within counts them.
PER_FLOAT = memory.FLOAT_BYTES * memory.MULTIPLICITY / memory.WORKING_SHARE


def run(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err.splitlines()


@pytest.fixture
def no_rss(monkeypatch):
    monkeypatch.setattr(memory, "rss", lambda: 0)


def _case(name: str, seed: int = 0, batch: int = 2):
    g = random_nets.build(name, seed)
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, (batch, g.n_inputs))
    r = rng.uniform(0.05, 0.3, (batch, g.n_inputs))
    S = InputSet(torch.tensor(c - r, dtype=D), torch.tensor(c + r, dtype=D))
    n = g.n_outputs
    C = torch.tensor(rng.normal(size=(2 * n + 1, n)), dtype=D)
    return g, S, C


def _samples(g, S: InputSet, k: int = 2000) -> torch.Tensor:
    """(b, k, n_out) outputs of the IR executor at points of each batch element's box (corners too)."""
    gen = torch.Generator().manual_seed(0)
    lo, hi = S.lower, S.upper
    t = torch.rand(lo.shape[0], k, lo.shape[1], generator=gen, dtype=D)
    t[:, : k // 4] = t[:, : k // 4].round()
    x = lo[:, None] + t * (hi - lo)[:, None]
    y = g.forward(x.reshape(-1, lo.shape[1]))
    return y.reshape(lo.shape[0], k, -1)


def _assert_sound(g, S, C, low) -> None:
    vals = torch.einsum("sn,bkn->bks", C, _samples(g, S))
    assert bool((vals.min(dim=1).values >= low - 1e-9 * (1 + low.abs())).all())


# ------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text,value", [("8G", 8 << 30), ("500M", 500 << 20), ("1.5GB", 3 << 29), ("64MiB", 64 << 20),
                                        ("2097152", 2 << 20), (" 2 g ", 2 << 30), ("1e3M", 1000 << 20),
                                        ("unlimited", memory.UNLIMITED), ("none", memory.UNLIMITED)])
def test_parse_size(text, value):
    assert memory.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1G", "10X", "0", "100K", "1.2.3G", "nan"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        memory.parse_size(text)


def test_default_limit_is_a_fraction_of_what_is_available():
    avail, lim = memory.available(), memory.default_limit()
    assert avail > 0 and lim > 0
    assert memory.limit_of(None) == lim == memory.limit_of(Budget())
    assert memory.limit_of(Budget(memory=123 << 20)) == 123 << 20
    assert memory.format_size(3 << 29) == "1.5 GB" and memory.format_size(memory.UNLIMITED) == "unlimited"


def test_budget_keeps_memory_in_sub_budgets():
    b = Budget.of(10.0, memory=64 << 20)
    assert b.share(0.5).memory == b.cap(1.0).memory == b.before_end(1.0).memory == 64 << 20


# ------------------------------------------------------------------------------------ chunking


@pytest.mark.parametrize("name", ["conv", "residual", "mlp_relu_deep"])
@pytest.mark.parametrize("intersect", [False, True])
def test_tiny_budget_chunks_and_gives_the_same_bounds(no_rss, monkeypatch, name, intersect):
    g, S, C = _case(name)
    calls = {"rows": 0}
    orig = BoundState.lower_of

    def counting(self, t, A, *a, **k):
        calls["rows"] += 1
        return orig(self, t, A, *a, **k)

    monkeypatch.setattr(BoundState, "lower_of", counting)
    full = deeppoly_lower(g, S, C, intersect, budget=Budget(memory=memory.UNLIMITED))
    n_full = calls["rows"]
    # two rows of intermediate refinement per chunk, or four of the output
    tiny = Budget(memory=int(2 * 2 * S.batch * g.max_node_size * PER_FLOAT) + 1)
    calls["rows"] = 0
    chunked = deeppoly_lower(g, S, C, intersect, budget=tiny)
    assert calls["rows"] > n_full  # it did chunk
    assert torch.allclose(chunked, full, rtol=1e-9, atol=1e-9)


def test_one_row_that_does_not_fit_raises_before_allocating(no_rss):
    g, S, C = _case("conv")
    with pytest.raises(memory.MemoryExceeded, match="per row"):
        deeppoly_lower(g, S, C, budget=Budget(memory=int(S.batch * g.max_node_size * PER_FLOAT) - 1))


def test_alpha_plans_fewer_slopes_when_they_do_not_fit(no_rss):
    g, S, C = _case("mlp_relu_deep", batch=1)
    ibp = interval_bounds(g, S)
    s = C.shape[0]
    assert plan_alpha(g, ibp, s, 1, Budget(memory=memory.UNLIMITED)).form == "full"
    from certkit.bounds.alpha import alpha_bytes
    shared = alpha_bytes(g, ibp, s, 1, False, True)
    assert shared < alpha_bytes(g, ibp, s, 1, False)
    plan = plan_alpha(g, ibp, s, 1, Budget(memory=int(shared / memory.WORKING_SHARE) + 1))  # shared slopes fit
    assert plan.form == "shared" and not plan.out_only and "shared across each node's rows" in plan.reason
    report: dict = {}
    low = alpha_lower(g, S, C, iterations=5, budget=Budget(memory=int(shared / memory.WORKING_SHARE) + 1),
                      report=report)
    assert report["form"] == "shared" and "shared" in report["reason"]
    from certkit.bounds.alpha import SHARED_ITERATIONS
    report = {}
    alpha_lower(g, S, C, iterations=SHARED_ITERATIONS + 10, budget=Budget(memory=int(shared / memory.WORKING_SHARE) + 1),
                report=report)
    assert report["iterations"] <= SHARED_ITERATIONS  # the memory-chosen shared form runs fewer iterates
    dp = deeppoly_lower(g, S, C, True)
    assert bool((low >= dp - 1e-9 * (1 + dp.abs())).all())
    _assert_sound(g, S, C, low)
    one = alpha_bytes(g, ibp, 1, 1, True)
    budget = Budget(memory=int(2 * one / memory.WORKING_SHARE) + 1)  # two output rows per pass
    plan = plan_alpha(g, ibp, s, 1, budget)
    assert plan.out_only and plan.rows == 2 and "output rows only" in plan.reason
    report: dict = {}
    low = alpha_lower(g, S, C, iterations=5, budget=budget, report=report)
    assert "2 rows per pass" in report["reason"]
    dp = deeppoly_lower(g, S, C, True)
    assert bool((low >= dp - 1e-9 * (1 + dp.abs())).all())  # never looser than DeepPoly
    _assert_sound(g, S, C, low)
    with pytest.raises(memory.MemoryExceeded):
        plan_alpha(g, ibp, s, 1, Budget(memory=int(0.5 * one / memory.WORKING_SHARE)))


# ------------------------------------------------------------------------------------ degrading


def test_degrades_to_crown_output_then_interval_and_stays_sound(no_rss):
    g, S, C = _case("conv")
    per_row = S.batch * g.max_node_size * PER_FLOAT
    low, m = lower_within_memory("deeppoly", g, S, C, Budget(memory=int(1.5 * per_row)))
    assert (m.asked, m.used) == ("deeppoly", "crown-output") and m.degraded and "per row" in m.reason
    _assert_sound(g, S, C, low)
    assert bool((low >= BACKENDS["interval"].lower(g, S, C) - 1e-12).all())
    low, m = lower_within_memory("alpha", g, S, C, Budget(memory=int(0.5 * per_row)))
    assert m.used == "interval" and "deeppoly+interval, crown-output" in m.reason
    assert torch.equal(low, BACKENDS["interval"].lower(g, S, C))
    _assert_sound(g, S, C, low)
    low, m = lower_within_memory("deeppoly", g, S, C, Budget(memory=memory.UNLIMITED))
    assert m.used == "deeppoly" and not m.degraded


def test_cli_memory_limit_end_to_end(capsys, tmp_path):
    rc, out, err = run(capsys, "bounds", FC, UNSAT, "--memory-limit", "lots")
    assert rc == 2 and "memory size" in err[0]
    jf = tmp_path / "b.json"
    rc, out, _ = run(capsys, "bounds", FC, UNSAT, "--json", jf)
    doc = json.loads(jf.read_text())
    assert rc == 0 and doc["methods"] == ["deeppoly"] and doc["degraded"] == [] and not any("note" in o for o in out)
    rc, out_i, _ = run(capsys, "bounds", FC, UNSAT, "--backend", "interval")
    # 1M is below what the process holds already: nothing but interval bounds fit
    rc, out, _ = run(capsys, "bounds", FC, UNSAT, "--memory-limit", "1M", "--json", jf)
    doc = json.loads(jf.read_text())
    assert rc == 0 and doc["methods"] == ["interval"] and doc["memory_limit"] == 1 << 20
    assert doc["degraded"][0]["stage"] == "deeppoly" and doc["degraded"][0]["method"] == "interval"
    assert out[-1].startswith("note: deeppoly bounds degraded to interval") and out[:-1] == out_i
    cert = tmp_path / "c.json"
    rc, out, _ = run(capsys, "certify", FC, UNSAT, "--backend", "deeppoly", "--memory-limit", "1M", "--json", cert)
    doc = json.loads(cert.read_text())
    assert rc == 0 and out[0] in ("unsat", "unknown") and out[-1].startswith("note: deeppoly bounds degraded")
    assert doc["options"]["memory_limit"] == 1 << 20 and doc["degraded"][0]["method"] == "interval"
    assert {s for d in doc["properties"][0]["disjuncts"] for s in d["row_stage"]} == {"interval"}
    rc, out, _ = run(capsys, "check", cert)
    assert rc == 0 and out[-1].startswith("valid")
    rc, out, _ = run(capsys, "certify", FC, UNSAT, "--backend", "deeppoly", "--memory-limit", "8G")
    assert rc == 0 and out[0] == "unsat" and not any(o.startswith("note:") for o in out)


def test_bounds_out_of_time_give_way_to_interval():
    import certkit

    m = certkit.load_model(FC)
    s = certkit.load_spec(UNSAT, m)
    r = certkit.bounds(m, s, "deeppoly", timeout=Budget.of(0.0))
    assert [x.used for x in r.methods] == ["interval"] and "out of time" in r.methods[0].reason
    ref = certkit.bounds(m, s, "interval")
    assert np.array_equal(r.output_lower, ref.output_lower) and np.array_equal(r.spec_lower, ref.spec_lower)
    r = certkit.bounds(m, s, "deeppoly", timeout=60.0)
    assert [x.used for x in r.methods] == ["deeppoly"] and not r.degraded


def test_dataset_mode_records_what_was_degraded(capsys, tmp_path):
    from tests.helpers.examples import DATA

    cert = tmp_path / "d.json"
    rc, out, _ = run(capsys, "certify", FC, "--dataset", DATA, "--eps", "0.002", "--limit", "4", "--backend",
                     "deeppoly", "--memory-limit", "1M", "--json", cert)
    doc = json.loads(cert.read_text())
    assert rc == 0 and out[-1].startswith("note: deeppoly bounds degraded to interval")
    assert doc["degraded"][0]["method"] == "interval" and doc["options"]["memory_limit"] == 1 << 20
    assert {s["stage"] for s in doc["per_sample"] if s["verdict"] == "verified"} <= {"interval"}
    rc, out, _ = run(capsys, "check", cert)
    assert rc == 0 and out[-1].startswith("valid")
