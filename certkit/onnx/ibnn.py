"""The ONNX form of an implicit-bias layer (paper 003; DESIGN.md section 8), shared by the exporter
(:mod:`certkit.nn.ibnn`) and the importer.

An IBNN layer's pre-activations solve ``z = a - lambda s(z)`` with
``s_i(z) = beta sum_k w_ik tanh(alpha (z_k - z_i))``, ``a = M x - b`` the output of an ordinary
Dense or Conv node. In ONNX the solver is **unrolled**: ``K`` damped fixed-point steps

    z_0 = a,    z_{k+1} = (1 - eta) z_k + eta (a - c sum_k w_ik tanh(alpha (z_k - z_i))),   c = lambda beta

written as one model-local function (``FunctionProto``, domain :data:`DOMAIN`) per layer, called by
one node with inputs ``(a, w)``; ``w`` (``m x m``, shared by the ``G`` groups) is an initializer of
the main graph. A dense layer is one group of ``m = n`` neurons; a convolutional one has a group per
channel (``m = H W``: the interaction is within a channel, between the pixels the kernel ``w``
links). onnxruntime inlines the function, so the file computes exactly these K steps.

The function's body is a pure function of :class:`IBNNParams` (:func:`layer_function`): the importer
rebuilds it from the parameters recorded in the model's metadata (:data:`META_KEY`) and accepts the
node as one implicit layer only when the file's body is **byte-for-byte** the canonical one, so the
parameters certkit reasons with are exactly those of the computation onnxruntime runs
(:func:`recognise`). Anything else -- an edited body, parameters that disagree, a function certkit
did not write -- is inlined and analysed op by op, as onnxruntime computes it.

``eta`` must be a dyadic number with at most 8 fraction bits in (0, 1] so that ``eta`` and
``1 - eta`` are exact in float32 and sum to one (the damped map then has the same fixed points).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

#: The domain of the layer functions.
DOMAIN = "ai.certkit.ibnn"
#: The metadata key (``ModelProto.metadata_props``): JSON ``{"format": 1, "layers": {name: params}}``.
META_KEY = "certkit.ibnn"
FORMAT = 1
#: The default opset of the function bodies (Unsqueeze and ReduceSum take their axes as inputs).
OPSET = 17


def f32(v: float) -> float:
    """``v`` rounded to float32 (the value the file stores)."""
    return float(np.float32(v))


@dataclass(frozen=True)
class IBNNParams:
    """One IBNN layer as exported. ``lam``, ``alpha``, ``beta`` are the paper's lambda and
    ``sigma(t) = beta tanh(alpha t)``; the body multiplies by ``c = f32(lam * beta)`` and ``alpha``
    (float32). ``K`` steps of damping ``eta`` from ``z_0 = a``; ``tol``: the tolerance the exporter
    chose K for (recorded, not trusted). ``shape``: the shape of ``a`` (batch 1); ``groups`` x ``m``
    its size. ``kernel``: how ``w`` was made (``dense``, ``uniform``, ``k3``...), for reports."""

    lam: float
    alpha: float
    beta: float
    eta: float
    K: int
    tol: float
    groups: int
    m: int
    shape: tuple[int, ...]
    kernel: str = "dense"

    @property
    def c(self) -> float:
        return f32(f32(self.lam) * f32(self.beta))

    def problems(self) -> list[str]:
        """What keeps these parameters from a well-formed layer (empty: fine)."""
        out = []
        if not (0 < self.eta <= 1) or self.eta * 256 != int(self.eta * 256):
            out.append(f"eta = {self.eta!r} is not a multiple of 1/256 in (0, 1]")
        if self.K < 1:
            out.append(f"K = {self.K} < 1")
        if self.groups * self.m != int(np.prod(self.shape)) or self.shape[:1] != (1,):
            out.append(f"shape {self.shape} is not batch 1 with {self.groups} x {self.m} values")
        for k in ("lam", "alpha", "beta", "tol"):
            if not math.isfinite(getattr(self, k)):
                out.append(f"{k} is not finite")
        if not (self.alpha > 0 and self.beta > 0):
            out.append("alpha and beta must be positive")
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @staticmethod
    def from_json(d: dict) -> "IBNNParams":
        names = set(IBNNParams.__dataclass_fields__)
        if not isinstance(d, dict) or not names - {"kernel"} <= set(d):
            raise ValueError(f"IBNN metadata needs the fields {sorted(names)}")
        return IBNNParams(lam=float(d["lam"]), alpha=float(d["alpha"]), beta=float(d["beta"]),
                          eta=float(d["eta"]), K=int(d["K"]), tol=float(d["tol"]), groups=int(d["groups"]),
                          m=int(d["m"]), shape=tuple(int(s) for s in d["shape"]), kernel=str(d.get("kernel", "dense")))


def layer_function(name: str, p: IBNNParams, opset: int = OPSET):
    """The canonical ``FunctionProto`` of one layer: ``z = F(a, w)``, the K steps of the module doc."""
    from onnx import TensorProto, helper

    def const(out: str, value, dtype=TensorProto.FLOAT):
        arr = np.asarray(value, dtype=np.float32 if dtype == TensorProto.FLOAT else np.int64)
        return helper.make_node("Constant", [], [out], value=helper.make_tensor(
            out + "_v", dtype, arr.shape, arr.reshape(-1).tolist()))

    nodes = [const("shape3", [1, p.groups, p.m], TensorProto.INT64),
             const("shape_a", list(p.shape), TensorProto.INT64),
             const("ax2", [2], TensorProto.INT64), const("ax3", [3], TensorProto.INT64),
             const("alpha", f32(p.alpha)), const("c", p.c),
             helper.make_node("Reshape", ["a", "shape3"], ["a3"])]
    damped = p.eta != 1.0
    if damped:
        nodes += [const("eta", f32(p.eta)), const("keep", f32(1.0 - p.eta))]
    z = "a3"
    for k in range(1, p.K + 1):
        t = f"s{k}_"
        nodes += [helper.make_node("Unsqueeze", [z, "ax2"], [t + "row"]),
                  helper.make_node("Unsqueeze", [z, "ax3"], [t + "col"]),
                  helper.make_node("Sub", [t + "row", t + "col"], [t + "diff"]),   # [i, j] = z_j - z_i
                  helper.make_node("Mul", [t + "diff", "alpha"], [t + "arg"]),
                  helper.make_node("Tanh", [t + "arg"], [t + "tanh"]),
                  helper.make_node("Mul", [t + "tanh", "w"], [t + "wt"]),
                  helper.make_node("ReduceSum", [t + "wt", "ax3"], [t + "sum"], keepdims=0),
                  helper.make_node("Mul", [t + "sum", "c"], [t + "cs"]),
                  helper.make_node("Sub", ["a3", t + "cs"], [t + "g"])]
        if damped:
            nodes += [helper.make_node("Mul", [z, "keep"], [t + "old"]),
                      helper.make_node("Mul", [t + "g", "eta"], [t + "new"]),
                      helper.make_node("Add", [t + "old", t + "new"], [t + "z"])]
            z = t + "z"
        else:
            z = t + "g"
    nodes.append(helper.make_node("Reshape", [z, "shape_a"], ["z"]))
    return helper.make_function(DOMAIN, name, ["a", "w"], ["z"], nodes,
                                [helper.make_opsetid("", opset)])


def metadata(layers: dict[str, IBNNParams]) -> str:
    """The value of :data:`META_KEY` for these layers (by function name)."""
    return json.dumps({"format": FORMAT, "layers": {k: p.to_json() for k, p in layers.items()}}, sort_keys=True)


def attach(model, layers: dict[str, IBNNParams]):
    """Add the canonical functions of ``layers`` (by function name; the model's nodes of domain
    :data:`DOMAIN` call them), the domain's opset import and the metadata to ``model`` (in place;
    returned). An existing entry of :data:`META_KEY` is replaced."""
    from onnx import helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    have = {f.name for f in model.functions}
    for name, p in layers.items():
        bad = p.problems()
        if bad:
            raise ValueError(f"IBNN layer {name}: {'; '.join(bad)}")
        if name not in have:
            model.functions.append(layer_function(name, p, opset))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    keep = [e for e in model.metadata_props if e.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, metadata(layers)
    return model


def recognise(model) -> tuple[dict[str, IBNNParams], dict[str, str]]:
    """The model's IBNN functions: ``(accepted, refused)`` -- parameters of each function whose body
    is the canonical one for its recorded parameters, and for the others why not (they are then
    inlined, op by op)."""
    ours = [f for f in model.functions if f.domain == DOMAIN]
    if not ours:
        return {}, {}
    raw = next((e.value for e in model.metadata_props if e.key == META_KEY), None)
    refused: dict[str, str] = {}
    try:
        meta = json.loads(raw) if raw is not None else None
        layers = meta["layers"] if isinstance(meta, dict) and meta.get("format") == FORMAT else None
    except (ValueError, KeyError, TypeError):
        layers = None
    if not isinstance(layers, dict):
        return {}, {f.name: f"no readable '{META_KEY}' metadata (format {FORMAT})" for f in ours}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    accepted: dict[str, IBNNParams] = {}
    for f in ours:
        try:
            p = IBNNParams.from_json(layers.get(f.name))
        except (ValueError, TypeError) as e:
            refused[f.name] = f"metadata: {e}"
            continue
        bad = p.problems()
        if bad:
            refused[f.name] = "; ".join(bad)
            continue
        fopset = next((o.version for o in f.opset_import if o.domain in ("", "ai.onnx")), opset)
        if f.SerializeToString(deterministic=True) != \
                layer_function(f.name, p, fopset).SerializeToString(deterministic=True):
            refused[f.name] = "its body is not the canonical unrolled iteration of its recorded parameters"
            continue
        accepted[f.name] = p
    return accepted, refused
