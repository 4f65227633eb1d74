"""onnxruntime's float32 error on the unary elementwise ops of certkit.graph.elementwise, against
float64 references (numpy; scipy's erf), beside the budget certkit charges (certkit.tolerances:
ELEMENTWISE_ULPS, ROUNDED_ULPS, ACT_ABS; certkit.bounds.fperror_elementwise).

Inputs: every ``--stride``-th float32 bit pattern of each sign (all binades, subnormals and the
largest values included), every float32 of the binades listed in EXHAUSTIVE (where an op is
hardest: Log near 1, Sin/Cos/Erf on their working range), and 2M uniform points in [-10, 10].

Usage: python benchmarks/elementwise_errors.py [--stride 257] [--no-exhaustive]

Printed per op: the largest error in ulps of the float32 result, the largest absolute error, and
the largest fraction of the budget used (must stay below 20% for the 5x margin).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

U = 2.0 ** -24
TINY = 2.0 ** -126

#: op -> (reference, ulps charged, absolute term charged (float32)), from certkit.tolerances
def _budgets():
    from scipy.special import erf

    from certkit.tolerances import ACT_ABS, ELEMENTWISE_ULPS as E, ROUNDED_ULPS as R
    ops = {"Exp": (np.exp, E, 0.0), "Log": (np.log, E, 0.0), "Reciprocal": (lambda x: 1.0 / x, R, 0.0),
           "Sqrt": (np.sqrt, R, TINY ** 0.5), "Sin": (np.sin, E, ACT_ABS), "Cos": (np.cos, E, ACT_ABS),
           "Erf": (erf, E, ACT_ABS)}
    for p in (2.0, 3.0, 4.0, 0.5, 1.5, 2.5, -1.0, -2.0, -0.5):
        ops[f"Pow({p:g})"] = ((lambda x, p=p: np.power(x, p)), E, TINY ** p if 0 < p < 1 else 0.0)
    return ops


#: binades (exponents e: [2^e, 2^(e+1))) scanned exhaustively per op, both signs
EXHAUSTIVE = {"Log": range(-2, 2), "Sin": range(-3, 8), "Cos": range(-3, 8), "Erf": range(-4, 2),
              "Exp": range(-2, 6)}


def _session(op: str):
    import onnx.helper as h
    import onnxruntime as ort

    names, inits = ["x"], []
    if op.startswith("Pow("):
        inits.append(h.make_tensor("p", 1, [], [float(op[4:-1])]))
        names.append("p")
    g = h.make_graph([h.make_node(op.split("(")[0], names, ["y"])], "t",
                     [h.make_tensor_value_info("x", 1, [None])], [h.make_tensor_value_info("y", 1, [None])],
                     initializer=inits)
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=8)
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def _binade(e: int) -> np.ndarray:
    start = np.float32(2.0 ** e).view(np.uint32)
    x = np.arange(start, start + 2 ** 23, dtype=np.uint32).view(np.float32)
    return np.concatenate([x, -x])


class Stats:
    def __init__(self) -> None:
        self.ulp = self.abs = self.used = 0.0
        self.at_ulp = self.at_abs = self.at_used = np.nan
        self.n = 0
        self.mismatch = 0

    def add(self, x: np.ndarray, y: np.ndarray, ref, ulps: float, absolute: float) -> None:
        with np.errstate(all="ignore"):
            r = ref(x.astype(np.float64))
            y = y.astype(np.float64)
            fin = np.isfinite(r) & (np.abs(r) <= np.finfo(np.float32).max * (1 - 2 ** -25))
            self.mismatch += int((fin & ~np.isfinite(y)).sum())
            ok = fin & np.isfinite(y)
            x, y, r = x[ok], y[ok], r[ok]
            err = np.abs(y - r)
            ulp = np.spacing(np.abs(r).astype(np.float32)).astype(np.float64)
            used = err / (ulps * 2 * U * np.abs(r) + absolute + TINY)
        self.n += len(x)
        for name, v in (("ulp", err / ulp), ("abs", err), ("used", used)):
            if len(v) and v.max() > getattr(self, name):
                i = int(np.argmax(v))
                setattr(self, name, float(v[i]))
                setattr(self, "at_" + name, float(x[i]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stride", type=int, default=257)
    ap.add_argument("--no-exhaustive", action="store_true")
    args = ap.parse_args()
    bits = np.arange(0, 0x7F800000, args.stride, dtype=np.uint32).view(np.float32)
    rng = np.random.default_rng(0)
    base = np.concatenate([bits, -bits, rng.uniform(-10, 10, 2_000_000).astype(np.float32)])
    print(f"{'op':<11}{'inputs':>12}{'max ulp':>10}{'at x':>14}{'max |err|':>11}{'at x':>12}"
          f"{'budget used':>13}{'at x':>12}{'finite->inf':>12}")
    t0 = time.time()
    for op, (ref, ulps, absolute) in _budgets().items():
        sess = _session(op)
        st = Stats()
        chunks = [base]
        if not args.no_exhaustive:
            chunks += [_binade(e) for e in EXHAUSTIVE.get(op, ())]
        for x in chunks:
            st.add(x, sess.run(None, {"x": x})[0], ref, ulps, absolute)
        print(f"{op:<11}{st.n:>12}{st.ulp:>10.3g}{st.at_ulp:>14.7g}{st.abs:>11.3g}{st.at_abs:>12.4g}"
              f"{st.used:>12.1%}{st.at_used:>13.4g}{st.mismatch:>12}")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
