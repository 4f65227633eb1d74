"""The contract every solver backend fulfils, written once (one subclass per backend).

A backend has a ``name`` (what ``--solver`` and :func:`certkit.solvers.solve_mip` take), a
``title`` for messages, the Python ``module`` it needs (imported lazily, only when it
solves), the ``tolerances`` it effectively works with, and a ``STATUS_MAP`` from its native
statuses to the status words of :data:`certkit.solvers.problem.STATUSES` -- data, not a
ladder of comparisons. Solver problems (package missing, licence refused) are raised as
:class:`certkit.errors.BackendError` with a one-line message; the native status and message
are kept in the result.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import BackendError
from .problem import MipProblem, MipResult, SolutionCallback


@dataclass
class StopReason:
    """Why a solve was interrupted from a callback: ``""`` (not by us), ``bound_reached``
    (the dual bound passed ``stop_bound``) or ``stopped`` (``on_solution`` asked)."""

    reason: str = ""


class Backend:
    """One solver. Subclasses set the class attributes and implement :meth:`solve_mip`."""

    #: the name callers use
    name: str = ""
    #: the solver's proper name, for messages
    title: str = ""
    #: the Python package it needs
    module: str = ""
    #: the one-line message when the package is missing
    missing: str = ""
    #: ``(dual_tol, primal_tol)`` it works with in branch and bound: the error of a reduced
    #: cost / row multiplier sign, and the violation of a row or of integrality it accepts
    #: (:mod:`certkit.verify.milp` turns them into the soundness margin).
    tolerances: tuple[float, float] = (0.0, 0.0)
    #: native status -> status word
    STATUS_MAP: dict = {}

    def available(self) -> bool:
        """True when the solver's package imports (says nothing about licences)."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True

    def _import(self):
        try:
            return importlib.import_module(self.module)
        except ImportError as e:
            raise BackendError(self.missing) from e

    def solve_mip(self, problem: MipProblem, time_limit: float | None, threads: int,
                  stop_bound: float | None, on_solution: SolutionCallback | None, cutoff: float | None,
                  verbose: bool, options: dict | None) -> MipResult:
        """Minimise ``problem`` (see :func:`certkit.solvers.solve_mip` for the arguments)."""
        raise NotImplementedError

    def lp_session(self, problem: MipProblem):
        """A warm-startable LP session over ``problem`` with integrality dropped
        (see :class:`certkit.solvers.highs.HighsLpSession` for the interface)."""
        raise BackendError(f"solver '{self.name}' offers no LP session (use highs)")
