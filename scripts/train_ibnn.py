"""Train and export the implicit-bias MNIST models (paper 003; DESIGN.md section 8) and their
standard twins.

Run from the repository root::

    python scripts/train_ibnn.py                 # about 1 min on one CPU thread
    python scripts/train_ibnn.py --only ibnn_dense std_dense

Data: ``../shared/data/mnist.npz`` (its 10,000 test images: 0..7999 train, 8000..9999 test, pixels
/ 255 in [0, 1]); the script stops with exit status 2 when the file is absent. Writes into
``models/``:

- ``ibnn_dense.onnx``  ``input`` [1, 784] -> IBNN dense layer 784 -> 64 (uniform kernel,
  lambda 0.04, alpha 10, beta 1: q = 0.8) -> Relu -> Gemm 64 -> 10
- ``std_dense.onnx``   the same with a plain Gemm 784 -> 64 (the same 50,890 parameters)
- ``ibnn_conv.onnx``   ``input`` [1, 1, 28, 28] -> IBNN conv layer (Conv 1 -> 4, 5x5, stride 3:
  4 x 8 x 8; 3x3 window kernel within each channel, lambda 0.04: q = 0.8) -> Relu -> Flatten ->
  Gemm 256 -> 10
- ``std_conv.onnx``    the same with a plain Conv (the same 2,674 parameters)

The IBNN layers are trained with the fixed-point solver (tolerance 1e-6) and implicit-function-theorem
gradients; the files hold ``K = K_for(1e-6)`` unrolled steps (48 for q = 0.8), the canonical
``ai.certkit.ibnn`` functions of :mod:`certkit.onnx.ibnn`. Adam (cosine schedule), batch 128,
cross-entropy; seed 0, one thread, deterministic. Every export is checked against onnxruntime.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from certkit.nn import IBNNConv2d, IBNNLayer, IBNNLinear, export_onnx  # noqa: E402

MODELS = ROOT / "models"
MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
SEED = 0
N_TRAIN = 8000
LAM = 0.04          # q = 2 lambda alpha beta max_i sum_k w_ik = 2 * 0.04 * 10 * 1 * 1 = 0.8
ALPHA = 10.0
TOL = 1e-6
HIDDEN = 64
CHANNELS = 4


def load_data(mnist: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x (N, 1, 28, 28) float32 in [0, 1]."""
    d = np.load(mnist)
    x = (d["x_test"].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = d["y_test"].astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


# --------------------------------------------------------------------------- models


def ibnn_dense() -> nn.Module:
    return nn.Sequential(IBNNLinear(784, HIDDEN, lam=LAM, alpha=ALPHA, tol=TOL), nn.ReLU(), nn.Linear(HIDDEN, 10))


def std_dense() -> nn.Module:
    return nn.Sequential(nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def ibnn_conv() -> nn.Module:
    return nn.Sequential(IBNNConv2d(1, CHANNELS, 5, stride=3, lam=LAM, alpha=ALPHA, ib_kernel=3, in_size=(28, 28),
                                    tol=TOL),
                         nn.ReLU(), nn.Flatten(), nn.Linear(CHANNELS * 64, 10))


def std_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, CHANNELS, 5, stride=3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(CHANNELS * 64, 10))


# name -> (builder, input shape without the batch, epochs, lr)
SPECS = {
    "ibnn_dense": (ibnn_dense, (784,), 12, 2e-3),
    "std_dense": (std_dense, (784,), 12, 2e-3),
    "ibnn_conv": (ibnn_conv, (1, 28, 28), 12, 5e-3),
    "std_conv": (std_conv, (1, 28, 28), 12, 5e-3),
}


# --------------------------------------------------------------------------- training


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int = 128) -> None:
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


def ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def build(name: str, data, out_dir: Path = MODELS) -> str:
    x_tr, y_tr, x_te, y_te = data
    builder, shape, epochs, lr = SPECS[name]
    x_tr, x_te = x_tr.reshape(-1, *shape), x_te.reshape(-1, *shape)
    torch.manual_seed(SEED)
    model = builder()
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, epochs, lr)
    path = out_dir / f"{name}.onnx"
    export_onnx(model, path, (1, *shape), output_name="logits")
    out = ort_outputs(path, x_te)
    with torch.no_grad():
        ref = model(torch.from_numpy(x_te)).numpy()       # solved to the tolerance, not the K steps
    ib = [m for m in model.modules() if isinstance(m, IBNNLayer)]
    extra = "".join(f", q {m.q():.2f}, K {m.params().K}, solver steps {m.last_solve.get('steps')}" for m in ib)
    line = (f"{name}.onnx: test acc {float((out.argmax(1) == y_te).mean()) * 100:.2f} %, "
            f"{sum(p.numel() for p in model.parameters())} params, {os.path.getsize(path) / 1024:.0f} KB, "
            f"{epochs} epochs in {time.perf_counter() - t0:.0f} s, "
            f"ort-vs-torch {np.abs(out - ref).max():.1e}{extra}")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(SPECS), help="build only these models")
    ap.add_argument("--out", type=Path, default=MODELS, help="output folder (default: models/)")
    ap.add_argument("--mnist", type=Path, default=MNIST, help="mnist.npz (default: ../shared/data/mnist.npz)")
    args = ap.parse_args(argv)
    if not args.mnist.is_file():
        print(f"train_ibnn: {args.mnist} not found (the MNIST test set as mnist.npz); nothing built", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(exist_ok=True)
    data = load_data(args.mnist)
    print(f"data: mnist, train {len(data[0])}, test {len(data[2])}")
    for name in args.only or SPECS:
        build(name, data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
