"""Complete verification by mixed-integer linear programming (DESIGN.md section 3).

The network ``y = f(x)`` over an input box becomes a MILP that is exact in real
arithmetic for the computed (floating-point) network: every affine row is ranged by its
rounding error, every piecewise-linear activation is encoded exactly with binaries. A
property is then decided on it with the solver's **dual bound** as the proof, never a
primal objective value, after a tolerance that covers the errors the solvers are designed
to make (Neumaier & Shcherbina's bound on the dual-feasibility error, and the primal
tolerance times the big-M constants).

* :mod:`.builder` -- the rows of each op: linear maps, two-piece activations (convex-hull
  big-M), Clip, MaxGroup; the builder they are written into;
* :mod:`.encoding` -- the walk over the network: intermediate bounds (DeepPoly, interval,
  LP tightening), refusal of nodes that are not piecewise linear, the objective
  ``min t, t >= C y - d``;
* :mod:`.lp` -- LP relaxations whose minima are made rigorous from their row duals;
* :mod:`.decide` -- deciding a property (DeepPoly, then the LP, then the MILP with early
  stops), the soundness-tolerance argument, and sound minima of ``c.y``.
"""
from .builder import BOUND_WIDEN, MipBuilder, linear_matrices
from .decide import (SOLVER_ABS, SOLVER_SAFETY, DisjunctMilp, MilpMinimum, MilpOutcome, milp_bound, milp_decide,
                     milp_minimize, solve_disjunct)
from .encoding import Encoding, check_encodable, encode, intermediate_bounds, non_piecewise_linear_nodes
from .lp import LpRelaxation, safe_lp_min

__all__ = ["BOUND_WIDEN", "SOLVER_ABS", "SOLVER_SAFETY", "DisjunctMilp", "Encoding", "LpRelaxation", "MilpMinimum",
           "MilpOutcome", "MipBuilder", "check_encodable", "encode", "intermediate_bounds", "linear_matrices",
           "milp_bound", "milp_decide", "milp_minimize", "non_piecewise_linear_nodes", "safe_lp_min",
           "solve_disjunct"]
