"""The pipeline's attack budgets: the long attack takes at most LONG_SHARE of the time left when a
complete procedure follows it (the searches attack inside their open domains too), all of it otherwise."""
from __future__ import annotations

import numpy as np
import pytest

import certkit
from certkit.verify import pipeline
from certkit.verify.certify import queries_of
from certkit.verify.query import Budget
from tests.helpers.examples import FC, SAT


class _Stop(Exception):
    pass


@pytest.mark.parametrize("plan, share", [(("interval", "bab"), pipeline.LONG_SHARE), (("interval",), 1.0)])
def test_long_attack_leaves_the_complete_procedure_its_time(plan, share, monkeypatch):
    model, spec = certkit.load_model(FC), certkit.load_spec(SAT)
    budget = Budget.of(100)
    seen = {}

    def spy(queries, cfg, within, seed):
        seen["given"], seen["left"] = within.remaining(), budget.remaining()
        raise _Stop

    monkeypatch.setattr(pipeline, "attack_queries", spy)
    monkeypatch.setattr(pipeline, "bound_rows", lambda qs, stage, b: _open(qs))
    with pytest.raises(_Stop):
        pipeline.decide(queries_of(model, spec), plan, budget, quick=None, medium=None)
    assert seen["given"] == pytest.approx(share * seen["left"], rel=0.02, abs=0.05)


def _open(queries):
    raise pipeline.BudgetExpired("no bounds in this test")  # the stages end; the long attack comes next


def _run(monkeypatch, plan, stage_seconds, long=pipeline.LONG_ATTACK):
    """``decide`` on a fake clock, its bound stages taking ``stage_seconds[stage]`` (default 0.1 s) and
    proving nothing: the stages and attacks in order, each attack as (restarts, its share of the time left)."""
    model, spec = certkit.load_model(FC), certkit.load_spec(SAT)
    clock = [1000.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])  # the time module: Budget's clock too
    budget = Budget.of(100)
    events = []

    def spy(queries, cfg, within, seed):
        events.append(("attack", cfg.restarts, round(within.remaining() / budget.remaining(), 3)))
        clock[0] += 1.0
        return {}

    def rows(qs, stage, b):
        events.append(("stage", stage))
        clock[0] += stage_seconds.get(stage, 0.1)
        return [(np.full(q.C.shape[0], -1.0), np.zeros(q.C.shape[0])) for q in qs]

    monkeypatch.setattr(pipeline, "attack_queries", spy)
    monkeypatch.setattr(pipeline, "merge_rows", lambda *a, **k: False)
    pipeline.decide(queries_of(model, spec), plan, budget, quick=None, medium=None, long=long, rows=rows)
    return events


def test_long_attack_runs_right_after_a_slow_stage(monkeypatch):
    """DeepPoly took 30% of the time left: the long attack runs before alpha-CROWN, once."""
    events = _run(monkeypatch, ("interval", "deeppoly", "alpha"), {"deeppoly": 30.0})
    assert events == [("stage", "interval"), ("stage", "deeppoly"),
                      ("attack", pipeline.LONG_ATTACK.restarts, pipeline.LONG_SHARE), ("stage", "alpha")]


@pytest.mark.parametrize("seconds", [{"deeppoly": 5.0}, {"alpha": 50.0}])
def test_long_attack_after_the_stages_otherwise(monkeypatch, seconds):
    """Fast stages, or a slow last one: the long attack after the bound stages, as before."""
    events = _run(monkeypatch, ("interval", "deeppoly", "alpha", "bab"), seconds)
    assert [e[0] for e in events[:3]] == ["stage"] * 3
    assert events[3] == ("attack", pipeline.LONG_ATTACK.restarts, pipeline.LONG_SHARE)
    assert sum(e[0] == "attack" for e in events) == 1


def test_smaller_long_attack_where_input_splitting_decides(monkeypatch):
    """At most INPUT_SPLIT_MAX_DIM free inputs and ``bab`` in the plan: input splitting attacks inside every
    domain it leaves open, and the long attack before it is the smaller one, within SPLIT_LONG_SHARE."""
    monkeypatch.setattr(pipeline, "free_dims", lambda q: 3)
    events = _run(monkeypatch, ("interval", "deeppoly", "bab"), {})
    assert events[2] == ("attack", pipeline.SPLIT_LONG_ATTACK.restarts, pipeline.SPLIT_LONG_SHARE)
    assert pipeline.SPLIT_LONG_ATTACK.restarts * pipeline.SPLIT_LONG_ATTACK.steps \
        < pipeline.LONG_ATTACK.restarts * pipeline.LONG_ATTACK.steps
    custom = pipeline.AttackConfig(samples=64, restarts=5, steps=7)  # a budget the caller chose is kept
    events = _run(monkeypatch, ("interval", "deeppoly", "bab"), {}, long=custom)
    assert events[2] == ("attack", 5, pipeline.SPLIT_LONG_SHARE)
