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

#: The unary ops of certkit.graph.elementwise in onnxruntime (certkit.bounds.fperror_elementwise):
#: Exp, Log, Pow (constant exponent), Sin, Cos, Erf are charged ELEMENTWISE_ULPS ulp(|y|) (+ ACT_ABS
#: for Sin, Cos, Erf) + 2^-126; Sqrt and Reciprocal, which onnxruntime rounds correctly,
#: ROUNDED_ULPS ulp(|y|). Measured against float64 references (benchmarks/elementwise_errors.py:
#: every 257th float32 bit pattern of each sign over the whole range, every float32 of the hard
#: binades -- Log on [0.25, 4), Sin/Cos on [1/8, 256), Erf on [1/16, 4), Exp on [1/4, 64) -- and
#: 2M points in [-10, 10]; onnxruntime CPU, x86-64), the largest error in float32 ulps of the
#: result: Exp 0.87, Log 3.47 (near x = 1.13), Sin 2.31, Cos 2.42 (largest absolute error of both
#: 9.7e-8, near their zeros), Erf 1.0, Pow 1.29 (p = 3; 0.502 for p in {2, 4, 0.5, 1.5, 2.5, -1,
#: -2, -0.5}), Reciprocal 0.5, Sqrt 0.5; no finite result became infinite. Budgets: 20 ulp is
#: 5.8x Log's maximum (more for the others), 4 ulp is 8x the correctly rounded ops' 0.5.
ELEMENTWISE_ULPS = 20
ROUNDED_ULPS = 4

#: The exponential inside onnxruntime's Softmax/LogSoftmax kernel (MLAS ``ComputeSumExpF32Kernel``: a
#: polynomial after ``x - max``, inputs clamped at -88.38), charged as ``SOFTMAX_EXP_ULPS ulp`` + 2 tiny
#: per exponential in the Softmax budget (certkit.bounds.fperror_kernels). Measured on whole kernels
#: (tests/test_products.py: rows of 2 to 1000 float32 logits at scales 0.1 to 1e5, ties, offsets of
#: 1e4, onnxruntime CPU x86-64): Softmax's error was at most u (6.2 |y| + 0.37) at n = 1000
#: (3.2 |y| at n = 17), LogSoftmax's at most 6.2 u (|y| + 1); the budget charges
#: u ((4 SOFTMAX_EXP_ULPS + n + ln n + 1) |y| + 0.37), 101 |y| at n = 17, over 15x the measured.
SOFTMAX_EXP_ULPS = ELEMENTWISE_ULPS

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

