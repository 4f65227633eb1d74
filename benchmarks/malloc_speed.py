"""The allocator settings of :mod:`certkit.malloc`, measured: one ``certkit bounds`` call in a fresh
process with glibc's defaults (``CERTKIT_MALLOC=default``) and with certkit's, side by side.

Usage: python benchmarks/malloc_speed.py [--backend deeppoly] [--repeat 1] [MODEL SPEC ...]

Without arguments: the first spec of cifar_biasfield and of oval21 from ../shared/benchmarks/wild (a
16-input conv net, whose DeepPoly call allocates ~130 MB temporaries, and a CIFAR conv net on a
3072-dimensional box). Prints, per instance and setting: wall, user and system seconds and the peak
resident memory of that process (``os.wait4``), the output bounds' text compared (must be equal:
the allocator changes no arithmetic), and the speed-up.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WILD = os.path.normpath(os.path.join(ROOT, "..", "shared", "benchmarks", "wild"))
DEFAULTS = [("cifar_biasfield/onnx/cifar_bias_field_3.onnx", "cifar_biasfield/vnnlib/prop_3.vnnlib"),
            ("oval21/onnx/cifar_base_kw.onnx", "oval21/vnnlib/cifar_base_kw-img8095-eps0.010457516339869282.vnnlib")]


def run(model: str, spec: str, backend: str, setting: str) -> tuple[float, float, float, int, str]:
    """(wall, user, sys seconds, peak RSS bytes, stdout) of one ``certkit bounds`` process."""
    env = dict(os.environ, CERTKIT_MALLOC=setting)
    cmd = [sys.executable, "-m", "certkit", "-q", "bounds", "--backend", backend, model, spec]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err.read().strip().splitlines()[-1:]}")
        return wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss * 1024, out.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="*", help="MODEL SPEC [MODEL SPEC ...]")
    ap.add_argument("--backend", default="deeppoly")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    if a.pairs:
        if len(a.pairs) % 2:
            ap.error("give MODEL SPEC pairs")
        pairs = list(zip(a.pairs[::2], a.pairs[1::2]))
    else:
        if not os.path.isdir(WILD):
            print(f"skipped: {WILD} is absent (give MODEL SPEC pairs)")
            return 0
        pairs = [(os.path.join(WILD, m), os.path.join(WILD, s)) for m, s in DEFAULTS]
    print(f"{'instance':44s} {'setting':8s} {'wall s':>7s} {'user s':>7s} {'sys s':>7s} {'peak RSS':>9s}")
    for model, spec in pairs:
        name = os.path.basename(spec)[:44]
        walls, texts = {}, {}
        for _ in range(a.repeat):
            for setting in ("default", "certkit"):
                wall, user, sys_, peak, out = run(model, spec, a.backend, setting)
                walls.setdefault(setting, []).append(wall)
                texts[setting] = out
                print(f"{name:44s} {setting:8s} {wall:7.1f} {user:7.1f} {sys_:7.1f} {peak / 2**30:7.2f} GB", flush=True)
        same = "same bounds" if texts["default"] == texts["certkit"] else "BOUNDS DIFFER"
        speed = min(walls["default"]) / min(walls["certkit"])
        print(f"{name:44s} speed-up {speed:.2f}x (best of {a.repeat}), {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
