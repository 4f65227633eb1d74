"""Recognition of the paper activations in the IR lowered from ONNX (DESIGN.md section 5).

The converters lower the ONNX patterns to generic ops; this pass folds them back into one
op each, only when the match is an exact identity of functions (coefficients compared
exactly in float64, so nothing is approximated):

* ``y = a x + g clip(x, L, H)`` (a ``Sum`` of two chains of ``Scale`` (no shift) over the
  same node ``x``, one through ``Clip`` ops): with ``a = 1``, ``g = -2`` elementwise it is
  the N-activation ``NActivation(L, H)`` (paper 004; ONNX ``Sub(x, Mul(Max(Min(x, t2), t1), 2))``);
  with scalar ``a >= 0``, ``L = -H`` a positive constant and ``a + g >= 0`` it is the capped
  symmetric leaky ReLU (paper 000, eq. 20; ONNX ``Add(Mul(alpha, x), Mul(1 - alpha,
  Clip(x, -beta, beta)))``).
* ``Concat(max(x[a], x[b]), min(x[a], x[b]))`` (the ``Max``/``Min`` of two gathers of the
  same node, as ``torch.chunk`` + ``maximum``/``minimum`` + ``cat`` exports, with
  ``Split``/``Slice``/``Gather`` and any concatenation order) is ``MaxMin`` (paper 004).

Nodes left unmatched keep their generic (exact) lowering.
"""
from __future__ import annotations

import numpy as np

from ..graph import ops
from ..graph.graph import Graph, Node

#: How far back :func:`_gather` follows data-movement ops.
MAX_DEPTH = 8


def _scales(g: Graph, v: int) -> tuple[int, np.ndarray]:
    """Follow shift-free ``Scale`` ops back from ``v``: ``value(v) = k * value(w)``."""
    k = np.ones(g.size(v))
    while isinstance(g.nodes[v].op, ops.Scale) and (g.nodes[v].op.shift is None
                                                      or not np.any(g.nodes[v].op.shift)):
        k = k * np.asarray(g.nodes[v].op.scale, np.float64)
        v = g.nodes[v].inputs[0]
    return v, k


def _clips(g: Graph, v: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """Follow ``Clip`` ops back from ``v``: ``value(v) = clip(value(w), L, H)``; None if ``v``
    is not a Clip. Composition: clip(clip(x, l1, h1), l2, h2) = clip(x, clip(l1, l2, h2),
    clip(h1, l2, h2)) for l1 <= h1, l2 <= h2."""
    op = g.nodes[v].op
    if not isinstance(op, ops.Clip):
        return None
    n = g.size(v)
    L, H = np.full(n, -np.inf), np.full(n, np.inf)
    outer = []
    while isinstance(g.nodes[v].op, ops.Clip):
        outer.append(g.nodes[v].op)
        v = g.nodes[v].inputs[0]
    for c in reversed(outer):  # innermost first
        lo = np.broadcast_to(np.asarray(c.lo, np.float64), (n,))
        hi = np.broadcast_to(np.asarray(c.hi, np.float64), (n,))
        if np.any(lo > hi):
            return None
        L, H = np.clip(L, lo, hi), np.clip(H, lo, hi)
    return v, L, H


def _affine_clip(g: Graph, i: int):
    """Match node ``i`` as ``a x + g clip(x, L, H)``: returns (x, a, g, L, H) or None."""
    op = g.nodes[i].op
    if not isinstance(op, ops.Sum) or len(op.coeffs) != 2:
        return None
    chains = []
    for c, v in zip(op.coeffs, g.nodes[i].inputs):
        w, k = _scales(g, v)
        chains.append((w, c * k))
    for (wp, kp), (wq, kq) in (chains, chains[::-1]):
        clip = _clips(g, wq)
        if clip is not None and clip[0] == wp:
            return wp, kp, kq, clip[1], clip[2]
    return None


def _as_activation(m) -> ops.Op | None:
    _, a, gk, L, H = m
    if not (np.all(np.isfinite(L)) and np.all(np.isfinite(H))):
        return None
    if np.all(a == 1.0) and np.all(gk == -2.0):
        return ops.NActivation(L.copy(), H.copy())
    alpha, gain, beta = float(a[0]), float(gk[0]), float(H[0])
    if (np.all(a == alpha) and np.all(gk == gain) and np.all(H == beta) and np.all(L == -beta)
            and beta > 0 and alpha >= 0 and alpha + gain >= 0 and gain != 0):
        return ops.CappedLeakyRelu(alpha, beta, None if gain == 1.0 - alpha else gain)
    return None


def _gather(g: Graph, v: int, depth: int = 0) -> tuple[int, np.ndarray, np.ndarray] | None:
    """``value(v) = sign * value(x)[index]`` through Select (no fill), Concat and shift-free
    Scale ops with scale +-1; returns (x, index, sign) with the deepest such x (at most
    ``MAX_DEPTH`` ops back: the patterns are short, and a long chain is left as it is)."""
    op = g.nodes[v].op
    if depth > MAX_DEPTH:
        return None
    if isinstance(op, ops.Select) and (op.index >= 0).all():
        r = _gather(g, g.nodes[v].inputs[0], depth + 1)
        if r is None:
            return g.nodes[v].inputs[0], op.index.astype(np.int64), np.ones(len(op.index))
        return r[0], r[1][op.index], r[2][op.index]
    if isinstance(op, ops.Scale) and (op.shift is None or not np.any(op.shift)) \
            and np.all(np.abs(op.scale) == 1.0):
        r = _gather(g, g.nodes[v].inputs[0], depth + 1)
        if r is None:
            n = g.size(v)
            return g.nodes[v].inputs[0], np.arange(n), np.asarray(op.scale, np.float64).copy()
        return r[0], r[1], r[2] * op.scale
    if isinstance(op, ops.Concat):
        parts = [_gather(g, j, depth + 1) or (j, np.arange(g.size(j)), np.ones(g.size(j))) for j in g.nodes[v].inputs]
        if len({p[0] for p in parts}) != 1:
            return None
        idx = np.concatenate([p[1] for p in parts])
        sgn = np.concatenate([p[2] for p in parts])
        if op.perm is not None:
            idx, sgn = idx[op.perm], sgn[op.perm]
        return parts[0][0], idx, sgn
    return None


def _pair_max(g: Graph, v: int):
    """Match ``v`` as ``s * max(s x[a], s x[b])`` (s = +1: max, s = -1: min); returns
    (x, a, b, is_max) or None."""
    w, k = _scales(g, v)
    op = g.nodes[w].op
    if not isinstance(op, ops.MaxGroup) or op.index.shape[1] != 2 or (op.index < 0).any():
        return None
    if not (np.all(k == 1.0) or np.all(k == -1.0)):
        return None
    r = _gather(g, g.nodes[w].inputs[0])
    if r is None:
        return None
    x, idx, sgn = r
    s = sgn[op.index]
    if not np.all(s == k[0]):
        return None
    a, b = idx[op.index[:, 0]], idx[op.index[:, 1]]
    return x, a, b, bool(k[0] == 1.0)


def _as_maxmin(g: Graph, i: int) -> tuple[int, ops.MaxMin] | None:
    op = g.nodes[i].op
    if not isinstance(op, ops.Concat) or len(op.sizes) != 2:
        return None
    m1, m2 = (_pair_max(g, j) for j in g.nodes[i].inputs)
    if m1 is None or m2 is None or m1[0] != m2[0] or m1[3] == m2[3] or len(m1[1]) != len(m2[1]):
        return None
    (x, a, b, _), mn = (m1, m2) if m1[3] else (m2, m1)
    where = {frozenset((int(p), int(q))): k for k, (p, q) in enumerate(zip(mn[1], mn[2]))}
    m = len(a)
    order = [where.get(frozenset((int(p), int(q)))) for p, q in zip(a, b)]
    if None in order or len(set(order)) != m or np.any(a == b):
        return None
    # plain MaxMin output: [max_1..max_m, min_1..min_m]; the node's plain concat is
    # [first part; second part] then op.perm
    first_max = m1[3]
    src = np.empty(2 * m, dtype=np.int64)  # node plain position -> MaxMin plain position
    maxpos = np.arange(m) if first_max else m + np.arange(m)
    minpos = m + np.arange(m) if first_max else np.arange(m)
    src[maxpos] = np.arange(m)
    src[minpos[np.asarray(order)]] = m + np.arange(m)
    perm = src if op.perm is None else src[op.perm]
    if np.array_equal(perm, np.arange(2 * m)):
        perm = None
    return x, ops.MaxMin(a.astype(np.int64), b.astype(np.int64), perm)


def recognise_activations(g: Graph) -> Graph:
    """Replace every matched pattern node by one paper-activation op (see module doc)."""
    nodes = list(g.nodes)
    changed = False
    for i in sorted(g.live):
        m = _affine_clip(g, i)
        if m is not None:
            act = _as_activation(m)
            if act is not None:
                nodes[i] = Node(nodes[i].name, act, (m[0],))
                changed = True
                continue
        mm = _as_maxmin(g, i)
        if mm is not None:
            nodes[i] = Node(nodes[i].name, mm[1], (mm[0],))
            changed = True
    if not changed:
        return g
    return Graph(tuple(nodes), g.shapes, g.output, g.input_name, g.output_name, g.source, g.sha256, g.meta)
