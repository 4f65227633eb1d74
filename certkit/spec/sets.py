"""Input sets for bound propagation (DESIGN.md section 2), batched.

An :class:`InputSet` is a batch of ``b`` sets over R^n. Every set has a box
``[lower, upper]`` that contains it (for an L_p ball: the ball's bounding box
intersected with the domain). Linear functions are concretised exactly over a
box, and over an L_2 ball by ``a . x0 - eps ||a||_2``; when both a ball and a
domain box are present the larger (both sound) lower bound is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..tolerances import COMPUTE_SAFETY, U64, gamma

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class InputSet:
    """A batch of input sets.

    ``lower``/``upper``: (b, n) float64 tensors, the enclosing box.
    ``center``/``eps``/``p``: an L_p ball (p in {inf, 2, 1}) around ``center`` (b, n)
    with radius ``eps`` (b,), intersected with the box; None for a pure box.
    """

    lower: Tensor
    upper: Tensor
    center: Tensor | None = None
    eps: Tensor | None = None
    p: float = float("inf")

    @property
    def batch(self) -> int:
        return int(self.lower.shape[0])

    @property
    def n(self) -> int:
        return int(self.lower.shape[1])

    @staticmethod
    def box(lower, upper) -> "InputSet":
        lo = torch.as_tensor(np.asarray(lower, dtype=np.float64))
        hi = torch.as_tensor(np.asarray(upper, dtype=np.float64))
        if lo.dim() == 1:
            lo, hi = lo[None], hi[None]
        if bool((lo > hi).any()):
            raise ValueError("empty box: some lower bound exceeds its upper bound")
        return InputSet(lo, hi)

    @staticmethod
    def ball(center, eps, p: float, domain: tuple[float, float] | None = None) -> "InputSet":
        """L_p ball(s) of radius ``eps`` (scalar or per sample) around ``center`` (b, n),
        clipped to ``domain`` (lo, hi) when given. For p = inf the result is a box."""
        c = torch.as_tensor(np.asarray(center, dtype=np.float64))
        if c.dim() == 1:
            c = c[None]
        e = torch.as_tensor(np.broadcast_to(np.asarray(eps, dtype=np.float64), (c.shape[0],)).copy())
        lo, hi = c - e[:, None], c + e[:, None]
        if domain is not None:
            lo = lo.clamp(min=domain[0], max=domain[1])
            hi = hi.clamp(min=domain[0], max=domain[1])
            if bool(((c < domain[0]) | (c > domain[1])).any()):
                raise ValueError(f"a centre lies outside the domain [{domain[0]}, {domain[1]}]")
        if p == float("inf"):
            return InputSet(lo, hi)
        return InputSet(lo, hi, c, e, float(p))

    def select(self, idx) -> "InputSet":
        """The sub-batch ``idx``."""
        pick = (lambda t: None if t is None else t[idx])
        return InputSet(self.lower[idx], self.upper[idx], pick(self.center), pick(self.eps), self.p)

    def concretize_lower(self, A: Tensor, const: Tensor | None = None) -> Tensor:
        """min over the set of ``A x + const``; A is (b, s, n), result (b, s).

        The result is lowered by a bound on the float64 rounding of this computation itself
        (``gamma_{n+8}(u64)`` of the magnitudes of its terms; :mod:`certkit.bounds.fperror`)."""
        mid = (self.upper + self.lower) / 2
        rad = (self.upper - self.lower) / 2
        mag = torch.maximum(self.lower.abs(), self.upper.abs())
        both = A.abs() @ torch.stack([rad, mag], -1)  # |A| rad and |A| mag in one pass over A
        lb = (A @ mid[:, :, None])[..., 0] - both[..., 0]
        terms = both[..., 1]
        if self.center is not None:
            q = {2.0: 2.0, 1.0: float("inf")}.get(self.p)
            if q is None:
                raise ValueError(f"unsupported norm p={self.p}")
            norm = torch.linalg.vector_norm(A, ord=q, dim=-1)
            ball = torch.einsum("bsn,bn->bs", A, self.center) - self.eps[:, None] * norm
            lb = torch.maximum(lb, ball)
            terms = terms + self.eps[:, None] * norm
        if const is not None:
            terms = terms + const.abs()
            lb = lb + const
        return lb - COMPUTE_SAFETY * gamma(A.shape[-1] + 8, U64) * (terms + lb.abs())

    def contains(self, x: np.ndarray) -> np.ndarray:
        """(b,) boolean: is ``x[k]`` (b, n) in set k (exactly, in float64)."""
        x = np.asarray(x, dtype=np.float64)
        ok = ((x >= self.lower.numpy()) & (x <= self.upper.numpy())).all(axis=1)
        if self.center is not None:
            d = np.linalg.norm(x - self.center.numpy(), ord=self.p, axis=1)
            ok &= d <= self.eps.numpy()
        return ok

    def project(self, x: Tensor) -> Tensor:
        """Project (approximately, for balls) ``x`` (b, n) into the set: ball then box clamp."""
        if self.center is not None:
            d = x - self.center
            nrm = torch.linalg.vector_norm(d, ord=self.p, dim=1, keepdim=True)
            factor = torch.clamp(self.eps[:, None] / nrm.clamp(min=1e-30), max=1.0)
            x = self.center + d * factor
        return torch.maximum(torch.minimum(x, self.upper), self.lower)
