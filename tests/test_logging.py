"""Logging and progress (issue 16): ``-v``/``-vv``/``-q``/``--log-file`` before or after the sub-command,
stdout unchanged, nothing on stderr by default, no progress bars off a terminal."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from certkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
FC, SPEC = str(ROOT / "models" / "digits_fc.onnx"), str(ROOT / "vnnlib" / "digits_fc_0_eps0.02.vnnlib")


@pytest.fixture(autouse=True)
def _reset():
    yield
    from certkit.log import setup

    setup(0, None)
    for h in list(logging.getLogger("certkit").handlers):
        logging.getLogger("certkit").removeHandler(h)


def test_default_is_silent_and_verbose_logs_stages(capsys):
    assert main(["certify", FC, SPEC]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.startswith("unsat")
    for argv in (["-v", "certify", FC, SPEC], ["certify", FC, SPEC, "-v"]):
        assert main(argv) == 0
        got = capsys.readouterr()
        assert got.out.splitlines()[0] == "unsat"
        assert "certkit: INFO:" in got.err and "bounds:" in got.err and "DEBUG" not in got.err


def test_quiet_log_file_and_threads_after_the_command(tmp_path, capsys):
    log = tmp_path / "run.log"
    assert main(["certify", FC, SPEC, "-q", "--log-file", str(log), "--threads", "2"]) == 0
    got = capsys.readouterr()
    assert got.err == "" and got.out.startswith("unsat")
    text = log.read_text()
    assert "certkit.pipeline INFO" in text and text[:4].isdigit()  # timestamps
    assert main(["--threads", "2", "certify", FC, SPEC, "--log-file", str(tmp_path / "nowhere" / "x.log")]) == 2


def test_progress_only_on_a_terminal(monkeypatch):
    import sys

    from certkit import log

    log.setup(0, None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert log.progress(10, "sample") is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = log.progress(10, "sample")
    assert bar is not None
    bar.close()
    log.setup(-1, None)  # -q: never
    assert log.progress(10, "sample") is None
