"""Counterexample polishing by sequential linear programming in a trust region (DESIGN.md section 3).

Sign-gradient PGD follows one row of a disjunct at a time (the max's active row) and zigzags when
the unsafe set is a small intersection of half-spaces: an output box (``reach_prob_density``), or
"COC stays maximal" (ACAS Xu property 2: four rows ``y_i - y_0 <= 0`` met at once). Around a point
``x`` the network is affine to first order, ``z(x') ~ z(x) + J (x' - x)`` for the rows ``z = C y - d``
of one disjunct (exactly affine for a piecewise-linear net while no ReLU changes phase), and the
linear program

    minimise t  subject to  z(x) + J (x' - x) <= t,   x' in the box,   |x' - x| <= delta

gives the step that lowers every row together. A step is kept when the network's own value
``max_i z_i`` decreases; the trust radius ``delta`` then grows, otherwise it shrinks (the standard
trust-region rule, Nocedal and Wright, Numerical Optimization, ch. 4). This is the local search of
Marabou's and nnenum's falsification (one LP per linear region), made generic by the Jacobian.

A disjunct of one row gains nothing: its linear program is the signed step PGD already takes
(:func:`certkit.verify.falsify._polish_one` skips it). Box regions only (VNN-LIB boxes and L_inf balls, which are boxes): an L_2 ball is not a linear
constraint. Nothing here is a verdict: the caller confirms every candidate with onnxruntime.
Needs highspy (a dependency of the package); without it :func:`polish` returns the best start
unchanged.
"""
from __future__ import annotations

import functools
import time

import numpy as np
import torch

from ..quiet import without_stdout

Tensor = torch.Tensor

#: the first trust radius, a fraction of the box width
DELTA0 = 0.1
#: consecutive rejected steps (each shrinking the radius fourfold) that end the search from one start
MAX_REJECTED = 3
#: a trust radius below this fraction of the box width ends the search from one start
DELTA_MIN = 1e-7


class _Lp:
    """``min t  s.t.  J x - t <= J x0 - z,  lo <= x <= hi`` with HiGHS (highspy, imported in
    milliseconds where scipy's linprog takes a third of a second), one solver object reused."""

    def __init__(self) -> None:
        import highspy

        self.hs = highspy
        self.h = without_stdout(highspy.Highs)  # its banner, printed before any option can be set
        self.h.setOptionValue("output_flag", False)
        # one thread, as every HiGHS solve of certkit: HiGHS's scheduler is global to the process, and a
        # later solve asking for another thread count than the first fails (run status kError)
        self.h.setOptionValue("threads", 1)

    def solve(self, J: np.ndarray, rhs: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              deadline: float | None = None) -> np.ndarray | None:
        """The ``x`` part of an optimal solution, or None (not solved to optimality, or ``deadline``
        -- ``time.monotonic()`` -- passed: HiGHS gets the time left as its time limit)."""
        hs, (m, n) = self.hs, J.shape
        self.h.setOptionValue("time_limit", hs.kHighsInf if deadline is None
                              else max(deadline - time.monotonic(), 1e-3))
        lp = hs.HighsLp()
        lp.num_col_, lp.num_row_ = n + 1, m
        lp.col_cost_ = np.r_[np.zeros(n), 1.0]
        lp.col_lower_ = np.r_[lo, -hs.kHighsInf]
        lp.col_upper_ = np.r_[hi, hs.kHighsInf]
        lp.row_lower_ = np.full(m, -hs.kHighsInf)
        lp.row_upper_ = rhs
        lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.arange(0, (n + 2) * m, m, dtype=np.int32)[: n + 2]
        lp.a_matrix_.index_ = np.tile(np.arange(m, dtype=np.int32), n + 1)
        lp.a_matrix_.value_ = np.r_[J.T.reshape(-1), -np.ones(m)]
        self.h.clearModel()
        self.h.passModel(lp)
        self.h.run()
        if self.h.getModelStatus() != hs.HighsModelStatus.kOptimal:
            return None
        return np.asarray(self.h.getSolution().col_value[:n], dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _lp() -> _Lp | None:
    """The process's one LP solver object (None without highspy)."""
    try:
        return _Lp()
    except ImportError:  # pragma: no cover - highspy is a dependency of the package
        return None


def _rows_and_jacobian(f, x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``z(x)`` (m,) and its Jacobian (m, n) for ``f: (b, n) -> (b, m)``: one forward over m copies
    of ``x`` and one backward (row i's copy carries row i's gradient)."""
    xs = x.detach()[None].repeat(m, 1).requires_grad_(True)
    z = f(xs)
    grad, = torch.autograd.grad(z.diagonal().sum(), xs)
    return z[0].detach(), grad


def polish(f, lower: Tensor, upper: Tensor, starts: Tensor, steps: int = 30,
           deadline: float | None = None) -> tuple[Tensor, Tensor]:
    """Trust-region SLP (module docstring) from each of ``starts`` (s, n) on the rows
    ``f: (b, n) -> (b, m)`` of one disjunct (the point is unsafe when every row is <= 0), inside the
    box ``[lower, upper]`` (n,). Returns the best point and its value ``max_i f_i`` over all starts
    and steps; stops at the first point with value <= 0, at ``deadline`` or after ``steps`` linear
    programs per start."""
    with torch.no_grad():
        z0 = f(starts)
    m, v0 = z0.shape[1], z0.amax(dim=1)
    k = int(v0.argmin())
    best_x, best_v = starts[k].detach(), float(v0[k])
    lp = _lp() if best_v > 0 else None
    if lp is None:
        return best_x, torch.tensor(best_v, dtype=torch.float64)
    lo, hi = lower.numpy(), upper.numpy()
    width = np.maximum(hi - lo, 0.0)
    for x in starts:
        x = x.detach().clone()
        delta = DELTA0 * width
        z, J = _rows_and_jacobian(f, x, m)
        cur = float(z.max())
        rejected = 0
        for _ in range(steps):
            if deadline is not None and time.monotonic() > deadline:
                return best_x, torch.tensor(best_v, dtype=torch.float64)
            if cur <= 0 or not np.isfinite(cur) or not bool(torch.isfinite(J).all()) or (delta < DELTA_MIN * width).all():
                break
            xn = x.numpy()
            Jn = J.numpy()
            sol = lp.solve(Jn, Jn @ xn - z.numpy(), np.maximum(lo, xn - delta), np.minimum(hi, xn + delta), deadline)
            if sol is None or not np.isfinite(sol).all():
                break
            cand = torch.as_tensor(np.clip(sol, lo, hi))
            zc, Jc = _rows_and_jacobian(f, cand, m)
            vc = float(zc.max())
            if vc < cur:
                x, z, J, cur = cand, zc, Jc, vc
                delta = np.minimum(delta * 2.0, width)
                rejected = 0
            else:
                delta = delta * 0.25
                rejected += 1
                if rejected >= MAX_REJECTED:
                    break
        if cur < best_v:
            best_x, best_v = x, cur
        if best_v <= 0:
            break
    return best_x, torch.tensor(best_v, dtype=torch.float64)
