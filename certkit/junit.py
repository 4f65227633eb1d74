"""JUnit XML of ``certkit bench`` rows and of data-set runs, for CI systems (Jenkins, GitLab, GitHub
Actions test reporters).

The layout is the widely read Ant/Jenkins subset: ``testsuites`` > ``testsuite`` (``name``,
``tests``, ``failures``, ``errors``, ``skipped``, ``time``) > ``testcase`` (``classname``, ``name``,
``time``) with at most one of ``failure`` / ``error`` / ``skipped`` (``message``, ``type``) and a
``system-out`` with the details.

What each outcome becomes:

==============================================  ==========================================
``bench`` row                                   testcase
==============================================  ==========================================
``sat``/``unsat`` equal to ``expected``         passed
``sat``/``unsat`` without an expected verdict   passed (the verdict is in ``system-out``)
``wrong`` (``sat``/``unsat`` against expected)  ``failure`` (type ``WrongVerdict``)
``error``                                       ``error`` (type ``error``, the row's message)
``unknown`` / ``timeout``                       ``skipped``, with the reason: not decided,
                                                which is not evidence against the tool's
                                                soundness, only a missing answer
==============================================  ==========================================

==============================================  ==========================================
data-set sample                                 testcase
==============================================  ==========================================
``verified``                                    passed
``falsified``                                   ``failure`` (type ``Falsified``), naming the
                                                counterexample file when one was written
``misclassified``                               ``failure`` (type ``Misclassified``)
``unknown`` / ``timeout``                       ``skipped``, with the reason
==============================================  ==========================================

Only :mod:`xml.etree.ElementTree` is used.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Callable, Iterable

#: the testcase outcomes, as counted in the ``testsuite`` attributes
PASSED, FAILURE, ERROR, SKIPPED = "passed", "failure", "error", "skipped"


def _seconds(v) -> str:
    try:
        t = float(v)
    except (TypeError, ValueError):
        return "0.000"
    return f"{t:.3f}" if t == t and t >= 0 else "0.000"


def _clean(text: str) -> str:
    """XML 1.0 has no place for most control characters: drop them (a message of a failed worker)."""
    return "".join(c for c in str(text) if c in "\t\n\r" or ord(c) >= 0x20)


def _case(classname: str, name: str, time_s, outcome: str, message: str = "", kind: str = "",
          out: str = "") -> ET.Element:
    tc = ET.Element("testcase", {"classname": _clean(classname), "name": _clean(name), "time": _seconds(time_s)})
    if outcome != PASSED:
        attrs = {"message": _clean(message)}
        if kind:
            attrs["type"] = kind
        ET.SubElement(tc, outcome, attrs).text = _clean(message) if outcome != SKIPPED else None
    if out:
        ET.SubElement(tc, "system-out").text = _clean(out)
    tc.set("_outcome", outcome)  # removed in _suite
    return tc


def _suite(name: str, cases: list[ET.Element]) -> ET.Element:
    n = {k: 0 for k in (FAILURE, ERROR, SKIPPED)}
    total = 0.0
    for tc in cases:
        outcome = tc.attrib.pop("_outcome")
        if outcome in n:
            n[outcome] += 1
        total += float(tc.get("time"))
    s = ET.Element("testsuite", {"name": _clean(name), "tests": str(len(cases)), "failures": str(n[FAILURE]),
                                 "errors": str(n[ERROR]), "skipped": str(n[SKIPPED]), "time": f"{total:.3f}"})
    s.extend(cases)
    return s


def _document(name: str, suites: list[ET.Element]) -> ET.ElementTree:
    root = ET.Element("testsuites", {"name": _clean(name)})
    for k in ("tests", "failures", "errors", "skipped"):
        root.set(k, str(sum(int(s.get(k)) for s in suites)))
    root.set("time", f"{sum(float(s.get('time')) for s in suites):.3f}")
    root.extend(suites)
    ET.indent(root)
    return ET.ElementTree(root)


def _write(tree: ET.ElementTree, path: str) -> None:
    tree.write(path, encoding="utf-8", xml_declaration=True)


# --------------------------------------------------------------------------------------------- bench

def bench_outcome(row: dict) -> tuple[str, str, str]:
    """``(outcome, message, type)`` of one results row of ``certkit bench`` (see the module table)."""
    from .bench import normalise_expected

    verdict, expected = row.get("verdict", ""), normalise_expected(row.get("expected", ""))
    msg = row.get("message", "") or ""
    if row.get("wrong") == "1":
        return FAILURE, f"wrong verdict: {verdict}, expected {expected}", "WrongVerdict"
    if verdict == "error":
        return ERROR, msg or "error", "error"
    if verdict in ("unknown", "timeout"):
        why = f"{verdict}" + (f" (expected {expected})" if expected else "") + (f": {msg}" if msg else "")
        return SKIPPED, why, ""
    if verdict in ("sat", "unsat"):
        return PASSED, "", ""
    return ERROR, f"no verdict in the row ({verdict!r})", "error"


def bench_tree(rows: Iterable[dict], name: str = "certkit bench") -> ET.ElementTree:
    """One testsuite per benchmark (in order of first appearance), one testcase per row: classname
    the benchmark, name ``ONNX_FILE :: VNNLIB_FILE`` (as written in the instances CSV), time the
    row's ``time_s``."""
    groups: dict[str, list[ET.Element]] = {}
    for r in rows:
        outcome, message, kind = bench_outcome(r)
        out = (f"verdict {r.get('verdict', '')}, stage {r.get('stage') or '-'}, expected {r.get('expected') or '-'}, "
               f"timeout {r.get('timeout', '')} s" + (f"\n{r['message']}" if r.get("message") else ""))
        bench = r.get("benchmark", "") or "instances"
        groups.setdefault(bench, []).append(
            _case(bench, f"{r.get('onnx', '')} :: {r.get('vnnlib', '')}", r.get("time_s"), outcome, message, kind, out))
    return _document(name, [_suite(b, cases) for b, cases in groups.items()])


def write_bench(rows: Iterable[dict], path: str) -> None:
    """The JUnit XML of ``certkit bench`` rows into ``path``."""
    _write(bench_tree(rows), path)


# --------------------------------------------------------------------------------------------- data sets

def dataset_tree(result, model_path: str, data_path: str,
                 counterexample: Callable[[int], str | None] | None = None) -> ET.ElementTree:
    """One testsuite (``MODEL backend norm eps=E``), one testcase per sample: classname
    ``MODEL_STEM.DATA_STEM``, name ``sample_<index>``, time the sample's. ``counterexample(index)``
    names where a falsified sample's counterexample was written (or None)."""
    model = os.path.splitext(os.path.basename(model_path))[0]
    data = os.path.splitext(os.path.basename(data_path))[0]
    cls = f"{model}.{data}"
    cases = []
    for s in result.samples:
        detail = f"label {s.label}, verdict {s.verdict}" + (f", stage {s.stage}" if s.stage else "")
        if s.margin_lower == s.margin_lower:
            detail += f", margin lower bound {s.margin_lower:.6g}"
        if s.radius == s.radius:
            detail += f", certified radius {s.radius:.6g}"
        if s.verdict == "verified":
            outcome, message, kind = PASSED, "", ""
        elif s.verdict == "falsified":
            where = counterexample(s.index) if counterexample is not None else None
            outcome, kind = FAILURE, "Falsified"
            message = (f"counterexample in the {result.norm} ball of radius {result.eps:g} (validated with "
                       f"onnxruntime)" + (f": {where}" if where else ""))
        elif s.verdict == "misclassified":
            outcome, kind, message = FAILURE, "Misclassified", f"the sample itself is misclassified (label {s.label})"
        else:  # unknown, timeout
            outcome, kind = SKIPPED, ""
            message = f"{s.verdict}: not decided at {result.norm} radius {result.eps:g}"
        cases.append(_case(cls, f"sample_{s.index}", s.time, outcome, message, kind, detail))
    suite = f"{os.path.basename(model_path)} {result.backend} {result.norm} eps={result.eps:g}"
    return _document("certkit certify --dataset", [_suite(suite, cases)])


def write_dataset(result, path: str, model_path: str, data_path: str, out_dir: str | None = None,
                  cert: str | None = None) -> None:
    """The JUnit XML of a data-set run into ``path`` (:func:`dataset_tree`). A falsified sample's
    failure names its counterexample: ``OUT_DIR/sample_<i>.counterexample`` (``certify --out``),
    else the witness array in the certificate's proof file (``certify --json``)."""
    from .certificate import proof_file_name

    def where(i: int) -> str | None:
        if out_dir:
            return os.path.join(out_dir, f"sample_{i}.counterexample")
        return f"{proof_file_name(cert)} (array w{i})" if cert else None

    _write(dataset_tree(result, model_path, data_path, where), path)
