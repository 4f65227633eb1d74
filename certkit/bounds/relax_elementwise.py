"""Linear relaxations of the unary elementwise ops of :mod:`certkit.graph.elementwise`.

One construction serves every op, a smooth one or a step: **a slope with an exact offset**. For any
slope ``k`` the lines

    k x + min_{[l, u]} (f - k x)   and   k x + max_{[l, u]} (f - k x)

are below and above ``f`` on ``[l, u]``, whatever ``k`` is. The extremes of ``g = f - k x`` are at
the end points or where ``f'(x) = k`` (smooth ``f``; each op supplies those *critical points*,
and a few extra points of ``[l, u]`` never hurt), or at the ends of the constant pieces (steps,
one-sided limits included). Per neuron several slopes are tried and the line closest to ``f`` in
the mean over ``[l, u]`` -- the value at the midpoint -- is kept, per side; the interval image
(a constant line) is the starting point, so the result is never looser than interval bounds.

Slopes tried: for convex or concave ``f`` on the box (Exp; Log, Sqrt, Reciprocal on one side of 0)
the chord and the tangent at the midpoint -- with exact offsets these are the chord above and
the tangent below for a convex ``f`` (the mirror for a concave one): DeepPoly/CROWN's
relaxation, and the midpoint tangent is the one of least area (the tangent at ``t`` encloses
``(u - l) (f(m) - f(t) - f'(t)(m - t))`` less area than ``f``, largest at ``t = m``). For the
S-shaped and periodic ops (Erf, Sin, Cos, Pow) also the tangents at the end points, 0, and the
secants from each end point to the quarter points, which come close to CROWN's tangent lines
through an end point. A slope of a numerically degenerate candidate (inf, NaN) is dropped. Since
every slope is sound, the choice only affects tightness; soundness rests on the critical points.

Domains: where the op may give NaN or a pole on the box (Log, Sqrt below 0; Reciprocal and
negative powers at 0; non-integer powers below 0) no finite bound holds and the lines are
``0 x -+ inf`` (no verdict can rest on them); a Sin/Cos box of width ``>= 2 pi`` keeps the
constant bounds -1 and 1.

Every line's slope ``k`` satisfies ``|k| max(|l|, |u|) <= line_cap(op, l, u)`` (candidates beyond it
are dropped): the floating-point error rule charges certkit's own float64 rounding of these
lines from that bound (:mod:`certkit.bounds.fperror_elementwise`). Soundness is tested by dense
sampling in ``tests/test_elementwise_ops.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..graph import elementwise as ew
from .relaxations import ALPHA_PARAMS, TANGENT_RATE, AlphaParam, Relax, _safe_div, relaxation

Tensor = torch.Tensor
INF = float("inf")
TWO_PI = 2.0 * math.pi

#: Points of [l, u] where ``f'(x) = k`` (a superset is fine), as a function of (k, l, u).
Crit = Callable[[Tensor, Tensor, Tensor], list]


def _mag(lo: Tensor, hi: Tensor) -> Tensor:
    return torch.maximum(lo.abs(), hi.abs())


def line_cap(op, lo: Tensor, hi: Tensor) -> Tensor:
    """A bound on ``|k| max(|l|, |u|)`` for the lines of the relaxation of ``op`` on ``[lo, hi]``:
    ``4 (max |f| + 1)`` plus, where finite, ``max |f'| max(|lo|, |hi|)`` (infinite where the box
    is; NaN never)."""
    a, b = op.interval(lo, hi)
    m_in = _mag(lo, hi)
    s = op.slope_max(lo, hi) * m_in
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    cap = 4.0 * (_mag(a, b) + 1.0) + s
    return torch.where(torch.isnan(cap) | torch.isnan(m_in), torch.full_like(cap, INF), cap)


def _clamp(p: Tensor, l: Tensor, u: Tensor) -> Tensor:
    p = torch.where(torch.isfinite(p), p, l)
    return torch.minimum(torch.maximum(p, l), u)


def extremes(op, k: Tensor, l: Tensor, u: Tensor, crit: Crit | None, values: Callable | None = None,
             ends: tuple[Tensor, Tensor] | None = None, detach: bool = False) -> tuple[Tensor, Tensor]:
    """min and max of ``f - k x`` over [l, u]: at the end points (``ends``: ``f(l)``, ``f(u)`` when known) and
    the critical points ``crit(k, l, u)`` clamped into the box, or the values ``values(k, l, u)`` (steps).
    ``detach``: the critical points without gradient (alpha-CROWN: the extreme's derivative in ``k`` is ``-x``
    there, the envelope theorem)."""
    if values is not None:
        G = torch.stack(values(k, l, u))
    else:
        f = op.forward
        fl, fu = (f(l), f(u)) if ends is None else ends
        if detach:
            pts = [_clamp(c, l, u).detach() for c in crit(k.detach(), l.detach(), u.detach())]
        else:
            pts = [_clamp(c, l, u) for c in crit(k, l, u)]
        G = torch.stack([fl - k * l, fu - k * u] + [f(q) - k * q for q in pts])
    return G.amin(0), G.amax(0)


def best_lines(op, l: Tensor, u: Tensor, slopes: list, crit: Crit, valid: Tensor | None = None,
               values: Callable | None = None) -> Relax:
    """The relaxation of the module docstring: per side, the best line at the midpoint among the
    interval image's constant and ``k x + extreme(f - k x)`` for the candidate ``slopes``.

    ``crit(k, l, u)`` lists the critical points (clamped into [l, u] here); ``values(k, l, u)``
    instead returns the list of values of ``g`` at every extreme candidate (steps: one-sided
    limits). ``valid``: where finite lines may be used at all."""
    f = op.forward
    lo_b, hi_b = op.interval(l, u)
    lo_b = torch.where(torch.isnan(lo_b), torch.full_like(lo_b, -INF), lo_b)
    hi_b = torch.where(torch.isnan(hi_b), torch.full_like(hi_b, INF), hi_b)
    zero = torch.zeros_like(l)
    lw, lb, uw, ub = zero, lo_b, zero, hi_b
    v_lo, v_hi = lo_b, hi_b
    m = l / 2 + u / 2
    cap = line_cap(op, l, u)
    m_in = _mag(l, u)
    ok = torch.isfinite(l) & torch.isfinite(u)
    if valid is not None:
        ok = ok & valid
    fl, fu = f(l), f(u)
    nan = torch.full_like(l, float("nan"))
    for k in slopes:
        k = torch.where(ok & torch.isfinite(k) & (k.abs() * m_in <= cap), k, nan)
        off_lo, off_hi = extremes(op, k, l, u, crit, values, ends=(fl, fu))  # NaN propagates: never taken
        c_lo, c_hi = k * m + off_lo, k * m + off_hi
        take = c_lo > v_lo
        lw, lb, v_lo = torch.where(take, k, lw), torch.where(take, off_lo, lb), torch.where(take, c_lo, v_lo)
        take = c_hi < v_hi
        uw, ub, v_hi = torch.where(take, k, uw), torch.where(take, off_hi, ub), torch.where(take, c_hi, v_hi)
    return lw, lb, uw, ub


def _chord(op, l: Tensor, u: Tensor) -> Tensor:
    return _safe_div(op.forward(u) - op.forward(l), u - l)


def _convex_slopes(op, df, l: Tensor, u: Tensor) -> list:
    """Chord and midpoint tangent (convex or concave f)."""
    return [_chord(op, l, u), df(l / 2 + u / 2)]


def _s_slopes(op, df, l: Tensor, u: Tensor) -> list:
    """For S-shaped and periodic f: chord, tangents at l, m, u, slope 0, and the secants from each
    end point to the quarter points."""
    f = op.forward
    fl, fu = f(l), f(u)
    out = [_chord(op, l, u), df(l), df(l / 2 + u / 2), df(u), torch.zeros_like(l)]
    for t in (0.25, 0.5, 0.75):
        q = l + t * (u - l)
        fq = f(q)
        out += [_safe_div(fq - fl, q - l), _safe_div(fu - fq, u - q)]
    return out


# --------------------------------------------------------------------------- monotone convex/concave


#: below this magnitude Log, Sqrt and Reciprocal keep DeepPoly's lines under alpha-CROWN: their second
#: derivative at such a tangent point overflows, and the tangent point's gradient with it
TINY = 1e-30


def tangent_lines(op, df, crit: Crit, l: Tensor, u: Tensor, theta: Tensor, convex: Tensor | bool,
                  valid: Tensor | bool, base: Relax) -> Relax:
    """alpha-CROWN's relaxation of a convex or concave ``f`` (issue 13: alpha for every activation, as
    auto_LiRPA optimises the tangent points of its convex functions): the tangent side -- below where ``f``
    is convex on the box (``convex``), above where it is concave -- is the line of slope ``k = f'(t)`` at
    ``t = l + theta (u - l)``, ``theta`` in [0, 1]; its offset is the exact extreme of ``f - k x`` over the
    box (end points and critical points, as :func:`best_lines`), so it is sound for every ``theta`` even
    where rounding moves ``k`` off ``f'(t)``. The chord side and every neuron where no such line is
    finite, within ``line_cap`` or ``valid`` keep ``base`` (DeepPoly's lines)."""
    f, convex = op.forward, torch.as_tensor(convex)
    with torch.no_grad():  # where no line is computed, a stand-in box of the domain: no inf or NaN
        ok = valid & torch.isfinite(l) & torch.isfinite(u) & torch.isfinite(f(l)) & torch.isfinite(f(u))
    # (even unselected, they would turn the gradient of theta into NaN)
    l, u = torch.where(ok, l, torch.ones_like(l)), torch.where(ok, u, torch.full_like(u, 2.0))
    t = l + theta.clamp(0.0, 1.0) * (u - l)
    with torch.no_grad():
        k0 = df(t)
        ok = ok & torch.isfinite(k0) & (k0.abs() * _mag(l, u) <= line_cap(op, l, u))
    k = df(torch.where(ok, t, torch.ones_like(t)))  # 1 is in every domain here
    # the critical points without gradient: the offset's derivative in k is -x at the extreme (envelope)
    cp = [_clamp(c, l, u).detach() for c in crit(k.detach(), l.detach(), u.detach())]
    g = [f(l) - k * l, f(u) - k * u] + [f(q) - k * q for q in cp]
    G = torch.stack(g)
    off_lo, off_hi = G.amin(0), G.amax(0)
    ok = ok & torch.isfinite(off_lo) & torch.isfinite(off_hi)
    lw, lb, uw, ub = base
    low, up = ok & convex, ok & ~convex
    return (torch.where(low, k, lw), torch.where(low, off_lo, lb), torch.where(up, k, uw), torch.where(up, off_hi, ub))


def _exp_start(op, l: Tensor, u: Tensor, base: Relax) -> Tensor:
    """The point of DeepPoly's lower tangent (slope ``e^t``) as a fraction of the box: alpha-CROWN's
    first iterate is DeepPoly's relaxation."""
    return _safe_div(torch.log(base[0]) - l, u - l).nan_to_num(0.5).clamp(0.0, 1.0)


@relaxation(ew.Exp)
def _exp(op: ew.Exp, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    """Convex: chord above, midpoint tangent below; ``f'(x) = k`` at ``log k``. A lower line below 0
    at ``l`` becomes the tangent at ``t = min(m, l + 1)``, ``e^t (x - t + 1)``, which is ``>= 0`` on
    the box (auto_LiRPA's BoundExp): a sum of exponentials must keep a positive lower bound through
    back-substitution, or the Reciprocal of Softmax and the Log of LogSoftmax get infinite bounds
    under pure CROWN (no intersection with interval bounds). ``slope`` (alpha-CROWN): the lower
    tangent's point (:func:`tangent_lines`)."""
    lw, lb, uw, ub = best_lines(op, l, u, _convex_slopes(op, torch.exp, l, u), lambda k, l, u: [torch.log(k)])
    t = torch.minimum(l / 2 + u / 2, l + 1.0)
    k = torch.exp(t)
    neg = (lw * l + lb < 0) & torch.isfinite(l) & torch.isfinite(u) & torch.isfinite(k)
    base = torch.where(neg, k, lw), torch.where(neg, k * (1.0 - t), lb), uw, ub
    if slope is None:
        return base
    return tangent_lines(op, torch.exp, lambda k, l, u: [torch.log(k)], l, u, slope, True, True, base)


@relaxation(ew.Log)
def _log(op: ew.Log, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    """Concave on x > 0: chord below, midpoint tangent above; ``f'(x) = k`` at ``1/k``. With ``l = 0``
    only the upper line is finite (log 0 = -inf); with ``l < 0`` neither (NaN). ``slope``: the upper
    tangent's point."""
    crit = lambda k, l, u: [torch.reciprocal(k)]  # noqa: E731
    base = best_lines(op, l, u, _convex_slopes(op, torch.reciprocal, l, u), crit, valid=l >= 0)
    if slope is None:
        return base
    return tangent_lines(op, torch.reciprocal, crit, l, u, slope, False, l > TINY, base)


@relaxation(ew.Sqrt)
def _sqrt(op: ew.Sqrt, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    """Concave on x >= 0: chord below, midpoint tangent above; ``f'(x) = k`` at ``1 / (4 k^2)``.
    ``slope``: the upper tangent's point."""
    df = lambda x: 0.5 / torch.sqrt(x)  # noqa: E731
    crit = lambda k, l, u: [0.25 / (k * k)]  # noqa: E731
    base = best_lines(op, l, u, _convex_slopes(op, df, l, u), crit, valid=l >= 0)
    if slope is None:
        return base
    return tangent_lines(op, df, crit, l, u, slope, False, l > TINY, base)


@relaxation(ew.Reciprocal)
def _reciprocal(op: ew.Reciprocal, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
    """Convex for x > 0, concave for x < 0: chord and midpoint tangent; ``-1/x^2 = k`` at
    ``+-1/sqrt(-k)``. A box containing 0 (end points included) has no finite bound. ``slope``: the
    tangent's point (below for x > 0, above for x < 0)."""
    def crit(k, l, u):
        r = torch.rsqrt(-k)
        return [r, -r]
    df = lambda x: -1.0 / (x * x)  # noqa: E731
    base = best_lines(op, l, u, _convex_slopes(op, df, l, u), crit, valid=(l > 0) | (u < 0))
    if slope is None:
        return base
    return tangent_lines(op, df, crit, l, u, slope, l > 0, (l > TINY) | (u < -TINY), base)


def _half(op, l: Tensor, u: Tensor, base) -> Tensor:
    return torch.full_like(l, 0.5)


#: the ops whose tangent points alpha-CROWN optimises (:func:`tangent_lines`), the first iterate's point
#: as a fraction of the box (DeepPoly's choice)
TANGENT_OPS = (ew.Exp, ew.Log, ew.Sqrt, ew.Reciprocal)
ALPHA_PARAMS.update({ew.Exp: AlphaParam(_exp_start, rate=TANGENT_RATE)})
ALPHA_PARAMS.update({cls: AlphaParam(_half, rate=TANGENT_RATE) for cls in TANGENT_OPS[1:]})


# --------------------------------------------------------------------------- lines with moving slopes


#: ``(op, l, u) -> Lines``: how :func:`best_lines` relaxes an op of this class (S-shaped, periodic, steps);
#: alpha-CROWN moves the slopes of the same lines (:func:`moved_lines`)
FAMILIES: dict[type, Callable] = {}


@dataclass(frozen=True)
class Lines:
    """The inputs of :func:`best_lines` for one op on one box: the box itself (a Sign of an integer-valued
    input rounds it inward), the candidate slopes, and the critical points ``crit`` or the extreme values
    ``values`` of ``f - k x``; ``valid`` where finite lines may be used at all."""

    l: Tensor
    u: Tensor
    slopes: list
    crit: Crit | None = None
    values: Callable | None = None
    valid: Tensor | None = None


def family(cls: type):
    """Register ``fn(op, l, u) -> Lines`` for ``cls``: its relaxation is :func:`best_lines` on those lines,
    and alpha-CROWN's parameter moves their slopes (:func:`moved_lines`; 0: DeepPoly's lines)."""
    def deco(fn):
        FAMILIES[cls] = fn

        def relax(op, l: Tensor, u: Tensor, slope: Tensor | None = None) -> Relax:
            d = fn(op, l, u)
            base = best_lines(op, d.l, d.u, d.slopes, d.crit, d.valid, d.values)
            return base if slope is None else moved_lines(op, l, u, base, slope)
        relax.__doc__ = fn.__doc__
        relaxation(cls)(relax)
        ALPHA_PARAMS[cls] = AlphaParam(_zero, lambda op: (-1.0, 1.0), rate=TANGENT_RATE, from_base=moved_lines)
        return fn
    return deco


def _zero(op, l: Tensor, u: Tensor, base) -> Tensor:
    return torch.zeros_like(l)


def moved_lines(op, l: Tensor, u: Tensor, base: Relax, a: Tensor) -> Relax:
    """alpha-CROWN's lines of a :func:`family` op (issue 13: alpha for every activation): each side's slope
    moves from DeepPoly's (``base``) by ``a`` in [-1, 1] (clamped) toward the largest (``a > 0``) or the
    smallest (``a < 0``) of the candidate slopes :func:`best_lines` tried, and takes the exact extreme of
    ``f - k x`` over the box as its offset (:func:`extremes`), so it is sound for every ``a``; every slope
    stays within ``line_cap``, as the floating-point rule assumes. ``a = 0`` gives DeepPoly's lines. Where
    no finite line is found (off the domain, infinite ends, overflow) the side keeps ``base``; the gradient
    stays finite there (stand-in boxes: a NaN in an unselected branch would poison it). ``l``, ``u``,
    ``base`` (b, n) or (b, 1, n); ``a`` (b, rows, n)."""
    if base[0].dim() < a.dim():
        l, u, base = l.unsqueeze(-2), u.unsqueeze(-2), tuple(t.unsqueeze(-2) for t in base)
    lw, lb, uw, ub = base
    d = FAMILIES[type(op)](op, l, u)
    with torch.no_grad():  # the cap on both the box given and the one the lines use (a Sign's rounded inward)
        k_max = torch.minimum(line_cap(op, l, u) / _mag(l, u), line_cap(op, d.l, d.u) / _mag(d.l, d.u))
    l, u, f = d.l, d.u, op.forward
    with torch.no_grad():
        ok = torch.isfinite(l) & torch.isfinite(u) & torch.isfinite(f(l)) & torch.isfinite(f(u))
        if d.valid is not None:
            ok = ok & d.valid
        k_lo, k_hi = torch.minimum(lw, uw).detach(), torch.maximum(lw, uw).detach()
        for k in d.slopes:
            k = torch.where(ok & torch.isfinite(k) & (k.abs() <= k_max), k, k_lo)
            k_lo, k_hi = torch.minimum(k_lo, k), torch.maximum(k_hi, k)
    a = a.clamp(-1.0, 1.0)

    def slope(k0: Tensor) -> Tensor:
        return k0 + torch.where(a >= 0, a * (k_hi - k0), a * (k0 - k_lo))
    kl, ku = slope(lw), slope(uw)
    one, two = torch.ones_like(l), torch.full_like(u, 2.0)

    def ext(k: Tensor, use: Tensor) -> tuple[Tensor, Tensor]:  # on the boxes where ``use``, stand-ins elsewhere
        return extremes(op, k, torch.where(use, l, one), torch.where(use, u, two), d.crit, d.values, detach=True)
    use_l = use_u = ok
    off_l, off_u = ext(kl, ok)[0], ext(ku, ok)[1]
    if not all(bool(torch.isfinite(torch.where(ok, t, 0.0)).all()) for t in (off_l, off_u)):  # overflow: again
        use_l, use_u = ok & torch.isfinite(off_l).detach(), ok & torch.isfinite(off_u).detach()
        off_l, off_u = ext(kl, use_l)[0], ext(ku, use_u)[1]
    # at DeepPoly's own slope its offset holds too: keep the tighter of the two
    off_l = torch.where(kl == lw, torch.maximum(off_l, lb), off_l)
    off_u = torch.where(ku == uw, torch.minimum(off_u, ub), off_u)
    return (torch.where(use_l, kl, lw), torch.where(use_l, off_l, lb),
            torch.where(use_u, ku, uw), torch.where(use_u, off_u, ub))


@family(ew.Pow)
def _pow(op: ew.Pow, l: Tensor, u: Tensor) -> Lines:
    """``x^p``: convex, concave or (odd p across 0) S-shaped; ``p |x|^(p-1) = |k|`` at
    ``|x| = |k/p|^(1/(p-1))``, both signs. No finite bound on a box reaching a pole or NaN."""
    p = op.exponent

    def df(x):
        return p * torch.pow(x, p - 1)

    def crit(k, l, u):
        r = torch.pow((k / p).abs(), 1.0 / (p - 1))
        return [r, -r]
    return Lines(l, u, _s_slopes(op, df, l, u), crit, valid=op.valid(l, u))


@family(ew.Erf)
def _erf(op: ew.Erf, l: Tensor, u: Tensor) -> Lines:
    """S-shaped; ``erf'(x) = c e^(-x^2) = k`` at ``+-sqrt(log(c / k))``."""
    def crit(k, l, u):
        r = torch.sqrt(torch.log(ew.ERF_SLOPE / k))
        return [r, -r]
    return Lines(l, u, _s_slopes(op, op.derivative, l, u), crit)


def _periodic_crit(first: Callable[[Tensor], Tensor], second: Callable[[Tensor], Tensor]) -> Crit:
    """Critical points of a 2 pi periodic f on a box narrower than 2 pi: the solutions of
    ``f'(x) = k`` are ``a + 2 pi n`` and ``b + 2 pi n``; for each family the first one at or above
    ``l`` and its two neighbours (robust to the rounding of ``n``)."""
    def crit(k, l, u):
        out = []
        for base in (first(k), second(k)):
            p = base + TWO_PI * torch.ceil((l - base) / TWO_PI)
            out += [p - TWO_PI, p, p + TWO_PI]
        return out
    return crit


@family(ew.Sin)
def _sin(op: ew.Sin, l: Tensor, u: Tensor) -> Lines:
    """``cos x = k`` at ``+-acos k + 2 pi n``; boxes of width >= 2 pi keep [-1, 1]."""
    crit = _periodic_crit(torch.acos, lambda k: -torch.acos(k))
    return Lines(l, u, _s_slopes(op, op.derivative, l, u), crit, valid=u - l < TWO_PI)


@family(ew.Cos)
def _cos(op: ew.Cos, l: Tensor, u: Tensor) -> Lines:
    """``-sin x = k`` at ``asin(-k) + 2 pi n`` and ``pi - asin(-k) + 2 pi n``."""
    crit = _periodic_crit(lambda k: torch.asin(-k), lambda k: math.pi - torch.asin(-k))
    return Lines(l, u, _s_slopes(op, op.derivative, l, u), crit, valid=u - l < TWO_PI)


# --------------------------------------------------------------------------- steps


@family(ew.Sign)
def _sign(op: ew.Sign, l: Tensor, u: Tensor) -> Lines:
    """Piecewise constant: ``g = sign - k x`` is linear on x < 0 and x > 0, so its extremes over
    [l, u] are among its values at l, u and the limits at 0 (-1, 0, 1, where 0 is in [l, u]).
    Slopes: 0 and the lines through the corners, ``2/u``, ``-2/l``, ``1/u``, ``-1/l``. An integer-valued
    input's box is rounded inward first (:meth:`~certkit.graph.elementwise.Sign.box`)."""
    l, u = op.box(l, u)
    def values(k, l, u):
        out = [torch.sign(l) - k * l, torch.sign(u) - k * u]
        has0 = (l <= 0) & (u >= 0)
        for v, side in ((-1.0, l < 0), (0.0, has0), (1.0, u > 0)):
            out.append(torch.where(has0 & side, torch.full_like(l, v), out[0]))
        return out
    one = torch.ones_like(l)
    slopes = [torch.zeros_like(l), _safe_div(2 * one, u), _safe_div(-2 * one, l), _safe_div(one, u),
              _safe_div(-one, l)]
    return Lines(l, u, slopes, values=values)


@family(ew.Floor)
def _floor(op: ew.Floor, l: Tensor, u: Tensor) -> Lines:
    """Piecewise constant with jumps at the integers: ``g = floor - k x`` is linear on every piece,
    so its extremes are at l, u, at the integers ``n`` of [l, u] (value ``n``) and of (l, u] (left
    limit ``n - 1``); those are linear in ``n``, so the first and the last integer of each suffice. Slopes: 0, 1
    (``x - 1 < floor x <= x``) and the secants between the corners of the staircase."""
    def values(k, l, u):
        out = [torch.floor(l) - k * l, torch.floor(u) - k * u]
        for n in (torch.ceil(l), torch.floor(u)):  # the first and last integers of [l, u]
            out.append(torch.where((n >= l) & (n <= u), n - k * n, out[0]))
        for n in (torch.floor(l) + 1, torch.floor(u)):  # ... of (l, u]: left limits n - 1
            out.append(torch.where((n > l) & (n <= u), n - 1 - k * n, out[0]))
        return out
    fl, fu = torch.floor(l), torch.floor(u)
    n1, n2 = torch.ceil(l), fu
    slopes = [torch.zeros_like(l), torch.ones_like(l), _safe_div(fu - fl, u - l),
              _safe_div(fu - fl, u - n1), _safe_div(fu - fl - 1, n2 - l), _safe_div(fu - fl - 1, n2 - n1)]
    return Lines(l, u, slopes, values=values)
