"""Implicit-bias layers (IBNN, paper 003; DESIGN.md section 8) as PyTorch modules.

An IBNN layer's pre-activations solve ``z = a - lambda s(z)`` with ``a = W x + b`` (an ordinary
``nn.Linear`` / ``nn.Conv2d``) and ``s_i(z) = beta sum_k w_ik tanh(alpha (z_k - z_i))``; the kernel
``w`` is a fixed nonnegative symmetric matrix with a zero diagonal. The layer returns ``z``; put an
``nn.ReLU`` after it (``phi = ReLU``). With ``c = lambda beta`` the fixed-point map is

    G(z) = a - c sum_k w_ik tanh(alpha (z_k - z_i)),

whose Jacobian has row sums ``<= 2 |c| alpha r_i`` (``r_i = sum_k |w_ik|``), so
``q = 2 |c| alpha max_i r_i < 1`` makes G an inf-norm contraction: one fixed point, and the damped
iteration ``z_0 = a``, ``z_{k+1} = (1 - eta) z_k + eta G(z_k)`` contracts by
``rho = 1 - eta (1 - q)``. Since ``a - z* = c sum_k w_ik tanh(...)``, ``||z_0 - z*||_inf <= |c| max r``
and the a-priori bound is ``||z_K - z*||_inf <= rho^K |c| max_i r_i`` (:meth:`q`, :meth:`K_for`).

Training solves to a tolerance (no graph through the iterations) and differentiates with the
implicit function theorem: the adjoint ``u = g + J^T u`` (``J = dG/dz`` at ``z*``) gives
``dL/da = u`` and ``dL/dc = -sum_i u_i sum_k w_ik tanh(alpha (z*_k - z*_i))`` (:class:`_FixedPoint`).
When ``q >= 1`` nothing guarantees convergence (nor a unique fixed point): the solve then stops after
``max_iter`` steps, see ``last_solve``. The ONNX export unrolls ``K = K_for(tol)`` damped steps
into the canonical function of :mod:`certkit.onnx.ibnn`; while exporting (and checking the file),
torch runs exactly those K steps (:class:`IBNNExport`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch
from torch import nn

from certkit.onnx.ibnn import DOMAIN, IBNNParams, f32

Tensor = torch.Tensor
#: ``"uniform"``, an odd window size (conv layers), or an explicit ``m x m`` matrix.
KernelSpec = Union[str, int, Tensor]

#: Largest group size whose adjoint system is solved directly (``torch.linalg.solve``).
DIRECT_ADJOINT_MAX = 256


# --------------------------------------------------------------------------- kernels


def uniform_kernel(m: int) -> Tensor:
    """``w_ik = 1 / (m - 1)`` for ``i != k``, 0 on the diagonal (rows sum to 1; all zero if m = 1)."""
    if m < 1:
        raise ValueError(f"m = {m} < 1")
    w = torch.full((m, m), 1.0 / (m - 1) if m > 1 else 0.0)
    w.fill_diagonal_(0.0)
    return w


def window_kernel(h: int, w: int, k: int) -> Tensor:
    """The ``(h w) x (h w)`` kernel linking each pixel (row-major) to the other pixels of the
    ``k x k`` window centred on it, each with weight ``1 / (k k - 1)``: symmetric, zero diagonal,
    rows sum to 1 inside and to less near the border. ``k`` odd, ``>= 3``."""
    if k < 3 or k % 2 == 0:
        raise ValueError(f"window size k = {k} must be odd and >= 3")
    r = k // 2
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    near = ((rows[:, None] - rows[None, :]).abs() <= r) & ((cols[:, None] - cols[None, :]).abs() <= r)
    near.fill_diagonal_(False)
    return near.to(torch.float32) / (k * k - 1)


def check_kernel(w: Tensor) -> None:
    """Raise ``ValueError`` unless ``w`` is square, nonnegative, symmetric with a zero diagonal."""
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"kernel of shape {tuple(w.shape)} is not square")
    if (w < 0).any() or (w.diagonal() != 0).any() or not torch.equal(w, w.T):
        raise ValueError("the kernel must be nonnegative and symmetric with a zero diagonal")


# --------------------------------------------------------------------------- the map G and its iteration


class Neighbours(NamedTuple):
    """A sparse kernel (e.g. a window): row ``i``'s weights ``wv[i]`` at the columns ``idx[i]``
    (``m x d``, rows padded with column ``i`` and weight 0). Same values as the dense ``w``,
    ``m / d`` times fewer operations."""

    idx: Tensor
    wv: Tensor


def neighbours(w: Tensor, max_fraction: float = 0.25) -> Neighbours | None:
    """The sparse form of ``w`` when its rows have at most ``max_fraction m`` nonzeros, else None
    (:func:`certkit.graph.implicit.neighbour_lists`, the IR op's form of the same kernel)."""
    from certkit.graph.implicit import neighbour_lists

    lists = neighbour_lists(w.detach().cpu().numpy(), max_fraction)
    if lists is None:
        return None
    return Neighbours(torch.as_tensor(lists[0]), torch.as_tensor(lists[1], dtype=w.dtype))


def interaction(z: Tensor, w: Tensor | Neighbours, alpha: float) -> Tensor:
    """``sum_k w_ik tanh(alpha (z_k - z_i))`` over the last axis of ``z`` (``(..., m)``); for a dense
    ``w`` in the operation order of the ONNX body (:func:`certkit.onnx.ibnn.layer_function`)."""
    if isinstance(w, Neighbours):
        return (torch.tanh((z[..., w.idx] - z.unsqueeze(-1)) * alpha) * w.wv).sum(-1)
    diff = z.unsqueeze(-2) - z.unsqueeze(-1)          # [..., i, k] = z_k - z_i
    return (torch.tanh(diff * alpha) * w).sum(-1)


def g_map(z: Tensor, a: Tensor, w: Tensor | Neighbours, c: Tensor | float, alpha: float) -> Tensor:
    """``G(z) = a - c interaction(z)``."""
    return a - interaction(z, w, alpha) * c


def damped_steps(a: Tensor, w: Tensor | Neighbours, c: Tensor | float, alpha: float, eta: float, steps: int,
                 z0: Tensor | None = None) -> Tensor:
    """Exactly ``steps`` damped steps from ``z0`` (default ``a``), as the exported function computes."""
    z = a if z0 is None else z0
    for _ in range(steps):
        g = g_map(z, a, w, c, alpha)
        z = g if eta == 1.0 else z * (1.0 - eta) + g * eta
    return z


def fixed_point(a: Tensor, w: Tensor | Neighbours, c: Tensor | float, alpha: float, eta: float = 1.0,
                tol: float = 1e-6, max_iter: int = 300, z0: Tensor | None = None) -> tuple[Tensor, int, float]:
    """Damped iteration from ``z0`` (default ``a``) until ``||z_{k+1} - z_k||_inf <= tol`` (over the
    whole batch) or ``max_iter`` steps, without a graph. Returns ``(z, steps, last step size)``."""
    with torch.no_grad():
        z = a if z0 is None else z0
        delta = math.inf
        for k in range(1, max_iter + 1):
            g = g_map(z, a, w, c, alpha)
            new = g if eta == 1.0 else z * (1.0 - eta) + g * eta
            delta = float((new - z).abs().max()) if new.numel() else 0.0
            z = new
            if delta <= tol:
                return z, k, delta
        return z, max_iter, delta


def jacobian(z: Tensor, w: Tensor, c: Tensor | float, alpha: float) -> Tensor:
    """``J = dG/dz`` at ``z`` (``(..., m)`` -> ``(..., m, m)``):
    ``J = c alpha (diag(rowsum(w o S)) - w o S)``, ``S_ik = 1 - tanh^2(alpha (z_k - z_i))``."""
    t = torch.tanh((z.unsqueeze(-2) - z.unsqueeze(-1)) * alpha)
    ws = w * (1.0 - t * t)
    return (torch.diag_embed(ws.sum(-1)) - ws) * (c * alpha)


class _FixedPoint(torch.autograd.Function):
    """``z* = G(z*)`` for ``a`` of shape ``(B, G, m)``; backward by the implicit function theorem.

    The adjoint ``(I - J)^T u = g`` is solved directly for ``m <= DIRECT_ADJOINT_MAX`` (or
    ``adjoint="direct"``), else by the damped iteration ``u <- (1 - eta) u + eta (g + J^T u)``
    (which converges when q < 1). ``nbr``: the sparse form of ``w`` for the forward iteration.
    ``dL/da = u``, ``dL/dc = -sum u . interaction(z*)``."""

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor, w: Tensor, alpha: float, eta: float, tol: float, max_iter: int,
                adjoint: str, stats: dict | None, nbr: Neighbours | None = None) -> Tensor:
        z, steps, delta = fixed_point(a, w if nbr is None else nbr, c, alpha, eta, tol, max_iter)
        if stats is not None:
            stats.update(steps=steps, delta=delta)
        ctx.save_for_backward(z, c, w)
        ctx.alpha, ctx.eta, ctx.tol, ctx.max_iter, ctx.adjoint = alpha, eta, tol, max_iter, adjoint
        return z

    @staticmethod
    def backward(ctx, g: Tensor):
        z, c, w = ctx.saved_tensors
        J = jacobian(z, w, c, ctx.alpha)
        m = z.shape[-1]
        if ctx.adjoint == "direct" or (ctx.adjoint == "auto" and m <= DIRECT_ADJOINT_MAX):
            eye = torch.eye(m, dtype=J.dtype, device=J.device)
            u = torch.linalg.solve((eye - J).transpose(-1, -2), g.unsqueeze(-1)).squeeze(-1)
        else:
            u, eta = g, ctx.eta
            scale = max(1.0, float(g.abs().max()) if g.numel() else 1.0)
            for _ in range(ctx.max_iter):
                new = (1.0 - eta) * u + eta * (g + (J * u.unsqueeze(-1)).sum(-2))   # J^T u
                done = float((new - u).abs().max()) <= ctx.tol * scale
                u = new
                if done:
                    break
        grad_c = None
        if ctx.needs_input_grad[1]:
            grad_c = -(u * interaction(z, w, ctx.alpha)).sum().reshape(c.shape)
        return u, grad_c, None, None, None, None, None, None, None, None


class _Unrolled(torch.autograd.Function):
    """Exactly K damped steps; exports as one node ``<name>(a, w)`` of domain :data:`DOMAIN`
    (the exporter then adds the canonical body, :func:`certkit.onnx.ibnn.attach`)."""

    @staticmethod
    def forward(ctx, a: Tensor, w: Tensor, name: str, c: float, alpha: float, eta: float, K: int,
                groups: int) -> Tensor:
        ctx.save_for_backward(a, w)
        ctx.args = (c, alpha, eta, K, groups)
        z = damped_steps(a.reshape(a.shape[0], groups, -1), w, c, alpha, eta, K)
        return z.reshape(a.shape)

    @staticmethod
    def backward(ctx, g: Tensor):
        a, w = ctx.saved_tensors
        c, alpha, eta, K, groups = ctx.args
        with torch.enable_grad():
            a_ = a.detach().requires_grad_(True)
            z = damped_steps(a_.reshape(a.shape[0], groups, -1), w, c, alpha, eta, K).reshape(a.shape)
            (ga,) = torch.autograd.grad(z, a_, g)
        return ga, None, None, None, None, None, None, None

    @staticmethod
    def symbolic(g, a, w, name, c, alpha, eta, K, groups):
        out = g.op(f"{DOMAIN}::{name}", a, w)
        out.setType(a.type())
        return out


# --------------------------------------------------------------------------- layers


class IBNNLayer(nn.Module):
    """What the dense and conv layers share: ``lam`` (a buffer, or a parameter with
    ``train_lam``), ``alpha``, ``beta``, the kernel ``w`` (buffer), the damping and stopping rule.
    Subclasses provide ``affine`` (``a = affine(x)``), ``groups``, ``m`` and ``out_shape``."""

    groups: int
    m: int
    out_shape: tuple[int, ...]
    lite: bool = False

    def _setup(self, w: Tensor, kernel_name: str, lam: float, alpha: float, beta: float, eta: float,
               tol: float, max_iter: int, train_lam: bool) -> None:
        check_kernel(w)
        if w.shape[0] != self.m:
            raise ValueError(f"kernel is {w.shape[0]} x {w.shape[0]}, the layer's groups have {self.m} values")
        if not (alpha > 0 and beta > 0):
            raise ValueError("alpha and beta must be positive")
        if not (0 < eta <= 1) or eta * 256 != int(eta * 256):
            raise ValueError(f"eta = {eta} must be a multiple of 1/256 in (0, 1] (exact in float32)")
        self.register_buffer("w", w.to(torch.float32).clone())
        lam_t = torch.tensor(float(lam), dtype=torch.float32)
        if train_lam:
            self.lam = nn.Parameter(lam_t)
        else:
            self.register_buffer("lam", lam_t)
        self.alpha, self.beta, self.eta = float(alpha), float(beta), float(eta)
        self.tol, self.max_iter, self.kernel_name = float(tol), int(max_iter), kernel_name
        self.adjoint = "auto"
        nbr = neighbours(self.w)           # the forward iteration's sparse form of a window kernel
        self.register_buffer("nbr_idx", None if nbr is None else nbr.idx, persistent=False)
        self.register_buffer("nbr_w", None if nbr is None else nbr.wv, persistent=False)
        #: ``steps`` and ``delta`` (last step size) of the latest solve, for diagnostics.
        self.last_solve: dict = {}

    @property
    def weight(self) -> Tensor:
        return self.affine.weight

    @property
    def bias(self) -> Tensor | None:
        return self.affine.bias

    # ---- the contraction figures of the module doc

    def c(self) -> float:
        return float(self.lam) * self.beta

    def max_row_sum(self) -> float:
        return float(self.w.abs().sum(1).max()) if self.m else 0.0

    def q(self) -> float:
        """``2 |c| alpha max_i sum_k |w_ik|``: G is a contraction when ``q < 1`` (paper 003)."""
        return 2.0 * abs(self.c()) * self.alpha * self.max_row_sum()

    def rho(self) -> float:
        """The damped iteration's contraction factor ``1 - eta (1 - q)`` (meaningful for ``q < 1``)."""
        return 1.0 - self.eta * (1.0 - self.q())

    def bound(self, K: int) -> float:
        """A-priori ``||z_K - z*||_inf <= rho^K |c| max r`` (``inf`` when ``q >= 1``)."""
        return self.rho() ** K * abs(self.c()) * self.max_row_sum() if self.q() < 1 else math.inf

    def K_for(self, tol: float | None = None) -> int:
        """The smallest ``K >= 1`` with ``rho^K |c| max r <= tol`` (default: the layer's tol) when
        ``q < 1``, else ``max_iter``. Not capped at ``max_iter``."""
        tol = self.tol if tol is None else float(tol)
        if self.q() >= 1:
            return self.max_iter
        r0, rho = abs(self.c()) * self.max_row_sum(), self.rho()
        if r0 <= tol or rho == 0.0:
            return 1
        K = max(1, math.ceil(math.log(tol / r0) / math.log(rho)))
        while r0 * rho ** K > tol:
            K += 1
        while K > 1 and r0 * rho ** (K - 1) <= tol:
            K -= 1
        return K

    def params(self) -> IBNNParams:
        """The exported parameters: ``K = min(K_for(tol), max_iter)`` damped steps; ``tol`` records
        the requested tolerance, or the a-priori bound of the K steps when the cap made it larger.
        (:class:`IBNNLite`: K = 1, eta = 1, tol 0 -- one step *is* the layer, nothing truncated.)"""
        if self.lite:
            return IBNNParams(lam=float(self.lam), alpha=self.alpha, beta=self.beta, eta=1.0, K=1, tol=0.0,
                              groups=self.groups, m=self.m, shape=self.out_shape, kernel=self.kernel_name)
        K = min(self.K_for(), self.max_iter)
        tol = self.tol if self.q() >= 1 else max(self.tol, self.bound(K))
        return IBNNParams(lam=float(self.lam), alpha=self.alpha, beta=self.beta, eta=self.eta, K=K, tol=tol,
                          groups=self.groups, m=self.m, shape=self.out_shape, kernel=self.kernel_name)

    # ---- forward

    def solve(self, a: Tensor, z0: Tensor | None = None) -> Tensor:
        """``z*`` for pre-activations ``a`` (batch first); IFT gradients w.r.t. ``a`` and ``lam``.
        With ``z0`` (same shape), the iteration starts there and has no gradient."""
        a3 = a.reshape(a.shape[0], self.groups, self.m)
        w = self.w.to(a.dtype)
        c = self.lam.to(a.dtype) * self.beta
        nbr = None if self.nbr_idx is None else Neighbours(self.nbr_idx, self.nbr_w.to(a.dtype))
        if self.lite:
            return g_map(a3, a3, w if nbr is None else nbr, c, self.alpha).reshape(a.shape)
        if z0 is not None:
            z, steps, delta = fixed_point(a3, w if nbr is None else nbr, c, self.alpha, self.eta, self.tol,
                                          self.max_iter, z0.reshape(a3.shape).to(a.dtype))
            self.last_solve = {"steps": steps, "delta": delta}
            return z.reshape(a.shape)
        stats: dict = {}
        z = _FixedPoint.apply(a3, c, w, self.alpha, self.eta, self.tol, self.max_iter, self.adjoint, stats, nbr)
        self.last_solve = stats
        return z.reshape(a.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.solve(self.affine(x))

    def extra_repr(self) -> str:
        kind = "lite, " if self.lite else ""
        return (f"{kind}lam={float(self.lam):g}, alpha={self.alpha:g}, beta={self.beta:g}, "
                f"kernel={self.kernel_name}, eta={self.eta:g}, q={self.q():.3g}")


class IBNNLinear(IBNNLayer):
    """Dense implicit-bias layer (paper 003): ``a = W x + b`` (``self.affine``, an ``nn.Linear``),
    returns ``z`` with ``z = a - lam s(z)``; follow it with ``nn.ReLU``. ``kernel``: ``"uniform"``
    (:func:`uniform_kernel`) or an explicit ``out x out`` matrix. ``train_lam`` makes lambda a
    parameter (gradient by the implicit function theorem too)."""

    def __init__(self, in_features: int, out_features: int, lam: float, alpha: float = 10.0, beta: float = 1.0,
                 kernel: KernelSpec = "uniform", eta: float = 1.0, tol: float = 1e-6, max_iter: int = 300,
                 bias: bool = True, train_lam: bool = False) -> None:
        super().__init__()
        self.affine = nn.Linear(in_features, out_features, bias=bias)
        self.groups, self.m, self.out_shape = 1, out_features, (1, out_features)
        w, name = _kernel(kernel, self.m, None)
        self._setup(w, name, lam, alpha, beta, eta, tol, max_iter, train_lam)


class IBNNConv2d(IBNNLayer):
    """Convolutional implicit-bias layer (paper 003): ``a = conv(x)`` (``self.affine``), one group
    per output channel (``m = H W`` output pixels, all channels the same kernel). ``in_size``: the
    input's spatial size (builds the kernel for the output's ``H x W``). ``ib_kernel``: ``"uniform"``
    (every pixel of the channel), an odd ``k`` (:func:`window_kernel`) or an ``m x m`` matrix."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, *, lam: float,
                 in_size: tuple[int, int], alpha: float = 10.0, beta: float = 1.0,
                 ib_kernel: KernelSpec = "uniform", eta: float = 1.0, tol: float = 1e-6, max_iter: int = 300,
                 bias: bool = True, train_lam: bool = False) -> None:
        super().__init__()
        self.affine = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        k, s, p = self.affine.kernel_size, self.affine.stride, self.affine.padding
        h, wd = ((in_size[i] + 2 * p[i] - k[i]) // s[i] + 1 for i in (0, 1))
        if h < 1 or wd < 1:
            raise ValueError(f"input size {in_size} gives an empty output")
        self.groups, self.m, self.out_shape = out_channels, h * wd, (1, out_channels, h, wd)
        w, name = _kernel(ib_kernel, self.m, (h, wd))
        self._setup(w, name, lam, alpha, beta, eta, tol, max_iter, train_lam)

    def forward(self, x: Tensor) -> Tensor:
        a = self.affine(x)
        if tuple(a.shape[1:]) != self.out_shape[1:]:
            raise ValueError(f"conv output {tuple(a.shape[1:])} != {self.out_shape[1:]} (in_size?)")
        return self.solve(a)


class IBNNLite(IBNNLinear):
    """One explicit step of the dense layer, ``z = a - c s(a)`` (same arguments as
    :class:`IBNNLinear`; eta, tol, max_iter are ignored). Exports as the canonical function with
    K = 1, eta = 1."""

    lite = True


class IBNNLiteConv2d(IBNNConv2d):
    """One explicit step of the convolutional layer, ``z = a - c s(a)`` (see :class:`IBNNLite`)."""

    lite = True


def _kernel(spec: KernelSpec, m: int, hw: tuple[int, int] | None) -> tuple[Tensor, str]:
    if isinstance(spec, Tensor):
        return spec.detach().to(torch.float32), "dense"
    if isinstance(spec, str):
        if spec != "uniform":
            raise ValueError(f"unknown kernel {spec!r} (use 'uniform', an odd window size, or a matrix)")
        return uniform_kernel(m), "uniform"
    if isinstance(spec, int) and not isinstance(spec, bool):
        if hw is None:
            raise ValueError("a window kernel needs a conv layer (pixels); give an explicit matrix")
        return window_kernel(hw[0], hw[1], spec), f"k{spec}"
    raise TypeError(f"kernel must be 'uniform', an int or a tensor, not {type(spec).__name__}")


# --------------------------------------------------------------------------- export


class IBNNExport(nn.Module):
    """An IBNN layer frozen for export (made by :func:`certkit.nn.freeze`): the same affine map,
    then exactly ``params.K`` damped steps, which the TorchScript exporter writes as one node
    ``name(a, w)`` of domain :data:`DOMAIN` (the body is added afterwards, :func:`finish_export`).
    Its forward is what onnxruntime computes from the file."""

    def __init__(self, src: IBNNLayer, name: str) -> None:
        super().__init__()
        self.affine = src.affine
        self.name, self.p = name, src.params()
        self.register_buffer("w", src.w.detach().to(torch.float32).clone())

    def forward(self, x: Tensor) -> Tensor:
        a = self.affine(x)
        p = self.p
        return _Unrolled.apply(a, self.w.to(a.dtype), self.name, p.c, f32(p.alpha), p.eta, p.K, p.groups)


def export_layers(model: nn.Module) -> dict[str, IBNNParams]:
    """The parameters of the :class:`IBNNExport` layers of a frozen model, by function name."""
    return {m.name: m.p for m in model.modules() if isinstance(m, IBNNExport)}


def finish_export(proto, layers: dict[str, IBNNParams]):
    """Post-process a ModelProto written by the TorchScript exporter: each IBNN node's ``w`` (an
    initializer, a ``Constant`` node, or an ``Identity`` of one -- the exporter dedups equal
    kernels) becomes the node's own initializer ``<name>.w``; what fed it before and nothing else
    reads is dropped. Then :func:`certkit.onnx.ibnn.attach` adds the canonical functions, the opset
    import and the metadata."""
    from onnx import numpy_helper

    from certkit.onnx.ibnn import attach

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}

    def value(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        n = made_by.get(name)
        if n is not None and n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            return numpy_helper.to_array(next(a.t for a in n.attribute if a.name == "value"))
        if n is not None and n.op_type == "Identity" and n.domain in ("", "ai.onnx"):
            return value(n.input[0])
        raise RuntimeError(f"the kernel {name!r} of an IBNN node is not a constant")

    found, old = set(), set()
    for node in graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type not in layers:
            raise RuntimeError(f"IBNN node {node.op_type} has no parameters")
        found.add(node.op_type)
        new = f"{node.op_type}.w"
        arr = value(node.input[1]).astype("float32")
        old.add(node.input[1])
        graph.initializer.append(numpy_helper.from_array(arr, new))
        node.input[1] = new
    if found != set(layers):
        raise RuntimeError(f"IBNN layers missing from the exported graph: {sorted(set(layers) - found)}")
    _prune(graph, old)
    return attach(proto, layers)


def _prune(graph, names: set[str]) -> None:
    """Drop the constants, Identity nodes and initializers behind ``names`` that nothing reads
    (graph inputs and outputs are kept)."""
    outs = {v.name for v in graph.output} | {v.name for v in graph.input}
    while names:
        read = {i for n in graph.node for i in n.input} | outs
        dead = {x for x in names if x not in read}
        names = set()
        for n in [n for n in graph.node if n.output and n.output[0] in dead and
                  n.op_type in ("Constant", "Identity") and n.domain in ("", "ai.onnx")]:
            graph.node.remove(n)
            names.update(n.input)
        for t in [t for t in graph.initializer if t.name in dead]:
            graph.initializer.remove(t)


def frozen_ibnn(m: nn.Module, index: int) -> IBNNExport | None:
    """``m`` frozen for export as function ``IBNN_<index>``, or None if it is no IBNN layer."""
    if isinstance(m, IBNNLayer):
        return IBNNExport(m, f"IBNN_{index}")
    return None


__all__ = ["IBNNConv2d", "IBNNExport", "IBNNLayer", "IBNNLinear", "IBNNLite", "IBNNLiteConv2d", "Neighbours",
           "damped_steps", "fixed_point", "g_map", "interaction", "jacobian", "neighbours", "uniform_kernel",
           "window_kernel"]
