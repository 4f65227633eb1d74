"""Hunt wrong verdicts end to end: `certify` on random ONNX nets with properties set at the edge.

Usage: python benchmarks/fuzz_certify.py [--cases 200] [--seed 0] [--timeout 5] [--samples 200000]
                                         [--keep DIR] [--acts Relu,Sin,...] [--families mlp,conv,...]
                                         [--backend auto] [--check] [--dataset linf|l2|l1 | --bounds]

Each case is a random net built with ``onnx.helper``, of one of four families (``--families``): an MLP (2-8
inputs, or 17-24 so that ReLU splitting and the MILP run; 1-3 hidden layers of Gemm and an activation drawn
from ``--acts``: piecewise linear, S-shaped, periodic, steps), a small conv net (Conv, BatchNorm, residual add,
pooling), a self-attention block (products of two variables, Softmax, LayerNormalization or its ops written
out), or a net of products, quotients, roots, Exp/Log/Reciprocal, Max/Min of two variables, reductions and
Where (:data:`BLOCKS`) -- some with adversarial weights (huge scales, exact cancellations w and -w, zero rows,
denominators near 0, a softmax near argmax), a random box (some inputs fixed), and one property -- ``Y_i <=
Y_j``, ``Y_i <= t`` or ``Y_i >= t``, or a disjunction of 2-3 conjunctions of such threshold atoms -- placed at
the edge of the true minimum as dense sampling in onnxruntime sees it (every threshold moved by one shift):
just below it (the property most likely holds, a proof has to be tight) or just above it (a counterexample
exists, maybe a needle). ``certkit.api.certify`` runs with ``--timeout`` seconds; its verdict is then checked
in onnxruntime against ``--samples`` points of the box (the {lo, mid, hi} lattice or random corners, and
uniform points): an ``unsat`` that a sampled point contradicts, run alone as a checker runs a counterexample,
is a WRONG verdict (the worst bug), so is a ``sat`` whose witness does not violate the property in
onnxruntime, and any crash. Prints the verdict counts, every wrong case (its model and VNN-LIB kept in
``--keep``) and every refusal (``ERROR``, not counted as wrong); exit 1 on any wrong verdict, 2 on bad
arguments. With ``--dataset NORM``, data-set mode instead (:func:`dataset_case`): per case 8 samples labelled
by the net and one radius, every certified sample attacked by ``--samples`` float32 points of its ball. With
``--bounds``, bounds mode instead (:func:`bounds_case`): every registered bound procedure's output bounds
over the box against the sampled outputs. With ``--check`` every ``sat``/``unsat`` certificate also goes
through ``certkit check`` (one it cannot re-derive is reported).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

#: activations and how each is written (the node list for input name x, output name y, a prefix)
ACTS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Abs", "Clip", "Sin", "Cos", "Erf", "Sign",
        "Floor", "Square", "Max")


def _act_nodes(kind: str, x: str, y: str, p: str, n: int, inits: list, rng: np.random.Generator) -> list:
    """The nodes of activation ``kind`` on ``x`` (``n`` neurons) into ``y``, constants into ``inits``."""
    if kind == "LeakyRelu":
        return [helper.make_node("LeakyRelu", [x], [y], alpha=float(rng.choice([0.01, 0.3, -0.5])))]
    if kind == "Clip":
        lo, hi = sorted(rng.normal(0, 1, 2))
        inits += [numpy_helper.from_array(np.float32(lo), p + "lo"), numpy_helper.from_array(np.float32(hi), p + "hi")]
        return [helper.make_node("Clip", [x, p + "lo", p + "hi"], [y])]
    if kind == "Square":
        inits.append(numpy_helper.from_array(np.float32(2.0), p + "two"))
        return [helper.make_node("Pow", [x, p + "two"], [y])]
    if kind == "Max":  # max(x, c) with a random constant per neuron (c = 0 on a fifth of them)
        c = rng.normal(0, 0.5, (1, n)) * (rng.random((1, n)) > 0.2)
        inits.append(numpy_helper.from_array(c.astype(np.float32), p + "c"))
        return [helper.make_node("Max", [x, p + "c"], [y])]
    return [helper.make_node(kind, [x], [y])]


def _tensor_act(kind: str, x: str, y: str, p: str, inits: list, rng: np.random.Generator) -> tuple[list, str]:
    """:func:`_act_nodes` on a tensor that is not (N, n) (conv maps, tokens): ``Max`` with its per-neuron
    constant row becomes Relu there. (The nodes, the activation's name.)"""
    kind = "Relu" if kind == "Max" else kind
    return _act_nodes(kind, x, y, p, 0, inits, rng), kind


def _finish(nodes: list, inits: list, n_in: int, x: str, n: int, opset: int = 13) -> onnx.ModelProto:
    nodes.append(helper.make_node("Identity", [x], ["Y"]))
    g = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_in])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _init(inits: list, name: str, a, dtype=np.float32) -> str:
    inits.append(numpy_helper.from_array(np.asarray(a, dtype=dtype), name))
    return name


def random_conv_model(rng: np.random.Generator, acts: list[str]) -> tuple[onnx.ModelProto, int, str]:
    """A random small conv net on a flat input: Reshape -> Conv (3x3, pad 1, stride 1 or 2) [-> BatchNorm] ->
    activation [-> a residual Conv branch added] [-> MaxPool / AveragePool 2x2] -> Flatten -> Gemm."""
    c, h, w = int(rng.integers(1, 3)), int(rng.integers(3, 5)), int(rng.integers(3, 5))
    k, stride, n_out = int(rng.integers(2, 5)), int(rng.choice([1, 2])), int(rng.integers(2, 5))
    nodes, inits, desc = [], [], [f"{c}x{h}x{w}"]
    nodes.append(helper.make_node("Reshape", ["X", _init(inits, "shape", [-1, c, h, w], np.int64)], ["img"]))
    nodes.append(helper.make_node("Conv", ["img", _init(inits, "K", rng.normal(0, 1.5 / np.sqrt(9 * c), (k, c, 3, 3))),
                                           _init(inits, "kb", rng.normal(0, 0.3, k))], ["conv"],
                                  pads=[1, 1, 1, 1], strides=[stride, stride]))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = "conv"
    if rng.random() < 0.4:
        nodes.append(helper.make_node("BatchNormalization", [x] + [_init(inits, f"bn{i}", v) for i, v in enumerate(
            (rng.normal(1, 0.5, k), rng.normal(0, 0.3, k), rng.normal(0, 0.3, k), rng.uniform(0.2, 2, k)))],
            ["bn"], epsilon=1e-5))
        x, desc = "bn", desc + ["BN"]
    act, kind = _tensor_act(str(rng.choice(acts)), x, "act", "a_", inits, rng)
    nodes += act
    x, desc = "act", desc + [f"conv{k}s{stride}{kind}"]
    if stride == 1 and rng.random() < 0.4:  # a residual branch: act + Conv(img)
        nodes.append(helper.make_node("Conv", ["img", _init(inits, "K2", rng.normal(0, 1.0 / np.sqrt(9 * c), (k, c, 3, 3)))],
                                      ["skip"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Add", [x, "skip"], ["res"]))
        x, desc = "res", desc + ["+skip"]
    pool = str(rng.choice(["none", "MaxPool", "AveragePool"]))
    if pool != "none" and ho >= 2 and wo >= 2:
        nodes.append(helper.make_node(pool, [x], ["pool"], kernel_shape=[2, 2], strides=[1, 1]))
        x, ho, wo, desc = "pool", ho - 1, wo - 1, desc + [pool]
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    m = k * ho * wo
    nodes.append(helper.make_node("Gemm", ["flat", _init(inits, "W", rng.normal(0, 1.5 / np.sqrt(m), (n_out, m))),
                                           _init(inits, "l9_b", rng.normal(0, 0.5, n_out))], ["out"], transB=1))
    return _finish(nodes, inits, c * h * w, "out", n_out), n_out, "-".join(desc) + f"-{n_out} (conv)"


def _gemm(nodes: list, inits: list, x: str, y: str, n: int, m: int, rng: np.random.Generator, scale: float = 1.5) -> str:
    """``y = x W^T + b`` with ``W`` (m, n) of standard deviation ``scale / sqrt(n)``: the node's output name."""
    nodes.append(helper.make_node("Gemm", [x, _init(inits, y + "_W", rng.normal(0, scale / np.sqrt(n), (m, n))),
                                           _init(inits, y + "_c", rng.normal(0, 0.5, m))], [y], transB=1))
    return y


def _out(nodes: list, inits: list, x: str, n: int, rng: np.random.Generator) -> tuple[str, int]:
    """The output layer: a Gemm to 2-4 outputs whose bias (``out_b``, the last ``*_b`` initializer: the one
    :func:`vnnlib_case` moves a pair property's threshold into) is added last."""
    n_out = int(rng.integers(2, 5))
    nodes.append(helper.make_node("Gemm", [x, _init(inits, "out_W", rng.normal(0, 1.5 / np.sqrt(n), (n_out, n))),
                                           _init(inits, "out_b", rng.normal(0, 0.5, n_out))], ["out"], transB=1))
    return "out", n_out


def random_attention_model(rng: np.random.Generator, acts: list[str]) -> tuple[onnx.ModelProto, int, str]:
    """One self-attention block on T = 2-3 tokens of width d = 2-4 (a flat input of T d): Reshape -> Q, K, V
    (MatMul + Add) -> Softmax(Q K^T / sqrt(d)) V (products of two variables, a softmax) [-> + the tokens] [->
    LayerNormalization, or the same written out: ReduceMean, Sub, Mul, Sqrt, Div] [-> a MatMul and an
    activation] -> Flatten -> Gemm; ``sharp``: Q and K's weights 10-30 times larger (a softmax near argmax)."""
    T, d = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    sharp = rng.random() < 0.25
    nodes, inits, desc = [], [], [f"{T}x{d}"]
    nodes.append(helper.make_node("Reshape", ["X", _init(inits, "shape", [-1, T, d], np.int64)], ["tok"]))
    for name in "qkv":
        s = float(rng.uniform(10, 30)) if sharp and name != "v" else 1.0
        nodes.append(helper.make_node("MatMul", ["tok", _init(inits, name + "W", s * rng.normal(0, 1 / np.sqrt(d), (d, d)))],
                                      [name + "m"]))
        nodes.append(helper.make_node("Add", [name + "m", _init(inits, name + "c", rng.normal(0, 0.3, d))], [name]))
    nodes.append(helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["q", "kt"], ["qk"]))
    nodes.append(helper.make_node("Mul", ["qk", _init(inits, "scale", np.float32(1 / np.sqrt(d)))], ["scores"]))
    nodes.append(helper.make_node("Softmax", ["scores"], ["att"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["att", "v"], ["ctx"]))
    x, desc = "ctx", desc + ["sharp-attention" if sharp else "attention"]
    if rng.random() < 0.6:
        nodes.append(helper.make_node("Add", ["tok", x], ["res"]))
        x, desc = "res", desc + ["+tokens"]
    norm = str(rng.choice(["none", "LayerNormalization", "manual"]))
    eps = float(rng.choice([1e-5, 1e-2]))
    if norm == "LayerNormalization":
        nodes.append(helper.make_node("LayerNormalization", [x, _init(inits, "gamma", rng.normal(1, 0.5, d)),
                                                             _init(inits, "beta", rng.normal(0, 0.3, d))],
                                      ["ln"], axis=-1, epsilon=eps))
        x, desc = "ln", desc + [f"LN{eps:g}"]
    elif norm == "manual":
        nodes += [helper.make_node("ReduceMean", [x], ["mu"], axes=[-1], keepdims=1),
                  helper.make_node("Sub", [x, "mu"], ["cen"]),
                  helper.make_node("Mul", ["cen", "cen"], ["sq"]),
                  helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], keepdims=1),
                  helper.make_node("Add", ["var", _init(inits, "eps", np.float32(eps))], ["ve"]),
                  helper.make_node("Sqrt", ["ve"], ["sd"]),
                  helper.make_node("Div", ["cen", "sd"], ["ln"])]
        x, desc = "ln", desc + [f"norm{eps:g}"]
    if rng.random() < 0.5:
        kind = str(rng.choice(acts))
        nodes.append(helper.make_node("MatMul", [x, _init(inits, "fW", rng.normal(0, 1.5 / np.sqrt(d), (d, d)))], ["ff"]))
        act, kind = _tensor_act(kind, "ff", "ffa", "f_", inits, rng)
        nodes += act
        x, desc = "ffa", desc + [f"ff{kind}"]
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    out, n_out = _out(nodes, inits, "flat", T * d, rng)
    return _finish(nodes, inits, T * d, out, n_out, opset=17), n_out, "-".join(desc) + f"-{n_out} (attention)"


def random_unet_model(rng: np.random.Generator, acts: list[str]) -> tuple[onnx.ModelProto, int, str]:
    """A random small encoder-decoder on a flat input (the ops of U-Nets and GAN generators): Reshape -> Conv
    (3x3; stride 2, or stride 1 with dilation 2 or 2 groups) -> activation -> up again (ConvTranspose stride 2,
    Resize nearest x2 or Pad) -> Slice to the input's size -> Concat with the input (a skip, channel-wise) ->
    Conv 1x1 -> GlobalAveragePool or Flatten -> Gemm."""
    c, h, w = int(rng.choice([1, 2])), int(rng.choice([4, 6])), int(rng.choice([4, 6]))
    k = 2 * int(rng.integers(1, 3))
    down = str(rng.choice(["stride", "dilation", "groups"])) if c == 2 else str(rng.choice(["stride", "dilation"]))
    nodes, inits, desc = [], [], [f"{c}x{h}x{w}", down]
    nodes.append(helper.make_node("Reshape", ["X", _init(inits, "shape", [-1, c, h, w], np.int64)], ["img"]))
    groups = 2 if down == "groups" else 1
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]} if down == "stride" else \
        {"dilations": [2, 2], "pads": [2, 2, 2, 2]} if down == "dilation" else {"group": 2, "pads": [1, 1, 1, 1]}
    nodes.append(helper.make_node("Conv", ["img", _init(inits, "K", rng.normal(0, 1.5 / np.sqrt(9 * c / groups),
                                                                                (k, c // groups, 3, 3))),
                                           _init(inits, "kc", rng.normal(0, 0.3, k))], ["enc"], **attrs))
    hh, ww = ((h + 1) // 2, (w + 1) // 2) if down == "stride" else (h, w)
    act, kind = _tensor_act(str(rng.choice(acts)), "enc", "ea", "e_", inits, rng)
    nodes += act
    up = str(rng.choice(["ConvTranspose", "Resize", "Pad"])) if down == "stride" else "none"
    x = "ea"
    if up == "ConvTranspose":  # (hh - 1) 2 + 2 = 2 hh >= h
        nodes.append(helper.make_node("ConvTranspose", [x, _init(inits, "T", rng.normal(0, 1.0 / np.sqrt(k), (k, k, 2, 2)))],
                                      ["up"], strides=[2, 2]))
    elif up == "Resize":
        nodes.append(helper.make_node("Resize", [x, "", _init(inits, "scales", [1, 1, 2, 2])], ["up"], mode="nearest"))
    elif up == "Pad":
        nodes.append(helper.make_node("Pad", [x, _init(inits, "pads", [0, 0, 0, 0, 0, 0, h - hh, w - ww], np.int64),
                                           _init(inits, "padv", np.float32(rng.normal()))], ["up"], mode="constant"))
    if up != "none":
        nodes.append(helper.make_node("Slice", ["up", _init(inits, "starts", [0, 0], np.int64),
                                                _init(inits, "ends", [h, w], np.int64),
                                                _init(inits, "axes", [2, 3], np.int64)], ["dec"]))
        x, desc = "dec", desc + [up]
    desc.append(kind)
    nodes.append(helper.make_node("Concat", [x, "img"], ["cat"], axis=1))
    nodes.append(helper.make_node("Conv", ["cat", _init(inits, "K1", rng.normal(0, 1.0 / np.sqrt(k + c), (k, k + c, 1, 1)))],
                                  ["mix"]))
    if rng.random() < 0.5:
        nodes += [helper.make_node("GlobalAveragePool", ["mix"], ["gap"]),
                  helper.make_node("Flatten", ["gap"], ["flat"], axis=1)]
        m, desc = k, desc + ["GAP"]
    else:
        nodes.append(helper.make_node("Flatten", ["mix"], ["flat"], axis=1))
        m = k * h * w
    out, n_out = _out(nodes, inits, "flat", m, rng)
    return _finish(nodes, inits, c * h * w, out, n_out), n_out, "-".join(desc) + f"-{n_out} (unet)"


#: the blocks of :func:`random_ops_model`
BLOCKS = ("mul", "div", "sqrt", "log", "exp", "recip", "max", "min", "softmax", "reduce", "where", "cube")


def random_ops_model(rng: np.random.Generator, acts: list[str]) -> tuple[onnx.ModelProto, int, str]:
    """Gemm -> 1-3 blocks of the ops transformers and physics-informed nets use, each on two Gemms ``a``, ``b`` of
    the layer before (:data:`BLOCKS`: ``a b``, ``a / (|b| + c)``, ``sqrt(a^2 + c)``, ``log(softplus(a) + c)``,
    ``exp(a)``, ``1 / (exp(a) + c)``, ``max(a, b)``, ``min(a, b)``, ``softmax(a)``, ``a`` with its
    ReduceSum/Mean/Max/Min appended, ``where(a > b, a, b / 2)``, ``a^3``; ``c`` in {1e-3, 0.1, 1}: denominators and
    square roots near 0) -> Gemm. 2-6 inputs; the first layer's weights 10-1000 times larger in a fifth of them."""
    n_in, m = int(rng.integers(2, 7)), int(rng.integers(3, 9))
    huge = float(10.0 ** rng.integers(1, 4)) if rng.random() < 0.2 else 1.0  # first layer 10-1000x (overflows)
    nodes, inits, desc = [], [], [] if huge == 1 else [f"x{huge:g}"]
    x = _gemm(nodes, inits, "X", "h0", n_in, m, rng, 1.5 * huge)
    for k in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(BLOCKS))
        p = f"k{k}"
        a = _gemm(nodes, inits, x, p + "a", m, m, rng, 0.7 if kind in ("exp", "recip") else 1.5)
        b = _gemm(nodes, inits, x, p + "bb", m, m, rng)
        c = _init(inits, p + "cst", np.float32(rng.choice([1e-3, 0.1, 1.0])))
        y, width = p + "y", m
        if kind in ("mul", "max", "min"):
            nodes.append(helper.make_node(kind.capitalize(), [a, b], [y]))
        elif kind == "div":
            nodes += [helper.make_node("Abs", [b], [p + "ab"]), helper.make_node("Add", [p + "ab", c], [p + "den"]),
                      helper.make_node("Div", [a, p + "den"], [y])]
        elif kind == "sqrt":
            nodes += [helper.make_node("Mul", [a, a], [p + "sq"]), helper.make_node("Add", [p + "sq", c], [p + "r"]),
                      helper.make_node("Sqrt", [p + "r"], [y])]
        elif kind == "log":
            nodes += [helper.make_node("Softplus", [a], [p + "sp"]), helper.make_node("Add", [p + "sp", c], [p + "r"]),
                      helper.make_node("Log", [p + "r"], [y])]
        elif kind == "exp":
            nodes.append(helper.make_node("Exp", [a], [y]))
        elif kind == "recip":
            nodes += [helper.make_node("Exp", [a], [p + "e"]), helper.make_node("Add", [p + "e", c], [p + "r"]),
                      helper.make_node("Reciprocal", [p + "r"], [y])]
        elif kind == "softmax":
            nodes.append(helper.make_node("Softmax", [a], [y], axis=1))
        elif kind == "reduce":
            red = str(rng.choice(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"]))
            nodes += [helper.make_node(red, [a, _init(inits, p + "axes", [1], np.int64)], [p + "r"], keepdims=1)
                      if red == "ReduceSum" else  # (its axes an input from opset 13, the others' from 18)
                      helper.make_node(red, [a], [p + "r"], axes=[1], keepdims=1),
                      helper.make_node("Concat", [a, p + "r"], [y], axis=1)]
            kind, width = red, m + 1
        elif kind == "where":
            nodes += [helper.make_node("Greater", [a, b], [p + "gt"]),
                      helper.make_node("Mul", [b, _init(inits, p + "half", np.float32(0.5))], [p + "hb"]),
                      helper.make_node("Where", [p + "gt", a, p + "hb"], [y])]
        else:  # cube
            nodes.append(helper.make_node("Pow", [a, _init(inits, p + "three", np.float32(3.0))], [y]))
        x, desc = y, desc + [kind]
        if width != m:  # back to m neurons
            x = _gemm(nodes, inits, x, p + "w", width, m, rng)
    out, n_out = _out(nodes, inits, x, m, rng)
    return _finish(nodes, inits, n_in, out, n_out, opset=17), n_out, f"{n_in}-{m}-{'-'.join(desc)}-{n_out} (ops)"


#: the model families and the share of cases each gets (among those chosen with ``--families``)
FAMILIES = {"mlp": 0.45, "conv": 0.15, "unet": 0.1, "attention": 0.15, "ops": 0.15}


def random_model(rng: np.random.Generator, acts: list[str], families=tuple(FAMILIES)) -> tuple[onnx.ModelProto, int, str]:
    """A random net of one of ``families`` (:data:`FAMILIES`: an MLP, a small conv net
    (:func:`random_conv_model`), a self-attention block (:func:`random_attention_model`), a net of products,
    quotients, roots, exponentials and reductions (:func:`random_ops_model`)) with a dynamic batch dimension, its
    number of outputs, and a one-line description."""
    w = np.array([FAMILIES[f] for f in families])
    fam = families[int(rng.choice(len(families), p=w / w.sum()))]
    if fam != "mlp":
        return {"conv": random_conv_model, "unet": random_unet_model, "attention": random_attention_model,
                "ops": random_ops_model}[fam](rng, acts)
    # few inputs (input splitting decides) or, one case in four, more than 16 (ReLU splitting, the MILP)
    n_in = int(rng.integers(2, 9)) if rng.random() < 0.75 else int(rng.integers(17, 25))
    widths = [int(rng.integers(3, 17)) for _ in range(int(rng.integers(1, 4)))] + [int(rng.integers(2, 5))]
    style = rng.choice(["plain", "huge", "cancel", "zero"], p=[0.55, 0.15, 0.2, 0.1])
    nodes, inits, desc = [], [], []
    x, n = "X", n_in
    for k, m in enumerate(widths):
        w = rng.normal(0, 1.5 / np.sqrt(n), (m, n))
        b = rng.normal(0, 0.5, m)
        if style == "huge" and k == 0:
            w *= 10.0 ** rng.integers(2, 5)
        if style == "cancel" and m >= 2:  # pairs of rows w, -w (and equal biases): exact cancellations later
            w[1::2] = -w[0::2][:len(w[1::2])]
            b[1::2] = b[0::2][:len(b[1::2])]
        if style == "zero":
            w[rng.random(m) < 0.3] = 0.0
        p = f"l{k}_"
        inits += [numpy_helper.from_array(w.astype(np.float32), p + "W"), numpy_helper.from_array(b.astype(np.float32), p + "b")]
        nodes.append(helper.make_node("Gemm", [x, p + "W", p + "b"], [p + "z"], transB=1))
        x, n = p + "z", m
        if k < len(widths) - 1:
            kind = str(rng.choice(acts))
            nodes += _act_nodes(kind, x, p + "a", p, m, inits, rng)
            desc.append(f"{m}{kind}")
            x = p + "a"
    return _finish(nodes, inits, n_in, x, n), n, f"{n_in}-{'-'.join(desc)}-{n} ({style})"


def box_points(lo: np.ndarray, hi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The {lo, mid, hi} lattice (:func:`certkit.verify.falsify.lattice`, when it has at most ``n / 2`` points;
    else random corners), then uniform points: (n', d) float32."""
    import torch

    from certkit.verify.falsify import lattice

    d = lo.shape[0]
    grid = lattice(torch.ones(1, d, dtype=torch.bool), n // 2)
    grid = rng.integers(0, 2, (min(n // 4, 4096), d)).astype(np.float64) if grid is None else grid.numpy()
    t = np.concatenate([grid, rng.random((max(0, n - len(grid)), d))])
    return (lo + t * (hi - lo)).astype(np.float32)


def atom_text(atom: tuple) -> str:
    kind, i, j, t = atom
    return {"le_out": f"(<= Y_{i} Y_{j})", "le": f"(<= Y_{i} {t!r})", "ge": f"(>= Y_{i} {t!r})"}[kind]


def write_vnnlib(path: str, lo: np.ndarray, hi: np.ndarray, disjuncts: list, n_out: int) -> None:
    """The property's negation (VNN-LIB asserts the counterexample): a disjunction of conjunctions of atoms
    ``(kind, i, j, t)``: ``le_out`` Y_i <= Y_j, ``le`` Y_i <= t, ``ge`` Y_i >= t; somewhere in the box."""
    lines = [f"(declare-const X_{k} Real)" for k in range(len(lo))]
    lines += [f"(declare-const Y_{k} Real)" for k in range(n_out)]
    for k in range(len(lo)):
        lines += [f"(assert (>= X_{k} {float(lo[k])!r}))", f"(assert (<= X_{k} {float(hi[k])!r}))"]
    if len(disjuncts) == 1:
        lines += [f"(assert {atom_text(at)})" for at in disjuncts[0]]
    else:
        lines.append("(assert (or " + " ".join("(and " + " ".join(atom_text(at) for at in dj) + ")"
                                               for dj in disjuncts) + "))")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def session(path: str) -> ort.InferenceSession:
    """onnxruntime on one thread, CPU provider, quiet: the oracle (independent of certkit's own runner)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def for_certkit(model, mpath: str, fixed: bool) -> str:
    """The path of the model certkit gets: ``mpath`` itself, or (``fixed``) a copy whose batch dimension is
    fixed at 1, as many exported models have it (certkit then runs inputs one at a time; the oracle keeps the
    dynamic copy)."""
    if not fixed:
        return mpath
    one = onnx.ModelProto()
    one.CopyFrom(model)
    for v in (*one.graph.input, *one.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    path = mpath[:-len(".onnx")] + "_batch1.onnx"
    onnx.save(one, path)
    return path


def outputs(sess, x: np.ndarray) -> np.ndarray:
    return np.concatenate([sess.run(None, {"X": x[k:k + 50000]})[0] for k in range(0, len(x), 50000)]
                          ).astype(np.float64)


def alone(sess, x: np.ndarray) -> np.ndarray:
    """The outputs of the points ``x`` each run alone (a batch of 1, as a checker runs a counterexample:
    onnxruntime may round a row of a batch differently)."""
    return np.stack([outputs(sess, p[None])[0] for p in x]) if len(x) else np.zeros((0, 0))


def value(y: np.ndarray, disjuncts: list) -> np.ndarray:
    """min over disjuncts of max over their atoms of the atom's slack (<= 0: the point violates the property)."""
    def slack(atom):
        kind, i, j, t = atom
        return y[:, i] - y[:, j] if kind == "le_out" else y[:, i] - t if kind == "le" else t - y[:, i]
    return np.min([np.max([slack(at) for at in dj], axis=0) for dj in disjuncts], axis=0)


def edge(rng: np.random.Generator, g: np.ndarray) -> tuple[float, str]:
    """How far to lower a property's slack ``g`` (sampled) so that its minimum becomes ``+gap`` (``below``:
    likely unsat) or ``-gap`` / ``-gap/100`` (``above``: violated, maybe by a needle); gap is 1e-3 of g's
    range (at least 1e-6): (the shift, the side)."""
    g = g[np.isfinite(g)]  # (a net may overflow to inf at some points: the edge is set by the finite ones)
    if not g.size:
        return 0.0, "below"
    gap = max(1e-6, 1e-3 * (float(g.max()) - float(g.min())))
    side = "below" if rng.random() < 0.6 else "above"
    return float(g.min()) - (gap if side == "below" else -gap * float(rng.choice([0.01, 1.0]))), side


def _quantile(y: np.ndarray, q: float) -> float:
    """The ``q`` quantile of the finite values of ``y`` (0 when none is finite)."""
    y = y[np.isfinite(y)]
    return float(np.quantile(y, q)) if y.size else 0.0


def edge_property(rng: np.random.Generator, y: np.ndarray, n_out: int) -> tuple[list, str]:
    """A property of threshold atoms (one atom, or 2-3 disjuncts of 1-2 atoms each), every threshold moved by
    one shift to the edge (:func:`edge`): (disjuncts, side)."""
    multi = rng.random() < 0.35
    shape = [int(rng.integers(1, 3)) for _ in range(int(rng.integers(2, 4)))] if multi else [1]
    djs = []
    for m in shape:  # each atom's threshold starts at a random quantile of its output over the samples
        outs = rng.integers(n_out, size=m)
        djs.append([("le" if rng.random() < 0.5 else "ge", int(i), None, _quantile(y[:, i], rng.random()))
                    for i in outs])
    sh, side = edge(rng, value(y, djs))  # every atom's slack drops by sh
    return [[(kind, i, None, t + sh if kind == "le" else t - sh) for kind, i, _, t in dj] for dj in djs], side


def ball_points(x0: np.ndarray, eps: float, norm: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """float32 points of the ``norm`` ball of radius ``eps`` around ``x0`` (half on its surface, half inside;
    for linf also its corners), only those whose float32 values lie in the ball (exact float64 check)."""
    d = x0.shape[0]
    if norm == "linf":
        u = rng.choice([-1.0, 1.0], (n // 2, d))
        pts = np.concatenate([u, rng.uniform(-1, 1, (n - n // 2, d))])
    else:
        g = rng.normal(0, 1, (n, d)) if norm == "l2" else rng.laplace(0, 1, (n, d))
        g /= np.linalg.norm(g, ord=2 if norm == "l2" else 1, axis=1, keepdims=True)
        r = np.ones((n, 1))
        r[n // 2:] = rng.random((n - n // 2, 1)) ** (1.0 / d)
        pts = g * r
    x = (x0 + eps * pts).astype(np.float32)
    dist = np.linalg.norm(x.astype(np.float64) - x0, ord={"linf": np.inf, "l2": 2, "l1": 1}[norm], axis=1)
    return x[dist <= eps]


def recheck(res, mpath: str, spath: str, tmp: str) -> str | None:
    """``certkit check`` on the certificate of a decided run: None when it re-derives it (exit 0), else why not
    (``--check``: a proof or witness that certkit cannot re-derive is a finding too)."""
    import contextlib
    import io

    from certkit.api import load_model, load_spec
    from certkit.certificate import certificate, dump
    from certkit.cli import main as cli

    model = load_model(mpath)
    cert = os.path.join(tmp, "c.json")
    dump(certificate(res, model, load_spec(spath, model)), cert)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli(["check", cert, "--model", str(mpath), "--spec", str(spath)])
    return None if rc == 0 else f"certkit check exit {rc} on the {res.verdict} certificate: " + \
        " | ".join(out.getvalue().strip().splitlines()[-3:])


def random_box(rng: np.random.Generator, model) -> tuple[np.ndarray, np.ndarray]:
    """A random float32 box of the model's input: centre N(0, 1), half-widths up to 1e-3 .. 1, a fifth of the
    inputs fixed."""
    d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    c = rng.normal(0, 1, d)
    r = rng.choice([1e-3, 0.05, 0.3, 1.0]) * rng.random(d)
    r[rng.random(d) < 0.2] = 0.0  # some inputs fixed
    return (c - r).astype(np.float32), (c + r).astype(np.float32)


def bounds_case(a, case: int, rng, model, n_out: int, mpath: str, tmp: str, fixed: bool = False) -> tuple[list[str], str | None, Callable]:
    """One bounds case (``--bounds``): every registered bound procedure's output bounds over a random box
    (:func:`certkit.bounds.fallback.lower_within_memory`, as ``certkit bounds`` runs them) against ``--samples``
    onnxruntime points of it; a sampled output outside a procedure's bounds (re-run alone) is a problem. Its
    verdicts: ``sound`` per procedure, ``error: ...`` where one refused; and ``loose: ...`` when DeepPoly's rows
    at one sampled point are wider than :data:`LOOSE` (:func:`point_width`: not wrong, a candidate looseness)."""
    import torch

    from certkit.api import load_model
    from certkit.bounds.backends import BACKENDS
    from certkit.bounds.fallback import lower_within_memory
    from certkit.bounds.fperror import input_set
    from certkit.verify.query import Budget

    lo, hi = random_box(rng, model)
    sess = session(mpath)
    x = box_points(lo, hi, a.samples, rng)
    y = outputs(sess, x)
    g = load_model(for_certkit(model, mpath, fixed)).graph
    eye = torch.eye(n_out, dtype=torch.float64)
    verdicts, problem = [], None
    for name in BACKENDS:
        try:
            low, _ = lower_within_memory(name, g, input_set(g, lo, hi), torch.cat([eye, -eye]),
                                         Budget.of(a.timeout), on_timeout=True)
        except Exception as e:  # noqa: BLE001 -- a refusal is reported, a crash is a finding
            verdicts.append(f"error: {name}: {type(e).__name__}: {e}")
            continue
        low = low[0].numpy()
        lower, upper = low[:n_out], -low[n_out:]
        out = (y < lower) | (y > upper)
        o = alone(sess, x[out.any(axis=1)][:64])
        excess = np.maximum(lower - o, o - upper).max(axis=1) if len(o) else o
        if (excess > 0).any():
            problem = (f"{name}: output bounds [{lower.tolist()}, {upper.tolist()}], but onnxruntime gives "
                       f"{o[int(np.argmax(excess))].tolist()} at a point of the box")
            break
        verdicts.append("sound")
    if problem is None:  # and at one point, DeepPoly's rows must be about as tight as the error terms
        width = point_width(g, x[0])
        if width > LOOSE * (1.0 + float(np.abs(y[0]).max())):
            verdicts.append(f"loose: the rows Y_i - Y_j at a point of the box are {width:.3g} wide"
                            + (" (a bound overflows inside the net)" if not np.isfinite(width) else ""))
    return verdicts, problem, lambda base: np.savez(base + ".npz", lo=lo, hi=hi)


#: a point's DeepPoly rows wider than this times 1 + its largest output are reported (``LOOSE``, not wrong):
#: the error budgets of a few layers of cubes and quotients by 1e-3 reach 3e-3 legitimately; the max-group
#: allowance fixed on 2026-12-07 was 1e18
LOOSE = 0.05


def point_width(g, x0: np.ndarray) -> float:
    """The widest of DeepPoly's back-substituted bounds on ``Y_i - Y_j`` (every pair) at the single float32
    input ``x0``: only the floating-point error terms separate lower and upper there, so a wide one is a
    looseness of certkit's error rules or relaxations (the rows as input splitting uses them, before any
    interval of the outputs meets them)."""
    import torch

    from certkit.bounds.deeppoly import BoundState
    from certkit.bounds.fperror import input_set

    n = g.n_outputs
    i, j = np.triu_indices(n, 1)
    d = torch.zeros(len(i), n, dtype=torch.float64)
    d[torch.arange(len(i)), torch.as_tensor(i)], d[torch.arange(len(i)), torch.as_tensor(j)] = 1.0, -1.0
    with torch.no_grad():
        low = BoundState(g, input_set(g, x0, x0), intersect=True).lower_of(g.output, torch.cat([d, -d])[None])[0]
    return float((-low[len(i):] - low[:len(i)]).max())


def vnnlib_case(a, case: int, rng, model, n_out: int, mpath: str, tmp: str, fixed: bool = False) -> tuple[list[str], str | None, Callable]:
    """One VNN-LIB case (module docstring): (its verdict, the problem found or None, a function writing its
    property to a folder)."""
    from certkit.api import certify
    from certkit.errors import CertkitError

    sess = session(mpath)
    lo, hi = random_box(rng, model)
    x = box_points(lo, hi, a.samples, rng)
    y = outputs(sess, x)
    if rng.random() < 0.4:  # Y_i <= Y_j at the edge: Y_i - Y_j's shift moved into output i's bias
        i, j = (int(k) for k in rng.choice(n_out, 2, replace=False))
        t, side = edge(rng, y[:, i] - y[:, j])
        b = [k for k in model.graph.initializer if k.name.endswith("_b")][-1]
        bias = numpy_helper.to_array(b).copy()
        bias[i] -= np.float32(t)
        b.CopyFrom(numpy_helper.from_array(bias, b.name))
        onnx.save(model, mpath)
        sess = session(mpath)
        y, prop = outputs(sess, x), [[("le_out", i, j, 0.0)]]
    else:
        prop, side = edge_property(rng, y, n_out)
    v = value(y, prop)
    spath = os.path.join(tmp, "p.vnnlib")
    write_vnnlib(spath, lo, hi, prop, n_out)
    try:
        cpath = for_certkit(model, mpath, fixed)
        res = certify(cpath, spath, backend=a.backend, timeout=a.timeout, seed=case)
        verdict = res.verdict
    except CertkitError as e:
        verdict = f"error: {e}"
    except Exception as e:  # noqa: BLE001 -- any crash is a finding
        verdict = f"crash: {type(e).__name__}: {e}"
    problem = None
    if verdict == "unsat" and (v <= 0).any():  # the violating points once more, each run alone (as a
        # checker runs a counterexample: onnxruntime may round a row of a batch differently)
        run = value(alone(sess, x[np.argsort(v)[:64]]), prop)
        if (run <= 0).any():
            problem = f"unsat, but a sampled point violates it by {float(run.min())!r} in onnxruntime"
    elif verdict == "sat":
        w = np.asarray(res.witness.x, dtype=np.float32).reshape(1, -1)
        wv = float(value(outputs(sess, w), prop)[0])
        inside = bool(((w >= lo) & (w <= hi)).all())
        if not (wv <= 0 and inside):
            problem = f"sat, but the witness's slack is {wv!r} (> 0: no violation), inside the box: {inside}"
    elif verdict.startswith("crash"):
        problem = verdict
    if a.check and not problem and verdict in ("sat", "unsat"):
        problem = recheck(res, cpath, spath, tmp)
    if problem:
        problem = f"threshold {side} the sampled minimum: {problem}"
    # not wrong, but a measure of the falsifier: a sampled point violates the property, certify did not say so
    missed = ["missed"] if verdict in ("timeout", "unknown") and (v <= 0).any() else []
    return [verdict] + missed, problem, lambda base: write_vnnlib(base + ".vnnlib", lo, hi, prop, n_out)


def dataset_case(a, case: int, rng, model, n_out: int, mpath: str, tmp: str, fixed: bool = False) -> tuple[list[str], str | None, Callable]:
    """One data-set case: 8 samples labelled by the net itself and one radius; every sample certified
    (``verified``) is attacked by ``--samples`` float32 points of its ball in onnxruntime (the violating ones
    re-run alone): one whose class changes (a tie counts, as certkit's unsafe set) is a problem."""
    from certkit.api import certify_dataset

    sess = session(mpath)
    d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = rng.normal(0, 1, (8, d)).astype(np.float32)
    y = outputs(sess, x).argmax(axis=1)
    eps = float(10.0 ** rng.uniform(-3, 0))
    try:
        res = certify_dataset(for_certkit(model, mpath, fixed), x, y, eps, norm=a.dataset, backend=a.backend,
                              timeout=a.timeout)
        verdicts = [smp.verdict for smp in res.samples]
    except Exception as e:  # noqa: BLE001 -- any crash is a finding
        return [f"crash: {type(e).__name__}: {e}"], f"crash: {type(e).__name__}: {e}", lambda base: None
    problem = None
    for k in (k for k, v in enumerate(verdicts) if v == "verified"):
        pts = ball_points(x[k].astype(np.float64), eps, a.dataset, a.samples, rng)
        out = outputs(sess, pts)
        bad = pts[np.delete(out, y[k], axis=1).max(axis=1) >= out[:, y[k]]]
        if any(np.delete(o, y[k]).max() >= o[y[k]] for o in alone(sess, bad[:64])):
            problem = f"sample {k} certified at {a.dataset} radius {eps!r}, but its class changes in the ball"
            break
    return verdicts, problem, lambda base: np.savez(base + ".npz", x=x, y=y, eps=eps)


def run_cases(a, acts: list[str], one_case: Callable) -> tuple[collections.Counter, list[str]]:
    """The loop both modes share: per case a random model (seeded by ``--seed`` and the case), ``one_case``
    on it (:func:`vnnlib_case`, :func:`dataset_case`); a case with a problem is printed and kept in ``--keep`` (its model and its property or samples)."""
    counts: collections.Counter = collections.Counter()
    wrong: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(a.cases):
            rng = np.random.default_rng([a.seed, case])
            model, n_out, desc = random_model(rng, acts, a.families)
            fixed = bool(np.random.default_rng([a.seed, case, 1]).random() < a.fixed_batch)  # (its own draw)
            desc += ", batch fixed at 1" if fixed else ""
            mpath = os.path.join(tmp, "m.onnx")
            onnx.save(model, mpath)
            verdicts, problem, save = one_case(a, case, rng, model, n_out, mpath, tmp, fixed)
            counts.update(v.split(":")[0] for v in verdicts)
            for v in {v for v in verdicts if v.startswith(("error", "loose"))}:  # not wrong, but worth a look
                print(f"{v.split(':')[0].upper()} case{a.seed}_{case} {desc}: {v.split(': ', 1)[1]}", flush=True)
            if "missed" in verdicts:  # nor is a counterexample sampling found and certify did not
                print(f"MISSED case{a.seed}_{case} {desc}: {verdicts[0]}", flush=True)
            if problem:
                name = f"{'bounds' if a.bounds else 'dataset' if a.dataset else 'case'}{a.seed}_{case}"
                a.keep = a.keep or tempfile.mkdtemp(prefix="fuzz_certify_")  # made when first needed
                onnx.save(model, os.path.join(a.keep, name + ".onnx"))
                save(os.path.join(a.keep, name))
                wrong.append(f"WRONG {name} {desc}: {problem}")
                print(wrong[-1], flush=True)
            print(f"\r{case + 1}/{a.cases} cases, {len(wrong)} wrong", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return counts, wrong


def main() -> int:
    from certkit.verify.plan import PLANS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0, help="certify's timeout per case (s)")
    ap.add_argument("--samples", type=int, default=200_000, help="onnxruntime points per box")
    ap.add_argument("--acts", default=",".join(ACTS), help=f"comma-separated subset of {','.join(ACTS)}")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help=f"comma-separated subset of the model families {','.join(FAMILIES)} (default all)")
    ap.add_argument("--fixed-batch", type=float, default=0.2,
                    help="share of the cases whose model certkit gets with its batch dimension fixed at 1 (default 0.2)")
    ap.add_argument("--backend", default="auto", choices=(*PLANS, "lipschitz"), help="certify backend (default auto)")
    ap.add_argument("--keep", help="folder for the wrong cases' model and VNN-LIB (default: a temporary one, made "
                                   "when the first wrong case is found)")
    ap.add_argument("--check", action="store_true",
                    help="also run certkit check on every sat/unsat certificate (one that fails is reported)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--bounds", action="store_true",
                    help="bounds mode instead: every bound procedure's output bounds over a random box against "
                         "the sampled outputs")
    mode.add_argument("--dataset", choices=("linf", "l2", "l1"),
                    help="data-set mode instead: certified samples of this norm attacked in their balls")
    a = ap.parse_args()
    acts = [s for s in a.acts.split(",") if s]
    a.families = tuple(s for s in a.families.split(",") if s)
    bad = [s for s in acts if s not in ACTS] + [s for s in a.families if s not in FAMILIES]
    if bad or not acts or not a.families or a.cases < 1 or a.timeout <= 0 or a.samples < 1 \
            or not 0 <= a.fixed_batch <= 1:
        print(f"fuzz_certify: bad arguments ({', '.join(bad) or 'counts must be positive, --fixed-batch in [0, 1]'}); activations: "
              f"{', '.join(ACTS)}; families: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    try:
        if a.keep:
            os.makedirs(a.keep, exist_ok=True)
    except OSError as e:
        print(f"fuzz_certify: cannot use --keep {a.keep}: {e.strerror or e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    counts, wrong = run_cases(a, acts, bounds_case if a.bounds else dataset_case if a.dataset else vnnlib_case)
    what = f"8 samples each, {a.dataset}" if a.dataset else f"{a.samples} points a box"
    print(f"{a.cases} cases in {time.monotonic() - t0:.1f} s (timeout {a.timeout:g} s, {what}): "
          + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    kept = "boxes" if a.bounds else "samples" if a.dataset else "properties"
    print(f"wrong verdicts: {len(wrong)}" + (f" (models and {kept} in "
                                              f"{a.keep})" if wrong else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
