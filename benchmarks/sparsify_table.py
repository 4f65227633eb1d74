"""Paper 002's MNIST nets sparsified by ``certkit sparsify`` (eps = 0) and certified with DeepPoly.

Usage: python benchmarks/sparsify_table.py [--nets 2_50,2_100,5_100,8_100] [--deltas 0.02]
           (also 5_200, 8_200)
           [--eps-mode relative|additive] [--eps 0] [--threads 2] [--solver highs] [--mbp]

Validation: paper 002's 200 images (../shared/data/vnn_models/mnist_validation.csv = MNIST test
images 1..200, 0-based); test: MNIST test images [200:400] (pixels / 255, L_inf balls clipped
to [0, 1]). Per net: validation predictions kept, test accuracy before/after, non-zeros,
sparsification time and where it went, and verified % (certkit DeepPoly) of the original and
the sparsified net at each delta beside paper 002's Table 1 (ERAN DeepPoly: its "Org" nets
were weaker ERAN nets, so compare the VNN columns). ``--mbp`` adds magnitude-based pruning
to the VNN's sparsity (the paper's baseline). Nothing is written to the repository.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from certkit.model import load_model  # noqa: E402
from certkit.sparsify import LpOptions, SolverOptions, export_onnx, prune, sparsify  # noqa: E402
from certkit.verify.dataset import certify_dataset  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
DELTAS = (0.01, 0.02, 0.03, 0.05, 0.07)
#: paper 002, Table 1, ERAN (DeepPoly): verified % of its original nets and of the VNNs (eps = 0)
PAPER_ORG = {"2_50": (90.5, 68.5, 22.5, 1, 0.5), "2_100": (85, 33.5, 3.5, 0, 0),
             "5_100": (75.5, 13.5, 0.5, 0, 0), "8_100": (67, 17.5, 0.5, 0, 0),
             "5_200": (27, 0.5, 0, 0, 0), "8_200": (22.5, 0.5, 0, 0, 0)}
PAPER_VNN = {"2_50": (92.5, 85.5, 75.5, 32, 9.5), "2_100": (92.5, 85, 70, 16.5, 2),
             "5_100": (92, 74.5, 38, 2, 0), "8_100": (85, 60.5, 28, 3.5, 0),
             "5_200": (84, 29.5, 4.5, 0, 0), "8_200": (80, 22, 3, 0.5, 0)}
#: paper 002, section 3.5.1: sparsification time (s) with Gurobi on an 8-core laptop
PAPER_TIME = {"2_50": 40, "2_100": 101, "5_100": 147, "8_100": 195, "5_200": 463, "8_200": 618}


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    csv = np.loadtxt(os.path.join(SHARED, "vnn_models", "mnist_validation.csv"), delimiter=",")
    xv, yv = csv[:, 1:] / 255.0, csv[:, 0].astype(np.int64)
    d = np.load(os.path.join(SHARED, "mnist.npz"))
    xt = d["x_test"][200:400].reshape(-1, 784).astype(np.float64) / 255.0
    yt = d["y_test"][200:400].astype(np.int64)
    return xv, yv, xt, yt


def verified(model, x, y, delta) -> tuple[float, float]:
    t = time.perf_counter()
    r = certify_dataset(model, x, y, delta, "linf", (0.0, 1.0), "deeppoly", 50)
    return 100.0 * r.certified / len(y), (time.perf_counter() - t) / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="2_50,2_100,5_100,8_100")
    ap.add_argument("--deltas", default="0.02")
    ap.add_argument("--eps", type=float, default=0.0)
    ap.add_argument("--eps-mode", default="relative")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--solver", default="highs")
    ap.add_argument("--mbp", action="store_true", help="also magnitude-based pruning to the VNN's sparsity")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if not os.path.isdir(SHARED):
        sys.exit(f"{SHARED} not found: this benchmark needs the shared data folder")
    xv, yv, xt, yt = data()
    deltas = [float(t) for t in a.deltas.split(",")]
    tmp = tempfile.mkdtemp(prefix="certkit_sparsify_")
    rows = []
    for net in a.nets.split(","):
        orig = load_model(os.path.join(SHARED, "vnn_models", f"mnist_relu_{net}.onnx"))
        t0 = time.perf_counter()
        r = sparsify(orig.graph, xv, yv, "all", LpOptions(a.eps, a.eps_mode),
                     SolverOptions(a.solver, threads=a.threads), (xt, yt))
        t_sp = time.perf_counter() - t0
        path = os.path.join(tmp, f"vnn_{net}.onnx")
        export_onnx(r.graph, path)
        new = load_model(path)
        same_val = int((new.runner(xv.astype(np.float32)).argmax(1) == orig.runner(xv.astype(np.float32)).argmax(1)).sum())
        nb, na = sum(L.nnz_before for L in r.layers), sum(L.nnz_after for L in r.layers)
        t_solve = sum(L.t_solve for L in r.layers)
        print(f"\n== {net}: {nb} -> {na} non-zeros ({100 * na / nb:.1f}%), sparsified in {t_sp:.1f} s "
              f"(paper: {PAPER_TIME.get(net, '-')} s with Gurobi, 8 cores); LP solves {t_solve:.1f} s summed over "
              f"{a.threads} process(es), layer 1 {r.layers[0].t_wall:.1f} s wall")
        print(f"   validation: predictions of the correctly classified kept {r.check.predictions_kept}/"
              f"{r.check.samples}, ReLU states changed {r.check.state_violations}, onnxruntime same prediction "
              f"as the original on {same_val}/200; accuracy val {100 * r.acc_val[0]:.1f} -> {100 * r.acc_val[1]:.1f}, "
              f"test {100 * r.acc_test[0]:.1f} -> {100 * r.acc_test[1]:.1f}")
        models = [("orig", orig), ("VNN", new)]
        if a.mbp:
            sparsity = 1 - na / nb
            m = prune(orig.graph, xv, yv, sparsity, "all", (xt, yt))
            p2 = os.path.join(tmp, f"mbp_{net}.onnx")
            export_onnx(m.graph, p2)
            models.append(("MBP", load_model(p2)))
            print(f"   MBP to {100 * sparsity:.1f}% zeros: test accuracy {100 * m.acc_test[1]:.1f}")
        print(f"   {'delta':>6}" + "".join(f"{k + ' %':>9}{'s/img':>7}" for k, _ in models)
              + f"{'paper Org':>10}{'paper VNN':>10}")
        for d in deltas:
            cells = [verified(m, xt, yt, d) for _, m in models]
            k = DELTAS.index(d) if d in DELTAS else None
            po = PAPER_ORG.get(net, ())[k] if k is not None and net in PAPER_ORG else "-"
            pv = PAPER_VNN.get(net, ())[k] if k is not None and net in PAPER_VNN else "-"
            print(f"   {d:>6g}" + "".join(f"{v:>9.1f}{t:>7.3f}" for v, t in cells) + f"{po:>10}{pv:>10}")
            rows.append((net, d, cells))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
