"""ABBA structure of linear ops and the per-layer convolutional bound (paper 000, section 3).

An ABBA matrix is ``M = [[A, B], [B, A]]`` (paper 000, eq. 7), with sum matrix
``S(M) = A + B``. With ``Q = (1/sqrt 2)[[I, I], [I, -I]]``, ``Q^T M Q = diag(A + B, A - B)``;
for ``A, B >= 0`` this gives ``||M||_2 = ||A + B||_2`` (property (i)), and products of ABBA
matrices are ABBA with multiplied sum matrices, so ``||M_m ... M_1||_2 = ||S(M_m) ... S(M_1)||_2``
(DESIGN.md section 4). A convolution is ABBA when its kernel is, channel-block-wise
(paper 000, eq. 15).
"""
from __future__ import annotations

import numpy as np

from ..graph.ops import Conv, Dense, LinearOp


def abba_blocks(op: LinearOp, rtol: float = 1e-7) -> tuple[np.ndarray, np.ndarray] | str:
    """``(A, B)`` of an ABBA Dense/Conv op (kernel blocks for Conv), or the reason it is not one."""
    if isinstance(op, Dense):
        w = np.asarray(op.weight)
    elif isinstance(op, Conv):
        if op.groups != 1:
            if op.groups == op.weight.shape[0] == op.in_shape[0]:  # depthwise: channel c and c + C/2 alike
                h = op.groups // 2
                w = op.weight
                if op.groups % 2 == 0 and np.allclose(w[:h], w[h:], rtol=rtol, atol=0):
                    return w[:h], np.zeros_like(w[:h])
                return "a depthwise kernel that differs between the two halves"
            return f"a grouped convolution (groups={op.groups})"
        w = np.asarray(op.weight)
    else:
        return f"not a dense or convolutional layer ({op.kind})"
    r, c = w.shape[:2]
    if r % 2 or c % 2:
        return f"odd size {r} x {c}"
    a, b = r // 2, c // 2
    A, B = w[:a, :b], w[:a, b:]
    tol = rtol * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    for blk, ref, where in ((w[a:, b:], A, "bottom-right block differs from the top-left (A)"),
                            (w[a:, :b], B, "bottom-left block differs from the top-right (B)")):
        bad = np.argwhere(np.abs(blk - ref) > tol)
        if bad.size:
            return where + f" at {tuple(int(i) for i in bad[0])}"
    return A, B


def eq19_layer_bound(op: Conv, A: np.ndarray, B: np.ndarray) -> float:
    """Paper 000, eq. 19 for one nonnegative ABBA convolution: with ``S = A + B`` and
    ``Omega^(j)`` the sum of the taps of polyphase component ``j`` (stride ``s``),
    ``sqrt(|| sum_j Omega^(j) Omega^(j)^T ||_2)``. For stride 1 this is ``||sum of taps||_2``."""
    S = np.asarray(A, np.float64) + np.asarray(B, np.float64)
    sh, sw = op.strides
    dh, dw = op.dilations
    kh, kw = S.shape[2:]
    total = np.zeros((S.shape[0], S.shape[0]))
    for jh in range(sh):
        for jw in range(sw):
            taps = [(u, v) for u in range(kh) for v in range(kw) if (u * dh) % sh == jh and (v * dw) % sw == jw]
            if not taps:
                continue
            om = sum(S[:, :, u, v] for u, v in taps)
            total += om @ om.T
    return float(np.sqrt(np.linalg.eigvalsh(total)[-1])) * (1 + 1e-9)
