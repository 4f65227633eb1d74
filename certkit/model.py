"""A loaded model: the IR graph plus what is needed to re-run the original file."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .graph.graph import Graph
from .onnx.importer import load_onnx
from .onnx.runner import OnnxRunner


@dataclass(eq=False)
class Model:
    """An ONNX model lowered to the IR; ``runner`` evaluates the original file with onnxruntime."""

    graph: Graph
    path: str
    _runner: OnnxRunner | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        return self.graph.sha256

    @property
    def runner(self) -> OnnxRunner:
        if self._runner is None:
            from .onnx.external import runtime_source

            self._runner = OnnxRunner(runtime_source(self.path), self.graph.input_shape, self.graph.input_name)
        return self._runner

    @property
    def n_inputs(self) -> int:
        return self.graph.n_inputs

    @property
    def n_outputs(self) -> int:
        return self.graph.n_outputs

    def __repr__(self) -> str:
        """One line: the file, input shape, outputs, nodes and precision (not the weights)."""
        g = self.graph
        precision = g.meta.get("precision", "float32")
        return (f"<Model {self.path}: input {tuple(g.input_shape)} -> {g.n_outputs} outputs, "
                f"{len(g.nodes)} nodes, {precision}>")


def load_model(path: str | os.PathLike, arithmetic: str = "auto") -> Model:
    """Load and lower an ONNX file (raises :class:`certkit.errors.ModelError`). ``arithmetic``: of
    the bound computations' matrix products, ``auto``, ``float64`` or ``float32``
    (:mod:`certkit.bounds.products32`)."""
    graph = load_onnx(path)
    if arithmetic != "auto":
        from .bounds.products32 import with_arithmetic

        graph = with_arithmetic(graph, arithmetic)
    return Model(graph, str(path))
