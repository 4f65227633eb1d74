"""The ``certkit`` command line: the only place that turns errors into messages and exit codes.

Exit codes (also in the README):

====  =====================================================================
0     a verdict was produced (``unsat``, ``sat``, ``unknown``, ``timeout``)
2     usage error (bad arguments or option values, an output path that cannot be written)
3     model error (unreadable ONNX, unsupported operators)
4     spec or data error (malformed VNN-LIB, wrong sizes, bad ``.npz``)
5     backend unavailable (unknown backend, missing solver or licence)
6     ``certkit check``: the certificate failed a check
70    internal error (a bug: please report it, with ``--debug`` output)
====  =====================================================================

Errors print one line on stderr (``certkit: error: ...``); ``--debug`` adds
the traceback. For ``certify`` the first stdout line is the verdict word, and
``error`` when the run could not be done.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import traceback
import warnings

from .bounds import ARITHMETICS
from .cli_paths import output_path, output_path_or_folder, write_outputs
from .errors import CertkitError, OutputError, UsageError



def _process_age() -> float:
    """Seconds since this process started (Linux /proc), else since this module was imported."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _T_IMPORT


_T_IMPORT = time.monotonic()
#: Kept back from ``--timeout`` for writing results and shutting down.
_EXIT_RESERVE = 1.0

EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_SPEC, EXIT_BACKEND, EXIT_INTERNAL = 0, 2, 3, 4, 5, 70
EXIT_INVALID = 6  # certkit check: a certificate failed a check
EXIT_PARTIAL = 7  # certkit check: no check failed, but some part could not be re-derived
EXIT_PIPE = 141  # stdout closed by the reader (as after SIGPIPE in a shell pipeline)
#: torch.set_num_threads accepts any count, then crashes in the first matmul at 100000 (observed).
MAX_THREADS = 1024


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, documented exit code
        raise UsageError(f"{self.prog}: {message}")


_ARITHMETIC_HELP = ("arithmetic of the bound computations' matrix products: float32, its rounding charged to "
                    "the bounds, made DeepPoly 1.5-2.7x faster on the wild conv nets measured; auto (default): "
                    "float32 for large convolutions")

_MEMORY_HELP = ("memory budget, e.g. 8G or 500M (default: half of the memory available); bounds that do "
                "not fit degrade to cheaper sound ones, and the output says so")


def _memory_size(text: str) -> int:
    """``--memory-limit``: bytes (:func:`certkit.bounds.memory.parse_size`; imports no torch)."""
    from .bounds.memory import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _thread_count(text: str) -> int | None:
    """``--threads``: a count, or ``auto`` (None: :func:`certkit.cluster.usable_cpus`, resolved when run)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or auto (got {text!r})") from None


def _global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """``--threads``, ``-v``, ``-q``, ``--log-file``: accepted before the sub-command and after it (a
    sub-command's copy has no default, so it does not undo the value given before it)."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)  # noqa: E731
    p.add_argument("--threads", type=_thread_count, default=d(None), metavar="N|auto",
                   help="CPU threads for torch (default auto: every CPU this process may use; certkit bench "
                        "shares them among its --jobs)")
    p.add_argument("-v", "--verbose", action="count", default=d(0),
                   help="log what each stage decided (-vv: also the searches' progress), on stderr")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="errors only; no progress bars")
    p.add_argument("--log-file", metavar="FILE", type=output_path, default=d(None), dest="log_file",
                   help="write the full log (DEBUG, with times) to FILE")


def _logging_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log on stderr")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="errors only")
    p.add_argument("--log-file", metavar="FILE", type=output_path, default=argparse.SUPPRESS, dest="log_file",
                   help="write the full log to FILE")


def _parser() -> argparse.ArgumentParser:
    """The whole command line. Building it imports no torch, onnx or numpy: the backend choices come
    from :mod:`certkit.verify.plan`, and the plugins import their heavy code in ``run_cli``."""
    from .verify.plan import BOUNDS_BACKENDS, PLANS

    p = _Parser(prog="certkit", description="Sound verification and certification of neural networks.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    c = sub.add_parser("certify", help="decide a VNN-LIB spec, or certify a data set")
    c.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    c.add_argument("spec", nargs="?", help="VNN-LIB specification (.vnnlib or .vnnlib.gz)")
    c.add_argument("--backend", default="auto", choices=(*PLANS, "lipschitz"),
                   help="bound backend; lipschitz: Lipschitz-margin certificates (data-set mode)")
    c.add_argument("--timeout", type=float, default=None, help="time budget in seconds")
    c.add_argument("--memory-limit", type=_memory_size, default=None, dest="memory_limit", metavar="SIZE",
                   help=_MEMORY_HELP)
    c.add_argument("--arithmetic", default="auto", choices=ARITHMETICS, help=_ARITHMETIC_HELP)
    c.add_argument("--out", type=output_path_or_folder,
                   help="VNN-LIB: write the VNN-COMP results file here; --dataset: a folder for the "
                        "counterexamples of falsified samples")
    c.add_argument("--json", type=output_path, help="write the JSON certificate here")
    c.add_argument("--junit", type=output_path, metavar="FILE",
                   help="data-set mode: JUnit XML here, one testcase per sample (verified passes; falsified and "
                        "misclassified fail; unknown and timeout are skipped)")
    c.add_argument("--seed", type=int, default=0, help="attack seed, in [0, 2**64 - 1] (default 0)")
    c.add_argument("--dataset", help="data set .npz with x (N, *input shape) and y (N,)")
    c.add_argument("--eps", type=float, help="perturbation radius (data-set mode)")
    c.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"))
    c.add_argument("--total-timeout", type=float, default=None, dest="total_timeout",
                   help="data-set mode: budget of the whole run in seconds (--timeout is per sample)")
    c.add_argument("--domain", type=float, nargs=2, metavar=("LO", "HI"), help="valid input range, e.g. 0 1")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--limit", type=int, help="only the first N samples (data-set mode)")
    c.add_argument("--radius", action="store_true",
                   help="data-set mode: each sample's largest certified radius up to --eps (Lipschitz margins, "
                        "then bisection with --backend, deeppoly by default)")
    c.add_argument("--eps-sweep", metavar="E1,E2,...", dest="eps_sweep",
                   help="data-set mode: certify at each of these radii (one line and one JSON run each)")
    c.add_argument("--cluster", metavar="local[:N]|tcp://HOST:PORT",
                   help="a Dask cluster (extra .[dask]): data-set batches, or the input-splitting search of a "
                        "VNN-LIB spec, run as tasks on its workers; local:N starts one of N workers here")
    c.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    b = sub.add_parser("bounds", help="output and spec bounds over the spec's first input box")
    b.add_argument("model")
    b.add_argument("spec")
    b.add_argument("--backend", default="deeppoly", choices=BOUNDS_BACKENDS)
    b.add_argument("--memory-limit", type=_memory_size, default=None, dest="memory_limit", metavar="SIZE",
                   help=_MEMORY_HELP)
    b.add_argument("--arithmetic", default="auto", choices=ARITHMETICS, help=_ARITHMETIC_HELP)
    b.add_argument("--timeout", type=float, default=None,
                   help="time budget in seconds: a method that runs out of it gives way to a cheaper sound one "
                        "(interval bounds always complete), and the output says so")
    b.add_argument("--json", type=output_path, help="write the bounds as JSON here")
    b.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    k = sub.add_parser("check", help="re-check a JSON certificate (witness with onnxruntime, bounds re-derived)")
    k.add_argument("certificate", help="CERT.json written by certkit certify --json")
    k.add_argument("--model", help="the model file (default: the path in the certificate)")
    k.add_argument("--spec", help="the spec file (default: the path in the certificate)")
    k.add_argument("--data", help="the data set .npz of a data-set certificate (default: the path in it)")
    k.add_argument("--time-per-leaf", type=float, default=5.0, dest="time_per_leaf",
                   help="seconds for re-searching a proof-tree leaf that does not close as recorded")
    k.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    o = sub.add_parser("ops", help="print the ONNX op and backend support tables")
    o.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    for q in list(sub.choices.values()):  # built-in sub-commands so far
        _global_options(q, top=False)
    for name, (module, helptext) in PLUGINS.items():
        mod = _plugin(module)
        if mod is not None:
            q = sub.add_parser(name, help=helptext)
            mod.add_arguments(q)
            if "--debug" not in q._option_string_actions:
                q.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
            if "--threads" not in q._option_string_actions:  # (sparsify has its own --threads)
                _global_options(q, top=False)
            else:
                _logging_only(q)
    return p


#: Sub-commands that live in their own module: ``name -> (module, help)``. The module
#: defines ``add_arguments(parser)`` and ``run_cli(args) -> exit code``; it raises
#: :class:`CertkitError` for bad input like every other command. Every module is imported to
#: build the parser, so it (and its package's ``__init__``) imports only what declaring the
#: arguments needs: torch, onnx, numpy and solvers are imported inside ``run_cli``.
PLUGINS: dict[str, tuple[str, str]] = {
    "bench": ("certkit.bench", "run a VNN-COMP instances CSV, one fresh process per instance"),
    "lipschitz": ("certkit.lipschitz.cli", "Lipschitz constant bounds (nonneg, ABBA, separable, signed, SDP)"),
    "abba": ("certkit.lipschitz.abba_cli", "ABBA networks: convert a signed net to its exact ABBA form"),
    "fixedpoint": ("certkit.fixedpoint.cli", "fixed points of nonnegative nets R^k -> R^k (paper 001)"),
    "ibnn": ("certkit.ibnn_cli", "implicit-bias layers: existence, uniqueness, Lipschitz, fixed points (paper 003)"),
    "sparsify": ("certkit.sparsify.cli", "verification-friendly sparsification by the VNN LP (paper 002)"),
    "report": ("certkit.report", "plots and an HTML page from bench CSVs and data-set JSONs (extra .[report])"),
}


def _plugin(module: str):
    """The sub-command's module; a stand-in that names the missing package when the module needs
    an optional dependency that is not installed; None when the module is absent. (A package that
    ``run_cli`` imports and finds missing is reported the same way, by :func:`_run_plugin`.)"""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "certkit":
            return None
        return _MissingDependency(e.name.split(".")[0])


#: The pip extra that brings each optional package.
_EXTRAS = {"highspy": "highs", "scipy": "highs", "cvxpy": "sdp", "gurobipy": "gurobi"}


def _run_plugin(command: str, a) -> int:
    """Run a plugin sub-command; a package its ``run_cli`` needs and does not find is named with
    what to install (exit 5), as when the module itself could not be imported."""
    try:
        return _plugin(PLUGINS[command][0]).run_cli(a)
    except ModuleNotFoundError as e:
        package = (e.name or "").split(".")[0]
        if not package or package == "certkit":
            raise
        return _MissingDependency(package).run_cli(a)


class _MissingDependency:
    """A sub-command whose module needs a package that is not installed: it still parses, and
    says what to install (exit 5) instead of vanishing from the command list."""

    def __init__(self, package: str) -> None:
        self.package = package

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run_cli(self, a) -> int:
        from .errors import BackendError

        extra = _EXTRAS.get(self.package)
        hint = f"pip install 'certkit[{extra}]' (or pip install {self.package})" if extra \
            else f"pip install {self.package}"
        raise BackendError(f"certkit {a.command} needs the package '{self.package}': {hint}")


def _cmd_certify(a) -> int:
    from . import api
    from .certificate import certificate, dump, results_file

    if a.dataset:
        return _cmd_dataset(a)
    if a.spec is None:
        raise UsageError("certify needs a SPEC.vnnlib, or --dataset DATA.npz --eps E")
    if a.backend == "lipschitz":
        raise UsageError("--backend lipschitz certifies data sets: use --dataset DATA.npz --eps E")
    if a.eps is not None:
        raise UsageError("--eps belongs to the data-set mode (--dataset); a VNN-LIB spec carries its own box")
    if a.junit is not None:
        raise UsageError("--junit belongs to the data-set mode (--dataset); certkit bench --junit covers suites")
    if a.total_timeout is not None:
        raise UsageError("--total-timeout belongs to the data-set mode (--dataset); use --timeout")
    if a.out and os.path.isdir(a.out):
        raise UsageError(f"--out {a.out}: is a folder; a VNN-LIB run writes one results file")
    t0 = time.monotonic()
    model = api.load_model(a.model, a.arithmetic)
    spec = api.load_spec(a.spec, model)
    t_load = time.monotonic() - t0
    with contextlib.ExitStack() as stack:
        if a.cluster is not None:  # the input-splitting search's parts go to its workers
            from .cluster import use

            stack.enter_context(use(a.cluster, a.model))
        # --timeout counts from process start, interpreter, imports and a cluster's start included
        res = api.certify(model, spec, a.backend, _run_budget(a.timeout, a.memory_limit), a.seed)
    res.timings["load"] = t_load
    print(res.verdict)
    if res.verdict == "sat" and res.witness is not None:
        print(f"counterexample for input region {res.witness.property_index}, "
              f"disjunct {res.witness.disjunct_index} (validated with onnxruntime)")
    elif res.verdict == "unsat":
        print(f"proven by {res.stage} over {len(spec.properties)} input region(s) "
              f"in {res.timings.get('total', 0):.3f} s")
    elif res.reason:
        print(res.reason)
    for line in res.notes():  # what the memory budget changed
        print(line)
    options = {"timeout": a.timeout, "seed": a.seed, "memory_limit": a.memory_limit, "arithmetic": a.arithmetic,
               "cluster": a.cluster}
    write_outputs([("--out", a.out, lambda p: _write_text(p, results_file(res))),
                   ("--json", a.json, lambda p: dump(certificate(res, model, spec, options), p, a.json))])
    return EXIT_OK


def _run_budget(seconds: float | None, memory: int | None):
    """The one budget of a run, counted from process start (interpreter, imports, loading and a
    cluster's start included, less :data:`_EXIT_RESERVE` for writing results), or None when the user
    gave neither a time nor a memory limit."""
    if seconds is None and memory is None:
        return None
    from .verify.query import Budget

    spent = _process_age() if _FROM_CONSOLE else time.monotonic() - _T_MAIN
    left = None if seconds is None else max(seconds - spent - _EXIT_RESERVE, 1e-3)
    return Budget.of(left, label=seconds, startup=spent, memory=memory)


def _dataset_inputs(a):
    """The model, samples and domain of a data-set run (``--limit`` applied, ``--domain`` checked)."""
    from . import api
    from .verify.dataset import check_samples, read_dataset

    model = api.load_model(a.model, a.arithmetic)
    x, y = read_dataset(a.dataset)
    if a.limit is not None:
        x, y = x[: a.limit], y[: a.limit]
    domain = tuple(a.domain) if a.domain else None
    x, y = check_samples(x, y, model, a.dataset, domain)
    return model, x, y, domain


def _cmd_radius(a) -> int:
    """``--radius``: per-sample certified radii up to ``--eps`` (:mod:`certkit.verify.radius`)."""
    import numpy as np

    from .certificate import dump
    from .verify.radius import certified_radii

    model, x, y, domain = _dataset_inputs(a)
    backend = "deeppoly" if a.backend == "auto" else a.backend
    res = certified_radii(model, x, y, a.norm, a.eps, domain, backend, seed=a.seed, batch_size=a.batch_size,
                          budget=_run_budget(a.total_timeout, a.memory_limit))
    r = res.radii()
    ok = r[r == r]
    if len(ok):
        print(f"certified {a.norm} radius per sample (Lipschitz margins, then bisection with {backend}, "
              f"{res.steps} steps, up to {a.eps:g}): median {float(np.median(ok)):.4g}, min {ok.min():.4g}, "
              f"max {ok.max():.4g} ({res.timings['total']:.2f} s)")
    n = len(r)
    for eps in sorted({a.eps / 4, a.eps / 2, a.eps}):
        print(f"certified at {eps:.4g}: {res.certified_at(eps)}/{n}")
    if res.timed_out:
        print(f"time budget of {a.total_timeout:g} s used up: each radius is the one certified so far")
    broken = sum(s.upper < math.inf for s in res.samples)
    print(f"counterexamples found at some radius <= {a.eps:g}: {broken} sample(s); misclassified: {n - len(ok)}")
    write_outputs([("--json", a.json, lambda p: dump({"format": "certkit-radius/1", "model": a.model,
                                                      "sha256": model.graph.sha256, "dataset": a.dataset,
                                                      "domain": list(domain) if domain else None,
                                                      **res.to_json()}, p, a.json))])
    return EXIT_OK


def _cmd_sweep(a, radii: list[float]) -> int:
    """``--eps-sweep``: one data-set run per radius, one line each; with ``--json F``, one data-set
    certificate per radius (``F`` without its extension, ``.epsE.json``) and ``F`` the index of them."""
    from .certificate import dataset_certificate, dump
    from .verify.dataset import certify_dataset

    model, x, y, domain = _dataset_inputs(a)
    runs, outputs = [], []
    stem = os.path.splitext(a.json)[0] if a.json else ""
    total = _run_budget(a.total_timeout, a.memory_limit)  # one budget for the whole sweep
    for eps in radii:
        res = certify_dataset(model, x, y, eps, a.norm, domain, a.backend, a.batch_size,
                              progress=sys.stderr.isatty(), timeout=a.timeout, total_timeout=total, seed=a.seed)
        counts = {v: sum(s.verdict == v for s in res.samples) for v in ("verified", "falsified", "timeout", "unknown")}
        pct = 100.0 * res.certified / res.total if res.total else 0.0
        print(f"eps {eps:g}: certified {res.certified}/{res.total} ({pct:.1f}%); "
              + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" ({res.timings.get('total', 0):.2f} s)")
        if a.json:  # each radius: a data-set certificate of its own (re-checkable), listed in the index
            path = f"{stem}.eps{eps:g}.json"
            doc = dataset_certificate(res, model, a.dataset, {"batch_size": a.batch_size, "timeout": a.timeout,
                                                              "seed": a.seed, "arithmetic": a.arithmetic})
            outputs.append(("--json", path, lambda p, doc=doc, path=path: dump(doc, p, path)))
            runs.append({"eps": eps, "certified": res.certified, "total": res.total, **counts,
                         "certificate": os.path.basename(path)})
    if a.json:
        outputs.append(("--json", a.json, lambda p: dump({"format": "certkit-sweep/1", "norm": a.norm,
                                                          "backend": a.backend, "runs": runs}, p, a.json)))
    write_outputs(outputs)
    return EXIT_OK


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _eps_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--eps-sweep {text}: not a comma-separated list of numbers") from None
    if not vals or any(not (v >= 0 and math.isfinite(v)) for v in vals):
        raise UsageError(f"--eps-sweep {text}: needs finite radii >= 0")
    return vals


def _cmd_dataset(a) -> int:
    from .certificate import dataset_certificate, dump
    from .junit import write_dataset
    from .verify.dataset import certify_dataset

    if a.spec is not None:
        raise UsageError("give either SPEC.vnnlib or --dataset, not both")
    sweep = _eps_list(a.eps_sweep) if a.eps_sweep else None
    if a.junit is not None and (sweep is not None or a.radius):
        raise UsageError("--junit writes the testcases of one data-set run: not with --eps-sweep or --radius")
    if sweep is not None and (a.radius or a.eps is not None):
        raise UsageError("--eps-sweep replaces --eps (and does not combine with --radius)")
    if sweep is not None:
        return _cmd_sweep(a, sweep)
    if a.eps is None:
        raise UsageError("--dataset needs --eps E (E >= 0)" + (" as the largest radius --radius searches"
                                                              if a.radius else ""))
    if a.radius:
        return _cmd_radius(a)
    if a.out and os.path.exists(a.out) and not os.path.isdir(a.out):
        raise UsageError(f"--out {a.out}: with --dataset, --out names a folder for counterexamples, and this is a file")
    model, x, y, domain = _dataset_inputs(a)
    total = _run_budget(a.total_timeout, a.memory_limit)  # the whole run, from process start
    if a.cluster is not None:
        from .cluster import parse_cluster

        parse_cluster(a.cluster)
    res = certify_dataset(model, x, y, a.eps, a.norm, domain, a.backend, a.batch_size,
                          progress=sys.stderr.isatty(), timeout=a.timeout, total_timeout=total, seed=a.seed,
                          cluster=a.cluster)
    counts = {v: sum(s.verdict == v for s in res.samples)
              for v in ("verified", "falsified", "timeout", "unknown", "misclassified")}
    print(", ".join(f"{k}: {v}" for k, v in counts.items()) + f" ({res.timings.get('total', 0):.2f} s)")
    if a.backend == "lipschitz":
        import numpy as np

        r = [s.radius for s in res.samples if s.verdict != "misclassified" and s.radius == s.radius]
        if r:
            print(f"certified {a.norm} radius per sample (JSON per_sample.radius): "
                  f"median {float(np.median(r)):.4g}, min {min(r):.4g}, max {max(r):.4g}")
    if a.out:
        from .certificate import save_counterexamples
        n = len(save_counterexamples(res, a.out)) // 2
        print(f"{n} counterexample(s) saved in {a.out}")
    pct = 100.0 * res.certified / res.total if res.total else 0.0
    print(f"certified: {res.certified}/{res.total} ({pct:.1f}%)")
    from .verify.certify import degraded_note
    for d in res.degraded:  # what the memory budget changed
        print(degraded_note(d))
    write_outputs([("--json", a.json, lambda p: dump(dataset_certificate(res, model, a.dataset, {
        "batch_size": a.batch_size, "timeout": a.timeout, "total_timeout": a.total_timeout, "seed": a.seed,
        "memory_limit": a.memory_limit, "arithmetic": a.arithmetic, "cluster": a.cluster}),
        p, a.json)),
        ("--junit", a.junit, lambda p: write_dataset(res, p, a.model, a.dataset, out_dir=a.out, cert=a.json))])
    return EXIT_OK


def _cmd_bounds(a) -> int:
    import json

    from . import api

    model = api.load_model(a.model, a.arithmetic)
    spec = api.load_spec(a.spec, model)
    r = api.bounds(model, spec, a.backend, a.memory_limit, _run_budget(a.timeout, a.memory_limit))
    doc = {"backend": a.backend, "output_lower": r.output_lower.tolist(), "output_upper": r.output_upper.tolist(),
           "spec_lower": r.spec_lower.tolist(), "spec_owner": r.owner.tolist(),
           "methods": [m.used for m in r.methods], "degraded": r.degraded, "memory_limit": a.memory_limit,
           "arithmetic": a.arithmetic}
    for j, (lo, hi) in enumerate(zip(r.output_lower, r.output_upper)):
        print(f"Y_{j}: [{lo:.9g}, {hi:.9g}]")
    for m in r.methods:  # what the memory budget changed
        if m.degraded:
            print("note: " + m.note())
    write_outputs([("--json", a.json, lambda p: _write_text(p, json.dumps(doc, indent=1)))])
    return EXIT_OK


def _cmd_check(a) -> int:
    from .check import check_certificate
    from .errors import SpecError

    if os.path.isdir(a.certificate):
        raise SpecError(f"{a.certificate}: is a folder, not a certificate file")
    rep = check_certificate(a.certificate, a.model, a.spec, a.data, a.time_per_leaf)
    for line in rep.lines:
        print(line)
    if not rep.ok:
        print("invalid")
        return EXIT_INVALID
    if not rep.complete:
        print("not fully checked: the parts marked 'skip' were not re-derived")
        return EXIT_PARTIAL
    print(f"valid: everything re-derived in {rep.seconds:.2f} s" + (f" ({rep.leaves} proof-tree leaves)" if rep.leaves else ""))
    return EXIT_OK


def _cmd_ops(a) -> int:
    from .bounds.backends import BACKENDS
    from .graph.ops import OPS
    from .onnx.converters import CONVERTERS
    from .onnx.converters.tails import REFUSED_TAILS

    print("ONNX operators with a converter (constant subgraphs of any op are folded):")
    names = sorted(n for n in CONVERTERS if n not in REFUSED_TAILS)
    for k in range(0, len(names), 6):
        print("  " + "  ".join(f"{n:<20}" for n in names[k:k + 6]))
    print("Refused on variable tensors, with a reason (non-arithmetic output tails; folded on constants):")
    names = sorted(REFUSED_TAILS)
    for k in range(0, len(names), 6):
        print("  " + "  ".join(f"{n:<20}" for n in names[k:k + 6]))
    print()
    print("IR op x backend:")
    backends = list(BACKENDS)
    w = max(12, max(len(k) for k in OPS) + 2)
    print(f"  {'op':<{w}}" + "".join(f"{b:<20}" for b in backends))
    for kind, cls in OPS.items():
        op = _example(cls)
        marks = ["yes" if op is not None and BACKENDS[b].supports(op) else "no" for b in backends]
        print(f"  {kind:<{w}}" + "".join(f"{m:<20}" for m in marks))
    return EXIT_OK


def _example(cls):
    import dataclasses

    import numpy as np

    try:
        kw = {}
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore
                kw[f.name] = np.zeros(1) if "ndarray" in str(f.type) else ()
        return cls(**kw)
    except Exception:
        return None


#: The commands :func:`main` runs itself; the others are :data:`PLUGINS`.
_BUILTIN = {"certify": _cmd_certify, "bounds": _cmd_bounds, "ops": _cmd_ops, "check": _cmd_check}


def _preload(command: str) -> None:
    """Import torch (and for a built-in command the API) with the garbage collector paused, then
    move every object made so far out of its reach (``gc.freeze``). Only for a process that is the
    ``certkit`` command, which ends with the command: a program calling :func:`main` keeps its
    collector as it was.

    Importing torch makes about a million objects and no garbage worth collecting; collections
    during the imports, and full collections that walk those objects again later, took 0.15 s of
    a 1 s certify run and 0.35 s of a 3.5 s one (ACAS Xu; measured with ``gc.callbacks``).
    """
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        import torch  # noqa: F401
        if command in _BUILTIN:
            from . import api  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


#: ``--timeout`` counts from process start (imports included) when certkit runs as a command,
#: and from the call of :func:`main` when a program calls it with explicit arguments.
_FROM_CONSOLE = True
_T_MAIN = _T_IMPORT


def main(argv: list[str] | None = None) -> int:
    global _FROM_CONSOLE, _T_MAIN
    _FROM_CONSOLE, _T_MAIN = argv is None, time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = _parser()
    try:
        a = parser.parse_args(argv)
        _check_ranges(a)
        if a.version:
            from . import __version__
            print(f"certkit {__version__}")
            return EXIT_OK
        if a.command is None:
            parser.print_help()
            return EXIT_USAGE
        if _FROM_CONSOLE:  # a process of its own: freed tensors are reused, not unmapped (certkit.malloc)
            from .malloc import tune

            tune(dedicated=True)
            _preload(a.command)
        from .log import setup as setup_logging

        setup_logging(-1 if a.quiet else a.verbose, a.log_file)
        import torch

        from .cluster import threads_per_job

        torch.set_num_threads(threads_per_job(a.threads, 1))
        with _quiet(debug):
            if a.command in _BUILTIN:
                rc = _BUILTIN[a.command](a)
            else:
                rc = _run_plugin(a.command, a)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return rc
    except BrokenPipeError:  # stdout closed early (e.g. piped into `head -1`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_PIPE
    except CertkitError as e:
        if debug:
            traceback.print_exc()
        if _first_line_is_verdict(argv) and not isinstance(e, OutputError):  # its verdict is printed
            print("error")
        print(f"certkit: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("certkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, unless --debug
        if debug:
            traceback.print_exc()
        if _first_line_is_verdict(argv):
            print("error")
        print(f"certkit: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(rerun with --debug for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL


#: Ranges of option values, checked once after parsing for whichever command has the option
#: (``dest -> (accepts(value), what is accepted)``); the option's name is ``--`` + dest.
_RANGES = {
    "seed": (lambda v: 0 <= v <= 2**64 - 1, "an integer in [0, 2**64 - 1]"),
    "eps": (lambda v: math.isfinite(v) and v >= 0, "finite and >= 0"),
    "timeout": (lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
    "domain": (lambda v: all(map(math.isfinite, v)) and v[0] <= v[1], "finite, with LO <= HI"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "limit": (lambda v: v >= 0, ">= 0"),
    "threads": (lambda v: 1 <= v <= MAX_THREADS, f"in [1, {MAX_THREADS}] or auto"),
    "time_per_leaf": (lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
    "total_timeout": (lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
}


def _check_ranges(a: argparse.Namespace) -> None:
    """A usage error for the first option value out of its range, before anything is loaded."""
    for dest, (accepts, what) in _RANGES.items():
        v = getattr(a, dest, None)
        if v is not None and not accepts(v):
            shown = " ".join(map(str, v)) if isinstance(v, list) else v
            raise UsageError(f"--{dest.replace('_', '-')} must be {what} (got {shown})")
    outs = [p for p in (getattr(a, "out", None), getattr(a, "json", None)) if isinstance(p, str)]
    if len(outs) == 2 and os.path.realpath(outs[0]) == os.path.realpath(outs[1]) and \
            not (os.path.exists(outs[0]) and not os.path.isfile(outs[0])):  # /dev/null twice is fine
        raise UsageError(f"--out and --json name the same file ({outs[0]})")
    inputs = [getattr(a, k, None) for k in ("model", "spec", "dataset")]
    for p in outs:
        if any(isinstance(q, str) and os.path.exists(q) and os.path.realpath(q) == os.path.realpath(p) for q in inputs):
            raise UsageError(f"{p} is an input of this command: it would be overwritten")


@contextlib.contextmanager
def _quiet(debug: bool):
    """No library warnings on stderr, which holds at most the one error line: numpy's floating-point
    warnings (a model with 3e38 weights gives inf outputs, and 0 * inf in the witness check warns)
    and the libraries' Python warnings are silenced; ``--debug`` shows them."""
    if debug:
        yield
        return
    import numpy as np

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_line_is_verdict(argv: list[str]) -> bool:
    def is_dataset_flag(t: str) -> bool:  # --dataset, --dataset=F, or an abbreviation argparse accepts
        opt = t.split("=", 1)[0]
        return len(opt) >= 4 and "--dataset".startswith(opt)

    return "certify" in argv and not any(is_dataset_flag(t) for t in argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
