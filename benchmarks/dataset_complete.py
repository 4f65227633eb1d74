"""Data-set mode with complete procedures per sample: ``--backend bab`` (and ``auto``) against ``alpha``.

Usage: python benchmarks/dataset_complete.py [--timeout 1] [--eps-digits 0.06] [--eps-mnist 0.02]
                                             [--backends alpha,bab,auto] [--count 200]

On the shipped digits models (models/digits_fc.onnx, digits_conv.onnx with their test sets) and on
paper 002's MNIST nets (../shared/data, MNIST test images 201-400), L_inf balls clipped to [0, 1]:
per backend the verified / falsified / timeout / unknown counts and the time, with ``--timeout`` seconds
per sample for the complete procedures. Every falsified sample's counterexample is re-run with
onnxruntime here (it must change the prediction and lie in the ball).
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
from certkit.verify.dataset import certify_dataset, load_dataset  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))


def cases(a):
    for name, data in (("digits_fc", "digits_test.npz"), ("digits_conv", "digits_test_conv.npz")):
        m = load_model(os.path.join(ROOT, "models", f"{name}.onnx"))
        x, y = load_dataset(os.path.join(ROOT, "models", data), m)
        yield name, m, x[:a.count], y[:a.count], a.eps_digits
    if os.path.isdir(SHARED):
        d = np.load(os.path.join(SHARED, "mnist.npz"))
        x = d["x_test"][200:200 + a.count].reshape(-1, 784).astype(np.float64) / 255.0
        y = d["y_test"][200:200 + a.count].astype(np.int64)
        for net in ("2_50", "2_100", "5_100", "8_100"):
            yield f"mnist_relu_{net}", load_model(os.path.join(SHARED, "vnn_models", f"mnist_relu_{net}.onnx")), \
                x, y, a.eps_mnist
    else:
        print(f"{SHARED} is absent: paper 002's nets skipped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds per sample (complete procedures)")
    ap.add_argument("--eps-digits", type=float, default=0.06)
    ap.add_argument("--eps-mnist", type=float, default=0.02)
    ap.add_argument("--backends", default="alpha,bab")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--filter", default="", help="only the models whose name contains this")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':<18}{'eps':>6}{'backend':>9}{'verified':>9}{'falsified':>10}{'timeout':>8}{'unknown':>8}"
          f"{'time s':>8}  witnesses re-run")
    for name, m, x, y, eps in cases(a):
        if a.filter not in name:
            continue
        for b in a.backends.split(","):
            t = time.perf_counter()
            r = certify_dataset(m, x, y, eps, "linf", (0.0, 1.0), b, timeout=a.timeout, seed=0)
            dt = time.perf_counter() - t
            c = {v: sum(s.verdict == v for s in r.samples) for v in ("verified", "falsified", "timeout", "unknown")}
            ok = 0
            for s in r.samples:
                if s.verdict == "falsified":
                    w = s.witness.astype(np.float64)
                    inside = np.abs(w - x[s.index]).max() <= eps and w.min() >= 0 and w.max() <= 1
                    ok += bool(inside and m.runner(s.witness[None]).argmax() != y[s.index])
            print(f"{name:<18}{eps:>6g}{b:>9}{c['verified']:>9}{c['falsified']:>10}{c['timeout']:>8}"
                  f"{c['unknown']:>8}{dt:>8.1f}  {ok}/{c['falsified']} valid", flush=True)


if __name__ == "__main__":
    main()
