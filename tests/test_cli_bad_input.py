"""Bad input on the command line (issue 9, "Trust"): one stderr line, the documented exit code, nothing lost.

Output paths that cannot be written and option values out of range are usage errors (exit 2)
found before anything is loaded: the tests pass a model that does not exist, so any work done
first would end in exit 3 instead. Bad data files are data errors (exit 4). A verdict that is
printed is also written to ``--out``/``--json``, whole or not at all. Nothing ends in exit 70.
"""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from certkit import api, cli
from certkit.errors import BackendError, DataError
from certkit.verify.certify import STAGES

from tests.helpers.examples import DATA, FC, ROOT, UNSAT
from tests.test_cli import VERDICTS, assert_one_error_line, box_of, run

# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def deny_write(monkeypatch):
    """Take write permission away from a path; as root (where permissions do not bind) also make
    ``os.access`` say so, which is what certkit consults before any work."""
    denied: set[str] = set()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.abspath(os.fspath(path)) in denied:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)

    def deny(path: Path) -> None:
        path.chmod(0o555 if path.is_dir() else 0o444)
        denied.add(os.path.abspath(path))

    yield deny
    for p in denied:
        os.chmod(p, 0o755)


def _plugin_available(command: str) -> bool:
    return not isinstance(cli._plugin(cli.PLUGINS[command][0]), cli._MissingDependency)


def _two_box_spec(path: Path) -> Path:
    """UNSAT's property over two input boxes (the second half of the first): two attack seeds, seed and seed + 1."""
    lo, hi = box_of(UNSAT)
    mid = (lo + hi) / 2

    def box(a, b):
        return "(and " + " ".join(f"(>= X_{i} {float(a[i])!r}) (<= X_{i} {float(b[i])!r})"
                                  for i in range(len(a))) + ")"

    text = UNSAT.read_text()
    decls = "\n".join(ln for ln in text.splitlines() if ln.startswith("(declare-const"))
    outputs = text[text.index("; Output constraints:"):]
    path.write_text(f"{decls}\n(assert (or {box(lo, hi)}\n            {box(mid, hi)}))\n{outputs}")
    return path


def _big_weight_model(path: Path) -> Path:
    """2 -> 2 -> 2 ReLU net with float32 weights of 3e38: onnxruntime's outputs overflow to inf."""
    w1 = np.array([[3e38, -3e38], [1.0, 2.0]], np.float32)
    w2 = np.array([[1.0, 3e38], [2e38, -1.0]], np.float32)
    b = np.zeros(2, np.float32)
    nodes = [helper.make_node("Gemm", ["X", "W1", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b"], ["Y"], transB=1)]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])],
                          initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"),
                                       numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


BIG_SPEC = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 0))
(assert (<= X_0 1))
(assert (>= X_1 0))
(assert (<= X_1 1))
(assert (<= Y_1 -1))
"""

# ---------------------------------------------------------------------------------------------- output paths

#: Every option that writes a file: (plugin or None, the command line up to the option). The inputs do not
#: exist: a path checked before any work gives exit 2, anything else would give exit 3 or 4.
OUTPUT_OPTIONS = {
    "certify --out": (None, ["certify", "missing.onnx", UNSAT, "--out"]),
    "certify --json": (None, ["certify", "missing.onnx", UNSAT, "--json"]),
    "certify --dataset --json": (None, ["certify", "missing.onnx", "--dataset", DATA, "--eps", "0.01", "--json"]),
    "bounds --json": (None, ["bounds", "missing.onnx", UNSAT, "--json"]),
    "bench --out": ("bench", ["bench", "missing.csv", "--out"]),
    "lipschitz --json": ("lipschitz", ["lipschitz", "missing.onnx", "--json"]),
    "sparsify -o": ("sparsify", ["sparsify", "missing.onnx", "--data", DATA, "-o"]),
    "sparsify --json": ("sparsify", ["sparsify", "missing.onnx", "--data", DATA, "-o", "ok.onnx", "--json"]),
    "fixedpoint --json": ("fixedpoint", ["fixedpoint", "missing.onnx", "--json"]),
    "abba convert -o": ("abba", ["abba", "convert", "missing.onnx", "-o"]),
}
PROBLEMS = ["missing_folder", "folder", "read_only_file", "read_only_folder"]


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("option", list(OUTPUT_OPTIONS))
def test_unwritable_output_path_is_a_usage_error_before_any_work(capsys, tmp_path, monkeypatch, deny_write,
                                                                   option, problem):
    plugin, args = OUTPUT_OPTIONS[option]
    if plugin and not _plugin_available(plugin):
        pytest.skip(f"{plugin} needs an optional package")
    monkeypatch.chdir(tmp_path)
    if problem == "missing_folder":
        target, why = tmp_path / "none" / "out.txt", "does not exist"
    elif problem == "folder":
        target, why = tmp_path / "adir", "is a folder"
        target.mkdir()
        (target / "keep.txt").write_text("kept")
    elif problem == "read_only_file":
        target, why = tmp_path / "old.txt", "read-only"
        target.write_text("old")
        deny_write(target)
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        deny_write(folder)
        target, why = folder / "out.txt", "no write permission"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, out, err = run(capsys, *args, target)
    assert rc == 2
    assert_one_error_line(err, args[-1], str(target), why)
    assert out == (["error"] if option in ("certify --out", "certify --json") else [])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing created
    if problem == "read_only_file":
        assert target.read_text() == "old"
    if problem == "folder":
        assert (target / "keep.txt").read_text() == "kept"


def test_device_output_is_written_in_place(capsys):
    rc, out, err = run(capsys, "certify", FC, UNSAT, "--out", os.devnull, "--json", os.devnull)
    assert rc == 0 and out[0] == "unsat" and err == []
    assert Path(os.devnull).exists() and not Path(os.devnull).is_file()


@pytest.mark.parametrize("failing", ["--out", "--json"])
def test_verdict_is_kept_when_one_output_cannot_be_written(capsys, tmp_path, monkeypatch, failing):
    """The folder vanishes between the check and the write: the verdict stands, the other file is written."""
    monkeypatch.setattr(cli, "output_path", lambda p: p)  # skip the checks made before any work
    monkeypatch.setattr(cli, "output_path_or_folder", lambda p: p)
    gone, res, cert = tmp_path / "gone", tmp_path / "r.txt", tmp_path / "c.json"
    if failing == "--out":
        res = gone / "r.txt"
    else:
        cert = gone / "c.json"
    rc, out, err = run(capsys, "certify", FC, UNSAT, "--out", res, "--json", cert)
    assert rc == 2
    assert out[0] == "unsat" and "error" not in out
    assert_one_error_line(err, failing, str(gone))
    assert not gone.exists()
    if failing == "--out":
        assert json.loads(cert.read_text())["verdict"] == "unsat"
    else:
        assert res.read_text() == "unsat\n"


def test_failed_write_leaves_no_half_written_file(capsys, tmp_path, monkeypatch):
    """The disk fills up while the certificate is written: the older file survives, no temporary file stays."""
    import certkit.certificate

    def half_dump(doc, path, *args, **kwargs):
        with open(path, "w") as f:
            f.write('{"verdict": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(certkit.certificate, "dump", half_dump)
    res, cert = tmp_path / "r.txt", tmp_path / "c.json"
    cert.write_text("old")
    rc, out, err = run(capsys, "certify", FC, UNSAT, "--out", res, "--json", cert)
    assert rc == 2 and out[0] == "unsat" and "error" not in out
    assert_one_error_line(err, "--json", str(cert), os.strerror(errno.ENOSPC))
    assert cert.read_text() == "old"
    assert res.read_text() == "unsat\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "r.txt"]


def test_dataset_and_bounds_results_are_printed_when_the_json_cannot_be_written(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "output_path", lambda p: p)
    gone = tmp_path / "gone" / "d.json"
    rc, out, err = run(capsys, "certify", FC, "--dataset", DATA, "--eps", 0.01, "--limit", 3, "--json", gone)
    assert rc == 2 and re.match(r"certified: \d+/3 ", out[-1]), out
    assert_one_error_line(err, "--json", str(gone))
    rc, out, err = run(capsys, "bounds", FC, UNSAT, "--json", gone)
    assert rc == 2 and len(out) == 10 and out[0].startswith("Y_0: [")
    assert_one_error_line(err, "--json", str(gone))
    assert not gone.parent.exists()


def test_check_on_a_folder(capsys, tmp_path):
    rc, out, err = run(capsys, "check", tmp_path)
    assert rc == 4 and out == []
    assert_one_error_line(err, str(tmp_path), "folder")


# ---------------------------------------------------------------------------------------------- option ranges

RANGE_CASES = {
    "seed_beyond_64_bits": (["certify", "missing.onnx", UNSAT, "--seed", "99999999999999999999"], "--seed"),
    "seed_2_64": (["certify", "missing.onnx", UNSAT, "--seed", str(2**64)], "--seed"),
    "seed_negative": (["certify", "missing.onnx", UNSAT, "--seed", "-1"], "--seed"),
    "eps_inf": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "inf"], "--eps"),
    "eps_minus_inf": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "-inf"], "--eps"),
    "eps_nan": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "nan"], "--eps"),
    "eps_negative": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "-0.5"], "--eps"),
    "domain_nan": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "0.1", "--domain", "nan", "nan"],
                   "--domain"),
    "domain_inf": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "0.1", "--domain", "0", "inf"],
                   "--domain"),
    "domain_reversed": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "0.1", "--domain", "1", "0"],
                        "--domain"),
    "timeout_inf": (["certify", "missing.onnx", UNSAT, "--timeout", "inf"], "--timeout"),
    "timeout_nan": (["certify", "missing.onnx", UNSAT, "--timeout", "nan"], "--timeout"),
    "timeout_zero": (["certify", "missing.onnx", UNSAT, "--timeout", "0"], "--timeout"),
    "batch_size_zero": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "0.1", "--batch-size", "0"],
                        "--batch-size"),
    "limit_negative": (["certify", "missing.onnx", "--dataset", DATA, "--eps", "0.1", "--limit", "-1"], "--limit"),
    "threads_zero": (["--threads", "0", "certify", "missing.onnx", UNSAT], "--threads"),
    "threads_huge": (["--threads", "100000", "certify", "missing.onnx", UNSAT], "--threads"),
    "bench_seed": (["bench", "missing.csv", "--seed", str(2**64)], "--seed"),
    "bench_limit": (["bench", "missing.csv", "--limit", "-2"], "--limit"),
    "lipschitz_seed": (["lipschitz", "missing.onnx", "--seed", "-3"], "--seed"),
}


@pytest.mark.parametrize("case", list(RANGE_CASES))
def test_option_out_of_range_is_a_usage_error_before_loading(capsys, case):
    args, option = RANGE_CASES[case]
    rc, out, err = run(capsys, *args)
    assert rc == 2
    assert_one_error_line(err, option)
    if "certify" in args and "--dataset" not in args:
        assert out == ["error"]


def test_seed_at_the_top_of_its_range_runs(capsys, tmp_path):
    """certkit attacks input region k with seed + k: no overflow at 2**64 - 1."""
    spec = _two_box_spec(tmp_path / "two.vnnlib")
    for seed in (0, 2**64 - 1):
        rc, out, err = run(capsys, "certify", FC, spec, "--seed", seed)
        assert rc == 0 and out[0] == "unsat" and err == [], (seed, out, err)
    res = api.certify(api.load_model(FC), api.load_spec(spec), "deeppoly", seed=2**64 - 1)
    assert res.verdict == "unsat"


# ---------------------------------------------------------------------------------------------- backends


def _choices(err_line: str) -> list[str]:
    """The choices argparse lists in an invalid-choice message (quoted or not, by Python version)."""
    tail = err_line.split("choose from", 1)[1].strip().rstrip(")")
    return [c.strip().strip("'") for c in tail.split(",")]


def test_bounds_backend_choices_are_what_bounds_runs(capsys, tmp_path):
    rc, _, err = run(capsys, "bounds", FC, UNSAT, "--backend", "none")
    assert rc == 2
    offered = _choices(assert_one_error_line(err))
    assert offered == list(api.BOUNDS_BACKENDS) and "bab" not in offered and "milp" not in offered
    model, spec = api.load_model(FC), api.load_spec(UNSAT)
    for b in STAGES:
        if b in offered:
            rc, out, err = run(capsys, "bounds", FC, UNSAT, "--backend", b)
            assert rc == 0 and err == [] and len(out) == 10, b
        else:
            with pytest.raises(BackendError):
                api.bounds(model, spec, b)
            rc, _, err = run(capsys, "bounds", FC, UNSAT, "--backend", b)
            assert rc == 2, b


def test_certify_backend_choices_are_the_certify_stages(capsys):
    rc, _, err = run(capsys, "certify", FC, UNSAT, "--backend", "none")
    assert rc == 2
    assert _choices(assert_one_error_line(err)) == [*STAGES, "lipschitz"]


# ---------------------------------------------------------------------------------------------- data files


def _bad_samples(case: str) -> tuple[object, object, str]:
    """(x, y, words the message holds) of one bad data set for digits_fc (64 inputs, 10 classes)."""
    d = np.load(DATA)
    x, y = d["x"][:8].astype(np.float32), d["y"][:8].astype(np.int64)
    if case == "object_x":
        return np.array([np.zeros(64), np.zeros(3)], dtype=object), y[:2], "'x'"
    if case == "object_y":
        return x[:2], np.array([[1], [1, 2]], dtype=object), "'y'"
    if case == "empty_x":
        return x[:0], y[:0], "no samples"
    if case == "nan_x":
        x[3, 5] = np.nan
        return x, y, "NaN"
    if case == "inf_x":
        x[2, 0] = -np.inf
        return x, y, "Inf"
    if case == "fractional_labels":
        return x, y + 0.5, "integers"
    if case == "nan_labels":
        return x, np.where(np.arange(8) == 4, np.nan, y), "integers"
    if case == "label_too_large":
        return x, np.where(np.arange(8) == 2, 10, y), "[0, 9]"
    if case == "label_negative":
        return x, np.where(np.arange(8) == 2, -1, y), "[0, 9]"
    if case == "bool_x":
        return x > 0.5, y, "bool"
    if case == "bool_y":
        return x, y > 4, "bool"
    if case == "complex_x":
        return x.astype(np.complex64), y, "complex"
    if case == "string_y":
        return x, np.array(["a"] * 8), "labels"
    if case == "length_mismatch":
        return x, y[:7], "(7,)"
    raise AssertionError(case)


DATA_CASES = ["object_x", "object_y", "empty_x", "nan_x", "inf_x", "fractional_labels", "nan_labels",
              "label_too_large", "label_negative", "bool_x", "bool_y", "complex_x", "string_y", "length_mismatch"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_file_is_a_data_error(capsys, tmp_path, case):
    x, y, words = _bad_samples(case)
    f = tmp_path / f"{case}.npz"
    np.savez(f, x=x, y=y)
    rc, out, err = run(capsys, "certify", FC, "--dataset", f, "--eps", 0.01)
    assert rc == 4 and out == []
    assert_one_error_line(err, f.name, words)


@pytest.mark.parametrize("case", [c for c in DATA_CASES if c != "object_y"] + ["ragged_list"])
def test_api_certify_dataset_checks_the_samples(case):
    model = api.load_model(FC)
    if case == "ragged_list":
        x, y, words = [np.zeros(64), np.zeros(3)], [0, 1], "rectangular"
    else:
        x, y, words = _bad_samples(case)
    with pytest.raises(DataError, match=re.escape(words)) as e:
        api.certify_dataset(model, x, y, 0.01)
    assert str(e.value).startswith("certify_dataset: ")


def test_integral_float_labels_are_accepted(capsys, tmp_path):
    d = np.load(DATA)
    f = tmp_path / "float_labels.npz"
    np.savez(f, x=d["x"][:5], y=d["y"][:5].astype(np.float32))
    rc, out, err = run(capsys, "certify", FC, "--dataset", f, "--eps", 0.01)
    assert rc == 0 and err == [] and out[-1].startswith("certified: ") and "/5 " in out[-1]
    res = api.certify_dataset(api.load_model(FC), d["x"][:5], d["y"][:5].astype(float), 0.01)
    assert [s.label for s in res.samples] == d["y"][:5].tolist()


def test_sparsify_data_file_is_checked_the_same_way(capsys, tmp_path):
    if not _plugin_available("sparsify"):
        pytest.skip("sparsify needs an optional package")
    x, y, words = _bad_samples("nan_x")
    f = tmp_path / "nan.npz"
    np.savez(f, x=x, y=y)
    rc, out, err = run(capsys, "sparsify", FC, "--data", f, "-o", tmp_path / "s.onnx")
    assert rc == 4 and out == []
    assert_one_error_line(err, f.name, words)
    assert not (tmp_path / "s.onnx").exists()


# ---------------------------------------------------------------------------------------------- real processes


def _run_all(cases: dict[str, list]) -> dict[str, tuple[int, str, str]]:
    """``python -m certkit.cli`` for every case at once (each pays the torch import)."""
    procs = {k: subprocess.Popen([sys.executable, "-m", "certkit.cli", *map(str, a)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=ROOT, text=True) for k, a in cases.items()}
    done = {}
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        done[k] = (p.returncode, out, err)
    return done


def test_subprocesses_one_line_and_documented_code(tmp_path):
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([np.zeros(64), np.zeros(3)], dtype=object), y=np.zeros(2, np.int64))
    cases = {
        "seed": (["certify", FC, UNSAT, "--seed", "99999999999999999999"], 2, "error"),
        "out_missing_folder": (["certify", FC, UNSAT, "--out", tmp_path / "none" / "r.txt"], 2, "error"),
        "json_folder": (["certify", FC, UNSAT, "--json", tmp_path], 2, "error"),
        "object_array": (["certify", FC, "--dataset", obj, "--eps", "0.01"], 4, None),
        "threads": (["--threads", "100000", "ops"], 2, None),
    }
    res = _run_all({k: v[0] for k, v in cases.items()})
    for k, (_, code, first) in cases.items():
        rc, out, err = res[k]
        assert rc == code, (k, out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("certkit: error: "), (k, err)
        assert out.splitlines() == ([first] if first else []), (k, out)


def test_huge_weights_print_no_warnings(tmp_path):
    """float32 weights of 3e38 overflow onnxruntime's outputs to inf: no numpy warning reaches stderr."""
    model = _big_weight_model(tmp_path / "big.onnx")
    spec = tmp_path / "big.vnnlib"
    spec.write_text(BIG_SPEC)
    cases = {f"certify_{b}": ["certify", model, spec, "--backend", b] for b in ("interval", "deeppoly", "auto")}
    cases["bounds"] = ["bounds", model, spec, "--backend", "auto"]
    for k, (rc, out, err) in _run_all(cases).items():
        assert rc == 0, (k, out, err)
        assert err == "", (k, err)
        if k.startswith("certify"):
            assert out.splitlines()[0] in VERDICTS


# ---------------------------------------------------------------------------------------------- no exit 70

FUZZ_COMMANDS = {
    "certify": ["certify", FC, UNSAT],
    "dataset": ["certify", FC, "--dataset", DATA, "--eps", "0.01", "--limit", "2"],
    "bounds": ["bounds", FC, UNSAT],
}
FUZZ_OPTIONS = [
    ["--seed", "1e3"], ["--seed", "99999999999999999999"], ["--seed", str(-2**70)],
    ["--eps", "inf"], ["--eps", "nan"], ["--eps", ""], ["--eps", "1e400"],
    ["--domain", "nan", "nan"], ["--domain", "-inf", "inf"], ["--domain", "1"],
    ["--timeout", "-inf"], ["--timeout", "nan"], ["--timeout", "1e-320"],
    ["--batch-size", "-5"], ["--batch-size", "1e9"], ["--limit", "x"],
    ["--out", "{tmp}"], ["--json", "{tmp}"], ["--json", ""], ["--out", "{tmp}/none/r.txt"],
    ["--backend", "milp"], ["--backend", "lipschitz"], ["--norm", "l3"],
    ["--out=/dev/null", "--json", "{tmp}/none/c.json"],
]


def _bad_files(tmp: Path) -> dict[str, Path]:
    (tmp / "empty").write_bytes(b"")
    (tmp / "garbage").write_bytes(bytes(range(256)) * 4)
    obj = tmp / "obj.npz"
    np.savez(obj, x=np.array([np.zeros(64), np.zeros(3)], dtype=object), y=np.zeros(2, np.int64))
    return {"folder": tmp, "empty": tmp / "empty", "garbage": tmp / "garbage", "object": obj,
            "missing": tmp / "missing"}


def _assert_documented(args, rc, out, err) -> None:
    assert rc != 70, (args, out, err)
    if rc == 0:
        assert err == [], (args, err)
    else:
        assert rc in (2, 3, 4, 5), (args, rc, err)
        assert_one_error_line(err)


@pytest.mark.parametrize("command", list(FUZZ_COMMANDS))
def test_no_exit_70_on_bad_options(capsys, tmp_path, command):
    for opt in FUZZ_OPTIONS:
        args = FUZZ_COMMANDS[command] + [o.replace("{tmp}", str(tmp_path)) for o in opt]
        rc, out, err = run(capsys, *args)
        _assert_documented(args, rc, out, err)


def test_no_exit_70_on_bad_files(capsys, tmp_path):
    files = _bad_files(tmp_path)
    for bad in files.values():
        for args in (["certify", bad, UNSAT], ["certify", FC, bad], ["bounds", bad, UNSAT], ["bounds", FC, bad],
                     ["certify", FC, "--dataset", bad, "--eps", "0.01"], ["certify", bad, "--dataset", DATA,
                                                                         "--eps", "0.01"], ["check", bad]):
            rc, out, err = run(capsys, *args)
            _assert_documented(args, rc, out, err)


def test_same_output_twice_or_over_an_input(capsys, tmp_path):
    out = tmp_path / "r.txt"
    rc, _, err = run(capsys, "certify", FC, UNSAT, "--out", out, "--json", out)
    assert rc == 2 and "name the same file" in err[0] and not out.exists()
    copy = tmp_path / "m.onnx"
    copy.write_bytes(Path(FC).read_bytes())
    rc, _, err = run(capsys, "certify", copy, UNSAT, "--json", copy)
    assert rc == 2 and "input of this command" in err[0]
    assert copy.read_bytes() == Path(FC).read_bytes()


def test_malformed_certificate_fields(capsys, tmp_path):
    cert = tmp_path / "c.json"
    for doc in ({"model": 3, "verdict": "unsat"}, {"model": {"path": 3}, "verdict": "unsat"},
                {"model": {"path": FC}, "verdict": "unsat", "properties": {}},
                {"model": {"path": FC, "sha256": ""}, "spec": {"path": UNSAT}, "verdict": "unsat",
                 "properties": [{"index": 0, "status": "verified", "proof": {"method": "bounds"}}]}):
        cert.write_text(json.dumps(doc, default=str))
        rc, _, err = run(capsys, "check", cert)
        assert rc in (4, 6), (doc, rc, err)
        assert rc != 70


def test_samples_beyond_float32(capsys, tmp_path):
    d = np.load(DATA)
    x = d["x"].astype(np.float64)
    x[0, 0] = 1e39
    f = tmp_path / "big.npz"
    np.savez(f, x=x, y=d["y"])
    rc, _, err = run(capsys, "certify", FC, "--dataset", f, "--eps", "0.01")
    assert rc == 4 and "beyond the float32 range" in err[0]
