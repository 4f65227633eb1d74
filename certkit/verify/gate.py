"""The verdict gate: the one place where an input region becomes ``verified`` and a spec ``unsat``
(DESIGN.md sections 1-3 and 9).

Every procedure that can prove something -- the bound backends, input splitting, ReLU splitting,
the MILP, Lipschitz margins in data-set mode -- hands the gate a :class:`Proof`; the gate admits
it only when

* every number it rests on is finite (a NaN or infinite bound -- overflow, an inf weight --
  never closes anything: ``nan > 0`` is False, and every comparison here is written that way);
* each deciding row's lower bound on ``C y - d`` exceeds the float64 error of evaluating the row
  on the model's output (:func:`certkit.bounds.fperror.row_margin`), or, in input splitting, a
  weighted sum of a disjunct's rows less their errors is bounded above zero (some row of it is then
  violated at every point; :mod:`certkit.bounds.conjunction`); the bounds themselves already
  hold for the model as onnxruntime computes it (:mod:`certkit.bounds.fperror`);
* a branch-and-bound proof is a well-formed tree whose every leaf closed
  (:class:`certkit.verify.proof.ProofTree`), one tree per disjunct group it claims;
* a MILP proof has, per disjunct, a bound above the solver tolerance it had to beat.

The admitted proof is recorded on the region's result, and the certificate carries it so that
``certkit check`` can re-derive it. :func:`verdict` is the only function that says ``unsat``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .proof import ProofTree

Tensor = torch.Tensor


def rows_proven(lower, margin):
    """Elementwise: the row's lower bound is finite and above its margin (NaN never passes)."""
    if isinstance(lower, Tensor):
        return torch.isfinite(lower) & torch.isfinite(margin) & (lower > margin)
    lower, margin = np.asarray(lower, np.float64), np.asarray(margin, np.float64)
    return np.isfinite(lower) & np.isfinite(margin) & (lower > margin)


def disjunct_values(lower: Tensor, margin: Tensor, owner: Tensor, n_disjuncts: int,
                    weighted: Tensor | None = None) -> Tensor:
    """Per domain and disjunct (b, K): the best row's ``lower - margin``, or ``weighted`` (b, K) where
    higher -- a lower bound of a weighted sum of the disjunct's ``C_i y - d_i - margin_i`` (weights
    >= 0, not all zero), rounding included (:func:`certkit.bounds.conjunction.charge`): where it is > 0,
    some row of the disjunct exceeds its margin at every point. ``-inf`` where not a finite number."""
    slack = lower - margin
    slack = torch.where(torch.isfinite(slack), slack, torch.full_like(slack, float("-inf")))
    b = slack.shape[0]
    per = torch.full((b, n_disjuncts), float("-inf"), dtype=slack.dtype)
    per = per.scatter_reduce(1, owner.expand(b, -1), slack, "amax")
    if weighted is not None:
        per = torch.maximum(per, torch.where(torch.isfinite(weighted), weighted, torch.full_like(weighted, float("-inf"))))
    return per


def domain_value(lower: Tensor, margin: Tensor, owner: Tensor, n_disjuncts: int) -> Tensor:
    """Per domain (b,): min over disjuncts of the best row's ``lower - margin`` (:func:`disjunct_values`);
    ``-inf`` where that is not a finite number. A domain is closed exactly when its value is > 0."""
    return disjunct_values(lower, margin, owner, n_disjuncts).min(dim=1).values


def closed(value: Tensor) -> Tensor:
    """Domains whose value closes them (finite and > 0)."""
    return torch.isfinite(value) & (value > 0)


@dataclass
class Proof:
    """What backs a ``verified`` region. ``method``: bounds | input_split | relu_split | milp |
    lipschitz. ``lower``/``margin``/``owner``/``row_stage``: the rows (bound methods; also the best
    rows of the earlier stages for the others); ``trees``: branch-and-bound proofs, ``groups[k]``
    the disjuncts tree ``k`` covers; ``milp``: per-disjunct bound, tolerance and method."""

    method: str
    stage: str
    lower: np.ndarray | None = None
    margin: np.ndarray | None = None
    owner: np.ndarray | None = None
    row_stage: list[str] | None = None
    trees: list[ProofTree] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)
    milp: dict | None = None


def _rows_cover(p: Proof, n_disjuncts: int) -> np.ndarray:
    ruled = np.zeros(n_disjuncts, dtype=bool)
    if p.lower is None or p.owner is None or len(p.owner) == 0:
        return ruled
    np.logical_or.at(ruled, np.asarray(p.owner), rows_proven(p.lower, p.margin))
    return ruled


def check_proof(p: Proof, n_disjuncts: int) -> tuple[bool, str]:
    """Is ``p`` a complete proof for a region with ``n_disjuncts`` disjuncts? ``(ok, reason)``."""
    if n_disjuncts == 0:
        return False, "no disjunct"
    if p.method in ("bounds", "lipschitz"):
        ruled = _rows_cover(p, n_disjuncts)
        return bool(ruled.all()), "" if ruled.all() else f"{int((~ruled).sum())} disjunct(s) without a proven row"
    if p.method in ("input_split", "relu_split"):
        covered = np.zeros(n_disjuncts, dtype=bool)
        if len(p.trees) != len(p.groups):
            return False, "trees and disjunct groups do not match"
        for t, grp in zip(p.trees, p.groups):
            if not t.well_formed():
                return False, "a proof tree is not well formed"
            vals = t.leaf_values
            kinds = np.asarray(t.codes[t.codes[:, 0] < 0, 0])
            empty = np.asarray([t.kinds[-1 - k] == "empty" for k in kinds], dtype=bool)
            ok = np.where(empty, True, np.isfinite(vals) & (vals > 0))
            if not ok.all():
                return False, f"{int((~ok).sum())} leaf/leaves of a proof tree not closed"
            covered[np.asarray(grp, dtype=np.int64)] = True
        covered |= _rows_cover(p, n_disjuncts)
        return bool(covered.all()), "" if covered.all() else "a disjunct without a proof tree"
    if p.method == "milp":
        m = p.milp or {}
        bounds, tols, methods = (np.asarray(m.get(k, []), dtype=object) for k in ("bounds", "tolerances", "methods"))
        if len(methods) != n_disjuncts:
            return False, "MILP proof does not cover every disjunct"
        for b, t, how in zip(bounds, tols, methods):
            if how not in ("deeppoly", "lp", "milp"):
                return False, f"a disjunct settled by '{how}'"
            b, t = float(b), float(t)
            if not (np.isfinite(b) and np.isfinite(t) and b > t):
                return False, "a MILP bound is not above its tolerance"
        return True, ""
    return False, f"unknown proof method '{p.method}'"


def admit(result, proof: Proof, n_disjuncts: int) -> bool:
    """Mark ``result`` (a region's result, with ``status``, ``stage`` and ``proof``) verified when
    ``proof`` is complete; otherwise leave it as it is. Returns whether it was admitted."""
    ok, _ = check_proof(proof, n_disjuncts)
    if ok:
        result.status, result.stage, result.proof = "verified", proof.stage, proof
    return ok


def verdict(results, n_disjuncts: list[int]) -> bool:
    """True (``unsat``) exactly when every region's recorded proof passes :func:`check_proof`."""
    if not results:
        return False
    return all(r.status == "verified" and getattr(r, "proof", None) is not None
               and check_proof(r.proof, k)[0] for r, k in zip(results, n_disjuncts))
