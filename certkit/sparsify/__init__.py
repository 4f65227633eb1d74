"""Verification-friendly networks by the VNN linear program (paper 002; DESIGN.md section 7).

``sparsify(graph, x_val, y_val, ...)`` re-solves each chosen ReLU layer's weights as a sparse
LP that keeps the net's behaviour on the validation samples; ``prune`` is the
magnitude-based baseline; ``to_onnx`` writes the result.

The names below are loaded on first use (PEP 562), so that the ``certkit sparsify`` command line
declares its arguments without importing torch, scipy or a solver.
"""
from __future__ import annotations

#: name -> the module of this package that defines it
_WHERE = {"sparsify": "core", "SparsifyResult": "core", "export_onnx": "export", "to_onnx": "export",
          "LpOptions": "lp", "prune": "mbp", "SolverOptions": "solve"}

__all__ = ["sparsify", "prune", "SparsifyResult", "LpOptions", "SolverOptions", "to_onnx", "export_onnx"]


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'certkit.sparsify' has no attribute '{name}'")
