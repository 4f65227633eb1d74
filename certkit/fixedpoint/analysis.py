"""Fixed points of nonnegative nets ``T: R^k_+ -> R^k_+`` (paper 001; DESIGN.md section 6).

The graph is read as layers ``T_i(x) = f_i(M_i x + c_i)``: a maximal chain of linear IR ops
(composed into ``M_i``, ``c_i``) followed by one componentwise activation ``f_i`` (or the
identity at the end). Per layer we check, with the activation classes of :data:`ACTIVATIONS`:

* **monotone** (paper 001, "nonnegative monotonic networks"): ``M_i >= 0`` (every op of the
  chain nonnegative), ``f_i`` nondecreasing, and ``T_i`` maps ``R_+`` into ``R_+``: ``f_i``
  globally nonnegative (ReLU, sigmoid: negative biases allowed), or ``c_i >= 0`` and
  ``f_i(0) >= 0``;
* **weakly scalable** ``T(r x) <= r T(x)`` for ``r >= 1``: monotone, ``c_i >= 0`` and ``f_i``
  subhomogeneous on ``R_+`` (``f(r t) <= r f(t)``; e.g. concave with ``f(0) >= 0``). Proof:
  ``f(r M x + c) <= f(r (M x + c)) <= r f(M x + c)``, and layers compose by monotonicity;
* **scalable** ``T(r x) << r T(x)`` for ``r > 1`` (sufficient condition): weakly scalable and
  the last layer has ``c >> 0`` with ``f`` strictly increasing on ``R_+``, or ``f`` strictly
  subhomogeneous (``f(r t) < r f(t)``: sigmoid, concave with ``f(0) > 0``; softplus, whose
  ``f(t)/t`` strictly decreases).

Asymptotic map: with ``M_i >= 0`` and Lipschitz activations of tail slope
``s_i = lim_{t -> inf} f_i(t) / t``, ``T_inf(x) = lim T(p x) / p = (prod s_i) M_n ... M_1 x``
on ``R^k_+`` (DESIGN.md section 6). Its spectral radius is the Perron root of that
nonnegative matrix ``P``: shifted power iteration gives ``v``, and Collatz-Wielandt gives
``min_{v_i > 0} (P v)_i / v_i <= rho(P) <= max_i (P w)_i / w_i`` for ``w = v + eps > 0``,
widened by :data:`REL_MARGIN` for rounding.

What follows: if ``T`` is monotone (maps ``R_+`` into itself, continuous) and
``rho(T_inf) < 1``, pick ``w > 0`` with ``P w << w``; then ``T(p w) <= p w`` for large ``p``, so
``T`` maps the box ``[0, p w]`` into itself: a fixed point exists (Brouwer), and the iteration
from ``x_0 = 0`` increases to the least one (paper 001). Scalable: the fixed point exists iff
``rho < 1`` and is unique and positive. Weakly scalable and growing fast enough (upper- and
lower-primitive at its fixed points, not checked here): ``Fix(T)`` is an interval.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import ModelError
from ..graph import ops
from ..graph.graph import Graph

#: Relative widening of the Collatz-Wielandt bounds (float64 rounding of nonnegative
#: mat-vec products is ~ n * 1e-16 relative).
REL_MARGIN = 1e-9


@dataclass(frozen=True)
class ActClass:
    """Properties of a componentwise activation on the real line / on ``R_+``."""

    monotone: bool  # nondecreasing on R
    nonneg: bool  # f(t) >= 0 for every t
    f0: float  # f(0)
    subhomogeneous: bool  # f(r t) <= r f(t), t >= 0, r >= 1
    strict_increasing: bool  # strictly increasing on [0, inf)
    tail: float  # lim f(t) / t, t -> inf
    strictly_sub: bool = False  # f(r t) < r f(t), t >= 0, r > 1 (sigmoid: concave, f(0) > 0)


IDENTITY = ActClass(True, False, 0.0, True, True, 1.0)


def classify(op) -> ActClass | None:
    """The class of activation ``op`` (None: not componentwise or not handled)."""
    if op is None:
        return IDENTITY
    if isinstance(op, ops.Relu):
        return ActClass(True, True, 0.0, True, True, 1.0)
    if isinstance(op, ops.LeakyRelu):
        s = op.slope
        return ActClass(s >= 0, False, 0.0, True, True, 1.0)  # the identity on R_+
    if isinstance(op, ops.Sigmoid):
        return ActClass(True, True, 0.5, True, True, 0.0, strictly_sub=True)
    if isinstance(op, ops.Tanh):
        return ActClass(True, False, 0.0, True, True, 0.0)
    if isinstance(op, ops.Softplus):
        # f(t)/t is decreasing on (0, inf): (f(t) - t f'(t) = log(1+e^t) - t sigmoid(t) > 0)
        return ActClass(True, True, float(np.log(2.0)), True, True, 1.0, strictly_sub=True)
    if isinstance(op, ops.CappedLeakyRelu):
        a, g = op.alpha, op.gain
        concave = g >= 0  # slope a + g on [0, beta], then a
        return ActClass(a >= 0 and a + g >= 0, False, 0.0, concave, a > 0 and a + g > 0, a)
    if isinstance(op, ops.Clip):
        lo, hi = np.asarray(op.lo, np.float64), np.asarray(op.hi, np.float64)
        finite_hi = np.isfinite(hi)
        if finite_hi.any() and not finite_hi.all():
            return None  # tails 0 and 1 mixed: T_inf is not a scalar multiple of M_n ... M_1
        f0 = float(np.min(np.clip(0.0, lo, hi)))
        # with f(0) >= 0, f(t)/t is nonincreasing on (0, inf) (flat, slope 1, flat)
        return ActClass(True, bool(np.all(lo >= 0)), f0, f0 >= 0, False, 0.0 if finite_hi.all() else 1.0)
    if isinstance(op, (ops.Abs, ops.NActivation)):
        return ActClass(False, isinstance(op, ops.Abs), 0.0, True, False, 1.0)
    return None


@dataclass(frozen=True)
class LayerReport:
    index: int
    nodes: list[str]
    activation: str
    n_in: int
    n_out: int
    min_weight: float
    min_bias: float
    monotone: bool
    weakly_scalable: bool
    reasons: list[str]


@dataclass
class FixedPointReport:
    """Everything ``certkit fixedpoint`` reports (JSON-serialisable through ``to_dict``)."""

    model: str
    k: int
    layers: list[LayerReport]
    monotone: bool
    weakly_scalable: bool
    scalable: bool
    tail_factor: float
    rho_lower: float | None
    rho_upper: float | None
    norm_product: float | None  # prod_i ||M_i||_2 (estimates, float64 SVD)
    product_norm: float | None  # ||M_n ... M_1||_2
    layer_norms: list[float]
    conclusions: list[str]
    fixed_point: list[float] | None = None
    iterations: int = 0
    residual_inf: float | None = None
    residual_2: float | None = None
    converged: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- layers


@dataclass
class _Layer:
    nodes: list[int]
    linear: list[ops.LinearOp]
    act: object | None


def _split_layers(g: Graph) -> list[_Layer]:
    """Chain of (linear ops, activation) layers; ModelError if the graph is not such a chain."""
    order = sorted(g.live)
    layers: list[_Layer] = []
    cur = _Layer([], [], None)
    prev = 0
    for i in order[1:]:
        n = g.nodes[i]
        if n.inputs != (prev,):
            raise ModelError(f"fixedpoint needs a chain of layers (one input per node); node '{n.name}' "
                             f"({n.op.kind}) reads {len(n.inputs)} value(s) or a value other than the "
                             "previous node's")
        if isinstance(n.op, ops.ImplicitLayer):
            raise ModelError(f"fixedpoint analyses nonnegative nets (paper 001); node '{n.name}' is an "
                             "implicit-bias layer (paper 003): use `certkit ibnn`")
        if isinstance(n.op, ops.LinearOp):
            if cur.act is not None:
                layers.append(cur)
                cur = _Layer([], [], None)
            cur.nodes.append(i)
            cur.linear.append(n.op)
        else:
            if cur.act is not None or not cur.linear:
                layers.append(cur)
                cur = _Layer([], [], None)
            cur.nodes.append(i)
            cur.act = n.op
        prev = i
    if prev != g.output:
        raise ModelError("fixedpoint: the output is not the end of the layer chain")
    layers.append(cur)
    return [lay for lay in layers if lay.nodes]


def _min_coeff(op: ops.LinearOp) -> float:
    """Smallest coefficient of the op's matrix (0 when it only copies/drops entries)."""
    if isinstance(op, (ops.Dense, ops.Conv)):
        return float(np.min(op.weight))
    if isinstance(op, ops.Scale):
        return float(np.min(op.scale))
    if isinstance(op, (ops.Select, ops.Concat)):
        return 0.0 if isinstance(op, ops.Select) and not (op.index >= 0).all() else 1.0
    if isinstance(op, ops.Sum):
        return float(min(op.coeffs))
    return -np.inf


def _apply(linear: list[ops.LinearOp], x: torch.Tensor, bias: bool) -> torch.Tensor:
    for op in linear:
        x = op.forward(x) if bias else op.apply(x)
    return x


def _matrix(linear: list[ops.LinearOp], n_in: int) -> np.ndarray:
    eye = torch.eye(n_in, dtype=torch.float64)
    return _apply(linear, eye, False).numpy().T  # (n_out, n_in)


# --------------------------------------------------------------------------- analysis


def _layer_report(k: int, g: Graph, lay: _Layer) -> tuple[LayerReport, ActClass | None]:
    n_in = g.size(g.nodes[lay.nodes[0]].inputs[0])
    c = _apply(lay.linear, torch.zeros(1, n_in, dtype=torch.float64), True).numpy()[0] if lay.linear \
        else np.zeros(n_in)
    minw = min((_min_coeff(op) for op in lay.linear), default=1.0)
    minb = float(c.min()) if c.size else 0.0
    cls = classify(lay.act)
    name = "identity" if lay.act is None else lay.act.kind
    why: list[str] = []
    if minw < 0:
        why.append(f"a negative weight ({minw:.3g})")
    if cls is None:
        why.append(f"activation {name} is not componentwise / not handled")
        mono = False
        weak = False
    else:
        if not cls.monotone:
            why.append(f"activation {name} is not monotone")
        maps_pos = cls.nonneg or (minb >= 0 and cls.f0 >= 0)
        if not maps_pos:
            why.append(f"negative bias ({minb:.3g}) with {name}, which is not globally nonnegative")
        mono = minw >= 0 and cls.monotone and maps_pos
        weak = mono and minb >= 0 and cls.subhomogeneous
        if mono and minb < 0:
            why.append(f"negative bias ({minb:.3g}): not weakly scalable")
        if mono and not cls.subhomogeneous:
            why.append(f"activation {name} is not subhomogeneous on R_+")
    rep = LayerReport(k, [g.nodes[i].name for i in lay.nodes], name, n_in, g.size(lay.nodes[-1]),
                      minw, minb, mono, weak, why)
    return rep, cls


def perron_bounds(apply_p, n: int, iters: int = 3000, tol: float = 1e-12) -> tuple[float, float]:
    """Collatz-Wielandt bounds ``(lower, upper)`` on the Perron root of a nonnegative ``P``
    given by ``apply_p`` (float64 mat-vec). Sound for any ``v`` (see module doc); power
    iteration on ``P + delta I`` (delta = 1% of the current upper bound) only makes them tight."""
    v = np.ones(n)
    lo, hi = 0.0, np.inf
    for it in range(iters):
        pv = apply_p(v)
        w = v + 1e-9 * v.max()
        pw = apply_p(w)
        hi = min(hi, float(np.max(pw / w)))
        # lower: P v' >= lam v' on the support S of v' = v 1_S implies rho >= lam (any S)
        vs = np.where(v > 1e-6 * v.max(), v, 0.0)
        sup = vs > 0
        if sup.any():
            lo = max(lo, float(np.min(apply_p(vs)[sup] / vs[sup])))
        if hi - lo <= tol * max(hi, 1e-300) or hi == 0.0:
            break
        nv = pv + 0.01 * hi * v  # a small shift keeps the iteration aperiodic (same Perron vector)
        v = nv / nv.max()
    return max(0.0, lo * (1 - REL_MARGIN)), hi * (1 + REL_MARGIN)


def analyse(g: Graph, model: str = "", max_iter: int = 100000, tol: float = 1e-10) -> FixedPointReport:
    """The fixed-point report of ``g`` (see module doc)."""
    k = g.n_inputs
    if g.n_outputs != k:
        raise ModelError(f"fixedpoint needs a map R^k -> R^k; {model or 'the model'} maps "
                         f"R^{g.n_inputs} -> R^{g.n_outputs}")
    layers = _split_layers(g)
    reps, classes = [], []
    for i, lay in enumerate(layers):
        rep, cls = _layer_report(i + 1, g, lay)
        reps.append(rep)
        classes.append(cls)
    monotone = all(r.monotone for r in reps)
    weak = all(r.weakly_scalable for r in reps)
    last, lcls = reps[-1], classes[-1]
    scalable = weak and lcls is not None and (
        (last.min_bias > 0 and lcls.strict_increasing) or lcls.strictly_sub)
    notes: list[str] = []
    # linear parts, norms, asymptotic map
    lin = [lay.linear for lay in layers if lay.linear]
    dims = [(g.size(g.nodes[lay.nodes[0]].inputs[0]), g.size(lay.nodes[-1])) for lay in layers if lay.linear]
    small = all(a * b <= 4e7 for a, b in dims)
    layer_norms: list[float] = []
    norm_product = product_norm = None
    if small and lin:
        mats = [_matrix(L, a) for L, (a, _) in zip(lin, dims)]
        layer_norms = [float(np.linalg.norm(M, 2)) for M in mats]
        norm_product = float(np.prod(layer_norms))
        P = mats[0]
        for M in mats[1:]:
            P = M @ P
        product_norm = float(np.linalg.norm(P, 2))
    elif lin:
        notes.append("layers too large to form the matrices: norms not computed")
    tail = float(np.prod([c.tail for c in classes])) if all(c is not None for c in classes) else float("nan")
    rho_lo = rho_hi = None
    if monotone:
        if tail == 0.0:
            rho_lo = rho_hi = 0.0
        else:
            def apply_p(v: np.ndarray) -> np.ndarray:
                x = torch.as_tensor(v, dtype=torch.float64)[None]
                for L in lin:
                    x = _apply(L, x, False)
                return tail * x.numpy()[0]
            rho_lo, rho_hi = perron_bounds(apply_p, k)
    else:
        notes.append("not monotone: the asymptotic-map theory of paper 001 does not apply; rho not computed")
    conclusions = _conclusions(monotone, weak, scalable, rho_lo, rho_hi)
    rep = FixedPointReport(model, k, reps, monotone, weak, scalable, tail, rho_lo, rho_hi, norm_product,
                           product_norm, layer_norms, conclusions, notes=notes)
    if not monotone or (rho_hi is not None and rho_hi < 1) or rho_hi is None:
        _iterate(g, rep, max_iter, tol, guaranteed=monotone and rho_hi is not None and rho_hi < 1)
    return rep


def _conclusions(monotone: bool, weak: bool, scalable: bool, lo, hi) -> list[str]:
    out: list[str] = []
    if not monotone:
        return ["T is not shown monotone: paper 001's results do not apply"]
    if hi is not None and hi < 1:
        out.append(f"rho(T_inf) <= {hi:.6g} < 1 and T is monotone: a fixed point exists, and the iteration "
                   "from 0 converges to the least fixed point (paper 001)")
        if scalable:
            out.append("T is scalable: the fixed point is unique and positive (paper 001, Cavalcante et al. 2019)")
        elif weak:
            out.append("T is weakly scalable: if T grows fast enough (upper- and lower-primitive at its fixed "
                       "points, not checked), Fix(T) is an interval (paper 001)")
    elif lo is not None and lo >= 1:
        if scalable:
            out.append(f"rho(T_inf) >= {lo:.6g} >= 1 and T is scalable: T has no fixed point (paper 001)")
        else:
            out.append(f"rho(T_inf) >= {lo:.6g} >= 1: existence not established (T is not scalable)")
    else:
        out.append(f"rho(T_inf) in [{lo:.6g}, {hi:.6g}] straddles 1: existence not established")
    return out


def _iterate(g: Graph, rep: FixedPointReport, max_iter: int, tol: float, guaranteed: bool) -> None:
    """Fixed-point iteration from 0 in float64; stops when ||T(x) - x||_inf <= tol."""
    x = torch.zeros(1, rep.k, dtype=torch.float64)
    res = float("inf")
    it = 0
    with torch.no_grad():
        for it in range(1, max_iter + 1):
            y = g.forward(x)
            res = float((y - x).abs().max())
            x = y
            if res <= tol or not np.isfinite(res):
                break
        r = g.forward(x) - x
    rep.iterations = it
    rep.residual_inf = float(r.abs().max())
    rep.residual_2 = float(r.norm())
    rep.converged = rep.residual_inf <= tol
    rep.fixed_point = x[0].tolist()
    if rep.converged and not guaranteed:
        rep.notes.append("the iteration from 0 converged numerically, but no theorem guarantees this is the "
                         "least (or the only) fixed point")
    if not rep.converged:
        rep.notes.append(f"the iteration from 0 did not reach residual {tol:g} in {max_iter} steps")
