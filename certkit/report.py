"""``certkit report RESULTS... [--out DIR] [--format png|svg] [--reference-column COL ...]``.

Plots and a self-contained HTML page from the results of earlier runs:

* ``certkit bench --out`` CSVs: a **cactus plot** (instances solved within a time, one line per CSV;
  a row counts when its verdict is ``sat``/``unsat`` and not wrong), with a line per reference column
  (default ``abcrown_time_s`` where a CSV has it; a row counts when the published time is within the
  row's timeout as run);
* data-set certificates (``certkit certify --dataset ... --json``), index files of ``--eps-sweep``
  (their certificates are read) and ``--radius`` JSONs: **certified accuracy vs radius**. Runs of the
  same model, data, norm, backend and sample count at several radii form one curve; per-sample
  certified radii (``per_sample.radius`` of ``--backend lipschitz``, ``--radius`` JSONs) give a full
  step curve; counterexamples give an upper bound on robust accuracy, ``1 - (falsified +
  misclassified) / N``, a sample broken at one radius counting as broken at every larger one (runs of
  every backend pooled; ``--radius`` JSONs: the radius of the counterexample found). A **histogram of
  the per-sample radii** where there are any.

``index.html`` embeds every image (base64) and links the image files, with summary tables. matplotlib
(the ``report`` extra) is imported only to draw, with the Agg canvas; without it the command says
what to install (exit 5). A missing or unreadable input, or one of no known format, is a usage error
naming the file (exit 2).
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field

#: figure size in inches and resolution: every PNG is FIGSIZE * DPI pixels (no tight bounding box)
FIGSIZE, DPI = (8.0, 5.0), 100
#: the files written into --out (those with nothing to show are left out)
CACTUS, ACCURACY, HISTOGRAM, INDEX = "cactus", "certified_accuracy", "radius_histogram", "index.html"
_BENCH_NEED = ("benchmark", "onnx", "vnnlib", "timeout", "verdict", "time_s", "wrong")
_HINT = "pip install 'certkit[report]' (or pip install matplotlib)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="certkit bench results CSVs and/or data-set JSONs (certify --dataset --json, the index "
                        "of --eps-sweep, --radius)")
    p.add_argument("--out", default="report", metavar="DIR", help="folder for the images and index.html "
                                                                   "(default report/; created if needed)")
    p.add_argument("--format", default="png", choices=("png", "svg"), help="image format (default png)")
    p.add_argument("--reference-column", action="append", dest="reference_columns", metavar="COL",
                   help="a column of published times to draw in the cactus plot (repeatable; default "
                        "abcrown_time_s where a CSV has it)")


# --------------------------------------------------------------------------------------------- reading

@dataclass
class BenchCSV:
    path: str
    label: str
    rows: list[dict]
    columns: list[str]


@dataclass
class DatasetRun:
    """One data-set certificate (one radius)."""

    path: str
    model: str  # the model file's name
    key: tuple  # model sha, data sha, norm, backend, sample count, domain
    norm: str
    backend: str
    eps: float
    total: int
    counts: dict[str, int]
    seconds: float
    radius: dict[int, float] = field(default_factory=dict)  # per-sample certified radius (lipschitz)
    falsified: set[int] = field(default_factory=set)
    misclassified: set[int] = field(default_factory=set)


@dataclass
class RadiusRun:
    """A ``certify --dataset --radius`` JSON: per-sample certified radii and counterexample radii."""

    path: str
    model: str
    key: tuple
    norm: str
    backend: str
    eps_max: float
    total: int
    radius: dict[int, float]
    upper: dict[int, float]
    misclassified: set[int]
    seconds: float


def _bad(path: str, why: str):
    from .errors import UsageError

    return UsageError(f"{path}: {why}")


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise _bad(path, "no such file")
    if os.path.isdir(path):
        raise _bad(path, "is a folder, not a results file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            import gzip

            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"cannot read it: {getattr(e, 'strerror', None) or e}") from None


def read_inputs(paths: list[str]) -> tuple[list[BenchCSV], list[DatasetRun], list[RadiusRun]]:
    """Every input, by its content: a JSON object (data-set certificate, sweep index, radius JSON) or
    a bench results CSV. Raises UsageError naming the file."""
    benches, runs, radii = [], [], []
    for path in paths:
        text = _read_text(path)
        if text.lstrip().startswith(("{", "[")):
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise _bad(path, f"not valid JSON ({e})") from None
            _read_json(path, doc, runs, radii, seen=set())
        else:
            benches.append(_read_bench(path, text))
    labels = [b.label for b in benches]
    for b in benches:  # same file names in different folders: the path tells them apart
        if labels.count(b.label) > 1:
            b.label = os.path.normpath(b.path)
    return benches, runs, radii


def _read_bench(path: str, text: str) -> BenchCSV:
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except csv.Error as e:
        raise _bad(path, f"not a readable CSV ({e})") from None
    missing = [c for c in _BENCH_NEED if c not in columns]
    if missing:
        raise _bad(path, "unknown format: neither a certkit bench results CSV (missing column(s) "
                         f"{', '.join(missing)}) nor a data-set JSON")
    rows = [r for r in rows if r.get("verdict")]
    for n, r in enumerate(rows, 2):
        try:
            float(r["time_s"]), float(r["timeout"])
        except ValueError:
            raise _bad(path, f"row {n}: time_s or timeout is not a number") from None
    label = os.path.splitext(os.path.basename(path))[0]
    return BenchCSV(path, label, rows, columns)


def _read_json(path: str, doc, runs: list, radii: list, seen: set) -> None:
    if not isinstance(doc, dict):
        raise _bad(path, "unknown format: a JSON that is not an object")
    fmt = str(doc.get("format", ""))
    try:
        if fmt.startswith("certkit-sweep"):  # the index of --eps-sweep: its certificates
            real = os.path.realpath(path)
            if real in seen:
                raise _bad(path, "the sweep index lists itself")
            for r in doc["runs"]:
                sub = os.path.join(os.path.dirname(path), r["certificate"])
                try:
                    sub_doc = json.loads(_read_text(sub))
                except ValueError as e:
                    raise _bad(sub, f"not valid JSON ({e})") from None
                _read_json(sub, sub_doc, runs, radii, seen | {real})
        elif fmt.startswith("certkit-radius"):
            radii.append(_radius_run(path, doc))
        elif "per_sample" in doc and "eps" in doc:
            runs.append(_dataset_run(path, doc))
        elif "verdict" in doc:
            raise _bad(path, "a certificate of a VNN-LIB spec: certkit report reads bench CSVs and data-set JSONs")
        else:
            raise _bad(path, "unknown format: neither a data-set certificate (no per_sample and eps) nor a bench CSV")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _bad(path, f"a field is missing or of the wrong kind ({type(e).__name__}: {e})") from None


def _num(v) -> float:
    if v is None:
        return math.nan
    if v == "inf":
        return math.inf
    return float(v)


def _dataset_run(path: str, doc: dict) -> DatasetRun:
    per = doc["per_sample"]
    counts = {v: 0 for v in ("verified", "falsified", "unknown", "timeout", "misclassified")}
    run = DatasetRun(path=path, model=os.path.basename(str(doc["model"]["path"])), key=(), norm=str(doc["norm"]),
                     backend=str(doc["backend"]), eps=float(doc["eps"]), total=int(doc.get("total", len(per))),
                     counts=counts, seconds=float(doc.get("timings", {}).get("total", 0.0)))
    for s in per:
        i, v = int(s["index"]), str(s["verdict"])
        counts[v] = counts.get(v, 0) + 1
        if v == "falsified":
            run.falsified.add(i)
        elif v == "misclassified":
            run.misclassified.add(i)
        if "radius" in s and v != "misclassified":
            r = _num(s["radius"])
            run.radius[i] = math.inf if s["radius"] is None else r  # None: an infinite radius (JSON has no inf)
    domain = doc.get("domain")
    run.key = (doc["model"].get("sha256"), (doc.get("data") or {}).get("sha256"), run.norm, run.backend, run.total,
               tuple(domain) if domain else None)
    return run


def _radius_run(path: str, doc: dict) -> RadiusRun:
    per = doc["per_sample"]
    radius, upper, mis = {}, {}, set()
    for s in per:
        i, r = int(s["index"]), _num(s["radius"])
        if r != r:  # no radius: misclassified
            mis.add(i)
            continue
        radius[i], upper[i] = r, _num(s.get("upper", "inf"))
    model = str(doc.get("model", "model"))
    return RadiusRun(path=path, model=os.path.basename(model), key=(doc.get("sha256"), doc.get("dataset")),
                     norm=str(doc["norm"]), backend=str(doc["backend"]), eps_max=float(doc["eps_max"]),
                     total=len(per), radius=radius, upper=upper, misclassified=mis,
                     seconds=float((doc.get("timings") or {}).get("total", 0.0)))


# --------------------------------------------------------------------------------------------- series

def solved_times(rows: list[dict]) -> list[float]:
    """The times of the rows solved (``sat``/``unsat`` and not wrong), sorted."""
    return sorted(float(r["time_s"]) for r in rows if r["verdict"] in ("sat", "unsat") and r.get("wrong") != "1")


def reference_times(rows: list[dict], column: str) -> list[float]:
    """The published times of ``column`` within each row's timeout as run, sorted."""
    out = []
    for r in rows:
        try:
            t = float(r.get(column) or "nan")
        except ValueError:
            continue
        if t == t and t <= float(r["timeout"]):
            out.append(t)
    return sorted(out)


def run_groups(runs: list[DatasetRun]) -> dict[tuple, list[DatasetRun]]:
    """Runs of the same model, data, norm, backend, sample count and domain, by radius."""
    groups: dict[tuple, list[DatasetRun]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    return {k: sorted(v, key=lambda r: r.eps) for k, v in groups.items()}


def attack_bound(runs: list[DatasetRun]) -> list[tuple[float, float]]:
    """``(eps, upper bound on robust accuracy)`` over runs of one model, data, norm and sample count
    (any backend): a sample falsified at some radius <= eps, or misclassified, is not robust at eps."""
    total = runs[0].total
    out = []
    for eps in sorted({r.eps for r in runs}):
        broken = set()
        for r in runs:
            broken |= r.misclassified
            if r.eps <= eps:
                broken |= r.falsified
        out.append((eps, 1.0 - len(broken) / total if total else 0.0))
    return out


def _step_curve(values: list[float], total: int, x_max: float, strict: bool = False) -> tuple[list, list]:
    """The fraction of ``total`` whose value is >= r (``strict``: > r) for r in [0, x_max], as the
    corners of a ``where="post"`` step plot: just after each value v the count drops by those equal
    to v (a radius v still certifies the ball of radius v; a counterexample at distance v breaks it)."""
    xs = sorted(v for v in values if v == v)
    frac = (lambda k: k / total) if total else (lambda k: 0.0)
    pts_x = [0.0]
    pts_y = [frac(sum(v > 0 for v in xs) if strict else len(xs))]
    for v in sorted(set(xs)):
        if 0 < v < x_max:  # a value at x_max (a search's cap) holds up to the end
            pts_x.append(v)
            pts_y.append(frac(sum(u > v for u in xs)))
    pts_x.append(x_max)
    pts_y.append(pts_y[-1])
    return pts_x, pts_y


# --------------------------------------------------------------------------------------------- drawing

def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        if (getattr(e, "name", None) or "matplotlib").split(".")[0] != "matplotlib":
            raise
        from .errors import BackendError

        raise BackendError(f"certkit report needs the package 'matplotlib': {_HINT}") from None
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, folder: str, stem: str, fmt: str) -> str:
    from .cli_paths import write_file

    name = f"{stem}.{fmt}"
    fig.tight_layout()
    write_file(os.path.join(folder, name), lambda p: fig.savefig(p, format=fmt, dpi=DPI))
    return name


def cactus(benches: list[BenchCSV], columns: list[str], folder: str, fmt: str) -> str | None:
    series = [(b.label, solved_times(b.rows), "-") for b in benches]
    seen: dict[tuple, str] = {}
    for col in columns:
        for b in benches:
            if col not in b.columns:
                continue
            key = (col, tuple(sorted((r["onnx"], r["vnnlib"], r.get(col, ""), r["timeout"]) for r in b.rows)))
            if key in seen:  # the same reference rows in another CSV: drawn once
                continue
            seen[key] = b.label
            series.append((f"{col} ({b.label})", reference_times(b.rows, col), "--"))
    if not any(t for _, t, _ in series):
        return None
    fig, ax = _figure()
    t_min = min([t[0] for _, t, _ in series if t] + [1.0])
    floor = max(min(t_min, 1.0) / 2, 1e-3)
    end = max(t[-1] for _, t, _ in series if t) * 1.5
    for label, times, style in series:  # each line runs on to the right end at its final count
        xs = [floor] + [max(t, floor) for t in times] + [end]
        ax.step(xs, list(range(len(times) + 1)) + [len(times)], where="post", linestyle=style,
                label=f"{label}: {len(times)}")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xscale("log")
    ax.set_xlabel("time per instance (s)")
    ax.set_ylabel("instances solved within that time")
    ax.set_title("cactus plot")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, folder, CACTUS, fmt)


def accuracy(runs: list[DatasetRun], radii: list[RadiusRun], folder: str, fmt: str) -> str | None:
    if not runs and not radii:
        return None
    fig, ax = _figure()
    x_max = max([r.eps for r in runs] + [r.eps_max for r in radii] + [0.0])
    full = [v for r in runs for v in r.radius.values() if math.isfinite(v)] + \
           [v for r in radii for v in r.radius.values() if math.isfinite(v)]
    x_max = max([x_max] + full) or 1.0
    norms = {r.norm for r in runs} | {r.norm for r in radii}
    for key, group in run_groups(runs).items():
        first = group[0]
        name = f"{first.model} {first.backend} ({first.norm}, N={first.total})"
        eps = [r.eps for r in group]
        acc = [r.counts.get("verified", 0) / r.total if r.total else 0.0 for r in group]
        line, = ax.plot(eps, acc, marker="o", label=f"{name}: certified")
        rad: dict[int, float] = {}
        for r in group:
            for i, v in r.radius.items():
                rad[i] = max(v, rad.get(i, -math.inf))
        if rad:
            xs, ys = _step_curve(list(rad.values()), first.total, x_max)
            ax.step(xs, ys, where="post", color=line.get_color(), alpha=0.6, label=f"{name}: per-sample radius")
    attacks: dict[tuple, list[DatasetRun]] = {}
    for r in runs:
        attacks.setdefault((r.key[0], r.key[1], r.norm, r.total, r.key[5]), []).append(r)
    for group in attacks.values():
        pts = attack_bound(group)
        if pts:
            g = group[0]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], drawstyle="steps-post", linestyle=":", marker="x",
                    label=f"PGD upper bound ({g.model}, {g.norm}, N={g.total})")
    for r in radii:
        name = f"{r.model} {r.backend} ({r.norm}, N={r.total}, --radius)"
        xs, ys = _step_curve(list(r.radius.values()), r.total, r.eps_max)  # radii are searched up to eps_max
        line, = ax.step(xs, ys, where="post", label=f"{name}: certified radius")
        xs, ys = _step_curve(list(r.upper.values()), r.total, x_max, strict=True)
        ax.step(xs, ys, where="post", linestyle=":", color=line.get_color(),
                label=f"{name}: counterexample radius (upper bound)")
    ax.set_xlabel(f"radius ({', '.join(sorted(norms))})")
    ax.set_ylabel("fraction of the samples")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, x_max * 1.02)
    ax.set_title("certified accuracy vs radius")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize="x-small")
    return _save(fig, folder, ACCURACY, fmt)


def histogram(runs: list[DatasetRun], radii: list[RadiusRun], folder: str, fmt: str) -> str | None:
    sets = []
    for key, group in run_groups(runs).items():
        rad: dict[int, float] = {}
        for r in group:
            for i, v in r.radius.items():
                rad[i] = max(v, rad.get(i, -math.inf))
        vals = [v for v in rad.values() if math.isfinite(v)]
        if vals:
            g = group[0]
            sets.append((f"{g.model} {g.backend} ({g.norm})", vals))
    for r in radii:
        vals = [v for v in r.radius.values() if math.isfinite(v)]
        if vals:
            sets.append((f"{r.model} {r.backend} ({r.norm}, --radius)", vals))
    if not sets:
        return None
    fig, ax = _figure()
    hi = max(max(v) for _, v in sets)
    bins = [hi * k / 30 for k in range(31)] if hi > 0 else 10
    for label, vals in sets:
        ax.hist(vals, bins=bins, histtype="step", linewidth=1.5, label=f"{label}: {len(vals)} samples")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("certified radius per sample")
    ax.set_ylabel("samples")
    ax.set_title("per-sample certified radius")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, folder, HISTOGRAM, fmt)


# --------------------------------------------------------------------------------------------- the page

def _table(head: list, rows: list[list]) -> str:
    e = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in r) + "</tr>" for r in rows]
    return "\n".join(out + ["</table>"])


def page(images: list[tuple[str, str]], benches: list[BenchCSV], runs: list[DatasetRun], radii: list[RadiusRun],
         folder: str, fmt: str) -> str:
    from .bench import stats_table

    e = html.escape
    mime = "image/png" if fmt == "png" else "image/svg+xml"
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>certkit report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             "<h1>certkit report</h1>"]
    for name, title in images:
        with open(os.path.join(folder, name), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        parts.append(f"<figure><a href=\"{e(name)}\"><img src=\"data:{mime};base64,{data}\" alt=\"{e(title)}\"></a>"
                     f"<figcaption>{e(title)} (<a href=\"{e(name)}\">{e(name)}</a>)</figcaption></figure>")
    for b in benches:
        head, body = stats_table(b.rows) if b.rows else (("benchmark",), [])
        parts.append(f"<h2>bench: {e(b.path)}</h2>")
        parts.append(_table(list(head), [list(r) for r in body]))
    if runs:
        parts.append("<h2>data sets</h2>")
        rows = []
        ub = {}
        attacks: dict[tuple, list[DatasetRun]] = {}
        for r in runs:
            attacks.setdefault((r.key[0], r.key[1], r.norm, r.total, r.key[5]), []).append(r)
        for group in attacks.values():
            for r in group:
                ub[id(r)] = dict(attack_bound(group))[r.eps]
        for r in sorted(runs, key=lambda r: (r.model, r.backend, r.norm, r.eps)):
            c = r.counts
            med = [v for v in r.radius.values() if math.isfinite(v)]
            rows.append([r.path, r.model, r.backend, r.norm, f"{r.eps:g}", r.total, c.get("verified", 0),
                         c.get("falsified", 0), c.get("unknown", 0), c.get("timeout", 0), c.get("misclassified", 0),
                         f"{100.0 * c.get('verified', 0) / r.total:.1f}%" if r.total else "-",
                         f"{100.0 * ub[id(r)]:.1f}%", f"{statistics.median(med):.4g}" if med else "-",
                         f"{r.seconds:.2f}"])
        parts.append(_table(["file", "model", "backend", "norm", "eps", "N", "verified", "falsified", "unknown",
                             "timeout", "misclassified", "certified", "PGD upper bound", "median radius",
                             "time_s"], rows))
    if radii:
        parts.append("<h2>per-sample radii (--radius)</h2>")
        rows = []
        for r in radii:
            med = [v for v in r.radius.values() if math.isfinite(v)]
            rows.append([r.path, r.model, r.backend, r.norm, f"{r.eps_max:g}", r.total, len(r.misclassified),
                         f"{statistics.median(med):.4g}" if med else "-",
                         sum(math.isfinite(u) for u in r.upper.values()), f"{r.seconds:.2f}"])
        parts.append(_table(["file", "model", "backend", "norm", "up to", "N", "misclassified", "median radius",
                             "counterexamples", "time_s"], rows))
    parts.append("<p>Cactus plot: a bench row counts as solved when its verdict is sat or unsat and not wrong; a "
                 "reference column counts a row when its published time is within the row's timeout as run. "
                 "PGD upper bound: 1 - (falsified + misclassified) / N, a sample falsified at a radius counting "
                 "as broken at every larger one (runs of every backend pooled).</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------- the CLI

def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def run_cli(a) -> int:
    from .cli_paths import write_file
    from .errors import UsageError

    benches, runs, radii = read_inputs(a.results)
    columns = a.reference_columns
    if columns:
        absent = [c for c in columns if not any(c in b.columns for b in benches)]
        if absent:
            raise UsageError(f"--reference-column {absent[0]}: no input CSV has this column")
    else:
        from .bench import REFERENCE

        columns = [REFERENCE] if any(REFERENCE in b.columns for b in benches) else []
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise UsageError(f"--out {a.out}: is a file; --out names a folder")
    _figure()  # matplotlib missing: say so before anything is written
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {a.out}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(a.out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {a.out}: no write permission")
    images = []
    for title, name in (("cactus plot", cactus(benches, columns, a.out, a.format)),
                        ("certified accuracy vs radius", accuracy(runs, radii, a.out, a.format)),
                        ("per-sample certified radius", histogram(runs, radii, a.out, a.format))):
        if name is not None:
            images.append((name, title))
    text = page(images, benches, runs, radii, a.out, a.format)
    write_file(os.path.join(a.out, INDEX), lambda p: _write_text(p, text))
    for b in benches:
        print(f"{b.path}: {len(solved_times(b.rows))}/{len(b.rows)} solved")
    for r in sorted(runs, key=lambda r: (r.model, r.backend, r.eps)):
        print(f"{r.path}: {r.model} {r.backend} {r.norm} eps {r.eps:g}: certified "
              f"{r.counts.get('verified', 0)}/{r.total}")
    for name, _ in images:
        print(f"wrote {os.path.join(a.out, name)}")
    print(f"wrote {os.path.join(a.out, INDEX)}")
    return 0
