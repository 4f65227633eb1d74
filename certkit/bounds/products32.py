"""Back-substitution's matrix products in float32, with their rounding charged (issues 11 and 12).

The costly step of DeepPoly/CROWN is ``A_j = A_i M_i``: the coefficients reaching an affine node
``i`` (Dense, Conv, ConvTranspose) times its matrix, a GEMM or an adjoint convolution. torch's
float64 ``conv_transpose2d`` on the CPU was 6x slower than float32's (oneDNN) on a 3x3, 32-channel
layer of 512 rows of 16x16, a float64 GEMM 2x (one thread, this project's machines). With the *arithmetic* ``float32`` these products are computed from the float32 roundings
of ``A_i`` and ``M_i``; everything else (intercepts, the running constant, relaxations, the
concretisation over the input set) stays in float64.

Soundness. The lower bound of a row only needs ``A_i y_i >= Â_j y_j + ...`` for the *computed*
``Â_j`` (any coefficients may go on; the next steps are charged against the ones held). With ``c``
a fixed point (the centre of the bounds of ``y_j`` at hand) and ``r`` the radius about it,

    A_i M_i y_j = Â_j y_j + (A_i M_i - Â_j) c + (A_i M_i - Â_j) (y_j - c)
               >= Â_j y_j + [A_i (M_i c) - Â_j c] - |A_i M_i - Â_j| r.

The bracket is computed in float64 (two matrix-vector products, :meth:`ProductCharge.bracket`) and
added to the constant: the float32 error is charged on the *width* of the bounds, not on the
magnitude of the values (relative to the magnitude it swamped cifar_biasfield's bounds). Each
entry of ``Â_j`` is a sum of ``K`` products (``K`` = :func:`adjoint_terms`, the most entries of
``A_i``'s row that meet one column of ``M_i``), formed from ``a' = fl32(a)`` and ``m' = fl32(m)``
in any order, FMA or not. In the standard model with underflow (``fl(x) = x (1 + d) + e``,
``|d| <= u = 2^-24``, ``|e| <= tau = 2^-126``, which also covers a denormal flushed to zero) every
product term carries at most three relative roundings and the sum ``K`` more, so (Higham, ch. 3)

    |Â_j - A_i M_i|_rc <= gamma_{K+3} sum_k |a_rk| |m_kc| + 2 tau sum_k (|a_rk| + |m_kc| + 2).

Multiplied by ``r_c`` and summed over ``c``: the first part is ``sum_k |a_rk| gamma_{K+3}
(|M_i| r)_k``, a per-neuron error of node ``i`` charged through ``|A_i|`` like every other
(:class:`ProductCharge`'s ``per_neuron``, which also takes ``2 tau ||r||_1`` for the ``|a_rk|``
part and ``gamma_{n+3}(2^-53)`` of ``|M_i| |c|`` per product of the bracket, twice over for its
three float64 products); the rest is at most ``2 tau ||r||_1 K (max |M_i| + 2)``, the same for
every row (``floor``), subtracted from the constant wherever a float32 product is formed. All are
computed in float64 and enlarged by :data:`PRODUCT_SAFETY` for it. An overflow in float32 leaves
an infinity or NaN in the product; it is then recomputed in float64 (:func:`product`), without
the bracket, and the charge is harmless.

Assumptions, stated and tested (tests/test_products32.py): torch's float32 GEMM and oneDNN's
float32 (transposed) convolutions round to nearest with float32 accumulation -- no TF32/bfloat16
(``torch.get_float32_matmul_precision() == "highest"``, checked at every decision) and no
Winograd/FFT convolution (certkit's calls are direct convolutions; the test feeds cancelling sums
and compares with float64 against the bound above).

``arithmetic`` (``graph.meta["arithmetic"]``, :func:`with_arithmetic`; ``--arithmetic`` on the
command line): ``float64`` everywhere, ``float32`` for every Dense/Conv/ConvTranspose product,
``auto`` (the default), for a float32 model, for the convolutions of at least :data:`AUTO_CONV_MACS`
multiply-adds per row and the Dense layers of at least :data:`AUTO_DENSE_WEIGHTS` weights, where it
pays (``benchmarks/deeppoly_speed.py --conv``); float64 for a float64 model (whose own rounding is 2^29
times finer) and for real arithmetic (precision ``exact``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..graph import ops
from ..graph.graph import Graph
from ..tolerances import U64, gamma
from . import ARITHMETICS
from .fperror import FLOAT32

Tensor = torch.Tensor
U32, TINY32 = FLOAT32.u, FLOAT32.tiny
#: The ops whose back-substitution product may run in float32.
PRODUCT_OPS = (ops.Dense, ops.Conv, ops.ConvTranspose)
#: ``auto``: a Dense layer's product goes to float32 from this many weights on. Measured (the MLPs of
#: benchmarks/deeppoly_speed.py, their graphs ``with_arithmetic(g, "float32")``): the MLPs of 4 and 6
#: layers of 256 gain 4-9% per DeepPoly call and paper 002's 8x200 loses 15% (the casts cost what the
#: GEMMs save), so ``auto`` keeps Dense layers of such sizes in float64; the wild conv nets' convolutions
#: gain 1.5-2.7x (``deeppoly_speed.py --conv``).
AUTO_DENSE_WEIGHTS = 2048 * 2048
#: ``auto``: a convolution's product goes to float32 from this many multiply-adds per row on
#: (``K`` times its input size). Measured: the digits_conv net of models/ (5k and 9k per row) lost 5-6
#: verified samples of 200 in data-set mode with ``--backend bab --timeout 1`` (more per-domain overhead
#: than gain); oval21's convolutions (66k-524k) gain 1.5-2.7x per DeepPoly call.
AUTO_CONV_MACS = 2 ** 16
#: The charge is computed in float64 (a few roundings of relative size 2^-53 at most): this factor
#: covers them many times over.
PRODUCT_SAFETY = 1.0 + 2.0 ** -20


def arithmetic_of(graph: Graph) -> str:
    """The arithmetic of the bound products (``graph.meta["arithmetic"]``, ``auto`` when unset)."""
    return graph.meta.get("arithmetic", "auto")


def with_arithmetic(graph: Graph, name: str) -> Graph:
    """The same graph with its bound products in arithmetic ``name`` (see the module docstring)."""
    if name not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic '{name}' (choose from {', '.join(ARITHMETICS)})")
    return dataclasses.replace(graph, meta={**graph.meta, "arithmetic": name})


def adjoint_terms(op) -> int:
    """``K``: the most products summed into one entry of ``A M`` (a row of ``A`` against a column
    of ``M``): the output neurons one input neuron feeds."""
    if isinstance(op, ops.Dense):
        return int(op.weight.shape[0])
    kh, kw = op.weight.shape[2:]
    if isinstance(op, ops.Conv):
        # weight (C_out, C_in / g, kh, kw): an input pixel meets a group's output channels through
        # the taps t with t d = p (mod s) only, at most ceil(k / (s / gcd(s, d))) of them per axis
        taps = [-(-k // (s // math.gcd(s, d))) for k, s, d in zip((kh, kw), op.strides, op.dilations)]
        return int(op.weight.shape[0] // op.groups * taps[0] * taps[1])
    return int(op.weight.shape[1] * kh * kw)  # ConvTranspose: weight (C_in, C_out / g, kh, kw)


def in_float32(graph: Graph, op) -> bool:
    """Is ``op``'s back-substitution product computed in float32 (see the module docstring)?"""
    mode = arithmetic_of(graph)
    if mode == "float64" or not isinstance(op, PRODUCT_OPS):
        return False
    if torch.get_float32_matmul_precision() != "highest":  # TF32 / bfloat16 products: not float32
        return False
    if mode == "float32":
        return True
    if graph.meta.get("precision", "float32") != "float32":  # auto: a float64 model, or real arithmetic
        return False
    if isinstance(op, ops.Dense):
        return op.weight.size >= AUTO_DENSE_WEIGHTS
    return adjoint_terms(op) * int(np.prod(op.in_shape)) >= AUTO_CONV_MACS


@dataclass(frozen=True)
class ProductCharge:
    """What a float32 product at a node costs (the module docstring): ``per_neuron`` (b, n_out), added
    to the node's error (charged through ``|A_i|``); ``floor`` (b, 1), subtracted from every row's
    constant at each product formed; ``centre`` (b, n_in), the point ``c``, and ``image`` (b, n_out),
    ``M c`` in float64 (for the bracket, :meth:`bracket`)."""

    per_neuron: Tensor
    floor: Tensor
    centre: Tensor
    image: Tensor

    def bracket(self, A: Tensor, out: Tensor, rows: Tensor | None = None, cols: Tensor | None = None,
                w: Tensor | None = None) -> Tensor:
        """``A (M c) - out c`` (b, s), ``out`` the float32 product ``A M`` (float64). For a product
        with part of the matrix, ``w = M[rows][:, cols]`` (either None: all): ``M c`` is then
        ``w c[cols]``."""
        with torch.no_grad():
            A = A.detach()
            c = self.centre if cols is None else self.centre.index_select(-1, cols)
            if cols is None:
                image = self.image if rows is None else self.image.index_select(-1, rows)
            else:
                image = c @ w.T
            return torch.bmm(A, image[:, :, None])[..., 0] - torch.bmm(out.detach(), c[:, :, None])[..., 0]


def product_charge(op, lo: Tensor, hi: Tensor) -> ProductCharge:
    """The charge of :mod:`certkit.bounds.products32` for the product at ``op`` whose input has
    sound bounds ``[lo, hi]`` (b, n_in); infinite where they are."""
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    zero = torch.zeros_like(lo)
    c = torch.where(finite, (lo + hi) / 2, zero)
    r = torch.maximum(hi - c, c - lo) * (1 + 2 * U64)  # rounded up
    r = torch.where(finite, r, torch.full_like(r, float("inf")))
    K = adjoint_terms(op)
    image = op.apply(c)
    n = int(lo.shape[-1]) + int(image.shape[-1])  # the bracket's dot products have fewer terms
    l1 = r.sum(-1, keepdim=True)  # (b, 1)
    cache = op.__dict__.setdefault("_cache", {})
    if "wmax32" not in cache:
        cache["wmax32"] = float(np.abs(np.asarray(op.weight, np.float64)).max(initial=0.0))
    rr = torch.nan_to_num(r, posinf=1e300)
    per = op.apply_abs(gamma(K + 3, U32) * rr + 4 * gamma(n + 3, U64) * c.abs()) + 2 * TINY32 * l1
    per = PRODUCT_SAFETY * torch.where(torch.isfinite(l1), per, torch.full_like(per, float("inf")))
    floor = PRODUCT_SAFETY * 2 * TINY32 * K * (cache["wmax32"] + 2) * l1
    return ProductCharge(per, floor, c, image)


def product(fn: Callable[[Tensor], Tensor], A: Tensor) -> tuple[Tensor, bool]:
    """``(fn(A), in32)``: ``fn`` applied to ``A``'s float32 rounding and the result back in float64
    (differentiable), or, where float32 overflowed (an infinity or NaN in the result), ``fn(A)`` in
    float64; ``in32`` says which."""
    out = fn(A.to(torch.float32))
    if bool(torch.isfinite(out.sum())):  # an inf or NaN entry makes the sum one (14x faster than isfinite)
        return out.to(A.dtype), True
    return fn(A), False

