"""Export certkit.nn models to ONNX (plain Gemm/Conv weights, opset >= 13).

:func:`freeze` replaces every structured layer by a plain ``nn.Linear``/``nn.Conv2d``
holding its effective weight and every N-activation by fixed thresholds, so the
exported graph has one initializer per weight (nothing left to fold) and the
activation patterns of DESIGN.md section 5. Implicit-bias layers (paper 003, DESIGN.md
section 8) become :class:`~certkit.nn.ibnn.IBNNExport` modules running exactly the K unrolled steps
of the file; the exporter writes each as one node ``IBNN_<i>`` (in model order) of domain
``ai.certkit.ibnn`` and :func:`export_onnx` then adds the canonical function bodies and metadata
(:func:`certkit.onnx.ibnn.attach`).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..onnx.ibnn import DOMAIN
from .activations import NActivation
from .ibnn import export_layers, finish_export, frozen_ibnn
from .layers import ABBAConv2d, ABBALinear, AOLLinear, NonnegLinear


class _FixedN(nn.Module):
    """An N-activation with constant thresholds (buffers)."""

    def __init__(self, src: NActivation) -> None:
        super().__init__()
        self.dim = src.dim
        t1, t2 = src.thresholds()
        self.register_buffer("t1", t1.detach().clone())
        self.register_buffer("t2", t2.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return x - torch.maximum(torch.minimum(x, self.t2.reshape(shape)), self.t1.reshape(shape)) * 2.0


def _frozen(m: nn.Module) -> nn.Module | None:
    with torch.no_grad():
        if isinstance(m, (ABBALinear, AOLLinear, NonnegLinear)):
            w = m.weight if isinstance(m, ABBALinear) else m.effective_weight()
            lin = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
            lin.weight.copy_(w)
            if m.bias is not None:
                lin.bias.copy_(m.bias)
            return lin
        if isinstance(m, ABBAConv2d):
            w = m.weight
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], m.stride, m.padding, bias=m.bias is not None)
            conv.weight.copy_(w)
            if m.bias is not None:
                conv.bias.copy_(m.bias)
            return conv
        if isinstance(m, NActivation):
            return _FixedN(m)
    return None


def freeze(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with plain layers computing the same function; IBNN
    layers become their K-step unrolled export form, named ``IBNN_0``, ``IBNN_1``... in module order."""
    model = copy.deepcopy(model).eval()
    count = [0]

    def frozen(m: nn.Module) -> nn.Module | None:
        rep = frozen_ibnn(m, count[0])
        if rep is not None:
            count[0] += 1
            return rep
        return _frozen(m)

    top = frozen(model)
    if top is not None:
        return top

    def walk(mod: nn.Module) -> None:
        for name, child in mod.named_children():
            rep = frozen(child)
            if rep is not None:
                setattr(mod, name, rep)
            else:
                walk(child)
    walk(model)
    return model


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], opset: int = 17,
                input_name: str = "input", output_name: str = "output", check: bool = True) -> Path:
    """Export ``model`` (frozen first) with a fixed batch dimension of 1.

    Uses the TorchScript exporter (``dynamo=False``: it needs no onnxscript) with constant
    folding. With ``check``, the file passes ``onnx.checker`` and onnxruntime reproduces
    torch on random inputs to 1e-5 (raises ``RuntimeError`` otherwise). IBNN layers are exported
    unrolled (``K = min(K_for(tol), max_iter)`` steps) and torch is compared running those K steps.
    """
    if opset < 13:
        raise ValueError("opset >= 13 is required")
    path = Path(path)
    frozen = freeze(model)
    x = torch.rand(1, *input_shape[1:]) if input_shape[0] == 1 else torch.rand(*input_shape)
    ibnn = export_layers(frozen)
    if ibnn and x.shape[0] != 1:
        raise ValueError("models with IBNN layers are exported with batch 1 (the unrolled function's shape)")
    extra = {"custom_opsets": {DOMAIN: 1}} if ibnn else {}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, not removed
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(frozen, (x,), str(path), input_names=[input_name], output_names=[output_name],
                          opset_version=opset, do_constant_folding=True, dynamo=False, **extra)
    if ibnn:
        import onnx

        onnx.save(finish_export(onnx.load(str(path)), ibnn), str(path))
    if check:
        _check(frozen, path, x.shape, input_name)
    return path


def _check(model: nn.Module, path: Path, shape, input_name: str) -> None:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {input_name: x.numpy()})[0]
        if not np.allclose(got, ref, atol=1e-5, rtol=1e-5):
            raise RuntimeError(f"{path}: onnxruntime differs from torch by {np.abs(got - ref).max():.3g}")
