"""The leaves of ReLU splitting decided by linear programming (DESIGN.md section 3).

*Every ReLU fixed* (:func:`lp_leaves`):

On such a domain the net is affine, so ``min_x max_i (C_i y - d_i)`` over the domain is a linear
program. Its minimiser is tried as a counterexample (:meth:`certkit.verify.query.Query.confirm`);
its duals become the beta multipliers of a bound that is then re-derived soundly by the search's own
bounding (LP duality: with exact multipliers the beta-CROWN bound equals the LP minimum), and an
empty domain is certified by a phase-1 combination of its split constraints, re-derived the same way.
The LP is only a source of multipliers and candidates: nothing it says is trusted.

*A domain that stops improving* (:func:`milp_leaf`; issue 13's "MILP on hard leaves"): when
splitting a domain no longer raises its bound, the exact MILP of the net on that domain -- its split
constraints as the bounds of the split pre-activations, every other intermediate bound the domain's
own (already computed, clamped by the splits), one binary per unstable ReLU left unsplit -- decides
it (:func:`certkit.verify.milp.solve_disjunct`, the LP relaxation first). It closes the domain on the
same tolerance argument as the ``milp`` backend (the solver's dual bound above ``tau``), and a
MILP solution is a counterexample only when onnxruntime confirms it. ``certkit check`` solves
such a leaf's MILP again.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..bounds.deeppoly import BoundState
from .gate import closed
from .witness import Witness


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to float32-representable values (kept float64): multipliers stored in a proof
    are then exactly the ones the bound was computed with."""
    return t.float().double()


def lp_leaves(tree, dom) -> tuple[str, Witness | None]:
    """Decide domains whose ReLUs are all fixed (stable or split): the net is affine on each,
    so ``min_x max_i (C_i y - d_i)`` over the domain is an LP. Its minimiser is tried as a
    counterexample; its duals become the beta multipliers of a sound bound (LP duality:
    with exact multipliers the beta-CROWN bound equals the LP minimum)."""
    from ..solvers import solve_lp, solver_available

    if not solver_available("highs"):
        return "unknown", None
    for k in range(len(dom)):
        one = dom.map(lambda t: t[k:k + 1])
        S = tree._inputs(1)
        with torch.no_grad():
            st = BoundState(tree.graph, S, intersect=True, bounds=one.bounds_list(len(tree.graph.nodes)),
                            refined=set(range(len(tree.graph.nodes))), splits=one.splits)
            A_out, c_out = st.backsub(tree.graph.output, tree.C[None])  # exact on the domain
            rows, rhs, where = [], [], []
            for r, j in zip(tree.relus, tree.pre):
                idx = torch.nonzero(one.splits[r][0]).flatten()
                if idx.numel() == 0:
                    continue
                eye = torch.zeros(1, idx.numel(), tree.graph.size(j), dtype=torch.float64)
                eye[0, torch.arange(idx.numel()), idx] = 1.0
                A_z, c_z = st.backsub(j, eye)
                sg = one.splits[r][0, idx].to(torch.float64)
                rows.append(-sg[:, None] * A_z[0])  # -s z <= 0
                rhs.append(sg * c_z[0])
                where.append((r, idx))
        n = tree.lo.shape[1]
        s = tree.C.shape[0]
        A_ub = [np.hstack([A_out[0].numpy(), -np.ones((s, 1))])]
        b_ub = [(tree.d - c_out[0]).numpy()]
        for a, c in zip(rows, rhs):
            A_ub.append(np.hstack([a.numpy(), np.zeros((a.shape[0], 1))]))
            b_ub.append(c.numpy())
        cost = np.zeros(n + 1)
        cost[-1] = 1.0
        box = list(zip(tree.lo[0].tolist(), tree.hi[0].tolist())) + [(None, None)]
        tree.budget.check()
        res = solve_lp(cost, np.vstack(A_ub), np.concatenate(b_ub), box, time_limit=tree.budget.remaining())
        if res.status == 2 and rows:  # empty domain: certify it with a Farkas-like combination
            free_min = float((S.concretize_lower(A_out, c_out) - tree.d).min())  # no multipliers
            duals = _emptiness_multipliers(rows, rhs, box, free_min)
            if duals is None:
                return "unknown", None
        elif res.status != 0:
            return "unknown", None  # numerical trouble
        else:
            w = tree._try_points(torch.as_tensor(res.x[:n])[None])
            if w is not None:
                return "falsified", w
            if s != 1:
                return "unknown", None
            duals = -np.asarray(res.marginals)[s:]
        off = 0
        for r, idx in where:
            one.beta[r] = torch.zeros_like(one.beta[r])
            one.beta[r][0, 0, idx] = torch.as_tensor(np.maximum(duals[off:off + idx.numel()], 0.0))
            off += idx.numel()
        floor = one.value.clone()
        one.beta = {r: _f32(b) for r, b in one.beta.items()}
        one, _ = tree.bound(one, None, optimise=False)
        one.value = torch.maximum(one.value, floor)
        if not bool(closed(one.value)[0]):
            return "unknown", None
        tree.close(one, "lp")
    return "verified", None

def _emptiness_multipliers(rows, rhs, box, value: float) -> np.ndarray | None:
    """Multipliers showing the split constraints ``-s z(x) <= 0`` have no solution in the box:
    ``min sigma`` s.t. ``-s z(x) <= sigma`` has ``sigma* > 0`` and its duals ``y`` (>= 0, sum 1)
    give ``sum y (-s z(x)) >= sigma*`` on the box; scaled so that the beta bound (re-derived
    soundly afterwards) exceeds the domain's current deficit ``value``."""
    A = np.vstack([r.numpy() for r in rows])
    b = np.concatenate([c.numpy() for c in rhs])
    cost = np.zeros(A.shape[1] + 1)
    cost[-1] = 1.0
    from ..solvers import solve_lp

    res = solve_lp(cost, np.hstack([A, -np.ones((A.shape[0], 1))]), b, box)
    if res.status != 0 or not res.objective > 0:
        return None
    y = np.maximum(-np.asarray(res.marginals), 0.0)
    return y * 2.0 * (abs(value) + 1.0) / res.objective


def milp_leaf(tree, dom, seconds: float, solver: str = "auto") -> tuple[str, Witness | None, float]:
    """Decide one domain (batch 1) of a piecewise-linear net by its MILP, within ``seconds``:
    ``("verified", None, value)`` (the dual bound minus the solver tolerance, > 0),
    ``("falsified", witness, value)`` or ``("open", None, value)``."""
    from ..solvers import solver_available
    from .milp import encode, solve_disjunct

    if not solver_available("highs"):
        return "open", None, float("-inf")
    deadline = time.monotonic() + max(0.0, seconds)
    bounds = [None if b is None else (b[0].detach(), b[1].detach()) for b in tree._bounds(dom)]
    lo, hi = tree.lo[0].numpy(), tree.hi[0].numpy()
    enc = encode(tree.graph, lo, hi, bounds, "none", deadline)
    known = float(dom.value[0])
    known = known if np.isfinite(known) else float("-inf")

    def confirm(x: np.ndarray) -> Witness | None:
        return tree.query.confirm(x[None])

    r = solve_disjunct(enc, tree.C.numpy(), tree.d.numpy(), known, None if tree.query.runner is None else confirm,
                       deadline, solver)
    if r.status == "witness":
        return "falsified", r.witness, r.bound
    if r.status in ("lp", "milp"):
        return "verified", None, r.bound - r.tolerance
    return "open", None, r.bound
