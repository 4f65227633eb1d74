"""Re-deriving a ReLU-splitting proof (``certkit check``; DESIGN.md section 9).

The root's intermediate bounds are recomputed by the same alpha-CROWN run as the search, each
disjunct's tree is replayed from the root -- the two children of a split cover their parent, so the
leaves cover the root -- and every leaf is bounded again with its recorded slopes and multipliers
(any slopes in [0, 1] and multipliers >= 0 give a sound bound, so nothing recorded is trusted); an
``empty`` leaf must show its clamped bounds contradicting its splits; a ``milp`` leaf (a hard leaf the
search's MILP decided) has its MILP solved again. A leaf that does not close that way gets a fresh
search of its own before it counts as failed. A tree of the search that re-optimises every domain's
intermediate bounds (meta ``refine``) is replayed by :func:`certkit.verify.relu_refine.recheck`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .gate import closed
from .proof import ProofTree, RecheckReport, leaves_in_preorder, meta_count
from .query import Budget, BudgetExpired, Query
from .relu_domains import DomainQueue
from .relu_leaves import milp_leaf
from .relu_split import ReluSplitConfig, _Domains, _root, _Tree, relu_nodes, supports


def recheck(query: Query, trees: list[ProofTree], cfg: ReluSplitConfig = ReluSplitConfig(),
            batch: int = 128, time_per_leaf: float = 5.0, milp_seconds: float = 20.0) -> RecheckReport:
    """Re-derive a ReLU-splitting proof (one tree per disjunct): recompute the root's
    intermediate bounds (the same alpha-CROWN run as the search), replay each tree's splits --
    the two children of a split cover their parent, so the leaves cover the root -- and bound
    every leaf again with its recorded slopes and multipliers (any slopes in [0, 1] and any
    multipliers >= 0 give a sound bound, so nothing recorded is trusted); an ``empty`` leaf must
    show its clamped bounds contradicting its splits; a ``milp`` leaf has its MILP solved again
    (``milp_seconds``). A leaf that does not close that way gets a fresh search of its own
    (``time_per_leaf`` seconds) before it counts as failed."""
    if trees and trees[0].meta.get("refine"):  # one tree of the search with re-optimised intermediate bounds
        from .relu_refine import recheck as refine_recheck

        return refine_recheck(query, trees[0], time_per_leaf) if len(trees) == 1 else RecheckReport(failed=1)
    t0 = time.monotonic()
    rep = RecheckReport()
    graph = query.graph
    relus = relu_nodes(graph)
    if not supports(graph) or not trees:
        rep.failed = 1
        return rep
    cfg = ReluSplitConfig(root_iterations=meta_count(trees[0], "root_iterations", cfg.root_iterations))
    shared = _root(query, relus, cfg)
    sizes = [graph.size(r) for r in relus]
    for t in trees:
        rows = np.asarray(t.meta.get("rows", []), dtype=np.int64)
        if not t.well_formed() or len(rows) == 0:
            rep.failed += 1
            continue
        tree = _Tree(query, rows, cfg)
        root, _ = tree.root(shared)

        def child(splits, pos, k, side):
            new = dict(splits)
            new[(pos, k)] = 1 if side == 0 else -1
            return new

        leaves = list(leaves_in_preorder(t, {}, child))
        rep.leaves += len(leaves)
        for s in range(0, len(leaves), batch):
            part = leaves[s:s + batch]
            n = len(part)
            dom = root.map(lambda x: x.expand(n, *x.shape[1:]).clone())
            dom.splits = {r: torch.zeros(n, graph.size(r), dtype=torch.int8) for r in relus}
            for b, (splits, kind, slot, _) in enumerate(part):
                for (pos, k), sign in splits.items():
                    dom.splits[relus[pos]][b, k] = sign
                if slot >= 0:
                    a = torch.as_tensor(t.payload["alpha"][slot], dtype=torch.float64)
                    be = torch.as_tensor(t.payload["beta"][slot], dtype=torch.float64)
                    off = 0
                    for r, size in zip(relus, sizes):
                        dom.alpha[r][b] = a[:, off:off + size]
                        dom.beta[r][b] = be[:, off:off + size]
                        off += size
                else:
                    for r in relus:
                        dom.beta[r][b] = 0.0
            dom.value = torch.full((n,), float("-inf"), dtype=torch.float64)
            dom, _ = tree.bound(dom, None, optimise=False)
            ok = closed(dom.value)
            rep.direct += int(ok.sum())
            for b in torch.nonzero(~ok).flatten().tolist():  # the MILP again, or a fresh search under this leaf
                one = dom.map(lambda x: x[b:b + 1])
                if part[b][1] == "milp" and tree.piecewise and milp_leaf(tree, one, milp_seconds)[0] == "verified":
                    rep.direct += 1
                elif _research(tree, one, cfg, time_per_leaf):
                    rep.resplit += 1
                else:
                    rep.failed += 1
    rep.seconds = time.monotonic() - t0
    return rep


def _research(tree: _Tree, leaf: _Domains, cfg: ReluSplitConfig, seconds: float) -> bool:
    """ReLU splitting below one leaf, with optimisation, until closed or ``seconds`` pass."""
    tree.budget = Budget.of(seconds)
    try:
        return _search(tree, leaf, cfg)
    except BudgetExpired:
        return False
    finally:
        tree.budget = Budget()


def _search(tree: _Tree, leaf: _Domains, cfg: ReluSplitConfig) -> bool:
    leaf, _ = tree.bound(leaf, None, optimise=True)
    queue = DomainQueue(None if bool(closed(leaf.value)[0]) else leaf)
    while len(queue):
        if tree.budget.expired():
            return False
        parents = queue.pop(tree.batch())
        if bool((parents.branch[:, 0] < 0).any()):
            return False  # fully split and still open: not re-derived here
        kids, first = tree.children(parents)
        floor = kids.value.clone()
        kids, _ = tree.bound(kids, first)
        kids.value = torch.maximum(kids.value, floor)
        queue.push(kids.map(lambda t: t[~closed(kids.value)]))
    return True
