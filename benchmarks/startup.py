"""Start-up cost of the ``certkit`` command: what it imports, and the wall time of one process per instance.

Usage: python benchmarks/startup.py [--top 12] [--repeat 1] [--skip-wall] [--filter prop_3,prop_4]

1. **Imports**: ``certkit --version``, ``certkit --help`` and ``certkit certify`` on the shipped digits
   net, each run as a fresh process with ``-X importtime`` (``PYTHONPROFILEIMPORTTIME=1``). Per command:
   the process wall time, the total import time, the import time per top-level package (the modules'
   own times summed, so nothing is counted twice), which heavy packages were loaded at all, and the
   modules with the largest cumulative import time.
2. **Wall time**: ``certkit certify MODEL SPEC --timeout T`` as a fresh process on the easy ACAS Xu
   instances of ../shared/benchmarks/instances.csv (the prop_3 and prop_4 rows), as VNN-COMP runs them:
   median and max, beside nnenum's (about 2.0 s) and Marabou's (1.1-1.5 s) wall times on this kind of
   machine (issue 10). Skipped, with a message, when ../shared is absent.

Figures only: nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "benchmarks"))  # --shared
#: Packages whose presence in a run is worth a line: the heavy or optional dependencies.
HEAVY = ("torch", "onnx", "ml_dtypes", "onnxruntime", "scipy", "sklearn", "highspy", "cvxpy", "gurobipy")
#: Reference wall times on the easy ACAS Xu instances (issue 10), seconds.
REFERENCE = (("nnenum", "about 2.0"), ("Marabou", "1.1-1.5"))


def certkit_command() -> list[str]:
    """The installed ``certkit`` console script beside this interpreter, else ``python -m certkit.cli``."""
    script = os.path.join(os.path.dirname(sys.executable), "certkit")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    found = shutil.which("certkit")
    return [found] if found else [sys.executable, "-m", "certkit.cli"]


def run(args: list[str], importtime: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``certkit ARGS`` in a fresh process from the repository root; its wall time and result."""
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    # the certkit of this checkout, whichever is installed
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if importtime:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    t = time.perf_counter()
    p = subprocess.run(certkit_command() + args, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, p


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """``(module, self us, cumulative us, depth)`` per line of ``-X importtime`` output."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        head, cum_us, name = line.split("|", 2)
        self_us = head.split(":", 1)[1]
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2  # two spaces per level after one
        rows.append((name.strip(), int(self_us), int(cum_us), depth))
    return rows


def report_imports(label: str, args: list[str], top: int) -> None:
    wall, p = run(args, importtime=True)
    rows = parse_importtime(p.stderr)
    total = sum(r[1] for r in rows)
    by_pkg: collections.Counter = collections.Counter()
    for name, self_us, _, _ in rows:
        by_pkg[name.split(".")[0]] += self_us
    loaded = {name.split(".")[0] for name, *_ in rows}
    print(f"== certkit {label}: exit {p.returncode}, wall {wall:.2f} s, imports {total / 1e6:.2f} s "
          f"({len(rows)} modules)")
    print("   by package (own time): " + ", ".join(f"{k} {v / 1e6:.3f}" for k, v in by_pkg.most_common(8)))
    print("   heavy packages loaded: " + (", ".join(h for h in HEAVY if h in loaded) or "none"))
    print(f"   top {top} by cumulative import time (s):")
    for name, _, cum, depth in sorted(rows, key=lambda r: -r[2])[:top]:
        print(f"     {cum / 1e6:7.3f}  {'  ' * depth}{name}")


def easy_acas_rows(shared: str, filters: list[str]) -> list[dict[str, str]]:
    with open(os.path.join(shared, "instances.csv")) as f:
        return [r for r in csv.DictReader(f)
                if r["benchmark"] == "acasxu" and any(os.path.basename(r["vnnlib"]) == k + ".vnnlib" for k in filters)]


def report_wall(shared: str, filters: list[str], repeat: int, backend: str) -> None:
    if not os.path.isfile(os.path.join(shared, "instances.csv")):
        print(f"\n== wall time: skipped, {shared}/instances.csv not found (the shared benchmarks sit beside "
              "the repository, or give --shared DIR)")
        return
    rows = easy_acas_rows(shared, filters)
    print(f"\n== certkit certify --backend {backend} as a fresh process, {len(rows)} ACAS Xu instances "
          f"({', '.join(filters)}), best of {repeat} run(s) each")
    times, verdicts, wrong = [], collections.Counter(), 0
    for r in rows:
        best, verdict, message = float("inf"), "?", ""
        for _ in range(repeat):
            wall, p = run(["certify", os.path.join(shared, r["onnx"]), os.path.join(shared, r["vnnlib"]),
                           "--backend", backend, "--timeout", r["timeout_s"]])
            best = min(best, wall)
            verdict = (p.stdout.split() or ["error"])[0]
            message = (p.stderr.strip().splitlines() or [""])[-1] if verdict == "error" else ""
        bad = (verdict, r["expected"]) in (("unsat", "sat"), ("sat", "unsat"))
        wrong += bad
        times.append(best)
        verdicts[verdict] += 1
        note = ("  WRONG" if bad else "") + ("  " + message[:120] if message else "")
        print(f"   {os.path.basename(r['onnx']):<32} {os.path.basename(r['vnnlib']):<14} expected "
              f"{r['expected']:<6} got {verdict:<8} {best:6.2f} s{note}", flush=True)
    print(f"   verdicts: {dict(verdicts)}, wrong: {wrong}")
    print(f"   certkit wall time: median {statistics.median(times):.2f} s, max {max(times):.2f} s, "
          f"total {sum(times):.1f} s")
    print("   reference (issue 10, same instances, one process each): "
          + ", ".join(f"{t} {s} s" for t, s in REFERENCE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=12, help="modules listed per command (default 12)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per ACAS Xu instance, the best kept (default 1)")
    ap.add_argument("--filter", default="prop_3,prop_4", help="ACAS Xu properties (default prop_3,prop_4)")
    ap.add_argument("--backend", default="auto", help="certify backend for the wall-time runs (default auto)")
    ap.add_argument("--skip-wall", action="store_true", help="only the import breakdown")
    ap.add_argument("--shared", default=SHARED, help=f"the shared benchmarks folder (default {SHARED})")
    a = ap.parse_args()
    print(f"command: {' '.join(certkit_command())}")
    wall, _ = run(["--version"])  # warm the file cache once; not reported
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print(f"bare interpreter (python -c pass): {time.perf_counter() - t:.2f} s\n")
    report_imports("--version", ["--version"], a.top)
    report_imports("--help", ["--help"], a.top)
    report_imports("certify (digits_fc, deeppoly)",
                   ["certify", "models/digits_fc.onnx", "vnnlib/digits_fc_0_eps0.02.vnnlib", "--backend", "deeppoly"],
                   a.top)
    if not a.skip_wall:
        report_wall(a.shared, [f.strip() for f in a.filter.split(",") if f.strip()], a.repeat, a.backend)


if __name__ == "__main__":
    main()
