"""The sparsify report: a stdout table per layer and a JSON document."""
from __future__ import annotations

import dataclasses
import math

from .core import SparsifyResult


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def format_report(r: SparsifyResult) -> str:
    lines = [f"{'layer':<7}{'kind':<6}{'method':<13}{'params':>8}{'nnz before':>11}{'nnz after':>10}"
             f"{'LPs':>5}{'rows':>9}{'cols':>9}{'build s':>8}{'solve s':>8}{'wall s':>8}{'val %':>7}{'test %':>7}"]
    for L in r.layers:
        lines.append(f"{L.number:<7}{L.kind:<6}{L.method:<13}{L.params:>8}{L.nnz_before:>11}{L.nnz_after:>10}"
                     f"{L.n_lps:>5}{L.rows:>9}{L.cols:>9}{L.t_build:>8.2f}{L.t_solve:>8.2f}{L.t_wall:>8.2f}"
                     f"{_pct(L.acc_val):>7}{_pct(L.acc_test):>7}")
        for f in L.failures:
            lines.append(f"       failed: {f}")
        for f in L.notes:
            lines.append(f"       note: {f}")
    before = sum(L.nnz_before for L in r.layers)
    after = sum(L.nnz_after for L in r.layers)
    lines.append(f"non-zeros in the chosen layers: {before} -> {after} ({100 * after / max(before, 1):.1f}%)")
    c = r.check
    kept = "kept" if c.ok else "NOT kept"
    lines.append(f"validation check ({c.samples} constrained samples): {kept}: predictions "
                 f"{c.predictions_kept}/{c.samples}, ReLU states changed {c.state_violations}/{c.states}"
                 + (f", margin >= min({c.margin_required:g}, original) violated on {c.margin_violations}"
                    if c.margin_required is not None else "")
                 + f", smallest logit margin {c.min_margin:.4g}")
    n_same, n_all = r.same_predictions
    lines.append(f"validation predictions as the original's: {n_same}/{n_all}"
                 + (" (the others were misclassified and are not constrained; --all-samples constrains them)"
                    if n_same < n_all and c.samples < n_all else ""))
    acc = f"accuracy: validation {_pct(r.acc_val[0])}% -> {_pct(r.acc_val[1])}%"
    if r.acc_test is not None:
        acc += f", test {_pct(r.acc_test[0])}% -> {_pct(r.acc_test[1])}%"
    lines.append(acc)
    t_solve = sum(L.t_solve for L in r.layers)
    t_build = sum(L.t_build for L in r.layers)
    t_wall = sum(L.t_wall for L in r.layers)
    lines.append(f"time: {r.time:.2f} s in all; layers {t_wall:.2f} s wall (LP solves {t_solve:.2f} s summed over "
                 f"processes, building {t_build:.2f} s), checks and accuracy {max(0.0, r.time - t_wall):.2f} s")
    return "\n".join(lines)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if not k.startswith("_")}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def report_json(r: SparsifyResult, extra: dict) -> dict:
    doc = {"layers": [dataclasses.asdict(L) for L in r.layers],
           "check": dict(dataclasses.asdict(r.check), ok=r.check.ok),
           "accuracy": {"validation": list(r.acc_val), "test": list(r.acc_test) if r.acc_test else None},
           "same_predictions": list(r.same_predictions),
           "nnz_before": sum(L.nnz_before for L in r.layers), "nnz_after": sum(L.nnz_after for L in r.layers),
           "time": r.time}
    doc.update(extra)
    return _clean(doc)
