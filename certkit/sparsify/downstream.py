"""Later layers as affine maps of a layer's outputs once their ReLU states are fixed
(paper 002, eq. 10-11).

For a ReLU net, fix every ReLU after layer ``l`` to its state on sample ``s`` (active iff
its pre-activation is > 0). The rest of the net is then affine in the layer's outputs:
every later pre-activation and every logit is ``G_s x~ + g_s``. The downstream rows keep
each later state (``>= 0`` if active, ``<= 0`` if not) and the predicted class ``y`` ahead
of every other class ``k`` by ``min(M, current margin)``: capping at the current margin
keeps the current weights feasible (DESIGN.md section 7: a failed solve is then a
numerical problem, never an infeasible model).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..graph.graph import Graph
from ..graph.ops import Relu


@dataclass(frozen=True)
class TailRows:
    """Rows ``lo[s, t] <= G[s, t] . x~_s + g[s, t] <= hi[s, t]`` per sample."""

    G: np.ndarray  # (S, T, n_layer)
    g: np.ndarray  # (S, T)
    lo: np.ndarray
    hi: np.ndarray
    n_state_rows: int  # the first rows keep later states, the rest are class margins

    @property
    def n_rows(self) -> int:
        return int(self.G.shape[1])


def _tail_forward(g: Graph, start: int, x: torch.Tensor, vals: list, masks: dict[int, torch.Tensor],
                  reps: int) -> list:
    """Values of every node after ``start`` with ``x`` as the value of node ``start`` and each
    later ReLU replaced by its fixed mask; earlier values come from ``vals`` (repeated)."""
    out: list = [None] * len(g.nodes)
    out[start] = x
    for i in range(start + 1, len(g.nodes)):
        if i not in g.live:
            continue
        n = g.nodes[i]
        ins = [out[j] if out[j] is not None else torch.as_tensor(vals[j]).repeat_interleave(reps, 0)
               for j in n.inputs]
        out[i] = ins[0] * masks[i] if isinstance(n.op, Relu) else n.op.forward(*ins)
    return out


def tail_rows(g: Graph, relu: int, vals: list[np.ndarray], labels: np.ndarray, margin: float,
              states: dict[int, np.ndarray] | None = None) -> TailRows:
    """The downstream rows of the layer whose ReLU is node ``relu``, on the samples of ``vals``
    (every node's value, from :func:`certkit.sparsify.layers.values`). ``states[i]``: the
    states to keep at ReLU node ``i`` (default: its pre-activation > 0 in ``vals``)."""
    S, n = vals[relu].shape
    later = [i for i in range(relu + 1, len(g.nodes)) if i in g.live and isinstance(g.nodes[i].op, Relu)]
    # inputs: for each sample the basis vectors e_1..e_n and 0; G e_i = tail(e_i) - tail(0)
    basis = torch.cat([torch.eye(n, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64)])
    x = basis.repeat(S, 1)  # (S * (n + 1), n)
    st = {i: (states[i] if states is not None and i in states else vals[g.nodes[i].inputs[0]] > 0)
          for i in later}
    masks = {i: torch.as_tensor(st[i], dtype=torch.float64).repeat_interleave(n + 1, 0) for i in later}
    with torch.no_grad():
        out = _tail_forward(g, relu, x, vals, masks, n + 1)
    pre = [out[g.nodes[i].inputs[0]] for i in later]
    pieces = pre + [out[g.output]]
    Y = torch.cat(pieces, dim=1).reshape(S, n + 1, -1).numpy()  # (S, n + 1, T0)
    g0 = Y[:, n, :]
    G = np.transpose(Y[:, :n, :] - g0[:, None, :], (0, 2, 1))  # (S, T0, n)
    n_state = sum(p.shape[1] for p in pre)
    act = np.concatenate([st[i] for i in later], axis=1) if later else np.zeros((S, 0), bool)
    lo_s = np.where(act, 0.0, -np.inf)
    hi_s = np.where(act, np.inf, 0.0)
    # class rows: logit_y - logit_k >= min(M, current margin), k != y
    n_cls = vals[g.output].shape[1]
    others = np.array([[k for k in range(n_cls) if k != y] for y in labels], dtype=np.int64)
    Gout, gout = G[:, n_state:, :], g0[:, n_state:]
    ar = np.arange(S)[:, None]
    Gm = Gout[ar, labels[:, None]] - Gout[ar, others]  # (S, n_cls - 1, n)
    gm = gout[ar, labels[:, None]] - gout[ar, others]
    cur = vals[g.output][ar, labels[:, None]] - vals[g.output][ar, others]
    lo_m = np.minimum(float(margin), cur)
    G_all = np.concatenate([G[:, :n_state, :], Gm], axis=1)
    g_all = np.concatenate([g0[:, :n_state], gm], axis=1)
    lo = np.concatenate([lo_s, lo_m], axis=1)
    hi = np.concatenate([hi_s, np.full_like(lo_m, np.inf)], axis=1)
    return TailRows(G_all, g_all, lo, hi, n_state)
