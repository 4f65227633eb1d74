"""``certkit ibnn``: what holds for the implicit-bias layers of a model (paper 003; DESIGN.md section 8).

For every :class:`~certkit.graph.implicit.ImplicitLayer` (``z = a - lambda s(z)``,
``s_i = beta sum_k w_ik tanh(alpha (z_k - z_i))``, ``c = lambda beta``; K steps in the file):

* **existence** for every lambda: ``G(z) = a - c s(z)`` is continuous and maps the box
  ``a +- |c| r`` (``r_i = sum_{k != i} |w_ik|``) into itself, so it has a fixed point there (Brouwer).
  Paper 003's Cor. 3.1 gets existence below a threshold from the energy's coercivity; this is stronger.
* **uniqueness by contraction**: ``q = 2 |c| alpha max_i r_i < 1`` (``|lambda| < 1 / (2 alpha beta
  max r)``) makes ``G`` a contraction in the inf-norm: one fixed point, the iteration converges at
  rate ``rho = |1 - eta| + eta q``, and the file's K steps are within ``rho^K |c| max r`` of it.
* **uniqueness by energy** (symmetric nonnegative kernel: paper 003, Props. 1-3 with
  ``F(t) = (beta / alpha) log cosh(alpha t)``, whose ``F'' <= alpha beta``): the fixed points are the
  critical points of ``E(z) = |z - a|^2 / 2 - (lambda / 2) sum_ik w_ik F(z_k - z_i)``, whose Hessian
  ``I - lambda beta L_s`` has eigenvalues in ``[1 - lambda beta alpha Lambda, 1]`` (``Lambda`` the largest
  eigenvalue of the kernel's Laplacian): strictly convex, hence one fixed point, for every
  ``lambda <= 0`` and for ``lambda < 1 / (alpha beta Lambda)`` -- up to twice the contraction
  threshold (uniform kernels: ``Lambda = m / (m - 1)`` against ``2 max r = 2``).
* the layer's **Lipschitz constants** (:meth:`ImplicitLayer.lipschitz`): ``1 / (1 - q)`` in the
  inf-norm, and in the 2-norm the smaller of Schur's and the energy view's ``1 / (1 - q_E)``.
* at a given input: the fixed point by iteration and a **certified enclosure** -- the residual bound
  ``|z~ - z*| <= |G(z~) - z~| / (1 - q)`` when ``q < 1``, and Krawczyk's test, which needs no ``q``:
  ``K(X) = z~ - Y H(z~) + (I - Y H'(X)) (X - z~)`` inside ``X`` proves that ``X`` holds exactly one
  fixed point, and it lies in ``K(X)`` (``H(z) = z - G(z)``, ``Y`` an approximate inverse of
  ``H'(z~)``, ``H'(X)`` the interval Jacobian from ``sech^2`` over the differences' ranges). Both in
  float64 with a relative allowance of 1e-12 (or 8 (m + 8) u64) for its rounding instead of directed rounding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: Relative allowance for the float64 rounding of the enclosure computations (at least 8 (m + 8) u64
#: for a group of m: the sums of m terms, more than a hundred times their worst-case rounding).
SLACK = 1e-12


@dataclass
class FixedPointAt:
    """The fixed point of one layer at one input (per group: the worst)."""

    iterations: int
    residual: float  # ||G(z~) - z~||_inf
    radius_contraction: float | None  # |z~ - z*| <= this (q < 1)
    radius_krawczyk: float | None  # z* in z~ +- this, the only fixed point in z~ +- box (None: test failed)
    krawczyk_box: float | None
    file_distance: float  # ||z_K - z~||_inf, z_K the file's K steps (float64)

    @property
    def radius(self) -> float | None:
        rs = [r for r in (self.radius_contraction, self.radius_krawczyk) if r is not None]
        return min(rs) if rs else None


@dataclass
class LayerReport:
    name: str
    node: str
    groups: int
    m: int
    kernel: str
    lam: float
    alpha: float
    beta: float
    c: float
    eta: float
    K: int
    tol: float
    r_max: float
    q: float
    q_energy: float | None
    lam_contraction: float
    lam_energy: float | None
    contraction: bool
    energy_unique: bool | None
    truncation: float | None
    lipschitz_inf: float
    lipschitz_2: float
    conclusions: list[str] = field(default_factory=list)
    at_input: FixedPointAt | None = None


@dataclass
class IBNNReport:
    model: str
    layers: list[LayerReport]
    inlined: dict[str, str]

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def layer_report(op, node_name: str) -> LayerReport:
    """The conditions of one layer (module doc), with the figures."""
    r = float(op.row_sums().max(initial=0.0))
    q, qe, lap = op.q("inf"), op.q_energy(), op.laplacian_max()
    ab = op.alpha * abs(op.c / op.lam) if op.lam not in (0.0,) and math.isfinite(op.lam) else op.alpha
    lam_c = 1.0 / (2.0 * ab * r) if r > 0 else math.inf
    lam_e = (1.0 / (ab * lap) if lap else math.inf) if lap is not None else None
    energy = None if qe is None else (op.c <= 0 or qe < 1.0)
    rep = LayerReport(name=op.name, node=node_name, groups=op.groups, m=op.m, kernel=op.kernel, lam=op.lam,
                      alpha=op.alpha, beta=op.beta, c=op.c, eta=op.eta, K=op.K, tol=op.tol, r_max=r, q=q,
                      q_energy=qe, lam_contraction=lam_c, lam_energy=lam_e, contraction=q < 1.0,
                      energy_unique=energy, truncation=op.truncation() if q < 1.0 else None,
                      lipschitz_inf=op.lipschitz("inf"), lipschitz_2=op.lipschitz("2"))
    cs = rep.conclusions
    cs.append(f"a fixed point exists for every input (G maps the box a +- {abs(op.c) * r:.4g} into itself; Brouwer)")
    if rep.contraction:
        cs.append(f"unique by contraction: q = {q:.4g} < 1 (|lambda| < {lam_c:.4g}); the iteration converges "
                  f"at rate {op.rho():.4g}; the file's {op.K} steps are within {rep.truncation:.3g} of it")
    else:
        cs.append(f"no contraction: q = {q:.4g} >= 1 (|lambda| >= {lam_c:.4g}); the file's {op.K} steps are "
                  "bounded as computed, not as the implicit layer")
    if energy is None:
        cs.append("energy view: the kernel is not symmetric and nonnegative (paper 003, Prop. 1 needs it)")
    elif energy:
        why = "lambda <= 0" if op.c <= 0 else f"q_E = |c| alpha Lambda = {qe:.4g} < 1 (lambda < {lam_e:.4g})"
        cs.append(f"unique by energy: {why}; the energy is strictly convex")
    else:
        cs.append(f"energy view: q_E = {qe:.4g} >= 1 (lambda >= {lam_e:.4g}): the energy may have several "
                  "critical points, several fixed points are possible")
    return rep


def _s(op, z: np.ndarray) -> np.ndarray:
    d = z[None, :] - z[:, None]  # [i, k] = z_k - z_i
    return (np.tanh(op.alpha * d) * op.w).sum(1)


def enclose_fixed_point(op, a: np.ndarray, tol: float = 1e-13, max_iter: int = 100_000) -> FixedPointAt:
    """The fixed point of ``op`` at ``a`` (flat, groups x m) with certified enclosures (module doc)."""
    import torch

    a = np.asarray(a, np.float64).reshape(op.groups, op.m)
    zt, its = op.fixed_point(torch.as_tensor(a.reshape(1, -1)), tol, max_iter)
    zt = zt.numpy().reshape(op.groups, op.m)
    with torch.no_grad():
        zk = op.forward(torch.as_tensor(a.reshape(1, -1))).numpy().reshape(op.groups, op.m)
    w_abs = np.abs(op.w)
    q = op.q("inf")
    slack = max(SLACK, 8.0 * (op.m + 8) * 2.0 ** -53)
    worst_res, rad_c, rad_k, box_k = 0.0, 0.0, 0.0, 0.0
    krawczyk_ok = True
    for g in range(op.groups):
        z, ag = zt[g], a[g]
        s = _s(op, z)
        H = z - ag + op.c * s  # = z - G(z)
        err_h = slack * (np.abs(z) + np.abs(ag) + abs(op.c) * (w_abs.sum(1) + np.abs(s))) + 1e-300
        res = float((np.abs(H) + err_h).max())
        worst_res = max(worst_res, res)
        if q < 1.0:
            rad_c = max(rad_c, res / (1.0 - q) * (1 + slack))
        r = _krawczyk(op, z, H, err_h, slack)
        if r is None:
            krawczyk_ok = False
        else:
            rad_k, box_k = max(rad_k, r[0]), max(box_k, r[1])
    return FixedPointAt(its, worst_res, rad_c if q < 1.0 else None, rad_k if krawczyk_ok else None,
                        box_k if krawczyk_ok else None, float(np.abs(zk - zt).max()))


def _ds_interval(op, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``ds/dz`` over the box (m x m): ``w_ik alpha sech^2(alpha (z_k - z_i))`` off the diagonal,
    minus the row sums on it."""
    dlo = lo[None, :] - hi[:, None]
    dhi = hi[None, :] - lo[:, None]
    amin = np.where((dlo <= 0) & (dhi >= 0), 0.0, np.minimum(np.abs(dlo), np.abs(dhi)))
    amax = np.maximum(np.abs(dlo), np.abs(dhi))
    sech2 = lambda t: 1.0 / np.cosh(np.minimum(op.alpha * t, 700.0)) ** 2  # noqa: E731
    hi_v, lo_v = sech2(amin), sech2(amax)  # sech^2 decreases in |t|
    w = np.asarray(op.w, np.float64)
    Plo = np.where(w >= 0, w * op.alpha * lo_v, w * op.alpha * hi_v)
    Phi = np.where(w >= 0, w * op.alpha * hi_v, w * op.alpha * lo_v)
    np.fill_diagonal(Plo, 0.0)
    np.fill_diagonal(Phi, 0.0)
    Dlo, Dhi = Plo.copy(), Phi.copy()
    np.fill_diagonal(Dlo, -Phi.sum(1))
    np.fill_diagonal(Dhi, -Plo.sum(1))
    return Dlo, Dhi


def _krawczyk(op, z: np.ndarray, H: np.ndarray, err_h: np.ndarray, slack: float) -> tuple[float, float] | None:
    """Krawczyk's test on ``X = z +- rho`` for a few ``rho``: (enclosure radius, box radius) or None."""
    m = len(z)
    D = (1.0 - np.tanh(op.alpha * (z[None, :] - z[:, None])) ** 2) * op.alpha * np.asarray(op.w, np.float64)
    np.fill_diagonal(D, 0.0)
    np.fill_diagonal(D, -D.sum(1))
    try:
        Y = np.linalg.inv(np.eye(m) + op.c * D)
    except np.linalg.LinAlgError:
        return None
    step = np.abs(Y) @ (np.abs(H) + err_h)
    base = float(step.max())
    for rho in (2.0 * base + 1e-12, 10.0 * base + 1e-10, 1e-6, 1e-3):
        Dlo, Dhi = _ds_interval(op, z - rho, z + rho)
        Jc = np.eye(m) + op.c * (Dlo + Dhi) / 2.0  # H'(X) = I + c ds/dz, centre and radius
        Jr = abs(op.c) * (Dhi - Dlo) / 2.0
        Mc = np.eye(m) - Y @ Jc
        Mr = np.abs(Y) @ Jr
        k = step + (np.abs(Mc) + Mr).sum(1) * rho
        k = k * (1 + slack) + slack * (np.abs(z) + rho)
        if bool((k < rho).all()):
            return float(k.max()), rho
    return None


def analyse(graph, model: str = "", x: np.ndarray | None = None) -> IBNNReport:
    """The report of every implicit-bias layer of ``graph`` (and at input ``x``, if given)."""
    import torch

    from .graph.implicit import ImplicitLayer

    layers = [(i, n) for i, n in enumerate(graph.nodes) if isinstance(n.op, ImplicitLayer)]
    reports = [layer_report(n.op, n.name) for _, n in layers]
    if x is not None and layers:
        with torch.no_grad():
            vals = graph.forward(torch.as_tensor(np.asarray(x, np.float64).reshape(1, -1)), keep=True)
        for (i, n), rep in zip(layers, reports):
            rep.at_input = enclose_fixed_point(n.op, vals[n.inputs[0]].numpy()[0])
    return IBNNReport(model, reports, dict(graph.meta.get("ibnn", {}).get("inlined", {})))
