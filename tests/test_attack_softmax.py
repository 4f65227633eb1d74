"""The attack on a saturated final Softmax: rows ``y_label - y_j`` compared in log space (the logits'
margins, where the softmax's gradient underflows to 0), restarts aimed at the most promising classes
first (certkit/verify/falsify.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from certkit.verify.falsify import AttackConfig, _compares_outputs, attack
from tests.helpers.onnx_builders import X, graph_model, ort_run

K = 20  # classes; the label is 0, only class STAR can win (at the corner sign(w_STAR))
STAR = 17


def _weights():
    rng = np.random.default_rng(0)
    W = rng.uniform(-1, 1, (10, K))
    W /= np.abs(W).sum(axis=0, keepdims=True)  # |w_j|_1 = 1
    W *= 300.0
    W[:, STAR] *= 1.5  # max_x w_STAR x = 450 > 436 (only near that corner); every other class <= 300
    W[:, 0] = 0.0
    b = np.full(K, -436.0)  # softmax values below e^-100 almost everywhere: saturated
    b[0] = 0.0
    return W.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)


def _model():
    W, b = _weights()
    nodes = [helper.make_node("Gemm", [X, "W", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["Y"], axis=1)]
    return graph_model(nodes, (1, 10), consts={"W": W.astype(np.float32), "b": b.astype(np.float32)})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_saturated_softmax_is_attacked_in_log_space(seed):
    m = _model()
    g = import_model(m)
    C = np.zeros((K - 1, K))
    C[:, 0] = 1.0
    C[np.arange(K - 1), np.arange(1, K)] = -1.0  # unsafe: y_0 - y_j <= 0 for some j
    d, owner = np.zeros(K - 1), np.arange(K - 1)
    assert _compares_outputs(torch.as_tensor(C), torch.as_tensor(d))
    box = InputSet.box(-np.ones(10), np.ones(10))
    x, v = attack(g, box, torch.as_tensor(C), torch.as_tensor(d), owner, AttackConfig(512, 8, 50), seed=seed)
    assert v[0] <= 0
    y = ort_run(m, x.astype(np.float32))[0]
    assert y.argmax() == STAR  # onnxruntime agrees: a counterexample
    # the objective is the logits' margin (log space), not a softmax difference in [-1, 1]
    z = x[0].astype(np.float64) @ _weights()[0] + _weights()[1]
    assert v[0] == pytest.approx(z[0] - z[STAR], abs=1e-3)


def test_log_space_only_for_pairwise_rows():
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, -2.0]])
    assert _compares_outputs(C, torch.zeros(2))
    assert not _compares_outputs(C, torch.tensor([0.0, 0.1]))  # y_1 - y_2 <= 0.1: not scale-free
    assert not _compares_outputs(torch.tensor([[1.0, -0.5, -0.5]]), torch.zeros(1))
    assert not _compares_outputs(torch.tensor([[1.0, 0.0, 0.0]]), torch.zeros(1))
