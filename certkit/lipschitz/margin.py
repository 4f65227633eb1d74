"""Lipschitz-margin certificates (DESIGN.md section 4, "Lipschitz-margin certificates").

For a sample ``x0`` with label ``y`` and every other class ``j``, let ``m_j = f_y - f_j`` and
``G_j`` a sound bound on the dual norm of its gradient everywhere: ``||grad m_j||_2`` for an
L_2 ball, ``||grad m_j||_1`` for an L_inf ball (then ``|m_j(x) - m_j(x0)| <= G_j ||x - x0||_p``
for all x). The sample is certified at radius ``eps`` when, for every ``j``,

    m_j(x0) - eps G_j - 2 min(|c_j| E, ||c_j||_2 E2)  >  0

and its certified radius is ``min_j (m_j(x0) - 2 min(|c_j| E, ||c_j||_2 E2)) / G_j``. Here ``m_j(x0)`` is computed
in float64 by the IR and ``E`` (``E2``) bounds coordinatewise (in L_2), over a ball around ``x0``
containing every ball considered,
both ``|f^(x) - f(x)|`` (f^ the network as onnxruntime computes it) and the float64 evaluation
error (:func:`certkit.bounds.fperror.propagated_error`): the Lipschitz bound is about the real
network, the verdict about the computed one. The ball is not intersected with the input domain
(certifying the whole ball is sound, and simpler).

``G_j`` (:func:`pair_lipschitz`) is the smallest of, with ``u_j = M_tail^T (e_y - e_j)`` the
exact (signed) row of the linear part after the last activation:

* ``signed``: ``|| |u_j|^T |B_k| S ... S |B_1| ||_q`` with each linear part ``B_i`` between
  activations formed explicitly when small (so its own cancellations are kept) and taken
  entrywise in absolute value; for nonnegative hidden layers this is DESIGN.md's
  ``|| |c_j^T W_m| W_{m-1} ... W_1 ||_2``;
* ``separable``: ``||u_j||_q prod_i ||B_i|| max|s_i|`` (L_2: spectral norms; L_inf ball:
  ``||grad m||_1 <= ||u||_1 prod ||B_i^T||_{1->1} = ||u||_1 prod ||B_i||_{inf->inf}``);
* for an L_inf ball also ``sqrt(d)`` times the best L_2 figure (``||g||_1 <= sqrt(d) ||g||_2``).

For a 1-Lipschitz net with an orthogonal last layer ``||u_j||_2 <= sqrt 2``: the rule of
paper 004, ``f_y - f_j > sqrt 2 eps``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds.fperror import propagated_error
from ..graph.graph import Graph
from ..spec.sets import InputSet
from .blocks import EXPLICIT_MAX, explicit, segment_norm
from .structure import Structure

INF = float("inf")


@dataclass(frozen=True)
class PairLipschitz:
    """``G[y, j]``: bound on the dual norm of ``grad (f_y - f_j)`` (0 on the diagonal)."""

    ball: str  # "l2" or "linf"
    G: np.ndarray
    candidates: dict[str, np.ndarray] = field(default_factory=dict)

    def method_of(self, y: int, j: int) -> str:
        return min(self.candidates, key=lambda k: self.candidates[k][y, j])


def _rows(n: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    ys, js = np.nonzero(~np.eye(n, dtype=bool))
    C = torch.zeros(len(ys), n, dtype=torch.float64)
    C[torch.arange(len(ys)), torch.as_tensor(ys)] = 1.0
    C[torch.arange(len(ys)), torch.as_tensor(js)] -= 1.0
    return C, ys, js


def _dual(v: torch.Tensor, ball: str) -> np.ndarray:
    return (v.abs().sum(-1) if ball == "linf" else v.norm(dim=-1)).numpy()


def _head_segments(st: Structure, k: int):
    segs = st.segments()
    if segs is None:
        return None
    return [s for s in segs if s[2] <= k]


def pair_lipschitz(graph: Graph, ball: str = "l2") -> PairLipschitz:
    """Per-class-pair gradient bounds for margin certificates (module docstring)."""
    st = Structure.of(graph)
    n = graph.n_outputs
    C, ys, js = _rows(n)
    k = st.tail_start
    U = st.tail_vjp(C)  # (pairs, size(k)), exact
    p = INF if ball == "linf" else 2.0
    cand: dict[str, np.ndarray] = {}
    l2: dict[str, np.ndarray] = {}
    segs = _head_segments(st, k) if k != graph.output else None
    # signed: |u| back through |B_i| (explicit where small) and max|s|
    R = U.abs()
    if segs is not None:
        for kind, a, b in reversed(segs):
            if kind == "nonlinear":
                R = _abs_act(st, a, R)
            elif st.size(a) * st.size(b) <= EXPLICIT_MAX:
                B = torch.as_tensor(np.abs(explicit(lambda e: st.linear_forward(e, a, b), st.size(a))))
                R = R @ B
            else:
                R = st.abs_vjp(R, a, b)
    else:
        R = st.abs_vjp(R, 0, k)
    cand["signed"], l2["signed"] = _dual(R, ball), _dual(R, "l2")
    if segs is not None:
        f2, fp_ = 1.0, 1.0
        for kind, a, b in segs:
            if kind == "nonlinear":
                f2 *= st.slopes[a].norm(2.0)
                fp_ *= st.slopes[a].norm(p)
            else:
                f2 *= segment_norm(st, a, b, 2.0).upper
                fp_ *= segment_norm(st, a, b, p).upper if p != 2.0 else 1.0
        l2["separable"] = _dual(U, "l2") * f2
        cand["separable"] = l2["separable"] if p == 2.0 else _dual(U, ball) * fp_
    if ball == "linf":  # ||g||_1 <= sqrt(d) ||g||_2
        cand["sqrt_d_l2"] = np.sqrt(graph.n_inputs) * np.minimum.reduce(list(l2.values()))
    mats = {}
    for name, v in cand.items():
        G = np.zeros((n, n))
        G[ys, js] = v * (1 + 1e-9)
        mats[name] = G
    best = np.minimum.reduce(list(mats.values()))
    return PairLipschitz(ball, best, mats)


def _abs_act(st: Structure, i: int, R: torch.Tensor) -> torch.Tensor:
    """``R |J_i|``-bound for the nonlinear node ``i`` (rows of R): ``R diag(max|s|)`` or ``R G``."""
    return st.abs_vjp(R, st.graph.nodes[i].inputs[0], i)


@dataclass(frozen=True)
class MarginCertificate:
    """Per sample: certified at ``eps``? the certified radius, and the margin bound over the ball."""

    verified: np.ndarray  # bool (b,)
    radius: np.ndarray  # (b,)
    margin_lower: np.ndarray  # (b,): min_j m_j(x0) - eps G_j
    rows_lower: np.ndarray  # (b, n - 1): lower bounds of f^_y - f^_j over the ball (floating point included)


def certify_margins(graph: Graph, x: np.ndarray, y: np.ndarray, eps: float, pair: PairLipschitz) -> MarginCertificate:
    """Lipschitz-margin certificates of the samples ``x`` (b, n) with labels ``y`` at radius ``eps``."""
    with torch.no_grad():
        f = graph.forward(torch.as_tensor(np.asarray(x, np.float64))).numpy()
    n = graph.n_outputs
    b = len(y)
    others = np.array([[j for j in range(n) if j != t] for t in y]).reshape(b, n - 1)
    m = f[np.arange(b), y][:, None] - np.take_along_axis(f, others, 1)  # (b, n - 1)
    G = pair.G[y[:, None], others]
    C = np.zeros((b, n - 1, n))
    C[np.arange(b)[:, None], np.arange(n - 1)[None], y[:, None]] = 1.0
    C[np.arange(b)[:, None], np.arange(n - 1)[None], others] = -1.0
    # E over the box of the largest radius any row could certify (and at least eps): sound for
    # every ball used below
    with np.errstate(divide="ignore", invalid="ignore"):
        reach = np.where(G > 0, np.abs(m) / G, 0.0).max(axis=1) if b else np.zeros(0)
    R = np.maximum(np.nan_to_num(reach, posinf=0.0), eps) * (1 + 1e-6) if b else np.zeros(0)
    x64 = np.asarray(x, np.float64).reshape(b, -1)
    if b:
        ball = InputSet.ball(x64, R, 2.0 if pair.ball == "l2" else float("inf"))
        E, E2 = (t.numpy() for t in propagated_error(graph, ball, tight=True))
        fp = 2.0 * np.minimum(np.einsum("bjn,bn->bj", np.abs(C), E),
                              np.linalg.norm(C, axis=-1) * E2[:, None])
    else:
        fp = m
    fp = np.where(np.isfinite(fp), fp, np.inf)
    slack = m - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(G > 0, slack / G, np.where(slack > 0, np.inf, -np.inf))
    radius = np.maximum(r.min(axis=1), 0.0) if b else np.zeros(0)
    radius = np.where((slack > 0).all(axis=1), radius, 0.0) if b else radius
    low = (m - eps * G).min(axis=1) if b else np.zeros(0)
    rows = slack - eps * G
    verified = (np.isfinite(rows) & (rows > 0)).all(axis=1) if b else np.zeros(0, bool)
    return MarginCertificate(verified, radius, low, rows)
