"""The transposed 2-D convolution (ONNX ConvTranspose) as an IR linear op.

``ConvTranspose`` with input ``x`` of shape (1, C_in, H, W) and kernel ``w`` of shape
(C_in, C_out / groups, kh, kw) computes the *full* transposed convolution

    z[o, s_h i + d_h p, s_w j + d_w q] += w[c, o', p, q] x[c, i, j]      (o = group(c) C_out/g + o')

of size ``F_h = (H - 1) s_h + d_h (kh - 1) + 1`` (likewise ``F_w``), then moves its window: the
output is ``y = z[t : t + H_out, l : l + W_out]`` with zeros where the window leaves ``z`` (the
``output_padding`` rows at the end, or an ``output_shape`` larger than ``F``), plus the bias of
the output channel. ``t``, ``l`` are the begin pads (ONNX ``pads``, or those ``auto_pad`` /
``output_shape`` imply, as onnxruntime computes them: :mod:`certkit.onnx.converters.conv_transpose`).

The map is linear in ``x``. Its adjoint (back-substitution, ``A M``) is the adjoint of the
crop -- placing the coefficients of ``y`` into a zero array of the size of ``z`` -- followed by
the adjoint of the full transposed convolution, which is the ordinary convolution ``conv2d`` of
the coefficients with the same kernel, stride and dilation (auto_LiRPA's ``BoundConvTranspose``
uses the same identity): back-substitution never forms a dense matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .ops import LinearOp, _split_weights, nonzero_fan_in, register_op

Tensor = torch.Tensor


@register_op
@dataclass(frozen=True, eq=False)
class ConvTranspose(LinearOp):
    """2-D transposed convolution on an input of shape (1, C_in, H, W) (see the module docstring).

    ``begin`` = (t, l) is the offset of the output window in the full result ``z``; the output
    size is ``out_shape[1:]``.
    """

    kind: ClassVar[str] = "conv_transpose"
    weight: np.ndarray  # (C_in, C_out / groups, kh, kw)
    bias: np.ndarray | None  # (C_out,)
    in_shape: tuple[int, int, int]  # (C_in, H, W)
    out_shape: tuple[int, int, int]  # (C_out, H_out, W_out)
    strides: tuple[int, int] = (1, 1)
    begin: tuple[int, int] = (0, 0)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1
    #: Floating-point bookkeeping of elementwise affine ops fused into this one
    #: (:mod:`certkit.bounds.fperror`), as for :class:`~certkit.graph.ops.Conv`.
    fp_extra: int = 0
    fp_bias: np.ndarray | None = None

    # -- geometry ----------------------------------------------------------------
    @property
    def full_hw(self) -> tuple[int, int]:
        """``(F_h, F_w)``: the size of the full transposed convolution."""
        _, H, W = self.in_shape
        kh, kw = self.weight.shape[2:]
        (sh, sw), (dh, dw) = self.strides, self.dilations
        return (H - 1) * sh + dh * (kh - 1) + 1, (W - 1) * sw + dw * (kw - 1) + 1

    def _window(self) -> tuple[int, int, int, int]:
        """``F.pad`` amounts (left, right, top, bottom) taking ``z`` to the output window (negative
        amounts crop)."""
        Fh, Fw = self.full_hw
        t, l = self.begin
        Ho, Wo = self.out_shape[1:]
        return -l, Wo + l - Fw, -t, Ho + t - Fh

    @property
    def fan_in(self) -> int:
        """An upper bound on the number of nonzero products summed into one output (the floating-point
        error model, :func:`~certkit.graph.ops.nonzero_fan_in`). Along a dimension of stride ``s`` and
        dilation ``d``, tap ``p`` reaches output ``o`` from input ``i`` when ``s i + d p = o``, so the
        taps reaching ``o`` are those with ``d p = o (mod s)``: one residue class. The count is the
        most nonzero kernel entries of one output channel, over one group's input channels, in one
        class per dimension (2 x 2 of a 4 x 4 kernel at stride 2). The other taps' products are
        structural zeros: however an implementation forms the sum (onnxruntime: a Gemm over the input
        channels, then col2im adding the columns that reach each output), adding an exact zero
        rounds nothing."""
        return nonzero_fan_in(self, self._class_counts)

    def _class_counts(self, nz: np.ndarray) -> np.ndarray:
        """Nonzero entries of ``nz`` (C_in, C_out / groups, kh, kw) per (group, output channel, residue
        class of the rows' taps, of the columns' taps)."""
        cin, cog, kh, kw = nz.shape
        per = nz.reshape(self.groups, cin // self.groups, cog, kh, kw).sum(axis=1)  # (g, cog, kh, kw)
        (sh, sw), (dh, dw) = self.strides, self.dilations
        rh, rw = (dh * np.arange(kh)) % sh, (dw * np.arange(kw)) % sw
        return np.stack([per[:, :, rh == a][:, :, :, rw == c].sum(axis=(2, 3))
                         for a in np.unique(rh) for c in np.unique(rw)])

    # -- weights -------------------------------------------------------------------
    def _w(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cache = self.__dict__.setdefault("_cache", {})
        key = (like.dtype, like.device)
        if key not in cache:
            w = torch.as_tensor(self.weight, dtype=like.dtype, device=like.device)
            cache[key] = (w, w.abs())
        return cache[key]

    def _convt(self, x: Tensor, w: Tensor) -> Tensor:
        b = x.shape[0]
        z = F.conv_transpose2d(x.reshape(b, *self.in_shape), w, None, self.strides, 0, 0, self.groups,
                               self.dilations)
        window = self._window()
        if any(window):
            z = F.pad(z, window)
        return z.reshape(b, -1)

    # -- LinearOp ----------------------------------------------------------------------
    def apply(self, x: Tensor) -> Tensor:
        return self._convt(x, self._w(x)[0])

    def apply_abs(self, r: Tensor) -> Tensor:
        return self._convt(r, self._w(r)[1])

    def apply_split(self, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """As :meth:`certkit.graph.ops.Dense.apply_split`, with the kernel split by sign."""
        wp, wn = _split_weights(self, pos)
        return self._convt(pos, wp) + self._convt(neg, wn), self._convt(neg, wp) + self._convt(pos, wn)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        w, _ = self._w(A)
        bsz, s = A.shape[:2]
        a = A.reshape(bsz * s, *self.out_shape)
        l, r, t, bo = self._window()
        if any((l, r, t, bo)):
            a = F.pad(a, (-l, -r, -t, -bo))  # the adjoint of the window: back to the size of z
        x = F.conv2d(a, w, None, self.strides, 0, self.dilations, self.groups)
        return (x.reshape(bsz, s, -1),)

    def bias_vector(self) -> np.ndarray | None:
        if self.bias is None:
            return None
        Ho, Wo = self.out_shape[1:]
        return np.repeat(self.bias, Ho * Wo)

    # -- norms ------------------------------------------------------------------------
    def abs_row_col_sums(self) -> tuple[float, float]:
        """Upper bounds on the largest absolute row sum (``||M||_inf``) and column sum
        (``||M||_1``) of the matrix: an output sums at most the kernel entries of its output
        channel over the group's input channels, an input reaches at most every entry of its
        own kernel slice (the window only drops rows)."""
        w = np.abs(np.asarray(self.weight, np.float64))  # (C_in, C_out/g, kh, kw)
        g = self.groups
        cin_g = w.shape[0] // g
        per = w.sum(axis=(2, 3))  # (C_in, C_out/g)
        rows = max(float(per[k * cin_g:(k + 1) * cin_g].sum(axis=0).max(initial=0.0)) for k in range(g))
        cols = float(w.sum(axis=(1, 2, 3)).max(initial=0.0))
        return rows, cols

    def norm2_upper(self) -> float:
        """``||M||_2 <= sqrt(||M||_1 ||M||_inf)`` (Schur), with a relative safety of 1e-9."""
        rows, cols = self.abs_row_col_sums()
        return float(np.sqrt(rows * cols)) * (1 + 1e-9)

    def then_scale(self, a: np.ndarray, c: np.ndarray | None) -> "ConvTranspose | None":
        """``a * self(x) + c`` as one transposed convolution when ``a`` and ``c`` (flat, length
        n_out) are constant per output channel (a BatchNormalization after it); else None."""
        C, Ho, Wo = self.out_shape
        a2 = np.asarray(a, np.float64).reshape(C, Ho * Wo)
        c2 = np.zeros((C, Ho * Wo)) if c is None else np.asarray(c, np.float64).reshape(C, Ho * Wo)
        if not ((a2 == a2[:, :1]).all() and (c2 == c2[:, :1]).all()):
            return None
        a1, c1 = a2[:, 0], c2[:, 0]
        cin, cout_g = self.weight.shape[:2]
        # output channel of weight[i, j]: group(i) * C_out/g + j
        ch = (np.arange(cin)[:, None] // (cin // self.groups)) * cout_g + np.arange(cout_g)[None, :]
        w = self.weight * a1[ch][:, :, None, None]
        b = c1 + a1 * (0 if self.bias is None else self.bias)
        return ConvTranspose(w, b, self.in_shape, self.out_shape, self.strides, self.begin, self.dilations,
                             self.groups)
