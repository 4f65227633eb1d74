"""Paper 000's Table 1 on our own MNIST nets: accuracy, a lower bound, the separable bound
(eq. 3) and the nonnegative / ABBA bound (Prop. 2.1, eqs. 17/19), L_2.

    python benchmarks/lipschitz_table.py [--models models] [--samples 64]

The models are those of ``scripts/train_lipschitz_models.py`` (``models/mnist_*.onnx``,
test set ``models/mnist_lip_test.npz``); missing ones are skipped. Columns:

* ``lower``: the largest difference quotient found (sampling + gradient ascent, eq. 4),
  started from random points and from the test images;
* ``separable``: eq. 3, the product of the layers' norms (a layer = one weight op, the
  ABBA doubling and halving included); ``blockwise``: the same product with all linear
  ops between two activations merged first;
* ``signed``: || |W_m| ... |W_1| ||;
* ``nonneg/ABBA``: Prop. 2.1 for nonnegative nets, eq. 17 for ABBA nets;
* ``sep / struct``: separable (eq. 3, per layer) over nonneg/ABBA: how much the structure gains;
* ``auto``: the smallest sound upper bound (and its method).

In paper 000's Table 1, the underlined theta of the dense part is the structural bound (the norm
of the product: Prop. 2.1, eq. 17) and the barred one the product of the layers' norms (eq. 3),
e.g. DermaMNIST ABBA theta <= 10: 10.01 vs 306.69 (the global bound is checked against
theta_max with the underlined dense value). Our ``nonneg / ABBA`` and ``separable`` columns are
these two quantities.

Every upper bound must be >= the lower bound; the script says so if one is not.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mnist_std", "mnist_nonneg", "mnist_abba", "mnist_1lip", "mnist_ae_nonneg")

#: Paper 000, Table 1 (MedMNIST, 64x64): accuracy, dense-part structural bound (underlined
#: theta: norm of the product, eq. 17), dense-part separable bound (barred theta: product of
#: norms, eq. 3), global bound theta.
PAPER = [
    ("BloodMNIST 2C1F standard arbitrary", 93.80, "-", 23.35, 215.08),
    ("BloodMNIST 2C1F standard nonneg", 84.27, 16.84, 17.66, 258.40),
    ("BloodMNIST 2C1F ABBA unconstrained", 93.77, 70.46, 71.83, 5.80e3),
    ("BloodMNIST 2C1F ABBA theta<=100", 93.42, 47.08, 55.22, 90.07),
    ("BloodMNIST 2C1F ABBA theta<=10", 90.06, 4.99, 33.06, 10.01),
    ("PneumoniaMNIST 3C3F ABBA theta<=10", 87.82, 6.23, 21.71, 9.12),
    ("DermaMNIST 2C2F ABBA theta<=10", 71.77, 10.01, 306.69, 8.76),
]


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--samples", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from certkit.lipschitz import lipschitz_bounds
    from certkit.model import load_model

    mdir = Path(a.models)
    data = mdir / "mnist_lip_test.npz"
    x = y = None
    if data.exists():
        d = np.load(data)
        x, y = d["x"].reshape(len(d["x"]), -1).astype(np.float64), d["y"]
    rows, bad = [], []
    for name in MODELS:
        path = mdir / f"{name}.onnx"
        if not path.exists():
            print(f"skipped {name}: {path} not found (scripts/train_lipschitz_models.py builds it)")
            continue
        model = load_model(path)
        acc = "-"
        if x is not None and model.n_outputs == 10:
            acc = 100.0 * float((model.runner(x.astype(np.float32)).argmax(1) == y).mean())
        t = time.monotonic()
        r = lipschitz_bounds(model, 2, "auto", samples=a.samples, data=None if x is None else x[:32],
                             lower_time=30.0)
        dt = time.monotonic() - t
        m = r.methods
        sep = m.get("separable")
        struct = m.get("nonneg") or m.get("abba")
        rows.append((name, acc, r.lower, sep.details["per_layer"] if sep else None,
                     sep.details["blockwise"] if sep else None, m["signed"].upper if "signed" in m else None,
                     (struct.method + " " + fmt(struct.upper)) if struct else "-",
                     f"{sep.details['per_layer'] / struct.upper:.3f}" if struct and sep else "-",
                     f"{fmt(r.upper)} ({r.method_upper})", dt))
        for k, mr in m.items():
            if mr.upper < r.lower:
                bad.append(f"{name}: {k} upper {mr.upper} < lower {r.lower}")
    head = ("model", "acc %", "lower", "separable (eq. 3)", "blockwise", "signed", "nonneg / ABBA",
            "sep / struct", "auto (method)", "time s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r_ in rows:
        print("| " + " | ".join(fmt(v) if not isinstance(v, float) or i != 9 else f"{v:.1f}"
                                for i, v in enumerate(r_)) + " |")
    print()
    print("Reference, paper 000 Table 1 (dense part of MedMNIST nets): "
          "acc %, structural theta_dense (eq. 17, underlined), separable theta_dense (eq. 3, barred), global bound")
    for p in PAPER:
        print("  " + " | ".join(fmt(v) for v in p))
    print()
    print("every upper bound >= lower bound:", "yes" if not bad else "NO")
    for b in bad:
        print("  " + b)


if __name__ == "__main__":
    main()
