"""JSON certificates (DESIGN.md section 9) and the VNN-COMP results file.

A certificate records what a third party needs to re-check a verdict: the
SHA-256 of the model and spec, certkit's version, backend and options, the
verdict, the per-row lower bounds on ``C y - d`` with the floating-point margin
applied, the witness for ``sat`` and the timings.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from . import __version__
from .tolerances import FP_ABS, FP_REL
from .verify.certify import CertifyResult
from .verify.dataset import DatasetResult

FORMAT = "certkit-certificate/1"


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def certificate(result: CertifyResult, model, spec, options: dict[str, Any] | None = None) -> dict:
    """The certificate of a :func:`certkit.certify` run as a JSON-ready dict."""
    props = []
    for pr, prop in zip(result.properties, spec.properties):
        entry: dict[str, Any] = {"index": pr.index, "status": pr.status, "stage": pr.stage,
                                 "input_lower": _floats(prop.lower), "input_upper": _floats(prop.upper)}
        if pr.spec_lower is not None:
            entry["disjuncts"] = [
                {"index": k, "ruled_out": bool(pr.ruled_out[k]),
                 "spec_lower": _floats(pr.spec_lower[pr.owner == k]),
                 "fp_margin": _floats(pr.margin[pr.owner == k])}
                for k in range(len(prop.disjuncts))]
        props.append(entry)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "certkit_version": __version__,
        "model": {"path": model.path, "sha256": model.sha256},
        "spec": {"path": spec.path, "sha256": spec.sha256},
        "backend": result.backend,
        "options": options or {},
        "verdict": result.verdict,
        "stage": result.stage,
        "reason": result.reason,
        "fp_margin": {"relative": FP_REL, "absolute": FP_ABS, "depth": result.fp_depth,
                      "rule": "a row is proven when spec_lower > depth*(absolute + relative*scale)"},
        "properties": props,
        "timings": {k: round(v, 6) for k, v in result.timings.items()},
    }
    if result.witness is not None:
        w = result.witness
        doc["witness"] = {"x": _floats(w.x), "y": _floats(w.y), "property": w.property_index,
                          "disjunct": w.disjunct_index, "validated_with": "onnxruntime"}
    return doc


def dataset_certificate(result: DatasetResult, model, data_path: str, options: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "certkit_version": __version__,
        "model": {"path": model.path, "sha256": model.sha256},
        "data": data_path,
        "eps": result.eps,
        "norm": result.norm,
        "domain": list(result.domain) if result.domain else None,
        "backend": result.backend,
        "options": options or {},
        "certified": result.certified,
        "total": result.total,
        "counts": {v: sum(s.verdict == v for s in result.samples)
                   for v in ("verified", "falsified", "unknown", "misclassified")},
        "per_sample": [{"index": s.index, "label": s.label, "verdict": s.verdict,
                        "margin_lower": None if np.isnan(s.margin_lower) or np.isinf(s.margin_lower)
                        else s.margin_lower, "stage": s.stage, "time": round(s.time, 6),
                        **({"radius": s.radius if np.isfinite(s.radius) else None} if s.radius == s.radius else {})}
                       for s in result.samples],
        "timings": {k: round(v, 6) for k, v in result.timings.items()},
    }


def results_file(result: CertifyResult) -> str:
    """The VNN-COMP results file: the verdict, then ``((X_i v) ... (Y_j v) ...)`` for sat."""
    word = {"unsat": "unsat", "sat": "sat", "timeout": "timeout", "unknown": "unknown"}.get(result.verdict, "error")
    if word != "sat" or result.witness is None:
        return word + "\n"
    w = result.witness
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(w.x)] + \
            [f"(Y_{j} {float(v)!r})" for j, v in enumerate(w.y)]
    return "sat\n(" + "\n".join(parts) + ")\n"


def dump(doc: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
