"""The domains of ReLU splitting (DESIGN.md section 3): batches of split sets with their bounds,
slopes and multipliers, and which nets ReLU splitting handles."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..graph import ops
from ..graph.graph import Graph

Tensor = torch.Tensor


def supports(graph: Graph) -> bool:
    """ReLU splitting needs ReLUs, and only piecewise-linear ops whose bounds the splits can refine."""
    kinds = (ops.Input, ops.LinearOp, ops.Relu)
    return any(isinstance(n.op, ops.Relu) for n in graph.nodes) and \
        all(isinstance(n.op, kinds) for n in graph.nodes)


def relu_nodes(graph: Graph) -> list[int]:
    """The ReLU nodes the output depends on, in topological order."""
    return [i for i, n in enumerate(graph.nodes) if isinstance(n.op, ops.Relu) and i in graph.live]


@dataclass
class Domains:
    """A batch of domains (first axis of every tensor)."""

    splits: dict[int, Tensor]  # ReLU node -> (N, n) int8 in {-1, 0, 1}
    bounds: dict[int, tuple[Tensor, Tensor]]  # pre-activation node -> (N, n) lower, upper
    alpha: dict[int, Tensor]  # ReLU node -> (N, s, n) lower slopes of the final rows
    beta: dict[int, Tensor]  # ReLU node -> (N, s, n) split multipliers
    value: Tensor  # (N,) best row slack minus margin (> 0: closed)
    branch: Tensor  # (N, 2) (position in the ReLU list, neuron); (-1, -1) when none is left
    ids: Tensor  # (N,) int64: domain ids in the proof log

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def bounds_list(self, n_nodes: int) -> list:
        """The intermediate bounds as a BoundState wants them: a list indexed by node."""
        out: list = [None] * n_nodes
        for j, lu in self.bounds.items():
            out[j] = lu
        return out

    def map(self, fn) -> "Domains":
        return Domains({r: fn(t) for r, t in self.splits.items()},
                        {j: (fn(lu[0]), fn(lu[1])) for j, lu in self.bounds.items()},
                        {r: fn(t) for r, t in self.alpha.items()},
                        {r: fn(t) for r, t in self.beta.items()},
                        fn(self.value), fn(self.branch), fn(self.ids))

    @staticmethod
    def cat(a: "Domains | None", b: "Domains") -> "Domains":
        if a is None or len(a) == 0:
            return b
        return Domains({r: torch.cat([a.splits[r], t]) for r, t in b.splits.items()},
                        {j: (torch.cat([a.bounds[j][0], lu[0]]), torch.cat([a.bounds[j][1], lu[1]]))
                         for j, lu in b.bounds.items()},
                        {r: torch.cat([a.alpha[r], t]) for r, t in b.alpha.items()},
                        {r: torch.cat([a.beta[r], t]) for r, t in b.beta.items()},
                        torch.cat([a.value, b.value]), torch.cat([a.branch, b.branch]),
                        torch.cat([a.ids, b.ids]))


def choose_branch(dom: Domains, record: dict, relus: list[int], pre: list[int]) -> Tensor:
    """Per domain, the unstable free ReLU with the largest BaBSR-like score (Bunel et al. 2020): the
    relaxation gap it costs the final bound, ``|coefficient| x intercept`` from the coefficients the
    final rows' back-substitution recorded at each ReLU. (N, 2): (position in ``relus``, neuron), or
    (-1, -1) when every ReLU is fixed."""
    n = len(dom)
    best_score = torch.full((n,), 0.0, dtype=torch.float64)
    branch = torch.full((n, 2), -1, dtype=torch.long)
    for p, (r, j) in enumerate(zip(relus, pre)):
        l, u = dom.bounds[j]
        free = (l < 0) & (u > 0) & (dom.splits[r] == 0)
        if not bool(free.any()):
            continue
        A = record[r].sum(dim=1) if r in record else torch.ones_like(l)  # (N, n) over the rows
        width = (u - l).clamp(min=1e-30)
        intercept = (u * -l / width).clamp(min=0)
        score = A.clamp(max=0).abs() * intercept + 1e-3 * A.abs() * torch.minimum(u, -l).clamp(min=0)
        score = torch.where(free, score + 1e-12, torch.zeros_like(score))
        s, k = score.max(dim=1)
        take = s > best_score
        best_score = torch.where(take, s, best_score)
        branch[take, 0] = p
        branch[take, 1] = k[take]
    return branch
