"""``certkit report``: plots and index.html from a bench CSV and data-set JSONs made here.

Runs ``certkit bench`` on 3 instances of the shipped digits examples and ``certify --dataset`` on 20
digits at two radii with the deeppoly and lipschitz backends (all in-process, about 10 s), then
the report on them.
"""
from __future__ import annotations

import base64
import csv
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from certkit import report
from certkit.cli import main

from tests.helpers.examples import DATA, FC, SAT, UNSAT

pytest.importorskip("matplotlib")

EPS = ("0.01", "0.03")
PIXELS = (round(report.FIGSIZE[1] * report.DPI), round(report.FIGSIZE[0] * report.DPI))  # rows, columns


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("report_inputs")
    inst = d / "instances.csv"
    with open(inst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "onnx", "vnnlib", "timeout_s", "expected", "abcrown_time_s"])
        w.writerow(["digits", FC, UNSAT, 60, "unsat", "1.5"])
        w.writerow(["digits", FC, SAT, 60, "sat", "75"])  # beyond the timeout: not solved by the reference
        w.writerow(["broken", d / "no_such.onnx", UNSAT, 60, "unsat", "2"])
    bench_csv = d / "results.csv"
    assert main(["bench", str(inst), "--out", str(bench_csv), "--backend", "deeppoly"]) == 0
    jsons = []
    for backend in ("deeppoly", "lipschitz"):
        for eps in EPS:
            p = d / f"{backend}_{eps}.json"
            assert main(["certify", str(FC), "--dataset", str(DATA), "--limit", "20", "--eps", eps,
                         "--backend", backend, "--json", str(p)]) == 0
            jsons.append(p)
    return {"dir": d, "instances": inst, "bench": bench_csv, "jsons": jsons}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.href: list[str] = []
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.href.append(a["href"])
        if tag == "img" and a.get("src"):
            self.src.append(a["src"])


def links(index: Path) -> _Links:
    p = _Links()
    p.feed(index.read_text(encoding="utf-8"))
    return p


def test_report_png(inputs, tmp_path: Path, capsys):
    out = tmp_path / "rep"
    rc, stdout, err = run(capsys, "report", inputs["bench"], *inputs["jsons"], "--out", out)
    assert rc == 0, err
    names = {f"{report.CACTUS}.png", f"{report.ACCURACY}.png", f"{report.HISTOGRAM}.png"}
    assert set(os.listdir(out)) == names | {report.INDEX}
    import matplotlib.image as mpimg

    for name in names:  # an image of the figure's size
        img = mpimg.imread(out / name)
        assert img.shape[:2] == PIXELS and img.shape[2] in (3, 4), (name, img.shape)
        assert img[..., :3].std() > 0.01  # not blank
    html = links(out / report.INDEX)
    assert names <= set(html.href)  # every image linked ...
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in html.src if s.startswith("data:image/png;base64,"))
    assert embedded == sorted((out / n).read_bytes() for n in names)  # ... and embedded: the page stands alone
    text = (out / report.INDEX).read_text(encoding="utf-8")
    assert "PGD upper bound" in text and "abcrown_solved" in text
    assert f"{inputs['bench']}: 2/3 solved" in stdout
    assert "lipschitz linf eps 0.01: certified" in stdout


def test_series_from_the_runs(inputs):
    """The numbers behind the plots: solved times, the reference within the timeout, certified
    fractions per radius, the attack bound and the per-sample radii of lipschitz."""
    benches, runs, radii = report.read_inputs([str(inputs["bench"]), *map(str, inputs["jsons"])])
    assert len(benches) == 1 and len(runs) == 4 and not radii
    assert len(report.solved_times(benches[0].rows)) == 2
    assert report.reference_times(benches[0].rows, "abcrown_time_s") == [1.5, 2.0]
    groups = report.run_groups(runs)
    assert sorted(g[0].backend for g in groups.values()) == ["deeppoly", "lipschitz"]
    for g in groups.values():
        assert [r.eps for r in g] == [0.01, 0.03]
    lip = next(g for g in groups.values() if g[0].backend == "lipschitz")
    assert lip[0].radius and all(v >= 0 for v in lip[0].radius.values())
    for r in lip:  # a sample verified at eps has a certified radius of at least eps
        docs = json.load(open(r.path))["per_sample"]
        for s in docs:
            if s["verdict"] == "verified":
                assert r.radius[s["index"]] >= r.eps
    bound = report.attack_bound(runs)
    assert [e for e, _ in bound] == [0.01, 0.03] and bound[0][1] >= bound[1][1]
    for r in runs:  # the upper bound is above every certified fraction
        assert r.counts["verified"] / r.total <= dict(bound)[r.eps] + 1e-12
    assert report.read_inputs([str(inputs["bench"])])[0][0].label == "results"


def test_step_curve():
    xs, ys = report._step_curve([0.1, 0.2, 0.2, math.inf], 5, 0.3)
    assert xs == [0.0, 0.1, 0.2, 0.3] and ys == [0.8, 0.6, 0.2, 0.2]
    xs, ys = report._step_curve([0.0, 0.1], 2, 0.3, strict=True)  # a counterexample at 0 breaks it at 0
    assert ys[0] == 0.5


def test_report_svg_and_sweep_index(inputs, tmp_path: Path, capsys):
    """SVG images; an --eps-sweep index stands for its certificates; no CSV, no cactus plot."""
    d = tmp_path / "sweep"
    d.mkdir()
    rc, _, err = run(capsys, "certify", FC, "--dataset", DATA, "--limit", "10", "--eps-sweep", "0.01,0.02",
                     "--backend", "lipschitz", "--json", d / "sweep.json")
    assert rc == 0, err
    out = tmp_path / "rep"
    rc, stdout, err = run(capsys, "report", d / "sweep.json", "--out", out, "--format", "svg")
    assert rc == 0, err
    assert stdout.count("lipschitz linf eps") == 2
    names = {f"{report.ACCURACY}.svg", f"{report.HISTOGRAM}.svg"}
    assert set(os.listdir(out)) == names | {report.INDEX}
    for n in names:
        root = ET.parse(out / n).getroot()
        assert root.tag.endswith("svg")
    html = links(out / report.INDEX)
    assert names <= set(html.href) and all(s.startswith("data:image/svg+xml;base64,") for s in html.src)


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.csv", "missing.csv: no such file"),
    (lambda d: d, "is a folder"),
    (lambda d: _write(d / "x.txt", "hello\n"), "x.txt: unknown format"),
    (lambda d: _write(d / "bad.json", "{not json"), "bad.json: not valid JSON"),
    (lambda d: _write(d / "cert.json", json.dumps({"verdict": "unsat"})), "cert.json: a certificate of a VNN-LIB spec"),
    (lambda d: _write(d / "ds.json", json.dumps({"eps": 0.1, "per_sample": [{"index": 0}]})), "ds.json: a field"),
])
def test_bad_input_exit_2(tmp_path: Path, capsys, make, needle):
    rc, _, err = run(capsys, "report", make(tmp_path), "--out", tmp_path / "rep")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_instances_csv_is_not_results(inputs, tmp_path: Path, capsys):
    rc, _, err = run(capsys, "report", inputs["instances"], "--out", tmp_path / "rep")
    assert rc == 2 and "instances.csv: unknown format" in err and "verdict" in err


def test_reference_column_must_exist(inputs, tmp_path: Path, capsys):
    rc, _, err = run(capsys, "report", inputs["bench"], "--reference-column", "nnenum_time_s", "--out", tmp_path / "r")
    assert rc == 2 and "nnenum_time_s" in err
    rc, _, err = run(capsys, "report", inputs["bench"], "--out", _write(tmp_path / "file", ""))
    assert rc == 2 and "names a folder" in err


def test_without_matplotlib_exit_5(inputs, tmp_path: Path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ModuleNotFoundError
    rc, _, err = run(capsys, "report", inputs["bench"], "--out", tmp_path / "rep")
    assert rc == 5 and "pip install 'certkit[report]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
