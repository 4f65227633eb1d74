"""The ``certkit`` command line: verdicts, output files, certificates and the exit-code contract.

Most tests call :func:`certkit.cli.main` in-process (capsys captures stdout and
stderr); a few run ``python -m certkit.cli`` to check real exit codes and that
stderr holds one line without a traceback.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from certkit.cli import main

from tests.helpers.examples import CONV, CONV_UNSAT, DATA, DATA_CONV, FC, MARGIN, ROOT, SAT, UNSAT

VERDICTS = {"unsat", "sat", "unknown", "timeout"}



def run(capsys, *args) -> tuple[int, list[str], list[str]]:
    """main() in-process: (exit code, stdout lines, stderr lines)."""
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err.splitlines()


def assert_one_error_line(err: list[str], *needles: str) -> str:
    assert len(err) == 1, err
    assert err[0].startswith("certkit: error: "), err
    assert "Traceback" not in err[0]
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def box_of(vnnlib: Path) -> tuple[np.ndarray, np.ndarray]:
    """The input box of a simple VNN-LIB file, read with a regex (independent of certkit's parser)."""
    lo, hi = {}, {}
    for op, i, v in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", vnnlib.read_text()):
        (hi if op == "<=" else lo)[int(i)] = float(v)
    n = max(lo) + 1
    assert sorted(lo) == sorted(hi) == list(range(n))
    return np.array([lo[i] for i in range(n)]), np.array([hi[i] for i in range(n)])


def ort_run(model: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    return np.asarray(s.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0]).reshape(-1)


# ---------------------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("model,spec", [(FC, UNSAT), (FC, MARGIN), (CONV, CONV_UNSAT)],
                         ids=["fc_eps0.02", "fc_margin", "conv_eps0.02"])
def test_unsat_verdict_and_results_file(capsys, tmp_path, model, spec):
    out_file = tmp_path / "res.txt"
    rc, out, err = run(capsys, "certify", model, spec, "--out", out_file)
    assert rc == 0 and err == []
    assert out[0] == "unsat"
    assert out_file.read_text() == "unsat\n"


def test_sat_verdict_and_results_file(capsys, tmp_path):
    out_file = tmp_path / "res.txt"
    rc, out, err = run(capsys, "certify", FC, SAT, "--out", out_file)
    assert rc == 0 and err == []
    assert out[0] == "sat"
    text = out_file.read_text()
    lines = text.splitlines()
    assert lines[0] == "sat"
    # ((X_0 v)\n(X_1 v)\n...\n(Y_9 v)) : every input, then every output, one per line
    body = lines[1:]
    assert body[0].startswith("((") and body[-1].endswith("))")
    pat = re.compile(r"^\(?\((X|Y)_(\d+) ([^\s()]+)\)\)?$")
    names, values = [], []
    for ln in body:
        m = pat.match(ln)
        assert m, ln
        names.append(f"{m.group(1)}_{m.group(2)}")
        values.append(float(m.group(3)))
    assert names == [f"X_{i}" for i in range(64)] + [f"Y_{j}" for j in range(10)]
    assert text.count("(") == text.count(")")
    x, y_file = np.array(values[:64]), np.array(values[64:])
    # the input is a float32 point inside the spec's box (checked exactly in float64)
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)
    lo, hi = box_of(SAT)
    assert ((x >= lo) & (x <= hi)).all()
    # onnxruntime reproduces the output, and it satisfies the unsafe set OR_{j != 0} Y_j >= Y_0
    y = ort_run(FC, x).astype(np.float64)
    np.testing.assert_allclose(y, y_file, rtol=1e-6, atol=1e-6)
    assert (y[1:] >= y[0]).any()
    assert (y_file[1:] >= y_file[0]).any()


def test_json_certificate_unsat(capsys, tmp_path):
    cert = tmp_path / "c.json"
    rc, out, _ = run(capsys, "certify", FC, UNSAT, "--json", cert, "--seed", 3)
    assert rc == 0 and out[0] == "unsat"
    doc = json.loads(cert.read_text())
    assert doc["format"].startswith("certkit-certificate/")
    import certkit

    assert doc["certkit_version"] == certkit.__version__
    assert doc["model"]["sha256"] == hashlib.sha256(FC.read_bytes()).hexdigest()
    assert doc["spec"]["sha256"] == hashlib.sha256(UNSAT.read_bytes()).hexdigest()
    assert doc["verdict"] == "unsat"
    assert doc["options"]["seed"] == 3
    fp = doc["floating_point"]
    assert fp["precision"] == "float32" and fp["unit_roundoff"] == 2.0 ** -24 and "gamma" in fp["rule"]
    assert doc["timings"]["total"] >= 0 and "load" in doc["timings"]
    assert "witness" not in doc
    (prop,) = doc["properties"]
    assert prop["status"] == "verified"
    assert len(prop["input_lower"]) == len(prop["input_upper"]) == 64
    assert len(prop["disjuncts"]) == 9
    for dj in prop["disjuncts"]:
        assert dj["ruled_out"] is True
        assert len(dj["spec_lower"]) == len(dj["row_margin"]) == len(dj["row_stage"]) >= 1
        assert any(s > m for s, m in zip(dj["spec_lower"], dj["row_margin"]))
        assert all(m > 0 for m in dj["row_margin"])
    assert prop["proof"]["method"] == "bounds"


def test_json_certificate_sat(capsys, tmp_path):
    cert = tmp_path / "c.json"
    rc, out, _ = run(capsys, "certify", FC, SAT, "--json", cert)
    assert rc == 0 and out[0] == "sat"
    doc = json.loads(cert.read_text())
    assert doc["verdict"] == "sat"
    w = doc["witness"]
    assert len(w["x"]) == 64 and len(w["y"]) == 10 and w["validated_with"] == "onnxruntime"
    x = np.array(w["x"])
    lo, hi = box_of(SAT)
    assert ((x >= lo) & (x <= hi)).all()
    y = ort_run(FC, x)
    assert y[1 + w["disjunct"]] >= y[0]  # disjunct k of this spec is Y_{k+1} >= Y_0
    assert doc["properties"][0]["status"] == "falsified"


# ---------------------------------------------------------------------------------------------- other commands


def test_bounds_json(capsys, tmp_path):
    jf = tmp_path / "b.json"
    rc, out, err = run(capsys, "bounds", FC, UNSAT, "--json", jf)
    assert rc == 0 and err == []
    assert [ln.split(":")[0] for ln in out] == [f"Y_{j}" for j in range(10)]
    doc = json.loads(jf.read_text())
    lo, hi = np.array(doc["output_lower"]), np.array(doc["output_upper"])
    assert lo.shape == hi.shape == (10,)
    assert (lo <= hi).all()
    assert len(doc["spec_lower"]) == 9
    # the spec rows are Y_0 - Y_j >= ..., implied by the output bounds (deeppoly is at least as tight)
    implied = lo[0] - hi[1:]
    assert (np.array(doc["spec_lower"]) >= implied - 1e-9).all()
    # the centre image's output lies inside the bounds
    blo, bhi = box_of(UNSAT)
    y = ort_run(FC, (blo + bhi) / 2)
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()


@pytest.mark.parametrize("backend", ["interval", "deeppoly", "auto"])
def test_bounds_backends(capsys, tmp_path, backend):
    jf = tmp_path / "b.json"
    rc, _, _ = run(capsys, "bounds", FC, MARGIN, "--backend", backend, "--json", jf)
    assert rc == 0
    doc = json.loads(jf.read_text())
    assert (np.array(doc["output_lower"]) <= np.array(doc["output_upper"])).all()
    assert doc["backend"] == backend


def test_ops_table(capsys):
    rc, out, err = run(capsys, "ops")
    assert rc == 0 and err == []
    text = "\n".join(out)
    for name in ("Gemm", "Conv", "Relu", "Flatten", "MatMul"):
        assert re.search(rf"\b{name}\b", text), name
    assert "IR op x backend:" in text
    header = next(ln for ln in out if ln.strip().startswith("op "))
    for b in ("interval", "deeppoly"):
        assert b in header
    relu = next(ln for ln in out if ln.split() and ln.split()[0] == "relu")
    assert "yes" in relu.split()


def test_version(capsys):
    import certkit

    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out == [f"certkit {certkit.__version__}"]


# ---------------------------------------------------------------------------------------------- data-set mode

CERT_LINE = re.compile(r"^certified: (\d+)/(\d+) \((\d+\.\d)%\)$")


def test_dataset_mode_text_and_json(capsys, tmp_path):
    jf = tmp_path / "d.json"
    rc, out, err = run(capsys, "certify", FC, "--dataset", DATA, "--eps", 0.02, "--limit", 60,
                       "--json", jf, "--domain", 0, 1)
    assert rc == 0
    m = CERT_LINE.match(out[-1])
    assert m, out
    k, n = int(m.group(1)), int(m.group(2))
    assert n == 60 and 0 < k <= n
    assert m.group(3) == f"{100 * k / n:.1f}"
    doc = json.loads(jf.read_text())
    assert doc["certified"] == k and doc["total"] == n
    assert doc["eps"] == 0.02 and doc["norm"] == "linf" and doc["domain"] == [0, 1]
    assert doc["model"]["sha256"] == hashlib.sha256(FC.read_bytes()).hexdigest()
    ps = doc["per_sample"]
    assert [s["index"] for s in ps] == list(range(60))
    for s in ps:
        assert s["verdict"] in ("verified", "falsified", "unknown", "misclassified")
        assert s["time"] >= 0
        assert "margin_lower" in s
        if s["verdict"] == "verified":
            assert s["margin_lower"] > 0
        if s["verdict"] == "misclassified":
            assert s["margin_lower"] is None
    assert sum(s["verdict"] == "verified" for s in ps) == k
    assert sum(doc["counts"].values()) == n


def test_dataset_mode_conv_l2(capsys):
    rc, out, _ = run(capsys, "certify", CONV, "--dataset", DATA_CONV, "--eps", 0.1, "--norm", "l2",
                     "--limit", 20, "--backend", "deeppoly")
    assert rc == 0
    m = CERT_LINE.match(out[-1])
    assert m and int(m.group(2)) == 20 and int(m.group(1)) > 0


# ---------------------------------------------------------------------------------------------- backends, timeout


@pytest.mark.parametrize("backend", ["interval", "deeppoly", "auto"])
def test_backend_choice(capsys, tmp_path, backend):
    jf = tmp_path / "c.json"
    rc, out, _ = run(capsys, "certify", FC, MARGIN, "--backend", backend, "--json", jf)
    assert rc == 0 and out[0] in VERDICTS
    doc = json.loads(jf.read_text())
    assert doc["backend"] == backend
    if backend != "interval":  # deeppoly proves the margin spec (MILP max of Y_6 - Y_0 is -3.07)
        assert out[0] == "unsat"
    if out[0] == "unknown":
        assert len(out) >= 2 and out[1]  # a reason is given


def test_timeout_generous_and_tiny(capsys):
    rc, out, _ = run(capsys, "certify", FC, UNSAT, "--timeout", 60)
    assert rc == 0 and out[0] == "unsat"
    rc, out, _ = run(capsys, "certify", FC, UNSAT, "--timeout", 1e-9)
    assert rc == 0 and out[0] in ("timeout", "unsat")
    if out[0] == "timeout":
        assert "time budget" in out[1]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_timeout_must_be_positive(capsys, value):
    rc, out, err = run(capsys, "certify", FC, UNSAT, "--timeout", value)
    assert rc == 2 and out[0] == "error"
    assert_one_error_line(err, "--timeout")


# ---------------------------------------------------------------------------------------------- bad inputs


def _spec_lines() -> list[str]:
    return UNSAT.read_text().splitlines()


def _first_input_assert(lines: list[str]) -> int:
    return next(i for i, ln in enumerate(lines) if ln.startswith("(assert (<= X_0 "))


def test_truncated_onnx(capsys, tmp_path):
    bad = tmp_path / "half.onnx"
    raw = FC.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    rc, out, err = run(capsys, "certify", bad, UNSAT)
    assert rc == 3 and out[0] == "error"
    assert_one_error_line(err, "half.onnx")


def test_missing_model(capsys, tmp_path):
    rc, out, err = run(capsys, "certify", tmp_path / "nope.onnx", UNSAT)
    assert rc == 3 and out[0] == "error"
    assert_one_error_line(err, "nope.onnx")


def test_missing_spec(capsys, tmp_path):
    rc, out, err = run(capsys, "certify", FC, tmp_path / "nope.vnnlib")
    assert rc == 4 and out[0] == "error"
    assert_one_error_line(err, "nope.vnnlib")


def test_vnnlib_missing_paren(capsys, tmp_path):
    lines = _spec_lines()
    k = _first_input_assert(lines)
    lines[k] = lines[k][:-1]  # (assert (<= X_0 0.02)   <- one ')' missing
    bad = tmp_path / "typo.vnnlib"
    bad.write_text("\n".join(lines) + "\n")
    rc, out, err = run(capsys, "certify", FC, bad)
    assert rc == 4 and out[0] == "error"
    line = assert_one_error_line(err)
    m = re.search(r"typo\.vnnlib:(\d+):(\d+)", line)
    assert m, line
    assert int(m.group(1)) == k + 1  # the unclosed '(' is on that line


def test_vnnlib_misspelt_command(capsys, tmp_path):
    lines = _spec_lines()
    k = _first_input_assert(lines)
    lines[k] = lines[k].replace("(assert", "(asert")
    bad = tmp_path / "asert.vnnlib"
    bad.write_text("\n".join(lines) + "\n")
    rc, out, err = run(capsys, "certify", FC, bad)
    assert rc == 4 and out[0] == "error"
    line = assert_one_error_line(err, f"asert.vnnlib:{k + 1}:", "asert")
    assert re.search(rf"asert\.vnnlib:{k + 1}:\d+", line)


def test_vnnlib_input_index_out_of_range(capsys, tmp_path):
    lines = _spec_lines()
    k = _first_input_assert(lines)
    lines[k:k] = ["(declare-const X_64 Real)", "(assert (<= X_64 0.5))"]
    bad = tmp_path / "x64.vnnlib"
    bad.write_text("\n".join(lines) + "\n")
    rc, out, err = run(capsys, "certify", FC, bad)
    assert rc == 4 and out[0] == "error"
    assert_one_error_line(err, "x64.vnnlib", "64")


@pytest.mark.parametrize("case", ["wrong_shape", "missing_y", "npy_not_npz", "float_labels", "outside_domain"])
def test_bad_data_file(capsys, tmp_path, case):
    f = tmp_path / f"{case}.npz"
    d = np.load(DATA)
    if case == "wrong_shape":
        np.savez(f, x=np.zeros((10, 63), np.float32), y=np.zeros(10, np.int64))
    elif case == "missing_y":
        np.savez(f, x=np.zeros((10, 64), np.float32))
    elif case == "npy_not_npz":
        f = tmp_path / "x.npy"
        np.save(f, d["x"])
    elif case == "float_labels":  # integral floats (3.0) are labels; 2.5 is not
        np.savez(f, x=d["x"], y=d["y"] + 0.5)
    else:
        np.savez(f, x=d["x"] * 255, y=d["y"])
    extra = ["--domain", 0, 1] if case == "outside_domain" else []
    rc, out, err = run(capsys, "certify", FC, "--dataset", f, "--eps", 0.01, *extra)
    assert rc == 4
    assert_one_error_line(err, f.name)
    assert all(ln == "error" for ln in out)  # no partial results
    if case == "missing_y":
        assert "'y'" in err[0]


def test_missing_data_file(capsys, tmp_path):
    rc, _, err = run(capsys, "certify", FC, "--dataset", tmp_path / "none.npz", "--eps", 0.01)
    assert rc == 4
    assert_one_error_line(err, "none.npz")


@pytest.mark.parametrize("args", [
    ["certify", FC, UNSAT, "--backend", "foo"],            # unknown backend (argparse choice)
    ["certify", FC, "--dataset", DATA],                    # --dataset without --eps
    ["certify", FC],                                       # neither a spec nor a data set
    ["certify", FC, UNSAT, "--eps", "0.1"],                # --eps without --dataset
    ["certify", FC, UNSAT, "--dataset", DATA, "--eps", "0.1"],  # both
    ["certify", FC, "--dataset", DATA, "--eps", "-0.1"],
    ["certify", FC, "--dataset", DATA, "--eps", "nan"],
    ["certify", FC, "--dataset", DATA, "--eps", "0.1", "--batch-size", "0"],
    ["certify", FC, "--dataset", DATA, "--eps", "0.1", "--limit", "-1"],
    ["certify", FC, "--dataset", DATA, "--eps", "0.1", "--norm", "l3"],
    ["certify", FC, "--dataset", DATA, "--eps", "0.1", "--domain", "1", "0"],
    ["certify", FC, UNSAT, "--no-such-option"],
    ["bounds", FC],
    ["frobnicate"],
], ids=["backend", "dataset_no_eps", "no_spec", "eps_with_spec", "spec_and_dataset", "negative_eps", "nan_eps",
        "batch0", "negative_limit", "norm_l3", "domain_reversed", "unknown_option", "bounds_no_spec",
        "unknown_command"])
def test_usage_errors(capsys, args):
    rc, out, err = run(capsys, *args)
    assert rc == 2
    assert_one_error_line(err)
    if args[0] == "certify" and "--dataset" not in args:
        assert out[0] == "error"
    if args[-2:] == ["--backend", "foo"]:
        assert "foo" in err[0] and "deeppoly" in err[0]


def test_no_command_prints_help(capsys):
    rc, out, _ = run(capsys)
    assert rc == 2 and any("certify" in ln for ln in out)


def _unsupported_model(path: Path) -> None:
    """Gemm -> Round -> Hardmax: two unsupported nodes."""
    w = numpy_helper.from_array(np.random.RandomState(0).randn(10, 64).astype(np.float32), "W")
    nodes = [helper.make_node("Gemm", ["X", "W"], ["h"], name="fc", transB=1),
             helper.make_node("Round", ["h"], ["sq"], name="the_round"),
             helper.make_node("Hardmax", ["sq"], ["Y"], name="the_hardmax", axis=1)]
    g = helper.make_graph(nodes, "unsupported", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 10])], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def test_unsupported_ops_name_every_node(capsys, tmp_path):
    f = tmp_path / "unsup.onnx"
    _unsupported_model(f)
    rc, out, err = run(capsys, "certify", f, UNSAT)
    assert rc == 3 and out[0] == "error"
    assert_one_error_line(err, "the_round", "Round", "the_hardmax", "Hardmax")
    rc, out, err = run(capsys, "bounds", f, UNSAT)
    assert rc == 3 and out == []
    assert_one_error_line(err, "the_round", "the_hardmax")


# ---------------------------------------------------------------------------------------------- real processes

SUB_CASES = {"sat": 0, "truncated": 3, "typo": 4, "closed_stdout": None}


@pytest.fixture(scope="module")
def sub_runs(tmp_path_factory):
    """Run every ``python -m certkit.cli`` case at once (each pays the torch import): case -> (rc, out, err)."""
    tmp = tmp_path_factory.mktemp("sub")
    half = tmp / "half.onnx"
    half.write_bytes(FC.read_bytes()[: FC.stat().st_size // 2])
    typo = tmp / "typo.vnnlib"
    typo.write_text(UNSAT.read_text().replace("(assert (<= X_0 0.02))", "(assert (<= X_0 0.02)"))
    args = {"sat": ["certify", FC, SAT], "truncated": ["certify", half, UNSAT], "typo": ["certify", FC, typo],
            "closed_stdout": ["certify", FC, UNSAT]}
    procs = {k: subprocess.Popen([sys.executable, "-m", "certkit.cli", *map(str, a)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=ROOT, text=True) for k, a in args.items()}
    procs["closed_stdout"].stdout.close()  # like `certkit certify ... | head -0`
    out = {}
    for k, p in procs.items():
        if k == "closed_stdout":
            err = p.stderr.read()
            p.wait(timeout=120)
            out[k] = (p.returncode, "", err)
        else:
            o, e = p.communicate(timeout=120)
            out[k] = (p.returncode, o, e)
    return out


def test_subprocess_verdict_exit_0(sub_runs):
    rc, out, err = sub_runs["sat"]
    assert rc == 0, err
    assert out.splitlines()[0] == "sat"
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["truncated", "typo"])
def test_subprocess_error_exit_codes(sub_runs, case):
    rc, out, err = sub_runs[case]
    assert rc == SUB_CASES[case], (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("certkit: error: "), err
    assert "Traceback" not in err
    assert out.splitlines()[0] == "error"


def test_subprocess_closed_stdout_is_quiet(sub_runs):
    """The reader closes the pipe before anything is written: no traceback, no 'Exception ignored'."""
    rc, _, err = sub_runs["closed_stdout"]
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert rc in (0, 141)


def test_results_file_values_round_trip(capsys, tmp_path):
    """Every X/Y value in the results file reads back to the exact float32 of the witness."""
    out_file, cert = tmp_path / "r.txt", tmp_path / "c.json"
    rc, out, _ = run(capsys, "certify", FC, SAT, "--out", out_file, "--json", cert)
    assert out[0] == "sat"
    vals = [float(v) for v in re.findall(r"\([XY]_\d+ (\S+?)\)", out_file.read_text())]
    w = json.loads(cert.read_text())["witness"]
    assert vals == w["x"] + w["y"]
    assert all(math.isfinite(v) for v in vals)


def test_plugin_with_missing_optional_package(monkeypatch, capsys):
    """A sub-command whose optional package is absent stays listed and says what to install (exit 5)."""
    import sys

    for name in [m for m in sys.modules if m.startswith("certkit.sparsify")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    rc, out, err = run(capsys, "sparsify", FC, "--data", "x.npz", "-o", "y.onnx")
    assert rc == 5
    assert_one_error_line(err, "pip install")
