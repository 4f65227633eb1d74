"""Windowed back-substitution of local rows through convolutions (auto_LiRPA's "patches"
mode; Xu et al. 2020, section 3.2, DESIGN.md section 2), a mixin of
:class:`certkit.bounds.deeppoly.BoundState`: the same bounds as the dense steps, with less work.

A row ``+-e_k`` on a neuron of a convolution's output depends, one node down, on the neurons of the
kernel's receptive field only, and after ``d`` convolutions on a window of the feature map that
grows by the kernel's reach at each of them. The dense steps carry every row over the whole map
(a 31x47 U-Net layer: 1457 positions for a 3x3 receptive field); here each row carries its window
(b, rows, C, h, w) and the map coordinates of the window's top-left corner, per row:

* **Conv** (any stride, dilation, padding, groups): ``conv_transpose2d`` of the window with no
  padding gives the input window, its corner at ``corner * stride - pad``; the entries that fall on
  the padding (outside the map) are set to 0, exactly the cropping of the dense step. The bias adds
  ``sum_c bias_c * (sum of the window's channel c)``.
* **ConvTranspose**: the adjoint is a ``conv2d`` with the same kernel, stride and dilation, whose
  phase depends on the window's corner; each row's window is widened by up to ``stride - 1`` zeros on
  the top/left to a common phase first (:func:`_convt_back`), then one ``conv2d`` serves all rows.
* **Scale** (per-neuron affine) and **elementwise activations** with per-neuron relaxations (ReLU,
  LeakyReLU, sigmoid, ...): the per-neuron tensors are gathered on each row's window (zero outside
  the map, where every coefficient is 0), and the step is the dense step's, entry by entry.
* **Floating point**: the error of every node passed (:meth:`BoundState._charged_error`, the same
  tensors) is charged on the window as in the dense step (``|A| err``, nothing where a coefficient is
  0). A convolution whose product is in float32 (:mod:`certkit.bounds.products32`) runs its windowed
  ``conv2d`` / ``conv_transpose2d`` on the rows' float32 rounding too, and the constant takes the dense
  step's bracket ``A (M c) - A' c`` on the windows, less its floor (:meth:`WindowRows._window_product`):
  torch's float64 convolutions on the CPU are several times slower than oneDNN's float32 ones (profiles
  of cgan_2023's 64x64 input splitting: 51 ms per windowed ConvTranspose step in float64, 8.4 ms now).

The windows stop before a node that is none of these (a residual Sum, a Dense, the input) or once a
window would cover most of its map (no work left to save): the rows are scattered onto the dense
coefficients of that node and the dense steps go on from there (:meth:`BoundState.lower_of`), with
the constant gathered so far.

**Hand-over** (:meth:`WindowRows._window_hand_over`): rows of a later node whose coefficients reach a
convolution within a small window of its map (a segmentation net's per-pixel margin, a softmax's
difference of two logits of one pixel) go on as windows from there, each row's window at its own
nonzero entries; only where no node of the windows' chain passes coefficients to a node outside it
(the dense step would sum them before relaxing).

Never for rows whose relaxations alpha-CROWN optimises, with beta multipliers (ReLU splitting's final
rows, or every row with ``beta_everywhere``), with recorded coefficients, or with per-row relaxations
(each row has parameters of its own there): those keep the dense steps. Measured with
``benchmarks/deeppoly_speed.py --windows`` (README, "Windowed rows through convolutions");
``tests/test_windows.py`` checks the bounds against the dense steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..graph import ops
from ..graph.conv_transpose import ConvTranspose

Tensor = torch.Tensor

#: A window stops growing once it would cover more than this share of its feature map.
MAX_COVER = 0.5
#: Windows only where the windowed rows hold at most this share of the dense rows' coefficients over
#: the nodes they pass (they are gathered per row; measured before their products ran in float32 too, on large
#: convolutions): per 512 rows of cifar_biasfield's CNN, share 0.001-0.09: 3-30x faster than dense,
#: share 0.24-0.27 (its 8x8 and 4x4 layers): 1.3x slower.
MAX_WORK = 0.1
#: Coefficients reaching a convolution in a back-substitution go on as windows where every row's
#: nonzero entries lie in a window of at most this share of the map.
HANDOVER_COVER = 1 / 16


@dataclass(frozen=True)
class _Step:
    """One node of a windowed chain: the node, its output's (C, H, W) and the window (h, w) the rows
    have on that output."""

    node: int
    shape: tuple[int, int, int]
    win: tuple[int, int]


#: the ops whose rows go as windows (and that start them)
WINDOWED = (ops.Conv, ConvTranspose)


def _conv_window(op: ops.Conv, win: tuple[int, int]) -> tuple[int, int]:
    """The input window of rows on an (h, w) window of a convolution's output (its receptive field)."""
    return tuple((h - 1) * s + d * (k - 1) + 1 for h, s, d, k in zip(win, op.strides, op.dilations, op.weight.shape[2:]))


def _conv_back(op: ops.Conv, A: Tensor, y0: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Windowed rows ``A`` (b, r, C, h, w) with corners ``(y0, x0)`` on a convolution's output, back to its
    input: ``conv_transpose2d`` with no padding, the corner at ``corner * stride - pad``, entries on the
    padding set to 0 (the dense step's crop)."""
    b, r = A.shape[:2]
    out = F.conv_transpose2d(A.reshape(b * r, *A.shape[2:]), op._w(A)[0], None, op.strides, 0, 0, op.groups,
                             op.dilations)
    Y0, X0 = y0 * op.strides[0] - op.pads[0], x0 * op.strides[1] - op.pads[1]
    return _on_map(out, b, r, Y0, X0, op.in_shape), Y0, X0


def _on_map(out: Tensor, b: int, r: int, y0: Tensor, x0: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """``out`` (b * r, C, hh, ww), the rows' windows with corners ``(y0, x0)`` on a (C, H, W) map, as
    (b, r, C, hh, ww) with 0 off the map (``where``, not a product: an infinite coefficient there is no NaN)."""
    C, H, W = shape
    hh, ww = out.shape[-2:]
    inside = _inside(*_grid(y0, x0, hh, ww), H, W)
    return torch.where(inside[None, :, None], out.reshape(b, r, C, hh, ww), torch.zeros((), dtype=out.dtype))


def _convt_window(op: ConvTranspose, win: tuple[int, int]) -> tuple[int, int]:
    """The input window of rows on an (h, w) window of a transposed convolution's output
    (:func:`_convt_back`)."""
    return tuple((h + s - 2 + d * (k - 1)) // s + 1
                 for h, s, d, k in zip(win, op.strides, op.dilations, op.weight.shape[2:]))


def _convt_back(op: ConvTranspose, A: Tensor, y0: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Windowed rows ``A`` (b, r, C, h, w) with corners ``(y0, x0)`` on a transposed convolution's output,
    back to its input: ``y[Y] = sum_{X s + k d = Y + t} w[k] x[X]`` (``t`` = ``op.begin``), so the input
    window's coefficients are ``B[X] = sum_k A[X s - t + k d]``, a ``conv2d`` with the same kernel, stride
    and dilation. Its phase depends on the corner: each row's window is first widened on the top/left by
    ``(Y0 + t - (K - 1) d) mod s`` zeros (to ``h + s - 1`` in all), after which every row's input corner
    is ``X0 = (Y0' + t - (K - 1) d) / s`` exactly, and the ``conv2d`` padded by ``(K - 1) d`` gives the
    window of :func:`_convt_window`. Entries off the input map are 0 (no input there)."""
    b, r, C, h, w = A.shape
    (sh, sw), (dh, dw), (t, l) = op.strides, op.dilations, op.begin
    kh, kw = op.weight.shape[2:]
    py, px = (y0 + t - (kh - 1) * dh) % sh, (x0 + l - (kw - 1) * dw) % sw
    H2, W2 = h + sh - 1, w + sw - 1
    yi = py[:, None] + torch.arange(h)[None, :]  # (r, h): each row's entries in its widened window
    xi = px[:, None] + torch.arange(w)[None, :]
    Ap = A.new_zeros(r, H2, W2, b, C)
    Ap[torch.arange(r)[:, None, None], yi[:, :, None], xi[:, None, :]] = A.permute(1, 3, 4, 0, 2)
    Ap = Ap.permute(3, 0, 4, 1, 2).reshape(b * r, C, H2, W2)
    out = F.conv2d(Ap, op._w(A)[0], None, op.strides, ((kh - 1) * dh, (kw - 1) * dw), op.dilations, op.groups)
    Y0, X0 = (y0 - py + t - (kh - 1) * dh) // sh, (x0 - px + l - (kw - 1) * dw) // sw
    return _on_map(out, b, r, Y0, X0, op.in_shape), Y0, X0


def _elementwise(op) -> bool:
    return isinstance(op, (ops.Activation, ops.Scale))


def _grid(y0: Tensor, x0: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Map coordinates of the rows' (h, w) windows with corners ``(y0, x0)`` (r,): ``ys`` (r, h), ``xs`` (r, w)."""
    return y0[:, None] + torch.arange(h)[None, :], x0[:, None] + torch.arange(w)[None, :]


def _inside(ys: Tensor, xs: Tensor, H: int, W: int) -> Tensor:
    """Which entries of the windows at ``ys``, ``xs`` (:func:`_grid`) lie on the (H, W) map: (r, h, w)."""
    return ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]


def _gather(t: Tensor, shape: tuple[int, int, int], ys: Tensor, xs: Tensor) -> Tensor:
    """Per-neuron tensor ``t`` (b, C*H*W) on the rows' windows at map coordinates ``ys`` (r, h), ``xs`` (r, w)
    (:func:`_grid`): (b, r, C, h, w), 0 off the map. One ``index_select`` of whole channel vectors from the
    map laid out channels-last and padded with zeros until every window lies on it (the padding gives the 0
    off the map): 3-4x faster than indexing (C, H, W) by the two coordinates, which dominated a U-Net's rows."""
    b = t.shape[0]
    C, H, W = shape
    r, h = ys.shape
    w = xs.shape[1]
    if r == 0 or h == 0 or w == 0:
        return t.new_zeros(b, r, C, h, w)
    top, left = max(0, -int(ys.min())), max(0, -int(xs.min()))
    bottom, right = max(0, int(ys.max()) - H + 1), max(0, int(xs.max()) - W + 1)
    m = F.pad(t.reshape(b, C, H, W), (left, right, top, bottom))
    idx = ((ys + top)[:, :, None] * (W + left + right) + (xs + left)[:, None, :]).reshape(-1)
    m = m.reshape(b, C, -1).transpose(1, 2).contiguous()  # (b, positions, C)
    return m.index_select(1, idx).reshape(b, r, h, w, C).permute(0, 1, 4, 2, 3)


class WindowRows:
    """Methods of :class:`certkit.bounds.deeppoly.BoundState` (its fields and caches)."""

    def _window_plan(self, j: int, start: tuple[int, int] = (1, 1)) -> tuple[list[_Step], int, tuple] | None:
        """``(steps, stop, shape)``: the nodes from ``j`` down whose rows go as windows, and the node whose
        output receives them as dense coefficients, of (C, H, W) ``shape``; None where windows do not
        apply (module docstring). ``start``: the rows' window on ``j``'s output. Cached per node and start."""
        cache = self._cache.setdefault("window_plan", {})
        key = j if start == (1, 1) else (j, start)
        if key in cache:
            return cache[key]
        cache[key] = None
        op = self.graph.nodes[j].op
        if (self.beta and self.beta_everywhere) or not isinstance(op, WINDOWED):
            return None
        steps: list[_Step] = []
        i, shape, win = j, tuple(op.out_shape), start
        while i != 0 and len(self.graph.nodes[i].inputs) == 1:
            op = self.graph.nodes[i].op
            if isinstance(op, WINDOWED):
                if tuple(op.out_shape) != shape:
                    break
                nxt = (_conv_window if isinstance(op, ops.Conv) else _convt_window)(op, win)
                below = tuple(op.in_shape)
                if nxt[0] * nxt[1] > MAX_COVER * below[1] * below[2]:
                    break
            elif _elementwise(op):
                below, nxt = shape, win
            else:
                break
            steps.append(_Step(i, shape, win))
            i, shape, win = self.graph.nodes[i].inputs[0], below, nxt
        # never end on a linear node whose ReLU is charged at it: that allowance is charged only for
        # coefficients that came through the ReLU (BoundState._charged_error); end on the ReLU instead
        cons = self.graph.consumers[i] if i != 0 else ()
        if steps and len(cons) == 1 and self._relu_charged_below(cons[0]):
            last = steps.pop()
            i, shape = last.node, last.shape
        if not any(isinstance(self.graph.nodes[s.node].op, WINDOWED) for s in steps) \
                or self.graph.size(i) != shape[0] * shape[1] * shape[2] \
                or any(self.slopes.get(s.node) is not None and self.slopes[s.node].dim() == 3 for s in steps):
            return None  # no convolution, a layout that is not (C, H, W), or slopes per row
        windowed = sum(s.shape[0] * s.win[0] * s.win[1] for s in steps)
        dense = sum(s.shape[0] * s.shape[1] * s.shape[2] for s in steps)
        if windowed > MAX_WORK * dense:
            return None
        cache[key] = (steps, i, shape)
        return cache[key]

    def _window_floats(self, j: int) -> int | None:
        """Floats per row of the windowed rows of ``j`` (the largest window, or the widest dense
        coefficients of the steps below the node they end on); None where windows do not apply."""
        plan = None if self._optimises(j) else self._window_plan(j)
        if plan is None:
            return None
        steps, stop, _ = plan
        most = max(s.shape[0] * s.win[0] * s.win[1] for s in steps)
        # the dense steps from ``stop`` down carry the same rows: cGAN 64x64's conv rows ended on a 4096-wide
        # node above a 61504-wide one, and chunks sized by the former held 1 GB there (a step outlasting the
        # deadline by 15 s)
        return max(most, max(self.graph.size(a) for a in self._ancestors(stop)))

    def _window_lower(self, j: int, sel: Tensor, sign: Tensor) -> Tensor | None:
        """Lower bounds (b, r) of ``sign_r * y_j[sel_r]`` by windowed rows (module docstring), as
        :meth:`BoundState._signed_rows` gives them; None where windows do not apply."""
        plan = None if self._optimises(j) else self._window_plan(j)
        if plan is None or sel.dim() == 2:  # rows per sample: one corner per row, shared by the batch
            return None
        b = self.bounds[j][0].shape[0]
        C, H, W = plan[0][0].shape
        r = sel.shape[-1]
        self._prepare(j)
        ch, pos = sel // (H * W), sel % (H * W)
        A = torch.zeros(b, r, C, 1, 1, dtype=torch.float64)
        A[:, torch.arange(r), ch, 0, 0] = sign.to(torch.float64)
        stop, dense, total = self._window_steps(plan, j, A, pos // W, pos % W, torch.zeros(b, r, dtype=torch.float64))
        return self.lower_of(stop, dense, total, tag=j)

    def _window_steps(self, plan, t, A: Tensor, y0: Tensor, x0: Tensor, total: Tensor) -> tuple[int, Tensor, Tensor]:
        """Push windowed rows ``A`` (b, r, C, h, w), corners ``(y0, x0)`` (r,), through the steps of
        ``plan`` (back-substitution from target ``t``): ``(stop, dense coefficients on stop's output
        (b, r, n_stop), constant)``."""
        steps, stop, (Cs, Hs, Ws) = plan
        b, r = A.shape[:2]
        for s in steps:
            if self.budget is not None:
                self.budget.check()
            i = s.node
            node = self.graph.nodes[i]
            op = node.op
            ys, xs = _grid(y0, x0, *s.win)
            e = self._charged_error(i, t)
            if e is not None:
                ew = _gather(e, s.shape, ys, xs)
                fin = torch.isfinite(ew)
                Aa = A.abs()
                total = total - (Aa * torch.where(fin, ew, torch.zeros_like(ew))).sum((2, 3, 4))
                hit = ((Aa > 0) & ~fin).any(dim=(2, 3, 4)) if not bool(fin.all()) else None
                if hit is not None:
                    total = torch.where(hit, torch.full_like(total, float("-inf")), total)
            if isinstance(op, WINDOWED):
                if op.bias is not None:
                    bias = torch.as_tensor(op.bias, dtype=A.dtype)
                    total = total + (A.sum((3, 4)) * bias).sum(-1)
                A, y0, x0, total = self._window_product(i, s, A, y0, x0, (ys, xs), total)
            elif isinstance(op, ops.Scale):
                if op.shift is not None:
                    total = total + (A * _gather(torch.as_tensor(op.shift, dtype=A.dtype)[None],
                                                 s.shape, ys, xs)).sum((2, 3, 4))
                A = A * _gather(torch.as_tensor(op.scale, dtype=A.dtype)[None], s.shape, ys, xs)
            else:  # the four per-neuron tensors (b, n) of the relaxation, gathered at once
                rel = self._relax_for(i, t, None, r)
                lw, lb, uw, ub = _gather(torch.cat(torch.broadcast_tensors(*rel)), s.shape, ys, xs).chunk(4)
                nonneg = A >= 0
                prod = A * torch.where(nonneg, lb, ub)
                if not self._finite_relax(i, rel[1], rel[3]):  # an infinite intercept costs nothing where A is 0
                    prod = torch.where(A == 0, torch.zeros_like(prod), prod)
                total = total + prod.sum((2, 3, 4))
                A = A * torch.where(nonneg, lw, uw)
        # onto the dense coefficients of the node below the windows
        ys, xs = _grid(y0, x0, *A.shape[-2:])
        inside = _inside(ys, xs, Hs, Ws)
        flat = (torch.arange(Cs)[None, :, None, None] * (Hs * Ws)
                + (ys.clamp(0, Hs - 1) * Ws)[:, None, :, None] + xs.clamp(0, Ws - 1)[:, None, None, :])
        flat = torch.where(inside[:, None], flat, torch.zeros_like(flat))  # (r, C, hh, ww)
        vals = torch.where(inside[None, :, None], A, torch.zeros((), dtype=A.dtype))
        dense = torch.zeros(b, r, Cs * Hs * Ws, dtype=A.dtype)
        dense.scatter_add_(2, flat.reshape(1, r, -1).expand(b, -1, -1), vals.reshape(b, r, -1))
        return stop, dense, total

    def _window_product(self, i: int, s: _Step, A: Tensor, y0: Tensor, x0: Tensor, grid: tuple, total: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Windowed rows ``A`` on convolution ``i``'s output (window coordinates ``grid`` = ``(ys, xs)``, :func:`_grid`) back
        to its input: ``(A', y0', x0', total)``. Where the product at ``i`` is in float32 this is
        :meth:`BoundState._product` (float32 on ``A``'s rounding, float64 where the charge is not finite or
        float32 overflows), with the bracket ``A (M c) - A' c`` on the windows: ``M c`` gathered on the
        output window, ``c`` on the input window, both 0 off the map, where the dense step has no
        coefficient either."""
        op = self.graph.nodes[i].op
        back = _conv_back if isinstance(op, ops.Conv) else _convt_back
        corner: list[Tensor] = []

        def conv(a: Tensor) -> Tensor:
            out, y, x = back(op, a, y0, x0)
            corner[:] = (y, x)  # the input window's corners (the same in either precision)
            return out

        if not self._in_float32(i):
            return (conv(A), *corner, total)

        def bracket(charge, out: Tensor) -> Tensor:
            with torch.no_grad():
                image = _gather(charge.image, s.shape, *grid)
                centre = _gather(charge.centre, tuple(op.in_shape), *_grid(*corner, *out.shape[-2:]))
                return (A.detach() * image).sum((2, 3, 4)) - (out.detach() * centre).sum((2, 3, 4))

        out, total = self._product(i, conv, A, total, bracket=bracket)
        return (out, *corner, total)

    def _window_hand_over(self, i: int, A: Tensor, t: int, tag) -> tuple[int, Tensor, Tensor] | None:
        """In a back-substitution from ``t`` that reaches conv node ``i`` with coefficients ``A``
        (b, s, n_i) whose every row lies in a small window of ``i``'s map (a margin row of one pixel, a
        softmax's difference of two logits: :data:`HANDOVER_COVER`), those rows go on as windows:
        ``(stop, dense coefficients on stop's output, constant)``, exactly the dense steps' result. None
        where that does not apply: no plan, per-row relaxations, alpha-CROWN's rows, beta multipliers or
        recorded coefficients (the final rows of ReLU splitting), or a node of the windows' chain that
        also passes coefficients to a node outside it (the dense step sums them before relaxing)."""
        if not isinstance(self.graph.nodes[i].op, WINDOWED) or self._optimises(tag) \
                or (self.beta and (tag == "out" or self.beta_everywhere)) or (self.record is not None and tag == "out") \
                or self._window_plan(i) is None:  # not even one neuron's rows go as windows (a cheap test first)
            return None
        b, s = A.shape[:2]
        C, H, W = self.graph.nodes[i].op.out_shape
        nz = (A != 0).reshape(b, s, C, H, W).any(dim=2).any(dim=0)  # (s, H, W)

        def extent(hit: Tensor, n: int) -> tuple[Tensor, Tensor]:  # first and last True per row (0, 0 if none)
            first = hit.to(torch.int8).argmax(dim=1)
            return first, torch.where(hit.any(dim=1), n - 1 - hit.flip(1).to(torch.int8).argmax(dim=1), first)
        y_lo, y_hi = extent(nz.any(dim=2), H)
        x_lo, x_hi = extent(nz.any(dim=1), W)
        h, w = int((y_hi - y_lo).max()) + 1, int((x_hi - x_lo).max()) + 1
        if h * w > HANDOVER_COVER * H * W:
            return None
        plan = self._window_plan(i, (h, w))
        if plan is None:
            return None
        chain = {st.node for st in plan[0]}
        anc = self._ancestors(t)
        if any(c not in chain for st in plan[0][1:] for c in self.graph.consumers[st.node] if c in anc):
            return None
        y0, x0 = y_lo.clamp(max=H - h), x_lo.clamp(max=W - w)
        ys, xs = _grid(y0, x0, h, w)
        A5 = A.reshape(b, s, C, H, W).permute(1, 3, 4, 0, 2)  # (s, H, W, b, C)
        win = A5[torch.arange(s)[:, None, None], ys[:, :, None], xs[:, None, :]]  # (s, h, w, b, C)
        win = win.permute(3, 0, 4, 1, 2)
        return self._window_steps(plan, t, win, y0, x0, torch.zeros(b, s, dtype=A.dtype))

