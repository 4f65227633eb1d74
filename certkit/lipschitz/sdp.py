"""LipSDP-Neuron (Fazlyab et al. 2019) for small feed-forward chains, with a verified certificate.

For ``T = B_k phi(B_{k-1} ... phi(B_0 x))`` with every activation slope of neuron ``j`` in
``[a_j, b_j]`` (:mod:`certkit.lipschitz.slopes`), stack ``v = [x; z_1; ...; z_k]``
(``z_i`` the post-activations), ``A v`` = the pre-activations and ``B v = [z_1; ...; z_k]``.
If for some diagonal ``Lambda >= 0`` and ``rho >= 0``

    M(rho, Lambda) = [A; B]^T [[-2 ab Lambda, (a + b) Lambda], [(a + b) Lambda, -2 Lambda]] [A; B]
                     + diag(-rho I, 0, ..., 0, B_k^T B_k)  <=  0,

then ``Lip_2(T) <= sqrt(rho)``. cvxpy (SCS or Clarabel) minimises ``rho``; the answer is
then *verified*: with the solver's ``Lambda``, ``rho`` is raised until the largest eigenvalue
of ``M`` in float64, plus a rounding allowance ``64 N eps ||M||_F``, is <= 0. Only a verified
``rho`` is reported. Needs the ``sdp`` extra (``pip install "certkit[sdp]"``).
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError
from .blocks import block_matrix
from .methods import MethodResult, NotApplicable
from .slopes import ElementSlopes
from .structure import Structure

EPS64 = float(np.finfo(np.float64).eps)
MAX_SIZE = 2000  # inputs + hidden neurons


def _layers(st: Structure) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Explicit block matrices ``B_0..B_k`` and the slope ranges of the k hidden layers."""
    if st.chain is None:
        raise NotApplicable("LipSDP needs a feed-forward chain (this graph has branches)")
    g = st.graph
    mats, slopes = [], []
    ops, n_in = [], st.size(0)
    for i in st.chain[1:]:
        if st.is_linear(i):
            ops.append(g.nodes[i].op)
            continue
        s = st.slopes[i]
        if not isinstance(s, ElementSlopes):
            raise NotApplicable(f"LipSDP-Neuron needs elementwise activations ('{g.nodes[i].name}' is {g.nodes[i].op.kind})")
        mats.append(block_matrix(ops, n_in))
        n = st.size(i)
        slopes.append((np.broadcast_to(np.asarray(s.lo, float), (n,)).copy(),
                       np.broadcast_to(np.asarray(s.hi, float), (n,)).copy()))
        ops, n_in = [], n
    mats.append(block_matrix(ops, n_in))
    return mats, slopes


def _assemble(mats, slopes):
    n0 = mats[0].shape[1]
    hs = [m.shape[0] for m in mats[:-1]]
    H, N = sum(hs), n0 + sum(hs)
    A = np.zeros((H, N))
    r, c = 0, 0
    for m in mats[:-1]:
        A[r:r + m.shape[0], c:c + m.shape[1]] = m
        r, c = r + m.shape[0], c + m.shape[1]
    B = np.zeros((H, N))
    B[:, n0:] = np.eye(H)
    a = np.concatenate([s[0] for s in slopes]) if slopes else np.zeros(0)
    b = np.concatenate([s[1] for s in slopes]) if slopes else np.zeros(0)
    last = np.zeros((N, N))
    k = mats[-1].shape[1]
    last[N - k:, N - k:] = mats[-1].T @ mats[-1]
    return A, B, a, b, last, n0, N


def _m(A, B, a, b, last, lam):
    P = (-2 * a * b * lam)[:, None] * A + ((a + b) * lam)[:, None] * B  # rows of Q [A; B], top half
    R = ((a + b) * lam)[:, None] * A - (2 * lam)[:, None] * B
    M = A.T @ P + B.T @ R + last
    return (M + M.T) / 2


def lipsdp_neuron(st: Structure, solver: str | None = None) -> MethodResult:
    try:
        import cvxpy as cp
    except ImportError:
        raise BackendError("the sdp method needs cvxpy: pip install \"certkit[sdp]\" (or pip install cvxpy)") from None
    mats, slopes = _layers(st)
    A, B, a, b, last, n0, N = _assemble(mats, slopes)
    if N > MAX_SIZE:
        raise NotApplicable(f"LipSDP is limited to {MAX_SIZE} inputs + hidden neurons here (this net: {N})")
    H = A.shape[0]
    lam = cp.Variable(H, nonneg=True)
    rho = cp.Variable(nonneg=True)
    # M = A^T diag(-2ab lam) A + A^T diag((a+b) lam) B + B^T diag((a+b) lam) A - 2 B^T diag(lam) B + last;
    # B = [0, I] picks the hidden block, so the last three terms touch only those rows/columns
    Dab = cp.diag(cp.multiply(a + b, lam))
    cross = A[:, :].T @ Dab  # (N, H): A^T diag((a+b) lam); B^T (.) A is its transpose
    hidden = cp.bmat([[np.zeros((n0, n0)), np.zeros((n0, H))], [np.zeros((H, n0)), -2 * cp.diag(lam)]])
    M = A.T @ cp.diag(cp.multiply(-2 * a * b, lam)) @ A + cp.hstack([np.zeros((N, n0)), cross]) + \
        cp.vstack([np.zeros((n0, N)), cross.T]) + hidden + last
    E = np.zeros((N, N))
    E[:n0, :n0] = np.eye(n0)
    scale = max(float(np.abs(last).max()), 1.0)
    expr = M - rho * E
    cons = [(expr + expr.T) / 2 << -1e-7 * scale * np.eye(N)]
    prob = cp.Problem(cp.Minimize(rho), cons)
    names = [solver] if solver else [s for s in ("SCS", "CLARABEL") if s in cp.installed_solvers()]
    status = "no solver"
    for name in names:
        try:
            prob.solve(solver=name)
            status = prob.status
        except cp.error.SolverError as e:
            status = str(e)
            continue
        if lam.value is not None and rho.value is not None:
            break
    if lam.value is None or rho.value is None:
        raise NotApplicable(f"the LipSDP solve failed ({status})")
    lam_v = np.maximum(np.asarray(lam.value, float), 0.0)
    M0 = _m(A, B, a, b, last, lam_v)
    r = max(float(rho.value), 0.0)
    for factor in (1 + 1e-6, 1 + 1e-4, 1 + 1e-2, 1.1, 2.0, 10.0):
        rr = r * factor + 1e-12 * scale
        Mr = M0 - rr * E
        err = 64 * N * EPS64 * float(np.linalg.norm(Mr))
        if float(np.linalg.eigvalsh(Mr)[-1]) + err <= 0:
            return MethodResult("sdp", float(np.sqrt(rr)) * (1 + 1e-12),
                                {"rho_solver": float(rho.value), "rho_verified": rr, "status": status, "size": N})
    raise NotApplicable(f"the LipSDP solution could not be verified (solver status {status})")
