"""Converters of Softmax, LogSoftmax and LayerNormalization (and the rounding of a decomposed
LayerNorm that onnxruntime fuses into one kernel).

Every row of ``n`` values (the axis of opset >= 13; before, the input coerced to 2-D at ``axis``) is
first copied to a contiguous ``(rows, n)`` layout (a Select, an alias when it already is), and the
result copied back.

* **Softmax**, short rows (``PAIRWISE_MAX``, ``PAIRWISE_SIZE``): ``y_i = 1 / (1 + sum_{j != i}
  exp(min(x_j - x_i, C)))`` (the form of Wei et al. 2023, "Convex bounds on the softmax function":
  one reciprocal of a sum whose terms depend on differences, which back-substitution bounds tightly
  when the logits are correlated): a Dense of the ``n (n - 1)`` differences, a guard Clip at ``C = CLIP -
  ln n`` (attacks pass gradients through it: a saturated softmax's logits still steer them; no exponential and no sum overflows float32; with a difference above ``C`` both the
  softmax and this form are below ``e^-C``, which the budget adds), Exp, a Dense summing with the
  constant 1, ``max(sum, 1)`` (the same value, see :func:`_at_least_one`), Reciprocal, then a
  :class:`~certkit.graph.rounding.KernelRounding` with onnxruntime's Softmax budget
  (:mod:`certkit.bounds.fperror_kernels`): the kernel's rounding, not that of the IR's form.
  Longer rows: onnxruntime's own form, ``e = Exp(x - max)``, ``y = e * Reciprocal(max(sum e, 1))``
  (MaxGroup, Sum, Exp, Dense, Reciprocal, Product): ``n`` values per row instead of ``n^2``, and
  each node's error rule covers the kernel's step.
* **LogSoftmax**: onnxruntime's form ``y = x - max - Log(sum_j Exp(x_j - max))`` (the last step one
  Sum of three), whose nodes are the kernel's steps: no overflow whatever the logits, and in a
  comparison ``y_i - y_j`` the max and the log cancel exactly in back-substitution. The sum enters
  the Log (and Softmax's Reciprocal, for long rows) as ``max(sum, 1)``, the same value.
* **LayerNormalization** (opset 17; ``axis``, ``epsilon``): ``c = (I - J/n) x`` (a Dense, charged by
  the general affine rule, which covers ``fl(x - mean^)``), ``v = mean(c * c)`` (a square Product: its
  lower line keeps ``v >= 0``), the variance budget of the kernel's ``E[x^2] - mean^2``
  (KernelRounding), ``Sqrt(v + eps)``, Reciprocal, ``c * (1 / sd)`` (the Product's rounding covers
  the kernel's division), then ``scale``/``bias``. The Mean and InvStdDev outputs are not lowered.
* **Decomposed LayerNorm**: a ReduceMean of ``(a - ReduceMean(a))^2`` (Pow or Mul) is what
  onnxruntime's LayerNormFusion turns into the LayerNormalization kernel, which computes the variance
  as ``E[x^2] - mean^2``: :func:`variance_budget` gives that ReduceMean the same budget.

A Softmax that ends the model is bounded like any other, also when the property only compares its
outputs with each other: softmax preserves the order of the logits in real arithmetic, but not in
float32 (two different logits whose exponentials both underflow give two equal zeros, and the
polynomial exponential is not known to be monotone), so a property proved on the logits would not
be proved for the model onnxruntime runs. The IR shows which form was used (``certkit ops`` kinds,
``Graph.summary()``): ``kernel_rounding`` nodes for the pairwise form.
"""
from __future__ import annotations

import math

import numpy as np

from ...bounds.fperror_kernels import layernorm_budget, softmax_budget
from ...errors import ModelError
from ...graph import ops
from ..importer import Context, Unsupported, Var
from .base import alias, constant, converter, expand, scale, select_from_index, variable
from .products import product

#: Rows up to this length use the pairwise (difference) form of Softmax: n (n - 1) values per row, if
#: all rows together have at most PAIRWISE_SIZE differences. Measured with DeepPoly (vit_2023, CPU):
#: pgd_2_3_16 (3 heads, 5 tokens: 300 differences per Softmax) output widths 3.10 pairwise vs 7.95
#: in onnxruntime's form, in about the same time; ibp_3_3_8 (3 heads, 17 tokens: 13872) 0.860 vs
#: 0.869, but 315 s vs 121 s.
PAIRWISE_MAX = 64
PAIRWISE_SIZE = 4096
#: The logit differences of the pairwise form are clipped at ``CLIP - ln n``: ``n e^(CLIP - ln n)``
#: stays below float32's largest number (e^88.7), so neither an exponential nor the sum overflows.
CLIP = 80.0


def _rows(ctx: Context, x: Var, axis: int, coerce: bool) -> tuple[Var, int, np.ndarray | None]:
    """``x`` as contiguous rows over ``axis`` (``coerce``: opset < 13, the axes from ``axis`` on
    flattened): ``(rows view, n, index map back or None)``."""
    r = len(x.shape)
    if not -r <= axis < r:
        raise ModelError(f"node {ctx.node_name}: axis {axis} out of range for rank {r}")
    axis %= r
    if coerce:
        n = int(np.prod(x.shape[axis:], dtype=np.int64))
        return alias(x, (x.size // n, n)), n, None
    n = int(x.shape[axis])
    if axis == r - 1:
        return alias(x, (x.size // n, n)), n, None
    moved = np.moveaxis(np.arange(x.size).reshape(x.shape), axis, -1)
    back = np.argsort(moved.reshape(-1)).reshape(x.shape)
    return select_from_index(ctx, x, moved.reshape(-1, n).copy()), n, back


def _restore(ctx: Context, y: Var, shape: tuple[int, ...], back: np.ndarray | None) -> Var:
    return alias(y, shape) if back is None else select_from_index(ctx, y, back)


def _group_max(ctx: Context, x: Var, rows: int, n: int) -> Var:
    """The maximum of every row, broadcast back to ``(rows, n)``."""
    m = ctx.add(ops.MaxGroup(np.arange(rows * n, dtype=np.int64).reshape(rows, n)), [x], (rows, 1))
    return expand(ctx, m, (rows, n))


def _exp_shifted(ctx: Context, x: Var, rows: int, n: int) -> tuple[Var, Var, Var]:
    """onnxruntime's first steps: ``(max broadcast, e = Exp(x - max), max(sum e, 1))``. The sum is
    at least 1 (its largest term is ``exp(0) = 1``, exactly so in onnxruntime too), which no
    relaxation of the exponentials can see: a MaxGroup with the constant 1 (its lower bound is the
    larger lower bound, 1) keeps the Log or Reciprocal that follows finite in every mode."""
    m = _group_max(ctx, x, rows, n)
    d = ctx.add(ops.Sum((1.0, -1.0)), [x, m], (rows, n))
    e = ctx.add(ops.Exp(), [d], (rows, n))
    s = ctx.add(ops.Dense(np.ones((1, n)), None, rows), [e], (rows, 1))
    return m, e, _at_least_one(ctx, s)


def _at_least_one(ctx: Context, s: Var) -> Var:
    """``max(s, 1)`` for a sum ``s >= 1`` (the same value): a MaxGroup with the constant 1, whose lower
    bound is the larger of the two lower bounds. Relaxations of the exponentials (and their
    rounding errors, charged relative to the largest value of the box) can put the sum's lower bound
    below 1, even below 0, which would make the Reciprocal or Log that follows unbounded."""
    k = s.size
    one = ctx.add(ops.Select(np.full(k, -1, np.int64), k, np.ones(k)), [s], s.shape)
    both = ctx.add(ops.Concat((k, k)), [s, one], (2 * k,))
    pairs = np.stack([np.arange(k), k + np.arange(k)], axis=1).astype(np.int64)
    return ctx.add(ops.MaxGroup(pairs), [both], s.shape)


def _softmax_pairwise(ctx: Context, x: Var, rows: int, n: int) -> Var:
    w = np.zeros((n, n - 1, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        w[i, np.arange(n - 1), others] = 1.0
        w[i, :, i] = -1.0
    d = ctx.add(ops.Dense(w.reshape(n * (n - 1), n), None, rows), [x], (rows, n, n - 1))
    c = CLIP - math.log(n)
    z = ctx.add(ops.Clip(np.full(d.size, -np.inf), np.full(d.size, c), guard=True), [d], d.shape)
    e = ctx.add(ops.Exp(), [z], d.shape)
    s = ctx.add(ops.Dense(np.ones((1, n - 1)), np.ones(1), rows * n), [e], (rows, n))
    y = ctx.add(ops.Reciprocal(), [_at_least_one(ctx, s)], (rows, n))
    return _kernel(ctx, y, x, n, "softmax", softmax_budget(n, math.exp(-c)))


def _kernel(ctx: Context, y: Var, x: Var, group: int, what: str, budget: dict) -> Var:
    op = ops.KernelRounding(what=what, group=group, n_ref=x.size, **budget)
    return ctx.add(op, [y, x], y.shape)


def softmax(ctx: Context, x: Var, axis: int, coerce: bool, log: bool) -> Var:
    xr, n, back = _rows(ctx, x, axis, coerce)
    rows = xr.size // n
    if log:
        m, _, s = _exp_shifted(ctx, xr, rows, n)
        big_l = expand(ctx, ctx.add(ops.Log(), [s], (rows, 1)), (rows, n))
        y = ctx.add(ops.Sum((1.0, -1.0, -1.0)), [xr, m, big_l], (rows, n))
    elif n == 1:  # exp(x - x) = 1, NaN where x is not finite
        one = ctx.add(ops.Select(np.full(rows, -1, np.int64), xr.size, np.ones(rows)), [xr], (rows, 1))
        y = _kernel(ctx, one, xr, 1, "softmax", {"rel": 0.0, "absolute": 0.0, "tinies": 0.0})
    elif n <= PAIRWISE_MAX and rows * n * (n - 1) <= PAIRWISE_SIZE:
        y = _softmax_pairwise(ctx, xr, rows, n)
    else:
        _, e, s = _exp_shifted(ctx, xr, rows, n)
        q = ctx.add(ops.Reciprocal(), [s], (rows, 1))
        y = product(ctx, e, q)
    return _restore(ctx, y, x.shape, back)


@converter("Softmax", "LogSoftmax")
def _softmax(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = variable(ins[0])
    coerce = ctx.opset < 13
    axis = int(attrs.get("axis", 1 if coerce else -1))
    return [softmax(ctx, x, axis, coerce, node.op_type == "LogSoftmax")]


@converter("LayerNormalization")
def _layernorm(ctx: Context, node, ins: list, attrs: dict) -> list:
    x = variable(ins[0])
    if any(ctx.uses(o) for o in node.output[1:]):
        raise Unsupported("the Mean and InvStdDev outputs")
    gamma = np.asarray(constant(ins[1], "LayerNormalization scale"), np.float64)
    beta = None if len(ins) < 3 or ins[2] is None else np.asarray(constant(ins[2], "LayerNormalization bias"),
                                                                     np.float64)
    r = len(x.shape)
    axis = int(attrs.get("axis", -1))
    if not -r <= axis < r:
        raise ModelError(f"LayerNormalization node {ctx.node_name}: axis {axis} out of range for rank {r}")
    axis %= r
    eps = float(attrs.get("epsilon", 1e-5))
    n = int(np.prod(x.shape[axis:], dtype=np.int64))
    rows = x.size // n
    xr = alias(x, (rows, n))
    c = ctx.add(ops.Dense(np.eye(n) - 1.0 / n, None, rows, fp_extra=1), [xr], (rows, n))
    sq = product(ctx, c, c)
    v = ctx.add(ops.Dense(np.full((1, n), 1.0 / n), None, rows), [sq], (rows, 1))
    v = _kernel(ctx, v, xr, n, "layernorm variance", layernorm_budget(n))
    ve = ctx.add(ops.Scale(np.ones(rows), np.full(rows, eps)), [v], (rows, 1))
    sd = ctx.add(ops.Sqrt(), [ve], (rows, 1))
    z = product(ctx, c, ctx.add(ops.Reciprocal(), [sd], (rows, 1)))
    return [scale(ctx, alias(z, x.shape), gamma, beta, x.shape)] + [None] * (len(node.output) - 1)


def variance_budget(ctx: Context, sq: Var, moved: np.ndarray, n: int, v: Var) -> Var:
    """``v`` = ReduceMean of ``sq`` over ``n`` values (``moved``: ``sq``'s index map to the reduction
    layout); when ``sq`` is ``(a - ReduceMean(a))^2``, the variance budget of onnxruntime's fused
    LayerNorm kernel (module docstring), else ``v`` itself."""
    a = _centred_source(ctx, sq)
    if a is None or a.size != sq.size or v.size * n != sq.size:
        return v
    ar = select_from_index(ctx, a, moved)
    return _kernel(ctx, v, ar, n, "layernorm variance (fused)", layernorm_budget(n))


def _centred_source(ctx: Context, sq: Var) -> Var | None:
    """``a`` when node ``sq`` squares ``a - mean(a)`` (Pow 2 or a square Product of a Sum (1, -1)
    whose second input is a Dense mean of the first, possibly broadcast by a Select)."""
    nodes = ctx.nodes
    node = nodes[sq.node]
    op = node.op
    pow_cls = getattr(ops, "Pow", None)
    if isinstance(op, ops.Product) and op.square:
        c = node.inputs[0]
    elif pow_cls is not None and isinstance(op, pow_cls) and float(op.exponent) == 2.0:
        c = node.inputs[0]
    else:
        return None
    cn = nodes[c]
    if not (isinstance(cn.op, ops.Sum) and tuple(cn.op.coeffs) == (1.0, -1.0)):
        return None
    a, b = cn.inputs
    bn = nodes[b]
    if isinstance(bn.op, ops.Select):  # the mean broadcast back
        bn = nodes[bn.inputs[0]]
    if not isinstance(bn.op, ops.Dense):
        return None
    src = bn.inputs[0]  # the mean's input: a, or a with the reduced axes moved last
    if src != a and not (isinstance(nodes[src].op, ops.Select) and nodes[src].inputs[0] == a):
        return None
    w = np.asarray(bn.op.weight)
    if w.shape[0] != 1 or not np.allclose(w, 1.0 / w.shape[1]):
        return None
    return Var(a, ctx.shapes[a])
