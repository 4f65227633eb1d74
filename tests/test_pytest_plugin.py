"""certkit's pytest plugin (issue 16): user test files run by pytester, inline (the plugin loaded from
the ``pytest11`` entry point, as after ``pip install certkit``) and once in a subprocess."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from certkit.pytest_plugin import assert_certified, assert_property

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FC = os.path.join(ROOT, "models", "digits_fc.onnx")
DATA = os.path.join(ROOT, "models", "digits_test.npz")
UNSAT = os.path.join(ROOT, "vnnlib", "digits_fc_0_eps0.02.vnnlib")
SAT = os.path.join(ROOT, "vnnlib", "digits_fc_0_eps0.3.vnnlib")


@pytest.fixture(scope="module", autouse=True)
def _heavy_modules_loaded_outside():
    """pytester's inline runs drop the modules first imported inside them when they end; imported again by
    the next run, the protobuf classes of onnx's model format crash (upb). Load them here, once, so the
    inline runs share them (certkit.api, the ONNX importer, onnxruntime)."""
    import certkit

    certkit.load_model(FC).runner  # noqa: B018 - creates the onnxruntime session


HEADER = f"""
import numpy as np
import pytest
from certkit.pytest_plugin import assert_certified, assert_property

FC, DATA, UNSAT, SAT = {FC!r}, {DATA!r}, {UNSAT!r}, {SAT!r}
with np.load(DATA) as z:
    X, Y = z["x"][:60], z["y"][:60]
"""


def test_passing_gate(pytester):
    pytester.makepyfile(HEADER + """
def test_dataset():
    res = assert_certified(FC, (X[:40], Y[:40]), eps=0.02, at_least=0.5, backend="deeppoly")
    assert res.total == 40

def test_npz_path_and_domain():
    assert_certified(FC, DATA, eps=0.005, domain=(0, 1), at_least=0.9, backend="deeppoly")

def test_property(certkit_model):
    m = certkit_model(FC)
    assert certkit_model(FC) is m  # loaded once per session
    assert assert_property(m, UNSAT, backend="deeppoly").verdict == "unsat"
""")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_failing_gate_names_samples_and_counterexamples(pytester):
    pytester.makepyfile(HEADER + """
def test_dataset():
    assert_certified(FC, (X, Y), eps=0.02, at_least=1.0, backend="deeppoly")

def test_property():
    assert_property(FC, SAT, timeout=30)
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    m = re.search(r"certkit: certified (\d+)/60 \(([\d.]+)%\) is below at_least 100.0%", out)
    assert m and int(m.group(1)) < 60, out
    assert re.search(r"verified \d+, falsified \d+, unknown \d+, timeout \d+, misclassified \d+", out)
    assert re.search(r"sample \d+ \(label \d\): misclassified", out)
    falsified = re.findall(r"sample (\d+) \(label (\d)\): falsified, counterexample (\S+\.npz)", out)
    assert falsified, out
    for index, label, path in falsified:
        # in the test's folder under pytest's temporary directory (not the fallback outside pytest)
        assert os.path.basename(os.path.dirname(path)).startswith("certkit-test_dataset") and os.path.exists(path)
        with np.load(path) as z:
            assert int(z["label"]) == int(label) and int(z["index"]) == int(index)
        assert os.path.exists(path[:-4] + ".counterexample")
    m = re.search(r"certkit: verdict sat for \S+digits_fc_0_eps0.3.vnnlib \(the property is violated; "
                  r"expected unsat\)", out)
    assert m, out
    cex = re.search(r"counterexample (\S+\.counterexample) \(input box 0", out).group(1)
    with open(cex) as f:
        assert f.readline() == "sat\n"
    # the report points at the user's line, not the plugin's internals
    assert "pytest_plugin.py" not in out


def test_marker_option_and_fixture_in_a_subprocess(pytester):
    """A fresh process (the entry point loads the plugin); no model work, so it stays cheap."""
    pytester.makepyfile("""
import pytest

@pytest.mark.certkit_slow
def test_slow():
    pass

def test_fast(certkit_counterexample_dir):
    assert certkit_counterexample_dir.is_dir()
""")
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess("--strict-markers", "--certkit-skip-slow", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*certkit_slow (--certkit-skip-slow)*"])


def test_marker_is_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.certkit_slow: a slow certkit verification test*"])
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--certkit-skip-slow*"])


def test_assertions_outside_a_user_file(tmp_path, certkit_counterexample_dir):
    """Direct calls: an explicit counterexamples folder always gets the files; the default is the
    test's certkit_counterexample_dir; a threshold given as a percentage is a usage error."""
    from certkit.errors import DataError, UsageError

    with np.load(DATA) as z:
        x, y = z["x"][:60], z["y"][:60]
    res = assert_certified(FC, (x, y), eps=0.02, at_least=0.5, backend="deeppoly", counterexamples=tmp_path / "cex")
    n = res.counts["falsified"]
    assert n and len(list((tmp_path / "cex").glob("sample_*.npz"))) == n
    with pytest.raises(AssertionError, match="is below at_least 99.0%"):
        assert_certified(FC, (x, y), eps=0.02, at_least=0.99, backend="deeppoly")
    assert len(list(certkit_counterexample_dir.glob("sample_*.counterexample"))) == n
    with pytest.raises(UsageError, match="write 0.95"):
        assert_certified(FC, (x, y), eps=0.02, at_least=95)
    with pytest.raises(DataError, match="outside the domain"):
        assert_certified(FC, (x * 2, y), eps=0.02, domain=(0, 1))
    with pytest.raises(DataError, match="no such file"):
        assert_certified(FC, tmp_path / "missing.npz", eps=0.02)
    with pytest.raises(AssertionError, match="verdict unknown .*not proven"):
        assert_property(FC, UNSAT, backend="interval")  # robust, but beyond interval bounds
