"""Train and export the example digits models shipped in ``models/``.

Run from the repository root::

    python scripts/build_models.py

Deterministic (fixed seeds, single-threaded torch, deterministic algorithms) and
fast (well under a minute on 2 CPU cores). Writes:

- ``models/digits_fc.onnx``        input ``input`` [1, 64]      -> ``logits`` [1, 10]
- ``models/digits_conv.onnx``      input ``input`` [1, 1, 8, 8] -> ``logits`` [1, 10]
- ``models/digits_test.npz``       held-out split, ``x`` (N, 64) float32, ``y`` (N,) int64
- ``models/digits_test_conv.npz``  held-out split, ``x`` (N, 1, 8, 8) float32, ``y`` (N,) int64

The ONNX files are written directly with ``onnx.helper`` from the trained weights
(opset 17, ir_version 8), checked with ``onnx.checker.check_model(full_check=True)``
and compared against the torch model with onnxruntime on the whole test split.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

SEED = 0
OPSET = 17
IR_VERSION = 8
MAX_ABS_DIFF = 1e-4


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits pixels scaled to [0, 1]; the fixed stratified 75/25 split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # (1797, 64), values k/16 exactly
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, x_te, y_tr, y_te


class FC(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=1, padding=1)  # 8x8x8
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # 8x4x4
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> None:
    gen = torch.Generator().manual_seed(SEED)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    batch = 64
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def _init(name: str, arr: torch.Tensor) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.detach().cpu().numpy().astype(np.float32), name)


def _finish(graph: onnx.GraphProto, path: Path, doc: str) -> None:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="certkit/scripts/build_models.py",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_fc(model: FC, path: Path) -> None:
    inits, nodes = [], []
    prev = "input"
    layers = [model.fc1, model.fc2, model.fc3]
    for k, lin in enumerate(layers, start=1):
        w, b = f"fc{k}.weight", f"fc{k}.bias"
        inits += [_init(w, lin.weight), _init(b, lin.bias)]
        out = "logits" if k == len(layers) else f"gemm{k}"
        nodes.append(helper.make_node("Gemm", [prev, w, b], [out], name=f"Gemm_{k}", transB=1))
        prev = out
        if k < len(layers):
            nodes.append(helper.make_node("Relu", [prev], [f"relu{k}"], name=f"Relu_{k}"))
            prev = f"relu{k}"
    graph = helper.make_graph(
        nodes, "digits_fc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    _finish(graph, path, "sklearn digits 8x8 (pixels/16), FC 64-32-32-10 ReLU")


def export_conv(model: Conv, path: Path) -> None:
    inits = [
        _init("conv1.weight", model.conv1.weight), _init("conv1.bias", model.conv1.bias),
        _init("conv2.weight", model.conv2.weight), _init("conv2.bias", model.conv2.bias),
        _init("fc1.weight", model.fc1.weight), _init("fc1.bias", model.fc1.bias),
        _init("fc2.weight", model.fc2.weight), _init("fc2.bias", model.fc2.bias),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], name="Conv_1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="Relu_1"),
        helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], name="Conv_2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], dilations=[1, 1], group=1),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="Relu_2"),
        helper.make_node("Flatten", ["relu2"], ["flat"], name="Flatten_1", axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["gemm1"], name="Gemm_1", transB=1),
        helper.make_node("Relu", ["gemm1"], ["relu3"], name="Relu_3"),
        helper.make_node("Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["logits"], name="Gemm_2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
        value_info=[
            helper.make_tensor_value_info("conv1", TensorProto.FLOAT, [1, 8, 8, 8]),
            helper.make_tensor_value_info("conv2", TensorProto.FLOAT, [1, 8, 4, 4]),
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 128]),
        ],
    )
    _finish(graph, path, "sklearn digits 8x8 (pixels/16), Conv8-Conv8(s2)-FC32-10 ReLU")


def check_onnx(path: Path, model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Run onnxruntime sample by sample (batch dim is fixed to 1); return (max |diff|, accuracy)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ort_out = np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(ort_out - torch_out).max())
    if not diff < MAX_ABS_DIFF:
        raise SystemExit(f"{path.name}: onnxruntime vs torch max abs diff {diff:.3g} >= {MAX_ABS_DIFF}")
    return diff, float((ort_out.argmax(1) == y).mean())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    MODELS.mkdir(exist_ok=True)

    x_tr, x_te, y_tr, y_te = load_data()
    np.savez_compressed(MODELS / "digits_test.npz", x=x_te, y=y_te)
    np.savez_compressed(MODELS / "digits_test_conv.npz", x=x_te.reshape(-1, 1, 8, 8), y=y_te)
    print(f"data: train {len(x_tr)}, test {len(x_te)}")

    torch.manual_seed(SEED)
    fc = FC()
    train(fc, x_tr, y_tr, epochs=60, lr=3e-3)
    export_fc(fc, MODELS / "digits_fc.onnx")
    diff, acc = check_onnx(MODELS / "digits_fc.onnx", fc, x_te, y_te)
    print(f"digits_fc.onnx:   {n_params(fc)} params, train acc {accuracy(fc, x_tr, y_tr):.4f}, "
          f"test acc {acc:.4f} (torch {accuracy(fc, x_te, y_te):.4f}), ort-vs-torch max diff {diff:.2e}")

    torch.manual_seed(SEED)
    conv = Conv()
    x_tr4, x_te4 = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    train(conv, x_tr4, y_tr, epochs=40, lr=3e-3)
    export_conv(conv, MODELS / "digits_conv.onnx")
    diff, acc = check_onnx(MODELS / "digits_conv.onnx", conv, x_te4, y_te)
    print(f"digits_conv.onnx: {n_params(conv)} params, train acc {accuracy(conv, x_tr4, y_tr):.4f}, "
          f"test acc {acc:.4f} (torch {accuracy(conv, x_te4, y_te):.4f}), ort-vs-torch max diff {diff:.2e}")

    for name in ["digits_fc.onnx", "digits_conv.onnx", "digits_test.npz", "digits_test_conv.npz"]:
        print(f"  {name}: {os.path.getsize(MODELS / name)} bytes")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
