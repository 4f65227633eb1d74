"""Every numerical constant certkit's soundness relies on, in one place.

Floating-point error of the model (DESIGN.md section 2, "Floating point"; the argument is in
:mod:`certkit.bounds.fperror`). The constants below are the per-op rounding budgets that
module charges; each says where it comes from.
"""
#: Unit roundoff of the float64 arithmetic certkit's own bound computations run in.
U64 = 2.0 ** -53

#: Extra roundings charged to every affine ONNX op beyond its dot product (fan-in + 1):
#: onnxruntime's graph optimiser may pre-multiply constants in float32 (Conv+BatchNorm,
#: Conv+Mul, MatMul+Scale fusions; Gemm's alpha and beta), which perturbs each weight by a
#: few relative ulps, and certkit's IR holds such parameters in float64 (1/c for a Div,
#: gamma/sqrt(var+eps) for a BatchNorm), a relative 2^-53 away from the real value.
PARAM_STEPS = 4

#: Elementwise transcendental ops (Sigmoid, Tanh, Softplus) in onnxruntime (MLAS kernels,
#: polynomial approximations with clamped inputs): |computed - exact| <= ACT_ULPS ulp(|y|)
#: + ACT_ABS * 2^24 u. Measured on every float32 input in [-100, 100] on x86-64 (AVX2):
#: Sigmoid 1.78e-7 absolute at most (its relative error is large for tiny outputs: MLAS
#: clamps the input to [-18, 18]), Tanh 3.1e-7 (5.2 ulp), Softplus 4.4 ulp; the budget is
#: 16 ulp + 2^-20 (9.5e-7) for float32, i.e. more than 5x each measured maximum
#: (benchmarks/float_soundness.py re-measures it).
ACT_ULPS = 16
ACT_ABS = 2.0 ** -20

#: Safety factor on the float64 allowance of certkit's own arithmetic (see fperror).
COMPUTE_SAFETY = 2.0


def gamma(k: int | float, u: float) -> float:
    """Higham's ``gamma_k = k u / (1 - k u)``: the relative error bound of ``k`` chained
    roundings in precision ``u`` (Accuracy and Stability of Numerical Algorithms, ch. 3)."""
    if u == 0.0:
        return 0.0
    ku = k * u
    if ku >= 0.5:
        return float("inf")
    return ku / (1.0 - ku)

