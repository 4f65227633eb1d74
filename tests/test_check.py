"""certkit check: certificates are re-derived, and tampered or forged ones rejected.

Exit codes: 0 everything re-derived, 6 a check failed, 7 some part not re-derived.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from certkit.cli import main
from tests.helpers.fp_traps import make_trap
from tests.helpers.onnx_builders import tiny_relu_onnx

ROOT = Path(__file__).resolve().parents[1]
FC = str(ROOT / "models" / "digits_fc.onnx")
UNSAT = str(ROOT / "vnnlib" / "digits_fc_0_eps0.02.vnnlib")
SAT = str(ROOT / "vnnlib" / "digits_fc_0_eps0.3.vnnlib")
DATA = str(ROOT / "models" / "digits_test.npz")


def _cert(tmp_path, spec, backend="auto", model=FC, name="cert.json"):
    out = tmp_path / name
    assert main(["certify", str(model), str(spec), "--backend", backend, "--json", str(out)]) == 0
    return out


def _last(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def _tiny_bab(tmp_path, seed: int = 3, n_in: int = 3, margin: float = 0.05):
    """A 3-input ReLU net and the property 'y >= t' with t a little above the sampled maximum: it
    holds, and needs input splitting."""
    proto = tiny_relu_onnx(seed, n_in=n_in, hidden=(10, 10, 10))
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, path)
    from certkit.onnx.importer import import_model
    g = import_model(proto)
    ys = g(np.random.default_rng(0).uniform(-1, 1, (100_000, n_in)))[:, 0]
    t = ys.max() + margin * (ys.max() - ys.min())
    spec = tmp_path / "tiny.vnnlib"
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)] + ["(declare-const Y_0 Real)"]
    lines += [f"(assert (>= X_{i} -1.0))\n(assert (<= X_{i} 1.0))" for i in range(n_in)]
    lines.append(f"(assert (>= Y_0 {float(t)!r}))")
    spec.write_text("\n".join(lines) + "\n")
    return path, spec


def test_valid_unsat_and_sat(tmp_path, capsys):
    for spec in (UNSAT, SAT):
        cert = _cert(tmp_path, spec)
        capsys.readouterr()
        assert main(["check", str(cert)]) == 0
        assert _last(capsys).startswith("valid")


def test_tampered_witness_and_bounds(tmp_path, capsys):
    cert = _cert(tmp_path, SAT)
    doc = json.loads(cert.read_text())
    doc["witness"]["x"][0] = 7.0  # outside the [0, 1] box
    cert.write_text(json.dumps(doc))
    assert main(["check", str(cert)]) == 6
    assert "FAIL witness outside" in capsys.readouterr().out
    # an unsat claim on a spec the bounds cannot prove
    cert = _cert(tmp_path, UNSAT, "deeppoly")
    assert main(["check", str(cert), "--spec", SAT]) == 6  # other spec: sha differs, bounds fail
    out = capsys.readouterr().out
    assert "spec sha256 differs" in out and "FAIL region 0" in out


def test_bad_certificate_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["check", str(bad)]) == 4
    assert "not a JSON certificate" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.json")]) == 4
    assert main(["check", str(tmp_path)]) == 4  # a folder


def test_input_split_proof_tree_rederived(tmp_path, capsys):
    """A bab certificate records its proof tree; check replays it and re-derives every leaf."""
    model, spec = _tiny_bab(tmp_path)
    cert = _cert(tmp_path, spec, "bab", model)
    doc = json.loads(cert.read_text())
    (prop,) = doc["properties"]
    assert doc["verdict"] == "unsat" and prop["proof"]["method"] == "input_split"
    (tree,) = prop["proof"]["trees"]
    assert tree["leaves"] > 1 and tree["nodes"] == 2 * tree["leaves"] - 1
    assert Path(tmp_path / doc["proof_file"]["path"]).exists()
    capsys.readouterr()
    assert main(["check", str(cert)]) == 0
    out = capsys.readouterr().out
    assert f"{tree['leaves']} leaves ({tree['leaves']} by their recorded bound" in out
    assert out.strip().splitlines()[-1].startswith("valid: everything re-derived")


@pytest.mark.parametrize("value", ["x", None])
def test_proof_tree_meta_of_the_wrong_value_is_malformed(tmp_path, capsys, value):
    """A recorded alpha schedule that is not a number: one line, exit 4, no traceback."""
    model, spec = _tiny_bab(tmp_path)
    cert = _cert(tmp_path, spec, "bab", model)
    doc = json.loads(cert.read_text())
    meta = doc["properties"][0]["proof"]["trees"][0]["meta"]
    assert meta["alpha_lr_decay"] == 0.98
    meta["alpha_lr_decay"] = value
    cert.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["check", str(cert)]) == 4
    err = capsys.readouterr().err
    assert "malformed certificate" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_tampered_proof_tree_rejected(tmp_path, capsys):
    model, spec = _tiny_bab(tmp_path)
    cert = _cert(tmp_path, spec, "bab", model)
    doc = json.loads(cert.read_text())
    npz = tmp_path / doc["proof_file"]["path"]
    # 1. a changed proof file: its SHA-256 no longer matches
    saved = npz.read_bytes()
    npz.write_bytes(saved[:-8] + b"\0" * 8)
    assert main(["check", str(cert)]) == 6
    assert "FAIL proof file" in capsys.readouterr().out
    # 2. a re-hashed proof file whose tree lost a subtree: not a tree any more
    import hashlib
    import io
    z = dict(np.load(io.BytesIO(saved)))
    key = doc["properties"][0]["proof"]["trees"][0]["key"]
    z[f"{key}_codes"] = z[f"{key}_codes"][:-1]
    buf = io.BytesIO()
    np.savez_compressed(buf, **z)
    npz.write_bytes(buf.getvalue())
    doc["proof_file"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    cert.write_text(json.dumps(doc))
    assert main(["check", str(cert)]) == 6
    assert "FAIL region 0" in capsys.readouterr().out


def test_forged_unsat_on_a_false_property_rejected(tmp_path, capsys):
    """A certificate claiming unsat for a property onnxruntime violates (a float32 trap) fails,
    whether it claims rows, or a one-leaf proof tree."""
    trap = make_trap("cancel", 0, samples=400)
    model = tmp_path / "trap.onnx"
    model.write_bytes(trap.model.SerializeToString())
    spec = tmp_path / "trap.vnnlib"
    spec.write_text(trap.vnnlib())
    cert = _cert(tmp_path, spec, "deeppoly", model)
    doc = json.loads(cert.read_text())
    assert doc["verdict"] != "unsat"
    doc["verdict"] = "unsat"
    prop = doc["properties"][0]
    prop["status"] = "verified"
    prop["proof"] = {"method": "bounds", "stage": "deeppoly"}
    for dj in prop["disjuncts"]:
        dj["spec_lower"] = [1.0] * len(dj["spec_lower"])
    cert.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["check", str(cert)]) == 6
    assert "FAIL region 0: bounds re-derived" in capsys.readouterr().out
    # a forged one-leaf input-splitting tree
    import hashlib
    import io
    buf = io.BytesIO()
    np.savez_compressed(buf, p0_t0_codes=np.array([[-1, -1]], np.int32), p0_t0_values=np.array([1.0]))
    (tmp_path / "cert.proof.npz").write_bytes(buf.getvalue())
    doc["proof_file"] = {"path": "cert.proof.npz", "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    prop["proof"] = {"method": "input_split", "stage": "bab", "trees": [
        {"key": "p0_t0", "method": "input_split", "kinds": ["deeppoly", "alpha"], "leaves": 1, "nodes": 1,
         "disjuncts": [0], "payload": [], "meta": {"alpha_iterations": 5}}]}
    cert.write_text(json.dumps(doc))
    assert main(["check", str(cert), "--time-per-leaf", "2"]) == 6
    assert "1 failed" in capsys.readouterr().out


def _robustness_spec(path: Path, index: int, eps: float) -> Path:
    """L_inf robustness of digits_test.npz image ``index`` for digits_fc, clipped to [0, 1]."""
    d = np.load(DATA)
    x, label = d["x"].reshape(len(d["x"]), -1)[index].astype(np.float64), int(d["y"][index])
    lines = [f"(declare-const X_{i} Real)" for i in range(64)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x):
        lines += [f"(assert (>= X_{i} {float(max(v - eps, 0.0))!r}))", f"(assert (<= X_{i} {float(min(v + eps, 1.0))!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label) + "))")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("probe", [0.0, None])
def test_relu_split_proof_rederived(tmp_path, capsys, monkeypatch, probe):
    """ReLU splitting (digits_fc, 64 inputs) records one tree per disjunct with its multipliers
    (input splitting, which runs first on 64 free inputs and proves this one in a fraction of a
    second, made to hand over at once); and input splitting's own proof on 64 inputs checks too."""
    from certkit.verify import procedures

    if probe is not None:
        monkeypatch.setattr(procedures, "INPUT_SPLIT_PROBE", probe)
    cert = _cert(tmp_path, _robustness_spec(tmp_path / "r.vnnlib", 1, 0.08), "bab")
    doc = json.loads(cert.read_text())
    proof = doc["properties"][0]["proof"]
    if proof["method"] == "bounds":
        pytest.skip("the bound stage already decides this instance")
    if probe is not None:
        assert proof["method"] == "relu_split" and len(proof["trees"]) == 9
    else:
        assert proof["method"] in ("input_split", "relu_split")
    capsys.readouterr()
    assert main(["check", str(cert)]) == 0


@pytest.mark.parametrize("index,eps", [(1, 0.08), (3, 0.12)])
def test_relu_split_root_reuses_the_alpha_stage(tmp_path, capsys, monkeypatch, index, eps):
    """In ``auto`` ReLU splitting starts from the pipeline's alpha-CROWN run (no second root run), and
    the proof, whose tree records that run's iterations, is re-derived by ``certkit check``."""
    from certkit.verify import procedures, relu_split

    monkeypatch.setattr(procedures, "INPUT_SPLIT_PROBE", 0.0)
    monkeypatch.setattr(procedures, "MILP_ONLY_NEURONS", 0)  # digits_fc's 64 ReLUs would go to the MILP alone
    calls = {"n": 0}
    orig = relu_split.alpha_lower

    def counting(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(relu_split, "alpha_lower", counting)
    cert = _cert(tmp_path, _robustness_spec(tmp_path / "r.vnnlib", index, eps), "auto")
    proof = json.loads(cert.read_text())["properties"][0]["proof"]
    assert proof["method"] == "relu_split" and calls["n"] == 0
    capsys.readouterr()
    assert main(["check", str(cert)]) == 0 and calls["n"] == 1  # the recheck's own root run


def test_paths_relative_to_the_certificate(tmp_path, capsys):
    """Model, spec and proof file move with the certificate's folder."""
    model, spec = _tiny_bab(tmp_path)
    cert = _cert(tmp_path, spec, "bab", model)
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.copytree(tmp_path, moved)
    shutil.rmtree(tmp_path)
    capsys.readouterr()
    assert main(["check", str(moved / cert.name)]) == 0
    assert str(moved) in capsys.readouterr().out


def test_milp_certificate_resolved(tmp_path, capsys):
    pytest.importorskip("highspy")
    model, spec = _tiny_bab(tmp_path, seed=1, n_in=2)
    cert = _cert(tmp_path, spec, "milp", model)
    doc = json.loads(cert.read_text())
    assert doc["verdict"] == "unsat"
    capsys.readouterr()
    assert main(["check", str(cert)]) == 0
    if doc["properties"][0]["proof"]["method"] == "milp":
        assert "MILP solved again: verified" in capsys.readouterr().out


def test_dataset_certificate(tmp_path, capsys):
    out = tmp_path / "ds.json"
    assert main(["certify", FC, "--dataset", DATA, "--eps", "0.06", "--domain", "0", "1", "--limit", "40",
                 "--backend", "deeppoly", "--json", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    assert _last(capsys).startswith("valid")
    doc = json.loads(out.read_text())
    # claim an unknown (or falsified) sample verified: the bounds do not re-derive it
    k = next(i for i, s in enumerate(doc["per_sample"]) if s["verdict"] in ("unknown", "falsified"))
    doc["per_sample"][k]["verdict"] = "verified"
    doc["per_sample"][k]["stage"] = "deeppoly"
    doc["certified"] += 1
    out.write_text(json.dumps(doc))
    assert main(["check", str(out)]) == 6


@pytest.mark.parametrize("arithmetic", ["float32", "float64"])
def test_check_rederives_in_the_certificates_arithmetic(tmp_path, capsys, monkeypatch, arithmetic):
    """A certificate made with ``--arithmetic A`` records it, and ``check`` re-derives its bounds with
    the same products (certkit.bounds.products32); an unknown value falls back to ``auto``."""
    from certkit import check as check_module

    spec = ROOT / "vnnlib" / "digits_conv_0_eps0.02.vnnlib"
    out = tmp_path / "cert.json"
    assert main(["certify", str(ROOT / "models" / "digits_conv.onnx"), str(spec), "--arithmetic", arithmetic,
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["options"]["arithmetic"] == arithmetic
    seen = []
    real = check_module.load_model
    monkeypatch.setattr(check_module, "load_model", lambda p, a="auto": seen.append(a) or real(p, a))
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    assert _last(capsys).startswith("valid") and seen == [arithmetic]
    assert check_module._arithmetic({"options": {"arithmetic": "float16"}}) == "auto"
    assert check_module._arithmetic({}) == "auto"


def test_sat_where_an_interval_holds_no_float32(tmp_path, capsys):
    """X_0 pinned to 0.1 (lower = upper, no float32 equals it) and an unsafe set every output meets:
    the witness takes float32(0.1) there (what onnxruntime computes with for the real 0.1), certify says
    sat, and check accepts it, naming the rounded coordinate; a witness moved one float32 step away is
    rejected."""
    proto = tiny_relu_onnx(0, n_in=3)
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, path)
    spec = tmp_path / "pinned.vnnlib"
    lines = [f"(declare-const X_{i} Real)" for i in range(3)] + ["(declare-const Y_0 Real)",
             "(assert (>= X_0 0.1))", "(assert (<= X_0 0.1))"]
    lines += [f"(assert (>= X_{i} -1.0))\n(assert (<= X_{i} 1.0))" for i in (1, 2)]
    lines.append("(assert (>= Y_0 -1e30))")
    spec.write_text("\n".join(lines) + "\n")
    cert = _cert(tmp_path, spec, model=path)
    doc = json.loads(cert.read_text())
    assert doc["verdict"] == "sat" and doc["witness"]["x"][0] == float(np.float32(0.1))
    capsys.readouterr()
    assert main(["check", str(cert)]) == 0
    out = capsys.readouterr().out
    assert "1 coordinate(s) at the float32 rounding" in out
    doc["witness"]["x"][0] = float(np.nextafter(np.float32(0.1), np.float32(1)))
    cert.write_text(json.dumps(doc))
    assert main(["check", str(cert)]) == 6
    assert "witness outside its box" in capsys.readouterr().out


def test_l1_data_set_certificate_with_falsified_samples_checks(tmp_path, capsys):
    """An L_1 data-set certificate's witnesses are re-run within the L_1 ball (the check knew L_inf and
    L_2 only: an L_1 certificate with a falsified sample was an internal error)."""
    from pathlib import Path

    from certkit.cli import main

    root = Path(__file__).resolve().parents[1]
    cert = tmp_path / "l1.json"
    assert main(["certify", str(root / "models" / "digits_fc.onnx"), "--dataset", str(root / "models" / "digits_test.npz"),
                 "--limit", "20", "--eps", "3", "--norm", "l1", "--domain", "0", "1", "--backend", "deeppoly",
                 "--json", str(cert)]) == 0
    assert "falsified: 0" not in capsys.readouterr().out
    assert main(["check", str(cert)]) == 0
    assert "witness re-run with onnxruntime" in capsys.readouterr().out
