"""Canonical IR operators: the narrow waist between ONNX and every backend.

Every value in the IR is a flat float vector per batch element: a tensor of
shape ``(batch, size)`` whose C-order layout is that of the ONNX tensor it
stands for (the ONNX batch dimension of 1 included in that layout). An op
records whatever shapes it needs itself, so reshapes vanish in the IR.

There are three families:

* :class:`LinearOp` -- affine maps ``y = M(x_1, ..., x_k) + c``. They provide
  ``forward``, ``apply_abs`` (``|M| r``, for interval radii) and ``backward``
  (``M^T`` applied to coefficient matrices, for back-substitution), and
  ``bias``.
* :class:`Activation` -- elementwise nonlinear maps; their relaxations live in
  :mod:`certkit.bounds.relaxations`, one registration per op.
* :class:`MaxGroup` -- ``y_i = max_j x[idx[i, j]]`` (MaxPool, Max of tensors,
  GroupSort(2)).

Each op is a frozen dataclass; ``OPS`` maps the op name to its class, and
``certkit ops`` prints the support table from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

OPS: dict[str, type["Op"]] = {}


def register_op(cls: type["Op"]) -> type["Op"]:
    """Class decorator: make an op known to the registry under ``cls.kind``."""
    OPS[cls.kind] = cls
    return cls


def _t(a: np.ndarray | float, like: Tensor) -> Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def nonzero_fan_in(op, count) -> int:
    """The most nonzero weights any one output of ``op`` sums (``count(weight != 0)``: one count per
    output channel or row), computed once per op. The ``n`` of the floating-point error model
    (:mod:`certkit.bounds.fperror`): a product with an exact zero weight is an exact zero, and adding an
    exact zero rounds nothing, so along any summation tree only the additions that join two subtrees
    each holding a nonzero term can round, at most ``nnz - 1`` of them above any one term (pruned
    weights; ml4acopf_2024's power-flow layers sum 1-9 of their 54-411 inputs)."""
    cache = op.__dict__.setdefault("_cache", {})
    if "fan_in" not in cache:
        cache["fan_in"] = int(np.max(count(np.asarray(op.weight) != 0), initial=0))
    return cache["fan_in"]


def _split_weights(op, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(max(W, 0), max(-W, 0))`` of a Dense or Conv, kept with its other weight forms."""
    cache = op.__dict__.setdefault("_cache", {})
    key = ("split", like.dtype, like.device)
    if key not in cache:
        w = torch.as_tensor(op.weight, dtype=like.dtype, device=like.device)
        cache[key] = (w.clamp(min=0), (-w).clamp(min=0))
    return cache[key]


@dataclass(frozen=True, eq=False)
class Op:
    """Base of all IR operators."""

    kind: ClassVar[str] = "op"
    arity: ClassVar[int] = 1

    def forward(self, *xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


@register_op
@dataclass(frozen=True, eq=False)
class Input(Op):
    """The model input (no computation)."""

    kind: ClassVar[str] = "input"
    arity: ClassVar[int] = 0


# --------------------------------------------------------------------------- linear


@dataclass(frozen=True, eq=False)
class LinearOp(Op):
    """An affine map ``y = M x + c`` (``M`` possibly acting on several inputs)."""

    def apply(self, *xs: Tensor) -> Tensor:
        """``M x`` without the constant term."""
        raise NotImplementedError

    def forward(self, *xs: Tensor) -> Tensor:
        y = self.apply(*xs)
        c = self.bias_vector()
        return y if c is None else y + _t(c, y)

    def apply_abs(self, *rs: Tensor) -> Tensor:
        """``|M| r`` for nonnegative radii ``r`` (interval arithmetic)."""
        raise NotImplementedError

    def backward(self, A: Tensor) -> tuple[Tensor, ...]:
        """``A M`` split per input: ``A`` has shape (batch, spec, n_out)."""
        raise NotImplementedError

    def bias_vector(self) -> np.ndarray | None:
        """The constant ``c`` (flat, length n_out) or None."""
        return None

    def bias_term(self, A: Tensor) -> Tensor | None:
        """``A c`` with shape (batch, spec), or None when there is no constant."""
        c = self.bias_vector()
        if c is None:
            return None
        return A @ _t(c, A)


@register_op
@dataclass(frozen=True, eq=False)
class Dense(LinearOp):
    """``y = x W^T + b`` on the last axis of the input viewed as (rows, n_in).

    ``weight`` has shape (n_out, n_in); ``rows`` is the product of the leading
    dims (1 for a plain Gemm on a (1, n) tensor). Covers Gemm, MatMul with a
    constant right operand, and dense reductions.
    """

    kind: ClassVar[str] = "dense"
    weight: np.ndarray
    bias: np.ndarray | None
    rows: int = 1
    #: Floating-point bookkeeping of elementwise affine ops fused into this one
    #: (:mod:`certkit.bounds.fperror`): roundings beyond this op's own, and the magnitude of the
    #: constant terms before cancellation (None: ``|bias|``).
    fp_extra: int = 0
    fp_bias: np.ndarray | None = None

    def _w(self, like: Tensor) -> Tensor:
        cache = self.__dict__.setdefault("_cache", {})
        key = (like.dtype, like.device)
        if key not in cache:
            w = torch.as_tensor(self.weight, dtype=like.dtype, device=like.device)
            cache[key] = (w, w.abs())
        return cache[key]

    @property
    def fan_in(self) -> int:
        """The most nonzero weights of one output (:func:`nonzero_fan_in`)."""
        return nonzero_fan_in(self, lambda nz: nz.sum(axis=1))

    def matrix(self, like: Tensor) -> Tensor:
        """``W`` (n_out, n_in) in ``like``'s dtype and device (converted once)."""
        return self._w(like)[0]

    def apply(self, x: Tensor) -> Tensor:
        w, _ = self._w(x)
        b = x.shape[0]
        return (x.reshape(b, self.rows, -1) @ w.T).reshape(b, -1)

    def apply_abs(self, r: Tensor) -> Tensor:
        _, wa = self._w(r)
        b = r.shape[0]
        return (r.reshape(b, self.rows, -1) @ wa.T).reshape(b, -1)

    def apply_split(self, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """``(W+ pos + W- neg, W+ neg + W- pos)`` with ``W+ = max(W, 0)``, ``W- = max(-W, 0)``: for
        ``x`` in a box, ``pos = max(u, 0)`` and ``neg = max(-l, 0)`` give the largest positive and
        negative parts of the sums (floating-point error bounds, :mod:`certkit.bounds.fperror`)."""
        wp, wn = _split_weights(self, pos)
        b = pos.shape[0]
        f = lambda x, w: (x.reshape(b, self.rows, -1) @ w.T).reshape(b, -1)  # noqa: E731
        return f(pos, wp) + f(neg, wn), f(neg, wp) + f(pos, wn)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        w, _ = self._w(A)
        bsz, s = A.shape[:2]
        if self.rows == 1:
            return (A @ w,)
        return ((A.reshape(bsz, s, self.rows, -1) @ w).reshape(bsz, s, -1),)

    def bias_vector(self) -> np.ndarray | None:
        if self.bias is None:
            return None
        return np.tile(self.bias, self.rows) if self.rows > 1 else self.bias


@register_op
@dataclass(frozen=True, eq=False)
class Conv(LinearOp):
    """2-D convolution (ONNX Conv) on an input of shape (1, C, H, W).

    ``pads`` is ONNX order (top, left, bottom, right). The transpose used in
    back-substitution is ``conv_transpose2d`` followed by cropping the padding.
    """

    kind: ClassVar[str] = "conv"
    weight: np.ndarray  # (C_out, C_in / groups, kh, kw)
    bias: np.ndarray | None  # (C_out,)
    in_shape: tuple[int, int, int]  # (C, H, W)
    out_shape: tuple[int, int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1
    #: Floating-point bookkeeping of elementwise affine ops fused into this one
    #: (:mod:`certkit.bounds.fperror`): roundings beyond this op's own, and the magnitude of the
    #: constant terms before cancellation (None: ``|bias|``).
    fp_extra: int = 0
    fp_bias: np.ndarray | None = None

    @property
    def fan_in(self) -> int:
        """The most nonzero kernel entries of one output channel (:func:`nonzero_fan_in`; the padding's
        products are zeros too, so border outputs sum fewer)."""
        return nonzero_fan_in(self, lambda nz: nz.reshape(nz.shape[0], -1).sum(axis=1))

    def _w(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cache = self.__dict__.setdefault("_cache", {})
        key = (like.dtype, like.device)
        if key not in cache:
            w = torch.as_tensor(self.weight, dtype=like.dtype, device=like.device)
            cache[key] = (w, w.abs())
        return cache[key]

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        b = x.shape[0]
        x = x.reshape(b, *self.in_shape)
        t, l, bo, r = self.pads
        if any(self.pads):
            x = F.pad(x, (l, r, t, bo))
        y = F.conv2d(x, w, None, self.strides, 0, self.dilations, self.groups)
        return y.reshape(b, -1)

    def apply(self, x: Tensor) -> Tensor:
        return self._conv(x, self._w(x)[0])

    def apply_abs(self, r: Tensor) -> Tensor:
        return self._conv(r, self._w(r)[1])

    def apply_split(self, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """As :meth:`Dense.apply_split`, with the kernel split by sign."""
        wp, wn = _split_weights(self, pos)
        return self._conv(pos, wp) + self._conv(neg, wn), self._conv(neg, wp) + self._conv(pos, wn)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        w, _ = self._w(A)
        bsz, s = A.shape[:2]
        C, H, W = self.in_shape
        t, l, bo, r = self.pads
        Hp, Wp = H + t + bo, W + l + r
        kh, kw = self.weight.shape[2:]
        (sh, sw), (dh, dw) = self.strides, self.dilations
        Ho, Wo = self.out_shape[1:]
        oph = Hp - ((Ho - 1) * sh + dh * (kh - 1) + 1)
        opw = Wp - ((Wo - 1) * sw + dw * (kw - 1) + 1)
        a = A.reshape(bsz * s, *self.out_shape)
        x = F.conv_transpose2d(a, w, None, self.strides, 0, (oph, opw), self.groups, self.dilations)
        x = x[:, :, t:t + H, l:l + W]
        return (x.reshape(bsz, s, -1),)

    def bias_vector(self) -> np.ndarray | None:
        if self.bias is None:
            return None
        Ho, Wo = self.out_shape[1:]
        return np.repeat(self.bias, Ho * Wo)


@register_op
@dataclass(frozen=True, eq=False)
class Scale(LinearOp):
    """Elementwise affine ``y = a * x + c`` (a, c flat, length n). Covers Add/Sub/Mul/Div by
    constants, Neg, BatchNormalization in inference mode."""

    kind: ClassVar[str] = "scale"
    scale: np.ndarray
    shift: np.ndarray | None
    #: Floating-point bookkeeping of elementwise affine ops fused into this one
    #: (:mod:`certkit.bounds.fperror`): roundings beyond this op's own, and the magnitude of the
    #: constant terms before cancellation (None: ``|bias|``).
    fp_extra: int = 0
    fp_bias: np.ndarray | None = None

    def apply(self, x: Tensor) -> Tensor:
        return x * _t(self.scale, x)

    def apply_abs(self, r: Tensor) -> Tensor:
        return r * _t(np.abs(self.scale), r)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        return (A * _t(self.scale, A),)

    def bias_vector(self) -> np.ndarray | None:
        return self.shift


@register_op
@dataclass(frozen=True, eq=False)
class Sum(LinearOp):
    """``y = sum_k coeffs[k] * x_k`` for inputs of the same size (Add/Sub of tensors)."""

    kind: ClassVar[str] = "sum"
    arity: ClassVar[int] = -1
    coeffs: tuple[float, ...]

    def apply(self, *xs: Tensor) -> Tensor:
        y = xs[0] * self.coeffs[0]
        for c, x in zip(self.coeffs[1:], xs[1:]):
            y = y + c * x
        return y

    def apply_abs(self, *rs: Tensor) -> Tensor:
        y = rs[0] * abs(self.coeffs[0])
        for c, r in zip(self.coeffs[1:], rs[1:]):
            y = y + abs(c) * r
        return y

    def backward(self, A: Tensor) -> tuple[Tensor, ...]:
        return tuple(A * c for c in self.coeffs)


@register_op
@dataclass(frozen=True, eq=False)
class Concat(LinearOp):
    """Concatenation of flat inputs ``(x_1, ..., x_k)`` in the layout given by ``index``.

    ``sizes`` are the inputs' sizes; ``perm`` maps the plain concatenation
    of the flat inputs to the output order (ONNX Concat along a non-leading
    axis interleaves the inputs).
    """

    kind: ClassVar[str] = "concat"
    arity: ClassVar[int] = -1
    sizes: tuple[int, ...]
    perm: np.ndarray | None = None  # output[i] = cat[perm[i]]

    def apply(self, *xs: Tensor) -> Tensor:
        y = torch.cat(xs, dim=-1)
        return y if self.perm is None else y[:, torch.as_tensor(self.perm)]

    def apply_abs(self, *rs: Tensor) -> Tensor:
        return self.apply(*rs)

    def backward(self, A: Tensor) -> tuple[Tensor, ...]:
        if self.perm is not None:
            inv = np.empty_like(self.perm)
            inv[self.perm] = np.arange(len(self.perm))
            A = A[..., torch.as_tensor(inv)]
        return tuple(torch.split(A, list(self.sizes), dim=-1))


@register_op
@dataclass(frozen=True, eq=False)
class Select(LinearOp):
    """``y_i = x[index_i]`` where ``index_i >= 0``, else ``fill_i``.

    Any static re-indexing is a Select: Transpose, Slice, Gather with constant
    indices, Split, Pad (constant, reflect, edge), Expand/Tile.
    """

    kind: ClassVar[str] = "select"
    index: np.ndarray  # int64, shape (n_out,)
    n_in: int
    fill: np.ndarray | None = None  # float, where index < 0

    def _idx(self) -> tuple[Tensor, Tensor, bool]:
        cache = self.__dict__.setdefault("_cache", {})
        if "idx" not in cache:
            valid = self.index >= 0
            cache["idx"] = (torch.as_tensor(np.where(valid, self.index, 0)),
                            torch.as_tensor(valid), bool(valid.all()))
        return cache["idx"]

    def apply(self, x: Tensor) -> Tensor:
        idx, valid, full = self._idx()
        y = x[..., idx]
        # where, not a product: a fill entry stays 0 (then its constant) when x is inf or NaN
        return y if full else torch.where(valid, y, torch.zeros((), dtype=y.dtype))

    def apply_abs(self, r: Tensor) -> Tensor:
        return self.apply(r)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        idx, valid, full = self._idx()
        if not full:
            A = A * valid.to(A.dtype)
        out = A.new_zeros(*A.shape[:-1], self.n_in)
        out.index_add_(A.dim() - 1, idx, A)
        return (out,)

    def bias_vector(self) -> np.ndarray | None:
        if self.fill is None or bool((self.index >= 0).all()):
            return None
        return np.where(self.index >= 0, 0.0, self.fill)


# --------------------------------------------------------------------------- activations


@dataclass(frozen=True, eq=False)
class Activation(Op):
    """An elementwise nonlinear map ``y_i = f_i(x_i)``."""

    #: True when f is nondecreasing (interval bounds map the end points).
    monotone: ClassVar[bool] = True

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Exact image of the box [lo, hi] (elementwise)."""
        if self.monotone:
            return self.forward(lo), self.forward(hi)
        raise NotImplementedError


@register_op
@dataclass(frozen=True, eq=False)
class Relu(Activation):
    kind: ClassVar[str] = "relu"

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


@register_op
@dataclass(frozen=True, eq=False)
class LeakyRelu(Activation):
    """``max(x, 0) + slope * min(x, 0)`` with ``0 <= slope`` (slope > 1 also handled)."""

    kind: ClassVar[str] = "leaky_relu"
    slope: float = 0.01

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, self.slope * x)

    @property
    def monotone(self) -> bool:  # type: ignore[override]
        return self.slope >= 0

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self.forward(lo), self.forward(hi)
        if self.slope >= 0:
            return a, b
        z = torch.zeros_like(lo)
        crosses = (lo < 0) & (hi > 0)
        return torch.where(crosses, torch.minimum(torch.minimum(a, b), z), torch.minimum(a, b)), \
            torch.maximum(a, b)


@register_op
@dataclass(frozen=True, eq=False)
class Sigmoid(Activation):
    kind: ClassVar[str] = "sigmoid"

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


@register_op
@dataclass(frozen=True, eq=False)
class Tanh(Activation):
    kind: ClassVar[str] = "tanh"

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)


@register_op
@dataclass(frozen=True, eq=False)
class Softplus(Activation):
    kind: ClassVar[str] = "softplus"

    def forward(self, x: Tensor) -> Tensor:
        # exact log(1 + e^x); F.softplus returns x itself above its threshold of 20
        return torch.logaddexp(x, torch.zeros_like(x))


@register_op
@dataclass(frozen=True, eq=False)
class Clip(Activation):
    """``min(max(x, lo), hi)`` with per-element bounds (Clip, Min/Max with a constant).

    ``lo``/``hi`` are flat arrays (``-inf``/``+inf`` for a missing side).
    """

    kind: ClassVar[str] = "clip"
    lo: np.ndarray
    hi: np.ndarray
    #: a numerical guard of a lowering (the exponent cap of Softmax's pairwise form), not the model's
    #: own clip: attacks pass the gradient straight through it (:meth:`surrogate`)
    guard: bool = False

    def forward(self, x: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(x, _t(self.lo, x)), _t(self.hi, x))

    def surrogate(self, x: Tensor) -> Tensor:
        """The same values; for a guard, the identity's gradient (a saturated softmax's logits still
        steer an attack); for attacks only."""
        y = self.forward(x)
        return x + (y - x).detach() if self.guard else y


@register_op
@dataclass(frozen=True, eq=False)
class Abs(Activation):
    kind: ClassVar[str] = "abs"
    monotone: ClassVar[bool] = False

    def forward(self, x: Tensor) -> Tensor:
        return x.abs()

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        up = torch.maximum(lo.abs(), hi.abs())
        low = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        return low, up


# --------------------------------------------------------------------------- max


@register_op
@dataclass(frozen=True, eq=False)
class MaxGroup(Op):
    """``y_i = max_j x[index[i, j]]`` over the entries with ``index >= 0``.

    Every row has at least one valid entry. MaxPool, Max/Min of tensors and
    GroupSort(2) lower to it.
    """

    kind: ClassVar[str] = "max_group"
    index: np.ndarray  # int64 (n_out, k), -1 for padding

    def _idx(self) -> tuple[Tensor, Tensor]:
        cache = self.__dict__.setdefault("_cache", {})
        if "idx" not in cache:
            valid = self.index >= 0
            cache["idx"] = (torch.as_tensor(np.where(valid, self.index, 0)), torch.as_tensor(valid))
        return cache["idx"]

    def gather(self, x: Tensor, pad: float) -> Tensor:
        """(batch, n_out, k) with ``pad`` in the invalid slots."""
        idx, valid = self._idx()
        g = x[:, idx]
        return torch.where(valid, g, torch.full_like(g, pad))

    def forward(self, x: Tensor) -> Tensor:
        return self.gather(x, float("-inf")).amax(dim=-1)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(lo), self.forward(hi)


# --------------------------------------------------------------------------- activations from the papers


def _kink_extremes(f, lo: Tensor, hi: Tensor, kinks: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Exact image of ``[lo, hi]`` under a continuous piecewise-linear ``f`` whose kinks are
    ``kinks``: the extremes are at the end points or at the kinks inside (clamped into the box)."""
    vals = [f(lo), f(hi)] + [f(torch.minimum(torch.maximum(k.expand_as(lo), lo), hi)) for k in kinks]
    v = torch.stack(vals)
    return v.amin(0), v.amax(0)


@register_op
@dataclass(frozen=True, eq=False)
class NActivation(Activation):
    """The N-activation (paper 004; DESIGN.md section 5): ``N(x) = x - 2 clip(x, t1, t2)``
    per element, ``t1 <= t2`` (flat arrays). Slopes +1, -1, +1: 1-Lipschitz, not monotone;
    local maximum ``-t1`` at ``t1``, local minimum ``-t2`` at ``t2``."""

    kind: ClassVar[str] = "n_activation"
    monotone: ClassVar[bool] = False
    t1: np.ndarray
    t2: np.ndarray

    def forward(self, x: Tensor) -> Tensor:
        c = torch.minimum(torch.maximum(x, _t(self.t1, x)), _t(self.t2, x))
        return x - 2.0 * c

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return _kink_extremes(self.forward, lo, hi, [_t(self.t1, lo), _t(self.t2, lo)])

    def slope_bounds(self) -> tuple[float, float]:
        """Range of the derivative (for Lipschitz bounds)."""
        return (-1.0, 1.0)


@register_op
@dataclass(frozen=True, eq=False)
class CappedLeakyRelu(Activation):
    """Capped symmetric leaky ReLU (paper 000, eq. 20; DESIGN.md section 5):
    ``f(x) = alpha x + gamma clip(x, -beta, beta)`` with ``gamma = 1 - alpha`` unless given
    (a float32 export stores ``alpha`` and ``1 - alpha`` rounded separately; keeping both
    makes the op equal to the file). ``alpha >= 0``, ``alpha + gamma >= 0``, ``beta > 0``:
    odd, nondecreasing, slopes ``{alpha, alpha + gamma}``."""

    kind: ClassVar[str] = "capped_leaky_relu"
    alpha: float
    beta: float
    gamma: float | None = None

    @property
    def gain(self) -> float:
        return 1.0 - self.alpha if self.gamma is None else self.gamma

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha * x + self.gain * x.clamp(-self.beta, self.beta)

    def slope_bounds(self) -> tuple[float, float]:
        return (min(self.alpha, self.alpha + self.gain), max(self.alpha, self.alpha + self.gain))


@register_op
@dataclass(frozen=True, eq=False)
class MaxMin(Op):
    """MaxMin / GroupSort(2) (paper 004; DESIGN.md section 5): pairs ``(x[a_k], x[b_k])`` go
    to ``(max, min)``. The plain result is ``[max_1..max_m, min_1..min_m]``; ``perm`` (as in
    :class:`Concat`) maps it to the output order: ``y_i = plain[perm[i]]``. Nondecreasing in
    every input; with every input in exactly one pair a permutation of the input, hence
    1-Lipschitz in every L_p norm."""

    kind: ClassVar[str] = "max_min"
    a: np.ndarray  # int64 (m,)
    b: np.ndarray  # int64 (m,)
    perm: np.ndarray | None = None

    def forward(self, x: Tensor) -> Tensor:
        xa, xb = x[:, torch.as_tensor(self.a)], x[:, torch.as_tensor(self.b)]
        y = torch.cat([torch.maximum(xa, xb), torch.minimum(xa, xb)], dim=-1)
        return y if self.perm is None else y[:, torch.as_tensor(self.perm)]

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(lo), self.forward(hi)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Output positions of the max and of the min of each pair."""
        m = len(self.a)
        if self.perm is None:
            return np.arange(m), np.arange(m, 2 * m)
        inv = np.empty_like(self.perm)
        inv[self.perm] = np.arange(len(self.perm))
        return inv[:m], inv[m:]


# the elementwise nonlinear ops of their own module (Exp, Log, Reciprocal, Sqrt, ...), registered on import
from .elementwise import Cos, Erf, Exp, Floor, Log, Pow, Reciprocal, Sign, Sin, Sqrt  # noqa: E402,F401
# the linear ops of their own modules (transposed convolution, sparse rows), registered on import
from .conv_transpose import ConvTranspose  # noqa: E402,F401
from .sparse import SparseLinear  # noqa: E402,F401
# products of two variable tensors (Mul, MatMul, Div of variables), registered on import
from .bilinear import Bilinear, Product  # noqa: E402,F401
# the rounding budget of fused onnxruntime kernels (Softmax, LayerNormalization), registered on import
from .rounding import KernelRounding  # noqa: E402,F401

#: the ops relaxed with the bounds of their inputs: back-substitution refines those inputs' neurons
RELAXED = (Activation, MaxGroup, MaxMin, Bilinear)
# the implicit-bias layer of paper 003 (identity plus an enclosed deviation), registered on import
from .implicit import ImplicitLayer  # noqa: E402,F401
