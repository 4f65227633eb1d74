"""Falsification: random sampling, PGD and LP polishing inside the input set (DESIGN.md section 3).

The attack minimises the *violation objective*

    v(x) = min_k max_{i in disjunct k} (C y(x) - d)_i ,

which is <= 0 exactly when ``y(x)`` lies in some disjunct's polytope: random samples (centre,
vertices, uniform points), then sign-gradient PGD from the best samples and from random points
(restarts aimed at one disjunct each, cycling through :data:`STEP_SCALES`; step functions pass the
gradient of their surrogates, ``Graph.forward(surrogate=True)``), then, where ``AttackConfig.polish``
asks for it, trust-region LP polishing of the best points on their disjunct's rows
(:mod:`certkit.verify.polish`). It runs on the float64 IR; every candidate it proposes is re-checked
with onnxruntime by the caller (:mod:`certkit.verify.witness`). A miss proves nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..graph.graph import Graph
from ..spec.sets import InputSet
from .polish import polish

Tensor = torch.Tensor


@dataclass(frozen=True)
class AttackConfig:
    """Budgets of one falsification call."""

    samples: int = 256
    restarts: int = 8
    steps: int = 50
    step_size: float = 0.1  # fraction of the box half-width (L_inf) or of eps (L_2)
    target: float = 0.0  # stop once v(x) < -target (a little below 0 survives float32 rounding)
    #: the best points then polished by trust-region linear programming (:mod:`.polish`; boxes only)
    polish: int = 0
    polish_steps: int = 30
    #: polish only the batch elements (regions) with the lowest objectives, at most this many (None: all)
    polish_regions: int | None = None


def per_disjunct(y: Tensor, C: Tensor, d: Tensor, owner: np.ndarray, n_disjuncts: int) -> Tensor:
    """max over each disjunct's rows of ``C y - d``: y (b, r, n_out) -> (b, r, K)."""
    z = torch.einsum("bsn,brn->brs", C, y) - d[:, None, :]
    per = torch.full((*z.shape[:2], n_disjuncts), float("-inf"), dtype=z.dtype)
    own = torch.as_tensor(owner).expand_as(z)
    return per.scatter_reduce(2, own, z, reduce="amax", include_self=True)


def objective(y: Tensor, C: Tensor, d: Tensor, owner: np.ndarray, n_disjuncts: int) -> Tensor:
    """v(x) per point: y (b, r, n_out), C (b, s, n_out), d (b, s) -> (b, r)."""
    return per_disjunct(y, C, d, owner, n_disjuncts).amin(dim=2)


#: the step-size multipliers the PGD restarts cycle through (the long step first: with it first the
#: three binarised traffic-sign instances of the wild split were found in 7 of 9 seeded 30 s runs, 4 of 9
#: with the order 1, 5, 1/5)
STEP_SCALES = torch.tensor([5.0, 1.0, 0.2], dtype=torch.float64)

#: polishing needs the Jacobian of a disjunct's m rows (m copies of the input through the net) and an LP
#: with m x n coefficients: it is skipped above these sizes (a U-Net's per-pixel output constraints)
POLISH_MAX_ROWS = 64
POLISH_MAX_ENTRIES = 4_000_000

#: the time one chunk of the sampling phase should take (the overrun past a deadline is about one chunk)
SAMPLE_CHUNK_SECONDS = 0.25


def _compares_outputs(C: Tensor, d: Tensor) -> bool:
    """Is every row ``a (y_i - y_j) <= 0`` (one positive and one negative coefficient of the same
    size, ``d = 0``)? Then ``y -> log y`` keeps every row's sign on positive outputs."""
    if not bool((d == 0).all()):
        return False
    nz = (C != 0).sum(dim=-1)
    pos, neg = C.clamp(min=0).sum(dim=-1), (-C).clamp(min=0).sum(dim=-1)
    return bool(((nz == 2) & (pos == neg) & (pos > 0)).all())


def _polish_one(compared, C: Tensor, d: Tensor, owner: np.ndarray, n_dj: int, lo: Tensor, hi: Tensor,
                cands: Tensor, cfg: AttackConfig, deadline: float | None) -> tuple[Tensor, float]:
    """Polish each candidate (s, n) on its most promising disjunct (:func:`.polish.polish`);
    ``compared(x)``: the outputs (b, n_out) the rows compare (log space where the attack is). The
    best point and its objective."""
    own = torch.as_tensor(owner)
    best_x, best_v = cands[0], float("inf")
    for x in cands:
        with torch.no_grad():
            per = per_disjunct(compared(x[None])[None], C[None], d[None], owner, n_dj)[0, 0]
        sel = own == int(per.argmin())
        m = int(sel.sum())
        if m < 2 or m > POLISH_MAX_ROWS or m * x.numel() > POLISH_MAX_ENTRIES:
            continue  # one row: the LP is PGD's signed step (module polish); too many: m forward copies
        xk, vk = polish(lambda xb: compared(xb) @ C[sel].T - d[sel], lo, hi, x[None], cfg.polish_steps, deadline)
        if float(vk) < best_v:
            best_x, best_v = xk, float(vk)
        if best_v <= -cfg.target or (deadline is not None and time.monotonic() > deadline):
            break
    return best_x, best_v


def near_miss(v, d) -> bool | np.ndarray:
    """Is the attack's float64 objective ``v`` close enough to 0 (relative to the spec's constants
    ``d``) for the point to be worth confirming with onnxruntime?"""
    return v <= 1e-6 * (1 + float(np.abs(np.asarray(d)).max(initial=0)))


def lattice(free: Tensor, most: int) -> Tensor | None:
    """The points ``{0, 1/2, 1}^k`` of the ``k`` inputs free in any box of the batch (``free`` (b, n)), as
    fractions of the box (``lo + t (hi - lo)``; the others 0), when there are at most ``most`` of them:
    the vertices, the centres of the edges and faces and the centre, which random samples and gradient
    steps rarely reach exactly. ACAS Xu 1_9 prop_7's counterexample lies there (X_3 at its midpoint, the
    other inputs at bounds: input splitting had hit it among its first domains' candidates, until a
    tighter root bound sent the search elsewhere and the instance timed out). None: too many."""
    cols = torch.nonzero(free.any(dim=0)).flatten()
    k = int(cols.numel())
    if 3 ** k > most:
        return None
    levels = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    pts = torch.cartesian_prod(*([levels] * k)).reshape(-1, k) if k else torch.zeros(1, 0, dtype=torch.float64)
    out = torch.zeros(pts.shape[0], free.shape[1], dtype=torch.float64)
    out[:, cols] = pts
    return out


def attack(graph: Graph, inputs: InputSet, C: Tensor, d: Tensor, owner: np.ndarray,
           cfg: AttackConfig = AttackConfig(), deadline: float | None = None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Search each set of the batch for a violating point.

    Random samples (centre, vertices, uniform points; every point of :func:`lattice` on boxes of few
    free inputs) first; then PGD from the
    best samples and from random points, each restart aimed at one disjunct (a min
    over disjuncts only has gradient for the current best one; with more disjuncts
    than restarts, the most promising disjuncts, ranked by the samples' best value).
    Returns ``(x_best (b, n), v_best (b,))``: the best point found per batch
    element and its objective (<= 0 means a float64 counterexample candidate).
    """
    gen = torch.Generator().manual_seed(seed % 2**64)  # callers add offsets to seeds up to 2**64 - 1
    b, n = inputs.batch, inputs.n
    n_dj = int(owner.max()) + 1 if len(owner) else 1
    lo, hi = inputs.lower, inputs.upper
    C = torch.as_tensor(C, dtype=torch.float64)
    d = torch.as_tensor(d, dtype=torch.float64)
    if C.dim() == 2:
        C, d = C.expand(b, -1, -1), d.expand(b, -1)

    log_space = [False]

    def outputs(x: Tensor) -> Tensor:  # x (b, r, n) -> (b, r, n_out)
        return graph.forward(x.reshape(b * x.shape[1], n), surrogate=True).reshape(b, x.shape[1], -1)

    def in_log_space(y: Tensor) -> Tensor:
        return torch.log(y.clamp(min=1e-300)) if log_space[0] else y

    def violation(y: Tensor) -> Tensor:  # (b, r, n_out) -> (b, r, K)
        return per_disjunct(in_log_space(y), C, d, owner, n_dj)

    def evaluate(x: Tensor) -> Tensor:  # x (b, r, n) -> (b, r, K)
        return violation(outputs(x))

    def project(x: Tensor) -> Tensor:  # (b, r, n)
        if inputs.center is None:
            return torch.maximum(torch.minimum(x, hi[:, None]), lo[:, None])
        return torch.stack([inputs.project(x[:, j]) for j in range(x.shape[1])], dim=1)

    r = max(cfg.samples, 2)
    u = torch.rand(b, r, n, generator=gen, dtype=torch.float64)
    u[:, : r // 4] = torch.round(u[:, : r // 4])  # vertices
    grid = lattice(hi > lo, r // 2)
    if grid is not None:  # every corner, edge and face centre of a box of few free inputs
        u[:, r // 4: r // 4 + grid.shape[0]] = grid
    x = project(lo[:, None] + u * (hi - lo)[:, None])
    x[:, 0] = inputs.center if inputs.center is not None else (lo + hi) / 2
    with torch.no_grad():
        # the samples in chunks of about SAMPLE_CHUNK_SECONDS each (a U-Net's forward on 64 points takes
        # seconds), the deadline checked between them; at least the centre and one more point
        ys, s, chunk = [], 0, 2
        while s < r and not (s and deadline is not None and time.monotonic() > deadline):
            t = time.monotonic()
            ys.append(outputs(x[:, s:s + chunk]))
            s += ys[-1].shape[1]
            per_point = (time.monotonic() - t) / ys[-1].shape[1]
            chunk = int(min(64, max(1, SAMPLE_CHUNK_SECONDS / max(per_point, 1e-9))))
        y0 = torch.cat(ys, dim=1)
        x = x[:, :y0.shape[1]]
        # rows a (y_i - y_j) <= 0 on positive outputs (a final Softmax): the same sign in log space,
        # where a saturated softmax still has a gradient (the logits' margins)
        log_space[0] = _compares_outputs(C, d) and bool((y0 > 0).all())
        per0 = violation(y0)  # (b, r, K)
        v = per0.amin(dim=2)
    best_v, arg = v.min(dim=1)
    best_x = x[torch.arange(b), arg]
    if cfg.restarts <= 0 or cfg.steps <= 0:
        return best_x.numpy(), best_v.numpy()

    k = cfg.restarts
    order = v.argsort(dim=1)[:, : max(1, k // 2)]
    starts = torch.cat([x[torch.arange(b)[:, None], order],
                        lo[:, None] + torch.rand(b, k - order.shape[1], n, generator=gen, dtype=torch.float64)
                        * (hi - lo)[:, None]], dim=1)
    starts = project(starts)
    # restart j aims at disjunct j mod K; with more disjuncts than restarts ("any other class" specs,
    # K = classes - 1), at the (j mod K)-th most promising one (the samples' best value for it)
    if n_dj <= k:
        target = (torch.arange(k) % n_dj).expand(b, -1)
    else:
        target = per0.amin(dim=1).argsort(dim=1)[:, torch.arange(k) % n_dj]  # (b, k)
    if inputs.center is not None:
        step = (cfg.step_size * inputs.eps)[:, None, None] * torch.ones_like(starts)
    else:
        step = cfg.step_size * ((hi - lo) / 2)[:, None].expand_as(starts).clone()
    # restarts cycle through step sizes of 5, 1 and 1/5 times ``step_size``: a counterexample at a
    # vertex of the box needs a long way, one in a narrow valley short steps
    step = step * STEP_SCALES[torch.arange(k) % len(STEP_SCALES)][None, :, None]
    xs = starts.clone().requires_grad_(True)
    step_s = 0.0  # the last step's seconds: a step that would end past the deadline is not begun
    for it in range(cfg.steps):  # (one step of 36 restarts through a U-Net takes over a second)
        t_step = time.monotonic()
        if deadline is not None and t_step + step_s > deadline:
            break
        per = evaluate(xs)  # (b, k, K)
        val = per.amin(dim=2)
        aim = per.gather(2, target[:, :, None])[..., 0]
        # once a restart's own disjunct is met, keep pushing the overall objective
        loss = torch.where(aim > 0, aim, val)
        grad, = torch.autograd.grad(loss.sum(), xs)
        with torch.no_grad():
            vb, ab = val.min(dim=1)
            better = vb < best_v
            best_v = torch.where(better, vb, best_v)
            best_x = torch.where(better[:, None], xs[torch.arange(b), ab], best_x)
            if bool((best_v < -cfg.target).all()):
                break
            if inputs.center is not None and inputs.p == 2:
                g = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-30)
                nxt = xs - step * g
            else:
                nxt = xs - step * grad.sign()
            nxt = project(nxt)
            if it % 10 == 9:
                step = step * 0.6
        xs = nxt.detach().requires_grad_(True)
        step_s = time.monotonic() - t_step
    with torch.no_grad():  # the last step's points (a forward pass, about a third of a step)
        if deadline is not None and time.monotonic() + step_s / 3 > deadline:
            return best_x.numpy(), best_v.numpy()
        val = evaluate(xs.detach()).amin(dim=2)
        vb, ab = val.min(dim=1)
        better = vb < best_v
        best_v = torch.where(better, vb, best_v)
        best_x = torch.where(better[:, None], xs.detach()[torch.arange(b), ab], best_x)
    if cfg.polish > 0 and (inputs.center is None or inputs.p == float("inf")):
        order = val.argsort(dim=1)

        def compared(xb: Tensor) -> Tensor:  # (m, n) -> (m, n_out)
            return in_log_space(graph.forward(xb, surrogate=True))

        for i in best_v.argsort()[: cfg.polish_regions].tolist():
            if float(best_v[i]) <= -cfg.target:
                continue
            cands = torch.cat([best_x[i][None], xs.detach()[i, order[i, : cfg.polish - 1]]])
            x_i, v_i = _polish_one(compared, C[i], d[i], owner, n_dj, lo[i], hi[i], cands, cfg, deadline)
            if v_i < best_v[i]:
                best_x[i], best_v[i] = x_i, v_i
    return best_x.numpy(), best_v.numpy()
