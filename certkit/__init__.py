"""certkit: sound verification and certification of neural networks.

Python API (the same contract as the CLI):

- :func:`load_model` / :func:`load_spec` read an ONNX model (or a torch module: :func:`from_torch`) and a
  VNN-LIB spec;
- :func:`bounds` gives output and spec bounds over the spec's first input box;
- :func:`certify` decides a spec (``unsat``/``sat``/``unknown``/``timeout``);
- :func:`certify_dataset` certifies per-sample robustness on a data set;
- :func:`lipschitz_bounds` gives a sound interval on a net's Lipschitz constant;
- :func:`fixedpoint` analyses the fixed points of a nonnegative net R^k -> R^k (paper 001).

The API names are loaded on first use (PEP 562): ``import certkit`` alone, and so
``certkit --version`` and ``certkit --help``, import neither torch nor onnx.
"""
from __future__ import annotations


def _version() -> str:
    """certkit's version, defined once: ``version`` in pyproject.toml. From a source tree (the
    pyproject.toml beside this package names certkit: a checkout, installed editable or not) that file
    is read, so an editable install never reports the version it was installed at before a bump; an
    installed wheel answers from its metadata; otherwise ``0+unknown``. Cheap: no torch, no onnx."""
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = ""
    m = re.search(r"^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if m and re.search(r'^name\s*=\s*"certkit"', m.group(1), re.M):
        v = re.search(r'^version\s*=\s*"([^"]+)"', m.group(1), re.M)
        if v:
            return v.group(1)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("certkit")
    except PackageNotFoundError:
        return "0+unknown"

from .errors import (BackendError, CertkitError, DataError, ModelError, SpecError,  # noqa: E402
                     UnsupportedOpError, UsageError)

#: The names :mod:`certkit.api` provides here, loaded on first access.
_API = ("load_model", "load_spec", "bounds", "certify", "certify_dataset", "BoundsResult", "CertifyResult",
        "DatasetResult", "from_torch", "lipschitz_bounds", "LipschitzResult", "fixedpoint", "FixedPointReport")

__all__ = ["__version__", *_API,
           "CertkitError", "ModelError", "UnsupportedOpError", "SpecError", "DataError", "BackendError",
           "UsageError"]


# ``bounds`` and ``fixedpoint`` name both an API function and a subpackage. The first import of a
# subpackage sets the package attribute of its name, which would hide __getattr__: import both
# subpackages now (their __init__s import nothing heavy) and drop the attributes, so that the names
# reach __getattr__ and mean the API functions, as they did when the API was imported eagerly.
from . import bounds, fixedpoint  # noqa: E402

del bounds, fixedpoint


def __getattr__(name: str):
    if name == "__version__":  # computed on first use, then an ordinary attribute
        global __version__
        __version__ = _version()
        return __version__
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'certkit' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
