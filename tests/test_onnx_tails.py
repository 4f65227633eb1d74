"""Non-arithmetic output tails (ArgMax/ArgMin, OneHot, comparisons, logic, integer and bool casts):
lowered exactly onto Sign/ReLU/Abs/MaxGroup/linear maps (certkit/onnx/converters/tails.py). The IR
matches onnxruntime value for value, ties included; the bounds of every backend contain onnxruntime's
outputs on dense samples, degenerate boxes on ties included; a VNN-COMP carvana-style count tail
certifies; TopK, IsNaN and the like stay refused with a reason naming the node and the tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from certkit.bounds.backends import BACKENDS
from certkit.errors import UnsupportedOpError
from certkit.onnx.importer import import_model
from certkit.spec.sets import InputSet
from tests.helpers.onnx_builders import X, const, count_model, graph_model, ort_run

N = helper.make_node


def _tied(rng, n: int, shape) -> np.ndarray:
    """Samples on a coarse grid (many exact ties), a few on a fine one."""
    x = np.round(rng.uniform(-2, 2, (n,) + tuple(shape)) * 2) / 2
    x[: n // 4] = rng.uniform(-2, 2, (n // 4,) + tuple(shape))
    return x.astype(np.float32)


MODELS = {
    "argmax_k2": ([N("ArgMax", [X], ["Y"], axis=1, keepdims=0)], (1, 2, 5), {}),
    "argmax_k3_last": ([N("ArgMax", [X], ["Y"], axis=1, select_last_index=1)], (1, 3, 4), {}),
    "argmax_k5_axis2": ([N("ArgMax", [X], ["Y"], axis=2)], (1, 3, 5), {}),
    "argmin_k4": ([N("ArgMin", [X], ["Y"], axis=-1, keepdims=0)], (1, 2, 4), {}),
    "argmax_k1": ([N("ArgMax", [X], ["A"], axis=0), N("Cast", ["A"], ["Af"], to=TensorProto.FLOAT),
                   N("Add", ["Af", X], ["Y"])], (1, 6), {}),
    "onehot": ([N("ArgMax", [X], ["A"], axis=1, keepdims=0), N("OneHot", ["A", "d", "v"], ["Y"], axis=1)],
               (1, 3, 4), {"d": np.array(3), "v": np.array([2.0, 7.0], np.float32)}),
    "onehot_negative": ([N("ArgMax", [X], ["A"], axis=1, keepdims=0), N("Sub", ["A", "two"], ["B"]),
                         N("OneHot", ["B", "d", "v"], ["Y"], axis=-1)],
                        (1, 4, 3), {"two": np.array(2), "d": np.array(3), "v": np.array([0, 1])}),
    "equal_const": ([N("Equal", [X, "c"], ["Y"])], (1, 6), {"c": np.array([0.5, 0, -1, 1, 0.5, 2], np.float32)}),
    "compare_vars": ([N("Slice", [X, "s0", "s1", "ax"], ["A"]), N("Slice", [X, "s1", "s2", "ax"], ["B"]),
                      N("Greater", ["A", "B"], ["G"]), N("LessOrEqual", ["A", "B"], ["L"]),
                      N("Less", ["A", "B"], ["Lt"]), N("GreaterOrEqual", ["A", "B"], ["Ge"]),
                      N("And", ["G", "Ge"], ["P"]), N("Or", ["L", "Lt"], ["Q"]), N("Xor", ["P", "Q"], ["R"]),
                      N("Not", ["R"], ["S"]), N("Concat", ["G", "L", "Lt", "Ge", "P", "Q", "R", "S"], ["C"], axis=1),
                      N("Cast", ["C"], ["Y"], to=TensorProto.FLOAT)],
                     (1, 8), {"s0": np.array([0]), "s1": np.array([4]), "s2": np.array([8]), "ax": np.array([1])}),
    # adversarial: a permanent tie (x against itself), huge and overflowing products (1e38 * x)
    "argmax_dup": ([N("Concat", [X, X], ["C"], axis=1), N("ArgMax", ["C"], ["Y"], axis=1, keepdims=0)], (1, 3), {}),
    "argmax_huge": ([N("Mul", [X, "k"], ["Z"]), N("ArgMax", ["Z"], ["Y"], axis=1)], (1, 4),
                    {"k": np.array([1e30, 1e30, -1e30, 1e38], np.float32)}),
    "equal_huge": ([N("Mul", [X, "k"], ["Z"]), N("Equal", ["Z", "c"], ["Y"])], (1, 4),
                   {"k": np.array([1e30, 1e30, -1e30, 3e38], np.float32), "c": np.zeros(4, np.float32)}),
    "cast_int": ([N("Mul", [X, "k"], ["Z"]), N("Cast", ["Z"], ["I"], to=TensorProto.INT32),
                  N("Cast", [X], ["B"], to=TensorProto.BOOL), N("Cast", ["B"], ["Bi"], to=TensorProto.INT32),
                  N("Concat", ["I", "Bi"], ["Y"], axis=1)], (1, 6), {"k": np.float32(2.7)}),
}


def _float_out(nodes: list) -> list:
    """The nodes with their output ``Y`` cast to float (the test models' outputs are float tensors)."""
    out = [N(n.op_type, list(n.input), ["T" if o == "Y" else o for o in n.output],
             **{a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in nodes]
    return out + [N("Cast", ["T"], ["Y"], to=TensorProto.FLOAT)]


def _model(name: str):
    nodes, shape, consts = MODELS[name]
    return graph_model(_float_out(nodes), shape, consts=consts), shape


@pytest.mark.parametrize("name", list(MODELS))
def test_lowering_matches_onnxruntime_with_ties(name):
    m, shape = _model(name)
    g = import_model(m)
    x = _tied(np.random.default_rng(0), 200, shape[1:])
    ref = ort_run(m, x)
    got = g.forward(torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float64)).numpy()
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("backend", ["interval", "deeppoly", "alpha"])
@pytest.mark.parametrize("name", list(MODELS))
def test_bounds_contain_onnxruntime(name, backend):
    m, shape = _model(name)
    g = import_model(m)
    rng = np.random.default_rng(1)
    n_in = int(np.prod(shape))
    # a point off the ties (every indicator decided), a point on ties, narrow and wide boxes on ties
    for width, tied in ((0.0, False), (0.0, True), (0.3, True), (2.0, True)):
        centre = rng.uniform(-1, 1, n_in)
        if tied:
            centre = np.round(centre * 2) / 2
        lo, hi = centre - width / 2, centre + width / 2
        n_out = g.n_outputs
        C = torch.cat([torch.eye(n_out), -torch.eye(n_out)]).to(torch.float64)[None]
        low = BACKENDS[backend].lower(g, InputSet.box(lo, hi), C)[0].detach().numpy()
        lb, ub = low[:n_out], -low[n_out:]
        assert not (np.isnan(lb).any() or np.isnan(ub).any())
        xs = rng.uniform(lo, hi, (300, n_in)).astype(np.float32)
        xs = np.concatenate([xs, np.round(xs * 2) / 2]).clip(lo, hi).astype(np.float32)
        y = ort_run(m, xs)
        assert (y >= lb - 1e-9).all() and (y <= ub + 1e-9).all(), (name, backend, width)
        if not tied and name != "argmax_dup":  # x against itself is a tie everywhere (sound, undecided)
            assert np.all(ub - lb < 1e-3), (name, backend)


W = np.random.default_rng(3).normal(size=(2, 2, 1, 1)).astype(np.float32)


def _count_model():
    """A carvana-style tail (:func:`tests.helpers.onnx_builders.count_model`) on a 3x4 image."""
    return count_model((1, 3, 3, 4), W)


def test_count_tail_matches_and_certifies(tmp_path):
    from certkit.api import certify, load_model, load_spec

    m = _count_model()
    g = import_model(m)
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (1, 3, 3, 4)).astype(np.float32)
    logits = np.einsum("oc,chw->ohw", W[:, :, 0, 0].astype(np.float64), x[0, :2].astype(np.float64))
    x[0, 2] = logits.argmax(0) == 1  # the mask: the net's own segmentation
    ref = ort_run(m, x.reshape(1, -1))
    assert ref[0, 0] == 12.0 == float(g.forward(torch.as_tensor(x.reshape(1, -1), dtype=torch.float64))[0, 0])
    path = tmp_path / "count.onnx"
    path.write_bytes(m.SerializeToString())
    lo, hi = x.reshape(-1).astype(np.float64).copy(), x.reshape(-1).astype(np.float64).copy()
    lo[:24] -= 1e-3
    hi[:24] += 1e-3  # the image moves, the mask is pinned
    spec = tmp_path / "count.vnnlib"
    lines = [f"(declare-const X_{i} Real)" for i in range(36)] + ["(declare-const Y_0 Real)"]
    lines += [f"(assert (>= X_{i} {float(lo[i])!r}))\n(assert (<= X_{i} {float(hi[i])!r}))" for i in range(36)]
    model = load_model(str(path))
    spec.write_text("\n".join(lines + ["(assert (<= Y_0 11))"]))  # unsafe: some pixel flips
    assert certify(model, load_spec(str(spec), model), timeout=60).verdict == "unsat"
    spec.write_text("\n".join(lines + ["(assert (<= Y_0 12))"]))  # the centre itself is a witness
    assert certify(model, load_spec(str(spec), model), timeout=60).verdict == "sat"


@pytest.mark.parametrize("op,out_type", [("TopK", TensorProto.FLOAT), ("IsNaN", TensorProto.BOOL)])
def test_refused_tails_name_node_and_tensor(op, out_type):
    nodes = [N("Relu", [X], ["logits"], name="relu")]
    if op == "TopK":
        nodes.append(N("TopK", ["logits", "k"], ["Y", "I"], name="tail", axis=1))
    else:
        nodes.append(N(op, ["logits"], ["Y"], name="tail"))
    g = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info(X, TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("Y", out_type, None)], initializer=[const("k", np.array([2]))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(UnsupportedOpError) as e:
        import_model(m)
    msg = str(e.value)
    assert "tail" in msg and "non-arithmetic output tail" in msg and "'logits'" in msg


def test_onehot_of_real_values_and_unsigned_cast_are_refused():
    m = graph_model([N("OneHot", [X, "d", "v"], ["Y"])], (1, 3), consts={"d": np.array(3), "v": np.array([0., 1.])},
                    check=False)
    with pytest.raises(UnsupportedOpError, match="not integer-valued"):
        import_model(m)
    m = graph_model([N("Cast", [X], ["U"], to=TensorProto.UINT8), N("Cast", ["U"], ["Y"], to=TensorProto.FLOAT)],
                    (1, 3))
    with pytest.raises(UnsupportedOpError, match="UINT8"):
        import_model(m)


# -- Where with a variable condition (c a + (1 - c) b) ------------------------------------------------
def _where_model(kind: str):
    """``Where(x > t, a, b)`` with branches: two variables, a variable and a constant (either side),
    two constants, broadcasting, and a masked-attention style large negative fill."""
    rng = np.random.default_rng(7)
    t = np.float32(0.25)
    cmp = N("Greater", [X, "t"], ["c"])
    if kind == "two-vars":
        nodes = [cmp, N("Mul", [X, "k"], ["a"]), N("Neg", [X], ["b"]), N("Where", ["c", "a", "b"], ["Y"])]
        consts = {"t": t, "k": np.float32(3.0)}
    elif kind == "var-const":
        nodes = [cmp, N("Where", ["c", X, "f"], ["Y"])]
        consts = {"t": t, "f": rng.normal(0, 1, (1, 6)).astype(np.float32)}
    elif kind == "const-var":
        nodes = [cmp, N("Where", ["c", "f", X], ["Y"])]
        consts = {"t": t, "f": np.float32(-1e4)}
    elif kind == "two-consts":
        nodes = [cmp, N("Where", ["c", "p", "q"], ["Y"])]
        consts = {"t": t, "p": np.float32(2.0), "q": rng.normal(0, 1, (1, 6)).astype(np.float32)}
    else:  # broadcast: a (1, 6) condition choosing between a (1, 1) variable and the input
        nodes = [cmp, N("ReduceSum", [X], ["s"], keepdims=1), N("Where", ["c", "s", X], ["Y"])]
        consts = {"t": t}
    return graph_model(nodes, (1, 6), consts=consts)


WHERE_KINDS = ["two-vars", "var-const", "const-var", "two-consts", "broadcast"]


@pytest.mark.parametrize("kind", WHERE_KINDS)
def test_where_variable_condition_matches_onnxruntime(kind):
    m = _where_model(kind)
    g = import_model(m)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (400, 6)).astype(np.float32)
    x[::7, 2] = 0.25  # ties: x == t is not > t
    assert np.array_equal(np.asarray(g(x.astype(np.float64)), np.float32), ort_run(m, x)) or \
        np.allclose(g(x.astype(np.float64)), ort_run(m, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", WHERE_KINDS)
@pytest.mark.parametrize("backend", ["interval", "deeppoly", "alpha"])
def test_where_variable_condition_bounds_contain_onnxruntime(kind, backend):
    m = _where_model(kind)
    g = import_model(m)
    rng = np.random.default_rng(2)
    for lo, hi in ((0.3, 0.6), (-0.5, 0.1), (-0.2, 0.7), (0.25, 0.25)):  # decided both ways, undecided, a tie
        S = InputSet.box(np.full(6, lo), np.full(6, hi))
        n = g.n_outputs
        C = torch.cat([torch.eye(n), -torch.eye(n)]).double()
        low = BACKENDS[backend].lower(g, S, C)[0].detach().numpy()
        x = rng.uniform(lo, hi, (2000, 6)).astype(np.float32)
        x[:4] = np.float32(lo)
        y = ort_run(m, x)
        assert (y >= low[:n] - 1e-9).all() and (y <= -low[n:] + 1e-9).all(), (kind, backend, lo, hi)
        if lo > 0.25:  # decided: the bounds are those of the chosen branch, not a mix
            assert float((-low[n:] - low[:n]).max()) <= 6 * (hi - lo) + 1e-3  # the widest branch: a sum of 6
