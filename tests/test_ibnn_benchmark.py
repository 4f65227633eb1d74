"""benchmarks/ibnn.py --quick: the IBNN-vs-standard table runs end to end, with no certified sample
broken by a confirmed counterexample (the script exits 1 on one)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.examples import ROOT, SHARED

MNIST = SHARED / "data" / "mnist.npz"


def test_ibnn_benchmark_quick(tmp_path):
    if not MNIST.exists():
        pytest.skip(f"../shared not found: {MNIST} is missing")
    out = tmp_path / "ibnn.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ibnn.py"), "--quick", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for head in ("### dense: ibnn_dense vs std_dense", "### conv: ibnn_conv vs std_conv",
                 "| norm | eps | IBNN DP | IBNN Lip | IBNN PGD | std DP | std Lip | std PGD | check IBNN/std |"):
        assert head in p.stdout, p.stdout
    got = json.loads(out.read_text())
    assert got["n"] == 20
    assert [m["model"] for m in got["models"]] == ["ibnn_dense", "std_dense", "ibnn_conv", "std_conv"]
    for m in got["models"]:
        assert [(r["norm"], r["eps"]) for r in m["rows"]] == [("linf", 0.01), ("l2", 0.5)]
        for r in m["rows"]:
            assert r["unsound"] == []
            assert max(r["deeppoly"], r["lipschitz"]) <= r["pgd"] <= m["clean"]
