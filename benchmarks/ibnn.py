"""Implicit-bias nets (paper 003) against their standard twins: certified and attacked accuracy on MNIST.

    python benchmarks/ibnn.py [--n 200] [--quick] [--json OUT]

Paper 003 claims IBNNs are more robust, with PGD experiments only; this puts the claim to a certified
test. For ``models/{ibnn,std}_{dense,conv}.onnx`` (``scripts/train_ibnn.py``: trained on images 0..7999
of ``../shared/data/mnist.npz``, same architecture and parameter count within each pair) on the first
``N`` test images from index 8000 (pixels / 255 in [0, 1]; every ball clipped to [0, 1]) it prints, per
radius, in % of the N samples:

- ``DP``: certified accuracy with ``backend deeppoly`` (L_inf: a box; L_2: the ball is concretised by
  its dual norm at the input, :meth:`certkit.spec.sets.InputSet.concretize_lower`);
- ``Lip``: certified accuracy with ``backend lipschitz`` (Lipschitz margins, :mod:`certkit.lipschitz.margin`);
- ``PGD``: samples correctly classified and not broken by certkit's falsifier
  (:func:`certkit.verify.falsify.attack`: margin objective ``min_j f_y - f_j``, random samples, then
  sign-gradient (L_inf) or normalised-gradient (L_2) PGD restarts cycling through step sizes 5, 1, 1/5
  times ``step_size`` with decay, projected onto the ball and [0, 1]); a sample is broken when
  :meth:`certkit.verify.query.Query.confirm` accepts the point (rounded to float32 inside the ball,
  run with onnxruntime) and onnxruntime's argmax differs from the label. An upper bound on robust
  accuracy. A point broken at one radius is in every larger ball of the same norm, so the radii run
  in ascending order and the samples broken already are not attacked again.

``check`` per row: the samples certified by either method that some confirmed counterexample (PGD's,
or one of the certification runs') breaks; it must be 0, else the script names them and exits 1
(a soundness bug). The IBNN layers' IR forward (K = 48 pairwise-tanh steps) costs 10^3-10^4 times the
standard nets' per point, which sets the attack budget (``--samples/--restarts/--steps``; the same for
every model). Exit status: 0, or 1 on a soundness failure; the data file absent: a message and 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
MNIST = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "mnist.npz"))
MODELS = os.path.join(ROOT, "models")
FIRST = 8000  # scripts/train_ibnn.py trains on 0..7999
#: architecture -> (IBNN, standard twin), printed side by side
PAIRS = {"dense": ("ibnn_dense", "std_dense"), "conv": ("ibnn_conv", "std_conv")}
RADII = {"linf": (0.005, 0.01, 0.02, 0.03), "l2": (0.1, 0.25, 0.5, 1.0)}
QUICK_RADII = {"linf": (0.01,), "l2": (0.5,)}
DOMAIN = (0.0, 1.0)
METHODS = ("deeppoly", "lipschitz")


def load_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(MNIST)
    x = d["x_test"][FIRST:FIRST + n].reshape(-1, 784).astype(np.float64) / 255.0
    return x, d["y_test"][FIRST:FIRST + n].astype(np.int64)


def certify(model, x, y, eps: float, norm: str, backend: str):
    """(verified, falsified) masks over all samples of one certification run. Its own attack is
    reduced to two points (the centre and one more): the PGD column runs separately, on every sample."""
    from certkit.verify.dataset import certify_dataset
    from certkit.verify.falsify import AttackConfig

    r = certify_dataset(model, x, y, eps, norm, DOMAIN, backend, attack_cfg=AttackConfig(2, 0, 0))
    verdicts = np.array([s.verdict for s in r.samples])
    return verdicts == "verified", verdicts == "falsified"


def pgd_broken(model, x, y, eps: float, norm: str, idx: np.ndarray, cfg, seed: int,
               batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(broken, spec_violated) over ``idx``: certkit's falsifier on each ball, the best point confirmed
    with onnxruntime (:func:`certkit.verify.procedures.attack_queries`). ``spec_violated``: a confirmed
    point (some f_j >= f_y); ``broken``: besides, onnxruntime's argmax is not the label (ties excluded)."""
    from certkit.verify.dataset import NORMS
    from certkit.verify.procedures import attack_queries
    from certkit.verify.query import Budget, Query

    g, run = model.graph, (lambda z: model.runner(z))
    broken, violated = np.zeros(len(idx), bool), np.zeros(len(idx), bool)
    for s in range(0, len(idx), batch):
        ks = idx[s:s + batch]
        qs = [Query.robustness(g, x[k], int(y[k]), eps, NORMS[norm], DOMAIN, run, int(k)) for k in ks]
        for pos, w in attack_queries(qs, cfg, Budget(), seed + s).items():
            violated[s + pos] = True
            broken[s + pos] = int(np.argmax(w.y)) != int(y[ks[pos]])
    return broken, violated


def run_model(name: str, x, y, radii: dict, cfg) -> dict:
    """Every figure of one model: clean accuracy, and per (norm, eps) the certified, attacked and
    contradicted samples."""
    from certkit.model import load_model

    t0 = time.monotonic()
    model = load_model(os.path.join(MODELS, f"{name}.onnx"))
    correct = model.runner(x).argmax(axis=1) == y
    out = {"model": name, "clean": int(correct.sum()), "rows": []}
    for norm, eps_list in radii.items():
        broken = np.zeros(len(y), bool)  # by a confirmed point at this or a smaller radius (nested balls)
        for r, eps in enumerate(eps_list):
            t = time.monotonic()
            (dp, dp_f), (lip, lip_f) = (certify(model, x, y, eps, norm, m) for m in METHODS)
            todo = np.nonzero(correct & ~broken)[0]
            b, v = pgd_broken(model, x, y, eps, norm, todo, cfg, seed=1000 * r)
            broken[todo[b]] = True
            refuted = np.zeros(len(y), bool)
            refuted[todo[v]] = True
            refuted |= broken | dp_f | lip_f
            bad = np.nonzero((dp | lip) & refuted)[0]
            out["rows"].append({"norm": norm, "eps": eps, "deeppoly": int(dp.sum()), "lipschitz": int(lip.sum()),
                                "pgd": int((correct & ~broken).sum()), "certified_either": int((dp | lip).sum()),
                                "unsound": [int(FIRST + k) for k in bad], "seconds": round(time.monotonic() - t, 2)})
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:5.1f}"


def print_pair(arch: str, a: dict, b: dict, n: int) -> None:
    """One table: the IBNN (``a``) and its standard twin (``b``) side by side, row by row."""
    print(f"\n### {arch}: {a['model']} vs {b['model']}  (N = {n}; % of N)")
    print(f"clean accuracy: {a['model']} {pct(a['clean'], n)}   {b['model']} {pct(b['clean'], n)}")
    print("| norm | eps | IBNN DP | IBNN Lip | IBNN PGD | std DP | std Lip | std PGD | check IBNN/std |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ra, rb in zip(a["rows"], b["rows"]):
        check = f"{len(ra['unsound'])}/{len(rb['unsound'])}"
        if ra["unsound"] or rb["unsound"]:
            check += " UNSOUND"
        print(f"| {ra['norm']} | {ra['eps']:g} | {pct(ra['deeppoly'], n)} | {pct(ra['lipschitz'], n)} | "
              f"{pct(ra['pgd'], n)} | {pct(rb['deeppoly'], n)} | {pct(rb['lipschitz'], n)} | {pct(rb['pgd'], n)} | "
              f"{check} |")
    print(f"wall time: {a['model']} {a['seconds']:.1f} s, {b['model']} {b['seconds']:.1f} s")


def main(argv=None) -> int:
    from certkit.verify.falsify import AttackConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help=f"test images from index {FIRST} (default 200)")
    ap.add_argument("--quick", action="store_true", help="N = 20 and one radius per norm (smoke test)")
    ap.add_argument("--samples", type=int, default=4, help="PGD: random points per ball before the restarts")
    ap.add_argument("--restarts", type=int, default=3, help="PGD restarts per ball (step scales 5, 1, 1/5)")
    ap.add_argument("--steps", type=int, default=6, help="PGD steps per restart")
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not os.path.exists(MNIST):
        sys.exit(f"skipped: {MNIST} is absent (the shared data are not next to this checkout)")
    n = 20 if a.quick else a.n
    radii = QUICK_RADII if a.quick else RADII
    cfg = AttackConfig(samples=a.samples, restarts=a.restarts, steps=a.steps)
    x, y = load_data(n)
    n = len(y)
    print(f"MNIST test images {FIRST}..{FIRST + n - 1}, pixels in [0, 1], balls clipped to [0, 1]; "
          f"DP = backend deeppoly, Lip = backend lipschitz (certified), PGD = not broken by certkit's falsifier "
          f"({cfg.samples} samples, {cfg.restarts} restarts x {cfg.steps} steps, checked with onnxruntime); "
          f"check = certified samples a confirmed counterexample breaks (must be 0)", flush=True)
    results, unsound = [], []
    for arch, pair in PAIRS.items():
        missing = [m for m in pair if not os.path.exists(os.path.join(MODELS, f"{m}.onnx"))]
        if missing:
            print(f"\nskipped {arch}: {', '.join(missing)} not found in {MODELS}")
            continue
        got = [run_model(m, x, y, radii, cfg) for m in pair]
        print_pair(arch, *got, n)
        sys.stdout.flush()
        results += got
        unsound += [(r["model"], row["norm"], row["eps"], row["unsound"]) for r in got for row in r["rows"]
                    if row["unsound"]]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"n": n, "first": FIRST, "domain": DOMAIN, "attack": vars(cfg), "models": results}, f, indent=1)
    if unsound:
        print("\nSOUNDNESS FAILURE: certified samples with confirmed counterexamples (MNIST test indices):")
        for m, norm, eps, ks in unsound:
            print(f"  {m} {norm} eps {eps:g}: {ks}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
