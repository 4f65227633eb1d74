"""Verification-friendly networks by the VNN linear program (paper 002; DESIGN.md section 7).

``sparsify(graph, x_val, y_val, ...)`` re-solves each chosen ReLU layer's weights as a sparse
LP that keeps the net's behaviour on the validation samples; ``prune`` is the
magnitude-based baseline; ``to_onnx`` writes the result.
"""
from .core import SparsifyResult, sparsify
from .export import export_onnx, to_onnx
from .lp import LpOptions
from .mbp import prune
from .solve import SolverOptions

__all__ = ["sparsify", "prune", "SparsifyResult", "LpOptions", "SolverOptions", "to_onnx", "export_onnx"]
