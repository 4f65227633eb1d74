"""The JSON Schemas of certkit's certificates (``certkit/schemas/``, issue 16).

Real certificates are generated for every verdict and proof kind reachable on the shipped models
(``certkit certify ... --json``, in-process): ``unsat`` by bounds, by input splitting, by ReLU splitting
and by the MILP; ``sat``; ``unknown``; ``timeout`` (a tiny ``--timeout``); a memory-degraded run; and
data-set certificates (DeepPoly L_inf and L_2, alpha L_1, branch and bound and MILP with a per-sample
timeout, the Lipschitz backend). Every one must validate; corrupted copies must
not. The schemas' enums are compared with the registries they mirror, so that a new backend, norm or
arithmetic fails here until the schema says it.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra: pip install -e '.[test]'")

from certkit.cli import main  # noqa: E402

from tests.helpers.examples import CONV, CONV_UNSAT, DATA, FC, MARGIN, MODELS, SAT, UNSAT  # noqa: E402

STD = MODELS / "mnist_std.onnx"
ONE_LIP = MODELS / "mnist_1lip.onnx"
LIP_DATA = MODELS / "mnist_lip_test.npz"
#: the MILP backend needs HiGHS and scipy (the highs extra)
HAVE_MILP = all(importlib.util.find_spec(m) is not None for m in ("highspy", "scipy"))


def _schema(name: str) -> dict:
    """A schema as the installed package ships it (importlib.resources, not a path into the tree)."""
    return json.loads(resources.files("certkit").joinpath("schemas", f"{name}.schema.json").read_text())


CERT = jsonschema.Draft202012Validator(_schema("certificate"))
DATASET = jsonschema.Draft202012Validator(_schema("dataset"))


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def _robustness_spec(path: Path, lower: np.ndarray, upper: np.ndarray, label: int, n_out: int = 10) -> Path:
    """A VNN-LIB robustness property over a box (some other class scores at least the label's)."""
    n = len(lower)
    lines = [f"(declare-const X_{i} Real)" for i in range(n)] + [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(n):
        lines += [f"(assert (<= X_{i} {float(upper[i])!r}))", f"(assert (>= X_{i} {float(lower[i])!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label) + "))")
    path.write_text("\n".join(lines) + "\n")
    return path


def _certify(folder: Path, name: str, *args) -> dict:
    out = folder / f"{name}.json"
    rc = main(["certify", *map(str, args), "--json", str(out)])
    assert rc == 0, (name, rc)
    doc = json.loads(out.read_text())
    doc["_file"] = str(out)
    return doc


@pytest.fixture(scope="module")
def spec_certs(tmp_path_factory) -> dict[str, dict]:
    """One certificate per verdict and proof kind (name -> document)."""
    tmp = tmp_path_factory.mktemp("certs")
    d = np.load(DATA)
    x0, y0 = d["x"][1].reshape(-1).astype(np.float64), int(d["y"][1])
    # the 4 brightest pixels free in [0, 1], the rest fixed: DeepPoly cannot prove it, input splitting can
    lo, hi = x0.copy(), x0.copy()
    free = np.argsort(-x0)[:4]
    lo[free], hi[free] = 0.0, 1.0
    free4 = _robustness_spec(tmp / "free4.vnnlib", lo, hi, y0)
    m = np.load(LIP_DATA)
    xm, ym = m["x"][0].reshape(-1).astype(np.float64), int(m["y"][0])
    # 784 free inputs, alpha-CROWN leaves it open: ReLU splitting proves it
    ball = _robustness_spec(tmp / "mnist_0.07.vnnlib", np.clip(xm - 0.07, 0, 1), np.clip(xm + 0.07, 0, 1), ym)
    docs = {
        "unsat_bounds": _certify(tmp, "unsat_bounds", FC, UNSAT),
        "unsat_conv": _certify(tmp, "unsat_conv", CONV, CONV_UNSAT, "--backend", "deeppoly"),
        "sat": _certify(tmp, "sat", FC, SAT),
        "unknown": _certify(tmp, "unknown", FC, MARGIN, "--backend", "interval"),
        "timeout": _certify(tmp, "timeout", FC, MARGIN, "--timeout", "0.001"),
        "unsat_input_split": _certify(tmp, "unsat_input_split", FC, free4, "--backend", "bab", "--timeout", "60"),
        "unsat_relu_split": _certify(tmp, "unsat_relu_split", STD, ball, "--backend", "bab", "--timeout", "60"),
        "degraded": _certify(tmp, "degraded", STD, ball, "--backend", "alpha", "--memory-limit", "2M"),
    }
    if HAVE_MILP:
        docs["unsat_milp"] = _certify(tmp, "unsat_milp", FC, free4, "--backend", "milp", "--timeout", "60")
    return docs


@pytest.fixture(scope="module")
def dataset_certs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("datasets")
    common = ["--limit", "40"]
    docs = {
        "deeppoly_linf": _certify(tmp, "deeppoly_linf", FC, "--dataset", DATA, "--eps", "0.05", "--backend",
                                  "deeppoly", *common),
        "deeppoly_l2": _certify(tmp, "deeppoly_l2", FC, "--dataset", DATA, "--eps", "0.1", "--norm", "l2",
                                "--backend", "deeppoly", "--domain", "0", "1", *common),
        "alpha_l1": _certify(tmp, "alpha_l1", FC, "--dataset", DATA, "--eps", "0.5", "--norm", "l1",
                             "--backend", "alpha", *common),
        # 2 s a sample: the samples the searches prove take 0.15-0.6 s each alone; 0.5 s was at that edge, and on a
        # machine running other tests too every search stayed open (no proof tree to check the schema of)
        "bab": _certify(tmp, "bab", FC, "--dataset", DATA, "--eps", "0.06", "--backend", "bab", "--timeout", "2",
                        *common),
        # a per-sample budget no search fits in: the samples left open by the batched stages time out
        "bab_timeout": _certify(tmp, "bab_timeout", FC, "--dataset", DATA, "--eps", "0.06", "--backend", "bab",
                                "--timeout", "0.01", "--limit", "20"),
        "lipschitz_l2": _certify(tmp, "lipschitz_l2", ONE_LIP, "--dataset", LIP_DATA, "--eps", "0.5", "--norm",
                                 "l2", "--backend", "lipschitz", *common),
        "lipschitz_linf": _certify(tmp, "lipschitz_linf", ONE_LIP, "--dataset", LIP_DATA, "--eps", "0.02",
                                   "--backend", "lipschitz", "--limit", "10"),
    }
    if HAVE_MILP:
        docs["milp"] = _certify(tmp, "milp", FC, "--dataset", DATA, "--eps", "0.06", "--backend", "milp",
                                "--timeout", "0.5", *common)
    return docs


def _clean(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "_file"}


# --------------------------------------------------------------------------- the schemas themselves


@pytest.mark.parametrize("name", ["certificate", "dataset"])
def test_schemas_are_valid_draft_2020_12_and_shipped(name):
    s = _schema(name)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


def test_schema_enums_match_the_registries():
    """A new backend, norm, arithmetic or precision must be added to the schemas too."""
    from certkit.bounds import ARITHMETICS
    from certkit.bounds.fperror import PRECISIONS
    from certkit.verify.dataset import NORMS
    from certkit.verify.plan import PLANS

    c, d = _schema("certificate"), _schema("dataset")
    assert c["properties"]["backend"]["enum"] == list(PLANS)
    assert d["properties"]["backend"]["enum"] == [*PLANS, "lipschitz"]
    assert d["properties"]["norm"]["enum"] == list(NORMS)
    for s in (c, d):
        fp = s["$defs"]["floating_point"] if "floating_point" in s["$defs"] else s["properties"]["floating_point"]
        assert set(fp["properties"]["precision"]["enum"]) == set(PRECISIONS) - {"exact"}
    assert c["$defs"]["options"]["properties"]["arithmetic"]["enum"] == list(ARITHMETICS)
    assert d["properties"]["options"]["properties"]["arithmetic"]["enum"] == list(ARITHMETICS)


# --------------------------------------------------------------------------- real certificates validate


def test_spec_certificates_validate(spec_certs):
    for name, doc in spec_certs.items():
        assert _errors(CERT, _clean(doc)) == [], name
        assert not DATASET.is_valid(_clean(doc)), name  # the two forms are told apart


def test_every_verdict_and_proof_kind_was_reached(spec_certs):
    verdicts = {d["verdict"] for d in spec_certs.values()}
    assert verdicts == {"unsat", "sat", "unknown", "timeout"}, verdicts
    methods = {p["proof"]["method"] for d in spec_certs.values() for p in d["properties"] if "proof" in p}
    want = {"bounds", "input_split", "relu_split"} | ({"milp"} if "unsat_milp" in spec_certs else set())
    assert methods == want, methods
    assert spec_certs["degraded"].get("degraded"), "the 2M memory limit degraded nothing"
    assert "proof_file" in spec_certs["unsat_relu_split"]


def test_dataset_certificates_validate(dataset_certs):
    for name, doc in dataset_certs.items():
        assert _errors(DATASET, _clean(doc)) == [], name
        assert not CERT.is_valid(_clean(doc)), name


def test_dataset_verdicts_reached(dataset_certs):
    seen = {s["verdict"] for d in dataset_certs.values() for s in d["per_sample"]}
    assert {"verified", "falsified", "timeout", "unknown", "misclassified"} <= seen, seen
    methods = {s["proof"]["method"] for d in dataset_certs.values() for s in d["per_sample"] if "proof" in s}
    assert "input_split" in methods or "relu_split" in methods, methods
    assert any("radius" in s for s in dataset_certs["lipschitz_l2"]["per_sample"])


def test_dataset_counts_add_up(dataset_certs):
    """counts cover every verdict (timeout included since aa687a4) and certified is the verified count."""
    for name, doc in dataset_certs.items():
        assert doc["certified"] == doc["counts"]["verified"], name
        per = doc["per_sample"]
        assert sum(doc["counts"].values()) == doc["total"] == len(per), (name, doc["counts"], doc["total"])
        for v, n in doc["counts"].items():
            assert n == sum(s["verdict"] == v for s in per), (name, v)


# --------------------------------------------------------------------------- corrupted documents are rejected


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(_clean(doc))
    keys = [int(k) if k.isdigit() else k for k in path.split("/")]
    node = doc
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


_DELETE = object()

SPEC_CORRUPTIONS = [
    ("unsat_bounds", "format", "certkit-certificate/1"),
    ("unsat_bounds", "verdict", "proven"),
    ("unsat_bounds", "verdict", "sat"),  # sat without a witness
    ("unsat_bounds", "model/sha256", "c946d71e"),
    ("unsat_bounds", "model", _DELETE),
    ("unsat_bounds", "spec", _DELETE),
    ("unsat_bounds", "properties", []),
    ("unsat_bounds", "properties/0/status", "open"),  # unsat with an open region
    ("unsat_bounds", "properties/0/status", "proved"),
    ("unsat_bounds", "properties/0/proof", _DELETE),  # unsat without a proof
    ("unsat_bounds", "properties/0/disjuncts", _DELETE),  # a bounds proof without its rows
    ("unsat_bounds", "properties/0/proof/method", "magic"),
    ("unsat_bounds", "properties/0/disjuncts/0/spec_lower/0", "big"),
    ("unsat_bounds", "properties/0/disjuncts/0/ruled_out", "yes"),
    ("unsat_bounds", "options/arithmetic", "float16"),
    ("unsat_bounds", "floating_point/precision", "exact"),
    ("unsat_bounds", "timings/total", -1.0),
    ("unsat_bounds", "backend", "crown"),
    ("unsat_bounds", "certkit_version", 1),
    ("sat", "witness", _DELETE),
    ("sat", "witness/validated_with", "torch"),
    ("sat", "witness/x", []),
    ("sat", "properties/0/status", "open"),  # sat, yet no region falsified
    ("unknown", "verdict", "unsat"),  # unsat with an open region, no proof
    ("unsat_input_split", "proof_file", _DELETE),  # trees without the proof file
    ("unsat_input_split", "properties/0/proof/trees", _DELETE),
    ("unsat_input_split", "properties/0/proof/trees/0/leaves", 0),
    ("unsat_input_split", "properties/0/proof/trees/0/key", "../../etc/passwd"),
    ("unsat_relu_split", "properties/0/proof/trees/0/method", "bisection"),
]


@pytest.mark.parametrize("name,path,value", SPEC_CORRUPTIONS,
                         ids=[f"{n}:{p}={'<del>' if v is _DELETE else v!r}" for n, p, v in SPEC_CORRUPTIONS])
def test_corrupted_certificates_are_rejected(spec_certs, name, path, value):
    bad = _set(spec_certs[name], path, value)
    assert not CERT.is_valid(bad), (name, path, value)


DATASET_CORRUPTIONS = [
    ("deeppoly_linf", "format", "certkit-dataset/1"),
    ("deeppoly_linf", "per_sample", _DELETE),
    ("deeppoly_linf", "eps", -0.1),
    ("deeppoly_linf", "norm", "l3"),
    ("deeppoly_linf", "domain", [0]),
    ("deeppoly_linf", "counts/verified", -1),
    ("deeppoly_linf", "counts/certified", 3),
    ("deeppoly_linf", "counts/misclassified", _DELETE),
    ("deeppoly_linf", "data/sha256", "not-a-digest"),
    ("deeppoly_linf", "per_sample/0/verdict", "robust"),
    ("deeppoly_linf", "per_sample/0/label", -1),
    ("deeppoly_linf", "per_sample/0/time", "fast"),
    ("deeppoly_linf", "proof_file", _DELETE),  # falsified samples' witnesses without the proof file
    ("bab", "backend", "crown"),
]


@pytest.mark.parametrize("name,path,value", DATASET_CORRUPTIONS,
                         ids=[f"{n}:{p}={'<del>' if v is _DELETE else v!r}" for n, p, v in DATASET_CORRUPTIONS])
def test_corrupted_dataset_certificates_are_rejected(dataset_certs, name, path, value):
    bad = _set(dataset_certs[name], path, value)
    assert not DATASET.is_valid(bad), (name, path, value)


def _first(doc: dict, pred) -> int:
    return next(i for i, s in enumerate(doc["per_sample"]) if pred(s))


def test_corrupted_samples_are_rejected(dataset_certs):
    d = dataset_certs["deeppoly_linf"]
    fals = _first(d, lambda s: s["verdict"] == "falsified")
    ver = _first(d, lambda s: s["verdict"] == "verified")
    assert not DATASET.is_valid(_set(d, f"per_sample/{fals}/witness", _DELETE))  # falsified without a witness
    assert not DATASET.is_valid(_set(d, f"per_sample/{ver}/witness", "w1"))  # a witness for a verified sample
    assert not DATASET.is_valid(_set(d, f"per_sample/{ver}/stage", ""))  # verified by no stage
    lip = dataset_certs["lipschitz_l2"]
    lv = _first(lip, lambda s: s["verdict"] == "verified")
    assert not DATASET.is_valid(_set(lip, f"per_sample/{lv}/radius", _DELETE))  # Lipschitz: the radius
    assert not DATASET.is_valid(_set(lip, f"per_sample/{lv}/radius", -1.0))
    bab = dataset_certs["bab"]
    i = _first(bab, lambda s: "proof" in s)
    assert not DATASET.is_valid(_set(bab, f"per_sample/{i}/proof/method", "bounds"))  # bound stages carry no proof
    assert not DATASET.is_valid(_set(bab, f"per_sample/{i}/proof/trees", []))
    assert not DATASET.is_valid(_set(bab, f"per_sample/{i}/verdict", "unknown"))  # a proof of an unverified sample


# --------------------------------------------------------------------------- radius search and sweeps


def test_radius_and_sweep_documents_validate(tmp_path):
    radius = jsonschema.Draft202012Validator(_schema("radius"))
    sweep = jsonschema.Draft202012Validator(_schema("sweep"))
    common = ["certify", str(FC), "--dataset", str(DATA), "--limit", "12", "--domain", "0", "1"]
    assert main(common + ["--eps", "0.2", "--radius", "--json", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert not _errors(radius, doc)
    assert {s["method"] for s in doc["per_sample"]} & {"deeppoly", "lipschitz"}
    assert main(common + ["--eps-sweep", "0.01,0.05", "--backend", "deeppoly", "--json", str(tmp_path / "s.json")]) == 0
    idx = json.loads((tmp_path / "s.json").read_text())
    assert not _errors(sweep, idx)
    for run in idx["runs"]:  # every listed certificate is a data-set certificate
        assert not _errors(DATASET, json.loads((tmp_path / run["certificate"]).read_text()))
    bad = copy.deepcopy(doc)
    bad["per_sample"][0]["radius"] = -1.0
    assert _errors(radius, bad)
    bad = copy.deepcopy(idx)
    del bad["runs"][0]["certificate"]
    assert _errors(sweep, bad)
