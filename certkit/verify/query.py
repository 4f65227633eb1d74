"""The three types every procedure speaks: :class:`Query`, :class:`Budget`, :class:`Outcome`.

A **query** is one question (DESIGN.md section 1): can an input of the region reach the unsafe
output set ``OR_k AND_{i: owner_i = k} (C_i y <= d_i)``? The region is a box (one VNN-LIB input
box) or an L_p ball clipped to a domain box (a data-set sample); a VNN-LIB spec with several boxes
is several queries. :meth:`Query.confirm` is the single counterexample check of certkit: points
rounded to the model's precision inside the region, run by onnxruntime, an unsafe output with zero
tolerance.

A **budget** is one deadline on ``time.monotonic()``: every procedure and every inner loop receives
it, asks :meth:`Budget.expired` or calls :meth:`Budget.check` (which raises :class:`BudgetExpired`,
caught where the procedure was started), and hands a :meth:`Budget.share` of it to sub-steps.

An **outcome** is what a procedure established: proved (with the proof the verdict gate admits),
falsified (with the confirmed witness), open, or timeout.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ..errors import VerificationTimeout
from ..graph.graph import Graph
from ..spec.sets import InputSet
from ..spec.spec import Disjunct, Property
from .witness import Witness, first_witness, inside_rounded, to_float32_inside

Tensor = torch.Tensor


# --------------------------------------------------------------------------- budget


#: Raised by :meth:`Budget.check` inside a procedure whose budget ran out (caught where the
#: procedure was started; never reaches the user).
BudgetExpired = VerificationTimeout


@dataclass(frozen=True)
class Budget:
    """One deadline (``time.monotonic()``; None: unlimited). ``label`` is the user's ``--timeout``
    and ``startup`` the seconds spent before the budget started (imports, loading), for the
    message when it runs out. ``memory``: the limit on resident memory in bytes (``--memory-limit``;
    None: the default of :mod:`certkit.bounds.memory`), which every sub-budget keeps and the bound
    computations size their work by."""

    deadline: float | None = None
    label: float | None = None
    startup: float = 0.0
    memory: int | None = None
    #: a call that says the work is no longer wanted (a cluster task whose search was decided
    #: elsewhere: :mod:`certkit.verify.distributed`); the budget then counts as expired
    stop: Callable[[], bool] | None = None

    @staticmethod
    def of(seconds: float | None, label: float | None = None, startup: float = 0.0,
           memory: int | None = None) -> "Budget":
        """A budget of ``seconds`` from now (None: unlimited)."""
        return Budget(None if seconds is None else time.monotonic() + max(seconds, 0.0),
                      seconds if label is None else label, startup, memory)

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return (self.deadline is not None and time.monotonic() >= self.deadline) or \
            (self.stop is not None and self.stop())

    def check(self) -> None:
        """Raise :class:`BudgetExpired` when the budget has run out (for inner loops)."""
        if self.expired():
            raise BudgetExpired(self.message())

    def share(self, fraction: float) -> "Budget":
        """A sub-budget ending after ``fraction`` of the time that remains (never after this one)."""
        if self.deadline is None:
            return self
        return replace(self, deadline=time.monotonic() + fraction * self.remaining())

    def cap(self, seconds: float) -> "Budget":
        """This budget, ending at the latest ``seconds`` from now."""
        end = time.monotonic() + seconds
        return replace(self, deadline=end if self.deadline is None else min(end, self.deadline))

    def before_end(self, seconds: float) -> "Budget":
        """This budget ending ``seconds`` earlier (for solvers that overshoot their own stop)."""
        return self if self.deadline is None else replace(self, deadline=self.deadline - seconds)

    def message(self) -> str:
        if self.label is None:
            return "time budget used up"
        extra = f" ({self.startup:.1f} s of it went to start-up)" if self.startup >= 0.05 else ""
        return f"time budget of {self.label:g} s used up{extra}"


UNLIMITED = Budget()


# --------------------------------------------------------------------------- outcome


class Status(str, enum.Enum):
    PROVED = "proved"
    FALSIFIED = "falsified"
    OPEN = "open"
    TIMEOUT = "timeout"


@dataclass
class Outcome:
    """What a procedure established about a query. ``proof``: what the gate admits (proved), or
    the best rows so far (bound procedures); ``witness``: a confirmed counterexample."""

    status: Status
    proof: object | None = None
    witness: Witness | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- query


@dataclass(frozen=True, eq=False)
class Query:
    """One question about one input region. ``region`` is an :class:`InputSet` of batch 1 as the
    user states it (a box, or an L_p ball with its domain box); ``C, d, owner`` the unsafe set's
    rows and the disjunct of each; ``index`` names the query in witnesses and certificates."""

    graph: Graph
    region: InputSet
    C: np.ndarray
    d: np.ndarray
    owner: np.ndarray
    n_disjuncts: int
    runner: object | None = None
    index: int = 0
    label: int | None = None  # the sample's label (data-set queries)

    # -- construction -----------------------------------------------------------
    @staticmethod
    def of_property(graph: Graph, prop: Property, index: int, runner=None) -> "Query":
        C, d, owner = prop.stacked()
        return Query(graph, InputSet.box(prop.lower, prop.upper), C, d, owner, len(prop.disjuncts), runner, index)

    @staticmethod
    def robustness(graph: Graph, x0: np.ndarray, label: int, eps: float, p: float,
                   domain: tuple[float, float] | None, runner=None, index: int = 0) -> "Query":
        """The unsafe set of a sample: ``OR_{j != label} (y_j - y_label >= 0)``, one disjunct per j."""
        n_out = graph.n_outputs
        others = [j for j in range(n_out) if j != label]
        C = np.zeros((len(others), n_out))
        C[np.arange(len(others)), label] = 1.0
        C[np.arange(len(others)), others] = -1.0
        region = InputSet.ball(np.asarray(x0, np.float64)[None], eps, p, domain)
        return Query(graph, region, C, np.zeros(len(others)), np.arange(len(others)), len(others), runner, index,
                     label)

    # -- views ------------------------------------------------------------------
    @property
    def lower(self) -> np.ndarray:
        return self.region.lower.numpy()[0]

    @property
    def upper(self) -> np.ndarray:
        return self.region.upper.numpy()[0]

    @property
    def is_box(self) -> bool:
        return self.region.center is None

    def property(self) -> Property:
        """The query's enclosing box and disjuncts as a :class:`Property` (for a ball: its box)."""
        djs = tuple(Disjunct(self.C[self.owner == k], self.d[self.owner == k]) for k in range(self.n_disjuncts))
        return Property(self.lower, self.upper, djs)

    def bound_set(self) -> InputSet:
        """The region as the model sees it: rounded outward to its precision
        (:func:`certkit.bounds.fperror.round_input_set`)."""
        from ..bounds.fperror import precision_of, round_input_set

        return round_input_set(self.region, precision_of(self.graph))

    # -- the counterexample check ------------------------------------------------
    def inside(self, x: np.ndarray) -> np.ndarray:
        """(m,) exact membership of points (m, n) in the region (float64)."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        S = self.region
        ok = inside_rounded(x, S.lower.numpy()[0], S.upper.numpy()[0], getattr(self.runner, "dtype", np.float32))
        if S.center is not None:
            ok &= np.linalg.norm(x - S.center.numpy(), ord=S.p, axis=1) <= float(S.eps[0])
        return ok

    def confirm(self, candidates) -> Witness | None:
        """The single counterexample check: each candidate (m, n) is rounded to the model's precision
        inside the region's box (and must lie in the region), run with onnxruntime, and accepted
        when its output lies in a disjunct with zero tolerance, in the batch and run alone
        (:func:`~certkit.verify.witness.first_witness`). The first accepted one, or None."""
        if self.runner is None:
            return None
        cand = np.atleast_2d(np.asarray(candidates.detach().numpy() if isinstance(candidates, Tensor)
                                        else candidates, np.float64))
        if cand.size == 0:
            return None
        dtype = getattr(self.runner, "dtype", np.float32)
        x = to_float32_inside(cand, self.lower, self.upper, dtype)
        keep = self.inside(x)
        x = x[keep]
        if len(x) == 0:
            return None
        return first_witness(self.runner, self.property(), self.index, x, self.runner(x))
