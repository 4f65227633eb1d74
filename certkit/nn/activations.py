"""Activations from the papers as PyTorch modules, written so that ``torch.onnx.export``
produces the ONNX patterns certkit recognises (DESIGN.md section 5).
"""
from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


def _channel_view(t: Tensor, x: Tensor, dim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast along axis ``dim`` of ``x``."""
    shape = [1] * x.dim()
    shape[dim] = -1
    return t.reshape(shape)


class NActivation(nn.Module):
    """The N-activation (paper 004): per channel, with ``t1 <= t2``,
    ``N(x) = x - 2 clip(x, t1, t2)`` -- slopes +1, -1, +1, 1-Lipschitz, not monotone.

    The two learnt thresholds are sorted in the forward pass, so any parameter values
    are valid. Exports as ``Sub(x, Mul(Max(Min(x, t2), t1), 2))``.
    """

    def __init__(self, num_channels: int, dim: int = 1, init: float = 0.5) -> None:
        super().__init__()
        self.dim = dim
        g = torch.Generator().manual_seed(num_channels)
        self.theta1 = nn.Parameter(-init * torch.rand(num_channels, generator=g))
        self.theta2 = nn.Parameter(init * torch.rand(num_channels, generator=g))

    def thresholds(self) -> tuple[Tensor, Tensor]:
        return torch.minimum(self.theta1, self.theta2), torch.maximum(self.theta1, self.theta2)

    def forward(self, x: Tensor) -> Tensor:
        t1, t2 = self.thresholds()
        t1, t2 = _channel_view(t1, x, self.dim), _channel_view(t2, x, self.dim)
        return x - torch.maximum(torch.minimum(x, t2), t1) * 2.0


class MaxMin(nn.Module):
    """MaxMin / GroupSort(2) (Anil et al. 2019; paper 004): the channels along ``dim`` are
    split in halves ``(a, b)`` and mapped to ``(max(a, b), min(a, b))``. A permutation of the
    input, so 1-Lipschitz in L2, and gradient-norm preserving."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, self.dim)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], self.dim)


class CappedLeakyReLU(nn.Module):
    """Capped symmetric leaky ReLU (paper 000, eq. 20):
    ``f(x) = alpha x + (1 - alpha) clip(x, -beta, beta)``; odd, slopes ``{alpha, 1}``."""

    def __init__(self, alpha: float = 0.1, beta: float = 1.0) -> None:
        super().__init__()
        if not (0.0 <= alpha < 1.0 and beta > 0.0):
            raise ValueError("CappedLeakyReLU needs 0 <= alpha < 1 and beta > 0")
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha * x + (1.0 - self.alpha) * torch.clamp(x, -self.beta, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"
