"""The implicit-bias layer (paper 003; DESIGN.md section 8) as one IR op.

The layer's pre-activations solve ``z = a - lambda s(z)``, ``s_i(z) = beta sum_k w_ik tanh(alpha
(z_k - z_i))``. A model file computes ``K`` damped steps of the fixed-point map from ``z_0 = a``
(:mod:`certkit.onnx.ibnn`, with ``c = lambda beta`` as stored)::

    z_{k+1} = (1 - eta) z_k + eta G(z_k),      G(z) = a - c sum_k w_ik tanh(alpha (z_k - z_i)).

:class:`ImplicitLayer` is **that computation** (``forward``), whatever ``lambda``: bounds hold for the
model as onnxruntime runs it, never for an idealised solver. For bound propagation it is the
identity plus a bounded deviation, ``z_K = a + e`` with ``e`` enclosed by :meth:`deviation` for every
``a`` in a box (the linear part is the identity; the deviation is charged like a rounding error, see
:mod:`certkit.bounds.fperror_implicit`), so every backend (interval, DeepPoly, alpha, branch and
bound, MILP) handles the layer through its existing error terms.

The enclosure follows the steps themselves (interval arithmetic, float32 roundings included):
``E_0 = 0``, ``E_{k+1} = (1 - eta) E_k - eta c S(A + E_k) +- delta_k`` with ``S`` the interval
extension of ``sum_k w_ik tanh(alpha (z_k - z_i))``. It needs no contraction: ``|tanh| <= 1`` caps
it at ``|c| r_i + K delta`` (``r_i = sum_k |w_ik|``), and when ``q < 1`` (below) it converges.

The fixed-point statements (DESIGN.md section 8; :mod:`certkit.ibnn`):

* ``q = 2 |c| alpha max_i sum_{k != i} |w_ik|`` bounds ``||dG/dz||_inf`` (``dG/dz = c L(z)``, a
  Laplacian-like matrix with rows of absolute sum at most ``2 alpha r_i``): ``q < 1`` makes ``G`` a
  contraction, the fixed point ``z*`` unique, and the damped map a contraction with
  ``rho = |1 - eta| + eta q``;
* then ``||z_K - z*||_inf <= rho^K max_i |c| r_i`` (from ``z_0 - z* = c s(z*)``), and the layer's
  Lipschitz constant ``a -> z_K`` is at most ``1 / (1 - q)`` in the inf-norm for every K (induction
  on ``||D_{k+1}|| <= rho ||D_k|| + eta``, ``D_0 = I``); for ``q >= 1`` the same recursion gives
  ``rho^K + eta (rho^K - 1) / (rho - 1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .ops import LinearOp, register_op

Tensor = torch.Tensor


@register_op
@dataclass(frozen=True, eq=False)
class ImplicitLayer(LinearOp):
    """K damped steps of an implicit-bias layer on ``groups`` groups of ``m`` values (module doc).

    ``c``, ``alpha``, ``eta`` are the float32 constants of the file; ``w`` (m x m) its kernel.
    ``lam``, ``beta``, ``tol``, ``kernel``, ``name`` are the exporter's record (reports only).
    """

    kind: ClassVar[str] = "implicit_bias"
    c: float
    alpha: float
    eta: float
    K: int
    w: np.ndarray
    groups: int
    m: int
    lam: float = math.nan
    beta: float = math.nan
    tol: float = math.nan
    kernel: str = ""
    name: str = ""

    # -- the kernel ---------------------------------------------------------------
    def _kernel(self, like: Tensor) -> tuple[Tensor | None, Tensor]:
        """``(idx, W)``: the kernel as neighbour lists, ``idx`` (m, d) the off-diagonal nonzeros of each
        row (padded with the row itself, weight 0) and ``W`` (m, d) their weights, when a row has at
        most m / 4 of them (window kernels); else ``(None, w)``, the dense m x m kernel with a zero
        diagonal. Sums over the neighbours equal the dense sums in real arithmetic (the other terms are
        0): the rounding rules still count m terms, as onnxruntime sums them."""
        cache = self.__dict__.setdefault("_cache", {})
        key = ("kernel", like.dtype, like.device)
        if key not in cache:
            w = np.asarray(self.w, np.float64).copy()
            np.fill_diagonal(w, 0.0)
            lists = neighbour_lists(w)
            if lists is not None:
                cache[key] = (torch.as_tensor(lists[0], device=like.device),
                              torch.as_tensor(lists[1], dtype=like.dtype, device=like.device))
            else:
                cache[key] = (None, torch.as_tensor(w, dtype=like.dtype, device=like.device))
        return cache[key]

    def _others(self, z: Tensor, idx: Tensor | None) -> Tensor:
        """``[.., i, j]``: the value at row i's j-th neighbour (dense: ``z_j`` for every i)."""
        if idx is None:
            return z.unsqueeze(-2).expand(*z.shape[:-1], self.m, self.m)
        return z[..., idx]

    def _sums_T(self, P: Tensor, g: Tensor, idx: Tensor | None) -> Tensor:
        """``(P^T g)_k = sum_i sum_j [nbr(i, j) = k] P_ij g_i`` in either layout."""
        Pg = P * g.unsqueeze(-1)
        if idx is None:
            return Pg.sum(-2)
        out = torch.zeros_like(g)
        return out.scatter_add_(-1, idx.reshape(-1).expand(*g.shape[:-1], -1), Pg.reshape(*g.shape[:-1], -1))

    def row_sums(self) -> np.ndarray:
        """``r_i = sum_{k != i} |w_ik|`` (the diagonal never acts: ``tanh(0) = 0``)."""
        a = np.abs(np.asarray(self.w, dtype=np.float64))
        return a.sum(1) - np.diag(a)

    def col_sums(self) -> np.ndarray:
        a = np.abs(np.asarray(self.w, dtype=np.float64))
        return a.sum(0) - np.diag(a)

    def q(self, norm: str = "inf") -> float:
        """A bound on ``||dG/dz||`` in the given operator norm (``inf``, ``1``, ``2``)."""
        r, col = float(self.row_sums().max(initial=0.0)), float(self.col_sums().max(initial=0.0))
        lip = abs(self.c) * self.alpha
        if norm == "inf":
            return 2.0 * lip * r
        if norm == "1":
            return lip * (r + col)
        if norm == "2":
            return math.sqrt(2.0 * lip * r * lip * (r + col))
        raise ValueError(f"unknown norm {norm!r}")

    def symmetric_nonnegative(self) -> bool:
        """Is the kernel symmetric and nonnegative (the energy view of paper 003, Props. 1-3)?"""
        w = np.asarray(self.w, np.float64)
        return bool(np.all(w >= 0) and np.array_equal(w, w.T))

    def laplacian_max(self) -> float | None:
        """``Lambda``, the largest eigenvalue of the Laplacian ``diag(W 1) - W`` of the off-diagonal
        kernel (symmetric nonnegative kernels only; rounded up), else None."""
        if not self.symmetric_nonnegative():
            return None
        cache = self.__dict__.setdefault("_cache", {})
        if "lap" not in cache:
            w = np.asarray(self.w, np.float64).copy()
            np.fill_diagonal(w, 0.0)
            lap = np.diag(w.sum(1)) - w
            cache["lap"] = float(np.linalg.eigvalsh(lap).max(initial=0.0)) * (1 + 1e-9) + 1e-12
        return cache["lap"]

    def q_energy(self) -> float | None:
        """``|c| alpha Lambda``: with a symmetric nonnegative kernel ``ds/dz = -L_s(z)``, ``L_s`` a
        Laplacian with weights ``w_ik alpha sech^2 <= alpha w_ik``, so its eigenvalues lie in
        ``[0, alpha Lambda]``: the energy's Hessian ``I - c L_s`` (paper 003, Prop. 3) is positive
        definite for ``c <= 0`` and for ``c alpha Lambda < 1``."""
        lap = self.laplacian_max()
        return None if lap is None else abs(self.c) * self.alpha * lap

    def rho(self, norm: str = "inf") -> float:
        """Contraction factor of the damped map, ``|1 - eta| + eta q``."""
        return abs(1.0 - self.eta) + self.eta * self.q(norm)

    def lipschitz(self, norm: str = "inf") -> float:
        """A Lipschitz constant of ``a -> z_K`` in the norm (module doc), in real arithmetic."""
        q, rho = self.q(norm), self.rho(norm)
        if q < 1.0:
            bound = 1.0 / (1.0 - q)
        else:
            bound = _recursion(rho, self.eta, self.K)
        if norm == "2" and self.q_energy() is not None:
            # symmetric Jacobians of a step: dG/dz = c L_s, so (1 - eta) I + eta c L_s, with eigenvalues
            # between 1 - eta and 1 - eta + eta c alpha Lambda (lambda > 0 expands, lambda < 0 contracts)
            qe = self.q_energy() * (1.0 if self.c >= 0 else -1.0)
            rho2 = max(abs(1.0 - self.eta), abs(1.0 - self.eta + self.eta * qe))
            bound = min(bound, _recursion(rho2, self.eta, self.K))
        return bound

    def truncation(self) -> float:
        """``||z_K - z*||_inf <= rho^K max_i |c| r_i`` when ``q < 1`` (inf when not)."""
        rho = self.rho()
        if self.q() >= 1.0:
            return math.inf
        return rho ** self.K * abs(self.c) * float(self.row_sums().max(initial=0.0))

    # -- the computation -----------------------------------------------------------
    def _s(self, z: Tensor) -> Tensor:
        """``sum_k w_ik tanh(alpha (z_k - z_i))`` on (b, groups, m)."""
        idx, W = self._kernel(z)
        return (torch.tanh((self._others(z, idx) - z.unsqueeze(-1)) * self.alpha) * W).sum(-1)

    def _slopes(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """``P_ij = ds_i / dz_nbr(i, j)`` (off the diagonal) in the kernel's layout, and its ``idx``."""
        idx, W = self._kernel(z)
        t = torch.tanh((self._others(z, idx) - z.unsqueeze(-1)) * self.alpha)
        return (1.0 - t * t) * (self.alpha * W), idx

    def _step(self, z: Tensor, a: Tensor) -> Tensor:
        g = a - self.c * self._s(z)
        return g if self.eta == 1.0 else (1.0 - self.eta) * z + self.eta * g

    def forward(self, a: Tensor) -> Tensor:
        b = a.shape[0]
        a3 = a.reshape(b, self.groups, self.m)
        if torch.is_grad_enabled() and a.requires_grad or _wrapped(a):
            return _Unrolled.apply(a3, self)[0].reshape(b, -1)
        z = a3
        for _ in range(self.K):
            z = self._step(z, a3)
        return z.reshape(b, -1)

    def _step_jvp(self, z: Tensor, t: Tensor, ta: Tensor) -> Tensor:
        """The tangent of one step at ``z``: ``(1 - eta) t + eta (ta - c (ds/dz) t)``."""
        P, idx = self._slopes(z)
        ds = (P * self._others(t, idx)).sum(-1) - P.sum(-1) * t
        return (1.0 - self.eta) * t + self.eta * (ta - self.c * ds)

    def _step_vjp(self, z: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """``(g^T dz'/dz, g^T dz'/da)`` of one step at ``z`` (b, groups, m)."""
        P, idx = self._slopes(z)
        gs = -self.eta * self.c * g  # the step's coefficient on s
        ds = self._sums_T(P, gs, idx) - P.sum(-1) * gs
        return (1.0 - self.eta) * g + ds, self.eta * g

    def fixed_point(self, a: Tensor, tol: float = 1e-12, max_iter: int = 10_000) -> tuple[Tensor, int]:
        """Iterate the damped map from ``a`` until the step is below ``tol`` (float64): an
        approximation of ``z*`` (certified by :func:`certkit.ibnn.enclose_fixed_point`)."""
        b = a.shape[0]
        a3 = a.reshape(b, self.groups, self.m).double()
        z = a3
        for k in range(1, max_iter + 1):
            nz = self._step(z, a3)
            if float((nz - z).abs().max()) <= tol:
                return nz.reshape(b, -1), k
            z = nz
        return z.reshape(b, -1), max_iter

    # -- the linear part: the identity ------------------------------------------------
    def apply(self, a: Tensor) -> Tensor:
        return a

    def apply_abs(self, r: Tensor) -> Tensor:
        return r

    def backward(self, A: Tensor) -> tuple[Tensor]:
        return (A,)

    # -- the deviation ------------------------------------------------------------------
    def _s_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Interval extension of ``sum_k w_ik tanh(alpha (z_k - z_i))`` over the box (b, groups, m)
        (the diagonal is left out: ``tanh(z_i - z_i) = 0`` exactly)."""
        idx, W = self._kernel(lo)
        dlo = self._others(lo, idx) - hi.unsqueeze(-1)  # [.., i, j] = lo_nbr - hi_i
        dhi = self._others(hi, idx) - lo.unsqueeze(-1)
        tlo, thi = torch.tanh(dlo * self.alpha), torch.tanh(dhi * self.alpha)
        wp, wn = W.clamp(min=0), W.clamp(max=0)
        return (tlo * wp + thi * wn).sum(-1), (thi * wp + tlo * wn).sum(-1)

    def deviation(self, lo: Tensor, hi: Tensor, u: float = 0.0, tiny: float = 0.0,
                  act_abs: float = 0.0, act_ulps: float = 0.0) -> tuple[Tensor, Tensor]:
        """``[e_lo, e_hi]`` (b, n) enclosing ``z_K - a`` as computed, for every ``a`` in ``[lo, hi]``,
        with ``u``/``tiny`` the model's rounding unit and smallest normal and ``act_*`` the tanh
        budget (:mod:`certkit.tolerances`); all zero: real arithmetic. Rounding of certkit's own
        float64 arithmetic is left to the caller's allowance (:mod:`certkit.bounds.fperror`)."""
        b = lo.shape[0]
        alo, ahi = lo.reshape(b, self.groups, self.m), hi.reshape(b, self.groups, self.m)
        amag = torch.maximum(alo.abs(), ahi.abs())
        r = torch.as_tensor(self.row_sums(), dtype=lo.dtype, device=lo.device)
        c, eta = self.c, self.eta
        elo, ehi = torch.zeros_like(alo), torch.zeros_like(ahi)
        g = _gamma(self.m + 8, u)
        for _ in range(self.K):
            zlo, zhi = alo + elo, ahi + ehi
            slo, shi = self._s_interval(zlo, zhi)
            step_lo = torch.minimum(-c * slo, -c * shi)
            step_hi = torch.maximum(-c * slo, -c * shi)
            nlo, nhi = (1.0 - eta) * elo + eta * step_lo, (1.0 - eta) * ehi + eta * step_hi
            if u > 0.0:
                zmag = torch.maximum(zlo.abs(), zhi.abs())
                zmax = zmag.amax(-1, keepdim=True)
                # one tanh's error: its argument's two roundings (slope <= 1), its own budget
                tau = _gamma(2, u) * self.alpha * (zmag + zmax) + act_ulps * 2.0 * u + act_abs
                big = abs(c) * r * (1.0 + tau)
                delta = abs(c) * r * tau + g * (big + amag + 2.0 * zmag) + (self.m + 8) * tiny
                nlo, nhi = nlo - delta, nhi + delta
            elo, ehi = nlo, nhi
        return elo.reshape(b, -1), ehi.reshape(b, -1)

    def describe(self) -> str:
        return (f"{self.kind}[{self.name or '?'}: {self.groups}x{self.m}, c={self.c:.4g}, alpha={self.alpha:.4g}, "
                f"eta={self.eta:g}, K={self.K}, q={self.q():.3g}]")


def _wrapped(t: Tensor) -> bool:
    """Is ``t`` a functorch (vmap / jacrev) tensor? Those need :class:`_Unrolled` for gradients too."""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
    except AttributeError:  # pragma: no cover - older torch
        return False


class _Unrolled(torch.autograd.Function):
    """The K steps with an exact reverse pass that keeps only the iterates (b x n each), not K
    tanh matrices: for attacks and sampled Jacobians (also under ``torch.func`` transforms).
    Returns ``(z_K, iterates)``; the iterates are not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a3: Tensor, op: ImplicitLayer) -> tuple[Tensor, Tensor]:
        zs = [a3]
        for _ in range(op.K):
            zs.append(op._step(zs[-1], a3))
        return zs[-1], torch.stack(zs[:-1])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.op = inputs[1]
        ctx.save_for_backward(output[1])
        ctx.save_for_forward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def jvp(ctx, ta: Tensor, _unused):
        op, (zs,) = ctx.op, ctx.saved_tensors
        t = ta
        for k in range(zs.shape[0]):
            t = op._step_jvp(zs[k], t, ta)
        return t, None

    @staticmethod
    def backward(ctx, g: Tensor, _unused: Tensor):
        op, (zs,) = ctx.op, ctx.saved_tensors
        ga = torch.zeros_like(g)
        for k in range(zs.shape[0] - 1, -1, -1):
            g, da = op._step_vjp(zs[k], g)
            ga = ga + da
        return ga + g, None  # z_0 = a


def neighbour_lists(w: np.ndarray, max_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray] | None:
    """A kernel with a zero diagonal as neighbour lists ``(idx, W)``, both (m, d): row ``i``'s nonzero
    weights ``W[i]`` at the columns ``idx[i]``, padded with column ``i`` and weight 0; None when a row
    has more than ``max_fraction m`` nonzeros (the dense form is then as cheap)."""
    w = np.asarray(w)
    m = w.shape[0]
    nnz = (w != 0).sum(1)
    d = int(nnz.max(initial=0))
    if m == 0 or d > max_fraction * m:
        return None
    d = max(d, 1)
    idx = np.tile(np.arange(m)[:, None], (1, d))
    wv = np.zeros((m, d), dtype=w.dtype)
    for i in range(m):
        cols = np.flatnonzero(w[i])
        idx[i, :len(cols)], wv[i, :len(cols)] = cols, w[i, cols]
    return idx, wv


def _recursion(rho: float, eta: float, K: int) -> float:
    """The bound ``||D_K||`` of ``||D_{k+1}|| <= rho ||D_k|| + eta``, ``||D_0|| = 1``."""
    if rho < 1.0:
        return max(1.0, eta / (1.0 - rho))
    if rho == 1.0:
        return 1.0 + eta * K
    return rho ** K + eta * (rho ** K - 1.0) / (rho - 1.0)


def _gamma(k: int, u: float) -> float:
    return k * u / (1.0 - k * u) if u > 0 else 0.0
