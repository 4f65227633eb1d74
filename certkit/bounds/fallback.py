"""Bounds within the memory budget: a bound procedure that does not fit degrades, it never dies.

Each bound procedure of :data:`certkit.bounds.backends.BACKENDS` has a **ladder** of cheaper
procedures (:data:`LADDER`): when it does not fit in the budget (:mod:`certkit.bounds.memory`: the
estimate before an allocation raises ``MemoryExceeded``; a failed allocation raises
``MemoryError`` or torch's out-of-memory ``RuntimeError``), the next one runs:

* ``alpha`` (which first drops to optimising the output rows' slopes only, on fewer rows per pass:
  :func:`certkit.bounds.alpha.plan_alpha`) -> ``deeppoly+interval``;
* ``deeppoly``, ``deeppoly+interval``, ``deeppoly+reference``, ``forward`` -> ``crown-output``: back-substitution of the output rows only,
  over interval bounds of every intermediate node (no intermediate back-substitution at all);
* -> ``interval``: interval bound propagation, whose memory is that of one forward pass.

With ``on_timeout`` (``certkit bounds --timeout``) the ladder also serves the time budget: the
procedure asked for gets :data:`TIME_SHARE` of it, the cheaper ones what is left, and interval
bounds (one forward pass) always complete.

Every procedure on a ladder gives sound bounds (looser ones further down), so a verdict stays
sound; :class:`Method` records which procedure produced the bounds and why, for the certificate
(each row's stage is the procedure that bounded it, which ``certkit check`` re-runs) and the one
line the command prints.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, is_dataclass, replace
from typing import Callable

import torch

from ..errors import VerificationTimeout
from ..graph.graph import Graph
from ..spec.sets import InputSet
from .backends import BACKENDS, deeppoly_interval_lower
from .memory import MemoryExceeded, describe

Tensor = torch.Tensor

#: What each bound procedure falls back to, in order, when it does not fit in the memory budget.
LADDER: dict[str, tuple[str, ...]] = {
    "alpha": ("deeppoly+interval", "crown-output", "interval"),
    "deeppoly": ("crown-output", "interval"),
    "forward": ("crown-output", "interval"),
    "deeppoly+interval": ("crown-output", "interval"),
    "deeppoly+reference": ("crown-output", "interval"),
    "crown-output": ("interval",),
    "interval": (),
}
#: With ``on_timeout``: the share of the time budget the procedure asked for gets.
TIME_SHARE = 0.85


@dataclass(frozen=True)
class Method:
    """Which bound procedure produced a set of bounds: ``asked`` was requested, ``used`` ran;
    ``reason`` (empty when the procedure ran as asked) says what the memory budget changed."""

    asked: str
    used: str
    reason: str = ""

    @property
    def degraded(self) -> bool:
        return bool(self.reason)

    def note(self) -> str:
        """One line for the user."""
        if self.used == self.asked:
            return f"{self.asked} bounds reduced to fit the memory budget: {self.reason}"
        return f"{self.asked} bounds degraded to {self.used} ({BACKENDS[self.used].summary}): {self.reason}"

    def as_dict(self) -> dict:
        return {"stage": self.asked, "method": self.used, "reason": self.reason}


def allocation_failed(e: BaseException) -> bool:
    """Is ``e`` a failed allocation (torch's out-of-memory errors are RuntimeErrors)?"""
    oom = getattr(torch, "OutOfMemoryError", None)
    if isinstance(e, MemoryError) or (oom is not None and isinstance(e, oom)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                            or "out of memory" in text.lower())


def _time_for(name: str, first: bool, budget):
    """The budget of one procedure of a ladder run with ``on_timeout`` (module docstring)."""
    if budget is None or getattr(budget, "deadline", None) is None:
        return budget
    if name == "interval" and is_dataclass(budget):
        return replace(budget, deadline=None)
    return budget.share(TIME_SHARE) if first else budget


def lower_within_memory(stage: str, graph: Graph, inputs: InputSet, C: Tensor,
                        budget=None, on_timeout: bool = False, keep: dict | None = None,
                        enough: Callable[[Tensor], bool] | None = None) -> tuple[Tensor, Method]:
    """Lower bounds of ``C y`` (b, s) with the bound procedure ``stage``, or the first procedure of
    its :data:`LADDER` that fits in the budget's memory; and the :class:`Method` that produced them.
    The time budget running out raises ``BudgetExpired``, unless ``on_timeout``: then the ladder
    goes on with what is left of it (module docstring). ``keep``: receives alpha-CROWN's final state
    (``state``, ``iterations``: :func:`certkit.bounds.alpha.alpha_lower`'s report) when ``stage`` is
    ``alpha`` and ran as asked, DeepPoly's (``state``) when it is ``deeppoly+interval``; ``enough``:
    alpha-CROWN's early stop (:func:`certkit.bounds.alpha.alpha_lower`)."""
    from .alpha import alpha_lower

    reasons: dict[str, list[str]] = {}  # reason -> the procedures it stopped
    t0 = time.monotonic()
    for k, name in enumerate((stage, *LADDER.get(stage, ()))):
        report: dict = {}
        sub = _time_for(name, k == 0, budget) if on_timeout else budget
        try:
            if name == "alpha":
                low = alpha_lower(graph, inputs, C, budget=sub, report=report, enough=enough)
            elif name == "deeppoly+interval":
                low = deeppoly_interval_lower(graph, inputs, C, budget=sub, keep=report)
            else:
                low = BACKENDS[name].lower(graph, inputs, C, budget=sub)
        except VerificationTimeout:
            if not on_timeout:
                raise
            label = getattr(budget, "label", None)
            of = f" of the {label:g} s time budget" if label else ""
            reasons.setdefault(f"out of time after {time.monotonic() - t0:.1f} s{of}", []).append(name)
            continue
        except (MemoryError, RuntimeError) as e:
            if not allocation_failed(e):
                raise
            why = str(e) if isinstance(e, MemoryExceeded) else f"allocation failed ({type(e).__name__}); {describe(budget)}"
            reasons.setdefault(why, []).append(name)
            del e
            gc.collect()
            continue
        if keep is not None and name == stage and name in ("alpha", "deeppoly+interval"):
            keep.update(report)
        text = [f"{', '.join(names)}: {why}" for why, names in reasons.items()]
        return low, Method(stage, name, "; ".join(text + ([report["reason"]] if "reason" in report else [])))
    text = [f"{', '.join(names)}: {why}" for why, names in reasons.items()]
    raise MemoryExceeded("; ".join(text) or f"no bound procedure fits; {describe(budget)}")
