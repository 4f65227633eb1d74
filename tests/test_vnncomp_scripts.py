"""The VNN-COMP tool interface scripts in ``vnncomp/`` (install_tool.sh is not run: too slow).

CERTKIT_PYTHON points the scripts at this interpreter, so they need no venv.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.examples import FC, ROOT, SAT, UNSAT

SCRIPTS = ROOT / "vnncomp"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def script(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CERTKIT_PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


@pytest.mark.parametrize("name", ["install_tool.sh", "prepare_instance.sh", "run_instance.sh"])
def test_scripts_parse_and_are_executable(name):
    path = SCRIPTS / name
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "set -" in path.read_text() and "pipefail" in path.read_text()


def test_install_tool_rejects_a_bad_version(tmp_path: Path):
    env = dict(os.environ, CERTKIT_VENV=str(tmp_path / "venv"))
    p = subprocess.run(["bash", str(SCRIPTS / "install_tool.sh"), "v2"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "v1" in p.stderr
    assert not (tmp_path / "venv").exists()


def test_prepare_and_run_unsat(tmp_path: Path):
    p = script("prepare_instance.sh", "v1", "digits", FC, UNSAT, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    res = tmp_path / "out" / "results.txt"
    res.parent.mkdir()
    p = script("run_instance.sh", "v1", "digits", FC, UNSAT, res, 60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert res.read_text() == "unsat\n"


def test_gz_inputs_sat_with_witness(tmp_path: Path):
    onnx_gz, spec_gz = tmp_path / "net.onnx.gz", tmp_path / "spec.vnnlib.gz"
    onnx_gz.write_bytes(gzip.compress(FC.read_bytes()))
    spec_gz.write_bytes(gzip.compress(SAT.read_bytes()))
    p = script("prepare_instance.sh", "v1", "digits", "net.onnx.gz", "spec.vnnlib.gz", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # a name without .gz whose .gz exists (VNN-COMP benchmark repositories ship them so) is read from the .gz
    p = script("run_instance.sh", "v1", "digits", "net.onnx", "spec.vnnlib", "res.txt", "30.0", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = (tmp_path / "res.txt").read_text().splitlines()
    assert lines[0] == "sat"
    assert lines[1].startswith("((X_0 ") and lines[-1].endswith("))")
    assert sum(line.lstrip("(").startswith("X_") for line in lines) == 64
    assert sum(line.startswith("(Y_") for line in lines) == 10


def test_missing_file_gives_error(tmp_path: Path):
    p = script("prepare_instance.sh", "v1", "digits", tmp_path / "nope.onnx", UNSAT, cwd=tmp_path)
    assert p.returncode != 0 and "nope.onnx" in p.stderr
    res = tmp_path / "res.txt"
    res.write_text("unsat\n")  # a stale result must not survive
    p = script("run_instance.sh", "v1", "digits", tmp_path / "nope.onnx", UNSAT, res, 60, cwd=tmp_path)
    assert p.returncode != 0
    assert first_line(res) == "error"


def test_prepare_rejects_a_bad_spec(tmp_path: Path):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n")  # 1 input: the model has 64
    p = script("prepare_instance.sh", "v1", "digits", FC, bad, cwd=tmp_path)
    assert p.returncode != 0 and "certkit: error:" in p.stderr


def test_run_usage_errors_leave_error(tmp_path: Path):
    res = tmp_path / "res.txt"
    p = script("run_instance.sh", "v1", "digits", FC, UNSAT, res, "soon", cwd=tmp_path)
    assert p.returncode != 0 and first_line(res) == "error"
    p = script("run_instance.sh", "v0", "digits", FC, UNSAT, res, 60, cwd=tmp_path)
    assert p.returncode != 0 and first_line(res) == "error"
