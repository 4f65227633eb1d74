"""The normalised specification: input sets and output DNF (DESIGN.md section 1).

A VNN-LIB file describes the *unsafe* set. certkit normalises it to a list of
:class:`Property` objects, one per input box, each carrying a disjunction of
output polytopes ``C y <= d``. The property holds (``unsat``) when no input of any
box reaches any of its polytopes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Disjunct:
    """One conjunction of output atoms: the polytope ``{y : C y <= d}``.

    ``C`` has shape (m, n_outputs), ``d`` shape (m,), both float64.
    """

    C: np.ndarray
    d: np.ndarray


@dataclass(frozen=True, eq=False)
class Property:
    """An input box and the unsafe output set reachable from it (a DNF over outputs).

    ``lower``/``upper`` have shape (n_inputs,) in the flat C order of the model's
    input tensor. ``disjuncts`` is non-empty; the unsafe set is the union of the
    disjuncts' polytopes.
    """

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: tuple[Disjunct, ...]

    @property
    def n_inputs(self) -> int:
        return int(self.lower.shape[0])

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All atoms as one matrix: ``(C, d, owner)`` with ``owner[i]`` the disjunct of row i."""
        C = np.concatenate([dj.C for dj in self.disjuncts], axis=0)
        d = np.concatenate([dj.d for dj in self.disjuncts], axis=0)
        owner = np.concatenate([np.full(len(dj.d), k) for k, dj in enumerate(self.disjuncts)])
        return C, d, owner


@dataclass(frozen=True, eq=False)
class Spec:
    """A whole specification: the disjunction of its properties' unsafe sets."""

    properties: tuple[Property, ...]
    n_inputs: int
    n_outputs: int
    path: str = ""
    sha256: str = field(default="")

    def __repr__(self) -> str:
        n_dj = sum(len(p.disjuncts) for p in self.properties)
        return (f"<Spec {self.path or '<spec>'}: {len(self.properties)} input box(es), {self.n_inputs} inputs -> "
                f"{self.n_outputs} outputs, {n_dj} disjunct(s)>")
