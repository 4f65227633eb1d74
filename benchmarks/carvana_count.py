"""carvana_unet_2022 (issue 13): DeepPoly's lower bound on the count of correctly classified pixels beside
the count each property needs.

Usage: python benchmarks/carvana_count.py [--filter unet_simp] [--threads 1]
Exit codes: 0, 2 (bad arguments), 3 (a model certkit cannot read), 4 (../shared missing, or a spec certkit
cannot read).

The U-Nets output the number of the 1457 pixels whose ArgMax of the softmax equals the mask the spec pins;
every property asks for more than 1314. The bound is DeepPoly with intersected bounds (``deeppoly+interval``,
alpha-CROWN's first iterate), whose refined nodes meet the interval images of their inputs' bounds
(``BoundState.refresh``): the count is bounded by the pixels whose comparisons those bounds decide. One
instance after the other, in this process; the unet_upsample instances take more than 10 minutes each.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WILD = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "benchmarks", "wild"))


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive count, got {text}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--filter", default="unet_simp", help="substring of the model's or the spec's path")
    ap.add_argument("--threads", type=_positive, default=1)
    a = ap.parse_args(argv)
    table = os.path.join(WILD, "instances.csv")
    if not os.path.exists(table):
        print(f"carvana_count: {table} is missing (needs ../shared)", file=sys.stderr)
        return 4
    import torch

    from certkit.api import load_model, load_spec
    from certkit.bounds.deeppoly import BoundState, deeppoly_lower
    from certkit.errors import CertkitError
    from certkit.verify.certify import queries_of

    torch.set_num_threads(a.threads)
    with open(table) as f:
        rows = [r for r in csv.DictReader(f) if r["benchmark"] == "carvana_unet_2022" and (a.filter in r["onnx"] or a.filter in r["vnnlib"])]
    print(f"{'instance':<58} {'expected':>8} {'needs >':>8} {'bound':>9} {'time s':>7}")
    for r in rows:
        try:
            model = load_model(os.path.join(WILD, r["onnx"]))
            q = queries_of(model, load_spec(os.path.join(WILD, r["vnnlib"]), model))[0]
        except CertkitError as e:  # certkit's one line and exit code
            print(f"carvana_count: {e}", file=sys.stderr)
            return e.exit_code
        S = q.bound_set()
        t = time.perf_counter()
        low = deeppoly_lower(model.graph, S, torch.as_tensor(q.C), state=BoundState(model.graph, S, True))
        name = os.path.basename(r["vnnlib"]).removeprefix("spec_").removesuffix(".vnnlib")
        print(f"{name:<58} {r['expected']:>8} {float(q.d[0]):>8.0f} {float(low[0, 0]):>9.2f} "
              f"{time.perf_counter() - t:>7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
