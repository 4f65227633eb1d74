"""Counterexample witnesses: float32 rounding inside boxes, onnxruntime validation, the results file."""
from __future__ import annotations


import numpy as np
import pytest

import certkit
from certkit.certificate import results_file
from certkit.spec.spec import Disjunct, Property
from certkit.verify.certify import CertifyResult
from certkit.verify.witness import (Witness, inside, inside_rounded, no_float32_in, satisfied_disjunct,
                                    to_float32_inside, validate)

from tests.helpers.examples import FC, SAT, UNSAT


def has_float32(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Does [lo, hi] contain a float32 number? (the smallest float32 >= lo, compared with hi)"""
    f = np.asarray(lo, dtype=np.float64).astype(np.float32)
    f = np.where(f.astype(np.float64) < lo, np.nextafter(f, np.float32(np.inf)), f)
    return f.astype(np.float64) <= hi


@pytest.fixture(scope="module")
def fc():
    m = certkit.load_model(FC)
    return m, certkit.load_spec(UNSAT, m), certkit.load_spec(SAT, m)


# ---------------------------------------------------------------------------------------------- to_float32_inside


def test_float32_inside_tiny_box_around_point_one():
    # [0.1, 0.1 + 5e-9] holds exactly one float32: float32(0.1) = 0.100000001490116... (the next is 0.1000000089)
    lo, hi = np.array([0.1]), np.array([0.1 + 5e-9])
    assert has_float32(lo, hi).all()
    assert float(np.nextafter(np.float32(0.1), np.float32(1))) > hi[0]
    for v in (0.1, 0.1 + 2e-9, 0.1 + 5e-9, 0.0, 1.0, np.nextafter(0.1, 0.0)):
        x32 = to_float32_inside(np.array([[v]]), lo, hi)
        assert x32.dtype == np.float32
        assert inside(x32, lo, hi).all(), (v, float(x32[0, 0]))
        assert float(x32[0, 0]) == float(np.float32(0.1))


def test_float32_inside_box_without_float32():
    # [0.1, 0.1 + 1e-9] lies strictly between two float32 numbers: nothing inside, and inside() says so;
    # the point rounds to nearest (what onnxruntime computes with for every real point of the interval),
    # which inside_rounded() admits, and no other float32
    lo, hi = np.array([0.1]), np.array([0.1 + 1e-9])
    assert not has_float32(lo, hi).any() and no_float32_in(lo, hi).all()
    x32 = to_float32_inside(np.array([[0.1 + 5e-10]]), lo, hi)
    assert not inside(x32, lo, hi).any()
    assert float(x32[0, 0]) == float(np.float32(0.1))
    assert inside_rounded(x32, lo, hi).all()
    for other in (np.nextafter(np.float32(0.1), np.float32(0)), np.nextafter(np.float32(0.1), np.float32(1))):
        assert not inside_rounded(np.array([[other]], np.float32), lo, hi).any()
    # an interval straddling the midpoint of two float32 numbers admits both roundings, nothing else
    a = np.float32(0.1)
    b = np.nextafter(a, np.float32(1))
    mid = (float(a) + float(b)) / 2
    lo, hi = np.array([mid - 1e-12]), np.array([mid + 1e-12])
    assert no_float32_in(lo, hi).all()
    assert inside_rounded(np.array([[a], [b]], np.float32), lo, hi).all()
    assert not inside_rounded(np.array([[np.nextafter(b, np.float32(1))]], np.float32), lo, hi).any()
    # a float64 model sees every float64: no rounding is admitted
    assert not inside_rounded(np.array([[float(a)]]), lo, hi, np.float64).any()


def test_no_float32_in_matches_has_float32():
    rng = np.random.default_rng(3)
    lo = rng.uniform(-2, 2, 5000)
    hi = lo + 10.0 ** rng.uniform(-12, -5, 5000)
    np.testing.assert_array_equal(no_float32_in(lo, hi), ~has_float32(lo, hi))


def test_float32_inside_bounds_not_representable_upper_side():
    # the nearest float32 of the lower bound is below it, and of the upper bound above it
    lo = np.array([1 / 3, -1 / 3, 2 / 3 + 1e-12, 1e-3])
    hi = lo + np.array([1e-7, 1e-7, 1e-7, 1e-9])
    assert has_float32(lo, hi).all()
    for x in (lo, hi, (lo + hi) / 2, lo - 1, hi + 1):
        x32 = to_float32_inside(x[None], lo, hi)
        assert inside(x32, lo, hi).all()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e6])
def test_float32_inside_random_boxes(scale):
    rng = np.random.default_rng(int(scale * 7) % 1000)
    n = 4000
    lo = (rng.random(n) - 0.5) * 2 * scale
    width = scale * 10.0 ** rng.uniform(-9, -1, n)
    hi = lo + width
    x = lo + rng.uniform(-0.5, 1.5, n) * width  # inside and outside the box
    x32 = to_float32_inside(x, lo, hi)
    ok = (x32.astype(np.float64) >= lo) & (x32.astype(np.float64) <= hi)
    can = has_float32(lo, hi)
    assert can.sum() > n // 2 and (~can).sum() > n // 20  # both kinds of box occur
    np.testing.assert_array_equal(ok, can)  # inside exactly when the box holds a float32
    # points already float32 and inside are kept as they are
    y32 = to_float32_inside(x32[ok].astype(np.float64), lo[ok], hi[ok])
    np.testing.assert_array_equal(y32, x32[ok])


def test_inside_is_exact_in_float64():
    lo, hi = np.array([0.1]), np.array([1.0])
    assert not inside(np.array([[np.nextafter(np.float32(0.1), np.float32(0))]], np.float32), lo, hi).any()
    assert not inside(np.array([[np.float32(0.1)]]), np.array([0.10000000149011613]), hi).any()
    assert inside(np.array([[np.float32(0.1)]]), np.array([0.10000000149011612]), hi).all()


# ---------------------------------------------------------------------------------------------- validate


def _box_prop(lower, upper, C, d) -> Property:
    return Property(np.asarray(lower, float), np.asarray(upper, float),
                    (Disjunct(np.atleast_2d(np.asarray(C, float)), np.atleast_1d(np.asarray(d, float))),))


def test_validate_rejects_output_outside_spec(fc):
    m, unsat, _ = fc
    prop = unsat.properties[0]
    centre = (prop.lower + prop.upper) / 2
    rng = np.random.default_rng(0)
    cands = prop.lower + rng.random((64, 64)) * (prop.upper - prop.lower)
    assert validate(m.runner, prop, 0, np.vstack([centre, cands])) is None
    # the same points do satisfy a spec they should satisfy: "Y_0 >= Y_1" (label 0 is predicted)
    C = np.zeros((1, 10))
    C[0, 1], C[0, 0] = 1.0, -1.0
    w = validate(m.runner, _box_prop(prop.lower, prop.upper, C, 0.0), 3, centre)
    assert isinstance(w, Witness) and w.property_index == 3 and w.disjunct_index == 0


def test_validate_rejects_point_outside_box(fc):
    m, _, _ = fc
    always = (np.zeros((1, 10)), np.ones(1))  # 0 <= 1: every output is in the unsafe set
    lo, hi = np.zeros(64), np.full(64, 0.5)
    lo[7], hi[7] = 0.1, 0.1 + 1e-9  # no float32 in this coordinate's range: the witness takes its rounding
    w = validate(m.runner, _box_prop(lo, hi, *always), 0, np.full((3, 64), 0.25))
    assert w is not None and float(w.x[7]) == float(np.float32(0.1))
    assert inside_rounded(w.x[None], lo, hi).all() and not inside(w.x[None], lo, hi).any()
    # a candidate outside an ordinary box is never returned as it is: the witness lies inside the box
    hi[7] = 0.5
    far = np.full((1, 64), 0.9)
    w = validate(m.runner, _box_prop(lo, hi, *always), 0, far)
    if w is not None:
        assert inside(w.x[None], lo, hi).all()
        assert not np.array_equal(w.x.astype(np.float64), far[0])


def test_validate_returns_first_real_counterexample(fc):
    m, _, sat = fc
    res = certkit.certify(m, sat)
    assert res.verdict == "sat"
    prop = sat.properties[0]
    good = res.witness.x.astype(np.float64)
    centre = (prop.lower + prop.upper) / 2  # classified as 0: not a counterexample
    w = validate(m.runner, prop, 0, np.vstack([centre, good, centre]))
    assert w is not None
    np.testing.assert_array_equal(w.x, res.witness.x)
    assert w.x.dtype == np.float32 and w.y.dtype == np.float32
    dj = prop.disjuncts[w.disjunct_index]
    assert (dj.C @ w.y.astype(np.float64) <= dj.d).all()
    np.testing.assert_array_equal(w.y, m.runner(w.x[None])[0])


class _BatchRounds:
    """A runner that rounds an input one way in a batch and the other way alone, as onnxruntime's kernels
    can (benchmarks/fuzz_certify.py found a net whose two outputs tie in every batch and differ by 1 ulp
    alone): y = (x_0 + bump, x_1), bump 0 in a batch and 1.2e-7 alone."""

    dtype = np.float32

    def __init__(self, bump_alone: float = 1.2e-7) -> None:
        self.bump_alone = bump_alone

    def __call__(self, x):
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        y = x[:, :2].copy()
        if len(x) == 1:
            y[:, 0] += np.float32(self.bump_alone)
        return y


@pytest.mark.parametrize("bump", [1.2e-7, 0.0])
def test_witness_must_hold_when_run_alone(bump):
    from certkit.verify.query import Query

    prop = _box_prop(np.zeros(2), np.ones(2), np.array([[1.0, -1.0]]), 0.0)  # unsafe: y_0 <= y_1
    cands = np.array([[0.5, 0.5], [0.25, 0.25], [0.75, 0.75]])  # y_0 = y_1 in a batch
    runner = _BatchRounds(bump)
    for w in (validate(runner, prop, 0, cands),
              Query.of_property(None, prop, 0, runner).confirm(cands)):
        if bump:  # a checker runs the witness alone: y_0 > y_1 there, so none of these is a counterexample
            assert w is None
        else:
            assert w is not None and np.array_equal(w.x, cands[0].astype(np.float32))
            np.testing.assert_array_equal(w.y, runner(w.x)[0])  # the output run alone is recorded


def test_satisfied_disjunct_zero_tolerance():
    C = np.array([[1.0, -1.0]])
    prop = Property(np.zeros(2), np.ones(2), (Disjunct(C, np.array([0.0])), Disjunct(np.array([[0.0, 1.0]]),
                                                                                        np.array([-5.0]))))
    assert satisfied_disjunct(prop, np.array([1.0, 1.0])) == 0  # on the boundary: C y = d
    assert satisfied_disjunct(prop, np.array([1.0 + 1e-12, 1.0])) == -1
    assert satisfied_disjunct(prop, np.array([3.0, -6.0])) == 1


def test_runner_batches_fixed_batch_model(fc):
    m, unsat, _ = fc
    prop = unsat.properties[0]
    x = (prop.lower + np.random.default_rng(1).random((5, 64)) * (prop.upper - prop.lower)).astype(np.float32)
    y = m.runner(x)
    assert y.shape == (5, 10) and y.dtype == np.float32
    for k in range(5):
        np.testing.assert_array_equal(m.runner(x[k])[0], y[k])


# ---------------------------------------------------------------------------------------------- results file


def test_results_file_verdicts():
    for v in ("unsat", "unknown", "timeout"):
        assert results_file(CertifyResult(v, "auto")) == v + "\n"
    assert results_file(CertifyResult("bogus", "auto")) == "error\n"
    assert results_file(CertifyResult("sat", "auto")) == "sat\n"  # no witness: only the word


def test_results_file_sat_format_and_round_trip():
    x = np.array([0.5, -0.25, 0.1], np.float32)
    y = np.array([1.0, np.float32(1 / 3)], np.float32)
    res = CertifyResult("sat", "auto", witness=Witness(x, y, 0, 0))
    text = results_file(res)
    lines = text.splitlines()
    assert lines[0] == "sat"
    assert lines[1].startswith("((X_0 ") and lines[-1].endswith("))")
    assert [ln.strip("()").split()[0] for ln in lines[1:]] == ["X_0", "X_1", "X_2", "Y_0", "Y_1"]
    assert lines[1:3] == ["((X_0 0.5)", "(X_1 -0.25)"]
    vals = np.array([float(ln.strip("()").split()[1]) for ln in lines[1:]])
    # every value reads back to the exact float32
    np.testing.assert_array_equal(vals[:3].astype(np.float32), x)
    np.testing.assert_array_equal(vals[3:].astype(np.float32), y)
    np.testing.assert_array_equal(vals[:3], x.astype(np.float64))
    assert text.endswith("))\n")


def test_infinite_output_with_zero_coefficient_still_decides():
    """0 * inf must not hide a counterexample: y = (inf, -2) satisfies Y_1 <= -1."""
    import numpy as np

    from certkit.spec.spec import Disjunct, Property
    from certkit.verify.witness import satisfied_disjunct

    prop = Property(np.zeros(2), np.ones(2), (Disjunct(np.array([[0.0, 1.0]]), np.array([-1.0])),))
    assert satisfied_disjunct(prop, np.array([np.inf, -2.0])) == 0
    assert satisfied_disjunct(prop, np.array([np.inf, 0.0])) == -1
    both = Property(np.zeros(2), np.ones(2), (Disjunct(np.array([[1.0, -1.0]]), np.array([0.0])),))
    assert satisfied_disjunct(both, np.array([np.inf, np.inf])) == -1  # inf - inf: NaN decides nothing


def test_rounded_ends_never_admitted_for_empty_or_nan_intervals():
    """An empty interval (lower > upper, e.g. [0.1 + 1e-9, 0.1]) or a NaN bound admits no point, not even
    the rounding of an end point: inside_rounded must never make an empty region non-empty."""
    a = np.float32(0.1)
    lo, hi = np.array([0.1 + 1e-9, np.nan, 0.0]), np.array([0.1, 1.0, np.nan])
    assert not no_float32_in(lo, hi).any()
    for x in ([a, 0.5, 0.5], [0.1, 0.5, 0.5]):
        assert not inside_rounded(np.array([x], np.float32), lo, hi).any()
