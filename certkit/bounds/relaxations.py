"""Linear relaxations of elementwise activations (DESIGN.md section 2).

For an activation ``f`` and pre-activation bounds ``l <= x <= u`` a relaxation
returns tensors ``(lw, lb, uw, ub)`` of the shape of ``l`` with

    lw * x + lb  <=  f(x)  <=  uw * x + ub      for every x in [l, u].

One function per op class, registered in ``RELAXATIONS``. ``slope`` (optional)
overrides the free lower slope of ReLU-like units (alpha-CROWN); ``None``
means DeepPoly's adaptive choice (slope 1 when u > -l, else 0).
Soundness of every relaxation is tested by dense sampling
(``tests/test_relaxations.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..graph import ops

Tensor = torch.Tensor
Relax = tuple[Tensor, Tensor, Tensor, Tensor]
RELAXATIONS: dict[type, Callable[..., Relax]] = {}

def relaxation(cls: type):
    def deco(fn):
        RELAXATIONS[cls] = fn
        return fn
    return deco


@dataclass(frozen=True)
class AlphaParam:
    """How alpha-CROWN parametrises the relaxation of one op class (its ``slope`` argument):
    ``start(op, l, u, base)`` the first iterate's value (b, n), which gives DeepPoly's lines ``base``;
    ``bounds(op)`` the range the optimiser projects onto (the relaxation clamps too, so any value is
    sound); ``rate`` the learning rate's factor (tangent points move a whole interval per unit);
    ``from_base(op, l, u, base, a)``, when given, the lines for the parameters ``a`` (b, rows, n) built from
    DeepPoly's ``base`` (b, n) on the same bounds -- the relaxation's own lines, cheaper than rebuilding them
    at every alpha iterate."""

    start: Callable[..., Tensor]
    bounds: Callable[..., tuple[float, float]] = lambda op: (0.0, 1.0)
    rate: float = 1.0
    from_base: Callable[..., Relax] | None = None
    #: can some parameter values give a slope where DeepPoly's two lines are flat? Then the back-substitution
    #: must not skip such "dead" columns under alpha-CROWN (:meth:`~certkit.bounds.deeppoly.BoundState.
    #: _alive_columns`): the skip drops the line's slope term and keeps its intercept. True unless shown
    #: otherwise: a sigmoid across 0 with ``l = -132, u = 47`` has DeepPoly's slope ``min(s'(l), s'(u)) = 0`` (s'(47)
    #: rounds to 0), alpha's tangent there has slope up to 1/4 and intercept ``s(t) - s'(t) t``, and without
    #: its slope term that intercept is no bound (the fuzzer's bounds mode: an upper bound 0.5625 where
    #: onnxruntime gives 0.5911). ReLU-like units are False: the parameter moves only unstable units' lower
    #: slope, and their upper chord is never flat.
    revives: bool = True


#: op class -> its alpha-CROWN parameter (:class:`AlphaParam`); registered beside the relaxations
ALPHA_PARAMS: dict[type, AlphaParam] = {}


def _own_lower_slope(op, l: Tensor, u: Tensor, base: Relax) -> Tensor:
    """The parameter is the lower line's slope: DeepPoly's own."""
    return base[0]


def _clip_start(op, l: Tensor, u: Tensor, base: Relax) -> Tensor:
    """Clip's parameter is the slope of the line through its one kink inside the box: DeepPoly's lower
    slope where that is the lower kink (``l < lo``), its upper slope where it is the upper one (where
    neither kink is inside, the parameter is unused)."""
    return torch.where(l < torch.as_tensor(op.lo, dtype=l.dtype), base[0], base[2])


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    """``a / b``, with ``b == 0`` replaced by 1 (no inf/nan, also in unselected
    ``torch.where`` branches). Every caller only uses the quotient where ``b > 0``.

    Only an exact 0 is replaced: replacing every ``|b| < 1e-9`` by 1 made the chord of
    an unstable ReLU-like/Clip/Abs unit narrower than 1e-9 wrong, i.e. unsound by up to
    the width (tests/test_relaxations.py)."""
    return a / torch.where(b == 0, torch.ones_like(b), b)


def relu_like(l: Tensor, u: Tensor, s: float = 0.0, slope: Tensor | None = None) -> Relax:
    """Relaxation of ``max(x, 0) + s min(x, 0)`` for 0 <= s <= 1 (convex, kink at 0).

    Upper: the chord from (l, f(l)) to (u, f(u)). Lower: ``a x`` with a in [s, 1]
    (any such line through the kink is below a convex function with slopes s, 1).
    """
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    ch = _safe_div(u - s * l, u - l)
    ch_b = s * l - ch * l  # intercept of the chord (at x = 0 the chord is >= 0)
    if slope is None:
        a = torch.where(u > -l, one, s * one)
    else:
        a = slope.clamp(min=s, max=1.0)
    lw = torch.where(active, one, torch.where(inactive, s * one, a))
    uw = torch.where(active, one, torch.where(inactive, s * one, ch))
    ub = torch.where(unstable, ch_b, zero)
    return lw, zero, uw, ub


def relu_slopes(op, l: Tensor, u: Tensor, base: Relax, a: Tensor) -> Relax:
    """A ReLU's lines for the alpha slopes ``a`` (b, rows, n): DeepPoly's lines ``base`` (b, n) with the
    lower slope replaced by ``a`` clamped to [0, 1] on the unstable neurons -- :func:`relu_like`'s lines
    with ``slope=a`` (the upper chord and the stable neurons' lines do not depend on the slope), in two
    elementwise passes over the rows instead of fifteen (relu_like was 15% of oval21's branch-and-bound
    time, 2026-12-06)."""
    unstable = ~((l >= 0) | (u <= 0))[:, None, :]
    lw = torch.where(unstable, a.clamp(min=0.0, max=1.0), base[0][:, None, :])
    return lw, base[1][:, None, :], base[2][:, None, :], base[3][:, None, :]


@relaxation(ops.Relu)
def _relu(op: ops.Relu, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    return relu_like(l, u, 0.0, slope)


@relaxation(ops.LeakyRelu)
def _leaky(op: ops.LeakyRelu, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    s = op.slope
    if 0.0 <= s <= 1.0:
        return relu_like(l, u, s, slope)
    # s > 1 (concave) or s < 0: f(x) = s*x + (1 - s) relu(x); relax relu and combine
    rlw, rlb, ruw, rub = relu_like(l, u, 0.0, slope)
    c = 1.0 - s
    if c >= 0:
        return s + c * rlw, c * rlb, s + c * ruw, c * rub
    return s + c * ruw, c * rub, s + c * rlw, c * rlb


def _convex_kink(l: Tensor, u: Tensor, k: Tensor, fl: Tensor, fu: Tensor, s_left: float, s_right: float,
                 slope: Tensor | None) -> Relax:
    """A convex piecewise-linear map with one kink at k (value fk), slopes s_left < s_right,
    restricted to [l, u] with l < k < u: chord above, a line through the kink below."""
    ch = _safe_div(fu - fl, u - l)
    ch_b = fl - ch * l
    a = torch.where(u - k > k - l, torch.full_like(l, s_right), torch.full_like(l, s_left)) if slope is None \
        else slope.clamp(min=s_left, max=s_right)
    fk = fl + s_left * (k - l)
    return a, fk - a * k, ch, ch_b


@relaxation(ops.Clip)
def _clip(op: ops.Clip, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    lo = torch.as_tensor(op.lo, dtype=l.dtype).expand_as(l)
    hi = torch.as_tensor(op.hi, dtype=l.dtype).expand_as(l)
    f = lambda x: torch.minimum(torch.maximum(x, lo), hi)  # noqa: E731
    fl, fu = f(l), f(u)
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    # constant pieces and the identity piece
    const = (u <= lo) | (l >= hi)
    ident = (l >= lo) & (u <= hi)
    # only the lower kink inside (convex): lo + relu(x - lo)
    low_k = (l < lo) & (u > lo) & (u <= hi)
    # only the upper kink inside (concave): hi - relu(hi - x)
    up_k = (l >= lo) & (l < hi) & (u > hi)
    both = (l < lo) & (u > hi)
    lo_f = torch.where(torch.isfinite(lo), lo, l)
    hi_f = torch.where(torch.isfinite(hi), hi, u)
    a1, b1, c1, d1 = _convex_kink(l, u, lo_f, fl, fu, 0.0, 1.0, slope)
    # concave case: negate the convex relaxation of -f(-x) ... done directly:
    ch = _safe_div(fu - fl, u - l)
    ch_b = fl - ch * l
    a2 = torch.where(hi_f - l > u - hi_f, one, zero) if slope is None else slope.clamp(0.0, 1.0)
    b2 = hi_f - a2 * hi_f
    # both kinks: lines through (lo, lo)-(u, hi) below and (l, lo)-(hi, hi) above
    s_lo = _safe_div(hi_f - lo_f, u - lo_f)
    s_hi = _safe_div(hi_f - lo_f, hi_f - l)
    lw = torch.where(const, zero, torch.where(ident, one, torch.where(low_k, a1, torch.where(up_k, ch, s_lo))))
    lb = torch.where(const, fl, torch.where(ident, zero, torch.where(low_k, b1, torch.where(up_k, ch_b,
                                                                                             lo_f - s_lo * lo_f))))
    uw = torch.where(const, zero, torch.where(ident, one, torch.where(low_k, c1, torch.where(up_k, a2, s_hi))))
    ub = torch.where(const, fu, torch.where(ident, zero, torch.where(low_k, d1, torch.where(up_k, b2,
                                                                                             hi_f - s_hi * hi_f))))
    del both
    return lw, lb, uw, ub


@relaxation(ops.Abs)
def _abs(op: ops.Abs, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    pos, neg = l >= 0, u <= 0
    ch = _safe_div(u + l, u - l)  # chord slope through (l, -l), (u, u)
    ch_b = -l - ch * l
    a = ch.clamp(-1.0, 1.0) if slope is None else slope.clamp(-1.0, 1.0)
    lw = torch.where(pos, one, torch.where(neg, -one, a))
    uw = torch.where(pos, one, torch.where(neg, -one, ch))
    ub = torch.where(pos | neg, zero, ch_b)
    return lw, zero, uw, ub


def _s_shaped(f, df, l: Tensor, u: Tensor, inflection: float = 0.0) -> Relax:
    """Sigmoid/tanh: convex below the inflection point, concave above (DeepPoly).

    Convex part: chord above, tangent at the midpoint below; concave part:
    the mirror; across the inflection point: slope min(f'(l), f'(u)) through
    both end points (f' is unimodal, so it is below f' on all of [l, u]).
    """
    fl, fu = f(l), f(u)
    m = (l + u) / 2
    fm, dm = f(m), df(m)
    narrow = (u - l) < 1e-6
    ch = _safe_div(fu - fl, u - l)
    ch_b = fl - ch * l
    tg_b = fm - dm * m
    lam = torch.minimum(df(l), df(u))
    convex = (u <= inflection) & ~narrow
    concave = (l >= inflection) & ~narrow
    lw = torch.where(convex, dm, torch.where(concave, ch, lam))
    lb = torch.where(convex, tg_b, torch.where(concave, ch_b, fl - lam * l))
    uw = torch.where(convex, ch, torch.where(concave, dm, lam))
    ub = torch.where(convex, ch_b, torch.where(concave, tg_b, fu - lam * u))
    return lw, lb, uw, ub


#: bisection steps for the touching point of a tangent from an end point (:func:`_touching`)
TOUCH_STEPS = 30
#: how far past the inflection point the touching points are searched (f' there is below 1e-26 for
#: sigmoid and tanh: the tangent there is flat, below the function at every end point)
TOUCH_REACH = 60.0


def _touching(f, df, a: Tensor, c: Tensor, far: Tensor) -> Tensor:
    """A point ``t`` at or beyond (seen from the inflection point ``c``) where the tangent from
    ``(a, f(a))`` touches ``f`` on the curved part between ``c`` and ``far`` away from ``a`` (concave past
    ``c`` when ``a < c``, convex below ``c`` when ``a > c``). Every tangent at or beyond it stays on the
    right side of ``f`` at ``a`` (below ``f(a)`` for a lower line, above for an upper), and so on the whole
    interval. Bisection keeps ``far`` where the tangent is shallower than the secant from ``a``: past the
    touching point."""
    a, c, far = a.detach(), c.detach(), far.detach()
    fa = f(a)
    near = c.clone()
    for _ in range(TOUCH_STEPS):
        mid = (near + far) / 2
        steep = df(mid) >= _safe_div(f(mid) - fa, mid - a)
        near = torch.where(steep, mid, near)
        far = torch.where(steep, far, mid)
    return far


def _s_shaped_tangents(f, df, l: Tensor, u: Tensor, theta: Tensor, inflection: float = 0.0) -> Relax:
    """The relaxation of an S-shaped unit with its tangent points chosen by ``theta`` in [0, 1] (alpha-CROWN
    for sigmoid and tanh; auto_LiRPA optimises the same tangent points). Below, a tangent at ``t`` in the
    convex part: any ``t`` in ``[l, u]`` when ``u`` is below the inflection point; across it, ``t`` between
    ``l`` and the touching point of the tangent from ``(u, f(u))`` (:func:`_touching`; every such tangent is
    below ``f`` on ``[l, u]``); above the inflection point the chord. Above, the mirror. ``theta = 1`` is the
    steepest valid tangent, 0 the one at the end point. Intervals narrower than 1e-6, and unbounded ones,
    keep DeepPoly's lines (nothing to choose; no sloped line stays on one side of f out to infinity)."""
    base = _s_shaped(f, df, l, u, inflection)
    theta = theta.clamp(0.0, 1.0)
    c = torch.full_like(l, inflection)
    narrow = ((u - l) < 1e-6) | ~(torch.isfinite(l) & torch.isfinite(u))  # no tangent is below f up to -inf
    convex, concave = (u <= c) & ~narrow, (l >= c) & ~narrow
    cross = ~(convex | concave | narrow)
    # lower tangent points: [l, u] (convex), [min(l, T), T] (across; T past the touching point), and the
    # mirror above. The touching points are moved 1e-9 (relative) further to the safe side: the
    # bisection's comparisons round, and a point within rounding of the true one may sit on its wrong side
    T_lo, T_up = u, l
    if bool(cross.any()):  # the bisections only where some unit crosses (alpha recomputes this every step)
        T_lo = _touching(f, df, u, c, torch.minimum(l, c - TOUCH_REACH))
        T_lo = torch.where(cross, T_lo - 1e-9 * (1 + T_lo.abs()), u)
        T_up = _touching(f, df, l, c, torch.maximum(u, c + TOUCH_REACH))
        T_up = torch.where(cross, T_up + 1e-9 * (1 + T_up.abs()), l)
    lo_a, lo_b = torch.minimum(l, T_lo), T_lo
    t_lo = lo_a + theta * (lo_b - lo_a)
    up_a, up_b = torch.maximum(u, T_up), T_up
    t_up = up_a + theta * (up_b - up_a)
    dl, du = df(t_lo), df(t_up)
    lw, lb, uw, ub = base
    tangent_lo = convex | cross
    tangent_up = concave | cross
    lw = torch.where(tangent_lo, dl, lw)
    lb = torch.where(tangent_lo, f(t_lo) - dl * t_lo, lb)
    uw = torch.where(tangent_up, du, uw)
    ub = torch.where(tangent_up, f(t_up) - du * t_up, ub)
    return lw, lb, uw, ub


def _sigmoid_d(x: Tensor) -> Tensor:
    y = torch.sigmoid(x)
    return y * (1 - y)


def _tanh_d(x: Tensor) -> Tensor:
    return 1 - torch.tanh(x) ** 2


@relaxation(ops.Sigmoid)
def _sigmoid(op: ops.Sigmoid, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    if slope is not None:  # alpha-CROWN: the tangent points (_s_shaped_tangents)
        return _s_shaped_tangents(torch.sigmoid, _sigmoid_d, l, u, slope)
    return _s_shaped(torch.sigmoid, _sigmoid_d, l, u)


@relaxation(ops.Tanh)
def _tanh(op: ops.Tanh, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    if slope is not None:
        return _s_shaped_tangents(torch.tanh, _tanh_d, l, u, slope)
    return _s_shaped(torch.tanh, _tanh_d, l, u)


#: the S-shaped units whose alpha parameter is a tangent point (:func:`_s_shaped_tangents`), in [0, 1]
S_SHAPED = (ops.Sigmoid, ops.Tanh)


def _leaky_bounds(op) -> tuple[float, float]:
    s = op.slope  # 0 <= s <= 1: the lower slope in [s, 1]; otherwise the relu part's, in [0, 1]
    return (s, 1.0) if 0.0 <= s <= 1.0 else (0.0, 1.0)


def _leaky_start(op, l: Tensor, u: Tensor, base: Relax) -> Tensor:
    """The lower slope (0 <= s <= 1), or else the lower slope of the relu part ``s x + (1 - s) relu(x)``
    is built from (DeepPoly's 1 or 0)."""
    if 0.0 <= op.slope <= 1.0:
        return base[0]
    return (u > -l).to(l.dtype)


#: (the tangent points of S-shaped units at a third of the slopes' rate: on ERAN's ffnnSIGMOID 6x200,
#: eps 0.012, 20 iterations, rate 0.1 proved 8 of its 10 unsat instances at the root, 0.3 proved 7)
TANGENT_RATE = 1.0 / 3.0
ALPHA_PARAMS.update({
    ops.Relu: AlphaParam(_own_lower_slope, from_base=relu_slopes, revives=False),
    ops.LeakyRelu: AlphaParam(_leaky_start, _leaky_bounds, revives=False),
    ops.Sigmoid: AlphaParam(lambda op, l, u, base: torch.full_like(l, 0.5), rate=TANGENT_RATE),
    ops.Tanh: AlphaParam(lambda op, l, u, base: torch.full_like(l, 0.5), rate=TANGENT_RATE),
    ops.Abs: AlphaParam(_own_lower_slope, lambda op: (-1.0, 1.0)),
    ops.Clip: AlphaParam(_clip_start),
    ops.NActivation: AlphaParam(_own_lower_slope, lambda op: (-1.0, 1.0)),
    ops.CappedLeakyRelu: AlphaParam(_own_lower_slope, lambda op: op.slope_bounds()),
})


@relaxation(ops.Softplus)
def _softplus(op: ops.Softplus, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    # the exact log(1 + e^x), as ops.Softplus.forward: torch's F.softplus returns x above 20,
    # up to 2.1e-9 below it, which made the chord (upper line) unsound near x = 20
    f = lambda x: torch.logaddexp(x, torch.zeros_like(x))  # noqa: E731
    fl, fu = f(l), f(u)
    m = (l + u) / 2
    dm = torch.sigmoid(m)
    narrow = (u - l) < 1e-6
    ch = _safe_div(fu - fl, u - l)
    # narrow: tangent at l below; f(x) <= f(l) + f'(u) (x - l) above (f' <= f'(u) on [l, u])
    lam_lo, lam_hi = torch.sigmoid(l), torch.sigmoid(u)
    lw = torch.where(narrow, lam_lo, dm)
    lb = torch.where(narrow, fl - lam_lo * l, f(m) - dm * m)
    uw = torch.where(narrow, lam_hi, ch)
    ub = torch.where(narrow, fl - lam_hi * l, fl - ch * l)
    return lw, lb, uw, ub


# --------------------------------------------------------------------------- activations from the papers


def pwl_relax(f, l: Tensor, u: Tensor, kinks: list[Tensor], slopes: list[float],
              slope: Tensor | None = None) -> Relax:
    """Relaxation of a continuous piecewise-linear ``f`` with the given kinks on ``[l, u]``.

    For any slope ``k`` the lines ``k x + min_p (f(p) - k p)`` and ``k x + max_p (f(p) - k p)``,
    ``p`` over the end points and the kinks inside ``[l, u]``, are below/above ``f`` on
    ``[l, u]`` (``f - k x`` is piecewise linear, so its extremes are at those points): sound for
    every ``k``. Candidates: the slopes of the pieces and of every secant between two of those
    points, which include the edges of the upper and lower convex hulls of ``f`` on ``[l, u]``;
    per neuron the line closest to ``f`` at the midpoint (the smallest area between line and
    ``f``: the hull's supporting line there) is kept. Without a kink inside, the chord is exact.
    ``slope`` (alpha-CROWN) fixes the lower line's slope, clamped to ``[min(slopes), max(slopes)]``
    (its intercept is still the exact minimum, so any value is sound).
    """
    pts = torch.stack([l, u] + [torch.minimum(torch.maximum(k.expand_as(l), l), u) for k in kinks])
    fp = f(pts)
    n_p = pts.shape[0]
    secants = [_safe_div(fp[j] - fp[i], pts[j] - pts[i]) for i in range(n_p) for j in range(i + 1, n_p)]
    cands = torch.stack(secants + [torch.full_like(l, s) for s in slopes])  # (K, ...)
    gap = fp[None] - cands[:, None] * pts[None]  # (K, P, ...)
    up_c, lo_c = gap.amax(1), gap.amin(1)
    m = (l + u) / 2
    ku = (up_c + cands * m).argmin(0, keepdim=True)
    kl = (lo_c + cands * m).argmax(0, keepdim=True)
    pick = lambda t, k: t.gather(0, k).squeeze(0)  # noqa: E731
    if slope is not None:
        a = slope.clamp(min(slopes), max(slopes))
        return a, (fp - a[None] * pts).amin(0), pick(cands, ku), pick(up_c, ku)
    return pick(cands, kl), pick(lo_c, kl), pick(cands, ku), pick(up_c, ku)


@relaxation(ops.NActivation)
def _n_activation(op: ops.NActivation, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    t1, t2 = (torch.as_tensor(t, dtype=l.dtype) for t in (op.t1, op.t2))
    return pwl_relax(op.forward, l, u, [t1, t2], [1.0, -1.0], slope)


@relaxation(ops.CappedLeakyRelu)
def _capped_leaky(op: ops.CappedLeakyRelu, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    b = torch.full((), op.beta, dtype=l.dtype)
    return pwl_relax(op.forward, l, u, [-b, b], list(op.slope_bounds()), slope)


class PairRelax:
    """Relaxation of :class:`~certkit.graph.ops.MaxMin`, per pair ``(a, b)``.

    With ``d = a - b`` in ``[ld, ud]`` (``[l_a - u_b, u_a - l_b]`` from the boxes, intersected with the
    bounds ``d`` of the difference itself when given: :meth:`BoundState._pair_bounds`; a pair whose
    ``a`` and ``b`` move together can be decided though the boxes overlap), ``max(a, b) = b + relu(d)``:
    when ``ld < 0 < ud``, above by the ReLU chord, ``b + s (d - ld)`` with ``s = ud / (ud - ld)``
    (``c = -s ld >= 0``), below by ``b + lam d`` for any ``lam`` in [0, 1] (a convex combination
    of a and b; DeepPoly's choice ``lam = 1`` if ``ud > -ld`` else 0); when ``d`` has one sign
    the max is exactly ``a`` or ``b``. So ``max`` lies in ``[lam a + (1-lam) b, s a + (1-s) b + c]``
    and ``min = a + b - max`` in ``[(1-s) a + s b - c, (1-lam) a + lam b]``. ``backsub`` maps
    coefficients on the output to coefficients on the input plus a constant, keeping a lower bound.
    """

    def __init__(self, op: ops.MaxMin, l: Tensor, u: Tensor, d: tuple[Tensor, Tensor] | None = None) -> None:
        a, b = torch.as_tensor(op.a), torch.as_tensor(op.b)
        ld, ud = l[:, a] - u[:, b], u[:, a] - l[:, b]
        if d is not None:  # sound bounds of a - b of their own (back-substituted difference rows)
            ld, ud = torch.fmax(ld, d[0]), torch.fmin(ud, d[1])
        unstable = (ld < 0) & (ud > 0)
        one, zero = torch.ones_like(ld), torch.zeros_like(ld)
        exact = torch.where(ld >= 0, one, zero)
        self.s = torch.where(unstable, _safe_div(ud, ud - ld), exact)  # (batch, m)
        self.lam = torch.where(unstable, torch.where(ud > -ld, one, zero), exact)
        self.c = torch.where(unstable, -self.s * ld, zero)
        self.a, self.b, self.n_in = a, b, l.shape[1]
        pmax, pmin = op.positions()
        self.pmax, self.pmin = torch.as_tensor(pmax), torch.as_tensor(pmin)

    def backsub(self, A: Tensor) -> tuple[tuple[Tensor], Tensor]:
        """``A`` (batch, spec, n_out) -> ((A_in,), const (batch, spec)) with
        ``A y >= A_in x + const`` for every ``x`` in the box."""
        amax, amin = A[..., self.pmax], A[..., self.pmin]
        xp, xn, np_, nn_ = amax.clamp(min=0), amax.clamp(max=0), amin.clamp(min=0), amin.clamp(max=0)
        s, lam, c = self.s[:, None, :], self.lam[:, None, :], self.c[:, None, :]
        out = A.new_zeros(*A.shape[:-1], self.n_in)
        out.index_add_(2, self.a, xp * lam + xn * s + np_ * (1 - s) + nn_ * (1 - lam))
        out.index_add_(2, self.b, xp * (1 - lam) + xn * (1 - s) + np_ * s + nn_ * lam)
        const = (xn * c).sum(-1) - (np_ * c).sum(-1)
        return (out,), const


@relaxation(ops.MaxMin)
def _max_min(op: ops.MaxMin, l: Tensor, u: Tensor, slope: Tensor | None = None) -> PairRelax:
    return PairRelax(op, l, u)


# the McCormick relaxation of products of two variable tensors, registered on import
from . import relax_bilinear  # noqa: E402,F401

# the relaxations of the unary elementwise ops (Exp, Log, Sin, ...), registered on import
from . import relax_elementwise  # noqa: E402,F401
