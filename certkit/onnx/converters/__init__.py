"""One converter per ONNX op family, registered in ``CONVERTERS`` by the :func:`converter` decorator.

A converter receives the :class:`~certkit.onnx.importer.Context`, the ONNX
node, its inputs (``Var`` for variable tensors, numpy arrays for constants,
``None`` for omitted optional inputs) and its attributes, and returns one
entry per node output. It raises :class:`~certkit.onnx.importer.Unsupported`
with a reason when a variant is not supported.

The converters live by concern, and importing this package registers all of them:

* :mod:`.data_movement`: Identity, Cast, Dropout, Pad, Concat, and the ops that only move
  elements (Transpose, Slice, Gather, Reshape, ...);
* :mod:`.affine`: Gemm, MatMul, Add/Sub/Mul/Div, Neg, BatchNormalization, ReduceSum/ReduceMean;
* :mod:`.conv_pool`: Conv, MaxPool, AveragePool (and their global forms), with the window geometry;
* :mod:`.activations`: Relu and the other elementwise activations, Clip, Max/Min, HardSigmoid;
* :mod:`.elementwise`: Exp, Log, Reciprocal, Sqrt, Pow (constant exponent), Sin, Cos, Erf, Sign, Floor;
* :mod:`.tails`: non-arithmetic output tails (ArgMax, OneHot, comparisons, logic, integer casts) lowered onto Sign;
* :mod:`.conv_transpose`: ConvTranspose;
* :mod:`.upsample`: Resize and Upsample (nearest and linear);
* :mod:`.scatter_reduce`: ScatterND and Where with constant indices/condition, ReduceMax/ReduceMin.

The registry and the helpers the converters share are in :mod:`.base`.
"""
from __future__ import annotations

# every converter module registers its ops on import; the registry lives in .base, so that no
# converter module imports this package (no import circle)
from . import (activations, affine, conv_pool, conv_transpose, data_movement, elementwise,  # noqa: E402,F401
               scatter_reduce, tails, upsample)
from .base import CONVERTERS, Converter, converter  # noqa: F401
