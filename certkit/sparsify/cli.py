"""``certkit sparsify``: verification-friendly nets by the VNN LP (paper 002).

    certkit sparsify MODEL.onnx --data VAL.npz -o OUT.onnx [--eps E] [--eps-mode relative|additive]
        [--margin M] [--downstream] [--layers all|1,2,...] [--solver highs|gurobi] [--fallback stop|highs]
        [--threads N] [--json REPORT.json] [--test TEST.npz] [--method lp|mbp --sparsity S]
        [--verify-eps 0.01,0.02 --domain LO HI --verify-backend deeppoly]

Exit codes: 0 the net was written and the validation check passed (for ``--method mbp``:
written); 1 written but the check failed (a bug or a numerical problem: the report says
where); the usual 2-5 for bad arguments, models, data and solvers.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..cli_paths import output_path
from ..errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX ReLU net")
    p.add_argument("--data", required=True, help="validation set .npz (x: (N, *input shape), y: (N,))")
    p.add_argument("-o", "--out", required=True, type=output_path, help="where to write the sparsified ONNX net")
    p.add_argument("--eps", type=float, default=0.0, help="closeness of the new outputs (default 0: exact)")
    p.add_argument("--eps-mode", choices=("relative", "additive"), default="relative",
                   help="relative: (1-eps) z <= z~ <= (1+eps) z on every pre-activation (public code, Fig. 4; "
                        "default); additive: |relu(z~) - relu(z)| <= eps (eq. 5)")
    p.add_argument("--margin", type=float, default=0.0,
                   help="with --downstream: logit margin M of the predicted class (eq. 11), capped at the "
                        "original margin")
    p.add_argument("--downstream", action="store_true",
                   help="also keep every later ReLU state and the predicted class (eq. 11): one coupled LP "
                        "per layer (implied, and skipped, when eps = 0)")
    p.add_argument("--all-samples", action="store_true",
                   help="constrain every validation sample, misclassified ones included (their predicted "
                        "class kept), not only the correctly classified ones (the paper's choice)")
    p.add_argument("--layers", default="all", help="'all' or 1-based ReLU layer numbers, e.g. 1,2")
    p.add_argument("--solver", default="highs", help="LP solver: highs (default) or gurobi")
    p.add_argument("--fallback", choices=("stop", "highs"), default="stop",
                   help="when Gurobi is missing or its licence too small: stop (default) or use HiGHS")
    p.add_argument("--lp-method", choices=("auto", "simplex", "ipm"), default="auto",
                   help="LP algorithm: auto (default: dual simplex, interior point with crossover for LPs "
                        "of 40000 columns or more), simplex, ipm")
    p.add_argument("--time-limit", type=float, help="seconds per LP (default: none)")
    p.add_argument("--threads", dest="lp_threads", type=int, default=2,
                   help="processes for the per-neuron LPs (default 2)")
    p.add_argument("--json", type=output_path, help="write the report as JSON")
    p.add_argument("--test", help="test set .npz: accuracy before/after (and --verify-eps)")
    p.add_argument("--method", choices=("lp", "mbp"), default="lp",
                   help="lp: the VNN LP (default); mbp: magnitude-based pruning to --sparsity")
    p.add_argument("--sparsity", type=float, help="with --method mbp: fraction of zeros per layer")
    p.add_argument("--verify-eps", help="comma list of L_inf radii: certify the test set on the original "
                                        "and the sparsified net (paper 002, Table 1)")
    p.add_argument("--domain", type=float, nargs=2, metavar=("LO", "HI"),
                   help="input domain the balls are clipped to (default: [0, 1] when every sample lies in it)")
    p.add_argument("--verify-backend", default="deeppoly", help="certify backend for --verify-eps")


def _eps_list(text: str) -> list[float]:
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--verify-eps: expected comma-separated numbers, got '{text}'") from None
    if not out or any(not e >= 0 for e in out):
        raise UsageError(f"--verify-eps: expected radii >= 0, got '{text}'")
    return out


def run_cli(a: argparse.Namespace) -> int:
    import numpy as np

    from ..model import load_model
    from ..verify.dataset import load_dataset
    from .core import sparsify
    from .export import export_onnx
    from .lp import LpOptions
    from .mbp import prune
    from .report import format_report, report_json
    from .solve import SolverOptions

    if a.method == "mbp" and a.sparsity is None:
        raise UsageError("--method mbp needs --sparsity S (the fraction of zeros per layer)")
    if a.method == "lp" and a.sparsity is not None:
        raise UsageError("--sparsity goes with --method mbp")
    eps_list = _eps_list(a.verify_eps) if a.verify_eps else None
    if eps_list and not a.test:
        raise UsageError("--verify-eps needs --test TEST.npz")
    model = load_model(a.model)
    xv, yv = load_dataset(a.data, model)
    test = load_dataset(a.test, model) if a.test else None
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if a.method == "mbp":
        res = prune(model.graph, xv, yv, a.sparsity, a.layers, test)
    else:
        res = sparsify(model.graph, xv, yv, a.layers, LpOptions(a.eps, a.eps_mode, a.margin, a.downstream),
                       SolverOptions(a.solver, a.fallback, a.lp_threads, a.time_limit, a.lp_method), test, log,
                       a.all_samples)
    export_onnx(res.graph, a.out)
    new = load_model(a.out)
    ort = new.runner(xv.astype(np.float32))
    diff = float(np.abs(ort - res.graph(xv)).max()) if len(xv) else 0.0
    same = int(np.count_nonzero(ort.argmax(1) == res.graph(xv).argmax(1)))
    print(format_report(res))
    print(f"wrote {a.out}: onnxruntime matches the in-memory net to {diff:.2e} (max |logit difference|), "
          f"same prediction on {same}/{len(xv)} validation samples")
    extra = {"model": a.model, "out": a.out, "method": a.method,
             "options": {"eps": a.eps, "eps_mode": a.eps_mode, "margin": a.margin, "downstream": a.downstream,
                         "layers": a.layers, "all_samples": a.all_samples, "solver": a.solver, "fallback": a.fallback, "threads": a.lp_threads,
                         "lp_method": a.lp_method, "time_limit": a.time_limit,
                         "sparsity": a.sparsity},
             "onnxruntime": {"max_abs_diff": diff, "same_predictions": same, "samples": len(xv)}}
    if eps_list:
        from .table import format_table, verify_table

        domain = tuple(a.domain) if a.domain else None
        if domain is None and xv.min() >= 0 and xv.max() <= 1 and test[0].min() >= 0 and test[0].max() <= 1:
            domain = (0.0, 1.0)
            print("verification domain [0, 1] (every sample lies in it; set --domain to change)")
        rows = verify_table(model, new, test[0], test[1], eps_list, domain, a.verify_backend)
        print(format_table(rows))
        extra["verify"] = {"backend": a.verify_backend, "domain": domain,
                           "rows": [r.__dict__ for r in rows]}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report_json(res, extra), f, indent=1)
    return 0 if (a.method == "mbp" or res.check.ok) else 1
