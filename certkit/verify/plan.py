"""What each ``--backend`` runs: the plan table, as data (DESIGN.md sections 2-3).

A plan is the sequence of procedures a backend runs on a query, cheapest first: bound procedures
(``certkit.bounds.backends``), whose proved rows accumulate, then complete procedures
(``certkit.verify.procedures``), which may also find counterexamples. This module imports nothing
heavy, so that the command line can offer the choices without loading torch.
"""
from __future__ import annotations

#: The bound procedures, in the order ``auto`` runs them.
BOUND_PROCEDURES = ("interval", "forward", "deeppoly", "deeppoly+interval", "deeppoly+reference", "alpha")
#: The complete procedures (branch and bound, MILP).
COMPLETE_PROCEDURES = ("bab", "milp")

#: backend -> procedures, in order.
PLANS: dict[str, tuple[str, ...]] = {
    "interval": ("interval",),
    "deeppoly": ("deeppoly",),
    "forward": ("forward",),
    "alpha": ("deeppoly+interval", "alpha"),
    "bab": ("deeppoly+interval", "bab"),
    "milp": ("deeppoly+interval", "milp"),
    # deeppoly+reference is not in auto: deeppoly+interval intersects every refined node with the interval
    # image of its inputs' bounds too (BoundState.refresh), so it gives the same bounds
    "auto": ("interval", "forward", "deeppoly", "deeppoly+interval", "alpha", "bab", "milp"),
}

#: The backends ``certkit bounds`` runs: the plans made of bound procedures only.
BOUNDS_BACKENDS: tuple[str, ...] = tuple(b for b, plan in PLANS.items()
                                         if all(p in BOUND_PROCEDURES for p in plan) or b == "auto")
