"""Lipschitz constants of networks as sound intervals ``[lower, upper]`` (DESIGN.md section 4).

:func:`lipschitz_bounds` (in :mod:`certkit.lipschitz.bounds`) runs the upper-bound methods of
:mod:`certkit.lipschitz.methods` (``nonneg``, ``abba``, ``separable``, ``signed``, ``sdp``) and the
sampled lower bound of :mod:`certkit.lipschitz.lower`, and returns a :class:`LipschitzResult`.

The names below are loaded on first use (PEP 562), so that importing a module of this package
(the ``certkit lipschitz`` and ``certkit abba`` command lines declare their arguments on every
start of ``certkit``) does not import torch.
"""
from __future__ import annotations

__all__ = ["lipschitz_bounds", "LipschitzResult", "MethodResult", "NotApplicable", "parse_norm",
           "AUTO_METHODS"]


def __getattr__(name: str):
    if name in __all__:
        from . import bounds

        return getattr(bounds, name)
    raise AttributeError(f"module 'certkit.lipschitz' has no attribute '{name}'")
