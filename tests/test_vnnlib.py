"""Tests for the VNN-LIB reader (certkit/spec/vnnlib.py, DESIGN.md section 1)."""
from __future__ import annotations

import csv
import gzip
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest

from certkit.errors import SpecError
from certkit.spec.spec import Spec
from certkit.spec.vnnlib import MAX_TERMS, parse_vnnlib, parse_vnnlib_text

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"

# Lines 1-4: two inputs, two outputs.
HEADER = ("(declare-const X_0 Real)\n"
          "(declare-const X_1 Real)\n"
          "(declare-const Y_0 Real)\n"
          "(declare-const Y_1 Real)\n")
# Lines 5-8: the box [0, 1] x [0, 1].
BOX = ("(assert (<= X_0 1))\n"
       "(assert (>= X_0 0))\n"
       "(assert (<= X_1 1))\n"
       "(assert (>= X_1 0))\n")


def parse(body: str, **kw) -> Spec:
    return parse_vnnlib_text(HEADER + BOX + body, path="t.vnnlib", **kw)


def rows(spec: Spec, prop: int = 0) -> list[tuple[list[list[float]], list[float]]]:
    return [(dj.C.tolist(), dj.d.tolist()) for dj in spec.properties[prop].disjuncts]


def fails(text: str, **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_vnnlib_text(text, path="t.vnnlib", **kw)
    return info.value


def where(err: SpecError) -> tuple[str, int, int]:
    return err.path, err.line, err.col


# ---------------------------------------------------------------------- operator forms
@pytest.mark.parametrize("atom, C, d", [
    ("(<= Y_0 2)", [[1, 0]], [2]),
    ("(>= Y_0 2)", [[-1, 0]], [-2]),
    ("(< Y_0 2)", [[1, 0]], [2]),
    ("(> Y_0 2)", [[-1, 0]], [-2]),
    ("(<= 2 Y_1)", [[0, -1]], [-2]),
    ("(>= 2 Y_1)", [[0, 1]], [2]),
    ("(<= Y_0 Y_1)", [[1, -1]], [0]),
    ("(>= Y_0 Y_1)", [[-1, 1]], [0]),
    ("(< Y_1 Y_0)", [[-1, 1]], [0]),
    ("(= Y_0 3)", [[1, 0], [-1, 0]], [3, -3]),
    ("(= Y_0 Y_1)", [[1, -1], [-1, 1]], [0, 0]),
    ("(<= Y_0 Y_1 4)", [[1, -1], [0, 1]], [0, 4]),  # chain: Y_0 <= Y_1 and Y_1 <= 4
    ("(<= Y_0 (- 0.5))", [[1, 0]], [-0.5]),
])
def test_output_atoms(atom, C, d):
    spec = parse(f"(assert {atom})\n")
    assert rows(spec) == [(C, d)]
    assert spec.properties[0].disjuncts[0].C.dtype == np.float64


@pytest.mark.parametrize("number, value", [
    ("1e-3", 1e-3), ("-0.5", -0.5), ("+2", 2.0), (".5", 0.5), ("1.", 1.0), ("3", 3.0),
    ("-1.5E+2", -150.0), ("(- 2.5)", -2.5),
])
def test_numbers(number, value):
    spec = parse(f"(assert (<= Y_0 {number}))\n")
    assert spec.properties[0].disjuncts[0].d.tolist() == [value]


def test_input_bounds_all_forms_and_tightest_wins():
    text = HEADER + (
        "(assert (>= X_0 -1))\n(assert (<= -0.5 X_0))\n(assert (< X_0 2))\n(assert (> 1.5 X_0))\n"
        "(assert (= X_1 0.25))\n(assert (<= Y_0 0))\n")
    spec = parse_vnnlib_text(text)
    (prop,) = spec.properties
    assert prop.lower.tolist() == [-0.5, 0.25]
    assert prop.upper.tolist() == [1.5, 0.25]
    assert prop.lower.dtype == prop.upper.dtype == np.float64
    assert (spec.n_inputs, spec.n_outputs, spec.path) == (2, 2, "<string>")


def test_several_asserts_are_a_conjunction():
    spec = parse("(assert (<= Y_0 Y_1))\n(assert (>= Y_0 -3))\n")
    assert rows(spec) == [([[1, -1], [-1, 0]], [0, 3])]


# ---------------------------------------------------------------------- DNF and grouping
def test_dnf_expansion_of_and_over_or():
    spec = parse("(assert (and (or (<= Y_0 1) (<= Y_0 2)) (or (>= Y_1 3) (>= Y_1 4))))\n")
    assert len(spec.properties) == 1
    assert rows(spec) == [
        ([[1, 0], [0, -1]], [1, -3]), ([[1, 0], [0, -1]], [1, -4]),
        ([[1, 0], [0, -1]], [2, -3]), ([[1, 0], [0, -1]], [2, -4]),
    ]


def test_nested_or_and_flattening():
    spec = parse("(assert (or (and (<= Y_0 1) (or (<= Y_1 2) (<= Y_1 3))) (<= Y_0 Y_1)))\n")
    assert rows(spec) == [
        ([[1, 0], [0, 1]], [1, 2]), ([[1, 0], [0, 1]], [1, 3]), ([[1, -1]], [0]),
    ]


def test_input_or_times_output_or_groups_by_box():
    text = HEADER + (
        "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))\n"
        "            (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1))\n"
        "            (and (>= X_0 4) (<= X_0 5) (>= X_1 0) (<= X_1 1))))\n"
        "(assert (or (and (<= Y_0 Y_1)) (and (>= Y_0 7))))\n")
    spec = parse_vnnlib_text(text)
    assert [p.lower[0] for p in spec.properties] == [0, 2, 4]
    assert [p.upper[0] for p in spec.properties] == [1, 3, 5]
    for k in range(3):
        assert rows(spec, k) == [([[1, -1]], [0]), ([[-1, 0]], [-7])]


def test_terms_mixing_input_and_output_atoms():
    # nn4sys-style: each or-term brings its own box and its own output constraint.
    text = HEADER + (
        "(assert (or\n"
        "  (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= Y_0 0))\n"
        "  (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (>= Y_1 1) (<= Y_0 5))\n"
        "  (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_0 9))))\n")
    spec = parse_vnnlib_text(text)
    assert len(spec.properties) == 2
    assert spec.properties[0].lower.tolist() == [0, 0] and spec.properties[0].upper.tolist() == [1, 1]
    assert rows(spec, 0) == [([[1, 0]], [0]), ([[-1, 0]], [-9])]
    assert spec.properties[1].lower.tolist() == [2, 0]
    assert rows(spec, 1) == [([[0, -1], [1, 0]], [-1, 5])]


def test_same_box_written_differently_is_one_property():
    text = HEADER + (
        "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= Y_0 0))\n"
        "            (and (<= X_1 1) (>= X_1 0) (<= X_0 1) (<= X_0 5) (>= X_0 0) (<= Y_1 0))))\n")
    spec = parse_vnnlib_text(text)
    assert len(spec.properties) == 1
    assert rows(spec) == [([[1, 0]], [0]), ([[0, 1]], [0])]


def test_term_without_output_atoms_is_whole_output_space():
    text = HEADER + (
        "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))\n"
        "            (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (<= Y_0 0))))\n")
    spec = parse_vnnlib_text(text)
    empty = spec.properties[0].disjuncts[0]
    assert empty.C.shape == (0, 2) and empty.d.shape == (0,)
    assert rows(spec, 1) == [([[1, 0]], [0])]
    C, d, owner = spec.properties[0].stacked()
    assert C.shape == (0, 2) and owner.shape == (0,)


def test_comments_multiline_whitespace_and_order():
    text = (
        "; header comment with (parentheses) and ; semicolons\n"
        "(assert (<= Y_0 ; inline comment )\n"
        "   Y_1))\r\n"
        "(declare-const\tY_1 Real)(declare-const Y_0 Real)\n"   # declared after use: accepted
        "(declare-const X_0 Real) (check-sat) (set-logic QF_LRA)\n"
        "(assert\n  (and\n    (>= X_0 -1)\n    (<= X_0 1)))\n"
        "(get-model) (exit)\n")
    spec = parse_vnnlib_text(text)
    assert (spec.n_inputs, spec.n_outputs) == (1, 2)
    assert rows(spec) == [([[1, -1]], [0])]
    assert spec.properties[0].lower.tolist() == [-1]


def test_deep_nesting_is_fine():
    depth = 150
    body = "(and " * depth + "(<= Y_0 1)" + ")" * depth
    assert rows(parse(f"(assert {body})\n")) == [([[1, 0]], [1])]


def test_sha256_and_path(tmp_path):
    text = HEADER + BOX + "(assert (<= Y_0 1))\n"
    spec = parse_vnnlib_text(text, path="mine")
    assert spec.path == "mine"
    assert spec.sha256 == hashlib.sha256(text.encode()).hexdigest()
    plain = tmp_path / "p.vnnlib"
    plain.write_text(text)
    from_file = parse_vnnlib(plain)  # os.PathLike accepted
    assert from_file.path == str(plain) and from_file.sha256 == spec.sha256


def test_gzip_file(tmp_path):
    text = HEADER + BOX + "(assert (or (<= Y_0 1) (<= Y_1 2)))\n"
    gz = tmp_path / "p.vnnlib.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    spec = parse_vnnlib(str(gz), n_inputs=2, n_outputs=2)
    assert rows(spec) == [([[1, 0]], [1]), ([[0, 1]], [2])]
    assert spec.path == str(gz)
    assert spec.sha256 == hashlib.sha256(text.encode()).hexdigest()  # of the decompressed bytes


# ---------------------------------------------------------------------- sizes
def test_sizes_match_model():
    spec = parse("(assert (<= Y_0 1))\n", n_inputs=2, n_outputs=2)
    assert (spec.n_inputs, spec.n_outputs) == (2, 2)


def test_too_few_inputs_for_model():
    err = fails(HEADER + BOX + "(assert (<= Y_0 1))\n", n_inputs=784)
    assert where(err) == ("t.vnnlib", 2, 16)  # the last X declaration
    assert "declares 2 inputs (X_0..X_1)" in err.reason and "model has 784 inputs" in err.reason


def test_too_many_outputs_for_model():
    err = fails(HEADER + BOX + "(assert (<= Y_0 1))\n", n_outputs=1)
    assert where(err) == ("t.vnnlib", 4, 16)  # Y_1, the first one beyond the model
    assert "declares 2 outputs" in err.reason and "model has 1 output" in err.reason and err.reason.endswith("output")


# ---------------------------------------------------------------------- errors, pinned
# Each case: text, (line, col), words the message must contain.
ERRORS = {
    "stray_close": (HEADER + BOX + "(assert (<= Y_0 0)))\n", (9, 20), "unexpected ')'"),
    "unclosed": (HEADER + "(assert (<= X_0 1)\n(assert (>= X_0 0))\n", (5, 1), "never closed"),
    "unknown_command": (HEADER + BOX + "(push 1)\n", (9, 2), "unknown command 'push'"),
    "top_level_atom": (HEADER + "assert\n", (5, 1), "expected a command"),
    "empty_command": (HEADER + "()\n", (5, 1), "empty command"),
    "assert_arity": (HEADER + BOX + "(assert (<= Y_0 0) (<= Y_1 0))\n", (9, 2), "exactly one formula"),
    "undeclared_output": (HEADER + BOX + "(assert (<= Y_2 0))\n", (9, 13),
                          "Y_2 is not declared (the spec declares Y_0..Y_1)"),
    "undeclared_input": (HEADER + BOX + "(assert (<= X_7 0))\n", (9, 13), "X_7 is not declared"),
    "bad_declared_name": ("(declare-const Z_0 Real)\n", (1, 16), "neither X_<int>"),
    "leading_zero": ("(declare-const X_01 Real)\n", (1, 16), "leading zeros"),
    "bad_sort": ("(declare-const X_0 Int)\n", (1, 20), "only Real"),
    "declare_arity": ("(declare-const X_0)\n", (1, 2), "needs a name and a sort"),
    "duplicate": (HEADER + "(declare-const X_0 Real)\n", (5, 16), "declared twice (first at line 1)"),
    "unknown_symbol": (HEADER + BOX + "(assert (<= Z 0))\n", (9, 13), "unknown symbol 'Z'"),
    "bad_number": (HEADER + BOX + "(assert (<= Y_0 1.2.3))\n", (9, 17), "bad number '1.2.3'"),
    "bad_number_hex": (HEADER + BOX + "(assert (<= Y_0 0x1F))\n", (9, 17), "bad number"),
    "huge_number": (HEADER + BOX + "(assert (<= Y_0 1e999))\n", (9, 17), "out of the float64 range"),
    "two_constants": (HEADER + BOX + "(assert (<= 1 2))\n", (9, 10), "two constants"),
    "two_inputs": (HEADER + BOX + "(assert (<= X_0 X_1))\n", (9, 10), "two inputs (X_0 and X_1)"),
    "input_vs_output": (HEADER + BOX + "(assert (>= Y_1 X_0))\n", (9, 10),
                        "an input with an output (X_0 and Y_1)"),
    "plus": (HEADER + BOX + "(assert (<= (+ Y_0 Y_1) 0))\n", (9, 14), "arithmetic '+'"),
    "times": (HEADER + BOX + "(assert (<= Y_0 (* 2 Y_1)))\n", (9, 18), "arithmetic '*'"),
    "not": (HEADER + BOX + "(assert (not (<= Y_0 0)))\n", (9, 10), "operator 'not' is not supported"),
    "unknown_operator": (HEADER + BOX + "(assert (foo Y_0 0))\n", (9, 10), "unknown operator 'foo'"),
    "one_argument": (HEADER + BOX + "(assert (<= Y_0))\n", (9, 10), "needs two arguments, found 1"),
    "empty_or": (HEADER + BOX + "(assert (or))\n", (9, 10), "'or' needs at least one argument"),
    "bare_atom_formula": (HEADER + BOX + "(assert Y_0)\n", (9, 9), "expected a constraint"),
    "empty_expression": (HEADER + BOX + "(assert (and () (<= Y_0 1)))\n", (9, 14), "empty expression"),
    "missing_lower": (HEADER + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n"
                      "(assert (<= Y_0 0))\n", (2, 16), "X_1 has no lower bound"),
    "missing_both": (HEADER + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= Y_0 0))\n",
                     (2, 16), "X_1 has no bounds"),
    "missing_in_one_box": (HEADER + "(assert (or (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))\n"
                           "  (and (<= X_0 1) (>= X_0 0) (<= X_1 1))))\n(assert (<= Y_0 0))\n",
                           (2, 16), "X_1 has no lower bound in the input region whose constraints "
                                    "start at line 6"),
    "empty_box": (HEADER + BOX + "(assert (>= X_1 2))\n(assert (<= Y_0 0))\n", (9, 9),
                  "empty input box: X_1 has lower bound 2.0 above its upper bound 1.0"),
    "no_inputs": ("(declare-const Y_0 Real)\n(assert (<= Y_0 0))\n", (0, 0), "no input variables"),
    "no_outputs": ("(declare-const X_0 Real)\n(assert (<= X_0 0))\n", (0, 0), "no output variables"),
    "gap_in_inputs": ("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n",
                      (2, 16), "X_1 is missing but X_2 is declared"),
    "no_output_constraint": (HEADER + BOX, (0, 0), "no output constraint"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_are_pinned(name):
    text, (line, col), words = ERRORS[name]
    err = fails(text)
    assert where(err) == ("t.vnnlib", line, col), err
    assert words in err.reason
    prefix = f"t.vnnlib:{line}:{col}: " if line else "t.vnnlib: "
    assert str(err) == prefix + err.reason


def test_dnf_cap():
    ors = "".join(f"(assert (or (<= Y_0 {k}) (<= Y_1 {k})))\n" for k in range(17))  # 2**17 terms
    err = fails(HEADER + BOX + ors)
    assert MAX_TERMS < 2 ** 17
    assert where(err) == ("t.vnnlib", 25, 9)  # the or that crosses the cap
    assert f"more than {MAX_TERMS} terms" in err.reason


def test_too_deep_nesting_is_a_spec_error():
    depth = 5000
    err = fails(HEADER + BOX + "(assert " + "(and " * depth + "(<= Y_0 1)" + ")" * depth + ")\n")
    assert "nested too deeply" in err.reason


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.vnnlib"
    with pytest.raises(SpecError) as info:
        parse_vnnlib(missing)
    assert info.value.path == str(missing) and "cannot read" in str(info.value)
    assert str(missing) in str(info.value)


def test_corrupt_gzip(tmp_path):
    bad = tmp_path / "bad.vnnlib.gz"
    bad.write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:12])
    with pytest.raises(SpecError) as info:
        parse_vnnlib(bad)
    assert info.value.path == str(bad) and "gzip" in info.value.reason


# ---------------------------------------------------------------------- shared benchmarks
@pytest.fixture(scope="module")
def bench() -> Path:
    if not BENCH.is_dir():
        pytest.skip(f"../shared/benchmarks not found: {BENCH}")
    return BENCH


def test_every_benchmark_file_parses(bench):
    files = sorted(bench.glob("*/vnnlib/*.vnnlib"))
    assert files
    for f in files:
        spec = parse_vnnlib(f)
        assert spec.properties and spec.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
        for p in spec.properties:
            assert p.lower.shape == p.upper.shape == (spec.n_inputs,)
            assert np.all(p.lower <= p.upper)
            for dj in p.disjuncts:
                assert dj.C.shape == (dj.d.shape[0], spec.n_outputs)


def test_instances_match_model_sizes(bench):
    onnx = pytest.importorskip("onnx")
    sizes: dict[str, tuple[int, int]] = {}
    with open(bench / "instances.csv", newline="") as fh:
        instances = list(csv.DictReader(fh))
    assert instances
    for row in instances:
        if row["onnx"] not in sizes:
            graph = onnx.load(str(bench / row["onnx"]), load_external_data=False).graph
            inits = {i.name for i in graph.initializer}
            (x,) = [i for i in graph.input if i.name not in inits]
            (y,) = graph.output
            dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in (x, y)]
            sizes[row["onnx"]] = (math.prod(dims[0]), math.prod(dims[1]))
        n_in, n_out = sizes[row["onnx"]]
        spec = parse_vnnlib(bench / row["vnnlib"], n_inputs=n_in, n_outputs=n_out)
        assert (spec.n_inputs, spec.n_outputs) == (n_in, n_out)


def test_acasxu_prop_1(bench):
    spec = parse_vnnlib(bench / "acasxu/vnnlib/prop_1.vnnlib", n_inputs=5, n_outputs=5)
    (prop,) = spec.properties
    np.testing.assert_array_equal(prop.lower, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(prop.upper, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    (dj,) = prop.disjuncts
    np.testing.assert_array_equal(dj.C, [[-1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(dj.d, [-3.991125645861615])


def test_acasxu_prop_3(bench):
    spec = parse_vnnlib(bench / "acasxu/vnnlib/prop_3.vnnlib")
    (prop,) = spec.properties
    (dj,) = prop.disjuncts
    expected = np.array([[1, -1, 0, 0, 0], [1, 0, -1, 0, 0], [1, 0, 0, -1, 0], [1, 0, 0, 0, -1]])
    np.testing.assert_array_equal(dj.C, expected)  # Y_0 <= Y_j, j = 1..4
    np.testing.assert_array_equal(dj.d, np.zeros(4))


def test_acasxu_prop_6_two_boxes_four_disjuncts(bench):
    spec = parse_vnnlib(bench / "acasxu/vnnlib/prop_6.vnnlib")
    assert len(spec.properties) == 2
    np.testing.assert_array_equal(spec.properties[0].lower[1:3], [0.11140846, -0.499999896])
    np.testing.assert_array_equal(spec.properties[1].upper[1], -0.11140846)
    for prop in spec.properties:
        assert len(prop.disjuncts) == 4
        for j, dj in enumerate(prop.disjuncts, start=1):  # Y_j <= Y_0
            row = np.zeros((1, 5))
            row[0, j], row[0, 0] = 1, -1
            np.testing.assert_array_equal(dj.C, row)
            np.testing.assert_array_equal(dj.d, [0])


def test_mnistfc_spec(bench):
    spec = parse_vnnlib(bench / "mnistfc_2021/vnnlib/prop_0_0.03.vnnlib", n_inputs=784, n_outputs=10)
    (prop,) = spec.properties
    assert prop.lower.shape == (784,) and len(prop.disjuncts) == 9
    assert np.all(prop.upper - prop.lower <= 0.06 + 1e-6)  # 2 * eps, float32-rounded
    for k, dj in zip([0, 1, 2, 3, 4, 5, 6, 7, 9], prop.disjuncts):  # Y_k >= Y_8
        assert dj.C.shape == (1, 10)
        expected = np.zeros(10)
        expected[8], expected[k] = 1, -1
        np.testing.assert_array_equal(dj.C[0], expected)
        np.testing.assert_array_equal(dj.d, [0])


def test_largest_file_parses_quickly(bench):
    largest = max(bench.glob("*/vnnlib/*.vnnlib"), key=lambda f: f.stat().st_size)
    start = time.perf_counter()
    parse_vnnlib(largest)
    assert time.perf_counter() - start < 5.0  # loose guard; typical is ~10 ms
