"""Magnitude-based pruning, paper 002's baseline (section 3.5.1, after Guidotti et al. 2020):
in every chosen layer, the fraction ``sparsity`` of weights and biases with the smallest
magnitudes is set to zero. Nothing is re-solved, so nothing is guaranteed: the report's
validation check says what was kept."""
from __future__ import annotations

import time

import numpy as np

from ..errors import UsageError
from ..graph.graph import Graph
from .core import LayerReport, SparsifyResult, accuracy, check
from .layers import find_layers, layer_system, n_params, nonzeros, replace_node, select_layers, with_params


def prune(g: Graph, x_val: np.ndarray, y_val: np.ndarray, sparsity: float, layers: str = "all",
          test: tuple[np.ndarray, np.ndarray] | None = None) -> SparsifyResult:
    if not 0 <= sparsity <= 1:
        raise UsageError(f"--sparsity must lie in [0, 1] (got {sparsity})")
    t0 = time.monotonic()
    x_val = np.asarray(x_val, dtype=np.float64).reshape(len(x_val), -1)
    cur = g
    reports = []
    for layer in select_layers(find_layers(g), layers):
        op = cur.nodes[layer.node].op
        params = layer_system(op, np.zeros((1, g.size(g.nodes[layer.node].inputs[0])))).params.copy()
        k = int(round(sparsity * params.size))
        if k:
            order = np.argsort(np.abs(params), axis=None, kind="stable")[:k]
            params.flat[order] = 0.0
        rep = LayerReport(layer.number, g.nodes[layer.node].name, layer.kind, "mbp", n_params(op), nonzeros(op),
                          int(np.count_nonzero(params)))
        rep.objective = float(np.abs(params).sum())
        cur = replace_node(cur, layer.node, with_params(op, params))
        rep.acc_val = accuracy(cur, x_val, y_val)
        if test is not None:
            rep.acc_test = accuracy(cur, *test)
        reports.append(rep)
    ok = g(x_val).argmax(1) == y_val
    chk = check(g, cur, x_val[ok], y_val[ok], None)
    acc_t = (accuracy(g, *test), accuracy(cur, *test)) if test is not None else None
    same = (int(np.count_nonzero(cur(x_val).argmax(1) == g(x_val).argmax(1))), len(x_val))
    return SparsifyResult(cur, reports, chk, (accuracy(g, x_val, y_val), accuracy(cur, x_val, y_val)), acc_t,
                          time.monotonic() - t0, same)
