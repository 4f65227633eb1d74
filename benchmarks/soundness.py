"""Soundness at scale: the checks of tests/test_bounds_soundness.py with 10^6 points per
configuration, more seeds and a longer attack.

Usage: python benchmarks/soundness.py [--points N] [--seeds 0 1 2] [--steps 50] [--restarts 5]
                                      [--nets mlp_relu conv ...] [--kinds box linf ...]

A configuration is (random net, kind of input set, seed); each has two input sets.
For every configuration it prints the points checked (sampled in the sets and
kept by ``InputSet.contains``), the attack steps (PGD steps x restarts x targets x
sets) and, per method, the minimal slack over all targets (each output's min and
max, each row of a robustness-like C): the distance from the bound to the worst
value found, positive when the bound holds. A slack below
``-1e-9 * (1 + |value|)`` is a soundness violation (FAIL). Exit status 1 on any FAIL.

Methods: interval (IBP), deeppoly (CROWN, intersect=False), deeppoly+intersect
(intersect=True), alpha(random) (intersect=False with random lower slopes).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.helpers.random_nets import ALL_NETS  # noqa: E402
from tests.test_bounds_soundness import METHODS, SET_KINDS, run_config  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000, help="sampled points per configuration")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=50, help="PGD steps")
    ap.add_argument("--restarts", type=int, default=5, help="PGD restarts per target")
    ap.add_argument("--nets", nargs="+", default=list(ALL_NETS), choices=list(ALL_NETS))
    ap.add_argument("--kinds", nargs="+", default=list(SET_KINDS), choices=list(SET_KINDS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    head = f"{'configuration':34s} {'points':>9s} {'attack':>8s} " + \
        " ".join(f"{m:>19s}" for m in METHODS) + "  result"
    print("min slack = worst value found minus bound (>= 0: sound); attack = PGD steps x restarts x targets x sets")
    print(head)
    print("-" * len(head))
    n_fail, n_cfg, points, steps = 0, 0, 0, 0
    worst = {m: float("inf") for m in METHODS}
    failures: list[str] = []
    t0 = time.time()
    for seed in args.seeds:
        for net in args.nets:
            graph = ALL_NETS[net](seed)
            for kind in args.kinds:
                r = run_config(net, graph, kind, seed, args.points, args.steps, args.restarts)
                n_cfg += 1
                points += r.points
                steps += r.attack_steps
                for m in METHODS:
                    worst[m] = min(worst[m], r.slack[m])
                if not r.ok:
                    n_fail += 1
                    failures += [f"{r.config}: {v}" for v in r.violations]
                print(f"{r.config:34s} {r.points:9d} {r.attack_steps:8d} " +
                      " ".join(f"{r.slack[m]:19.6g}" for m in METHODS) + ("  PASS" if r.ok else "  FAIL"),
                      flush=True)
    print("-" * len(head))
    print(f"{n_cfg} configurations, {points:,} points, {steps:,} attack steps, {time.time() - t0:.0f} s; "
          f"{n_cfg - n_fail} PASS, {n_fail} FAIL")
    print("smallest slack per method: " + ", ".join(f"{m} {worst[m]:.3g}" for m in METHODS))
    for f in failures[:50]:
        print("VIOLATION", f)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
