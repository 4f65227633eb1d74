"""Structured linear layers: nonnegative and ABBA dense/convolutional layers (paper 000).

Constraints are kept by *projection after each optimiser step* (call
:func:`project` on the model), so that the forward pass is a plain
``F.linear``/``F.conv2d`` with the stored weight: the ONNX export is then a
plain Gemm/Conv whose weights certkit can check (``W >= 0``, ABBA blocks).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def _uniform_(t: Tensor, fan_in: int, low: float = 0.0) -> None:
    """Kaiming-like uniform init scaled for nonnegative weights (mean-preserving fan-in)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        t.uniform_(low * bound, bound)


class NonnegLinear(nn.Linear):
    """``y = W x + b`` with ``W >= 0`` elementwise (paper 000, Prop. 2.1; paper 001).

    ``nonneg_bias`` also keeps ``b >= 0`` (weak scalability in paper 001 needs it).
    ``max_norm``: spectral normalisation in the forward pass, the effective weight is
    ``W min(1, max_norm / ||W||_2)`` (paper 001's "spectral" nets; trains far better than
    rescaling after each step); the export stores the effective weight.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 nonneg_bias: bool = False, max_norm: float | None = None) -> None:
        super().__init__(in_features, out_features, bias)
        self.nonneg_bias = nonneg_bias
        self.max_norm = max_norm
        _uniform_(self.weight, in_features)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()
        self.project_()

    def effective_weight(self) -> Tensor:
        if self.max_norm is None:
            return self.weight
        n = torch.linalg.matrix_norm(self.weight, ord=2)
        return self.weight * torch.clamp(self.max_norm / n.clamp(min=1e-30), max=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def project_(self) -> None:
        self.weight.clamp_(min=0.0)
        if self.nonneg_bias and self.bias is not None:
            self.bias.clamp_(min=0.0)


class NonnegConv2d(nn.Conv2d):
    """A convolution with a nonnegative kernel (paper 000, eq. 16)."""

    def __init__(self, *args, nonneg_bias: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nonneg_bias = nonneg_bias
        fan_in = self.weight[0].numel()
        _uniform_(self.weight, fan_in)
        self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        self.weight.clamp_(min=0.0)
        if self.nonneg_bias and self.bias is not None:
            self.bias.clamp_(min=0.0)


def abba_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``[[A, B], [B, A]]`` (paper 000, Definition 3.1); works for dense and conv kernels
    (blocks along the first two axes)."""
    return torch.cat([torch.cat([a, b], 1), torch.cat([b, a], 1)], 0)


class ABBALinear(nn.Module):
    """An ABBA dense layer ``R^(2 n_in) -> R^(2 n_out)`` with ``A, B >= 0`` (paper 000, eq. 10).

    The state is ``[x; z]`` (top and bottom halves). ``weight`` is the full ABBA matrix;
    ``S = A + B`` is the matrix whose norm bounds the layer (paper 000, eq. 17).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.A = nn.Parameter(torch.empty(out_features, in_features))
        self.B = nn.Parameter(torch.empty(out_features, in_features))
        _uniform_(self.A, 2 * in_features)
        _uniform_(self.B, 2 * in_features)
        self.bias = nn.Parameter(torch.zeros(2 * out_features)) if bias else None

    @property
    def weight(self) -> Tensor:
        return abba_matrix(self.A, self.B)

    def sum_matrix(self) -> Tensor:
        """``S(W) = A + B`` (paper 000, eq. 17)."""
        return self.A + self.B

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def project_(self) -> None:
        self.A.clamp_(min=0.0)
        self.B.clamp_(min=0.0)

    @torch.no_grad()
    def limit_norm_(self, radius: float) -> float:
        """Rescale ``(A, B)`` so that ``||A + B||_2 <= radius``; returns the norm before.

        A positive rescaling keeps the layer nonnegative and ABBA; with ``A, B >= 0``,
        ``||[[A, B], [B, A]]||_2 = ||A + B||_2`` (DESIGN.md section 4)."""
        n = float(torch.linalg.matrix_norm(self.sum_matrix(), ord=2))
        if n > radius:
            self.A.mul_(radius / n)
            self.B.mul_(radius / n)
        return n

    def extra_repr(self) -> str:
        return f"in={2 * self.in_features}, out={2 * self.out_features} (ABBA)"


class ABBAConv2d(nn.Module):
    """An ABBA convolution: ``2 c_in`` -> ``2 c_out`` channels, kernel ``[[A, B], [B, A]]``
    over the (top, bottom) channel halves with ``A, B >= 0`` (paper 000, eqs. 13-16)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.A = nn.Parameter(torch.empty(shape))
        self.B = nn.Parameter(torch.empty(shape))
        fan_in = 2 * in_channels * kernel_size * kernel_size
        _uniform_(self.A, fan_in)
        _uniform_(self.B, fan_in)
        self.bias = nn.Parameter(torch.zeros(2 * out_channels)) if bias else None

    @property
    def weight(self) -> Tensor:
        return abba_matrix(self.A, self.B)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    @torch.no_grad()
    def project_(self) -> None:
        self.A.clamp_(min=0.0)
        self.B.clamp_(min=0.0)


class SignedDoubling(nn.Module):
    """``x -> [x; -x]`` along ``dim`` (paper 000, eq. 9, W_0 = [I; -I])."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, -x], self.dim)


class Halving(nn.Module):
    """``[y1; y2] -> (y1 - y2) / 2`` along ``dim`` (paper 000, eq. 9, W_{m+1} = [I, -I] / 2)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        y1, y2 = x.chunk(2, self.dim)
        return (y1 - y2) / 2


class AOLLinear(nn.Linear):
    """A 1-Lipschitz dense layer by AOL rescaling: ``W D`` with
    ``D_jj = (sum_i |W^T W|_ij)^(-1/2)`` (Prach and Lampert 2022; the layer used with
    N-activations in paper 004). ``||W D||_2 <= 1`` for every ``W``."""

    def effective_weight(self) -> Tensor:
        g = (self.weight.T @ self.weight).abs().sum(0)
        return self.weight * torch.rsqrt(g.clamp(min=1e-12))[None, :]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def project(model: nn.Module) -> None:
    """Apply every ``project_`` of ``model``'s submodules (call after each optimiser step)."""
    for m in model.modules():
        if hasattr(m, "project_"):
            m.project_()
