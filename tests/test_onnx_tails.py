"""Non-arithmetic output tails (ArgMax, OneHot, comparisons) are refused with a reason that names the
node and the real-valued tensor to state the property on instead."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from certkit.errors import UnsupportedOpError
from certkit.onnx.importer import import_model
from tests.helpers.onnx_builders import X, const


def _model(tail: list, **consts):
    nodes = [helper.make_node("Relu", [X], ["logits"], name="relu")] + tail
    out_type = TensorProto.INT64 if tail[0].op_type == "ArgMax" else TensorProto.BOOL
    g = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info(X, TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("Y", out_type, None)],
                          initializer=[const(k, v) for k, v in consts.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("tail,consts", [
    ([helper.make_node("ArgMax", ["logits"], ["Y"], name="argmax", axis=1)], {}),
    ([helper.make_node("Equal", ["logits", "c"], ["Y"], name="equal")], {"c": np.zeros((1, 4), np.float32)}),
    ([helper.make_node("Greater", ["logits", "c"], ["Y"], name="greater")], {"c": np.zeros((1, 4), np.float32)}),
])
def test_tail_is_refused_naming_node_and_tensor(tail, consts):
    with pytest.raises(UnsupportedOpError) as e:
        import_model(_model(tail, **consts))
    msg = str(e.value)
    assert tail[0].name in msg and "non-arithmetic output tail" in msg and "'logits'" in msg
