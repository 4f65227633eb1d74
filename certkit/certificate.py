"""JSON certificates (DESIGN.md section 9) and the VNN-COMP results file.

A certificate records what a third party needs to re-check a verdict: the SHA-256 of the model
and spec, certkit's version, backend and options, the verdict, the floating-point rule the
bounds assumed, and per input region the proof the verdict gate admitted
(:mod:`certkit.verify.gate`): the rows' lower bounds on ``C y - d`` with their margins and the
bound stage of each (the procedure that actually bounded it: under a tight memory budget a cheaper
one than asked, listed with the reason under ``degraded``), a branch-and-bound proof tree, or the
MILP's bounds; the witness for ``sat``; timings.

Proof trees are arrays: they go into a compressed ``.npz`` beside the JSON (``CERT.proof.npz``
for ``CERT.json``), named in ``proof_file`` with its SHA-256. Paths in a certificate (model,
spec, data, proof file) are relative to the certificate's folder when they can be, so a folder
holding all of them can be moved (``certkit check`` resolves them against the certificate).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import numpy as np

from . import __version__
from .verify.certify import CertifyResult
from .verify.dataset import DatasetResult

FORMAT = "certkit-certificate/2"

#: The floating-point rule every bound in a certificate follows (certkit.bounds.fperror).
FP_RULE = ("bounds hold for the computed network y^_i = op_i(y^_j) + e_i, |e_i| <= err_i: affine ops "
           "gamma_S(|M||x| + beta) with S = fan-in + 1 + parameter roundings, gamma_k = k u / (1 - k u); "
           "ReLU/max/clip/copies exact; sigmoid/tanh/softplus 16 ulp + 2^-20 (float32); overflow -> inf; "
           "input boxes rounded outward; plus the float64 error of certkit's own arithmetic. A row is "
           "proven when its lower bound on C y - d is finite and exceeds row_margin, the float64 error "
           "of evaluating C y - d on the output.")


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def _jsonable(v):
    """NaN and infinities as strings (JSON has none)."""
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return v


def _fp_section(precision: str) -> dict:
    from .bounds.fperror import PRECISIONS

    p = PRECISIONS[precision]
    return {"precision": precision, "unit_roundoff": p.u, "rule": FP_RULE,
            "module": "certkit.bounds.fperror"}


def _proof_entry(proof, prefix: str, arrays: dict) -> dict:
    """The JSON part of a proof; its trees go into ``arrays`` under ``<prefix>_t<i>_*`` (``p<k>`` for
    input region k, ``s<i>`` for data-set sample i)."""
    entry: dict[str, Any] = {"method": proof.method, "stage": proof.stage}
    if proof.milp is not None:
        entry["milp"] = {"bounds": [_jsonable(float(b)) for b in proof.milp["bounds"]],
                         "tolerances": [_jsonable(float(t)) for t in proof.milp["tolerances"]],
                         "methods": list(proof.milp["methods"]), "solver": proof.milp.get("solver", "")}
    trees = []
    for i, (t, grp) in enumerate(zip(proof.trees, proof.groups)):
        key = f"{prefix}_t{i}"
        arrays[f"{key}_codes"] = t.codes.astype(np.int32)
        arrays[f"{key}_values"] = t.leaf_values
        for name, arr in t.payload.items():
            arrays[f"{key}_{name}"] = arr
        trees.append({"key": key, "method": t.method, "kinds": list(t.kinds), "leaves": t.n_leaves,
                      "nodes": int(len(t.codes)), "disjuncts": [int(k) for k in grp],
                      "payload": sorted(t.payload), "meta": t.meta})
    if trees:
        entry["trees"] = trees
    return entry


def certificate(result: CertifyResult, model, spec, options: dict[str, Any] | None = None) -> dict:
    """The certificate of a :func:`certkit.certify` run as a JSON-ready dict (arrays of proof
    trees, if any, under the key ``"_arrays"``: :func:`dump` writes them beside the JSON)."""
    props = []
    arrays: dict[str, np.ndarray] = {}
    for pr, prop in zip(result.properties, spec.properties):
        entry: dict[str, Any] = {"index": pr.index, "status": pr.status, "stage": pr.stage,
                                 "input_lower": _floats(prop.lower), "input_upper": _floats(prop.upper)}
        if pr.spec_lower is not None:
            stages = np.asarray(pr.row_stage if pr.row_stage else [""] * len(pr.spec_lower), dtype=object)
            entry["disjuncts"] = [
                {"index": k, "ruled_out": bool(pr.ruled_out[k]),
                 "spec_lower": [_jsonable(v) for v in _floats(pr.spec_lower[pr.owner == k])],
                 "row_margin": [_jsonable(v) for v in _floats(pr.margin[pr.owner == k])],
                 "row_stage": [str(s) for s in stages[pr.owner == k]]}
                for k in range(len(prop.disjuncts))]
        if pr.status == "verified" and pr.proof is not None:
            entry["proof"] = _proof_entry(pr.proof, f"p{pr.index}", arrays)
        if pr.floor:
            entry["floor"] = pr.floor
        props.append(entry)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "certkit_version": __version__,
        "model": {"path": os.path.abspath(model.path), "sha256": model.sha256},
        "spec": {"path": os.path.abspath(spec.path) if spec.path else "", "sha256": spec.sha256},
        "backend": result.backend,
        "options": options or {},
        "verdict": result.verdict,
        "stage": result.stage,
        "reason": result.reason,
        "floating_point": _fp_section(result.precision),
        "properties": props,
        "timings": {k: round(v, 6) for k, v in result.timings.items()},
    }
    if result.degraded:  # what the memory budget changed (each row's row_stage names its procedure)
        doc["degraded"] = [dict(d) for d in result.degraded]
    if result.witness is not None:
        w = result.witness
        doc["witness"] = {"x": _floats(w.x), "y": _floats(w.y), "property": w.property_index,
                          "disjunct": w.disjunct_index, "validated_with": "onnxruntime"}
    if arrays:
        doc["_arrays"] = arrays
    return doc


def dataset_certificate(result: DatasetResult, model, data_path: str, options: dict | None = None) -> dict:
    """The certificate of a data-set run; witnesses of falsified samples go into ``"_arrays"``."""
    arrays: dict[str, np.ndarray] = {}
    per = []
    for s in result.samples:
        e: dict[str, Any] = s.entry()
        if s.verdict == "verified" and s.proof is not None and s.proof.method not in ("bounds", "lipschitz"):
            e["proof"] = _proof_entry(s.proof, f"s{s.index}", arrays)
        if s.witness is not None:
            e["witness"] = f"w{s.index}"
            arrays[f"w{s.index}"] = np.asarray(s.witness)
        per.append(e)
    doc = {
        "format": FORMAT,
        "certkit_version": __version__,
        "model": {"path": os.path.abspath(model.path), "sha256": model.sha256},
        "data": {"path": os.path.abspath(data_path), "sha256": _sha256(data_path)},
        "eps": result.eps,
        "norm": result.norm,
        "domain": list(result.domain) if result.domain else None,
        "backend": result.backend,
        "options": options or {},
        "floating_point": _fp_section(result.precision),
        "certified": result.certified,
        "total": result.total,
        "counts": result.counts,
        "per_sample": per,
        "timings": {k: round(v, 6) for k, v in result.timings.items()},
    }
    if result.degraded:
        doc["degraded"] = [dict(d) for d in result.degraded]
    if arrays:
        doc["_arrays"] = arrays
    return doc


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def results_file(result: CertifyResult) -> str:
    """The VNN-COMP results file: the verdict, then ``((X_i v) ... (Y_j v) ...)`` for sat."""
    word = {"unsat": "unsat", "sat": "sat", "timeout": "timeout", "unknown": "unknown"}.get(result.verdict, "error")
    if word != "sat" or result.witness is None:
        return word + "\n"
    w = result.witness
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(w.x)] + \
            [f"(Y_{j} {float(v)!r})" for j, v in enumerate(w.y)]
    return "sat\n(" + "\n".join(parts) + ")\n"


def save_counterexamples(result: DatasetResult, folder: str) -> list[str]:
    """Every falsified sample's counterexample into ``folder`` (created if needed): ``sample_<i>.npz``
    (``x`` as the model reads it, ``y`` onnxruntime's output, ``label``, ``index``) and
    ``sample_<i>.counterexample`` in the VNN-COMP results format. Returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for s in result.samples:
        if s.verdict != "falsified" or s.witness is None:
            continue
        base = os.path.join(folder, f"sample_{s.index}")
        np.savez(base + ".npz", x=s.witness, y=s.witness_output, label=s.label, index=s.index)
        parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.ravel(s.witness))] + \
                [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.ravel(s.witness_output))]
        with open(base + ".counterexample", "w") as f:
            f.write("sat\n(" + "\n".join(parts) + ")\n")
        written += [base + ".npz", base + ".counterexample"]
    return written


def proof_file_name(cert_path: str) -> str:
    """``CERT.proof.npz`` for ``CERT.json`` (the proof arrays' file)."""
    base = cert_path[:-5] if cert_path.endswith(".json") else cert_path
    return base + ".proof.npz"


def _relative(path: str, folder: str) -> str:
    if not path:
        return path
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive
        return path


def dump(doc: dict, path: str, final: str | None = None) -> None:
    """Write the certificate ``doc`` as JSON to ``path``. ``final`` is where it will end up (when
    ``path`` is a temporary file renamed afterwards): paths in the certificate are made relative
    to its folder, and proof arrays are written to :func:`proof_file_name` of it."""
    final = final or path
    folder = os.path.dirname(os.path.abspath(final))
    doc = dict(doc)
    arrays = doc.pop("_arrays", None)
    for key in ("model", "spec", "data"):
        if isinstance(doc.get(key), dict) and doc[key].get("path"):
            doc[key] = {**doc[key], "path": _relative(doc[key]["path"], folder)}
    if arrays:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        data = buf.getvalue()
        npz = proof_file_name(final)
        tmp = npz + f".{os.getpid()}.part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, npz)
        doc["proof_file"] = {"path": os.path.basename(npz), "sha256": hashlib.sha256(data).hexdigest(),
                             "bytes": len(data)}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def load_arrays(cert_path: str, doc: dict) -> dict[str, np.ndarray]:
    """The proof arrays a certificate names (empty when none); raises ValueError when the file is
    missing or its SHA-256 differs."""
    ref = doc.get("proof_file")
    if not ref:
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(cert_path)), ref["path"])
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise ValueError(f"{path}: SHA-256 differs from the certificate's")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
