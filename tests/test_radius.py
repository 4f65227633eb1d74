"""Per-sample certified radii (``--radius``) and radius sweeps (``--eps-sweep``), issue 16: no sample is
falsified by PGD below its certified radius; the counterexample radius lies above it; CLI figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from certkit.model import load_model
from certkit.verify.falsify import AttackConfig
from certkit.verify.pipeline import decide
from certkit.verify.query import Budget, Query
from certkit.verify.radius import certified_radii

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = ROOT / "models" / "digits_fc.onnx", ROOT / "models" / "digits_test.npz"


def _data(n: int):
    d = np.load(DATA)
    return d["x"][:n].astype(np.float64), d["y"][:n].astype(np.int64)


@pytest.mark.parametrize("norm,eps_max", [("linf", 0.2), ("l2", 2.0)])
def test_no_sample_falsified_below_its_certified_radius(norm, eps_max):
    model = load_model(str(MODEL))
    x, y = _data(40)
    res = certified_radii(model, x, y, norm, eps_max, (0.0, 1.0), "deeppoly")
    r = res.radii()
    assert (r[r == r] > 0).sum() >= 30  # most samples get a radius
    p = {"linf": float("inf"), "l2": 2.0}[norm]
    qs = [Query.robustness(model.graph, x[k], int(y[k]), s.radius, p, (0.0, 1.0), lambda z: model.runner(z), k)
          for k, s in enumerate(res.samples) if s.radius == s.radius and s.radius > 0]
    out = decide(qs, (), Budget.of(None), seed=3, quick=None, medium=None, long=AttackConfig(256, 6, 40),
                 stop_on_sat=False)
    assert not any(o.status == "falsified" for o in out)
    for s in res.samples:
        if s.radius == s.radius:
            assert s.upper >= s.radius and s.radius <= eps_max


def test_cli_radius_and_sweep(tmp_path, capsys):
    from certkit.cli import main

    args = ["certify", str(MODEL), "--dataset", str(DATA), "--limit", "20", "--domain", "0", "1"]
    assert main(args + ["--eps", "0.2", "--radius", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "certified linf radius per sample" in out and "certified at 0.1: " in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["format"] == "certkit-radius/1" and len(doc["per_sample"]) == 20
    assert main(args + ["--eps-sweep", "0.01,0.05", "--backend", "deeppoly", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "eps 0.01: certified" in out and "eps 0.05: certified" in out
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [run["eps"] for run in doc["runs"]] == [0.01, 0.05]
    assert main(args + ["--eps-sweep", "0.01,x"]) == 2
    assert main(args + ["--eps-sweep", "0.01", "--eps", "0.1"]) == 2
    assert main(args + ["--radius"]) == 2
    assert main(args + ["--eps", "0.1", "--radius", "--backend", "milp"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_total_timeout_holds_for_radius_and_sweep(capsys):
    """The bisection and the sweep stop with --total-timeout (counted from the process start, as
    elsewhere); the radii are those certified so far."""
    import time

    from certkit.cli import main

    args = ["certify", str(MODEL), "--dataset", str(DATA), "--domain", "0", "1", "--total-timeout", "2"]
    for extra in (["--eps", "0.2", "--radius"], ["--eps-sweep", "0.01,0.02,0.05,0.1,0.2"]):
        t = time.monotonic()
        assert main(args + extra) == 0
        assert time.monotonic() - t < 2 + 1.5
    out = capsys.readouterr().out
    assert "eps 0.2: certified" in out
