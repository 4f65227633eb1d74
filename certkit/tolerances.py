"""Every numerical tolerance certkit relies on, in one place.

Floating-point margin (DESIGN.md section 2): bounds are computed in float64 on
exact real arithmetic, while the model runs in float32. A spec row counts as
proven only when its lower bound exceeds

    margin = depth * (FP_ABS + FP_REL * scale)

where ``depth`` is the number of layers of the graph and ``scale`` bounds the
magnitudes involved (|C_i| . |y(centre)| + |lower_i|). The certificate states it.
"""
FP_REL = 1e-6
FP_ABS = 1e-7


def fp_margin(depth: int, C, y_centre, lower):
    """The margin per row: ``depth * (FP_ABS + FP_REL * (|C| |y(centre)| + |lower|))``.

    Works on numpy arrays and torch tensors alike; ``y_centre`` is (n_out,) or batched
    (b, n_out), ``lower`` the rows' lower bounds with the matching shape.
    """
    return depth * (FP_ABS + FP_REL * (abs(y_centre) @ abs(C).T + abs(lower)))
