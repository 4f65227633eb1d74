"""Output tails that are not arithmetic: ArgMax/ArgMin, TopK indices, OneHot, comparisons and logic
ops on variable tensors.

Their outputs are integers or booleans (a class index, a mask, a count of agreeing pixels): piecewise
constant functions of the network's real-valued tensors, with no linear bounds to propagate. certkit
refuses them with a reason that names what to do instead: state the property on the real-valued
tensor they read (the logits), which is exact for the usual properties ("the argmax is the label" is
"logit_label - logit_j > 0 for every j"). On constants they are folded as usual and never reach here.
"""
from __future__ import annotations

from ..importer import Context, Unsupported, Var
from .base import converter

#: op type -> what it computes; every one is refused on a variable tensor (``certkit ops`` lists them apart)
_WHAT = {
    "ArgMax": "a class index", "ArgMin": "a class index", "TopK": "the k largest values and their indices",
    "OneHot": "a one-hot mask", "Equal": "a boolean mask", "Greater": "a boolean mask",
    "GreaterOrEqual": "a boolean mask", "Less": "a boolean mask", "LessOrEqual": "a boolean mask",
    "Not": "a boolean mask", "And": "a boolean mask", "Or": "a boolean mask", "Xor": "a boolean mask",
    "IsNaN": "a boolean mask", "IsInf": "a boolean mask", "NonZero": "the indices of the nonzero entries",
}


REFUSED_TAILS = frozenset(_WHAT)


@converter(*_WHAT)
def _tail(ctx: Context, node, ins: list, attrs: dict) -> list:
    src = next((name for name, v in zip(node.input, ins) if isinstance(v, Var)), node.input[0])
    raise Unsupported(f"a non-arithmetic output tail ({_WHAT[node.op_type]} of a variable tensor, a piecewise "
                      f"constant function): certkit bounds real-valued tensors; state the property on the "
                      f"tensor '{src}' this node reads (e.g. the logits) instead")
