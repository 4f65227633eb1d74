"""Fixed points of nonnegative nets (paper 001): ``certkit fixedpoint``.

The names below live in :mod:`certkit.fixedpoint.analysis` and are loaded on first use (PEP 562),
so that the command line declares its arguments without importing torch.
"""
from __future__ import annotations

__all__ = ["FixedPointReport", "analyse", "perron_bounds"]


def __getattr__(name: str):
    if name in __all__:
        from . import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'certkit.fixedpoint' has no attribute '{name}'")
