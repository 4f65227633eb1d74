"""certkit's pytest plugin (the ``pytest11`` entry point ``certkit``, active once certkit is installed).

Assertions, usable in any test (and outside pytest)::

    from certkit.pytest_plugin import assert_certified, assert_property   # or: from certkit.testing import ...

    def test_robust():
        assert_certified("model.onnx", "test.npz", eps=0.02, domain=(0, 1), at_least=0.9)

    def test_property():
        assert_property("model.onnx", "prop.vnnlib", timeout=60)

- :func:`assert_certified` certifies a data set (certkit's data-set mode) and fails, with a report
  naming every sample not certified and the counterexample files it wrote, when the certified
  fraction is below ``at_least``;
- :func:`assert_property` certifies a VNN-LIB spec and fails unless the verdict is ``unsat``.

Counterexamples go to ``counterexamples=`` when given, else to a folder of pytest's temporary
directory for the test (the :func:`certkit_counterexample_dir` fixture), else (outside pytest) to a
new temporary folder. Fixtures: ``certkit_model`` (loads a model once per session),
``certkit_counterexample_dir``. Marker: ``certkit_slow``, skipped with ``--certkit-skip-slow``.

Importing this module imports neither torch nor onnx (pytest loads it in every run); the
assertions import :mod:`certkit.api` when first called.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

__all__ = ["assert_certified", "assert_property"]

#: How many samples not certified a failure report lists (the result holds them all).
MAX_LISTED = 50


# -- where counterexamples go ----------------------------------------------------------------------

class _TestDir:
    """The counterexample folder of one test, made on first use under pytest's temporary directory."""

    def __init__(self, factory: pytest.TempPathFactory, name: str) -> None:
        self.factory, self.name, self._path = factory, name, None

    def path(self) -> Path:
        if self._path is None:
            self._path = self.factory.mktemp("certkit-" + re.sub(r"\W", "_", self.name)[:40], numbered=True)
        return self._path


#: The current test's folder (a stack: pytester runs a test session inside a test).
_CURRENT: list[_TestDir] = []


def _default_dir() -> Path:
    if _CURRENT:
        return _CURRENT[-1].path()
    return Path(tempfile.mkdtemp(prefix="certkit-counterexamples-"))


@pytest.fixture(autouse=True)
def _certkit_test_dir(request, tmp_path_factory):
    d = _TestDir(tmp_path_factory, request.node.name)
    _CURRENT.append(d)
    yield d
    _CURRENT.remove(d)


@pytest.fixture
def certkit_counterexample_dir(_certkit_test_dir) -> Path:
    """The folder this test's :func:`assert_certified` / :func:`assert_property` write counterexamples
    to when not given ``counterexamples=`` (under pytest's ``tmp_path_factory``)."""
    return _certkit_test_dir.path()


@pytest.fixture(scope="session")
def certkit_model():
    """A loader, ``certkit_model(source, example_input=None, arithmetic="auto")``, of certkit Models
    (:func:`certkit.api.load_model`): an ONNX path is loaded once per session; a torch module (with
    ``example_input``) is exported and checked against onnxruntime at each call."""
    cache: dict[tuple[str, str], Any] = {}

    def load(source, example_input=None, arithmetic: str = "auto"):
        from . import api

        if isinstance(source, (str, os.PathLike)):
            key = (os.path.abspath(source), arithmetic)
            if key not in cache:
                cache[key] = api.load_model(source, arithmetic)
            return cache[key]
        return api.load_model(source, arithmetic, example_input)

    return load


# -- options and markers ---------------------------------------------------------------------------------

def pytest_addoption(parser) -> None:
    group = parser.getgroup("certkit", "certkit (neural-network verification)")
    group.addoption("--certkit-skip-slow", action="store_true", default=False,
                    help="skip tests marked certkit_slow")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "certkit_slow: a slow certkit verification test (skipped with "
                                       "--certkit-skip-slow)")


def pytest_collection_modifyitems(config, items) -> None:
    if not config.getoption("certkit_skip_slow", False):
        return
    skip = pytest.mark.skip(reason="certkit_slow (--certkit-skip-slow)")
    for item in items:
        if item.get_closest_marker("certkit_slow") is not None:
            item.add_marker(skip)


# -- assertions ---------------------------------------------------------------------------------------

def _read_data(data) -> tuple[Any, Any, str]:
    """``(x, y, name)`` from an ``.npz`` path (arrays ``x``, ``y``: :func:`certkit.verify.dataset.read_dataset`)
    or an ``(x, y)`` pair."""
    if isinstance(data, (str, os.PathLike)):
        from .verify.dataset import read_dataset

        return (*read_dataset(os.fspath(data)), os.fspath(data))
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], f"(x, y) of {len(data[0]) if hasattr(data[0], '__len__') else '?'} samples"
    raise TypeError(f"data is a path to an .npz file with 'x' and 'y', or an (x, y) pair (got {type(data).__name__})")


def _load(model, example_input):
    from . import api

    return api.load_model(model, example_input=example_input)


def assert_certified(model, data, eps: float, norm: str = "linf", at_least: float = 0.95, backend: str = "auto",
                     domain: tuple[float, float] | None = None, timeout: float | None = None,
                     counterexamples: str | os.PathLike | None = None, *, example_input=None,
                     batch_size: int = 32, seed: int = 0):
    """Certify every sample of ``data`` at radius ``eps`` (certkit's data-set mode:
    :func:`certkit.api.certify_dataset`) and raise ``AssertionError`` when the certified fraction
    (misclassified samples count as not certified) is below ``at_least``.

    ``model``: an ONNX path, a certkit Model, or a ``torch.nn.Module`` (exported with the first sample,
    or ``example_input``, and checked against onnxruntime: :func:`certkit.api.from_torch`). ``data``:
    an ``.npz`` path with ``x`` and ``y``, or an ``(x, y)`` pair; samples outside ``domain`` are a
    DataError, as on the command line. ``timeout``: seconds per sample. The report names the
    fraction, the threshold and every sample not certified (index, label, verdict); falsified
    samples' counterexamples are written (``sample_<i>.npz`` and ``sample_<i>.counterexample``,
    :func:`certkit.certificate.save_counterexamples`) to ``counterexamples`` -- always, when given --
    or, on failure, to the test's folder under pytest's temporary directory. Returns the
    :class:`certkit.api.DatasetResult`."""
    __tracebackhide__ = True
    import numpy as np

    from . import api
    from .certificate import save_counterexamples
    from .errors import UsageError
    from .verify.dataset import check_samples

    if not 0.0 <= at_least <= 1.0:
        raise UsageError(f"at_least is a fraction in [0, 1] (got {at_least}; for {at_least}% write "
                         f"{at_least / 100:g})")
    x, y, where = _read_data(data)
    m = _load(model, np.asarray(x)[:1] if example_input is None else example_input)
    x, y = check_samples(x, y, m, where, domain)
    res = api.certify_dataset(m, x, y, eps, norm, domain, backend, batch_size, timeout=timeout, seed=seed)
    failed = res.fraction < at_least
    written: dict[int, str] = {}
    folder = None
    if counterexamples is not None or (failed and res.counts["falsified"]):
        folder = Path(counterexamples) if counterexamples is not None else _default_dir()
        for p in save_counterexamples(res, str(folder)):
            if p.endswith(".npz"):
                written[int(os.path.basename(p)[len("sample_"):-len(".npz")])] = p
    if not failed:
        return res
    raise AssertionError(_dataset_report(res, m, where, at_least, domain, written, folder))


def _dataset_report(res, model, where: str, at_least: float, domain, written: dict[int, str], folder) -> str:
    dom = f", domain [{domain[0]:g}, {domain[1]:g}]" if domain else ""
    lines = [f"certkit: certified {res.certified}/{res.total} ({100 * res.fraction:.1f}%) is below at_least "
             f"{100 * at_least:.1f}%",
             f"  model {model!r}",
             f"  data {where}, eps {res.eps:g} ({res.norm}){dom}, backend {res.backend}, "
             f"{res.timings.get('total', 0.0):.1f} s",
             "  " + ", ".join(f"{v} {n}" for v, n in res.counts.items()),
             f"not certified ({len(res.not_certified())} samples):"]
    missed = res.not_certified()
    for s in missed[:MAX_LISTED]:
        line = f"  sample {s.index} (label {s.label}): {s.verdict}"
        if s.verdict == "falsified" and s.index in written:
            line += f", counterexample {written[s.index]}"
        elif s.verdict in ("unknown", "timeout") and s.margin_lower == s.margin_lower:
            line += f" (margin lower bound {s.margin_lower:.4g})"
        lines.append(line)
    if len(missed) > MAX_LISTED:
        lines.append(f"  ... and {len(missed) - MAX_LISTED} more (the result's not_certified() lists them all)")
    if written:
        lines.append(f"counterexamples (x as the model reads it, onnxruntime's output y, label) in {folder}; "
                     "VNN-COMP format beside them (.counterexample)")
    return "\n".join(lines)


def assert_property(model, spec, timeout: float | None = None, backend: str = "auto", *,
                    counterexamples: str | os.PathLike | None = None, example_input=None, seed: int = 0):
    """Certify the VNN-LIB ``spec`` (a path or a Spec) on ``model`` (as in :func:`assert_certified`;
    a torch module needs ``example_input``) and raise ``AssertionError`` unless the verdict is
    ``unsat`` (the property holds). For ``sat`` the report names the counterexample file it wrote,
    ``<spec name>.counterexample`` (VNN-COMP format) beside ``<spec name>.npz`` (``x``, ``y``), in
    ``counterexamples`` or the test's folder under pytest's temporary directory; for ``unknown`` and
    ``timeout`` the reason. Returns the :class:`certkit.api.CertifyResult`."""
    __tracebackhide__ = True
    import numpy as np

    from . import api
    from .certificate import results_file

    m = _load(model, example_input)
    s = api.load_spec(spec, m) if isinstance(spec, (str, os.PathLike)) else spec
    name = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else (getattr(s, "path", "") or "<spec>")
    res = api.certify(m, s, backend, timeout, seed)
    if res.verdict == "unsat":
        return res
    what = {"sat": "the property is violated", "timeout": "not decided in time",
            "unknown": "not proven"}.get(res.verdict, "")
    lines = [f"certkit: verdict {res.verdict} for {name} ({what}; expected unsat)",
             f"  model {m!r}",
             f"  backend {res.backend}{', stage ' + res.stage if res.stage else ''}, "
             f"{res.timings.get('total', 0.0):.1f} s"]
    if res.witness is not None:
        folder = Path(counterexamples) if counterexamples is not None else _default_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stem = os.path.splitext(os.path.basename(name))[0] or "property"
        path = folder / f"{stem}.counterexample"
        path.write_text(results_file(res))
        w = res.witness
        np.savez(folder / f"{stem}.npz", x=np.asarray(w.x), y=np.asarray(w.y), property=w.property_index,
                 disjunct=w.disjunct_index)
        lines.append(f"counterexample {path} (input box {w.property_index}, disjunct {w.disjunct_index}, "
                     f"confirmed with onnxruntime; x and y also in {folder / (stem + '.npz')})")
    elif res.reason:
        lines.append(f"  {res.reason}")
    raise AssertionError("\n".join(lines))
