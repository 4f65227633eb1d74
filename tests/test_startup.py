"""Start-up: what a fresh ``certkit`` process imports (issue 10).

``--version`` and ``--help`` import neither torch, onnx nor numpy; a ``certify`` that proves its
spec imports torch but not the ``onnx`` package (ml_dtypes), onnxruntime (no counterexample to
confirm), scipy, sklearn or a solver. The choices the parser offers without those imports are the
registries' own. Timings are printed by benchmarks/startup.py, not asserted here.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import certkit
from certkit import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FC = os.path.join(ROOT, "models", "digits_fc.onnx")
UNSAT = os.path.join(ROOT, "vnnlib", "digits_fc_0_eps0.02.vnnlib")
HEAVY = ("torch", "onnx", "ml_dtypes", "onnxruntime", "numpy", "scipy", "sklearn", "highspy")

_PROBE = """
import sys
from certkit.cli import main
sys.argv = ["certkit"] + sys.argv[1:]
try:
    rc = main()
finally:
    heavy = {heavy!r}
    print("LOADED", " ".join(m for m in heavy if m in sys.modules), file=sys.stderr)
sys.exit(rc)
"""


def _loaded(*args: str) -> tuple[int, str, set[str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("LOADED")][-1]
    return p.returncode, p.stdout, set(line.split()[1:])


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["certify", "--help"], ["sparsify", "--help"],
                                  ["bench", "--help"], []])
def test_version_and_help_import_nothing_heavy(args):
    rc, out, loaded = _loaded(*args)
    assert rc in (0, 2) and out
    assert loaded == set(), loaded


def test_certify_imports_only_what_it_needs():
    rc, out, loaded = _loaded("certify", FC, UNSAT, "--backend", "deeppoly")
    assert rc == 0 and out.split()[0] == "unsat"
    assert loaded == {"torch", "numpy"}, loaded


def test_parser_choices_are_the_registries():
    from certkit.api import BOUNDS_BACKENDS
    from certkit.verify.certify import STAGES

    p = cli._parser()
    sub = next(a for a in p._actions if a.dest == "command").choices
    certify_backend = next(a for a in sub["certify"]._actions if a.dest == "backend")
    bounds_backend = next(a for a in sub["bounds"]._actions if a.dest == "backend")
    assert tuple(certify_backend.choices) == (*STAGES, "lipschitz")
    assert tuple(bounds_backend.choices) == BOUNDS_BACKENDS


def test_lipschitz_method_choices_are_the_method_registry(capsys):
    from certkit.lipschitz.methods import METHODS

    p = cli._parser()
    sub = next(a for a in p._actions if a.dest == "command").choices
    method = next(a for a in sub["lipschitz"]._actions if a.dest == "method")
    assert tuple(method.choices) == ("auto", *METHODS)
    assert cli.main(["lipschitz", FC, "--method", "nope"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and all(m in err for m in METHODS)


def test_package_attributes_load_on_first_use():
    from certkit import api, certify, load_model

    assert certify is api.certify and load_model is api.load_model
    assert certkit.lipschitz_bounds.__module__ == "certkit.lipschitz.bounds"
    assert set(certkit.__all__) <= set(dir(certkit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        certkit.nope  # noqa: B018


def test_api_functions_named_like_subpackages():
    """``certkit.bounds`` and ``certkit.fixedpoint`` are the API functions, also after their
    subpackages' modules are imported."""
    import certkit.bounds.deeppoly  # noqa: F401
    import certkit.fixedpoint.analysis  # noqa: F401
    from certkit import api

    assert certkit.bounds is api.bounds and certkit.fixedpoint is api.fixedpoint
