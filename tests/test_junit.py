"""JUnit XML (``certkit.junit``): ``bench --junit`` and ``certify --dataset --junit``.

The output is validated against the Ant/Jenkins JUnit schema subset CI systems read (written out
below: there is no network to fetch one) with ``xmlschema`` or ``lxml`` when one is installed; the
same structure is always checked with ElementTree.
"""
from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from certkit import junit
from certkit.cli import main

from tests.helpers.examples import DATA, FC, SAT, UNSAT

#: The Jenkins/Ant JUnit schema, the subset certkit writes: testsuites > testsuite(name, tests,
#: failures, errors, skipped, time) > testcase(classname, name, time) with an optional
#: failure/error/skipped(message, type) and system-out/system-err.
XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified">
  <xs:complexType name="result">
    <xs:simpleContent>
      <xs:extension base="xs:string">
        <xs:attribute name="message" type="xs:string"/>
        <xs:attribute name="type" type="xs:string"/>
      </xs:extension>
    </xs:simpleContent>
  </xs:complexType>
  <xs:element name="testcase">
    <xs:complexType>
      <xs:sequence>
        <xs:choice minOccurs="0" maxOccurs="1">
          <xs:element name="skipped" type="result"/>
          <xs:element name="error" type="result"/>
          <xs:element name="failure" type="result"/>
        </xs:choice>
        <xs:element name="system-out" type="xs:string" minOccurs="0"/>
        <xs:element name="system-err" type="xs:string" minOccurs="0"/>
      </xs:sequence>
      <xs:attribute name="name" type="xs:string" use="required"/>
      <xs:attribute name="classname" type="xs:string" use="required"/>
      <xs:attribute name="time" type="xs:decimal" use="required"/>
    </xs:complexType>
  </xs:element>
  <xs:element name="testsuite">
    <xs:complexType>
      <xs:sequence>
        <xs:element ref="testcase" minOccurs="0" maxOccurs="unbounded"/>
        <xs:element name="system-out" type="xs:string" minOccurs="0"/>
        <xs:element name="system-err" type="xs:string" minOccurs="0"/>
      </xs:sequence>
      <xs:attribute name="name" type="xs:string" use="required"/>
      <xs:attribute name="tests" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="failures" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="errors" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="skipped" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="time" type="xs:decimal" use="required"/>
    </xs:complexType>
  </xs:element>
  <xs:element name="testsuites">
    <xs:complexType>
      <xs:sequence>
        <xs:element ref="testsuite" minOccurs="0" maxOccurs="unbounded"/>
      </xs:sequence>
      <xs:attribute name="name" type="xs:string"/>
      <xs:attribute name="tests" type="xs:nonNegativeInteger"/>
      <xs:attribute name="failures" type="xs:nonNegativeInteger"/>
      <xs:attribute name="errors" type="xs:nonNegativeInteger"/>
      <xs:attribute name="skipped" type="xs:nonNegativeInteger"/>
      <xs:attribute name="time" type="xs:decimal"/>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""

OUTCOMES = ("failure", "error", "skipped")


def check_structure(path: Path) -> ET.Element:
    """The schema above, checked by hand, and the counts of every suite against its testcases."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in root:
        assert suite.tag == "testsuite"
        for k in ("name", "tests", "failures", "errors", "skipped", "time"):
            assert k in suite.attrib, k
        float(suite.get("time"))
        cases = [c for c in suite if c.tag == "testcase"]
        assert all(c.tag in ("testcase", "system-out", "system-err") for c in suite)
        n = dict.fromkeys(OUTCOMES, 0)
        for c in cases:
            assert set(c.attrib) == {"classname", "name", "time"}
            assert float(c.get("time")) >= 0
            kids = [k.tag for k in c]
            assert all(k in (*OUTCOMES, "system-out", "system-err") for k in kids), kids
            res = [k for k in kids if k in OUTCOMES]
            assert len(res) <= 1 and kids[:len(res)] == res  # the result first, then the output
            for k in res:
                n[k] += 1
                assert set(c.find(k).attrib) <= {"message", "type"} and c.find(k).get("message")
        assert int(suite.get("tests")) == len(cases)
        assert (int(suite.get("failures")), int(suite.get("errors")), int(suite.get("skipped"))) == \
            (n["failure"], n["error"], n["skipped"])
        for k in totals:
            totals[k] += int(suite.get(k))
    assert {k: int(root.get(k)) for k in totals} == totals
    return root


def validate_xsd(path: Path, tmp_path: Path) -> None:
    """Against :data:`XSD` with xmlschema, else lxml; skipped (saying why) when neither is installed."""
    try:
        import xmlschema
    except ImportError:
        xmlschema = None
    if xmlschema is not None:
        xmlschema.XMLSchema(XSD).validate(str(path))
        return
    try:
        from lxml import etree
    except ImportError:
        pytest.skip("neither xmlschema nor lxml is installed: XSD validation skipped (the same structure is "
                    "checked with ElementTree by the *_structure tests)")
    schema = etree.XMLSchema(etree.fromstring(XSD.encode()))
    doc = etree.parse(str(path))
    assert schema.validate(doc), schema.error_log


def case_map(root: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in root.iter("testcase")}


def outcome(c: ET.Element) -> str:
    return next((k.tag for k in c if k.tag in OUTCOMES), "passed")


ROWS = [  # every kind of results row certkit bench writes
    {"benchmark": "b1", "onnx": "n.onnx", "vnnlib": "p1.vnnlib", "timeout": "60", "expected": "unsat",
     "verdict": "unsat", "stage": "deeppoly", "time_s": "0.250", "wrong": "0", "message": ""},
    {"benchmark": "b1", "onnx": "n.onnx", "vnnlib": "p2.vnnlib", "timeout": "60", "expected": "unsat",
     "verdict": "sat", "stage": "attack", "time_s": "1.000", "wrong": "1", "message": "counterexample"},
    {"benchmark": "b1", "onnx": "n.onnx", "vnnlib": "p3.vnnlib", "timeout": "60", "expected": "sat",
     "verdict": "timeout", "stage": "", "time_s": "60.100", "wrong": "0", "message": "killed \x01 past the timeout"},
    {"benchmark": "b2", "onnx": "m.onnx", "vnnlib": "p4.vnnlib", "timeout": "30", "expected": "",
     "verdict": "unknown", "stage": "", "time_s": "2.000", "wrong": "0", "message": "bounds too loose"},
    {"benchmark": "b2", "onnx": "m.onnx", "vnnlib": "p5.vnnlib", "timeout": "30", "expected": "",
     "verdict": "error", "stage": "", "time_s": "0.000", "wrong": "0", "message": "no such file: m.onnx"},
    {"benchmark": "b2", "onnx": "m.onnx", "vnnlib": "p6.vnnlib", "timeout": "30", "expected": "holds",
     "verdict": "unsat", "stage": "bab", "time_s": "3.000", "wrong": "0", "message": ""},
]


def test_bench_rows_structure(tmp_path: Path):
    path = tmp_path / "bench.xml"
    junit.write_bench(ROWS, str(path))
    root = check_structure(path)
    assert [s.get("name") for s in root] == ["b1", "b2"]
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("6", "1", "1", "2")
    c = case_map(root)
    got = {name.split(" :: ")[1]: outcome(e) for name, e in c.items()}
    assert got == {"p1.vnnlib": "passed", "p2.vnnlib": "failure", "p3.vnnlib": "skipped", "p4.vnnlib": "skipped",
                   "p5.vnnlib": "error", "p6.vnnlib": "passed"}
    wrong = c["n.onnx :: p2.vnnlib"].find("failure")
    assert wrong.get("type") == "WrongVerdict" and "expected unsat" in wrong.get("message")
    late = c["n.onnx :: p3.vnnlib"].find("skipped").get("message")
    assert late.startswith("timeout (expected sat)") and "\x01" not in late  # control characters dropped
    assert c["n.onnx :: p1.vnnlib"].get("classname") == "b1" and c["n.onnx :: p1.vnnlib"].get("time") == "0.250"
    assert float(root.find("testsuite").get("time")) == pytest.approx(61.35)


def test_bench_rows_xsd(tmp_path: Path):
    path = tmp_path / "bench.xml"
    junit.write_bench(ROWS, str(path))
    validate_xsd(path, tmp_path)


def rel(p: Path, base: Path) -> str:
    return os.path.relpath(p, base)


def test_bench_cli_junit(tmp_path: Path, capsys):
    """``certkit bench --junit``: one testcase per row, the results CSV unchanged beside it."""
    inst = tmp_path / "instances.csv"
    with open(inst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "onnx", "vnnlib", "timeout_s", "expected"])
        w.writerow(["digits", rel(FC, tmp_path), rel(UNSAT, tmp_path), 60, "unsat"])
        w.writerow(["digits", rel(FC, tmp_path), rel(SAT, tmp_path), 60, "unsat"])  # a wrong expectation
        w.writerow(["broken", "no_such.onnx", rel(UNSAT, tmp_path), 60, "unsat"])
    out, xml = tmp_path / "results.csv", tmp_path / "results.xml"
    rc = main(["bench", str(inst), "--out", str(out), "--junit", str(xml), "--backend", "deeppoly"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    root = check_structure(xml)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert f"JUnit XML: {xml}" in cap.out
    validate_xsd(xml, tmp_path)


@pytest.fixture(scope="module")
def dataset_xml(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("junit_ds")
    xml, cex = d / "ds.xml", d / "cex"
    rc = main(["certify", str(FC), "--dataset", str(DATA), "--limit", "20", "--eps", "0.05",
               "--backend", "deeppoly", "--out", str(cex), "--junit", str(xml)])
    assert rc == 0
    return xml, cex


def test_dataset_structure(dataset_xml):
    xml, cex = dataset_xml
    root = check_structure(xml)
    suite = root.find("testsuite")
    assert suite.get("name") == "digits_fc.onnx deeppoly linf eps=0.05" and suite.get("tests") == "20"
    cases = case_map(root)
    assert set(cases) == {f"sample_{i}" for i in range(20)}
    assert {c.get("classname") for c in cases.values()} == {"digits_fc.digits_test"}
    kinds = {name: (outcome(c), c.find(outcome(c)).get("type") if outcome(c) != "passed" else "")
             for name, c in cases.items()}
    falsified = [n for n, k in kinds.items() if k == ("failure", "Falsified")]
    assert falsified and any(k == ("passed", "") for k in kinds.values())
    assert any(k == ("failure", "Misclassified") for k in kinds.values())
    for name in falsified:  # the failure names the counterexample file, which exists
        msg = cases[name].find("failure").get("message")
        path = msg.rsplit(": ", 1)[1]
        assert path == os.path.join(str(cex), f"{name}.counterexample") and os.path.exists(path)
    for name, (o, _) in kinds.items():
        if o == "skipped":
            assert cases[name].find("skipped").get("message").startswith(("unknown", "timeout"))


def test_dataset_xsd(dataset_xml, tmp_path: Path):
    validate_xsd(dataset_xml[0], tmp_path)


def test_junit_needs_dataset_mode(tmp_path: Path, capsys):
    rc = main(["certify", str(FC), str(UNSAT), "--junit", str(tmp_path / "x.xml")])
    err = capsys.readouterr().err
    assert rc == 2 and "--junit belongs to the data-set mode" in err
    assert not (tmp_path / "x.xml").exists()


def test_junit_path_checked_before_work(tmp_path: Path, capsys):
    rc = main(["certify", str(FC), "--dataset", str(DATA), "--eps", "0.01",
               "--junit", str(tmp_path / "missing" / "x.xml")])
    assert rc == 2 and "cannot write" in capsys.readouterr().err
