"""Paper 001's autoencoder table on our own MNIST autoencoders: rho(T_inf), ||W1|| ||W2||,
||W2 W1|| and the least fixed point, with the paper's figures beside for reference.

    python benchmarks/fixedpoint_table.py          # ~1-2 min on one CPU thread

Rows: the shipped ``models/mnist_ae_nonneg.onnx`` (ReLU, W, b >= 0, per-layer spectral
norm <= 0.995: paper 001's "ReLU spectral" kind) and three autoencoders 784 -> 64 -> 784
trained here for a few epochs on the same split (``scripts/train_lipschitz_models.py``):
ReLU with W, b >= 0 and free norms, sigmoid with W >= 0, tanh with W, b >= 0. Every figure
comes from ``certkit.fixedpoint.analyse`` on the exported ONNX file (rho as a Collatz-Wielandt
interval, the norms from float64 SVDs), and the fixed point is re-checked: T(x) = x to 1e-8.
The paper's nets (trained on all of MNIST, other widths) differ from ours: compare the
orderings, not the values: prod ||W_i|| >= ||W2 W1|| >= rho(T_inf), rho = 0 for bounded
activations, rho < 1 and a fixed point for the spectral ReLU net.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import train_lipschitz_models as tlm  # noqa: E402

from certkit.fixedpoint import analyse  # noqa: E402
from certkit.nn import NonnegLinear, export_onnx  # noqa: E402
from certkit.onnx.importer import load_onnx  # noqa: E402

#: paper 001, table "Performance results" (configuration: test loss, rho, ||W1|| ||W2||, ||W2 W1||)
PAPER = {
    "Sigmoid NN": (0.2308, 0.00, 7.271, 6.052),
    "Tanh NN": (0.0065, 0.00, 463.9, 187.3),
    "Tanh PN": (0.0255, 0.00, 40.63, 35.85),
    "ReLU spectral NN": (0.0063, 0.98, 1.072, 0.999),
    "ReLU spectral PN": (0.0059, 0.99, 1.0006, 1.0001),
}


def _ae(act: type[nn.Module], nonneg_bias: bool) -> nn.Module:
    return nn.Sequential(NonnegLinear(784, 64, nonneg_bias=nonneg_bias), act(),
                         NonnegLinear(64, 784, nonneg_bias=nonneg_bias), act())


def _row(name: str, path: Path, x_te: np.ndarray, paper: str) -> None:
    g = load_onnx(path)
    t0 = time.perf_counter()
    rep = analyse(g, str(path))
    mse = float(((g(x_te.astype(np.float64)) - x_te) ** 2).mean())
    rho = "n/a" if rep.rho_upper is None else f"[{rep.rho_lower:.4g}, {rep.rho_upper:.4g}]"
    fp = "none"
    if rep.fixed_point is not None and rep.converged:
        x = torch.tensor(rep.fixed_point, dtype=torch.float64)[None]
        res = float((g.forward(x) - x).abs().max())
        fp = f"{rep.iterations} it, |T(x)-x| {res:.1e}, |x|_1 {float(x.abs().sum()):.3g}"
    ref = PAPER.get(paper)
    ref_s = "" if ref is None else f"  | paper '{paper}': loss {ref[0]}, rho {ref[1]}, {ref[2]}, {ref[3]}"
    print(f"{name:<34} {mse:8.4f} {rho:>22} {rep.norm_product:10.4g} {rep.product_norm:10.4g}  "
          f"mono {int(rep.monotone)} weak {int(rep.weakly_scalable)} scal {int(rep.scalable)}  {fp} "
          f"({time.perf_counter() - t0:.1f} s){ref_s}", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te, src = tlm.load_data()
    print(f"data: {src}; test MSE on {len(x_te)} held-out images")
    print(f"{'autoencoder':<34} {'MSE':>8} {'rho(T_inf)':>22} {'|W1||W2|':>10} {'|W2 W1|':>10}")
    _row("ReLU spectral, W,b>=0 (shipped)", ROOT / "models" / "mnist_ae_nonneg.onnx", x_te, "ReLU spectral PN")
    configs = [("ReLU, W,b>=0, free norms", nn.ReLU, True, None),
               ("Sigmoid, W>=0", nn.Sigmoid, False, "Sigmoid NN"),
               ("Tanh, W,b>=0", nn.Tanh, True, "Tanh PN")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, act, nb, paper in configs:
            torch.manual_seed(tlm.SEED)
            m = _ae(act, nb)
            tlm.train(m, x_tr, y_tr, 10, 2e-3, tlm.mse)
            path = export_onnx(m, Path(tmp) / "ae.onnx", (1, 784), output_name="output")
            _row(name, path, x_te, paper)


if __name__ == "__main__":
    main()
