"""``certkit lipschitz MODEL.onnx [--norm 2|inf] [--method ...] [--json OUT.json]``.

Prints the interval ``[lower, upper]`` on the Lipschitz constant and the method behind each
end, then one line per method tried (its bound, or why it does not apply).
"""
from __future__ import annotations

import json

from ..cli_paths import output_path


class _MethodChoices:
    """The ``--method`` choices: ``auto`` and the method registry, read only when argparse needs
    them (a ``--method`` value to check, or this command's help), since the registry imports torch
    and the parser is built on every start of ``certkit``. (With a ``metavar``, argparse does not
    list the choices when the argument is declared.)"""

    def __iter__(self):
        from .methods import METHODS

        return iter(("auto", *METHODS))

    def __contains__(self, name) -> bool:
        return name in tuple(self)


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    p.add_argument("--norm", default="2", choices=("2", "inf"), help="L_p -> L_p operator norm (default 2)")
    p.add_argument("--method", default="auto", choices=_MethodChoices(), metavar="METHOD",
                   help="upper-bound method: %(choices)s (default auto: the tightest that applies)")
    p.add_argument("--samples", type=int, default=32, help="random points for the lower bound")
    p.add_argument("--lower-time", type=float, default=3.0, help="seconds for the lower-bound search (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=output_path, help="write lower, upper, method and per-method details here")


def run_cli(a) -> int:
    from ..errors import UsageError
    from ..model import load_model
    from . import lipschitz_bounds

    if a.samples < 1:
        raise UsageError("--samples must be at least 1")
    if not a.lower_time >= 0:
        raise UsageError("--lower-time must be >= 0")
    model = load_model(a.model)
    r = lipschitz_bounds(model, a.norm, a.method, samples=a.samples, seed=a.seed, lower_time=a.lower_time)
    print(f"Lipschitz constant (L_{a.norm}): [{r.lower:.6g}, {r.upper:.6g}]")
    print(f"lower: {r.method_lower}; upper: {r.method_upper}")
    for name, m in r.methods.items():
        print(f"  {name:<10} {m.upper:.6g}")
    for name, why in r.refused.items():
        print(f"  {name:<10} n/a: {why}")
    if a.json:
        doc = r.to_json()
        doc = {"model": a.model, "lower": doc["lower"], "upper": doc["upper"], "method": doc["method"],
               "method_lower": r.method_lower, "method_upper": r.method_upper,
               **{k: v for k, v in doc.items() if k not in ("lower", "upper", "method")}}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0
