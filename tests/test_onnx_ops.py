"""ONNX -> IR, op by op: every supported op (and its variants) is imported from a
single-node (or tiny) model and the IR reference executor is compared with
onnxruntime; every LinearOp's ``backward``/``apply_abs`` is checked against its
explicitly formed matrix; unsupported models and bad files give the right errors.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from certkit.errors import ModelError, UnsupportedOpError
from certkit.graph import ops
from certkit.onnx.importer import import_model, load_onnx
from tests.helpers.onnx_builders import (X, assert_close, assert_matches_ort, graph_model, ort_output_shape,
                                        single)

RNG = np.random.default_rng(1234)


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*v) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def node(op: str, ins: list[str], outs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, name=f"{op.lower()}_{outs[0]}", **attrs)


def chain(x_shape, nodes, opset=13, **consts) -> onnx.ModelProto:
    return graph_model(nodes, x_shape, opset=opset, consts=consts)


# ----------------------------------------------------------------------------- op cases
# Each case: (id, factory, linear). ``linear`` marks models whose IR is purely affine;
# their LinearOps also go through the explicit-matrix test below.

CASES: list[tuple[str, object, bool]] = []


def add_cases(prefix: str, linear: bool, items: dict) -> None:
    for k, fn in items.items():
        CASES.append((f"{prefix}-{k}", fn, linear))


add_cases("Gemm", True, {
    "transB-bias_n": lambda: single("Gemm", (1, 4), X, r(3, 4), r(3), transB=1),
    "alpha-beta-bias_1n": lambda: single("Gemm", (1, 4), X, r(4, 3), r(1, 3), alpha=0.5, beta=2.0),
    "no-bias": lambda: single("Gemm", (1, 4), X, r(4, 3)),
    "scalar-bias": lambda: single("Gemm", (1, 4), X, r(3, 4), r(1), transB=1, beta=-1.5),
    "rows2-bias_mn": lambda: single("Gemm", (2, 4), X, r(4, 3), r(2, 3)),
    "rows2-bias_n": lambda: single("Gemm", (2, 4), X, r(3, 4), r(3), transB=1),
})
add_cases("MatMul", True, {
    "2d": lambda: single("MatMul", (1, 4), X, r(4, 3)),
    "rank3": lambda: single("MatMul", (1, 2, 4), X, r(4, 3)),
    "rank4": lambda: single("MatMul", (1, 3, 2, 4), X, r(4, 5)),
    "vector-rhs": lambda: single("MatMul", (1, 2, 4), X, r(4)),
    "batched-rhs-1": lambda: single("MatMul", (1, 2, 4), X, r(1, 4, 3)),
    "rank2-var-rank3-rhs": lambda: single("MatMul", (2, 4), X, r(1, 4, 3)),
})
add_cases("Arith", True, {
    "add-chan": lambda: single("Add", (1, 3, 2, 2), X, r(3, 1, 1)),
    "add-const-first": lambda: single("Add", (1, 3, 2, 2), r(1, 3, 1, 2), X),
    "add-bcast-var": lambda: single("Add", (1, 3), X, r(2, 1, 3)),
    "sub-var-const": lambda: single("Sub", (1, 3, 2), X, r(2)),
    "sub-const-var": lambda: single("Sub", (1, 3, 2), r(3, 1), X),
    "sub-const-bcast": lambda: single("Sub", (1, 3), r(2, 1, 1), X),
    "mul-scalar": lambda: single("Mul", (1, 5), X, np.float32(-2.5)),
    "mul-const-first": lambda: single("Mul", (1, 3, 2), r(3, 1), X),
    "mul-bcast-var": lambda: single("Mul", (1, 2), X, r(3, 1, 2)),
    "div-var-const": lambda: single("Div", (1, 3, 2), X, r(3, 2) + 3.0),
    "div-bcast": lambda: single("Div", (1, 2), X, r(2, 1, 1) + 3.0),
    "neg": lambda: single("Neg", (1, 3, 2), X),
    "add-var-var": lambda: chain((1, 4), [node("Neg", [X], ["n"]), node("Add", [X, "n"], ["a"]),
                                          node("Add", ["a", X], ["Y"])]),
    "sub-var-var-bcast": lambda: chain((1, 3, 2, 2), [
        node("ReduceMean", [X], ["m"], axes=[2, 3], keepdims=1), node("Sub", [X, "m"], ["Y"])]),
    "add-var-var-bcast-both": lambda: chain((1, 3, 2), [
        node("ReduceSum", [X], ["a"], axes=[1], keepdims=1),   # (1, 1, 2)
        node("ReduceSum", [X], ["b"], axes=[2], keepdims=1),   # (1, 3, 1)
        node("Sub", ["b", "a"], ["Y"])], opset=11),
})
add_cases("Act", False, {
    "relu": lambda: single("Relu", (1, 3, 4), X),
    "leakyrelu": lambda: single("LeakyRelu", (1, 6), X),
    "leakyrelu-alpha": lambda: single("LeakyRelu", (1, 6), X, alpha=0.3),
    "sigmoid": lambda: single("Sigmoid", (1, 6), X),
    "tanh": lambda: single("Tanh", (1, 6), X),
    "softplus": lambda: single("Softplus", (1, 6), X),
    "abs": lambda: single("Abs", (1, 6), X),
    "hardsigmoid": lambda: single("HardSigmoid", (1, 6), X, alpha=0.4, beta=0.3),
})
add_cases("Clip", False, {
    "opset6-both": lambda: single("Clip", (1, 8), X, opset=6, min=-0.3, max=0.4),
    "opset6-min": lambda: single("Clip", (1, 8), X, opset=6, min=-0.3),
    "opset6-max": lambda: single("Clip", (1, 8), X, opset=6, max=0.2),
    "opset11-both": lambda: single("Clip", (1, 8), X, np.float32(-0.5), np.float32(0.25), opset=11),
    "opset13-min-only": lambda: single("Clip", (1, 8), X, np.float32(0.1), opset=13),
    "opset13-max-only": lambda: single("Clip", (1, 8), X, None, np.float32(0.1), opset=13),
    "opset13-none": lambda: single("Clip", (1, 8), X, opset=13),
})
add_cases("MinMax", False, {
    "max-scalar": lambda: single("Max", (1, 6), X, np.float32(0.2)),
    "min-scalar": lambda: single("Min", (1, 6), np.float32(0.2), X),
    "max-chan": lambda: single("Max", (1, 3, 2, 2), X, r(3, 1, 1) * 0.5),
    "min-chan-two-consts": lambda: single("Min", (1, 3, 2, 2), r(3, 1, 1) * 0.5, X, r(1, 2) * 0.5),
    "max-const-bcast": lambda: single("Max", (1, 2), X, r(3, 1, 2) * 0.5),
    "max-two-vars": lambda: chain((1, 6), [node("Neg", [X], ["n"]), node("Max", [X, "n"], ["Y"])]),
    "min-two-vars": lambda: chain((1, 6), [node("Neg", [X], ["n"]), node("Min", ["n", X], ["Y"])]),
    "max-three-vars-bcast-const": lambda: chain((1, 3, 2, 2), [
        node("ReduceMean", [X], ["m"], axes=[2, 3], keepdims=1), node("Neg", [X], ["n"]),
        node("Max", [X, "m", "n", "c"], ["Y"])], c=np.float32(0.1)),
    "min-three-vars": lambda: chain((1, 3, 2), [
        node("ReduceMean", [X], ["m"], axes=[1], keepdims=1), node("Neg", [X], ["n"]),
        node("Min", [X, "m", "n"], ["Y"])]),
})
add_cases("Conv", True, {
    "basic-bias": lambda: single("Conv", (1, 2, 5, 5), X, r(3, 2, 3, 3), r(3)),
    "no-bias": lambda: single("Conv", (1, 2, 5, 5), X, r(3, 2, 3, 3)),
    "strides": lambda: single("Conv", (1, 2, 7, 6), X, r(3, 2, 3, 2), r(3), strides=[2, 3]),
    "pads-sym": lambda: single("Conv", (1, 2, 5, 5), X, r(3, 2, 3, 3), r(3), pads=[1, 1, 1, 1]),
    "pads-asym": lambda: single("Conv", (1, 2, 5, 6), X, r(3, 2, 3, 3), r(3), pads=[0, 1, 2, 0]),
    "pads-asym-strides": lambda: single("Conv", (1, 2, 7, 8), X, r(4, 2, 3, 3), pads=[1, 0, 0, 2],
                                        strides=[2, 3]),
    "dilations": lambda: single("Conv", (1, 1, 6, 5), X, r(3, 1, 3, 3), r(3), dilations=[2, 1], pads=[1, 2, 1, 0]),
    "dil-strides": lambda: single("Conv", (1, 1, 7, 8), X, r(2, 1, 3, 2), dilations=[2, 3], strides=[2, 2]),
    "groups": lambda: single("Conv", (1, 4, 5, 5), X, r(6, 2, 3, 3), r(6), group=2, pads=[1, 1, 1, 1]),
    "depthwise": lambda: single("Conv", (1, 3, 5, 5), X, r(3, 1, 3, 3), r(3), group=3, strides=[2, 2]),
    "depthwise-mult": lambda: single("Conv", (1, 2, 5, 5), X, r(4, 1, 2, 2), group=2),
    "same-upper": lambda: single("Conv", (1, 2, 6, 7), X, r(3, 2, 3, 3), r(3), auto_pad="SAME_UPPER",
                                 strides=[2, 2]),
    "same-upper-even-k": lambda: single("Conv", (1, 2, 5, 5), X, r(3, 2, 2, 4), auto_pad="SAME_UPPER"),
    "same-lower": lambda: single("Conv", (1, 2, 5, 5), X, r(3, 2, 2, 4), auto_pad="SAME_LOWER"),
    "valid": lambda: single("Conv", (1, 2, 6, 6), X, r(3, 2, 3, 3), auto_pad="VALID", strides=[2, 2]),
    "1d": lambda: single("Conv", (1, 2, 9), X, r(3, 2, 3), r(3), pads=[2, 1], strides=[2], dilations=[2]),
    "1d-same-groups": lambda: single("Conv", (1, 4, 8), X, r(4, 2, 3), auto_pad="SAME_UPPER", group=2),
    "1x1": lambda: single("Conv", (1, 3, 4, 4), X, r(5, 3, 1, 1), r(5)),
})
# the variants of ConvTranspose and Resize: tests/test_onnx_upsample.py
add_cases("ConvTranspose", True, {
    "stride-pads-outpad-groups": lambda: single("ConvTranspose", (1, 4, 3, 3), X, r(4, 2, 3, 3), r(4), strides=[2, 2],
                                                pads=[1, 0, 0, 1], output_padding=[1, 1], group=2),
})
add_cases("Resize", True, {
    "nearest": lambda: single("Resize", (1, 2, 3, 4), X, np.zeros(0, np.float32), np.array([1, 1, 2, 1.5], np.float32)),
    "linear": lambda: single("Resize", (1, 2, 3, 4), X, np.zeros(0, np.float32), np.array([1, 1, 2, 1.5], np.float32),
                             mode="linear"),
})
add_cases("AveragePool", True, {
    "k2s2": lambda: single("AveragePool", (1, 2, 4, 4), X, kernel_shape=[2, 2], strides=[2, 2]),
    "pads-excl": lambda: single("AveragePool", (1, 2, 5, 5), X, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "pads-incl": lambda: single("AveragePool", (1, 2, 5, 5), X, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                count_include_pad=1),
    "pads-asym-strides": lambda: single("AveragePool", (1, 2, 6, 5), X, kernel_shape=[3, 2],
                                        pads=[0, 1, 2, 0], strides=[2, 1]),
    "ceil": lambda: single("AveragePool", (1, 2, 5, 5), X, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "ceil-pads-excl": lambda: single("AveragePool", (1, 1, 6, 6), X, kernel_shape=[3, 3], strides=[2, 2],
                                     pads=[1, 1, 1, 1], ceil_mode=1, opset=13),
    "ceil-pads-incl": lambda: single("AveragePool", (1, 1, 6, 6), X, kernel_shape=[3, 3], strides=[2, 2],
                                     pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
    "ceil-incl-nopad": lambda: single("AveragePool", (1, 2, 5, 5), X, kernel_shape=[2, 2], strides=[2, 2],
                                      ceil_mode=1, count_include_pad=1),
    "ceil-overhang-excl": lambda: single("AveragePool", (1, 1, 4, 4), X, kernel_shape=[3, 3], strides=[3, 3],
                                         pads=[1, 1, 2, 2], ceil_mode=1),
    "ceil-overhang-incl": lambda: single("AveragePool", (1, 1, 4, 4), X, kernel_shape=[3, 3], strides=[3, 3],
                                         pads=[1, 1, 2, 2], ceil_mode=1, count_include_pad=1),
    "ceil-incl-asym": lambda: single("AveragePool", (1, 2, 7, 6), X, kernel_shape=[3, 2], strides=[2, 3],
                                     pads=[0, 1, 1, 0], ceil_mode=1, count_include_pad=1),
    "dilations-opset19": lambda: single("AveragePool", (1, 1, 6, 6), X, kernel_shape=[2, 3], dilations=[2, 2],
                                        pads=[1, 1, 1, 1], opset=19),
    "dilations-incl-ceil": lambda: single("AveragePool", (1, 1, 7, 6), X, kernel_shape=[2, 2], dilations=[2, 2],
                                          strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1, count_include_pad=1,
                                          opset=19),
    "same-upper": lambda: single("AveragePool", (1, 2, 5, 5), X, kernel_shape=[2, 2], strides=[2, 2],
                                 auto_pad="SAME_UPPER"),
    "1d": lambda: single("AveragePool", (1, 2, 7), X, kernel_shape=[3], strides=[2], pads=[1, 1]),
    "1d-ceil-incl": lambda: single("AveragePool", (1, 2, 8), X, kernel_shape=[3], strides=[2], pads=[1, 1],
                                   ceil_mode=1, count_include_pad=1),
    "global": lambda: single("GlobalAveragePool", (1, 3, 4, 5), X),
    "global-1d": lambda: single("GlobalAveragePool", (1, 3, 5), X),
})
add_cases("MaxPool", False, {
    "k2s2": lambda: single("MaxPool", (1, 2, 4, 4), X, kernel_shape=[2, 2], strides=[2, 2]),
    "pads-strides": lambda: single("MaxPool", (1, 2, 5, 5), X, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                   strides=[2, 2]),
    "pads-asym": lambda: single("MaxPool", (1, 2, 5, 6), X, kernel_shape=[2, 3], pads=[1, 0, 0, 2]),
    "dilations": lambda: single("MaxPool", (1, 2, 7, 7), X, kernel_shape=[2, 2], dilations=[2, 3],
                                opset=12),
    "ceil": lambda: single("MaxPool", (1, 2, 5, 5), X, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "ceil-pads": lambda: single("MaxPool", (1, 1, 6, 6), X, kernel_shape=[3, 3], strides=[2, 2],
                                pads=[1, 1, 1, 1], ceil_mode=1),
    "ceil-overhang": lambda: single("MaxPool", (1, 1, 4, 4), X, kernel_shape=[3, 3], strides=[3, 3],
                                    pads=[1, 1, 2, 2], ceil_mode=1),
    "same-upper": lambda: single("MaxPool", (1, 2, 5, 5), X, kernel_shape=[3, 3], strides=[2, 2],
                                 auto_pad="SAME_UPPER"),
    "same-lower": lambda: single("MaxPool", (1, 2, 6, 5), X, kernel_shape=[2, 2], auto_pad="SAME_LOWER"),
    "indices-unused": lambda: single("MaxPool", (1, 2, 4, 4), X, kernel_shape=[2, 2], strides=[2, 2],
                                     n_outputs=2),
    "1d": lambda: single("MaxPool", (1, 2, 7), X, kernel_shape=[3], strides=[2]),
    "global": lambda: single("GlobalMaxPool", (1, 3, 3, 4), X),
})
add_cases("BatchNorm", True, {
    "standalone-4d": lambda: single("BatchNormalization", (1, 3, 2, 2), X, r(3), r(3), r(3),
                                    np.abs(r(3)) + 0.5, epsilon=1e-3),
    "standalone-2d": lambda: single("BatchNormalization", (1, 5), X, r(5), r(5), r(5), np.abs(r(5)) + 0.5),
    "opset9": lambda: single("BatchNormalization", (1, 3, 2, 2), X, r(3), r(3), r(3),
                             np.abs(r(3)) + 0.5, opset=9),
    "after-conv": lambda: chain((1, 2, 5, 5), [
        node("Conv", [X, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c", "g", "be", "m", "v"], ["Y"])],
        w=r(3, 2, 3, 3), b=r(3), g=r(3), be=r(3), m=r(3), v=np.abs(r(3)) + 0.5),
})
add_cases("Shape", True, {
    "flatten": lambda: single("Flatten", (1, 2, 3, 2), X),
    "flatten-axis2": lambda: single("Flatten", (1, 2, 3, 2), X, axis=2),
    "flatten-axis0": lambda: single("Flatten", (1, 2, 3), X, axis=0),
    "reshape-minus1": lambda: single("Reshape", (1, 2, 3, 2), X, i64(1, -1)),
    "reshape-zero": lambda: single("Reshape", (1, 2, 3, 2), X, i64(0, 3, -1)),
    "reshape-perm-like": lambda: single("Reshape", (1, 6, 2), X, i64(0, 2, 6)),
    "reshape-shape-chain": lambda: chain((1, 2, 3, 2), [
        node("Shape", [X], ["s"]), node("Gather", ["s", "i0"], ["b"], axis=0),
        node("Unsqueeze", ["b", "ax"], ["b1"]), node("Concat", ["b1", "m1"], ["shp"], axis=0),
        node("Reshape", [X, "shp"], ["Y"])], i0=np.array(0, np.int64), ax=i64(0), m1=i64(-1)),
    "reshape-shape-chain-cast": lambda: chain((1, 2, 3, 2), [
        node("Shape", [X], ["s"]), node("Slice", ["s", "st", "en"], ["hd"]),
        node("Cast", ["hd"], ["hf"], to=onnx.TensorProto.FLOAT), node("Mul", ["hf", "two"], ["hm"]),
        node("Cast", ["hm"], ["hi"], to=onnx.TensorProto.INT64), node("Concat", ["hi", "m1"], ["shp"], axis=0),
        node("Reshape", [X, "shp"], ["Y"])], st=i64(1), en=i64(2), two=np.float32(2), m1=i64(-1)),
    "transpose": lambda: single("Transpose", (1, 2, 3, 4), X, perm=[0, 2, 3, 1]),
    "transpose-default": lambda: single("Transpose", (1, 2, 3), X),
    "squeeze-opset11": lambda: single("Squeeze", (1, 3, 1, 2), X, axes=[2], opset=11),
    "squeeze-opset13": lambda: single("Squeeze", (1, 3, 1, 2), X, i64(-2), opset=13),
    "squeeze-all": lambda: single("Squeeze", (1, 3, 1, 2), X),
    "unsqueeze-opset11": lambda: single("Unsqueeze", (1, 3, 2), X, axes=[1, 4], opset=11),
    "unsqueeze-opset13": lambda: single("Unsqueeze", (1, 3, 2), X, i64(-1, 1), opset=13),
    "identity": lambda: single("Identity", (1, 5), X),
    "cast-float": lambda: single("Cast", (1, 5), X, to=onnx.TensorProto.FLOAT),
    "castlike-float": lambda: single("CastLike", (1, 5), X, np.zeros(1, np.float32), opset=15),
    "dropout-opset7": lambda: single("Dropout", (1, 5), X, opset=7, ratio=0.3),
    "dropout-opset10": lambda: single("Dropout", (1, 5), X, opset=10),
    "dropout-opset13-ratio": lambda: single("Dropout", (1, 5), X, np.float32(0.5), opset=13),
    "dropout-opset13-false": lambda: single("Dropout", (1, 5), X, np.float32(0.5), np.array(False), opset=13),
    "constant": lambda: chain((1, 3), [
        helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(r(3), "v")),
        node("Add", [X, "c"], ["Y"])]),
    "constant-value-floats": lambda: chain((1, 3), [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, -3.0]),
        node("Mul", [X, "c"], ["Y"])]),
})
add_cases("Movement", True, {
    "expand": lambda: single("Expand", (1, 3, 1), X, i64(2, 1, 3, 4)),
    "tile": lambda: single("Tile", (1, 2, 3), X, i64(1, 2, 2)),
    "depth-to-space": lambda: single("DepthToSpace", (1, 4, 2, 3), X, blocksize=2, mode="CRD"),
    "space-to-depth": lambda: single("SpaceToDepth", (1, 1, 4, 4), X, blocksize=2),
    "gather-elements": lambda: single("GatherElements", (1, 3, 2), X, np.array([[[2, 0], [1, 1]]], np.int64), axis=1),
})
add_cases("Concat", True, {
    "axis1": lambda: chain((1, 2, 3), [node("Neg", [X], ["n"]), node("Concat", [X, "n"], ["Y"], axis=1)]),
    "axis2": lambda: chain((1, 2, 3), [node("Neg", [X], ["n"]), node("Concat", [X, "n", X], ["Y"], axis=2)]),
    "axis-neg": lambda: chain((1, 2, 3), [node("Neg", [X], ["n"]), node("Concat", ["n", X], ["Y"], axis=-2)]),
    "axis0": lambda: chain((1, 3), [node("Neg", [X], ["n"]), node("Concat", [X, "n"], ["Y"], axis=0)]),
    "const-part": lambda: chain((1, 2, 3), [node("Concat", ["c", X, "d"], ["Y"], axis=2)],
                                c=r(1, 2, 2), d=r(1, 2, 1)),
    "single-input": lambda: single("Concat", (1, 2, 3), X, axis=1),
    "const-part-axis1": lambda: chain((1, 2, 3), [node("Neg", [X], ["n"]),
                                                  node("Concat", [X, "c", "n"], ["Y"], axis=1)], c=r(1, 1, 3)),
})
add_cases("Slice", True, {
    "basic": lambda: single("Slice", (1, 4, 6), X, i64(1), i64(5), i64(2)),
    "steps": lambda: single("Slice", (1, 4, 7), X, i64(0, 1), i64(4, 7), i64(1, 2), i64(2, 3)),
    "negative": lambda: single("Slice", (1, 4, 6), X, i64(-3), i64(-1), i64(-1)),
    "negative-step": lambda: single("Slice", (1, 4, 6), X, i64(-1, 3), i64(-100, 0), i64(2, 1), i64(-1, -2)),
    "opset9-attrs": lambda: single("Slice", (1, 4, 6), X, opset=9, starts=[1, 2], ends=[3, 100], axes=[1, 2]),
    "big-end": lambda: single("Slice", (1, 4, 6), X, i64(2), i64(2 ** 62), i64(1)),
})
add_cases("Split", True, {
    "opset11-attr": lambda: single("Split", (1, 3, 4), X, opset=11, axis=1, split=[1, 2], n_outputs=2,
                                   use_outputs=[1, 0]),
    "opset13-input": lambda: single("Split", (1, 3, 4), X, i64(1, 3), opset=13, axis=2, n_outputs=2,
                                    use_outputs=[1, 0], out_axis=2),
    "opset13-equal": lambda: single("Split", (1, 4, 3), X, opset=13, axis=1, n_outputs=2, use_outputs=[1, 0, 1]),
    "opset18-num-outputs": lambda: single("Split", (1, 5, 2), X, opset=18, axis=1, num_outputs=3,
                                          n_outputs=3, use_outputs=[2, 0]),
})
add_cases("Gather", True, {
    "scalar": lambda: single("Gather", (1, 4, 3), X, np.array(2, np.int64), axis=1),
    "vector": lambda: single("Gather", (1, 4, 3), X, i64(2, 0, 2), axis=2),
    "negative": lambda: single("Gather", (1, 4, 3), X, i64(-1, 1), axis=1),
    "matrix": lambda: single("Gather", (1, 4, 3), X, np.array([[0, 1], [3, 3]], np.int64), axis=1),
})
add_cases("Pad", True, {
    "constant-value": lambda: single("Pad", (1, 2, 3, 3), X, i64(0, 0, 1, 2, 0, 0, 2, 1), np.float32(1.5),
                                     opset=11),
    "constant-zero": lambda: single("Pad", (1, 2, 3, 3), X, i64(0, 0, 1, 0, 0, 0, 0, 1), opset=13),
    "constant-2.5-opset13": lambda: single("Pad", (1, 3), X, i64(0, 2, 0, 1), np.float32(2.5), opset=13),
    "reflect": lambda: single("Pad", (1, 2, 4, 4), X, i64(0, 0, 2, 1, 0, 0, 1, 3), mode="reflect", opset=13),
    "edge": lambda: single("Pad", (1, 2, 3, 3), X, i64(0, 0, 2, 1, 0, 0, 1, 3), mode="edge", opset=13),
    "opset2-attr-value": lambda: single("Pad", (1, 2, 3), X, opset=2, pads=[0, 1, 2, 0, 0, 1], value=2.5),
    "opset2-edge": lambda: single("Pad", (1, 2, 3), X, opset=2, pads=[0, 1, 2, 0, 0, 1], mode="edge"),
    "opset18-axes": lambda: single("Pad", (1, 2, 3, 3), X, i64(1, 2, 0, 1), np.float32(-1.0), i64(2, 3), opset=18),
    "wrap-opset19": lambda: single("Pad", (1, 2, 3, 4), X, i64(0, 0, 2, 1, 0, 0, 1, 3), mode="wrap", opset=19),
    "negative-pads": lambda: single("Pad", (1, 2, 4), X, i64(0, 0, -1, 0, 0, 2), opset=13),
})
add_cases("Reduce", True, {
    "sum-attr-keep": lambda: single("ReduceSum", (1, 3, 4), X, opset=11, axes=[2], keepdims=1),
    "sum-attr-nokeep": lambda: single("ReduceSum", (1, 3, 4, 2), X, opset=11, axes=[1, -1], keepdims=0),
    "sum-input13-keep": lambda: single("ReduceSum", (1, 3, 4), X, i64(1), opset=13),
    "sum-input13-nokeep": lambda: single("ReduceSum", (1, 3, 4, 2), X, i64(2, 1), opset=13, keepdims=0),
    "sum-all": lambda: single("ReduceSum", (1, 3, 4), X, opset=13, keepdims=0),
    "sum-noop-empty": lambda: single("ReduceSum", (1, 3, 4), X, opset=13, noop_with_empty_axes=1),
    "mean-attr13-keep": lambda: single("ReduceMean", (1, 3, 4), X, opset=13, axes=[1], keepdims=1),
    "mean-attr13-nokeep": lambda: single("ReduceMean", (1, 3, 4, 2), X, opset=13, axes=[2, 3], keepdims=0),
    "mean-input18-keep": lambda: single("ReduceMean", (1, 3, 4), X, i64(-1), opset=18),
    "mean-input18-nokeep": lambda: single("ReduceMean", (1, 3, 4, 2), X, i64(1, 3), opset=18, keepdims=0),
    "mean-all": lambda: single("ReduceMean", (1, 3, 4), X, opset=18),
})
add_cases("Graph", True, {
    "linear-residual": lambda: chain((1, 2, 4, 4), [
        node("Conv", [X, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("AveragePool", ["c1"], ["p"],
                                                                        kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Conv", ["p", "w2"], ["c2"], pads=[0, 0, 1, 1], kernel_shape=[2, 2]), node("Add", ["c2", X], ["s"]),
        node("Flatten", ["s"], ["f"]), node("Gemm", ["f", "w3", "b3"], ["Y"], transB=1)],
        w1=r(2, 2, 3, 3), b1=r(2), w2=r(2, 2, 2, 2), w3=r(3, 32), b3=r(3)),
})
add_cases("Graph", False, {
    "dead-branch": lambda: chain((1, 4), [
        node("Sigmoid", [X], ["s"]), node("Mul", ["s", "s"], ["dead1"]), node("Softmax", ["dead1"], ["dead2"]),
        node("Relu", [X], ["Y"]), node("Tanh", [X], ["dead3"])]),
    "residual-block": lambda: chain((1, 2, 5, 5), [
        node("Conv", [X, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), node("Add", ["c2", X], ["s"]),
        node("Relu", ["s"], ["Y"])], w1=r(2, 2, 3, 3), b1=r(2), w2=r(2, 2, 3, 3), b2=r(2)),
    "mlp-flatten": lambda: chain((1, 1, 3, 3), [
        node("Flatten", [X], ["f"]), node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        node("Relu", ["h"], ["hr"]), node("MatMul", ["hr", "w2"], ["o"]), node("Add", ["o", "b2"], ["Y"])],
        w1=r(5, 9), b1=r(5), w2=r(5, 3), b2=r(3)),
    "output-is-reshape": lambda: chain((1, 2, 3), [node("Relu", [X], ["a"]), node("Flatten", ["a"], ["Y"])]),
})


@pytest.mark.parametrize("factory", [pytest.param(f, id=n) for n, f, _ in CASES])
def test_op_matches_onnxruntime(factory):
    model = factory()
    g = assert_matches_ort(model, n=8, lo=-2.0, hi=2.0)
    assert g.output_shape == ort_output_shape(model)


# ----------------------------------------------------------------------------- explicit matrices


def _jacobians(op: ops.LinearOp, sizes: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-input matrices J_k (n_out, n_k) and the constant c of an affine op, by unit vectors."""
    zeros = [torch.zeros(1, n, dtype=torch.float64) for n in sizes]
    c = op.forward(*zeros)[0]
    Js = []
    for k, n in enumerate(sizes):
        xs = [torch.zeros(n, m, dtype=torch.float64) for m in sizes]
        xs[k] = torch.eye(n, dtype=torch.float64)
        Js.append((op.forward(*xs) - c).T.numpy())
    return Js, c.numpy()


LINEAR_CASES = [pytest.param(f, id=n) for n, f, lin in CASES if lin]


@pytest.mark.parametrize("factory", LINEAR_CASES)
def test_linear_ops_backward_is_exact_transpose(factory):
    g = import_model(factory())
    gen = torch.Generator().manual_seed(0)
    n_checked = 0
    for nd in g.nodes[1:]:
        op = nd.op
        assert isinstance(op, ops.LinearOp), f"{op.kind} in a linear model"
        sizes = [g.size(j) for j in nd.inputs]
        Js, c = _jacobians(op, sizes)
        n_out = Js[0].shape[0]
        # forward is affine: J x + c
        xs = [torch.randn(3, n, generator=gen, dtype=torch.float64) for n in sizes]
        want = sum(x.numpy() @ J.T for x, J in zip(xs, Js)) + c
        np.testing.assert_allclose(op.forward(*xs).numpy(), want, rtol=1e-12, atol=1e-12)
        # backward(A) = A J_k per input
        A = torch.randn(2, 4, n_out, generator=gen, dtype=torch.float64)
        back = op.backward(A)
        assert len(back) == len(sizes)
        for b, J in zip(back, Js):
            assert tuple(b.shape) == (2, 4, J.shape[1])
            np.testing.assert_allclose(b.numpy(), A.numpy() @ J, rtol=1e-12, atol=1e-12)
        # apply_abs(r) = sum_k |J_k| r_k
        rs = [torch.rand(3, n, generator=gen, dtype=torch.float64) for n in sizes]
        want = sum(rr.numpy() @ np.abs(J).T for rr, J in zip(rs, Js))
        np.testing.assert_allclose(op.apply_abs(*rs).numpy(), want, rtol=1e-12, atol=1e-12)
        # bias_vector / bias_term are the constant
        bv = op.bias_vector()
        np.testing.assert_allclose(np.zeros(n_out) if bv is None else bv, c, rtol=1e-12, atol=1e-12)
        bt = op.bias_term(A)
        np.testing.assert_allclose(np.zeros((2, 4)) if bt is None else bt.numpy(), A.numpy() @ c,
                                   rtol=1e-12, atol=1e-12)
        n_checked += 1
    assert n_checked == len(g.nodes) - 1


def test_linear_ops_unpruned_cover_every_kind():
    """The linear cases exercise every LinearOp kind (guards the test above against gaps)."""
    kinds = set()
    for p in LINEAR_CASES:
        g = import_model(p.values[0]())
        kinds |= {nd.op.kind for nd in g.nodes[1:]}
    want = {k for k, cls in ops.OPS.items() if issubclass(cls, ops.LinearOp)}
    want -= {"kernel_rounding"}  # only after nonlinear kernels: tests/test_products.py
    want -= {"implicit_bias"}  # identity plus an enclosed deviation, from IBNN functions: tests/test_ibnn.py
    assert want <= kinds, want - kinds


# ----------------------------------------------------------------------------- passes


def _count(g, kind):
    return sum(1 for nd in g.nodes if nd.op.kind == kind)


def test_fusion_normalisation_gemm_bias():
    model = chain((1, 6), [
        node("Sub", [X, "mean"], ["a"]), node("Div", ["a", "std"], ["b"]),
        node("Gemm", ["b", "w", "bias"], ["c"], transB=1), node("Add", ["c", "b2"], ["d"]),
        node("Relu", ["d"], ["e"]), node("Mul", ["e", "s3"], ["f"]), node("MatMul", ["f", "w2"], ["Y"])],
        mean=r(6), std=np.abs(r(6)) + 0.5, w=r(4, 6), bias=r(4), b2=r(4), s3=r(4), w2=r(4, 3))
    g = assert_matches_ort(model, n=16)
    assert [nd.op.kind for nd in g.nodes] == ["input", "dense", "relu", "dense"]


def test_fusion_conv_batchnorm():
    model = chain((1, 2, 5, 5), [
        node("Conv", [X, "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        node("BatchNormalization", ["c", "g", "be", "m", "v"], ["d"]), node("Relu", ["d"], ["Y"])],
        w=r(3, 2, 3, 3), b=r(3), g=r(3), be=r(3), m=r(3), v=np.abs(r(3)) + 0.5)
    g = assert_matches_ort(model, n=16)
    assert [nd.op.kind for nd in g.nodes] == ["input", "conv", "relu"]


def _ir(nodes_ops, shapes):
    from certkit.graph.graph import Graph, Node

    nodes = [Node("x", ops.Input(), ())] + [Node(f"n{k}", op, ins) for k, (op, ins) in enumerate(nodes_ops, 1)]
    return Graph(tuple(nodes), tuple(shapes), len(nodes) - 1)


def _assert_same_function(g1, g2, n_in):
    x = np.random.default_rng(0).uniform(-1, 1, (7, n_in))
    np.testing.assert_allclose(g1(x), g2(x), rtol=1e-12, atol=1e-12)


def test_fuse_affine_on_ir():
    from certkit.onnx.passes import simplify

    R = np.random.default_rng(3)
    sub = ops.Scale(np.ones(6), -R.standard_normal(6))            # x - mean
    div = ops.Scale(1 / (R.uniform(0.5, 2, 6)), None)             # / std
    dense = ops.Dense(R.standard_normal((4, 6)), R.standard_normal(4))
    add = ops.Scale(np.ones(4), R.standard_normal(4))              # + bias
    g = _ir([(sub, (0,)), (div, (1,)), (dense, (2,)), (add, (3,)), (ops.Relu(), (4,))],
            [(1, 6), (1, 6), (1, 6), (1, 4), (1, 4), (1, 4)])
    f = simplify(g)
    assert [nd.op.kind for nd in f.nodes] == ["input", "dense", "relu"]
    _assert_same_function(g, f, 6)

    w = R.standard_normal((3, 2, 3, 3))
    conv = ops.Conv(w, R.standard_normal(3), (2, 5, 5), (3, 3, 3))
    bn = ops.Scale(np.repeat(R.standard_normal(3), 9), np.repeat(R.standard_normal(3), 9))
    g = _ir([(conv, (0,)), (bn, (1,))], [(1, 2, 5, 5), (1, 3, 3, 3), (1, 3, 3, 3)])
    f = simplify(g)
    assert [nd.op.kind for nd in f.nodes] == ["input", "conv"]
    _assert_same_function(g, f, 50)

    # a Scale that varies inside a channel cannot be folded into the convolution
    odd = ops.Scale(R.standard_normal(27), None)
    g = _ir([(conv, (0,)), (odd, (1,))], [(1, 2, 5, 5), (1, 3, 3, 3), (1, 3, 3, 3)])
    f = simplify(g)
    assert [nd.op.kind for nd in f.nodes] == ["input", "conv", "scale"]
    _assert_same_function(g, f, 50)


@pytest.mark.parametrize("pads,shift,groups,fused", [
    ([0, 0, 0, 0], True, 1, True), ([1, 1, 1, 1], False, 1, True), ([1, 0, 0, 1], True, 1, False),
    ([0, 0, 0, 0], True, 2, True), ([1, 1, 1, 1], False, 4, True)])
def test_fusion_normalisation_conv(pads, shift, groups, fused):
    """Per-channel x * a + c before a Conv folds into it (c only without padding)."""
    nodes = [node("Mul", [X, "a"], ["m"])]
    nodes += [node("Add", ["m", "c"], ["n"])] if shift else [node("Identity", ["m"], ["n"])]
    nodes += [node("Conv", ["n", "w", "b"], ["Y"], pads=pads, group=groups)]
    model = chain((1, 4, 5, 5), nodes, a=r(1, 4, 1, 1), c=r(4, 1, 1), w=r(8, 4 // groups, 3, 2), b=r(8))
    g = assert_matches_ort(model, n=16)
    assert [nd.op.kind for nd in g.nodes] == (["input", "conv"] if fused else ["input", "scale", "conv"])


def test_fusion_respects_shared_values():
    """A Scale whose value is also used elsewhere is not fused away."""
    model = chain((1, 4), [
        node("Mul", [X, "s"], ["a"]), node("Gemm", ["a", "w"], ["b"], transB=1), node("Relu", ["a"], ["ra"]),
        node("Gemm", ["ra", "w2"], ["c"], transB=1), node("Add", ["b", "c"], ["Y"])],
        s=r(4), w=r(3, 4), w2=r(3, 4))
    assert_matches_ort(model, n=16)


# ----------------------------------------------------------------------------- errors


def test_unsupported_ops_reported_together():
    model = chain((1, 4), [
        node("Neg", [X], ["n"]), node("Div", ["n", "z"], ["bad1"]),  # division by a zero constant
        node("Relu", ["bad1"], ["r"]), node("Gemm", ["r", "w"], ["g"], transB=1),  # downstream, supported
        node("Hardmax", ["g"], ["bad2"]),                            # no converter
        node("Shape", ["bad2"], ["s"]), node("Reshape", ["bad2", "s"], ["Y"])],
        w=r(3, 4), z=np.zeros(4, np.float32))
    with pytest.raises(UnsupportedOpError) as ei:
        import_model(model)
    names = [n[0] for n in ei.value.nodes]
    assert names == ["div_bad1", "hardmax_bad2"], ei.value.nodes
    msg = str(ei.value)
    assert "div_bad1 (Div opset 13" in msg and "hardmax_bad2 (Hardmax opset 13" in msg
    assert "division by zero" in msg
    assert isinstance(ei.value, ModelError)


@pytest.mark.parametrize("factory,why", [
    (lambda: single("MatMul", (1, 3), r(2, 1, 1), X), "constant left operand with batch dimensions"),
    (lambda: single("Div", (1, 3), X, np.zeros(3, np.float32)), "division by zero"),
    (lambda: chain((1, 3), [node("Cast", [X], ["i"], to=onnx.TensorProto.UINT16),
                            node("Cast", ["i"], ["Y"], to=onnx.TensorProto.FLOAT)]), "UINT16"),
    (lambda: chain((1, 3), [node("Cast", [X], ["i"], to=onnx.TensorProto.FLOAT16),
                            node("Cast", ["i"], ["Y"], to=onnx.TensorProto.FLOAT)]), "float16"),
    (lambda: single("Clip", (1, 3), X, X), "constant"),
    (lambda: single("Gemm", (3, 1), X, r(3, 2), transA=1), "transA"),
    (lambda: single("Dropout", (1, 5), X, np.float32(0.5), np.array(True), opset=13), "training"),
    (lambda: chain((1, 3), [node("ReduceSum", [X], ["s"], keepdims=0),
                            node("Pad", [X, "p", "s"], ["Y"])], p=i64(0, 1, 0, 1)), "only the data input"),
    (lambda: single("Hardmax", (1, 3), X), "no converter"),
    (lambda: single("Conv", (1, 1, 3, 3, 3), X, r(1, 1, 2, 2, 2)), "3-D"),
], ids=["matmul-const-batched", "div-by-zero", "cast-uint", "cast-half", "clip-var-bound",
        "gemm-transA", "dropout-training", "pad-var-value", "hardmax", "conv3d"])
def test_unsupported_variants_have_reasons(factory, why):
    with pytest.raises(UnsupportedOpError) as ei:
        import_model(factory())
    assert len(ei.value.nodes) == 1
    assert why in str(ei.value)


def test_custom_domain_is_unsupported():
    n = helper.make_node("Foo", [X], ["Y"], domain="com.example", name="foo")
    g = helper.make_graph([n], "t", [helper.make_tensor_value_info(X, onnx.TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)],
                          ir_version=8)
    with pytest.raises(UnsupportedOpError, match="com.example.Foo"):
        import_model(m)


def test_truncated_file(tmp_path):
    good = single("Gemm", (1, 4), X, r(3, 4), r(3), transB=1).SerializeToString()
    for k, raw in enumerate([good[: len(good) // 2], good[:7], b"\x00\xffnot an onnx model at all" * 10]):
        p = tmp_path / f"bad{k}.onnx"
        p.write_bytes(raw)
        with pytest.raises(ModelError) as ei:
            load_onnx(p)
        msg = str(ei.value)
        assert msg.startswith(str(p)), msg
        assert "Traceback" not in msg and "\n" not in msg and len(msg) < 400, msg


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelError, match="empty.onnx"):
        load_onnx(p)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match="nope.onnx: no such file"):
        load_onnx(p)


def test_load_roundtrip_and_gz(tmp_path):
    import gzip

    model = single("Gemm", (1, 4), X, r(3, 4), r(3), transB=1)
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    pz = tmp_path / "m.onnx.gz"
    pz.write_bytes(gzip.compress(model.SerializeToString()))
    g1, g2 = load_onnx(p), load_onnx(pz)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 4))
    assert_close(g1(x), g2(x), 1e-12)
    assert g1.source == str(p) and len(g1.sha256) == 64


def test_two_inputs_is_model_error():
    model = graph_model([node("Add", [X, "Z"], ["Y"])], (1, 3), inputs=[(X, (1, 3)), ("Z", (1, 3))])
    with pytest.raises(ModelError, match="exactly one"):
        import_model(model)


def test_two_outputs_is_model_error():
    model = graph_model([node("Relu", [X], ["Y"]), node("Neg", [X], ["Z"])], (1, 3), outputs=("Y", "Z"))
    with pytest.raises(ModelError, match="exactly one output"):
        import_model(model)


def test_symbolic_dims():
    # a symbolic batch dimension is fine, a symbolic feature dimension is not
    for dims, ok in ([["N", 3], True], [[1, "F"], False]):
        g = helper.make_graph([node("Relu", [X], ["Y"])], "t",
                              [helper.make_tensor_value_info(X, onnx.TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        if ok:
            assert import_model(m).input_shape == (1, 3)
        else:
            with pytest.raises(ModelError, match="symbolic"):
                import_model(m)


def test_constant_output_is_model_error():
    model = graph_model([node("Shape", [X], ["s"]), node("Cast", ["s"], ["Y"], to=onnx.TensorProto.FLOAT)],
                        (1, 3))
    with pytest.raises(ModelError, match="does not depend on the input"):
        import_model(model)


def test_checker_rejection_is_model_error():
    model = single("Relu", (1, 3), X)
    model.graph.node[0].input[0] = "undefined_tensor"
    with pytest.raises(ModelError):
        import_model(model)


# ----------------------------------------------------------------------------- geometry fuzz

#: reasons for which a window geometry may be refused (runtimes and the spec disagree there)
GEOMETRY_REFUSALS = ("with dilations", "leaving input unread", "larger than the padded input",
                     "entirely in the padding")


def _random_window_model(rng):
    nd = int(rng.choice([1, 2]))
    hw = [int(v) for v in rng.integers(3, 9, nd)]
    k = [int(rng.integers(1, min(4, h) + 1)) for h in hw]
    s = [int(rng.integers(1, 4)) for _ in hw]
    d = [int(rng.integers(1, 3)) for _ in hw]
    kw = dict(kernel_shape=k, strides=s, dilations=d)
    ap = str(rng.choice(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if ap == "NOTSET":
        kw["pads"] = [int(rng.integers(0, kk)) for kk in k * 2]
    else:
        kw["auto_pad"] = ap
    op = str(rng.choice(["MaxPool", "AveragePool", "Conv"]))
    if op == "Conv":
        g = int(rng.choice([1, 2]))
        return single("Conv", (1, 2, *hw), X, r(4, 2 // g, *k), r(4), group=g, **kw)
    kw["ceil_mode"] = int(rng.integers(0, 2))
    if op == "AveragePool":
        kw["count_include_pad"] = int(rng.integers(0, 2))
    return single(op, (1, 2, *hw), X, opset=19 if op == "AveragePool" else 12, **kw)


@pytest.mark.parametrize("seed", range(3))
def test_window_geometry_fuzz(seed):
    """Random Conv/MaxPool/AveragePool geometries match onnxruntime or are refused for a known reason."""
    from tests.helpers.onnx_builders import ort_run, random_inputs

    rng = np.random.default_rng(100 + seed)
    checked = 0
    for _ in range(40):
        model = _random_window_model(rng)
        try:
            ort_run(model, random_inputs(model, 1))
        except Exception:  # onnxruntime rejects this geometry itself
            continue
        try:
            assert_matches_ort(model, n=3)
            checked += 1
        except UnsupportedOpError as e:
            assert any(w in e.nodes[0][3] for w in GEOMETRY_REFUSALS), e
    assert checked >= 20
