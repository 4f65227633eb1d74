"""ReLU-splitting branch and bound on its own: verdicts, domains and time per instance, for
configurations side by side (the figures behind ReluSplitConfig's defaults).

Usage: python benchmarks/relu_split.py [--budget 30] [--count 6] [--configs default,milp-leaves,refined]
                                       [--threads 1] [--only eran|mnistfc|paper002|oval21]

Each cell: verdict, domains bounded, MILP leaves closed / tried (when any), seconds. ``refined``:
the search of :mod:`certkit.verify.relu_refine` (every domain's intermediate bounds re-optimised);
``portfolio``: what ``certkit certify`` runs (:func:`certkit.verify.procedures.relu_portfolio`).

Instances: the shared mnistfc ones that bounds alone leave open, ERAN 2021's mnist_relu_9_200
instances that alpha-beta-CROWN needed more than 120 s for (263-293 s; VeriNet 10-48 s on three),
and robustness properties of paper 002's 5x100 and 8x100 nets on MNIST test images 200.. that
alpha-CROWN does not prove and PGD does not break (delta 0.015 and 0.012); with ``--only oval21`` (not in
the default run: its searches take minutes), three wild oval21 instances that need ReLU splitting (cifar_base_kw
img876, proved in about 10 s; cifar_wide_kw img3458 and cifar_deep_kw img9931, open at 100 s: their domain
counts show how far a search gets). One thread unless ``--threads``.
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
from certkit.spec.sets import InputSet  # noqa: E402
from certkit.spec.spec import Disjunct, Property  # noqa: E402
from certkit.spec.vnnlib import parse_vnnlib  # noqa: E402
from certkit.verify.certify import prove_rows  # noqa: E402
from certkit.verify.falsify import attack  # noqa: E402
from certkit.verify.procedures import relu_portfolio  # noqa: E402
from certkit.verify.relu_refine import RefineConfig, refine_split  # noqa: E402
from certkit.verify.relu_split import ReluSplitConfig, relu_split  # noqa: E402
from certkit.verify.query import Budget, Query  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
CONFIGS = {"default": ReluSplitConfig(), "milp-leaves": ReluSplitConfig(milp_leaves=True),
           "refine": ReluSplitConfig(refine_intermediate=True), "refined": RefineConfig(),
           "portfolio": None}
MNISTFC = [("mnistfc_2021", "prop_1_0.03"), ("mnistfc_2021", "prop_9_0.05"), ("mnistfc_2021", "prop_0_0.03"),
           ("mnistfc_2022", "prop_10_0.05"), ("mnistfc_2021", "prop_5_0.03")]
ERAN = ["1385", "2697", "2954", "5520"]
OVAL21 = [("cifar_base_kw", "img876-eps0.024836601307189544"), ("cifar_wide_kw", "img3458-eps0.022875816993464054"),
          ("cifar_deep_kw", "img9931-eps0.02496732026143791")]


def _open_images(model, eps: float, count: int):
    d = np.load(os.path.join(SHARED, "data", "mnist.npz"))
    X, Y = d["x_test"].reshape(len(d["x_test"]), -1) / 255.0, d["y_test"]
    for i in range(200, 400):
        x, y = X[i], int(Y[i])
        if model.graph(x[None]).argmax() != y:
            continue
        lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
        prop = Property(lo, hi, tuple(Disjunct((np.eye(10)[y] - np.eye(10)[j])[None], np.zeros(1))
                                      for j in range(10) if j != y))
        if prove_rows(model, prop, "alpha")[2].all():
            continue
        C, dd, own = prop.stacked()
        if attack(model.graph, InputSet.box(lo, hi), torch.as_tensor(C), torch.as_tensor(dd), own)[1][0] <= 0:
            continue
        yield f"image {i}", prop
        count -= 1
        if count == 0:
            return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=30.0, help="seconds per instance and configuration")
    ap.add_argument("--count", type=int, default=6, help="open images per paper-002 net")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=("mnistfc", "eran", "paper002", "oval21"), help="one group of instances")
    a = ap.parse_args()
    configs = {c: CONFIGS[c] for c in a.configs.split(",")}
    torch.set_num_threads(a.threads)
    cases = []
    for bench, name in MNISTFC if a.only in (None, "mnistfc") else ():
        base = os.path.join(SHARED, "benchmarks", bench)
        if os.path.exists(base):
            m = load_model(os.path.join(base, "onnx", "mnist-net_256x2.onnx"))
            spec = parse_vnnlib(os.path.join(base, "vnnlib", name + ".vnnlib"), m.n_inputs, m.n_outputs)
            cases.append((f"{bench} 256x2", name, m, spec.properties[0]))
    eran = os.path.join(SHARED, "benchmarks", "eran_2021")
    if os.path.exists(eran) and a.only in (None, "eran"):
        m = load_model(os.path.join(eran, "onnx", "mnist_relu_9_200.onnx"))
        for idx in ERAN:
            spec = parse_vnnlib(os.path.join(eran, "vnnlib", f"mnist_spec_idx_{idx}_eps_0.01500.vnnlib"),
                                m.n_inputs, m.n_outputs)
            cases.append(("ERAN 9x200", idx, m, spec.properties[0]))
    oval = os.path.join(SHARED, "benchmarks", "wild", "oval21")
    for net, name in OVAL21 if a.only == "oval21" and os.path.exists(oval) else ():
        m = load_model(os.path.join(oval, "onnx", net + ".onnx"))
        spec = parse_vnnlib(os.path.join(oval, "vnnlib", f"{net}-{name}.vnnlib"), m.n_inputs, m.n_outputs)
        cases.append((f"oval21 {net}", name.split("-")[0], m, spec.properties[0]))
    for net, eps in (("5_100", 0.015), ("8_100", 0.012)) if a.only in (None, "paper002") else ():
        path = os.path.join(SHARED, "data", "vnn_models", f"mnist_relu_{net}.onnx")
        if os.path.exists(path):
            m = load_model(path)
            cases += [(f"paper 002 {net} d={eps}", name, m, p) for name, p in _open_images(m, eps, a.count)]
    if not cases:
        sys.exit("../shared is absent: nothing to run")
    print(f"{'net':<24}{'instance':<14}" + "".join(f"{c:>28}" for c in configs))
    totals = {c: [0, 0.0] for c in configs}
    for net, name, m, prop in cases:
        cells = []
        for c, cfg in configs.items():
            t = time.monotonic()
            query = Query.of_property(m.graph, prop, 0, m.runner)
            if cfg is None:  # what certify runs: beta-CROWN's search, then the refined one on deep MLPs
                r = relu_portfolio(query, Budget.of(a.budget))
            elif isinstance(cfg, RefineConfig):
                r = refine_split(query, Budget.of(a.budget), cfg)
            else:
                r = relu_split(query, Budget.of(a.budget), cfg)
            dt = time.monotonic() - t
            totals[c][0] += r.status in ("verified", "falsified")
            totals[c][1] += dt
            milp = f" {r.milp_closed}/{r.milp_tried}" if getattr(r, "milp_tried", 0) else ""
            cells.append(f"{r.status:>10} {r.domains:>7}{milp} {dt:6.1f} s")
        print(f"{net:<24}{name:<14}" + "".join(f"{x:>28}" for x in cells), flush=True)
    print(f"{'decided / total time':<38}" + "".join(f"{f'{n} of {len(cases)}, {t:.0f} s':>28}"
                                                   for n, t in totals.values()))


if __name__ == "__main__":
    main()
