"""The pure reshapes (Flatten, Reshape, Squeeze, Unsqueeze) that the data-movement converter lowers
without the reference evaluator: whenever it gives a shape, the reference evaluator gives the same
shape and keeps every element in place; whatever it declines, the reference evaluator decides.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from certkit.onnx.converters.data_movement import _reshaped
from certkit.onnx.importer import _fold

SHAPES = [(1,), (1, 5), (1, 1, 1, 5), (2, 3, 4), (1, 3, 1, 2), (6,)]


def _reference(op: str, shape, args: list, attrs: dict, opset: int):
    """The reference evaluator's output on an index tensor, or None when it refuses the node."""
    names = ["X"] + [f"a{k}" if a is not None else "" for k, a in enumerate(args)]
    node = helper.make_node(op, names, ["Y"], **attrs)
    data = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    try:
        return _fold(node, [data] + list(args), opset)[0]
    except Exception:
        return None


def _cases():
    for shape, opset in itertools.product(SHAPES, (9, 11, 13, 14, 18)):
        r = len(shape)
        for axis in range(-r - 1, r + 2):
            yield "Flatten", shape, [], {"axis": axis}, opset
        yield "Flatten", shape, [], {}, opset
        size = int(np.prod(shape))
        targets = [[-1], [size], [1, -1], [-1, 1], [0, -1], [0, 0, -1], [1, size], [2, -1], [-1, -1], [0],
                   [size, 0], [3, 0, 2], [-2, size], [1, 1, 1, size], list(shape), list(shape)[::-1]]
        for t, allowzero in itertools.product(targets, (None, 0, 1)):
            if allowzero is not None and opset < 14:
                continue
            attrs = {} if allowzero is None else {"allowzero": allowzero}
            yield "Reshape", shape, [np.array(t, np.int64)], attrs, opset
        axes_lists = [None, [0], [-1], [1], [0, 2], [2, 0], [0, 0], [r], [-r - 1], [1, -1], [3]]
        for op, axes in itertools.product(("Squeeze", "Unsqueeze"), axes_lists):
            if opset >= 13:
                yield op, shape, [None if axes is None else np.array(axes, np.int64)], {}, opset
            else:
                yield op, shape, [], {} if axes is None else {"axes": axes}, opset


CASES = list(_cases())


@pytest.mark.parametrize("op,shape,args,attrs,opset", CASES,
                         ids=[f"{c[0]}-{c[1]}-{[None if a is None else a.tolist() for a in c[2]]}-{c[3]}-{c[4]}"
                              for c in CASES])
def test_pure_reshape_matches_reference_evaluator(op, shape, args, attrs, opset):
    ours = _reshaped(op, shape, args, attrs, opset)
    ref = _reference(op, shape, args, attrs, opset)
    if ours is None:
        return  # the reference evaluator decides, as it always did
    assert ref is not None, "lowered a node the reference evaluator refuses"
    assert tuple(ref.shape) == ours
    np.testing.assert_array_equal(ref.reshape(-1), np.arange(ref.size))


def test_the_common_cases_are_lowered_here():
    """The fast path is taken for the reshapes real models have (else it saves nothing)."""
    assert _reshaped("Flatten", (1, 1, 1, 5), [], {}, 8) == (1, 5)
    assert _reshaped("Reshape", (1, 16, 4, 4), [np.array([1, -1])], {}, 13) == (1, 256)
    assert _reshaped("Reshape", (1, 16, 4, 4), [np.array([0, -1])], {}, 13) == (1, 256)
    assert _reshaped("Squeeze", (1, 5, 1), [np.array([2])], {}, 13) == (1, 5)
    assert _reshaped("Unsqueeze", (5,), [np.array([0])], {}, 13) == (1, 5)
    assert _reshaped("Transpose", (1, 2, 3), [], {"perm": [0, 2, 1]}, 13) is None
