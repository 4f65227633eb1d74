"""The ACAS Xu instances where nnenum was ahead (issue 13), side by side with nnenum's figures.

Usage: python benchmarks/acas_hard.py [--timeout 116] [--nnenum]

Each instance runs as a fresh ``certkit certify MODEL SPEC --timeout T`` process (start-up included,
as VNN-COMP measures; one torch thread). The nnenum column is the issue's side-by-side run on this kind
of machine (one thread each, 116 s), printed for reference; with ``--nnenum`` and nnenum importable
(``python -c "import nnenum"``) it is measured in this run instead, through nnenum's own VNN-COMP entry
point (``python -m nnenum.nnenum MODEL SPEC TIMEOUT RESULT``). The networks and properties are those of
../shared/benchmarks/acasxu (VNN-COMP 2021).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ACAS = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "benchmarks", "acasxu"))

#: (network, property, expected, nnenum seconds, alpha-beta-CROWN seconds) from issue 13
HARD = [("3_3", "prop_2", "unsat", 91.0, None), ("4_2", "prop_2", "unsat", 64.0, None),
        ("1_1", "prop_6", "unsat", 29.0, None), ("5_3", "prop_2", "sat", 5.0, 12.0)]


def paths(net: str, prop: str) -> tuple[str, str]:
    return (os.path.join(ACAS, "onnx", f"ACASXU_run2a_{net}_batch_2000.onnx"),
            os.path.join(ACAS, "vnnlib", f"{prop}.vnnlib"))


def run_certkit(onnx: str, spec: str, timeout: float) -> tuple[str, float]:
    t = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "certkit", "certify", onnx, spec, "--timeout", str(timeout),
                          "--threads", "1"],
                         capture_output=True, text=True, env=env, timeout=timeout + 60,
                         cwd=os.path.join(HERE, ".."))
    verdict = (out.stdout.strip().splitlines() or ["error"])[0]
    return verdict, time.monotonic() - t


def run_nnenum(onnx: str, spec: str, timeout: float) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        res = os.path.join(tmp, "out.txt")
        t = time.monotonic()
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        subprocess.run([sys.executable, "-m", "nnenum.nnenum", onnx, spec, str(timeout), res],
                       capture_output=True, text=True, env=env, timeout=timeout + 60)
        dt = time.monotonic() - t
        verdict = open(res).read().split()[0] if os.path.exists(res) else "error"
    return {"holds": "unsat", "violated": "sat"}.get(verdict, verdict), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=116.0)
    ap.add_argument("--nnenum", action="store_true", help="measure nnenum in this run (when importable)")
    args = ap.parse_args()
    if not os.path.isdir(ACAS):
        sys.exit(f"skipped: {ACAS} is absent (the shared benchmarks are not next to this checkout)")
    live = args.nnenum and importlib.util.find_spec("nnenum") is not None
    if args.nnenum and not live:
        print("nnenum is not importable here: its column is the issue's figures")
    src = "measured in this run" if live else "issue 13's side-by-side run"
    print(f"{'instance':<14}{'expected':>9}{'certkit':>10}{'time s':>9}{'nnenum s':>10}  "
          f"{'alpha-beta-CROWN s':>18}   (nnenum: {src}; timeout {args.timeout:g} s)")
    wrong = 0
    for net, prop, expected, nn_s, ab_s in HARD:
        onnx, spec = paths(net, prop)
        verdict, dt = run_certkit(onnx, spec, args.timeout)
        if live:
            nn_verdict, nn_s = run_nnenum(onnx, spec, args.timeout)
            nn = f"{nn_s:.1f} ({nn_verdict})"
        else:
            nn = f"{nn_s:.1f}"
        wrong += verdict in ("sat", "unsat") and verdict != expected
        print(f"{net + ' ' + prop:<14}{expected:>9}{verdict:>10}{dt:>9.1f}{nn:>10}  "
              f"{('-' if ab_s is None else f'{ab_s:.1f}'):>18}")
    print(f"wrong verdicts: {wrong}")


if __name__ == "__main__":
    main()
