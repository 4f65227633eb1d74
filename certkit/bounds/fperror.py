"""The floating-point error of the model as onnxruntime runs it (DESIGN.md section 2).

A verdict is about the network that onnxruntime executes in float32 (or float64), not about the
real-valued network of the same weights. certkit's bound backends therefore analyse the
*computed* network

    y^_i = op_i(y^_j, ...) + e_i,      |e_i| <= err_i                                  (1)

in which every node's value is the exact image of its computed inputs plus a rounding error
bounded by ``err_i`` (this module), a function of bounds on the inputs' magnitudes. A bound that
holds for (1) for every admissible ``e`` holds for every rounding onnxruntime can make, whatever
its summation order, blocking or FMA use. The terms, for a node in precision ``u`` (2^-24 for
float32, 2^-53 for float64):

* **Affine ops** (Dense, Conv, Scale, Sum) with fan-in ``n``: any order of summation gives
  ``|fl(w.x + b) - (w.x + b)| <= gamma_{n+1} (|w|.|x| + |b|)``, ``gamma_k = k u / (1 - k u)``
  (Higham, ch. 3), ``n`` counting the products that can be nonzero (an exact zero adds no rounding:
  :func:`certkit.graph.ops.nonzero_fan_in`); for a plain Dense or Conv the sharper ``gamma_n max(P, N) + O(u^2 + k u)(P + N)``
  holds, ``P`` and ``N`` the largest sums of the positive and negative parts of the terms
  (:func:`_dot`). Otherwise certkit charges ``gamma_S (|M| |x| + beta) + S tiny`` with
  ``S = n + 1 + PARAM_STEPS + fp_extra``: PARAM_STEPS covers onnxruntime's own constant
  folding (fused Conv+BatchNorm weights) and the float64 form of parameters such as 1/c;
  ``fp_extra``/``beta`` (``fp_bias``) carry the roundings and the magnitudes before cancellation
  of the elementwise affine ops fused into the node (``onnx/passes.py``): for ``L2 o L1`` with one
  of them diagonal, ``|M2||M1| = |M2 M1|`` and the error of the composition is at most
  ``gamma_{S1+S2} (|M||x| + |M2| beta1 + beta2)``, since ``gamma_a + gamma_b + gamma_a gamma_b
  <= gamma_{a+b}``. ``tiny`` (the smallest normal number) bounds the absolute error of an
  underflow or of flushing a denormal to zero, per operation and per input.
* **Exact ops**: ReLU, Max, Min, Clip, Abs, MaxPool, copies (Select, Concat) and negation
  round nothing.
* **Transcendental elementwise ops** (Sigmoid, Tanh, Softplus): ``ACT_ULPS ulp(|y|) + ACT_ABS``
  (``certkit.tolerances``: measured maxima times more than 5). LeakyReLU: one rounding of
  ``s x``. The paper activations: the roundings of their ONNX forms.
* **Overflow**: where a magnitude bound exceeds the largest finite number, the computed value
  may be ``inf`` or NaN and (1) does not describe it: the error is ``inf`` there, so no bound
  that depends on it is finite, and no verdict can rest on it (:mod:`certkit.verify.gate`).
* **Inputs**: a float64 point the user gives is rounded to the model's precision before
  onnxruntime sees it, so input boxes are rounded outward (:func:`round_input_set`).

Magnitudes ``|x|`` come from whatever sound bounds of the inputs are at hand (interval or
back-substituted), so the errors get smaller as the bounds get tighter.

**certkit's own float64 arithmetic** is covered the same way. Back-substitution charges each
product and sum it forms against the node it is at: with ``A_i`` the coefficients reaching node
``i``, the rounding of ``A_i M_i`` and of ``A_i c_i`` moves the bound by at most
``gamma_{n_i} |A_i| (|M_i| |x| + |c_i|)``, and the running sums of the constant by at most
``gamma_N`` times the sum of the magnitudes of the terms. Every node therefore also charges
``COMPUTE_SAFETY * gamma_L(u64) * mag_i`` (``L`` = the largest node size + the number of nodes +
16; ``mag_i`` the magnitude of the terms formed there), and concretisation over the input set
charges ``gamma_{n+8}(u64)`` of its own terms (:meth:`certkit.spec.sets.InputSet.concretize_lower`).
In back-substitution every error enters as one more constant: ``A_i y_i >= A_i op(...) - |A_i|
err_i`` (:class:`certkit.bounds.deeppoly.BoundState`); interval bounds widen by ``err``; the MILP
turns each affine equality row into a ranged row ``c - err <= y - M x <= c + err``.

Assumptions, stated: onnxruntime evaluates each ONNX op in the tensor's precision with
round-to-nearest (no Winograd/FFT convolutions on the CPU provider, no reduced-precision
accumulation); the activation budgets are measured, not proven.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..graph import ops
from ..graph.graph import Graph
from ..spec.sets import InputSet
from ..tolerances import ACT_ABS, ACT_ULPS, COMPUTE_SAFETY, PARAM_STEPS, U64, gamma

Tensor = torch.Tensor


@dataclass(frozen=True)
class Precision:
    """A floating-point format: unit roundoff ``u``, smallest normal ``tiny``, largest finite ``max``."""

    name: str
    u: float
    tiny: float
    max: float


FLOAT32 = Precision("float32", 2.0 ** -24, 2.0 ** -126, float(np.finfo(np.float32).max))
FLOAT64 = Precision("float64", 2.0 ** -53, 2.0 ** -1022, float(np.finfo(np.float64).max))
#: Real arithmetic: no model error terms (for measuring what they cost; never for verdicts).
EXACT = Precision("exact", 0.0, 0.0, float("inf"))
PRECISIONS = {p.name: p for p in (FLOAT32, FLOAT64, EXACT)}


def precision_of(graph: Graph) -> Precision:
    """The precision the model runs in (``graph.meta['precision']``, set by the importer;
    float32, the coarser, when unknown)."""
    return PRECISIONS[graph.meta.get("precision", "float32")]


def with_precision(graph: Graph, name: str) -> Graph:
    """The same graph analysed in another precision (``"exact"``: without model error terms)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision '{name}' (choose from {', '.join(PRECISIONS)})")
    return dataclasses.replace(graph, meta={**graph.meta, "precision": name})


def compute_steps(graph: Graph) -> int:
    """``L``: a bound on the roundings any one term of certkit's float64 bound computation goes
    through (a dot product within a node, then the running sums over the nodes)."""
    return graph.max_node_size + len(graph.nodes) + 16


# --------------------------------------------------------------------------- per-op model error

#: op class -> fn(op, ins, mag_out, prec) -> (model error (b, n) or None, magnitude of the terms
#: formed at the node (b, n), for the float64 allowance). ``ins`` are the inputs' bounds (their
#: magnitudes: :func:`magnitude`), ``mag_out`` bounds |output| (from the exact image of ``ins``).
ERRORS: dict[type, Callable] = {}


def fp_error(*classes: type):
    def deco(fn):
        for c in classes:
            ERRORS[c] = fn
        return fn
    return deco


def own_steps(op: ops.LinearOp) -> int:
    """Roundings of the affine op itself: fan-in + 1 for a dot product (the fan-in counts the products
    that can be nonzero: :func:`certkit.graph.ops.nonzero_fan_in`), 0 for a copy."""
    if isinstance(op, (ops.Dense, ops.Conv, ops.ConvTranspose)):  # fan-in: the nonzero products of an output
        return op.fan_in + 1 + PARAM_STEPS + op.fp_extra
    if isinstance(op, ops.SparseLinear):  # interpolation: onnxruntime rounds its weights (PARAM_STEPS)
        return op.fan_in + 1 + PARAM_STEPS
    if isinstance(op, ops.Scale):
        return 2 + PARAM_STEPS + op.fp_extra
    if isinstance(op, ops.Sum):
        return 2 * len(op.coeffs)
    return 0  # Select, Concat: copies


def bias_magnitude(op: ops.LinearOp) -> np.ndarray | None:
    """``beta``: the magnitude of the constant terms before cancellation (``fp_bias`` of a fused
    op, else ``|c|``)."""
    b = getattr(op, "fp_bias", None)
    if b is not None:
        return np.asarray(b, dtype=np.float64)
    c = op.bias_vector()
    return None if c is None else np.abs(np.asarray(c, dtype=np.float64))


@fp_error(ops.Dense, ops.Conv, ops.ConvTranspose)
def _dot(op, ins, mag_out: Tensor | None, p: Precision):
    """A dot product of fan-in ``n`` plus a bias, summed in any order (any summation tree, FMA or
    not): every one of the ``n`` roundings of the sums is relative to a partial sum, and a partial
    sum of some of the terms lies in ``[-N, P]`` with ``P`` (``N``) the largest sum of the positive
    (negative) parts of the terms over the input box; so the error is at most
    ``gamma_n (1 + gamma_{k+1}) max(P, N) + (gamma_n^2 + gamma_k) (P + N)``, where the second-order
    term covers the errors already in the partial sums and ``k`` = 1 + PARAM_STEPS counts the
    rounding of the products and of the parameters (an improvement over ``gamma_{n+1} (P + N)``
    by up to 2 when the terms have mixed signs). An op with fused elementwise maps (``fp_extra``) uses
    the general rule of :func:`_affine`: its terms are not those of the fused weights."""
    if op.fp_extra or op.fp_bias is not None:
        return _affine(op, ins, mag_out, p)
    lo, hi = ins[0]
    pos, neg = hi.clamp(min=0), (-lo).clamp(min=0)
    # P + N = |W| (pos + neg) and P - N = W (pos - neg): two products instead of four; a denormal
    # input flushed to zero moves by at most tiny, on either side
    return _dot_error(op, op.apply_abs(pos + neg + 2 * p.tiny), op.apply(pos - neg), p)


def _dot_error(op, total: Tensor, diff: Tensor, p: Precision):
    """The rule of :func:`_dot` from ``|W| (pos + neg)`` and ``W (pos - neg)`` (no bias yet)."""
    c = op.bias_vector()
    if c is not None:
        c = torch.as_tensor(c, dtype=total.dtype)
        total, diff = total + c.abs(), diff + c
    big = (total + diff.abs()) * (0.5 * (1 + 1e-12))  # max(P, N), rounded up
    n = own_steps(op) - PARAM_STEPS  # fan-in + 1
    k = 1 + PARAM_STEPS
    g = gamma(n, p.u)
    model = g * (1 + gamma(k + 1, p.u)) * big + (g * g + gamma(k, p.u)) * total + n * p.tiny
    return model, total


@fp_error(ops.Scale, ops.Sum, ops.Select, ops.Concat)
def _affine(op: ops.LinearOp, ins, mag_out: Tensor | None, p: Precision):
    S = own_steps(op)
    mag = op.apply_abs(*[magnitude(lo, hi, p) + p.tiny for lo, hi in ins])
    beta = bias_magnitude(op)
    if beta is not None:
        mag = mag + torch.as_tensor(beta, dtype=mag.dtype)
    model = None if S == 0 else gamma(S, p.u) * mag + S * p.tiny
    return model, mag


@fp_error(ops.SparseLinear)
def _sparse(op: ops.SparseLinear, ins, mag_out: Tensor | None, p: Precision):
    """The rule of :func:`_affine`, plus ``weight_error |W| |x|``: the runtime's own weights are
    that far (relatively) from the op's, in whatever precision the model computes (onnxruntime
    computes interpolation weights in float32 even for a double model)."""
    model, mag = _affine(op, ins, mag_out, p)
    return model + op.weight_error * mag, mag


def _slope(op) -> float:
    if hasattr(op, "slope_bounds"):
        return float(max(abs(v) for v in op.slope_bounds()))
    if isinstance(op, ops.LeakyRelu):
        return max(1.0, abs(op.slope))
    return 1.0


@fp_error(ops.Relu, ops.Clip, ops.Abs)
def _exact(op, ins, mag_out: Tensor, p: Precision):
    return None, 4.0 * (magnitude(*ins[0], p) + mag_out)


@fp_error(ops.LeakyRelu)
def _leaky(op: ops.LeakyRelu, ins, mag_out: Tensor, p: Precision):
    s = abs(op.slope)
    m = magnitude(*ins[0], p)
    return p.u * s * m + p.tiny, 4.0 * (max(1.0, s) * m + mag_out)


@fp_error(ops.Sigmoid, ops.Tanh, ops.Softplus)
def _transcendental(op, ins, mag_out: Tensor, p: Precision):
    # ulp(y) <= 2 u |y| for a normal y; ACT_ABS is stated for float32 and scales with u
    model = ACT_ULPS * 2.0 * p.u * mag_out + ACT_ABS * (p.u / 2.0 ** -24) + p.tiny
    return model, 4.0 * (_slope(op) * magnitude(*ins[0], p) + mag_out)


@fp_error(ops.NActivation)
def _n_activation(op, ins, mag_out: Tensor, p: Precision):
    m = magnitude(*ins[0], p)
    return gamma(3, p.u) * 3.0 * m + 3 * p.tiny, 4.0 * (3.0 * m + mag_out)


@fp_error(ops.CappedLeakyRelu)
def _capped(op: ops.CappedLeakyRelu, ins, mag_out: Tensor, p: Precision):
    k = abs(op.alpha) + abs(op.gain)
    m = magnitude(*ins[0], p)
    return gamma(3, p.u) * k * m + 3 * p.tiny, 4.0 * (k * m + mag_out)


@fp_error(ops.MaxGroup, ops.MaxMin)
def _max(op, ins, mag_out: Tensor, p: Precision):
    """Exact in floating point; the float64 allowance of a back-substitution step through the op. An output's
    relaxation involves its own group's inputs only (:class:`~certkit.bounds.deeppoly.MaxRelax`: one member
    and the group's largest upper bound; :class:`~certkit.bounds.relaxations.PairRelax`: its pair and a
    constant ``|s ld| <= 2`` times their magnitude), so its terms are that group's largest magnitude
    (:func:`group_max`), not the whole input's: a softmax's guarded denominator ``max(sum, 1)`` next to sums
    of ``e^78.9`` was charged 1e21 where its own inputs are 1 (the fuzzer's sharp-attention nets)."""
    return None, 4.0 * (group_max(op, magnitude(*ins[0], p)) + mag_out)


def group_max(op, v: Tensor) -> Tensor:
    """(b, n_out): per output of a MaxGroup or MaxMin ``op``, the largest of ``v`` (b, n_in), ``v >= 0``, over
    the inputs it takes the max or min of (its group, its pair)."""
    if isinstance(op, ops.MaxGroup):
        return op.gather(v, 0.0).amax(dim=-1)
    pair = torch.maximum(v[:, torch.as_tensor(op.a)], v[:, torch.as_tensor(op.b)])
    plain = torch.cat([pair, pair], dim=-1)  # the maxima, then the minima (ops.MaxMin.forward)
    return plain if op.perm is None else plain[:, torch.as_tensor(op.perm)]


def _error_fn(op):
    for cls in type(op).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    raise NotImplementedError(f"no floating-point error rule for {op.kind}")


def magnitude(lo: Tensor, hi: Tensor, p: Precision) -> Tensor:
    """``max(|lo|, |hi|)``, with NaN and infinities replaced by a value above ``p.max`` (so an error
    computed from it is ``inf`` rather than NaN)."""
    m = torch.maximum(lo.abs(), hi.abs())
    big = 1e300 if p.max > 1e300 else p.max * 4.0
    return torch.nan_to_num(m, nan=big, posinf=big)


def node_error(op, ins: list[tuple[Tensor, Tensor]], out: tuple[Tensor, Tensor] | None, p: Precision,
               steps: int) -> Tensor | None:
    """``err`` (b, n_out) for one node: the model's rounding error plus the float64 allowance of
    certkit's own arithmetic at the node; ``inf`` where the computation may overflow. ``ins`` are
    bounds on the node's (computed) inputs, ``out`` bounds on the exact image of those (needed for
    nonlinear ops). None when nothing is charged."""
    if isinstance(op, ops.Concat) or (isinstance(op, ops.Select) and _injective(op)):
        return None  # pure copies: neither onnxruntime nor certkit rounds anything there
    mag_out = None if out is None else magnitude(*out, p)
    model, terms = _error_fn(op)(op, ins, mag_out, p)
    return _finish(model, terms, mag_out, p, steps)


def _finish(model: Tensor | None, terms: Tensor, mag_out: Tensor | None, p: Precision, steps: int) -> Tensor:
    """Model error plus the float64 allowance on ``terms``; ``inf`` where a magnitude may overflow."""
    c64 = COMPUTE_SAFETY * gamma(steps, U64)
    err = c64 * terms if model is None else torch.add(model, terms, alpha=c64)
    limit = terms if mag_out is None else torch.maximum(terms, mag_out)
    fine = limit <= p.max  # False for NaN too
    if not bool(fine.all()):
        err = torch.where(fine, err, torch.full_like(err, float("inf")))
    return err


def _nonnegative(op) -> bool:
    """Is ``op`` a Dense with weights and bias >= 0? On inputs >= 0 its computed value ``S(x) - e``,
    ``|e| <= k S(x) + c`` with ``k << 1`` (:func:`_dot_error`: every term is a multiple of ``|W| x + b =
    S(x)``), is increasing in every input, so over a box it lies between its bounds at the two corners
    ``lo`` and ``hi`` -- a relative, not the box's largest, error at each end (a softmax's sum
    ``1 + e^d`` over ``d`` in [0.5, 15]: 2.6 minus the error of 2.6, not of 4e6)."""
    cache = op.__dict__.setdefault("_cache", {})
    if "nonnegative" not in cache:
        cache["nonnegative"] = isinstance(op, ops.Dense) and bool(np.all(np.asarray(op.weight) >= 0)) and (
            op.bias is None or bool(np.all(np.asarray(op.bias) >= 0)))
    return cache["nonnegative"]


def _injective(op: ops.Select) -> bool:
    """Does the Select copy each input entry at most once (no sums in its adjoint)?"""
    cache = op.__dict__.setdefault("_cache", {})
    if "injective" not in cache:
        idx = np.asarray(op.index)
        valid = idx[idx >= 0]
        cache["injective"] = len(np.unique(valid)) == len(valid)
    return cache["injective"]


def interval_with_error(op, ins: list[tuple[Tensor, Tensor]], p: Precision, steps: int) -> tuple[Tensor, Tensor]:
    """Interval image of the box ``ins`` under the computed op: the exact image widened by ``err``."""
    lo, hi, _ = interval_and_error(op, ins, p, steps)
    return lo, hi


def interval_and_error(op, ins: list[tuple[Tensor, Tensor]], p: Precision,
                       steps: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`interval_with_error` and the error it used (None when none: exact ops)."""
    from .interval import interval_node

    if isinstance(op, (ops.Dense, ops.Conv, ops.ConvTranspose)) and not op.fp_extra and op.fp_bias is None:
        lo, hi, err = _dot_interval(op, ins[0], p, steps)
        if _nonnegative(op) and bool((ins[0][0] >= 0).all()):  # the two corners as points, in one call
            corners = torch.cat(ins[0])
            a, b, _ = _dot_interval(op, (corners, corners), p, steps)
            n = lo.shape[0]
            lo, hi = torch.maximum(lo, a[:n]), torch.minimum(hi, b[n:])
        return lo, hi, err
    lo, hi = interval_node(op, ins)
    if isinstance(op, EXACT_INTERVAL):
        return lo, hi, None  # no rounding in the model nor in float64: a ReLU output stays >= 0 exactly
    err = node_error(op, ins, (lo, hi), p, steps)
    if err is None:
        return lo, hi, None
    hull = COMPUTED_HULLS.get(type(op))
    if hull is not None:  # the computed values' own range is tighter than the widened image
        a, b = hull(op, ins[0], p)
        return torch.maximum(lo - err, a), torch.minimum(hi + err, b), err
    return lo - err, hi + err, err


#: op class -> ``(op, (lo, hi), p) -> (lo, hi)``: bounds on the *computed* output of an op whose
#: computed value has a range of its own (Sign's is {-1, 0, 1} whatever its error), registered beside
#: the op's error rule; :func:`interval_and_error` intersects the error-widened image with it
COMPUTED_HULLS: dict[type, Callable] = {}


def _dot_interval(op, box: tuple[Tensor, Tensor], p: Precision, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Interval image and error of a plain Dense/Conv with one product per weight form: the centre
    and the ``P - N`` vector share ``W``, the radius and ``P + N`` share ``|W|``."""
    lo, hi = box
    b = lo.shape[0]
    pos, neg = hi.clamp(min=0), (-lo).clamp(min=0)
    signed = op.apply(torch.cat([(lo + hi) / 2, pos - neg]))
    absolute = op.apply_abs(torch.cat([(hi - lo) / 2, pos + neg + 2 * p.tiny]))
    c = op.bias_vector()
    m = signed[:b] if c is None else signed[:b] + torch.as_tensor(c, dtype=signed.dtype)
    r = absolute[:b]
    model, total = _dot_error(op, absolute[b:], signed[b:], p)
    out = (m - r, m + r)
    err = _finish(model, total, magnitude(*out, p), p, steps)
    lo, hi = out[0] - err, out[1] + err
    if not bool(torch.isfinite(err).all()):  # NaN from infinite input bounds (inf - inf): no bound
        lo = torch.where(torch.isnan(lo), torch.full_like(lo, float("-inf")), lo)
        hi = torch.where(torch.isnan(hi), torch.full_like(hi, float("inf")), hi)
    return lo, hi, err


#: Ops that round nothing in the model and whose interval image certkit computes exactly (max,
#: min, abs and copies of the end points): their intervals are not widened (back-substitution
#: still charges the float64 arithmetic of their relaxations).
EXACT_INTERVAL = (ops.Relu, ops.Clip, ops.Abs, ops.MaxGroup, ops.MaxMin, ops.Select, ops.Concat)


# --------------------------------------------------------------------------- inputs and rows


def round_outward(lo: np.ndarray, hi: np.ndarray, p: Precision) -> tuple[np.ndarray, np.ndarray]:
    """The smallest box of ``p``-representable end points containing ``[lo, hi]`` (float64 arrays):
    every float64 point of the box rounds to a point of this one."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if p.name != "float32":
        return lo, hi
    with np.errstate(over="ignore"):
        l32, h32 = lo.astype(np.float32), hi.astype(np.float32)
    l32 = np.where(l32.astype(np.float64) > lo, np.nextafter(l32, np.float32(-np.inf)), l32)
    h32 = np.where(h32.astype(np.float64) < hi, np.nextafter(h32, np.float32(np.inf)), h32)
    return l32.astype(np.float64), h32.astype(np.float64)


def round_input_set(S: InputSet, p: Precision) -> InputSet:
    """``S`` enlarged so that it contains the rounding to ``p`` of each of its points: the box
    rounded outward; an L_p ball's radius grown by the norm of the largest rounding move
    (``ulp/2`` per coordinate)."""
    if p.name != "float32":
        return S
    lo, hi = round_outward(S.lower.numpy(), S.upper.numpy(), p)
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    if S.center is None:
        return InputSet(lo_t, hi_t)
    half_ulp = p.u * torch.maximum(lo_t.abs(), hi_t.abs()).clamp(min=p.tiny)  # ulp/2 <= u |x|
    grow = torch.linalg.vector_norm(half_ulp, ord=S.p, dim=1)
    return InputSet(lo_t, hi_t, S.center, S.eps + grow * (1 + 1e-6), S.p)


def input_set(graph: Graph, lower, upper) -> InputSet:
    """The box ``[lower, upper]`` (batched or not) as the model's input set: rounded outward to
    the model's precision."""
    return round_input_set(InputSet.box(lower, upper), precision_of(graph))


def row_margin(C: Tensor, d: Tensor, y_lo: Tensor, y_hi: Tensor) -> Tensor:
    """The float64 error of evaluating ``C y - d`` on an output in ``[y_lo, y_hi]`` (how a checker
    tests the spec on onnxruntime's output): a row is proven when its lower bound exceeds this.
    ``C`` (s, m) or (b, s, m), bounds (b, m); result (b, s)."""
    mag = torch.maximum(y_lo.abs(), y_hi.abs())
    Cb = C if C.dim() == 3 else C.expand(mag.shape[0], -1, -1)
    m = float(gamma(C.shape[-1] + 2, U64)) * COMPUTE_SAFETY
    val = torch.einsum("bsm,bm->bs", Cb.abs(), mag) + d.abs()
    return torch.nan_to_num(m * val, nan=float("inf"), posinf=float("inf"))


def spectral_bound(op) -> float:
    """An upper bound on the spectral norm ``||M||_2`` of a linear op: exact (SVD, with a relative
    safety of 1e-9) for a Dense, ``sqrt(||M||_1 ||M||_inf)`` (Schur) from the weights otherwise."""
    if isinstance(op, ops.Dense):
        w = torch.as_tensor(op.weight, dtype=torch.float64)
        return float(torch.linalg.matrix_norm(w, ord=2)) * (1 + 1e-9) + 1e-300
    if isinstance(op, ops.Conv):
        w = np.abs(np.asarray(op.weight, np.float64))  # (C_out, C_in / g, kh, kw)
        g = op.groups
        rows = w.sum(axis=(1, 2, 3)).max()  # a row: one output pixel's window
        per_out = w.sum(axis=(2, 3))  # (C_out, C_in/g): every input pixel is in <= kh kw windows
        cin_g, cout_g = w.shape[1], w.shape[0] // g
        cols = max(per_out[k * cout_g:(k + 1) * cout_g].sum(axis=0).max() for k in range(g)) if cin_g else 0.0
        del cin_g
        return float(np.sqrt(rows * cols)) * (1 + 1e-9)
    if isinstance(op, (ops.ConvTranspose, ops.SparseLinear)):
        return op.norm2_upper()
    if isinstance(op, ops.Scale):
        return float(np.abs(op.scale).max(initial=0.0))
    if isinstance(op, ops.Sum):
        return float(sum(abs(c) for c in op.coeffs))
    if isinstance(op, ops.Select):
        idx = np.asarray(op.index)
        valid = idx[idx >= 0]
        return float(np.sqrt(np.bincount(valid).max(initial=1))) if len(valid) else 0.0
    return 1.0  # Concat: a permutation of its inputs


def propagated_error(graph: Graph, inputs: InputSet, tight: bool = False) -> tuple[Tensor, Tensor]:
    """``(E, E2)``: for every input of the set, ``|f^(x) - f(x)| <= E`` coordinatewise (b, n_out) and
    ``||f^(x) - f(x)||_2 <= E2`` (b,), f^ the network as the model's precision computes it and f
    the real one; both also bound the float64 evaluation error of certkit's reference executor.
    Each node's own error ``err_i`` (from bounds of the computed network) plus its inputs' errors
    carried through: ``|M| E`` coordinatewise and ``||M||_2 E2`` in norm for an affine op,
    ``max|slope|`` times for a Lipschitz activation, the group maximum (norm: the largest group's
    size, square-rooted) for a max. ``tight``: the magnitudes come from DeepPoly bounds of every
    node over the input set (an L_p ball is used as such), not from interval bounds of its box."""
    from .interval import interval_bounds

    p, steps = precision_of(graph), compute_steps(graph)
    if tight:
        from .deeppoly import BoundState

        st = BoundState(graph, inputs, intersect=True, refine_all=True)
        with torch.no_grad():
            for i in sorted(graph.live):
                op = graph.nodes[i].op
                if isinstance(op, ops.RELAXED):
                    st.relaxation(i)  # refines its input, tightens its output
                elif i != 0:
                    st.refine(i, None)
        bounds = st.bounds
    else:
        bounds = interval_bounds(graph, inputs)
    E: list[Tensor | None] = [None] * len(graph.nodes)
    E2: list[Tensor | None] = [None] * len(graph.nodes)
    E[0] = torch.zeros_like(inputs.lower)
    E2[0] = torch.zeros(inputs.batch, dtype=inputs.lower.dtype)
    with torch.no_grad():
        for i in range(1, len(graph.nodes)):
            if i not in graph.live:
                continue
            node = graph.nodes[i]
            op = node.op
            ins = [tuple(t.detach() for t in bounds[j]) for j in node.inputs]
            out = None if isinstance(op, ops.LinearOp) else interval_with_error(op, ins, p, steps)
            err = node_error(op, ins, out, p, steps)
            if isinstance(op, ops.ImplicitLayer):
                # the real layer at the real input vs the computed one at the computed input: its
                # Lipschitz constant times the input's error, plus both within err of the computed input
                # (err once here, once below)
                e_in, e2_in = E[node.inputs[0]], E2[node.inputs[0]]
                carried = op.lipschitz("inf") * e_in.amax(dim=-1, keepdim=True).expand_as(e_in) + err
                norm = op.lipschitz("2") * e2_in + torch.linalg.vector_norm(err, dim=-1)
            elif isinstance(op, ops.LinearOp):
                carried = op.apply_abs(*[E[j] for j in node.inputs])
                norm = spectral_bound(op) * sum(E2[j] for j in node.inputs)
            elif isinstance(op, (ops.MaxGroup, ops.MaxMin)):
                # |max(a^, b^) - max(a, b)| <= max(|a^ - a|, |b^ - b|), the same for min
                carried = group_max(op, E[node.inputs[0]])
                k = np.asarray(op.index).shape[1] if isinstance(op, ops.MaxGroup) else 2
                norm = float(np.sqrt(k)) * E2[node.inputs[0]]
            elif isinstance(op, ops.Product):
                # |x1^ x2^ - x1 x2| = |d1 x2^ + x1^ d2 - d1 d2| <= E1 m2 + m1 E2 + E1 E2 (m: |x^|)
                (e1, e2), (m1, m2) = ([E[j] for j in node.inputs], [magnitude(*b, p) for b in ins])
                carried = e1 * m2 + m1 * e2 + e1 * e2
                norm = torch.linalg.vector_norm(carried, dim=-1)
            elif hasattr(op, "slope_max"):
                # slopes that depend on the region (certkit.graph.elementwise): the real input is
                # within E of the computed one, which is in [lo, hi]; steps jump (slope inf)
                e_in, e2_in = E[node.inputs[0]], E2[node.inputs[0]]
                s = op.slope_max(ins[0][0] - e_in, ins[0][1] + e_in)
                carried = torch.where(e_in > 0, s * e_in, torch.zeros_like(e_in))
                by_norm = torch.where(e2_in > 0, s.amax(dim=-1) * e2_in, torch.zeros_like(e2_in))
                norm = torch.minimum(by_norm, torch.linalg.vector_norm(carried, dim=-1))
            else:
                carried = _slope(op) * E[node.inputs[0]]
                norm = _slope(op) * E2[node.inputs[0]]
            E[i] = carried if err is None else carried + err
            E2[i] = norm if err is None else norm + torch.linalg.vector_norm(err, dim=-1)
    # posinf too: nan_to_num would otherwise turn an infinite error (a step's jump) into 1.8e308
    return (torch.nan_to_num(E[graph.output], nan=float("inf"), posinf=float("inf")),
            torch.nan_to_num(E2[graph.output], nan=float("inf"), posinf=float("inf")))


# the error rule of products of two variable tensors, registered on import
from . import relax_bilinear  # noqa: E402,F401

# the error rules of the unary elementwise ops (Exp, Log, Sin, ...), registered on import
from . import fperror_elementwise  # noqa: E402,F401

# the budgets of fused onnxruntime kernels (Softmax, LayerNormalization), registered on import
from . import fperror_kernels  # noqa: E402,F401

# the implicit-bias layer's deviation (paper 003), charged as its error, registered on import
from . import fperror_implicit  # noqa: E402,F401
