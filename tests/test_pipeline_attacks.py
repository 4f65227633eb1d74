"""The pipeline's attack budgets: the long attack takes at most LONG_SHARE of the time left when a
complete procedure follows it (the searches attack inside their open domains too), all of it otherwise."""
from __future__ import annotations

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
