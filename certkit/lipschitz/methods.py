"""Upper bounds on the Lipschitz constant of a net, one function per method (DESIGN.md section 4).

Every method takes a :class:`~certkit.lipschitz.structure.Structure` and a norm ``p``
(2 or inf: the operator norm from L_p to L_p) and returns a :class:`MethodResult` with a
sound upper bound, or raises :class:`NotApplicable` naming what disqualifies the net.

* ``nonneg`` -- paper 000, Prop. 2.1: every linear op entrywise >= 0 and every slope >= 0;
  then ``|Jacobian| <= P = M_m S_{m-1} ... S_1 M_1`` (``S_i = diag(s_max)``), so
  ``Lip_p <= ||P||_p``; equal to it for slopes in [0, 1] ("exact" for the class).
* ``signed`` -- ``|| |M_m| S ... S |M_1| ||_p`` for any net (DESIGN.md, derived).
* ``separable`` -- paper 000, eq. 3: the product of the blocks' norms and slope bounds.
* ``abba`` -- paper 000, eqs. 17/19: signed first layer(s) ``W_0``, a nonnegative middle,
  signed last layer(s) ``W_{m+1}``: ``||W_{m+1}|| ||P_mid|| ||W_0||``; pooling is part of
  the middle (a k x k average pooling with stride k has norm 1/k).
* ``sdp`` -- LipSDP-Neuron (:mod:`certkit.lipschitz.sdp`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ModelError
from ..graph.ops import Conv, Dense, Scale, Select
from .abba import abba_blocks, eq19_layer_bound
import numpy as np
import torch

from .blocks import EXPLICIT_MAX, explicit, segment_norm
from .norms import nonneg_norm2, nonneg_norm_inf
from .structure import Structure, first_negative, is_linear

INF = float("inf")


class NotApplicable(ModelError):
    """The net does not have the structure a method needs (the message says where)."""


@dataclass(frozen=True)
class MethodResult:
    """One method's sound upper bound on ``Lip_p``, and what it computed on the way."""

    method: str
    upper: float
    details: dict = field(default_factory=dict)


METHODS: dict[str, Callable[[Structure, float], MethodResult]] = {}


def method(name: str):
    def deco(fn):
        METHODS[name] = fn
        return fn
    return deco


def _product_norm(st: Structure, p: float, start: int = 0, end: int | None = None) -> tuple[float, dict]:
    """``||P||_p`` between two nodes, upper end sound."""
    n_in = st.size(start)
    fwd = (lambda v: st.abs_forward(v, start, end))
    if p == INF:
        nb = nonneg_norm_inf(fwd, n_in)
    else:
        nb = nonneg_norm2(fwd, lambda u: st.abs_vjp(u, start, end), n_in)
    return nb.upper, {"power_lower": nb.lower, "iterations": nb.iterations}


def nonneg_violation(st: Structure, nodes=None, slopes: bool = True) -> str | None:
    """The first op that keeps the net from being nonnegative, as a message, or None
    (activations with negative slopes count unless ``slopes`` is False)."""
    g = st.graph
    for i in (st.order if nodes is None else nodes):
        n = g.nodes[i]
        if is_linear(n.op):
            where = first_negative(n.op)
            if where is not None:
                return f"layer '{n.name}' ({n.op.kind}) has a negative weight at {where}"
        elif slopes and i in st.slopes and not st.slopes[i].nonnegative:
            return f"activation '{n.name}' ({n.op.kind}) has negative slopes"
    return None


@method("nonneg")
def nonneg(st: Structure, p: float) -> MethodResult:
    why = nonneg_violation(st)
    if why is not None:
        raise NotApplicable(f"not a nonnegative net: {why}")
    up, det = _product_norm(st, p)
    return MethodResult("nonneg", up, det)


@method("signed")
def signed(st: Structure, p: float) -> MethodResult:
    """``|| |B_k| S ... S |B_1| ||`` with each linear part ``B_i`` between activations formed
    explicitly when small (``|B_i| <=`` the product of its ops' absolute values, so this is
    never looser than the op-by-op product, and keeps cancellations inside a part, e.g. an
    ABBA doubling followed by its first layer); otherwise op by op."""
    fwd = _explicit_abs_operator(st)
    if fwd is None:
        up, det = _product_norm(st, p)
        return MethodResult("signed", up, det)
    n_in = st.size(0)
    if p == INF:
        nb = nonneg_norm_inf(fwd, n_in)
    else:
        def vjp(u):
            v = torch.zeros(u.shape[0], n_in, dtype=u.dtype, requires_grad=True)
            with torch.enable_grad():
                (gr,) = torch.autograd.grad(fwd(v), v, grad_outputs=u)
            return gr.detach()
        nb = nonneg_norm2(fwd, vjp, n_in)
    return MethodResult("signed", nb.upper, {"power_lower": nb.lower, "iterations": nb.iterations,
                                             "explicit_blocks": True})


def _explicit_abs_operator(st: Structure):
    """``v -> |B_k| S ... S |B_1| v`` with explicit ``|B_i|``, or None when a part is too big
    or the activations are not in sequence."""
    segs = st.segments()
    if segs is None:
        return None
    mats: list = []
    for kind, a, b in segs:
        if kind == "nonlinear":
            mats.append(("act", a))
        elif st.size(a) * st.size(b) <= EXPLICIT_MAX:
            m = np.abs(explicit(lambda e, a=a, b=b: st.linear_forward(e, a, b), st.size(a)))
            mats.append(("mat", torch.as_tensor(m.T.copy())))
        else:
            return None

    def fwd(v):
        for kind, m in mats:
            v = v @ m if kind == "mat" else st.abs_forward(v, st.graph.nodes[m].inputs[0], m)
        return v
    return fwd


def _segments(st: Structure, what: str) -> list[tuple[str, int, int]]:
    segs = st.segments()
    if segs is None:
        raise NotApplicable(f"the {what} bound needs the nonlinear ops in sequence (one sits inside a branch)")
    return segs


def _per_layer(st: Structure, a: int, b: int) -> list[tuple[int, int]]:
    """Split the linear part ``a -> b`` at cut nodes into layers: every piece between two
    cuts that holds an op other than an elementwise Scale or a Select (a Dense, a Conv, a
    Concat or Sum of branches) is a layer; Scale/Select-only pieces join the previous
    layer (or the next one at the start), e.g. input normalisation joins the first layer."""
    g = st.graph
    parts: list[list[int]] = []  # [start, end, has_weight]
    prev = a
    for c in [c for c in st.cuts if a < c <= b]:
        heavy = any(not isinstance(g.nodes[i].op, (Scale, Select)) for i in st.nodes_between(prev, c))
        if parts and (not heavy or not parts[-1][2]):
            parts[-1][1] = c
            parts[-1][2] = parts[-1][2] or heavy
        else:
            parts.append([prev, c, heavy])
        prev = c
    return [(x, y) for x, y, _ in parts]


@method("separable")
def separable(st: Structure, p: float) -> MethodResult:
    """Paper 000, eq. 3: the product of the layers' norms and the activations' slope bounds.
    ``per_layer`` takes every weight op (Dense/Conv, with the elementwise or selection ops
    next to it, e.g. input normalisation) as a layer, as the paper does; ``blockwise`` merges
    all linear ops between two activations first (the same kind of bound, and tighter when
    consecutive linear layers cancel, e.g. the doubling and first layer of an ABBA net).
    The smaller is the bound."""
    per_layer, blockwise, layers = 1.0, 1.0, []
    for kind, a, b in _segments(st, "separable"):
        if kind == "linear":
            blockwise *= segment_norm(st, a, b, p).upper
            for x, y in _per_layer(st, a, b):
                n = segment_norm(st, x, y, p).upper
                layers.append(n)
                per_layer *= n
        else:
            f = st.slopes[a].norm(p)
            per_layer *= f
            blockwise *= f
    return MethodResult("separable", min(per_layer, blockwise),
                        {"per_layer": per_layer, "blockwise": blockwise, "layer_norms": layers})


def abba_split(st: Structure) -> tuple[int, int]:
    """``(s, t)``: cut nodes such that the head (input -> ``s``) holds the signed first
    layer ``W_0``, the middle (``s`` -> ``t``) is a nonnegative ABBA chain, and the tail
    (``t`` -> output) holds the signed last layer ``W_{m+1}`` (paper 000, Def. 3.2). The
    middle is taken as long as possible. Its activations need only be componentwise
    (Prop. 3.3): with ``|D| <= max|s|`` the middle Jacobian is entrywise below ``P_mid``."""
    g = st.graph
    _segments(st, "ABBA")  # the activations in sequence
    if not st.nonlinear:
        raise NotApplicable("no activation: the net is linear (use separable)")
    first_nl, last_nl = st.nonlinear[0], st.nonlinear[-1]
    cuts = st.cuts

    def nonneg_chain(a: int, b: int) -> bool:
        nodes = st.nodes_between(a, b)
        prev = a
        for i in nodes:
            if g.nodes[i].inputs != (prev,) or nonneg_violation(st, [i], slopes=False) is not None:
                return False
            prev = i
        return True

    heads = [c for c in cuts if c < first_nl and nonneg_chain(c, first_nl)]
    s = min(heads) if heads else max(c for c in cuts if c < first_nl)
    t = max(c for c in cuts if c >= last_nl and nonneg_chain(last_nl, c))
    if s == 0 and t == g.output:
        raise NotApplicable("no signed first or last layer: the net is nonnegative (use the nonneg method)")
    why = nonneg_violation(st, st.nodes_between(s, t), slopes=False)
    if why is not None:
        raise NotApplicable(f"not an ABBA net: the hidden part is not nonnegative: {why}")
    for i in st.nodes_between(s, t):
        op = g.nodes[i].op
        if isinstance(op, (Dense, Conv)):
            blocks = abba_blocks(op)
            if isinstance(blocks, str):
                raise NotApplicable(f"not an ABBA net: layer '{g.nodes[i].name}' is not [[A, B], [B, A]]: {blocks}")
    return s, t


@method("abba")
def abba(st: Structure, p: float) -> MethodResult:
    """Paper 000, eqs. 17/19: ``||W_{m+1}|| ||S(W_m) ... S(W_1)|| ||W_0||``. The middle norm is
    computed on the doubled operators (equal to that of the sum matrices, module
    :mod:`certkit.lipschitz.abba`) jointly over the dense and convolutional layers and the
    pooling, which is never looser than the per-layer product of eq. 19 (reported too)."""
    s, t = abba_split(st)
    g = st.graph
    h = segment_norm(st, 0, s, p).upper
    tl = segment_norm(st, t, g.output, p).upper
    mid, det = _product_norm(st, p, s, t)
    det = {"head_end": g.nodes[s].name, "tail_start": g.nodes[t].name, "first_norm": h,
           "middle_norm": mid, "last_norm": tl, **det}
    if p == 2:
        convs = {g.nodes[i].name: eq19_layer_bound(g.nodes[i].op, *abba_blocks(g.nodes[i].op))
                 for i in st.nodes_between(s, t) if isinstance(g.nodes[i].op, Conv) and g.nodes[i].op.groups == 1}
        if convs:
            det["eq19_layer_bounds"] = convs
    return MethodResult("abba", h * mid * tl, det)


@method("sdp")
def sdp(st: Structure, p: float) -> MethodResult:
    from .sdp import lipsdp_neuron

    if p != 2:
        raise NotApplicable("LipSDP bounds the L_2 constant only")
    return lipsdp_neuron(st)


def run_method(name: str, st: Structure, p: float) -> MethodResult:
    return METHODS[name](st, p)
