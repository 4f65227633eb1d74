"""Re-check a JSON certificate (DESIGN.md section 9).

``check_certificate`` re-reads the model and spec the certificate names,
compares their SHA-256, and then

* for ``sat``: checks the witness lies in its input box (exactly, in float64),
  re-runs it with onnxruntime and checks the output satisfies the disjunct;
* for ``unsat``: re-derives, for every input region decided by a bound backend,
  the lower bounds on ``C y - d`` with that backend and checks every disjunct
  still has a row above the floating-point margin. Regions decided by a
  complete procedure (``bab``, ``milp``) are reported as not re-derived: that
  would mean re-running the search (``certkit certify`` reproduces it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .bounds.backends import BACKENDS
from .errors import SpecError
from .model import load_model
from .spec.vnnlib import parse_vnnlib
from .verify.certify import prove_rows
from .verify.witness import satisfied_disjunct


@dataclass
class CheckReport:
    """``ok`` is False when some check failed; ``lines`` says what was checked."""

    ok: bool = True
    complete: bool = True  # False when some part could not be re-derived cheaply
    lines: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.ok = False
        self.lines.append("FAIL " + msg)

    def good(self, msg: str) -> None:
        self.lines.append("ok   " + msg)


def check_certificate(cert_path: str, model_path: str | None = None, spec_path: str | None = None) -> CheckReport:
    try:
        doc = json.load(open(cert_path))
    except FileNotFoundError:
        raise SpecError(f"{cert_path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{cert_path}: not a JSON certificate ({e})") from e
    if not isinstance(doc, dict) or "verdict" not in doc or "model" not in doc or "spec" not in doc:
        raise SpecError(f"{cert_path}: not a certkit certificate (missing verdict/model/spec)")
    rep = CheckReport()
    mpath = model_path or doc["model"]["path"]
    spath = spec_path or doc["spec"]["path"]
    model = load_model(mpath)
    spec = parse_vnnlib(spath, model.n_inputs, model.n_outputs)
    for what, path, got, want in (("model", mpath, model.sha256, doc["model"].get("sha256")),
                                  ("spec", spath, spec.sha256, doc["spec"].get("sha256"))):
        (rep.good if got == want else rep.fail)(f"{what} sha256 {'matches' if got == want else 'differs'}: {path}")
    verdict = doc["verdict"]
    if verdict == "sat":
        w = doc.get("witness")
        if not w:
            rep.fail("sat certificate without a witness")
            return rep
        prop = spec.properties[w["property"]]
        x = np.asarray(w["x"], dtype=np.float32)
        inside = bool(((x.astype(np.float64) >= prop.lower) & (x.astype(np.float64) <= prop.upper)).all())
        (rep.good if inside else rep.fail)("witness inside its input box" if inside else "witness outside its box")
        y = model.runner(x[None])[0]
        k = satisfied_disjunct(prop, y)
        (rep.good if k >= 0 else rep.fail)(
            f"onnxruntime output satisfies disjunct {k}" if k >= 0 else "onnxruntime output satisfies no disjunct")
    elif verdict == "unsat":
        for entry, prop in zip(doc.get("properties", []), spec.properties):
            stage = entry.get("stage", "")
            if entry.get("status") != "verified":
                rep.fail(f"region {entry.get('index')} is not marked verified")
                continue
            if stage not in BACKENDS:
                rep.complete = False
                rep.lines.append(f"skip region {entry['index']}: decided by '{stage}', not re-derived "
                                 "(re-run certkit certify to reproduce)")
                continue
            _, _, ruled = prove_rows(model, prop, stage)
            (rep.good if ruled.all() else rep.fail)(
                f"region {entry['index']}: {stage} bounds re-derived, "
                f"{int(ruled.sum())}/{len(ruled)} disjuncts ruled out")
    else:
        rep.lines.append(f"verdict '{verdict}': nothing to re-check")
    return rep
