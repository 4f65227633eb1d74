"""``certkit abba convert MODEL.onnx -o ABBA.onnx``: the exact ABBA form of a net (paper 000, eqs. 9-12).

The converted model is checked against the original with onnxruntime on random inputs
before it is written; a mismatch is an error (nothing is written).
"""
from __future__ import annotations

from ..cli_paths import output_path


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="abba_command", parser_class=type(p))
    c = sub.add_parser("convert", help="write the nonnegative ABBA net equal to MODEL (symmetric activations)")
    c.add_argument("model", help="ONNX model (.onnx): a chain of linear layers and symmetric activations")
    c.add_argument("-o", "--output", required=True, type=output_path, help="where to write the ABBA model (.onnx)")
    c.add_argument("--samples", type=int, default=10000, help="random inputs for the equivalence check")
    c.add_argument("--float32", action="store_true", help="compute in float32 inside (default float64)")
    c.add_argument("--debug", action="store_true", help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


#: Largest accepted |y_abba - y| / (1 + |y|) in the equivalence check (float32 interface).
TOLERANCE = {True: 1e-5, False: 1e-3}


def run_cli(a) -> int:
    import onnx

    from ..errors import ModelError, UsageError
    from ..model import load_model
    from .convert import abba_convert, check_equivalence

    if getattr(a, "abba_command", None) != "convert":
        raise UsageError("usage: certkit abba convert MODEL.onnx -o ABBA.onnx")
    if a.samples < 0:
        raise UsageError("--samples must be >= 0")
    model = load_model(a.model)
    conv = abba_convert(model.graph, float64=not a.float32)
    err = check_equivalence(a.model, conv, a.samples)
    if err > TOLERANCE[not a.float32]:
        raise ModelError(f"the ABBA model differs from the original by {err:.3g} (relative) on random inputs; "
                         "not written")
    onnx.save(conv, a.output)
    print(f"wrote {a.output}: ABBA form of {a.model}; max relative difference {err:.3g} "
          f"on {a.samples} random inputs (onnxruntime)")
    return 0
