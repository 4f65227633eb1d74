"""Re-check a JSON certificate (DESIGN.md section 9): ``certkit check CERT.json``.

The checker trusts nothing the certificate claims; it re-reads the model and spec (or data set)
the certificate names -- paths resolve against the certificate's folder -- compares their
SHA-256, and re-derives the verdict with certkit's own sound arithmetic
(:mod:`certkit.bounds.fperror`):

* ``sat``: the witness lies in its input box (exactly, in float64), and onnxruntime's output on
  it satisfies the disjunct with zero tolerance;
* ``unsat``, per input region, by the proof the verdict gate admitted:

  - ``bounds``: every row re-bounded by the stage that proved it; every disjunct needs a row
    above its margin;
  - ``input_split`` / ``relu_split``: the proof tree replayed from the region's box -- each split's
    children cover it, so the leaves cover the region -- and every leaf bounded again
    (:func:`certkit.verify.input_split.recheck`, :func:`certkit.verify.relu_split.recheck`);
  - ``milp``: the MILP solved again;

* data-set certificates: every verified sample re-bounded by its stage, every falsified sample's
  witness re-run with onnxruntime, every misclassified sample re-predicted.

``CheckReport.ok`` is False when a check fails (exit 6); ``complete`` is False when some part
could not be re-derived -- a solver missing, a time limit, a file absent (exit 7). Only a
certificate that is ok and complete exits 0.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .bounds import ARITHMETICS
from .certificate import load_arrays
from .errors import BackendError, SpecError
from .model import load_model
from .spec.vnnlib import parse_vnnlib
from .verify import gate
from .verify.certify import prove_rows
from .verify.proof import ProofTree
from .verify.query import Query
from .verify.witness import inside_rounded, satisfied_disjunct


@dataclass
class CheckReport:
    """``ok`` is False when some check failed; ``complete`` False when some part was not
    re-derived; ``lines`` say what was checked; ``leaves`` counts re-derived proof-tree leaves."""

    ok: bool = True
    complete: bool = True
    lines: list[str] = field(default_factory=list)
    leaves: int = 0
    seconds: float = 0.0

    def fail(self, msg: str) -> None:
        self.ok = False
        self.lines.append("FAIL " + msg)

    def good(self, msg: str) -> None:
        self.lines.append("ok   " + msg)

    def skip(self, msg: str) -> None:
        self.complete = False
        self.lines.append("skip " + msg)


def resolve(cert_path: str, path: str) -> str:
    """A path named in a certificate: relative to the certificate's folder (older certificates:
    relative to the working directory)."""
    if not path or os.path.isabs(path):
        return path
    here = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(cert_path)), path))
    return here if os.path.exists(here) or not os.path.exists(path) else path


def _read(cert_path: str) -> dict:
    try:
        with open(cert_path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise SpecError(f"{cert_path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{cert_path}: is a folder, not a certificate") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{cert_path}: not a JSON certificate ({e})") from e
    if not isinstance(doc, dict) or "model" not in doc or not ("verdict" in doc or "per_sample" in doc):
        raise SpecError(f"{cert_path}: not a certkit certificate (missing verdict/model)")
    shapes = {"model": dict, "spec": dict, "properties": list, "per_sample": list, "witness": dict,
              "proof_file": dict, "verdict": str}
    for key, kind in shapes.items():
        if key in doc and not isinstance(doc[key], kind):
            raise SpecError(f"{cert_path}: malformed certificate: '{key}' must be a JSON {kind.__name__}")
    if not isinstance(doc["model"].get("path", ""), str):
        raise SpecError(f"{cert_path}: malformed certificate: 'model.path' must be a string")
    return doc


def check_certificate(cert_path: str, model_path: str | None = None, spec_path: str | None = None,
                      data_path: str | None = None, time_per_leaf: float = 5.0) -> CheckReport:
    """Re-check the certificate at ``cert_path`` (see the module docstring)."""
    t0 = time.monotonic()
    doc = _read(cert_path)
    try:
        if "per_sample" in doc:
            rep = _check_dataset(cert_path, doc, model_path, data_path)
        else:
            rep = _check_spec(cert_path, doc, model_path, spec_path, time_per_leaf)
    except (KeyError, TypeError, IndexError, ValueError) as e:  # a field missing, of the wrong kind or value
        raise SpecError(f"{cert_path}: malformed certificate ({type(e).__name__}: {e})") from e
    rep.seconds = time.monotonic() - t0
    return rep


def _arithmetic(doc: dict) -> str:
    """The bound products' arithmetic the certificate was made with (``options.arithmetic``; ``auto``
    when absent or unknown): the bounds are re-derived the same way."""
    a = (doc.get("options") or {}).get("arithmetic", "auto")
    return a if a in ARITHMETICS else "auto"


def _sha_lines(rep: CheckReport, items) -> None:
    for what, path, got, want in items:
        same = got == want
        (rep.good if same else rep.fail)(f"{what} sha256 {'matches' if same else 'differs'}: {path}")


def _check_spec(cert_path: str, doc: dict, model_path, spec_path, time_per_leaf: float) -> CheckReport:
    rep = CheckReport()
    mpath = model_path or resolve(cert_path, doc["model"].get("path", ""))
    spath = spec_path or resolve(cert_path, doc.get("spec", {}).get("path", ""))
    model = load_model(mpath, _arithmetic(doc))
    spec = parse_vnnlib(spath, model.n_inputs, model.n_outputs)
    _sha_lines(rep, [("model", mpath, model.sha256, doc["model"].get("sha256")),
                     ("spec", spath, spec.sha256, doc.get("spec", {}).get("sha256"))])
    verdict = doc.get("verdict")
    if verdict == "sat":
        _check_witness(rep, doc, model, spec)
    elif verdict == "unsat":
        entries = doc.get("properties", [])
        if len(entries) != len(spec.properties):
            rep.fail(f"the certificate has {len(entries)} input region(s), the spec {len(spec.properties)}")
            return rep
        try:
            arrays = load_arrays(cert_path, doc)
        except (OSError, ValueError) as e:
            rep.fail(f"proof file: {e}")
            return rep
        for entry, prop in zip(entries, spec.properties):
            _check_region(rep, entry, prop, model, arrays, time_per_leaf)
    else:
        rep.lines.append(f"verdict '{verdict}': nothing to re-check")
    return rep


def _check_witness(rep: CheckReport, doc: dict, model, spec) -> None:
    w = doc.get("witness")
    if not w:
        rep.fail("sat certificate without a witness")
        return
    prop = spec.properties[w["property"]]
    x = np.asarray(w["x"], dtype=model.runner.dtype)
    inside = bool(inside_rounded(x, prop.lower, prop.upper, model.runner.dtype)[0])
    xd = x.astype(np.float64)
    rounded = int(((xd < prop.lower) | (xd > prop.upper)).sum()) if inside else 0
    note = f" ({rounded} coordinate(s) at the float32 rounding of an interval holding no float32)" if rounded else ""
    (rep.good if inside else rep.fail)(f"witness inside its input box{note}" if inside else "witness outside its box")
    y = model.runner(x[None])[0]
    k = satisfied_disjunct(prop, y)
    (rep.good if k >= 0 else rep.fail)(
        f"onnxruntime output satisfies disjunct {k}" if k >= 0 else "onnxruntime output satisfies no disjunct")


def _check_region(rep: CheckReport, entry: dict, prop, model, arrays: dict, time_per_leaf: float) -> None:
    k = entry.get("index")
    proof = entry.get("proof")
    if entry.get("status") != "verified" or not proof:
        rep.fail(f"region {k} is not marked verified with a proof")
        return
    method = proof.get("method")
    if method == "bounds":
        _check_rows(rep, k, entry, prop, model)
    elif method in ("input_split", "relu_split", "milp"):
        _check_complete(rep, f"region {k}", Query.of_property(model.graph, prop, k, model.runner), proof, arrays,
                        time_per_leaf)
    else:
        rep.fail(f"region {k}: unknown proof method '{method}'")


def _trees(proof: dict, arrays: dict) -> list[ProofTree] | None:
    trees = []
    for t in proof.get("trees", []):
        key = t["key"]
        if f"{key}_codes" not in arrays:
            return None
        payload = {name: arrays[f"{key}_{name}"] for name in t.get("payload", [])}
        trees.append(ProofTree(t["method"], arrays[f"{key}_codes"].astype(np.int64),
                               arrays[f"{key}_values"].astype(np.float64), tuple(t["kinds"]), payload, t.get("meta", {})))
    return trees


def _check_complete(rep: CheckReport, what: str, query: Query, proof: dict, arrays: dict,
                    time_per_leaf: float) -> bool:
    """Re-derive a complete procedure's proof of ``query``: the trees replayed leaf by leaf, or the
    MILP solved again. Returns whether it re-derived."""
    method = proof.get("method")
    if method == "milp":
        return _check_milp(rep, what, query)
    trees = _trees(proof, arrays)
    if trees is None:
        rep.fail(f"{what}: a proof tree is missing from the proof file")
        return False
    covered = sorted({int(d) for t in proof.get("trees", []) for d in t.get("disjuncts", [])})
    if covered != list(range(query.n_disjuncts)):
        rep.fail(f"{what}: the proof trees cover disjuncts {covered}, not all {query.n_disjuncts}")
        return False
    if method == "input_split":
        from .verify.input_split import recheck
        res = [recheck(query, t, time_per_leaf) for t in trees]
    else:
        from .verify.relu_recheck import recheck as relu_recheck
        res = [relu_recheck(query, trees, time_per_leaf=time_per_leaf)]
    leaves = sum(r.leaves for r in res)
    direct, resplit, failed = (sum(getattr(r, a) for r in res) for a in ("direct", "resplit", "failed"))
    secs = sum(r.seconds for r in res)
    rep.leaves += leaves
    ok = failed == 0 and leaves > 0
    (rep.good if ok else rep.fail)(f"{what}: {method} proof re-derived: {leaves} leaves ({direct} by their "
                                   f"recorded bound, {resplit} by a further split, {failed} failed) in {secs:.2f} s")
    return ok


def _check_rows(rep: CheckReport, k, entry: dict, prop, model) -> None:
    """Re-bound every row with the stage recorded for it; keep each row's best."""
    C, d, owner = prop.stacked()
    stages = ["" for _ in range(len(d))]
    for dj in entry.get("disjuncts", []):
        for r, st in zip(np.flatnonzero(owner == dj["index"]), dj.get("row_stage", [])):
            stages[r] = st
    from .bounds.backends import BACKENDS
    lower, margin = np.full(len(d), -np.inf), np.full(len(d), np.inf)
    for st in sorted(set(stages)):
        if st not in BACKENDS:
            continue
        slack, m, _ = prove_rows(model, prop, st)
        rows = np.asarray([s == st for s in stages])
        lower, margin = np.where(rows, slack, lower), np.where(rows, m, margin)
    ok, why = gate.check_proof(gate.Proof("bounds", "", lower, margin, owner), len(prop.disjuncts))
    used = ", ".join(sorted(set(s for s in stages if s))) or "none"
    (rep.good if ok else rep.fail)(f"region {k}: bounds re-derived ({used}); "
                                   + ("every disjunct ruled out" if ok else why))


def _check_milp(rep: CheckReport, what: str, query: Query) -> bool:
    try:
        from .verify.milp import milp_decide
    except ImportError as e:
        rep.skip(f"{what}: decided by the MILP; not re-derived ({e.name} is not installed: "
                 "pip install 'certkit[highs]')")
        return False
    t = time.monotonic()
    try:
        res = milp_decide(query.graph, query.property(), query.index, None, time.monotonic() + 600.0)
    except BackendError as e:
        rep.skip(f"{what}: decided by the MILP; not re-derived ({e})")
        return False
    if res.status == "verified":
        rep.good(f"{what}: MILP solved again: verified ({res.message}) in {time.monotonic() - t:.2f} s")
        return True
    if res.status in ("timeout", "unknown"):
        rep.skip(f"{what}: the MILP solved again did not decide ({res.status}: {res.message})")
    else:
        rep.fail(f"{what}: the MILP solved again says {res.status} ({res.message})")
    return False


# --------------------------------------------------------------------------- data sets


def _check_dataset(cert_path: str, doc: dict, model_path, data_path) -> CheckReport:
    from .verify.dataset import NORMS, load_dataset, prove_samples

    rep = CheckReport()
    mpath = model_path or resolve(cert_path, doc["model"].get("path", ""))
    data = doc.get("data")
    dref = data.get("path", "") if isinstance(data, dict) else (data or "")
    dpath = data_path or resolve(cert_path, dref)
    model = load_model(mpath, _arithmetic(doc))
    _sha_lines(rep, [("model", mpath, model.sha256, doc["model"].get("sha256"))])
    if isinstance(data, dict) and data.get("sha256"):
        from .certificate import _sha256
        _sha_lines(rep, [("data", dpath, _sha256(dpath), data["sha256"])])
    x, y = load_dataset(dpath, model)
    try:
        arrays = load_arrays(cert_path, doc)
    except (OSError, ValueError) as e:
        rep.fail(f"proof file: {e}")
        return rep
    eps, norm = float(doc["eps"]), doc.get("norm", "linf")
    domain = tuple(doc["domain"]) if doc.get("domain") else None
    per = doc["per_sample"]
    idx = np.asarray([s["index"] for s in per], dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(x)):
        rep.fail("sample indices outside the data set")
        return rep
    if sum(s["verdict"] == "verified" for s in per) != doc.get("certified"):
        rep.fail("the certified count does not match the per-sample verdicts")
    by_stage: dict[str, list[int]] = {}
    for s in per:
        if s["verdict"] == "verified" and s.get("proof"):  # a complete procedure's proof
            i = int(s["index"])
            q = Query.robustness(model.graph, x[i], int(y[i]), eps, NORMS[norm], domain, None, i)
            _check_complete(rep, f"sample {i}", q, s["proof"], arrays, 5.0)
        elif s["verdict"] == "verified":
            by_stage.setdefault(s.get("stage", ""), []).append(int(s["index"]))
    for stage, ids in sorted(by_stage.items()):
        ids_a = np.asarray(ids)
        ok = prove_samples(model, x[ids_a], y[ids_a], eps, norm, domain, stage)
        (rep.good if ok.all() else rep.fail)(
            f"{int(ok.sum())}/{len(ids)} verified sample(s) re-derived with {stage}")
    pred = model.runner(x).argmax(axis=1)
    wrong = [s["index"] for s in per if s["verdict"] == "misclassified" and pred[s["index"]] == y[s["index"]]]
    (rep.good if not wrong else rep.fail)(f"misclassified samples re-predicted ({len(wrong)} disagree)")
    bad = 0
    fals = [s for s in per if s["verdict"] == "falsified"]
    for s in fals:
        w = arrays.get(s.get("witness", ""))
        if w is None or not _witness_ok(model, w, x[s["index"]], int(y[s["index"]]), eps, norm, domain):
            bad += 1
    (rep.good if bad == 0 else rep.fail)(f"{len(fals) - bad}/{len(fals)} falsified sample(s): witness re-run "
                                         "with onnxruntime")
    return rep


def _witness_ok(model, w: np.ndarray, x0: np.ndarray, label: int, eps: float, norm: str, domain) -> bool:
    w64 = np.asarray(w).astype(np.float64).reshape(-1)
    p = {"linf": np.inf, "l2": 2.0, "l1": 1.0}[norm]
    if not np.linalg.norm(w64 - x0, ord=p) <= eps:
        return False
    if domain is not None and ((w64 < domain[0]).any() or (w64 > domain[1]).any()):
        return False
    out = model.runner(np.asarray(w)[None])[0]
    others = np.delete(out, label)
    return bool((others >= out[label]).any())
