"""Proof trees of branch and bound (DESIGN.md sections 3 and 9).

A search records every split it makes and every domain it closes, by domain id
(:class:`TreeLog`); when it proves the property, :meth:`TreeLog.tree` turns the record into a
:class:`ProofTree`: the tree in preorder, compactly, with one row per node,

* a split: ``(position, index)`` with ``position >= 0`` -- for input splitting ``(0, dim)``:
  the box is bisected at the midpoint of dimension ``dim``, left child below; for ReLU
  splitting ``(p, k)``: neuron ``k`` of the ``p``-th ReLU node, first child active
  (``z >= 0``), second inactive (``z <= 0``);
* a closed leaf: ``(-1 - kind, slot)``, ``kind`` an index into the search's leaf kinds and
  ``slot`` the leaf's row in the payload arrays (multipliers, ...), or -1.

Because the children of a split are determined by the split itself, a checker that replays the
tree from the root covers the root by construction: it only has to re-derive every leaf
(``certkit check``). The proof object is what the verdict gate admits
(:mod:`certkit.verify.gate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ProofTree:
    """A branch-and-bound proof of one (region, disjunct group): preorder ``codes`` (m, 2), the
    closing value of every leaf in preorder, and per-leaf payload arrays (row ``slot``)."""

    method: str  # "input_split" | "relu_split"
    codes: np.ndarray  # (m, 2) int64
    leaf_values: np.ndarray  # (n_leaves,) float64, > 0
    kinds: tuple[str, ...]  # leaf kind names, index = -1 - code
    payload: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def n_leaves(self) -> int:
        return int((self.codes[:, 0] < 0).sum())

    def well_formed(self) -> bool:
        """Every split has exactly two subtrees and the codes are used up exactly."""
        need = 1
        for pos in self.codes[:, 0]:
            if need == 0:
                return False
            need += 1 if pos >= 0 else -1
        return need == 0 and len(self.codes) > 0


@dataclass
class TreeLog:
    """The record of a search: ``split[parent] = (position, index, left, right)`` and
    ``leaf[id] = (kind, value, slot)``. Ids are handed out by :meth:`new_ids`; 0 is the root."""

    kinds: tuple[str, ...]
    splits: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    leaves: dict[int, tuple[int, float, int]] = field(default_factory=dict)
    next_id: int = 1
    payload: dict[str, list] = field(default_factory=dict)
    n_payload: int = 0

    def new_ids(self, k: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + k, dtype=np.int64)
        self.next_id += k
        return ids

    def split(self, parents, positions, indices, left, right) -> None:
        for p, pos, idx, a, b in zip(*(np.asarray(v).tolist() for v in (parents, positions, indices, left, right))):
            self.splits[int(p)] = (int(pos), int(idx), int(a), int(b))

    def close(self, ids, kinds, values, payload: dict[str, np.ndarray] | None = None) -> None:
        """Record closed leaves; ``payload`` holds one row per leaf (e.g. its multipliers)."""
        ids, kinds, values = (np.asarray(v).reshape(-1) for v in (ids, kinds, values))
        slots = np.full(len(ids), -1, dtype=np.int64)
        if payload:
            slots = np.arange(self.n_payload, self.n_payload + len(ids))
            self.n_payload += len(ids)
            for k, v in payload.items():
                self.payload.setdefault(k, []).append(np.asarray(v))
        for i, kd, v, s in zip(ids.tolist(), kinds.tolist(), values.tolist(), slots.tolist()):
            self.leaves[int(i)] = (int(kd), float(v), int(s))

    def tree(self, method: str, root: int = 0, meta: dict | None = None) -> ProofTree:
        """The preorder proof tree under ``root`` (payload rows renumbered to the leaves kept)."""
        codes: list[tuple[int, int]] = []
        values: list[float] = []
        old_slots: list[int] = []
        stack = [root]
        while stack:
            i = stack.pop()
            if i in self.splits:
                pos, idx, a, b = self.splits[i]
                codes.append((pos, idx))
                stack.extend((b, a))  # left subtree first
            elif i in self.leaves:
                kd, v, s = self.leaves[i]
                codes.append((-1 - kd, -1 if s < 0 else len(old_slots)))
                values.append(v)
                if s >= 0:
                    old_slots.append(s)
            else:
                raise ValueError(f"domain {i} is neither split nor closed: the search is not finished")
        payload = {}
        if old_slots:
            for k, parts in self.payload.items():
                allrows = np.concatenate(parts)
                payload[k] = allrows[np.asarray(old_slots)]
        return ProofTree(method, np.asarray(codes, dtype=np.int64).reshape(-1, 2), np.asarray(values, np.float64),
                         self.kinds, payload, dict(meta or {}))


def leaves_in_preorder(tree: ProofTree, root, child):
    """Replay ``tree`` from ``root``: yields ``(domain, kind, slot, value)`` per leaf, where
    ``child(domain, position, index, side)`` makes a child domain (side 0 first, 1 second)."""
    stack = [root]
    leaf = 0
    for pos, idx in tree.codes.tolist():
        dom = stack.pop()
        if pos >= 0:
            stack.append(child(dom, pos, idx, 1))
            stack.append(child(dom, pos, idx, 0))
        else:
            yield dom, tree.kinds[-1 - pos], idx, float(tree.leaf_values[leaf])
            leaf += 1


#: the largest iteration count a proof tree's meta may record (a re-check repeats that many alpha-CROWN steps)
MAX_META_ITERATIONS = 10_000


def meta_count(tree: ProofTree, key: str, default: int) -> int:
    """An iteration count recorded in ``tree.meta``: an integer in [0, :data:`MAX_META_ITERATIONS`];
    ``ValueError`` (a malformed certificate) otherwise -- a forged huge count would keep the re-check
    running for ever."""
    v = tree.meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_META_ITERATIONS or v != int(v):
        raise ValueError(f"proof tree meta '{key}' must be an integer in [0, {MAX_META_ITERATIONS}], not {v!r}")
    return int(v)


@dataclass
class RecheckReport:
    """What a re-derivation of proof trees established: leaves closed by their recorded bound,
    closed only by a further search of their own, and not re-derived."""

    leaves: int = 0
    direct: int = 0
    resplit: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.leaves > 0
