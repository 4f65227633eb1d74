"""certkit.solvers: the backends' contract, the LP interface against scipy's linprog, the
ground-floor rule. The MIP wrapper's statuses are tested in tests/test_milp.py."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from certkit import solvers
from certkit.errors import BackendError
from certkit.solvers import MipProblem, STATUSES, solve_lp
from certkit.solvers.problem import LINPROG_STATUS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_status_maps_are_data_in_certkit_words():
    for b in solvers.BACKENDS.values():
        assert b.name and b.title and b.module and b.missing
        assert set(b.STATUS_MAP.values()) <= set(STATUSES), b.name
        assert b.tolerances[0] > 0 and b.tolerances[1] >= b.tolerances[0]
    assert set(LINPROG_STATUS) <= set(STATUSES)
    highspy = pytest.importorskip("highspy")
    members = set(highspy.HighsModelStatus.__members__)
    assert set(solvers.BACKENDS["highs"].STATUS_MAP) <= members  # a renamed status would be lost


def test_registry_and_dispatch_errors():
    with pytest.raises(ValueError, match="twice"):
        solvers._register(solvers.Highs())
    with pytest.raises(BackendError, match="unknown MILP solver 'cplex'"):
        solvers.tolerances("cplex")
    assert not solvers.solver_available("cplex")
    assert solvers.tolerances("auto") == tuple(max(t) for t in zip(*(solvers.BACKENDS[n].tolerances
                                                                     for n in solvers.AUTO)))
    with pytest.raises(BackendError, match="no LP session"):
        solvers.lp_session(_random_lp(np.random.default_rng(0), 3, 2)[0], "gurobi")


def test_highs_options_are_checked():
    pytest.importorskip("highspy")
    p = _random_lp(np.random.default_rng(1), 3, 2)[0]
    p.row_hi = np.full(p.n_rows, 1e3)  # feasible
    with pytest.raises(BackendError, match="refused the option"):
        solvers.solve_mip(p, options={"no_such_option": 1})
    with pytest.raises(BackendError, match="cutoff="):
        solvers.solve_mip(p, options={"objective_bound": 0.0})
    assert solvers.solve_mip(p, options={"solver": "ipm"}).status == "optimal"


def test_highs_thread_counts_can_change_in_one_process():
    """HiGHS's task scheduler is process-wide and kept the first solve's thread count: a 2-thread MIP after a
    1-thread one (the MILP backend's LP relaxation, then its MIP) failed with ``kError`` and no node solved."""
    pytest.importorskip("highspy")
    p = _random_lp(np.random.default_rng(1), 3, 2)[0]
    p.row_hi = np.full(p.n_rows, 1e3)
    p.integer = np.array([True, False, False])
    answers = [solvers.solve_mip(p, "highs", threads=t) for t in (1, 2, 1, 0, 2)]
    assert [r.status for r in answers] == ["optimal"] * 5
    assert len({round(r.objective, 9) for r in answers}) == 1
    from certkit.solvers.highs import HighsLpSession

    lp = HighsLpSession(solvers.BACKENDS["highs"], _random_lp(np.random.default_rng(2), 4, 3, "free_t")[0], threads=2)
    assert lp.solve() == "optimal"


def _random_lp(rng, n: int, m: int, kind: str = "box"):
    """``min c.x, A x <= b`` over a box (relu_split's leaf LPs: a free last column ``t``)."""
    A = rng.normal(size=(m, n))
    b = rng.normal(size=m) * 2
    lo = rng.uniform(-1, 0, n)
    box = [(float(l), float(l + rng.uniform(0.1, 2))) for l in lo]
    c = rng.normal(size=n)
    if kind == "free_t":  # min t s.t. A x - t <= b
        A[:, -1] = -1.0
        c = np.zeros(n)
        c[-1] = 1.0
        box[-1] = (None, None)
    elif kind == "unbounded":
        A[:] = 0.0
        b = np.abs(b)
        box[0] = (None, None)
        c[0] = 1.0
    lb = np.array([-np.inf if a is None else a for a, _ in box])
    ub = np.array([np.inf if z is None else z for _, z in box])
    p = MipProblem(c, lb, ub, np.zeros(n, bool), sp.csr_matrix(A), np.full(m, -np.inf), b)
    return p, (c, A, b, box)


@pytest.mark.parametrize("kind", ["box", "free_t", "unbounded"])
def test_solve_lp_answers_as_linprog(kind):
    """Same statuses, optimum and ineqlin marginals as scipy.optimize.linprog(method="highs")."""
    pytest.importorskip("highspy")
    from scipy.optimize import linprog

    rng = np.random.default_rng(len(kind))
    seen = set()
    for _ in range(40):
        n, m = int(rng.integers(2, 7)), int(rng.integers(1, 10))
        _, (c, A, b, box) = _random_lp(rng, n, m, kind)
        ref = linprog(c, A_ub=A, b_ub=b, bounds=box, method="highs")
        res = solve_lp(c, A, b, box)
        seen.add(res.status)
        assert res.status == ref.status, (ref.message, res.message)
        if res.status == 0:
            assert res.objective == pytest.approx(ref.fun, abs=1e-9)
            np.testing.assert_allclose(res.marginals, ref.ineqlin.marginals, atol=1e-9)
            assert np.all(res.marginals <= 1e-12)
            assert np.all(A @ res.x <= b + 1e-7)
            # strong duality with the multipliers -marginals: the reduced costs are sign-consistent
            red = c - A.T @ res.marginals
            assert float(red @ res.x + res.marginals @ b) == pytest.approx(res.objective, abs=1e-7)
        else:
            assert res.x is None and res.marginals is None and math.isnan(res.objective)
    assert seen & {0, 2, 3}
    with pytest.raises(ValueError, match="bounds"):
        solve_lp(c, A, b, box[:-1])


def test_lp_session_warm_starts_match_fresh_solves():
    """Many objectives in one session give the optima of fresh solves, and the row duals have
    the documented signs: ``r = c - A^T y`` with ``y_i > 0`` only at an active lower row bound,
    ``y_i < 0`` only at an active upper one, ``r_j > 0`` only at ``lb_j``, ``r_j < 0`` only at
    ``ub_j`` (complementary slackness), so ``y`` proves the optimum."""
    pytest.importorskip("highspy")
    rng = np.random.default_rng(7)
    p, _ = _random_lp(rng, 6, 12)
    x0 = rng.uniform(p.lb, p.ub)  # feasible, narrow ranged rows: duals of both signs
    p.row_lo, p.row_hi = p.A @ x0 - rng.uniform(0, 0.3, p.n_rows), p.A @ x0 + rng.uniform(0, 0.3, p.n_rows)
    s = solvers.lp_session(p)
    signs = set()
    for j in range(p.n_cols):
        for sign in (1.0, -1.0):
            s.set_objective({j: sign})
            status = s.solve(time_limit=10.0)
            c = np.zeros(p.n_cols)
            c[j] = sign
            fresh = solvers.solve_mip(MipProblem(c, p.lb, p.ub, p.integer, p.A, p.row_lo, p.row_hi))
            assert status == fresh.status == "optimal"
            assert s.objective() == pytest.approx(fresh.objective, abs=1e-7)
            x, y = s.x(), s.row_duals()
            ax, r = p.A @ x, c - p.A.T @ y
            tol = 1e-6
            assert np.all(x >= p.lb - tol) and np.all(x <= p.ub + tol)
            assert np.all((y <= tol) | (ax <= p.row_lo + tol)) and np.all((y >= -tol) | (ax >= p.row_hi - tol))
            assert np.all((r <= tol) | (x <= p.lb + tol)) and np.all((r >= -tol) | (x >= p.ub - tol))
            assert float(y @ ax + r @ x) == pytest.approx(s.objective(), abs=1e-7)
            signs |= set(np.sign(y[np.abs(y) > tol]))
    assert signs == {-1.0, 1.0}
    p.row_lo = p.row_hi + 1.0  # empty
    s = solvers.lp_session(p)
    assert s.solve() == "infeasible" and s.x() is None and s.row_duals() is None and math.isnan(s.objective())


def test_ground_floor():
    """certkit.solvers imports neither torch nor the floors above it (verify, bounds, sparsify),
    and the solvers' own packages only when a solve needs them: checked on the source (every
    import at module level) and on a fresh interpreter (what importing it adds)."""
    import ast

    allowed = {"__future__", "dataclasses", "importlib", "math", "os", "sys", "threading", "time", "typing", "numpy",
               "scipy"}
    pkg = os.path.join(ROOT, "certkit", "solvers")
    for fn in sorted(os.listdir(pkg)):
        if not fn.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(pkg, fn)).read())
        for node in tree.body:  # module level only: solvers are imported inside functions
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1 or (node.level == 2 and node.module in ("errors", "quiet")):  # leaf modules
                    continue
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"certkit/solvers/{fn} imports {name}"
    code = ("import sys, certkit; before = set(sys.modules); import certkit.solvers; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    added = out.stdout.split()
    assert not [m for m in added if m.split(".")[0] in ("torch", "highspy", "gurobipy")
                or m.startswith(("certkit.verify", "certkit.bounds", "certkit.sparsify"))], added
