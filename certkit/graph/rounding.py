"""The rounding of a fused onnxruntime kernel that the IR computes in another form.

Softmax, LogSoftmax and LayerNormalization are one kernel each in onnxruntime (MLAS's
``exp(x - max) / sum`` for Softmax; ``E[x^2] - mean^2`` for the variance of LayerNormalization, also
when onnxruntime fuses a decomposed LayerNorm into one), while the IR lowers them to a chain of its
own ops chosen for tight bounds. The chain's exact value is the exact function; each of its nodes
charges its own rounding error (:mod:`certkit.bounds.fperror`), but those describe the IR's form,
not the kernel's. :class:`KernelRounding` is the identity ``y = x1`` placed after the chain, whose
error bound covers the kernel's whole rounding error, derived from the kernel's algorithm
(:mod:`certkit.bounds.fperror_kernels`): the computed network (1) of fperror admits "every other
node of the chain exact, this one off by the kernel's error", so the bounds hold for onnxruntime.

``x2`` (the kernel's input, ``rows`` groups of ``group`` values) only feeds the error rule: its
magnitudes enter the budget (LayerNorm: ``mean(x^2)`` of the group), and where it may be infinite or
NaN (beyond the largest finite number) the error is infinite -- the kernel would give NaN there,
whatever the IR's form says. Its coefficient in back-substitution is 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .ops import LinearOp, register_op

Tensor = torch.Tensor


@register_op
@dataclass(frozen=True, eq=False)
class KernelRounding(LinearOp):
    """``y = x1``, with the rounding error of a fused kernel of input ``x2``: at most
    ``u (rel |y| + absolute + ref_sq * mean_group(|x2|^2)) + tinies * tiny`` per element
    (``u``, ``tiny``: the model's precision), infinite where ``x2``'s group may be non-finite.
    ``x2`` has ``n_ref = rows * group`` values; ``y`` either one per group or one per ``x2`` value."""

    kind: ClassVar[str] = "kernel_rounding"
    arity: ClassVar[int] = 2
    what: str
    rel: float
    absolute: float
    tinies: float
    group: int
    n_ref: int
    ref_sq: float = 0.0

    def apply(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1

    def apply_abs(self, r1: Tensor, r2: Tensor) -> Tensor:
        return r1

    def backward(self, A: Tensor) -> tuple[Tensor, Tensor]:
        return A, A.new_zeros(()).expand(*A.shape[:-1], self.n_ref)  # no coefficient on x2 (a view)

    def group_to_output(self, g: Tensor, n_out: int) -> Tensor:
        """Per-group values (b, rows) spread over the output (b, n_out)."""
        per = n_out // g.shape[-1]
        return g if per == 1 else g.repeat_interleave(per, dim=-1)

    def describe(self) -> str:
        return f"{self.kind}[{self.what}]"


def check_sizes(op: KernelRounding, n_out: int) -> None:
    """The layout contract: ``x2`` is ``rows`` groups of ``group``; ``y`` has one value per group or
    per ``x2`` value."""
    rows = op.n_ref // op.group
    if rows * op.group != op.n_ref or n_out not in (rows, op.n_ref):
        raise ValueError(f"KernelRounding: {n_out} outputs for {op.n_ref} inputs in groups of {op.group}")
