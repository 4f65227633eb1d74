"""Real models: every benchmark network and every shipped model imports, and the IR
reference executor matches onnxruntime on random inputs in the input's natural
range; the IR's linear ops pass an adjoint test (``<A, M x> = <A M, x>``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from certkit.graph.ops import LinearOp
from certkit.onnx.importer import load_onnx
from tests.helpers.onnx_builders import assert_close, ort_run

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHIPPED = Path(__file__).resolve().parents[1] / "models"
N_SAMPLES = 64


def _shared_models() -> list:
    if not SHARED.is_dir():
        return [pytest.param(None, id="shared-missing")]
    paths = sorted(SHARED.glob("benchmarks/*/onnx/*.onnx")) + sorted(SHARED.glob("data/vnn_models/*.onnx"))
    return [pytest.param(p, id=f"{p.parent.parent.name}/{p.name}" if p.parent.name == "onnx" else p.name)
            for p in paths]


def _shipped_models() -> list:
    paths = sorted(SHIPPED.glob("*.onnx"))
    if not paths:
        return [pytest.param(None, id="none-shipped")]
    return [pytest.param(p, id=p.name) for p in paths]


def _input_range(path: Path) -> tuple[float, float]:
    """ACAS Xu takes normalised inputs around 0; the MNIST/digits nets take pixels in [0, 1]."""
    return (-0.5, 0.5) if "acas" in str(path).lower() else (0.0, 1.0)


def _check_model(path: Path) -> None:
    g = load_onnx(path)
    model = onnx.load(str(path))
    lo, hi = _input_range(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, size=(N_SAMPLES,) + g.input_shape).astype(np.float32)
    ref = ort_run(model, x)
    ours = g(x.reshape(N_SAMPLES, -1))
    assert ours.shape == ref.shape == (N_SAMPLES, g.n_outputs)
    assert_close(ours, ref, 1e-5)
    # adjoint test of every linear op: backward is the exact transpose of apply
    vals = g.forward(torch.as_tensor(x.reshape(N_SAMPLES, -1), dtype=torch.float64)[:2], keep=True)
    gen = torch.Generator().manual_seed(1)
    for i in sorted(g.live):
        nd = g.nodes[i]
        if not isinstance(nd.op, LinearOp):
            continue
        xs = [vals[j] for j in nd.inputs]
        y = nd.op.apply(*xs)
        A = torch.randn(2, 3, y.shape[1], generator=gen, dtype=torch.float64)
        lhs = torch.einsum("bso,bo->bs", A, y)
        rhs = sum(torch.einsum("bsi,bi->bs", a, xx) for a, xx in zip(nd.op.backward(A), xs))
        torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("path", _shared_models())
def test_benchmark_model_matches_onnxruntime(path):
    if path is None:
        pytest.skip("../shared not found: benchmark models are only in the development checkout")
    _check_model(path)


@pytest.mark.parametrize("path", _shipped_models())
def test_shipped_model_matches_onnxruntime(path):
    if path is None:
        pytest.skip("no models/*.onnx shipped yet")
    _check_model(path)


def test_acasxu_models_all_present():
    """All 45 ACAS Xu networks are exercised (the glob did not silently match fewer)."""
    if not SHARED.is_dir():
        pytest.skip("../shared not found: benchmark models are only in the development checkout")
    assert len(list(SHARED.glob("benchmarks/acasxu/onnx/*.onnx"))) == 45
