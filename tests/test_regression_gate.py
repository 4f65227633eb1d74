"""benchmarks/regression_gate.py's comparison with its baseline (the run itself needs ../shared)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("regression_gate", ROOT / "benchmarks" / "regression_gate.py")
gate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gate)


def _row(vnnlib: str, verdict: str, time_s: float = 1.0, wrong: str = "0", expected: str = "") -> dict:
    return {"onnx": "n.onnx", "vnnlib": vnnlib, "verdict": verdict, "time_s": f"{time_s}", "timeout": "100",
            "wrong": wrong, "expected": expected, "set": "acas186"}


def test_compare_sorts_changes():
    base = {gate.key("acas186", r): r for r in [
        _row("a", "unsat"), _row("b", "sat", 10.0), _row("c", "unsat", 80.0), _row("d", "timeout", 100.0),
        _row("e", "sat"), _row("f", "unsat")]}
    now = [("acas186", r) for r in [
        _row("a", "sat"),                                   # contradicts the baseline
        _row("b", "timeout", 100.0),                        # decided in 10 s before: lost
        _row("c", "unknown", 90.0),                         # decided near the timeout before: marginal
        _row("d", "unsat", 50.0),                           # gained
        _row("e", "unsat", wrong="1", expected="sat"),      # wrong against the expected verdict
        _row("f", "unsat", 2.0),                            # unchanged
        _row("g", "unsat")]]                                # not in the baseline
    fail, marginal, gained = gate.compare(now, base)
    assert [f.split()[0] for f in fail] == ["CONTRA", "LOST", "WRONG"]
    assert [f.split()[3] for f in fail] == ["a:", "b:", "e:"]
    assert len(marginal) == 1 and " c: " in marginal[0]
    assert len(gained) == 1 and " d: " in gained[0]


def test_acas186_is_the_competition_set():
    inst = gate.acas186({})
    assert len(inst) == 186 and len({(r.onnx, r.vnnlib) for r in inst}) == 186
    assert all(r.timeout == 116.0 for r in inst)


@pytest.mark.parametrize("text", ["x,y\n1,2\n", "set,onnx,vnnlib,verdict,time_s,timeout\nacas186,a,b,unsat,abc,116\n"])
def test_a_malformed_baseline_is_one_line(text, tmp_path):
    path = tmp_path / "base.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match="not a gate baseline"):
        gate.read_baseline(str(path))
    assert gate.read_baseline(str(tmp_path / "none.csv")) == {}
