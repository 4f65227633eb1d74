"""certkit check: certificates are re-validated, and tampered ones rejected."""
from __future__ import annotations

import json
from pathlib import Path

from certkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
FC = str(ROOT / "models" / "digits_fc.onnx")
UNSAT = str(ROOT / "vnnlib" / "digits_fc_0_eps0.02.vnnlib")
SAT = str(ROOT / "vnnlib" / "digits_fc_0_eps0.3.vnnlib")


def _cert(tmp_path, spec, backend="auto"):
    out = tmp_path / "cert.json"
    assert main(["certify", FC, spec, "--backend", backend, "--json", str(out)]) == 0
    return out


def test_valid_unsat_and_sat(tmp_path, capsys):
    for spec in (UNSAT, SAT):
        cert = _cert(tmp_path, spec)
        capsys.readouterr()
        assert main(["check", str(cert)]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == "valid"


def test_tampered_witness_and_bounds(tmp_path, capsys):
    cert = _cert(tmp_path, SAT)
    doc = json.loads(cert.read_text())
    doc["witness"]["x"][0] = 7.0  # outside the [0, 1] box
    cert.write_text(json.dumps(doc))
    assert main(["check", str(cert)]) == 6
    assert "FAIL witness outside" in capsys.readouterr().out
    # an unsat claim on a spec the bounds cannot prove
    cert = _cert(tmp_path, UNSAT, "deeppoly")
    doc = json.loads(cert.read_text())
    assert main(["check", str(cert), "--spec", SAT]) == 6  # other spec: sha differs, bounds fail
    out = capsys.readouterr().out
    assert "spec sha256 differs" in out and "FAIL region 0" in out


def test_bad_certificate_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["check", str(bad)]) == 4
    assert "not a JSON certificate" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.json")]) == 4
