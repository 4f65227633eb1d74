"""ConvTranspose, Resize and Upsample: ONNX -> IR against onnxruntime, their linear ops against
explicit matrices, their floating-point rules against onnxruntime, and the bounds of a small
conv -> transposed conv -> resize net against onnxruntime samples (issue 11, "Reach").
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from onnx import helper

from certkit.bounds.fperror import FLOAT32, interval_and_error, propagated_error, spectral_bound
from certkit.bounds.interval import interval_bounds
from certkit.errors import UnsupportedOpError
from certkit.graph import ops
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from tests.helpers.onnx_builders import (X, assert_bounds_contain_ort, assert_matches_ort, graph_model, ort_run,
                                        ort_output_shape, single)

RNG = np.random.default_rng(11)
E = np.zeros(0, np.float32)  # an empty roi / scales input


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def f(*v) -> np.ndarray:
    return np.array(v, np.float32)


def i64(*v) -> np.ndarray:
    return np.array(v, np.int64)


# ----------------------------------------------------------------------------- ConvTranspose

CT = "ConvTranspose"
CONV_T = {
    "plain": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3)),
    "stride2-bias": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 4, 4), r(3), strides=[2, 2]),
    "stride-dilation": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 2), r(3), strides=[2, 3], dilations=[2, 3]),
    "pads": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[2, 2], pads=[1, 0, 2, 1]),
    "output-padding": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[3, 2],
                                     output_padding=[2, 1], pads=[1, 1, 0, 0]),
    "output-padding-cropped": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[3, 2],
                                             output_padding=[2, 1], pads=[0, 1, 3, 2]),
    "groups": lambda: single(CT, (1, 4, 3, 3), X, r(4, 3, 3, 3), r(6), strides=[2, 2], group=2),
    "depthwise": lambda: single(CT, (1, 3, 3, 4), X, r(3, 1, 2, 2), r(3), strides=[2, 2], group=3),
    "same-upper": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "same-lower": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[2, 2], auto_pad="SAME_LOWER"),
    "same-upper-odd": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 4, 4), r(3), strides=[2, 3], auto_pad="SAME_UPPER"),
    "same-lower-odd": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 5, 5), r(3), strides=[2, 2], auto_pad="SAME_LOWER"),
    "same-upper-k1": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 1, 1), r(3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "valid": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[2, 2], auto_pad="VALID"),
    "output-shape": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[3, 2], output_shape=[10, 9]),
    "output-shape-odd": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[2, 2],
                                       output_shape=[6, 9]),
    "output-shape-same-upper": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[2, 2],
                                              output_shape=[6, 9], auto_pad="SAME_UPPER"),
    "output-shape-larger": lambda: single(CT, (1, 2, 4, 5), X, r(2, 3, 3, 3), r(3), strides=[2, 2],
                                          output_shape=[10, 12]),
    "1d": lambda: single(CT, (1, 2, 7), X, r(2, 3, 3), r(3), strides=[2], pads=[1, 0]),
    "1d-dilation-output-padding": lambda: single(CT, (1, 2, 7), X, r(2, 3, 3), r(3), strides=[2], dilations=[2],
                                                 output_padding=[1]),
    "opset9": lambda: single(CT, (1, 2, 3, 3), X, r(2, 2, 4, 4), r(2), strides=[2, 2], opset=9),
}


@pytest.mark.parametrize("name", sorted(CONV_T))
def test_conv_transpose_matches_onnxruntime(name):
    model = CONV_T[name]()
    g = assert_matches_ort(model, n=4, lo=-2.0, hi=2.0)
    assert g.output_shape == ort_output_shape(model)
    assert any(isinstance(nd.op, ops.ConvTranspose) for nd in g.nodes)


def test_conv_transpose_batchnorm_fused():
    """A BatchNormalization after a ConvTranspose folds into its kernel and bias (one IR node)."""
    c = 3
    model = graph_model([
        helper.make_node(CT, [X, "w", "b"], ["t"], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["t", "g", "be", "m", "v"], ["Y"])], (1, 2, 3, 4),
        consts=dict(w=r(2, c, 3, 3), b=r(c), g=r(c), be=r(c), m=r(c), v=np.abs(r(c)) + 0.5))
    g = assert_matches_ort(model, n=4, lo=-2.0, hi=2.0)
    assert [nd.op.kind for nd in g.nodes] == ["input", "conv_transpose"]
    assert g.nodes[1].op.fp_extra > 0  # the BatchNorm's roundings are kept


# ----------------------------------------------------------------------------- Resize / Upsample

CTMS = ("half_pixel", "asymmetric", "pytorch_half_pixel", "align_corners", "tf_half_pixel_for_nn",
        "half_pixel_symmetric")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
SHAPE = (1, 2, 5, 7)


def _resize(mode, ctm, scales=None, sizes=None, nearest_mode="round_prefer_floor", opset=None, shape=SHAPE):
    opset = opset or (19 if ctm == "half_pixel_symmetric" else 13)
    args = [X, E, f(*scales)] if scales is not None else [X, E, None, i64(*sizes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return single("Resize", shape, *args, opset=opset, mode=mode, coordinate_transformation_mode=ctm,
                      nearest_mode=nearest_mode)


RESIZE = {}
for _ctm in CTMS:
    for _nm in NEAREST:
        for _sc in ((1, 1, 2, 2), (1, 1, 3, 0.5), (1, 1, 1.7, 0.55)):
            RESIZE[f"nearest-{_ctm}-{_nm}-{_sc[2]}x{_sc[3]}"] = \
                (lambda c=_ctm, n=_nm, s=_sc: _resize("nearest", c, scales=s, nearest_mode=n))
    RESIZE[f"nearest-{_ctm}-sizes-10x14"] = lambda c=_ctm: _resize("nearest", c, sizes=(1, 2, 10, 14))
    if _ctm != "tf_half_pixel_for_nn":
        for _sc in ((1, 1, 2, 2), (1, 1, 1.7, 0.6), (1, 1, 0.5, 0.34)):
            RESIZE[f"linear-{_ctm}-{_sc[2]}x{_sc[3]}"] = lambda c=_ctm, s=_sc: _resize("linear", c, scales=s)
        for _sz in ((1, 2, 10, 14), (1, 2, 3, 11), (1, 2, 1, 1)):
            RESIZE[f"linear-{_ctm}-sizes-{_sz[2]}x{_sz[3]}"] = lambda c=_ctm, s=_sz: _resize("linear", c, sizes=s)
RESIZE.update({
    "resize10-nearest": lambda: single("Resize", SHAPE, X, f(1, 1, 2, 3), opset=10, mode="nearest"),
    "resize10-nearest-down": lambda: single("Resize", SHAPE, X, f(1, 1, 0.6, 0.5), opset=10, mode="nearest"),
    "resize10-linear": lambda: single("Resize", SHAPE, X, f(1, 1, 2, 1.5), opset=10, mode="linear"),
    "resize11-linear-sizes": lambda: single("Resize", SHAPE, X, f(), f(), i64(1, 2, 8, 9), opset=11, mode="linear"),
    "upsample7-nearest": lambda: single("Upsample", SHAPE, X, opset=7, mode="nearest", scales=[1.0, 1.0, 2.0, 3.0]),
    "upsample7-linear": lambda: single("Upsample", SHAPE, X, opset=7, mode="linear", scales=[1.0, 1.0, 2.0, 1.5]),
    "upsample9-nearest": lambda: single("Upsample", SHAPE, X, f(1, 1, 2, 2), opset=9, mode="nearest"),
    "upsample9-linear": lambda: single("Upsample", SHAPE, X, f(1, 1, 1.5, 2.5), opset=9, mode="linear"),
    "resize18-axes-scales": lambda: single("Resize", SHAPE, X, None, f(2, 1.5), opset=18, mode="linear", axes=[2, 3]),
    "resize18-not-larger": lambda: single("Resize", SHAPE, X, None, None, i64(9, 12), opset=18, mode="nearest",
                                          axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
    "resize18-not-smaller": lambda: single("Resize", SHAPE, X, None, None, i64(9, 12), opset=18, mode="linear",
                                           axes=[2, 3], keep_aspect_ratio_policy="not_smaller"),
    "linear-nhwc": lambda: single("Resize", (1, 5, 7, 3), X, E, f(1, 2, 1.5, 1), opset=13, mode="linear"),
    "linear-rank2": lambda: single("Resize", (5, 7), X, E, f(2, 1.5), opset=13, mode="linear"),
    "linear-rank3": lambda: single("Resize", (3, 5, 7), X, E, f(2, 1.5, 1.2), opset=13, mode="linear"),
    "linear-rank5": lambda: single("Resize", (1, 2, 3, 4, 5), X, E, f(1, 1, 2, 1.5, 0.7), opset=13, mode="linear",
                                   coordinate_transformation_mode="align_corners"),
    "nearest-rank3": lambda: single("Resize", (1, 3, 7), X, E, f(1, 1, 2.5), opset=13, mode="nearest"),
    "nearest-channels": lambda: single("Resize", (1, 2, 3, 3), X, E, f(1, 2, 2, 1), opset=13, mode="nearest"),
    "identity-scales": lambda: single("Resize", SHAPE, X, E, f(1, 1, 1, 1), opset=13, mode="linear"),
    "same-size-scale": lambda: single("Resize", SHAPE, X, E, f(1, 1, 1.1, 1.05), opset=13, mode="linear"),
})


@pytest.mark.parametrize("name", sorted(RESIZE))
def test_resize_matches_onnxruntime(name):
    model = RESIZE[name]()
    g = assert_matches_ort(model, n=3, lo=-2.0, hi=2.0)
    assert g.output_shape == ort_output_shape(model)
    kinds = {nd.op.kind for nd in g.nodes[1:]}
    assert kinds <= {"select", "sparse_linear"}, kinds


def test_resize_ops_chosen():
    assert [nd.op.kind for nd in import_model(_resize("nearest", "asymmetric", (1, 1, 2, 2))).nodes] == \
        ["input", "select"]
    g = import_model(_resize("linear", "half_pixel", (1, 1, 2, 2)))
    op = g.nodes[1].op
    assert isinstance(op, ops.SparseLinear) and op.fan_in == 4 and (op.weight >= 0).all()
    np.testing.assert_allclose(op.weight.sum(axis=1), 1.0, rtol=1e-15)
    assert op.weight_error > 0


def test_resize_random_index_maps():
    """Random scales and sizes (1-D resizes of a ramp): every accepted model equals onnxruntime;
    the only refusals are nearest coordinates at an inexact rounding boundary."""
    rng = np.random.default_rng(5)
    accepted = 0
    for t in range(60):
        n_in = int(rng.integers(1, 10))
        ctm = CTMS[t % len(CTMS)]
        mode = "nearest" if t % 3 else "linear"
        if mode == "linear" and ctm == "tf_half_pixel_for_nn":
            ctm = "half_pixel"
        nm = NEAREST[int(rng.integers(4))]
        if rng.random() < 0.5:
            s = rng.integers(1, 6) / rng.integers(1, 6) if rng.random() < 0.6 else rng.uniform(0.3, 3)
            if int(np.float32(s) * np.float32(n_in)) < 1:
                continue
            model = _resize(mode, ctm, scales=(1, 1, 1, s), nearest_mode=nm, shape=(1, 1, 1, n_in))
        else:
            model = _resize(mode, ctm, sizes=(1, 1, 1, int(rng.integers(1, 13))), nearest_mode=nm,
                            shape=(1, 1, 1, n_in))
        try:
            g = import_model(model)
        except UnsupportedOpError as e:
            assert mode == "nearest" and "rounding of a boundary" in str(e), str(e)
            continue
        x = np.arange(n_in, dtype=np.float32).reshape(1, 1, 1, 1, n_in) * 3 - 5
        np.testing.assert_allclose(g(x.reshape(1, -1)), ort_run(model, x), rtol=1e-6, atol=1e-6)
        accepted += 1
    assert accepted >= 40


@pytest.mark.parametrize("model,why", [
    (lambda: single("Resize", SHAPE, X, E, f(1, 1, 2, 2), opset=13, mode="cubic"), "cubic"),
    (lambda: single("Resize", SHAPE, X, None, f(1, 1, 2, 2), opset=18, mode="linear", antialias=1), "antialias"),
    (lambda: single("Resize", SHAPE, X, f(0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9), f(1, 1, 2, 2), opset=13, mode="nearest",
                    coordinate_transformation_mode="tf_crop_and_resize"), "tf_crop_and_resize"),
    (lambda: single("Resize", SHAPE, X, E, f(2, 1, 2, 2), opset=13, mode="linear"), "interpolates 2 or 3 axes"),
    (lambda: _resize("nearest", "asymmetric", sizes=(1, 2, 9, 4)), "rounding of a boundary"),
])
def test_resize_refusals_have_reasons(model, why):
    with pytest.raises(UnsupportedOpError, match=why):
        import_model(model())


# ----------------------------------------------------------------------------- explicit matrices


def _matrix(op: ops.LinearOp, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    eye = torch.eye(n_in, dtype=torch.float64)
    c = op.forward(torch.zeros(1, n_in, dtype=torch.float64))[0]
    return (op.forward(eye) - c).T.numpy(), c.numpy()


LINEAR_MODELS = {
    "conv-transpose": CONV_T["output-padding-cropped"],
    "conv-transpose-groups": CONV_T["groups"],
    "conv-transpose-larger": CONV_T["output-shape-larger"],
    "conv-transpose-dilation": CONV_T["stride-dilation"],
    "linear-resize": lambda: _resize("linear", "half_pixel", scales=(1, 1, 1.7, 0.6)),
    "linear-resize-align": lambda: _resize("linear", "align_corners", sizes=(1, 2, 3, 11)),
    "trilinear": RESIZE["linear-rank5"],
}


@pytest.mark.parametrize("name", sorted(LINEAR_MODELS))
def test_linear_ops_against_explicit_matrix(name):
    """forward, backward (A M), apply_abs (|M| r), apply_split, bias and the norm bounds of the
    new linear ops agree with the matrix read off by unit vectors."""
    g = import_model(LINEAR_MODELS[name]())
    gen = torch.Generator().manual_seed(0)
    (nd,) = [nd for nd in g.nodes if isinstance(nd.op, (ops.ConvTranspose, ops.SparseLinear))]
    op, n_in = nd.op, g.size(nd.inputs[0])
    M, c = _matrix(op, n_in)
    n_out = M.shape[0]
    A = torch.randn(2, 3, n_out, generator=gen, dtype=torch.float64)
    (back,) = op.backward(A)
    np.testing.assert_allclose(back.numpy(), A.numpy() @ M, rtol=1e-12, atol=1e-12)
    rr = torch.rand(3, n_in, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(op.apply_abs(rr).numpy(), rr.numpy() @ np.abs(M).T, rtol=1e-12, atol=1e-12)
    bv = op.bias_vector()
    np.testing.assert_allclose(np.zeros(n_out) if bv is None else bv, c, rtol=1e-12, atol=1e-12)
    if hasattr(op, "apply_split"):
        pos, neg = torch.rand(3, n_in, generator=gen, dtype=torch.float64), torch.rand(3, n_in, generator=gen,
                                                                                     dtype=torch.float64)
        P, N = np.maximum(M, 0), np.maximum(-M, 0)
        up, un = op.apply_split(pos, neg)
        np.testing.assert_allclose(up.numpy(), pos.numpy() @ P.T + neg.numpy() @ N.T, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(un.numpy(), neg.numpy() @ P.T + pos.numpy() @ N.T, rtol=1e-12, atol=1e-12)
    if isinstance(op, ops.SparseLinear):
        np.testing.assert_allclose(op.matrix().toarray(), M, rtol=1e-12, atol=1e-15)
    rows, cols = op.abs_row_col_sums()
    assert rows >= np.abs(M).sum(axis=1).max() * (1 - 1e-12)
    assert cols >= np.abs(M).sum(axis=0).max() * (1 - 1e-12)
    assert spectral_bound(op) >= np.linalg.norm(M, 2) * (1 - 1e-12)


# ----------------------------------------------------------------------------- floating point and bounds


@pytest.mark.parametrize("name", ["stride2-bias", "groups", "output-padding-cropped"])
def test_conv_transpose_rounding_rule_at_points(name):
    """At single points (degenerate boxes, l == u) the interval bounds with the ConvTranspose
    error rule contain onnxruntime's float32 output, for large and tiny magnitudes too."""
    model = CONV_T[name]()
    g = import_model(model)
    for scale in (1.0, 1e4, 1e-20):
        x = (r(6, *g.input_shape[1:]) * scale).astype(np.float32)
        ref = ort_run(model, x[:, None])
        flat = x.reshape(6, -1).astype(np.float64)
        lo, hi = interval_bounds(g, InputSet.box(flat, flat))[g.output]
        assert (lo.numpy() <= ref).all() and (ref <= hi.numpy()).all(), scale


def test_linear_resize_rounding_rule_at_points():
    model = _resize("linear", "half_pixel", scales=(1, 1, 1.7, 0.6))
    g = import_model(model)
    x = r(6, *SHAPE[1:]) * 1e3
    ref = ort_run(model, x[:, None])
    flat = x.reshape(6, -1).astype(np.float64)
    lo, hi = interval_bounds(g, InputSet.box(flat, flat))[g.output]
    assert (lo.numpy() <= ref).all() and (ref <= hi.numpy()).all()
    # a float64 model is charged the float32 weights too: never less than the weights' own error
    op = g.nodes[1].op
    t = torch.as_tensor(flat)
    _, _, err = interval_and_error(op, [(t, t)], FLOAT32, 64)
    assert (err >= op.weight_error * op.apply_abs(t.abs())).all()


def _net(resize_mode: str):
    """conv -> relu -> conv transpose (stride 2) -> relu -> resize -> conv."""
    nodes = [helper.make_node("Conv", [X, "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node(CT, ["ar", "w2", "b2"], ["t"], strides=[2, 2], pads=[1, 1, 0, 0]),
             helper.make_node("Relu", ["t"], ["tr"]),
             helper.make_node("Resize", ["tr", "roi", "sc"], ["u"], mode=resize_mode),
             helper.make_node("Conv", ["u", "w3"], ["Y"], strides=[3, 3])]
    return graph_model(nodes, (1, 1, 3, 3), consts=dict(
        w1=r(2, 1, 3, 3), b1=r(2), w2=r(2, 2, 3, 3) * 0.5, b2=r(2), roi=E, sc=f(1, 1, 1.5, 1.5), w3=r(2, 2, 3, 3)))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_bounds_contain_onnxruntime(mode):
    """Interval, DeepPoly and alpha bounds over boxes contain onnxruntime's outputs at box points."""
    model = _net(mode)
    g = import_model(model)
    assert {"conv_transpose", "relu"} <= {nd.op.kind for nd in g.nodes}
    for lo, hi in ((-1.0, 1.0), (0.2, 0.3), (-300.0, 300.0)):
        assert_bounds_contain_ort(model, lo=lo, hi=hi, n=120)


def test_bounds_degenerate_and_overflowing_boxes():
    """A box of width 0 gives bounds containing onnxruntime's value; weights near the float32
    maximum give infinite bounds, never NaN and never a wrong finite number."""
    model = _net("linear")
    g = import_model(model)
    x = r(1, 9)
    from certkit.bounds.backends import BACKENDS

    m = g.n_outputs
    C = torch.cat([torch.eye(m), -torch.eye(m)]).double()
    ref = ort_run(model, x.reshape(1, 1, 1, 3, 3))[0]
    xx = x.astype(np.float64)
    for name in ("interval", "deeppoly"):
        low = BACKENDS[name].lower(g, InputSet.box(xx, xx), C)[0].numpy()
        assert (low[:m] <= ref + 1e-6 * (1 + np.abs(ref))).all() and (ref <= -low[m:] + 1e-6 * (1 + np.abs(ref))).all()
    big = single(CT, (1, 1, 2, 2), X, np.full((1, 1, 2, 2), 3e38, np.float32), strides=[1, 1])
    gb = import_model(big)
    for name in ("interval", "deeppoly"):
        low = BACKENDS[name].lower(gb, InputSet.box(np.ones((1, 4)), np.full((1, 4), 2.0)),
                                   torch.cat([torch.eye(9), -torch.eye(9)]).double())[0]
        assert not torch.isnan(low).any() and not torch.isfinite(low).all(), name
    E_, E2 = propagated_error(g, InputSet.box(np.zeros((1, 9)), np.ones((1, 9))))
    assert torch.isfinite(E_).all() and torch.isfinite(E2).all() and (E_ > 0).all()
