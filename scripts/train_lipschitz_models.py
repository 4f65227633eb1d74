"""Train and export the structured MNIST models of issue 4 (papers 000, 001, 004).

Run from the repository root::

    python scripts/train_lipschitz_models.py          # about 5-6 min on one CPU thread
    python scripts/train_lipschitz_models.py --only mnist_ae_nonneg

Data: ``../shared/data/mnist.npz`` (its 10,000 test images: 0..7999 train, 8000..9999 test;
pixels / 255 in [0, 1]); when that file is absent, scikit-learn's digits (8x8, pixels / 16,
the same 80/20 split by index), and the models then have 64 inputs. Writes into ``models/``:

- ``mnist_std.onnx``       standard ReLU MLP 784-100-100-10
- ``mnist_nonneg.onnx``    the same with every weight >= 0 (projection after each step)
- ``mnist_abba.onnx``      nonnegative ABBA net (paper 000, eqs. 9-12): x -> [x; -x],
  ABBA layers [[A, B], [B, A]] with A, B >= 0 (784 -> 64 -> 64 -> 10 per half), capped
  symmetric leaky ReLU (eq. 20), last layer (y1 - y2) / 2; Lipschitz constraint on the whole
  bound, theta (eq. 17) <= THETA_MAX = 10, kept by an approximate projection after each step
  ("projected Adam", paper 000, Sec. 4); margin cross-entropy (offset 0.5, temperature 10)
- ``mnist_1lip.onnx``      1-Lipschitz net (paper 004): AOL dense layers 784-128-128-10 with
  N-activations
- ``mnist_ae_nonneg.onnx`` nonnegative ReLU autoencoder 784 -> 64 -> 784 (W, b >= 0 by
  projection, each layer spectrally normalised to ||W_i||_2 <= 0.995 in the forward pass:
  a "ReLU spectral" net of paper 001's table)
- ``mnist_lip_test.npz``   ``x`` (500, 784) float32 in [0, 1], ``y`` (500,) int64: images
  8000..8499 (held out from training)

Deterministic (seed 0, one thread). Every export is checked against onnxruntime.
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

from certkit.nn import (ABBALinear, AOLLinear, CappedLeakyReLU, Halving, NActivation,  # noqa: E402
                        NonnegLinear, SignedDoubling, export_onnx, project)

MODELS = ROOT / "models"
MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
SEED = 0
N_TRAIN = 8000
N_TEST_FILE = 500
THETA_MAX = 10.0
AE_RADIUS = 0.995


def load_data(mnist: Path = MNIST) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(x_train, y_train, x_test, y_test, source); x flat float32 in [0, 1]."""
    if mnist.exists():
        d = np.load(mnist)
        x = (d["x_test"].reshape(len(d["x_test"]), -1) / 255.0).astype(np.float32)
        y = d["y_test"].astype(np.int64)
        return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], "mnist"
    from sklearn.datasets import load_digits
    dg = load_digits()
    x = (dg.data / 16.0).astype(np.float32)
    y = dg.target.astype(np.int64)
    k = int(0.8 * len(x))
    return x[:k], y[:k], x[k:], y[k:], "digits"


# --------------------------------------------------------------------------- models


def std_net(d: int, h: int = 100) -> nn.Module:
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))


def nonneg_net(d: int, h: int = 100) -> nn.Module:
    return nn.Sequential(NonnegLinear(d, h), nn.ReLU(), NonnegLinear(h, h), nn.ReLU(), NonnegLinear(h, 10))


def abba_net(d: int, h: int = 64) -> nn.Module:
    return nn.Sequential(SignedDoubling(), ABBALinear(d, h), CappedLeakyReLU(0.1, 1.0),
                         ABBALinear(h, h), CappedLeakyReLU(0.1, 1.0), ABBALinear(h, 10), Halving())


def lip1_net(d: int, h: int = 128) -> nn.Module:
    return nn.Sequential(AOLLinear(d, h), NActivation(h), AOLLinear(h, h), NActivation(h), AOLLinear(h, 10))


def autoencoder(d: int, h: int = 64) -> nn.Module:
    return nn.Sequential(NonnegLinear(d, h, nonneg_bias=True, max_norm=AE_RADIUS), nn.ReLU(),
                         NonnegLinear(h, d, nonneg_bias=True, max_norm=AE_RADIUS), nn.ReLU())


# --------------------------------------------------------------------------- constraints


def abba_theta(model: nn.Module) -> torch.Tensor:
    """theta of paper 000, eq. 17: ``||W_{m+1}|| ||S(W_m) ... S(W_1)|| ||W_0||`` with the doubling
    and halving of eq. 9 (``||W_0||_2 ||W_{m+1}||_2 = sqrt 2 / sqrt 2 = 1``), so the spectral norm
    of the product of the sum matrices ``S(W_i) = A_i + B_i`` (formed explicitly: 10 x 784)."""
    prod = None
    for m in model.modules():
        if isinstance(m, ABBALinear):
            s = m.sum_matrix()
            prod = s if prod is None else s @ prod
    return torch.linalg.matrix_norm(prod, ord=2)


def limit_abba(model: nn.Module, iters: int = 20) -> None:
    """Keep theta (eq. 17) <= THETA_MAX: the whole bound is constrained, not each layer (paper 000,
    Sec. 4: "an imposed theta <= theta_max", "a projected Adam optimizer"). An approximate Euclidean
    projection onto {A_i, B_i >= 0, theta <= THETA_MAX}: project onto the linearised constraint
    (a step along -grad theta, which only shrinks the parts of the layers that make up the product's
    top singular direction), clamp to >= 0, repeat. The step is taken in the metric that weighs each
    layer by its squared norm ``||S(W_i)||_2^2`` (a relative change of every layer counts the same), so
    the shrinking is spread over all layers instead of falling on the last one (whose gradient is
    the largest); Adam regrows them in other directions, and the layers' top directions stop being
    aligned (eq. 17 far below eq. 3). A final uniform rescaling by
    (THETA_MAX / theta)^(1/m) (theta is positively homogeneous of degree m) makes the constraint exact.
    The layers' own norms stay free, as in the paper's constrained nets."""
    layers = [m for m in model.modules() if isinstance(m, ABBALinear)]
    params = [t for m in layers for t in (m.A, m.B)]
    for _ in range(iters):
        with torch.enable_grad():
            theta = abba_theta(model)
            if float(theta.detach()) <= THETA_MAX:
                return
            grads = torch.autograd.grad(theta, params)
        with torch.no_grad():
            w = [float(torch.linalg.matrix_norm(m.sum_matrix(), ord=2)) ** 2 for m in layers for _ in (0, 1)]
        sq = sum(wi * float((g * g).sum()) for wi, g in zip(w, grads))
        step = (float(theta.detach()) - THETA_MAX) / max(sq, 1e-30)
        with torch.no_grad():
            for wi, t, g in zip(w, params, grads):
                t.sub_(step * wi * g).clamp_(min=0.0)
    with torch.no_grad():
        theta = float(abba_theta(model))
        if theta > THETA_MAX:
            f = (THETA_MAX / theta) ** (1.0 / len(layers))
            for m in layers:
                m.A.mul_(f)
                m.B.mul_(f)


# --------------------------------------------------------------------------- training


def offset_ce(logits: torch.Tensor, y: torch.Tensor, offset: float = 0.5, temp: float = 8.0) -> torch.Tensor:
    """Cross-entropy with a margin offset, for 1-Lipschitz nets (as paper 004's training)."""
    z = logits - offset * F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(temp * z, y) / temp


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, loss_fn,
          after_step=None, batch: int = 128) -> None:
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
            loss = loss_fn(model(xt[idx]), yt[idx], xt[idx])
            loss.backward()
            opt.step()
            project(model)
            if after_step is not None:
                after_step(model)
        sched.step()
    model.eval()


def ce(out, y, x):
    return F.cross_entropy(out, y)


def ce_1lip(out, y, x):
    return offset_ce(out, y)


def ce_abba(out, y, x):
    """Margin cross-entropy for the theta-constrained ABBA net: its logits are small (theta <= 10),
    so plain cross-entropy never pushes the margins up."""
    return offset_ce(out, y, offset=0.5, temp=10.0)


def mse(out, y, x):
    return F.mse_loss(out, x)


def ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


# name -> (builder, epochs, lr, loss, after_step, output name)
SPECS = {
    "mnist_std": (std_net, 15, 2e-3, ce, None, "logits"),
    "mnist_nonneg": (nonneg_net, 25, 2e-3, ce, None, "logits"),
    "mnist_abba": (abba_net, 40, 2e-3, ce_abba, limit_abba, "logits"),
    "mnist_1lip": (lip1_net, 25, 5e-3, ce_1lip, None, "logits"),
    "mnist_ae_nonneg": (autoencoder, 20, 3e-3, mse, None, "output"),
}


def build(name: str, data, out_dir: Path = MODELS) -> str:
    x_tr, y_tr, x_te, y_te, _ = data
    builder, epochs, lr, loss, after, out_name = SPECS[name]
    torch.manual_seed(SEED)
    model = builder(x_tr.shape[1])
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, epochs, lr, loss, after)
    path = out_dir / f"{name}.onnx"
    export_onnx(model, path, (1, x_tr.shape[1]), output_name=out_name)
    out = ort_outputs(path, x_te)
    with torch.no_grad():
        ref = model(torch.from_numpy(x_te)).numpy()
    diff = float(np.abs(out - ref).max())
    if out_name == "logits":
        figure = f"test acc {float((out.argmax(1) == y_te).mean()) * 100:.2f} %"
    else:
        figure = f"test MSE {float(((out - x_te) ** 2).mean()):.4f}"
    line = (f"{name}.onnx: {figure}, {sum(p.numel() for p in model.parameters())} params, "
            f"{os.path.getsize(path) / 1024:.0f} KB, {epochs} epochs in {time.perf_counter() - t0:.0f} s, "
            f"ort-vs-torch {diff:.1e}")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(SPECS), help="build only these models")
    ap.add_argument("--out", type=Path, default=MODELS, help="output folder (default: models/)")
    ap.add_argument("--mnist", type=Path, default=MNIST, help="mnist.npz (sklearn digits when absent)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(exist_ok=True)
    data = load_data(args.mnist)
    x_te, y_te = data[2], data[3]
    print(f"data: {data[4]}, train {len(data[0])}, test {len(x_te)}")
    np.savez_compressed(args.out / "mnist_lip_test.npz", x=x_te[:N_TEST_FILE], y=y_te[:N_TEST_FILE])
    for name in args.only or SPECS:
        build(name, data, args.out)


if __name__ == "__main__":
    main()
