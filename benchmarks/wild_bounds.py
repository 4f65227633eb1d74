"""Bounds on the wild models: do they import, match onnxruntime, and get sound bounds within memory?

Usage: python benchmarks/wild_bounds.py [--backend deeppoly] [--all] [--filter TEXT] [--timeout 120]
                                        [--memory-limit SIZE] [--samples 10000] [--csv OUT.csv]

For the first instance of every distinct model of ../shared/benchmarks/wild/instances.csv (every
instance with ``--all``; ``--filter`` keeps the rows whose benchmark or model path contains TEXT),
each in fresh processes:

1. ``certkit bounds MODEL SPEC --backend B --timeout T --json ...`` as a user runs it: its wall time
   and its peak resident memory (``ru_maxrss`` of that very process, from ``os.wait4``); a method
   that runs out of time or memory gives way to a cheaper one (shown as ``[deeppoly>crown-output]``),
   and the process is killed at ``T + 60`` s; a model that does not import shows certkit's reason;
2. a checker process: the IR's reference executor against onnxruntime on 100 random inputs of the
   spec's first input box (max error relative to the output's magnitude, at least 1; target 1e-5),
   and ``--samples`` onnxruntime outputs at points of the box (a quarter of them vertices): how many
   fall outside the output bounds, or below a spec row's lower bound (must be 0: bounds are sound).

It prints one line per model and a summary: models imported, executor within 1e-5, bounds computed
(within the time limit), peak memory against the default budget of certkit (half of the memory
available, ``certkit.bounds.memory``) and against 4 GB, and the violations (must be 0).
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WILD = os.path.normpath(os.path.join(ROOT, "..", "shared", "benchmarks", "wild"))
EXEC_TOL = 1e-5


def instances(folder: str, everything: bool, text: str | None) -> list[dict]:
    """Rows of instances.csv: the first of each distinct model (all with ``everything``)."""
    out, seen = [], set()
    with open(os.path.join(folder, "instances.csv")) as f:
        for r in csv.DictReader(f):
            if text and text not in r["benchmark"] and text not in r["onnx"]:
                continue
            if not everything and r["onnx"] in seen:
                continue
            seen.add(r["onnx"])
            out.append(r)
    return out


def measured(cmd: list[str], timeout: float) -> tuple[int | None, float, int, str, str]:
    """Run ``cmd``: (exit code or None when killed at ``timeout``, wall s, peak RSS bytes, stdout, stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, start_new_session=True)
        killed = False
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t > timeout and not killed:
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.02)
        wall = time.monotonic() - t
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return (None if killed else p.returncode), wall, usage.ru_maxrss * 1024, out.read(), err.read()


# ------------------------------------------------------------------------------------ checker process


def check(onnx: str, vnnlib: str, bounds_json: str | None, samples: int, seed: int = 0) -> dict:
    """In a fresh process: IR executor vs onnxruntime, and onnxruntime samples against the bounds."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from certkit import api

    m = api.load_model(onnx)
    spec = api.load_spec(vnnlib, m)
    prop = spec.properties[0]
    lo, hi = np.asarray(prop.lower, np.float64), np.asarray(prop.upper, np.float64)
    rng = np.random.default_rng(seed)
    res: dict = {}
    x = rng.uniform(lo, hi, (100, lo.size)).astype(np.float32)
    ref, ours = [], []
    for k in range(0, len(x), 10):
        ref.append(np.asarray(m.runner(x[k:k + 10]), np.float64))
        ours.append(m.graph(x[k:k + 10].astype(np.float64)))
    ref, ours = np.concatenate(ref), np.concatenate(ours)
    scale = max(1.0, float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0)))
    res["exec_err"] = float(np.abs(ours - ref).max(initial=0.0)) / scale
    if bounds_json:
        b = json.load(open(bounds_json))
        ylo, yhi = (np.asarray(b[k], np.float64) for k in ("output_lower", "output_upper"))
        C, d, _ = prop.stacked()
        sl = np.asarray(b["spec_lower"], np.float64)
        out_bad = spec_bad = 0
        done = 0
        while done < samples:
            k = min(256, samples - done)
            t = rng.uniform(0, 1, (k, lo.size))
            if done < samples // 4:  # vertices
                t = (t < 0.5).astype(np.float64)
            xs = (lo + t * (hi - lo)).astype(np.float32)
            ys = np.asarray(m.runner(xs), np.float64)
            out_bad += int(((ys < ylo) | (ys > yhi)).any(axis=1).sum())
            if len(d):
                v = ys @ C.T - d
                spec_bad += int((v < sl - 1e-12 * (1 + np.abs(v))).any(axis=1).sum())
            done += k
        res.update(samples=done, out_violations=out_bad, spec_violations=spec_bad,
                   width=float(np.median(yhi - ylo)), methods=b.get("methods", []), degraded=b.get("degraded", []))
    return res


# ------------------------------------------------------------------------------------ driver


def one(row: dict, a) -> dict:
    onnx, vnnlib = os.path.join(WILD, row["onnx"]), os.path.join(WILD, row["vnnlib"])
    r = {"benchmark": row["benchmark"], "model": os.path.basename(row["onnx"])}
    with tempfile.TemporaryDirectory() as tmp:
        bj = os.path.join(tmp, "bounds.json")
        cmd = [sys.executable, "-m", "certkit.cli", "bounds", onnx, vnnlib, "--backend", a.backend, "--json", bj,
               "--timeout", str(a.timeout)]
        if a.memory_limit:
            cmd += ["--memory-limit", a.memory_limit]
        rc, wall, peak, out, err = measured(cmd, a.timeout + 60)
        r.update(rc=rc, time=wall, rss=peak)
        line = (err.strip().splitlines() or [""])[-1].replace("certkit: error: ", "")
        if rc == 3:  # the model does not import: the reason, without the path
            r["imports"] = False
            r["reason"] = line.replace(onnx + ": ", "")
            return r
        r["imports"] = True
        if rc not in (0, None):
            r["reason"] = f"exit {rc}: {line}"
        ok = rc == 0 and os.path.exists(bj)
        crc, _, _, cout, cerr = measured([sys.executable, __file__, "--check", onnx, vnnlib, bj if ok else "",
                                          "--samples", str(a.samples)], max(a.timeout, 600))
        if crc == 0:
            r.update(json.loads(cout.strip().splitlines()[-1]))
        else:
            r["check_error"] = (cerr.strip().splitlines() or ["killed"])[-1][:120]
    return r


def a_backend(r: dict) -> str:
    return r["degraded"][0]["stage"] if r.get("degraded") else ""


def fmt(r: dict) -> str:
    head = f"{r['benchmark'][:22]:<22} {r['model'][:34]:<34}"
    if not r.get("imports"):
        return f"{head} no import: {r.get('reason', '')[:150]}"
    err = r.get("exec_err")
    e = "   -    " if err is None else f"{err:8.1e}" + ("!" if err > EXEC_TOL else " ")
    if r["rc"] is None:
        b = f"timeout {r['time']:6.1f} s {r['rss'] / 2**20:7.0f} MB"
    elif r["rc"] != 0:
        b = f"{r.get('reason', '')[:60]}"
    else:
        b = f"{r['time']:6.1f} s   {r['rss'] / 2**20:7.0f} MB"
    v = ""
    if "out_violations" in r:
        v = f"  viol {r['out_violations']}/{r['spec_violations']}  width {r['width']:.3g}"
        if r.get("degraded"):
            why = "time" if any("out of time" in d["reason"] for d in r["degraded"]) else "memory"
            v += f"  [{a_backend(r)}>{'+'.join(r['methods'])}: {why}]"
    if "check_error" in r:
        v += f"  check failed: {r['check_error']}"
    return f"{head} {e} {b}{v}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="deeppoly", choices=("interval", "deeppoly", "alpha"))
    ap.add_argument("--all", action="store_true", help="every instance, not only the first of each model")
    ap.add_argument("--filter", help="only rows whose benchmark or model path contains this text")
    ap.add_argument("--timeout", type=float, default=120.0, help="certkit bounds --timeout (killed 60 s later)")
    ap.add_argument("--memory-limit", dest="memory_limit", help="passed to certkit bounds (default: its own)")
    ap.add_argument("--samples", type=int, default=10_000, help="onnxruntime samples per model")
    ap.add_argument("--csv", help="also write the results here")
    ap.add_argument("--check", nargs=3, metavar=("ONNX", "VNNLIB", "BOUNDS_JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.check:
        print(json.dumps(check(a.check[0], a.check[1], a.check[2] or None, a.samples)))
        return 0
    if not os.path.isdir(WILD):
        print(f"{WILD} is absent: nothing to measure (the wild benchmarks live in ../shared)")
        return 0
    sys.path.insert(0, ROOT)
    from certkit.bounds.memory import default_limit, format_size, parse_size

    budget = parse_size(a.memory_limit) if a.memory_limit else default_limit()
    rows = instances(WILD, a.all, a.filter)
    print(f"{len(rows)} instance(s); certkit bounds --backend {a.backend}, timeout {a.timeout:g} s, "
          f"memory budget {format_size(budget)}{'' if a.memory_limit else ' (the default)'}; "
          f"{a.samples} onnxruntime samples per model")
    print(f"{'benchmark':<22} {'model':<34} {'exec err':<9} {'time':>8}   {'peak RSS':>10}  violations out/spec")
    results = []
    for row in rows:
        r = one(row, a)
        results.append(r)
        print(fmt(r), flush=True)
    summary(results, budget)
    if a.csv:
        keys = ["benchmark", "model", "imports", "reason", "exec_err", "rc", "time", "rss", "out_violations",
                "spec_violations", "width", "methods"]
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(results)
    return 1 if any(r.get("out_violations") or r.get("spec_violations") for r in results) else 0


def summary(results: list[dict], budget: int) -> None:
    n = len(results)
    imp = [r for r in results if r.get("imports")]
    exe = [r for r in imp if r.get("exec_err") is not None and r["exec_err"] <= EXEC_TOL]
    done = [r for r in imp if r["rc"] == 0]
    timed = [r for r in imp if r["rc"] is None]
    within = [r for r in imp if r["rss"] <= budget]
    small = [r for r in imp if r["rss"] <= 4 << 30]
    viol = sum(r.get("out_violations", 0) + r.get("spec_violations", 0) for r in results)
    checked = sum(1 for r in results if "out_violations" in r)
    print()
    print(f"imported: {len(imp)}/{n}; IR executor within {EXEC_TOL:g} of onnxruntime: {len(exe)}/{len(imp)}")
    print(f"bounds computed: {len(done)}/{len(imp)} ({len(timed)} over the time limit); peak RSS within the "
          f"budget: {len(within)}/{len(imp)}, under 4 GB: {len(small)}/{len(imp)}; max "
          f"{max((r['rss'] for r in imp), default=0) / 2**20:.0f} MB")
    print(f"degraded (by time or memory): {sum(1 for r in done if r.get('degraded'))}; "
          f"sample violations: {viol} over {checked} model(s) checked (must be 0)")
    reasons = collections.Counter(", ".join(sorted(set(re.findall(r"\((\w+) opset", r.get("reason", "")))))
                                  or r.get("reason", "")[:60] for r in results if not r.get("imports"))
    for why, k in reasons.most_common():
        print(f"  not imported x{k}: {why}")


if __name__ == "__main__":
    sys.exit(main())
