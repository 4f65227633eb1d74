"""certkit: sound verification and certification of neural networks.

Python API (the same contract as the CLI):

- :func:`load_model` / :func:`load_spec` read an ONNX model and a VNN-LIB spec;
- :func:`bounds` gives output and spec bounds over the spec's first input box;
- :func:`certify` decides a spec (``unsat``/``sat``/``unknown``/``timeout``);
- :func:`certify_dataset` certifies per-sample robustness on a data set;
- :func:`lipschitz_bounds` gives a sound interval on a net's Lipschitz constant;
- :func:`fixedpoint` analyses the fixed points of a nonnegative net R^k -> R^k (paper 001).
"""
from __future__ import annotations

__version__ = "0.1.0"

from .api import BoundsResult, bounds, certify, certify_dataset, load_model, load_spec  # noqa: E402
from .api import LipschitzResult, lipschitz_bounds  # noqa: E402
from .api import FixedPointReport, fixedpoint  # noqa: E402
from .errors import (BackendError, CertkitError, DataError, ModelError, SpecError,  # noqa: E402
                     UnsupportedOpError, UsageError)

__all__ = ["__version__", "load_model", "load_spec", "bounds", "certify", "certify_dataset", "BoundsResult",
           "lipschitz_bounds", "LipschitzResult", "fixedpoint", "FixedPointReport",
           "CertkitError", "ModelError", "UnsupportedOpError", "SpecError", "DataError", "BackendError",
           "UsageError"]
