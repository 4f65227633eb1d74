"""Lower bounds on the Lipschitz constant: the largest local gain found (paper 000, eq. 4).

At sampled points ``x`` the top singular direction ``v`` of the Jacobian ``J(x)`` is found by
power iteration with forward- and reverse-mode products (for L_inf: the sign vector of
the row of ``J`` with the largest L_1 norm); ``x`` is then moved by gradient ascent on
``||J(x) v||`` (useful for smooth activations; piecewise-linear nets have a locally constant
``J``). The figure reported is a *difference quotient*
``||T(x + h v) - T(x - h v)||_p / (2 h ||v||_p)`` in float64, which is a true lower bound on
``Lip_p(T)`` whatever the sampling did (up to rounding, removed by a small margin).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jvp, vjp

from ..graph.graph import Graph

INF = float("inf")


@dataclass(frozen=True)
class LowerBound:
    value: float
    point: np.ndarray  # x where it was found
    direction: np.ndarray


def _pnorm(t: torch.Tensor, p: float) -> torch.Tensor:
    return t.abs().amax(dim=-1) if p == INF else t.norm(dim=-1)


def _top_direction(f, x: torch.Tensor, p: float, iters: int, rng: torch.Generator,
                   deadline: float = float("inf")) -> torch.Tensor:
    v = torch.randn(x.shape, dtype=x.dtype, generator=rng)
    if p == INF:
        v = torch.sign(v)
        for _ in range(iters):
            if time.monotonic() > deadline:
                break
            _, jv = jvp(f, (x,), (v,))
            i = jv.abs().argmax(dim=-1)
            u = torch.zeros_like(jv)
            u[torch.arange(len(i)), i] = 1.0
            _, back = vjp(f, x)
            (row,) = back(u)
            v = torch.where(row >= 0, 1.0, -1.0).to(x.dtype)
        return v
    v = v / v.norm(dim=-1, keepdim=True)
    for _ in range(iters):
        if time.monotonic() > deadline:
            break
        _, jv = jvp(f, (x,), (v,))
        _, back = vjp(f, x)
        (w,) = back(jv)
        n = w.norm(dim=-1, keepdim=True)
        v = torch.where(n > 0, w / torch.clamp(n, min=1e-300), v)
    return v


def sampled_lower(graph: Graph, p: float = 2.0, samples: int = 32, x: np.ndarray | None = None,
                  ascent_steps: int = 20, power_iters: int = 20, seed: int = 0,
                  time_budget: float = 3.0) -> LowerBound:
    """The best difference quotient found from ``samples`` random points (uniform in
    [0, 1]^n and standard normal) plus the rows of ``x`` (e.g. data), after gradient ascent.
    The search stops after about ``time_budget`` seconds (the final quotient is always taken)."""
    deadline = time.monotonic() + time_budget
    rng = torch.Generator().manual_seed(seed)
    n = graph.n_inputs
    t = time.monotonic()
    with torch.no_grad():
        graph.forward(torch.zeros(2, n, dtype=torch.float64))
    per_point = (time.monotonic() - t) / 2  # about 100 passes per point fit the budget
    samples = int(max(2, min(samples, time_budget / max(100 * per_point, 1e-9))))
    pts = [torch.rand(samples // 2, n, generator=rng, dtype=torch.float64),
           torch.randn(samples - samples // 2, n, generator=rng, dtype=torch.float64)]
    if x is not None and len(x):
        pts.append(torch.as_tensor(np.asarray(x, np.float64).reshape(len(x), -1)))
    xs = torch.cat(pts)

    def f(z):
        return graph.forward(z)

    v = _top_direction(f, xs, p, power_iters, rng, deadline)
    if ascent_steps and time.monotonic() < deadline:  # eq. 4: gradient ascent on the local gain ||J(x) v||
        z = xs.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.05)
        for _ in range(ascent_steps):
            if time.monotonic() > deadline:
                break
            opt.zero_grad()
            _, jv = jvp(f, (z,), (v,))
            loss = -_pnorm(jv, p).sum()
            if not loss.requires_grad:
                break
            loss.backward()
            opt.step()
        xs = z.detach()
        v = _top_direction(f, xs, p, power_iters // 2, rng, deadline + time_budget / 2)
    with torch.no_grad():
        vn = _pnorm(v, p)
        h = (1e-4 * (1 + xs.abs().amax(dim=-1)) / torch.clamp(vn, min=1e-300))[:, None]
        d = _pnorm(f(xs + h * v) - f(xs - h * v), p)
        q = d / (2 * h[:, 0] * vn)
        q = torch.where(torch.isfinite(q), q, torch.zeros_like(q)) * (1 - 1e-7)
    k = int(q.argmax())
    return LowerBound(float(q[k]), xs[k].numpy(), v[k].numpy())
