"""Scale-out on a Dask cluster (issue 14): suites and one hard search, 1 and 2 workers beside one process.

Usage: python benchmarks/cluster.py [--quick] [--bab-instance NET:PROP]

1. Per-task overhead: ``certkit bench`` of N quick instances (the shipped digits examples, ~0.1 s each)
   one after the other in one process (each instance still in a fresh process) against a local
   cluster of one worker; the cluster's start (measured alone) is subtracted, the rest divided by N
   (target: under 0.2 s per instance).
2. The 62 shared ACAS Xu instances (../shared/benchmarks): wall time in one process, on a local
   cluster of 1 worker and of 2 workers (the ratio 1 / 2 workers), solved counts and wrong verdicts.
3. Branch and bound on one hard shared instance (default ACAS Xu 4_2 prop_2): ``certkit certify`` in
   one process and with ``--cluster local:1`` / ``local:2``, each proof re-checked by ``certkit check``.

Every run is a fresh ``certkit`` process, as a user runs it; walls include process and cluster start.
``--quick`` skips part 2.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "benchmarks"))


def certkit(*args: str, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # one torch thread everywhere (the default is every CPU): one process and each worker alike
    out = subprocess.run([sys.executable, "-m", "certkit", "--threads", "1", *args], capture_output=True, text=True,
                         env=env,
                         timeout=timeout, cwd=ROOT)
    return out, time.monotonic() - t


def rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cluster_start() -> float:
    """Seconds to start and close a local cluster of one worker (in a fresh process), less that
    process's own start (measured with ``certkit --version``)."""
    code = ("import time, logging; t = time.monotonic()\n"
            "from certkit.cluster import open_cluster\n"
            "with open_cluster('local:1', None) as c: c.submit(abs, 1).result()\n"
            "print(time.monotonic() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def overhead(tmp: str, n: int) -> None:
    fc, unsat = os.path.join(ROOT, "models", "digits_fc.onnx"), os.path.join(ROOT, "vnnlib", "digits_fc_0_eps0.02.vnnlib")
    suite = os.path.join(tmp, "quick.csv")
    with open(suite, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "onnx", "vnnlib", "timeout", "expected"])
        w.writerows([["digits", fc, unsat, 60, "unsat"]] * n)
    _, t_one = certkit("bench", suite, "--out", os.path.join(tmp, "q1.csv"))
    _, t_c1 = certkit("bench", suite, "--cluster", "local:1", "--out", os.path.join(tmp, "qc.csv"))
    start = cluster_start()
    per = (t_c1 - start - t_one) / n
    solved = sum(r["verdict"] == "unsat" for r in rows(os.path.join(tmp, "qc.csv")))
    print(f"1. per-task overhead, {n} quick instances: one process {t_one:.1f} s, local:1 {t_c1:.1f} s "
          f"(cluster start {start:.1f} s) -> {per:+.3f} s per instance (target < 0.2 s); {solved}/{n} unsat")


def suite(tmp: str) -> None:
    csv_path = os.path.join(SHARED, "instances.csv")
    res = {}
    for name, extra in (("one process", []), ("local:1", ["--cluster", "local:1"]), ("local:2", ["--cluster", "local:2"])):
        out_csv = os.path.join(tmp, f"acas-{name.replace(' ', '_')}.csv")
        _, wall = certkit("bench", csv_path, "--filter", "acasxu", "--out", out_csv, *extra)
        rs = rows(out_csv)
        res[name] = wall
        solved = sum(r["verdict"] in ("sat", "unsat") for r in rs)
        wrong = sum(r["wrong"] == "1" for r in rs)
        print(f"2. ACAS Xu shared ({len(rs)} instances), {name:<11}: wall {wall:7.1f} s, solved {solved}, wrong {wrong}")
    print(f"   1 worker / 2 workers wall: {res['local:1'] / res['local:2']:.2f}x; "
          f"local:1 against one process: {(res['local:1'] - res['one process']) / 62:+.3f} s per instance "
          "(cluster start included)")


def bab(tmp: str, instance: str) -> None:
    net, prop = instance.split(":")
    onnx = os.path.join(SHARED, "acasxu", "onnx", f"ACASXU_run2a_{net}_batch_2000.onnx")
    spec = os.path.join(SHARED, "acasxu", "vnnlib", f"{prop}.vnnlib")
    for name, extra in (("one process", []), ("local:1", ["--cluster", "local:1"]), ("local:2", ["--cluster", "local:2"])):
        cert = os.path.join(tmp, f"bab-{name.replace(' ', '_')}.json")
        out, wall = certkit("certify", onnx, spec, "--timeout", "116", "--json", cert, *extra)
        verdict = (out.stdout.strip().splitlines() or ["error"])[0]
        checked = "-"
        if verdict == "unsat":
            chk, _ = certkit("check", cert)
            checked = "accepted" if chk.returncode == 0 else f"REJECTED (exit {chk.returncode})"
        print(f"3. {net} {prop}, {name:<11}: {verdict:<7} wall {wall:6.1f} s, certkit check: {checked}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 62-instance suite")
    ap.add_argument("--tasks", type=int, default=40, help="quick instances for the overhead figure (default 40)")
    ap.add_argument("--bab-instance", default="4_2:prop_2", metavar="NET:PROP")
    a = ap.parse_args()
    try:
        import dask.distributed  # noqa: F401
    except ImportError:
        sys.exit("skipped: Dask is not installed (pip install -e '.[dask]')")
    with tempfile.TemporaryDirectory() as tmp:
        overhead(tmp, a.tasks)
        if not os.path.isdir(SHARED):
            print(f"parts 2 and 3 skipped: {SHARED} is absent")
            return
        if not a.quick:
            suite(tmp)
        bab(tmp, a.bab_instance)


if __name__ == "__main__":
    main()
