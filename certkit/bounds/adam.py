"""Adam (Kingma and Ba, 2015) for the slope and multiplier optimisation of alpha- and beta-CROWN.

The same update as ``torch.optim.Adam`` with its defaults (no weight decay, no amsgrad), written out
because ``torch.optim``'s first step imports ``torch._dynamo``: 0.7-0.9 s in every process that
reaches alpha-CROWN (measured with ``python -X importtime``), which is a third of the wall time of
an easy ACAS Xu instance run as VNN-COMP runs it (``benchmarks/startup.py``).

The update runs as torch's fused Adam kernel (``torch._fused_adam_``, the one behind
``torch.optim.Adam(fused=True)``; no import of ``torch.optim``) on the contiguous parameters of one
dtype: 6x faster than the six elementwise passes of the written-out update on 3.6M floats, which
were 18% of the branch-and-bound time on oval21's cifar_wide_kw (profile, 2026-12-06). The written-out
update stays for what the kernel does not take (another layout, a torch without the op).
"""
from __future__ import annotations

import torch


class Adam:
    """``Adam([params] or [{"params": [...], "lr": lr}, ...], lr)``: ``zero_grad()``, ``step()``.
    ``decay``: every step multiplies the learning rates by it after the update (``torch.optim``'s
    ``ExponentialLR`` stepped once per step; 1.0: constant)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, decay: float = 1.0) -> None:
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.groups = [{"params": list(g["params"]), "lr": g.get("lr", lr)} for g in groups]
        self.betas, self.eps, self.t, self.decay = betas, eps, 0, decay
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for g in self.groups:
            fused: dict[torch.dtype, list] = {}
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
                if _FUSED and _fusable(p, p.grad, m, v):
                    fused.setdefault(p.dtype, []).append((p, p.grad, m, v))
                    continue
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v.sqrt() / c2 ** 0.5).add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] / c1)
            for dtype, group in fused.items():
                ps, gs, ms, vs = (list(t) for t in zip(*group))
                step = torch.tensor(float(self.t), dtype=torch.float32)
                torch._fused_adam_(ps, gs, ms, vs, [], [step] * len(ps), lr=g["lr"], beta1=b1, beta2=b2,
                                   weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
            g["lr"] *= self.decay


#: torch's fused Adam kernel (CPU since torch 2.4)
_FUSED = hasattr(torch, "_fused_adam_")


def _fusable(p: torch.Tensor, *others: torch.Tensor) -> bool:
    """Does the fused kernel take ``p`` with its gradient and moments: on the CPU, floating point,
    all of ``p``'s dtype and shape, contiguous?"""
    return p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) and p.is_contiguous() and all(
        t.dtype == p.dtype and t.shape == p.shape and t.is_contiguous() for t in others)
