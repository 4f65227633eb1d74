"""The floating-point error rule of :class:`~certkit.graph.rounding.KernelRounding`, and the budgets
of the fused onnxruntime kernels it stands for (the contract is :mod:`certkit.bounds.fperror`'s).

**Softmax** (MLAS ``MlasComputeSoftmax``, float32; ``u = 2^-24``, ``n`` the row length): with
``m = max_j x_j`` (exact), onnxruntime computes ``d_j = fl(x_j - m)``, ``e_j = EXP(d_j)`` (a polynomial
kernel, within ``K u`` relative, ``K = 2 SOFTMAX_EXP_ULPS``, and ``2 tiny`` absolute: it clamps
``d_j`` at -88.38), ``s = sum_j e_j`` in any order, and ``y_i = fl(e_i fl(1 / s))``. Write
``w_j = exp(x_j - m) = e^{-t_j}``, ``W = sum w_j >= 1`` and the exact ``y_i = w_i / W``. Then
``e_j = w_j (1 + a_j) + eta_j`` with ``w_j |a_j| <= w_j (K u + u t_j)(1 + 1e-4)`` (the rounding of
``d_j`` perturbs the exponent by ``u t_j``; for ``t_j > 1000`` both sides are below ``1e-400``) and
``|eta_j| <= 2 tiny``; ``s = W (1 + beta) + H`` with ``|beta| <= sum_j y_j (|a_j| + gamma_{n-1}) <=
(K + ln n + n - 1) u (1 + 1e-4)``, since ``sum_j y_j t_j <= sum_j -y_j ln y_j <= ln n`` (``t_j <= -ln
y_j`` as ``W >= 1``), and ``|H| <= 2.1 n tiny``. With ``y_i t_i <= t_i e^{-t_i} <= 1/e``,

    |y^_i - y_i| <= F u [(2K + n + ln n + 1) |y_i| + 1/e] + (3n + 4) tiny,    F = 1.0003 / (1 - B),

``B = (K + ln n + n) u`` (two roundings of the output, one of the reciprocal; an underflowing
product adds ``tiny``). Measured (tests/test_products.py, random rows of 2 to 1000 logits at scales
0.1 to 1e5, ties, offsets of 1e4): the coefficient of ``|y|`` never exceeded 6.2 (n = 1000; 3.2 at
n = 17) against the budget's 2K + n + ln n + 1 = 101 at n = 17.

**LayerNormalization** (``LayerNormImpl``; also what onnxruntime's LayerNormFusion turns a
decomposed ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div pattern into): the variance is
``fl(fl(sum x_h^2) / n - fl(mean^ mean^))`` -- ``E[x^2] - mean^2``, not a centred sum. Against the
IR's ``mean(c^2)`` over the computed centred values ``c = fl(x - mean^)``, the difference is at most
``(3n + 6) u M2 (1 + 1e-6) + (2n + 4) tiny`` with ``M2 = mean(x^2)``: ``gamma_{n+1} M2`` for the sum
of squares, ``(2 gamma_n + u) M2`` for ``mean^2`` (``|mean^ - mean| <= gamma_n mean|x|``), ``2u M2``
for the subtraction and the roundings of ``c``, plus ``(mean - mean^)^2 <= gamma_n^2 M2``. When the
mean dominates (``M2 >> var``) this exceeds the variance itself: the variance's bounds then reach
below ``-eps`` and the square root's bounds become infinite, as onnxruntime may give NaN there.
"""
from __future__ import annotations

import math

import torch

from ..graph.rounding import KernelRounding
from ..tolerances import SOFTMAX_EXP_ULPS
from .fperror import Precision, fp_error, magnitude

Tensor = torch.Tensor
U32 = 2.0 ** -24


@fp_error(KernelRounding)
def _kernel(op: KernelRounding, ins, mag_out: Tensor | None, p: Precision):
    m1 = magnitude(*ins[0], p)
    m2 = magnitude(*ins[1], p)
    b, n_out = m1.shape
    g = m2.reshape(b, -1, op.group)
    model = p.u * (op.rel * m1 + op.absolute) + op.tinies * p.tiny
    if op.ref_sq:
        ms = (g * g).mean(-1)
        model = model + p.u * op.ref_sq * op.group_to_output(ms, n_out)
    finite = op.group_to_output((g <= p.max).all(-1).to(m1.dtype), n_out) > 0
    model = torch.where(finite, model, torch.full_like(model, float("inf")))
    return model, 4.0 * m1


def softmax_budget(n: int, clip_gap: float) -> dict:
    """``rel``, ``absolute``, ``tinies`` of :class:`KernelRounding` for a Softmax over ``n`` values in
    float32 (module docstring); ``clip_gap`` bounds ``|IR form - softmax|`` (the clamp of the logit
    differences), charged in units of ``u``."""
    K = 2.0 * SOFTMAX_EXP_ULPS
    B = (K + math.log(n) + n) * U32
    if B >= 0.01:
        raise ValueError(f"Softmax over {n} values: the error analysis needs n u < 0.01")
    F = 1.0003 / (1.0 - B)
    return {"rel": F * (2 * K + n + math.log(n) + 1), "absolute": F / math.e + clip_gap / U32,
            "tinies": 3.0 * n + 4.0}


def layernorm_budget(n: int) -> dict:
    """The variance budget of :class:`KernelRounding` for a LayerNormalization over ``n`` values."""
    return {"rel": 0.0, "absolute": 0.0, "tinies": 2.0 * n + 4.0, "ref_sq": (3.0 * n + 6.0) * (1 + 1e-6)}
