"""Data-set certification of paper 002's MNIST nets (DeepPoly, L_inf, delta = 0.02).

Usage: python benchmarks/dataset_vnn.py [--eps 0.02] [--batch-size 50]

MNIST test images 201-400 (0-based slice [200:400]), pixels in [0, 1], the L_inf
ball clipped to [0, 1]. Prints verified counts and time beside auto_LiRPA's CROWN
(issue 2: 155, 130, 79, 68 of 200, each in about 1 to 8 s one image at a time).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from certkit.model import load_model  # noqa: E402
from certkit.verify.dataset import certify_dataset  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
AUTO_LIRPA = {"2_50": 155, "2_100": 130, "5_100": 79, "8_100": 68}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--backend", default="deeppoly")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if not os.path.isdir(SHARED):
        sys.exit(f"{SHARED} not found: this benchmark needs the shared data folder")
    d = np.load(os.path.join(SHARED, "mnist.npz"))
    x = d["x_test"][200:400].reshape(-1, 784).astype(np.float64) / 255.0
    y = d["y_test"][200:400].astype(np.int64)
    print(f"{'net':<8}{'verified':>9}{'falsified':>10}{'misclass.':>10}{'time s':>8}{'ms/image':>9}"
          f"{'auto_LiRPA':>11}")
    for net, ref in AUTO_LIRPA.items():
        model = load_model(os.path.join(SHARED, "vnn_models", f"mnist_relu_{net}.onnx"))
        t = time.perf_counter()
        r = certify_dataset(model, x, y, a.eps, "linf", (0.0, 1.0), a.backend, a.batch_size)
        dt = time.perf_counter() - t
        fals = sum(s.verdict == "falsified" for s in r.samples)
        mis = sum(s.verdict == "misclassified" for s in r.samples)
        print(f"{net:<8}{r.certified:>9}{fals:>10}{mis:>10}{dt:>8.2f}{1000 * dt / len(x):>9.1f}"
              f"{(ref if a.eps == 0.02 and a.backend == 'deeppoly' else '-'):>11}")


if __name__ == "__main__":
    main()
