"""onnxruntime on the original model file: the executor every counterexample is confirmed with.

onnxruntime is imported when the first runner is made, not with this module: a run that finds no
counterexample candidate never loads it.
"""
from __future__ import annotations

import numpy as np


class OnnxRunner:
    """An onnxruntime session on the model file, evaluating flat float32 batches."""

    def __init__(self, path_or_bytes, input_shape: tuple[int, ...], input_name: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path_or_bytes, opts, providers=["CPUExecutionProvider"])
        self.input_shape = tuple(input_shape)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name or input_name
        self.batchable = len(inp.shape) > 0 and not isinstance(inp.shape[0], int)
        #: the input precision of the model (float32, or float64 for a double model)
        self.dtype = np.float64 if inp.type == "tensor(double)" else np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(b, n_inputs) -> (b, n_outputs), in the model's precision."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim == 1:
            x = x[None]
        if self.batchable and len(self.input_shape) > 0:
            shaped = x.reshape((x.shape[0],) + self.input_shape[1:])
            out = self.session.run(None, {self.input_name: shaped})[0]
            return np.asarray(out).reshape(x.shape[0], -1)
        outs = [np.asarray(self.session.run(None, {self.input_name: row.reshape(self.input_shape)})[0]).reshape(-1)
                for row in x]
        return np.stack(outs)
