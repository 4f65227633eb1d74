"""A linear map with few terms per output, stored row-wise as (index, weight) pairs.

``SparseLinear`` computes ``y_i = sum_j weight[i, j] x[index[i, j]]`` over the ``j`` with
``index[i, j] >= 0``: every row of the matrix holds at most ``k`` nonzeros. Linear and bilinear
Resize/Upsample lower to it (:mod:`certkit.onnx.converters.upsample`: ``k`` = 2 per interpolated
axis, nonnegative weights). The adjoint ``A M`` scatters ``A[..., i] weight[i, j]`` onto column
``index[i, j]`` (``index_add``, one pass per ``j``), so back-substitution stays as sparse as the
op; ``|M| r`` uses ``|weight|``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .ops import LinearOp, register_op

Tensor = torch.Tensor


@register_op
@dataclass(frozen=True, eq=False)
class SparseLinear(LinearOp):
    """``y_i = sum_j weight[i, j] x[index[i, j]]`` (entries with ``index < 0`` are absent)."""

    kind: ClassVar[str] = "sparse_linear"
    index: np.ndarray  # int64 (n_out, k)
    weight: np.ndarray  # float64 (n_out, k), 0 where index < 0
    n_in: int
    #: Relative error of the weights as the runtime holds them (onnxruntime computes
    #: interpolation weights in float32, whatever the model's precision): the floating-point
    #: model charges ``weight_error |W| |x|`` on top of the rounding of the sums.
    weight_error: float = 0.0

    def _parts(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(index with 0 for absent entries, weight, |weight|) as tensors."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (like.dtype, like.device)
        if key not in cache:
            valid = self.index >= 0
            w = torch.as_tensor(np.where(valid, self.weight, 0.0), dtype=like.dtype, device=like.device)
            idx = torch.as_tensor(np.where(valid, self.index, 0), device=like.device)
            cache[key] = (idx, w, w.abs())
        return cache[key]

    @property
    def fan_in(self) -> int:
        """The most terms summed into one output."""
        return int((self.index >= 0).sum(axis=1).max(initial=0))

    def _gather(self, x: Tensor, w: Tensor, idx: Tensor) -> Tensor:
        y = x[..., idx[:, 0]] * w[:, 0]
        for j in range(1, idx.shape[1]):
            y = y + x[..., idx[:, j]] * w[:, j]
        return y

    def apply(self, x: Tensor) -> Tensor:
        idx, w, _ = self._parts(x)
        return self._gather(x, w, idx)

    def apply_abs(self, r: Tensor) -> Tensor:
        idx, _, wa = self._parts(r)
        return self._gather(r, wa, idx)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        idx, w, _ = self._parts(A)
        out = A.new_zeros(*A.shape[:-1], self.n_in)
        for j in range(idx.shape[1]):
            out.index_add_(A.dim() - 1, idx[:, j], A * w[:, j])
        return (out,)

    def abs_row_col_sums(self) -> tuple[float, float]:
        """The largest absolute row sum (``||M||_inf``) and column sum (``||M||_1``), exactly
        (up to float64 rounding of the sums)."""
        valid = self.index >= 0
        wa = np.where(valid, np.abs(self.weight), 0.0)
        rows = float(wa.sum(axis=1).max(initial=0.0))
        cols = float(np.bincount(self.index[valid], wa[valid], minlength=self.n_in).max(initial=0.0))
        return rows, cols

    def norm2_upper(self) -> float:
        """``||M||_2 <= sqrt(||M||_1 ||M||_inf)`` (Schur), with a relative safety of 1e-9."""
        rows, cols = self.abs_row_col_sums()
        return float(np.sqrt(rows * cols)) * (1 + 1e-9)

    def matrix(self):
        """The matrix as a ``scipy.sparse.csr_matrix`` (n_out, n_in) (duplicates summed)."""
        import scipy.sparse as sp

        valid = self.index >= 0
        rows = np.broadcast_to(np.arange(self.index.shape[0])[:, None], self.index.shape)
        return sp.csr_matrix((self.weight[valid], (rows[valid], self.index[valid])),
                             shape=(self.index.shape[0], self.n_in))
