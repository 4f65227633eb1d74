"""Train the deep MNIST MLPs of issue 12's speed benchmark (``benchmarks/deeppoly_speed.py``).

Run from the repository root::

    python scripts/train_deep_mlps.py       # ~20 s on one core

Writes ``models/mnist_mlp_4x256.onnx`` and ``models/mnist_mlp_6x256.onnx``: input ``input`` [1, 784]
(pixels / 255) -> (Gemm(256) -> Relu) x 4 or 6 -> Gemm(10) -> ``logits`` [1, 10]. ``../shared/data/mnist.npz``
holds the MNIST *test* set only: the nets are trained on its first 9000 images for two epochs (as in
the issue: Adam, lr 1e-3, batch 64, torch seed 0, one thread) and their accuracy is printed on the
last 1000 (they are speed benchmarks, not good classifiers). ONNX written with ``onnx.helper``
(float32, opset 17), checked against torch with onnxruntime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mnist.npz"


def export(net: nn.Sequential, path: Path) -> None:
    nodes, inits, prev, k = [], [], "input", 0
    layers = [m for m in net if isinstance(m, nn.Linear)]
    for idx, lin in enumerate(layers):
        w, b = f"W{idx}", f"B{idx}"
        inits += [numpy_helper.from_array(lin.weight.detach().numpy().astype(np.float32), w),
                  numpy_helper.from_array(lin.bias.detach().numpy().astype(np.float32), b)]
        out = "logits" if idx == len(layers) - 1 else f"h{idx}"
        nodes.append(helper.make_node("Gemm", [prev, w, b], [out], transB=1))
        if idx < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{idx}"]))
            out = f"r{idx}"
        prev, k = out, k + 1
    g = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 784])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def main() -> None:
    torch.set_num_threads(1)
    d = np.load(DATA)
    x = torch.as_tensor(d["x_test"].reshape(-1, 784).astype(np.float32) / 255.0)
    y = torch.as_tensor(d["y_test"].astype(np.int64))
    for depth in (4, 6):
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        n = 784
        for _ in range(depth):
            layers += [nn.Linear(n, 256), nn.ReLU()]
            n = 256
        net = nn.Sequential(*layers, nn.Linear(n, 10))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(2):
            perm = torch.randperm(9000, generator=g)
            for s in range(0, 9000, 64):
                i = perm[s:s + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[i]), y[i]).backward()
                opt.step()
        with torch.no_grad():
            acc = float((net(x[9000:]).argmax(1) == y[9000:]).float().mean())
        path = ROOT / "models" / f"mnist_mlp_{depth}x256.onnx"
        export(net, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diff = max(float(np.abs(sess.run(None, {"input": x[j:j + 1].numpy()})[0]
                                - net(x[j:j + 1]).detach().numpy()).max()) for j in range(9000, 9020))
        print(f"{path.name}: held-out accuracy {acc:.3f}, onnxruntime vs torch {diff:.1e}")


if __name__ == "__main__":
    main()
