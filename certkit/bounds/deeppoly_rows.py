"""Row savings of DeepPoly's back-substitution (issue 12), a mixin of
:class:`certkit.bounds.deeppoly.BoundState`: the same bounds as the generic steps, with less work.

* **The fast step** through an activation (no alpha slopes; :meth:`RowSavings._fast_step`): the
  coefficients' positive and negative parts times the slopes (``A+ lw + A- uw``), on the alive columns
  only (those with a nonzero line), the intercepts and the error charges of the activation and of
  the affine node before it (a Dense, or any affine node feeding the activation alone:
  :meth:`RowSavings._folds_below`) folded into two matrix-vector products (:meth:`RowSavings._folded`), and the
  Dense passed at once, its product landing on the alive columns of the activation below
  (:meth:`RowSavings._narrowed`).
* **Reference bounds** (auto_LiRPA's ``sparse_intermediate_bounds_with_ibp``): the neurons of an affine
  layer feeding only ReLUs that the interval image of the back-substituted layer before shows
  ``<= 0`` get their upper rows only (:meth:`RowSavings._inactive_by_reference`,
  :meth:`RowSavings._refine_with_upper`); where that upper bound is ``<= 0`` the lower row could
  change nothing, where it is not, the lower row follows.

Every step keeps the floating-point error terms of :mod:`certkit.bounds.fperror` (the same terms,
summed in another order). ``tests/test_deeppoly_fast.py`` checks the bounds against the generic steps.
"""
from __future__ import annotations

import torch

from ..graph import ops

Tensor = torch.Tensor
#: :meth:`RowSavings._inactive_by_reference` looks for rows to skip only where the rows' first product holds
#: at least this many coefficients (rows x inputs): below it, the interval image costs about what it saves.
MIN_SKIP_WORK = 2 ** 14
#: A batch gives its samples rows of their own (:meth:`RowSavings._rows_per_sample`) only where that
#: needs at most this fraction of the rows of both sides (gathering the rows costs the rest).
PER_SAMPLE_ROWS = 0.8


class RowSavings:
    """Methods of :class:`certkit.bounds.deeppoly.BoundState` (its fields and caches)."""

    def _inactive_by_reference(self, j: int, mask: Tensor) -> Tensor | None:
        """The neurons of ``mask`` (b, n) of affine node ``j`` that its reference bounds
        (:meth:`~certkit.bounds.deeppoly.BoundState._reference`: the interval image of the back-substituted
        layer before) show ``<= 0``, when ``j`` feeds only ReLUs (no alpha slopes, no splits); None for
        none. In the deeper layers of mnist_relu_8_200 they show 100-150 of 200 neurons inactive where
        the interval pass leaves all 200 unstable; such neurons are in ``mask`` only where pure CROWN
        refines a whole layer (more than ``DENSE_FRACTION`` unstable, as auto_LiRPA).
        :meth:`_refine_with_upper` gives those their upper rows only. Not for small layers
        (:data:`MIN_SKIP_WORK`), where the image costs about what it saves."""
        node = self.graph.nodes[j]
        if self.alpha is not None or self.splits or self.refine_all or not isinstance(node.op, (ops.Dense, ops.Conv)) \
                or all(k == 0 for k in node.inputs) \
                or not all(type(self.graph.nodes[c].op) is ops.Relu for c in self.graph.consumers[j]) \
                or int(mask.sum()) * sum(self.graph.size(k) for k in node.inputs) < MIN_SKIP_WORK:
            return None
        ref = self._reference(j)
        if ref is None:
            return None
        off = (ref[1] <= 0) & mask
        return off if bool(off.any()) else None

    def _refine_with_upper(self, j: int, mask: Tensor, off: Tensor) -> None:
        """Back-substitute the neurons ``mask`` (b, n) of ``j`` (which feeds only ReLUs), those of ``off``
        (:meth:`_inactive_by_reference`) by their upper rows only, all rows in one pass (in chunks
        within the memory budget). Where the upper bound is ``<= 0`` the ReLU is 0 on the whole range
        whatever the lower bound: its slopes and intercept are 0, its output bounds [0, 0], and the
        coefficients it passes to ``j`` (charged ``j``'s error) are 0 -- so the lower row would change
        nothing, and the bounds are those of both rows, to the last bit. Where it is > 0 (the rows can
        be looser than the reference) the lower row is back-substituted too."""
        rows_done = self._cache.setdefault("rows", {})
        done = rows_done.get(j)
        if done is not None:
            mask, off = mask & ~done, off & ~done
            if not bool(mask.any()):
                return
        l, u = self.bounds[j]
        if l.shape[0] > 1:  # each sample its own rows, padded to the most any sample needs
            self._rows_per_sample(j, mask, off, done)
            return
        full = (mask & ~off).any(dim=0)
        both = torch.nonzero(full).flatten()  # lower and upper rows (for every sample that asks)
        up = torch.nonzero((mask & off).any(dim=0) & ~full).flatten()  # upper rows only
        kb, ku = both.numel(), up.numel()
        sel = torch.cat([both, both, up])
        sign = torch.cat([torch.ones(kb, dtype=l.dtype), -torch.ones(kb + ku, dtype=l.dtype)])
        step = self._row_step(l.shape[0] * (self._window_floats(j) or self.graph.max_node_size), sel.numel())
        low = torch.cat([self._signed_rows(j, sel[s:s + step], sign[s:s + step])
                         for s in range(0, sel.numel(), step)], dim=1)
        l, u = l.clone(), u.clone()
        if kb:
            lb, ub = low[:, :kb], -low[:, kb:2 * kb]
            li, ui = l[:, both], u[:, both]
            if self.intersect:
                lb, ub = self._meet(lb, ub, li, ui)
            m = mask[:, both]
            l[:, both] = torch.where(m, lb, li)
            u[:, both] = torch.where(m, ub, ui)
        back = torch.zeros_like(mask)
        if ku:
            ub, ui = -low[:, 2 * kb:], u[:, up]
            if self.intersect:
                ub = self._meet(None, ub, None, ui)[1]
            m = mask[:, up]
            u[:, up] = torch.where(m, ub, ui)
            back[:, up] = m & (u[:, up] > 0)
        self.bounds[j] = (l, u)
        rows_done[j] = (mask if done is None else done | mask) & ~back
        if bool(back.any()):
            self._refine_mask(j, back)

    def _rows_per_sample(self, j: int, mask: Tensor, off: Tensor, done: Tensor | None) -> None:
        """:meth:`_refine_with_upper` for a batch: sample ``s`` back-substitutes the lower rows of
        ``mask & ~off`` and the upper rows of ``mask``, all samples as many rows (the largest count;
        the padding rows' results are not used). Where that saves less than a fifth of the rows
        (:data:`PER_SAMPLE_ROWS`; one sample with few inactive neurons is enough), both rows of
        ``mask`` as before."""
        l, u = self.bounds[j]
        b, n = l.shape
        valid = torch.cat([mask & ~off, mask], dim=1)  # (b, 2n): candidate lower rows, then upper rows
        R = int(valid.sum(dim=1).max())
        if R > PER_SAMPLE_ROWS * 2 * int(mask.sum(dim=1).max()):  # a sample needs nearly all its rows
            self._refine_mask(j, mask)
            return
        order = torch.argsort(valid.to(torch.int8), dim=1, descending=True, stable=True)[:, :R]
        sel = order % n
        sign = torch.where(order < n, 1.0, -1.0).to(l.dtype)
        step = self._row_step(b * self.graph.max_node_size, R)
        low = torch.cat([self._signed_rows(j, sel[:, s:s + step], sign[:, s:s + step])
                         for s in range(0, R, step)], dim=1)
        vals = torch.zeros(b, 2 * n, dtype=l.dtype).scatter_(1, order, low)
        lb, ub = vals[:, :n], -vals[:, n:]
        if self.intersect:
            lb, ub = self._meet(lb, ub, l, u)
        l, u = torch.where(mask & ~off, lb, l), torch.where(mask, ub, u)
        self.bounds[j] = (l, u)
        back = off & (u > 0)
        rows_done = self._cache.setdefault("rows", {})
        rows_done[j] = (mask if done is None else done | mask) & ~back
        if bool(back.any()):
            self._refine_mask(j, back)

    def _signed_rows(self, j: int, sel: Tensor, sign: Tensor) -> Tensor:
        """Lower bounds (b, r) of ``sign_r * y_j[sel_r]`` (``sel``, ``sign``: (r,) shared by the batch, or
        (b, r) per sample; no alpha slopes): :meth:`bound_rows` for any mix of lower (+1) and upper
        (-1) rows, the same arithmetic (a row times +-1 is exact)."""
        b, n = self.bounds[j][0].shape
        node = self.graph.nodes[j]
        op = node.op
        shared = sel.dim() == 1
        if isinstance(op, ops.Dense) and op.rows == 1:
            W = op.matrix(self.bounds[j][0])
            A = (W.index_select(0, sel) if shared else W[sel]) * sign[..., None]
            const = None
            if op.bias is not None:
                const = torch.as_tensor(op.bias, dtype=torch.float64)[sel] * sign
            if shared:
                A, const = A.expand(b, -1, -1), None if const is None else const.expand(b, -1)
            low = self.lower_of(node.inputs[0], A, const, tag=j)
            e = self.error(j)  # node j itself was skipped: its rounding error still applies
            if e is None:
                return low
            return low - (e.index_select(1, sel) if shared else e.gather(1, sel))
        low = self._window_lower(j, sel, sign)
        if low is not None:
            return low
        r = sel.shape[-1]
        eye = torch.zeros(b, r, n, dtype=torch.float64)
        eye.scatter_(2, sel.expand(b, r)[:, :, None], sign.expand(b, r)[:, :, None].contiguous())
        return self.lower_of(j, eye, tag=j)

    def _fast_step(self, i: int):
        """``(cols, lw, uw, fused, nonneg, lb, ub)`` for DeepPoly's step through activation ``i`` on the
        alive columns ``cols`` (None: all; :meth:`_alive_columns`): slopes (b, 1, n_cols) and intercepts
        (b, n_cols) there, ``nonneg`` when no slope is negative, and ``fused = (k, W[cols], c[cols])``
        when ``i``'s input is a plain Dense fed by ``k`` and used by ``i`` alone (the step passes
        straight through it). None where the fast step does not apply: slopes per spec row, a
        non-finite line, a dead neuron with a nonzero intercept. Computed once per state (the
        relaxation is)."""
        cache = self._cache.setdefault("fast", {})
        if i in cache:
            return cache[i]
        cache[i] = None
        rel = self.relaxation(i)
        if not isinstance(rel, tuple) or any(t.dim() != 2 or t.shape != rel[0].shape for t in rel) \
                or not bool(torch.isfinite(torch.stack(rel)).all()):
            return None
        lw, lb, uw, ub = rel
        j = self.graph.nodes[i].inputs[0]
        dense = self.graph.nodes[j].op
        cols = self._alive_columns(i, j)
        if cols is not None:
            dead = torch.ones(lw.shape[-1], dtype=torch.bool)
            dead[cols] = False
            if bool(lb[:, dead].any()) or bool(ub[:, dead].any()):
                return None
            lw, lb, uw, ub = (t.index_select(-1, cols) for t in rel)
        fused = None
        if isinstance(dense, ops.Dense) and dense.rows == 1 and self.graph.consumers[j] == (i,) \
                and not (self.beta and i in self.beta):  # beta terms enter at node j
            w = dense.matrix(lw)
            bias = None if dense.bias is None else torch.as_tensor(dense.bias, dtype=lw.dtype)
            if cols is not None:
                w, bias = w.index_select(0, cols), None if bias is None else bias.index_select(0, cols)
            fused = (self.graph.nodes[j].inputs[0], w, bias)
        nonneg = not bool((lw < 0).any()) and not bool((uw < 0).any())
        cache[i] = (cols, lw[:, None, :], uw[:, None, :], fused, nonneg, lb, ub)
        return cache[i]

    def _folds_below(self, i: int, acc: dict, beta_at: dict) -> bool:
        """Does the fast step through activation ``i`` (all columns, no fused Dense) charge the error of
        its input ``j`` as well (:meth:`_folded`'s ``e_in``)? Where ``j`` is an affine node feeding ``i``
        alone (nothing else reaches ``acc[j]``, so the coefficients there are ``i``'s ``A'``) with no
        beta term at ``j`` (which would change them): the back-substitution then skips ``j``'s own charge
        (``|A'|`` once more, a matrix-vector product and an ``abs`` of the rows saved) and, the error
        being charged, its windowed hand-over (which would charge it again)."""
        j = self.graph.nodes[i].inputs[0]
        return j != 0 and j not in acc and j not in beta_at and self.graph.consumers[j] == (i,) \
            and isinstance(self.graph.nodes[j].op, ops.LinearOp)

    def _narrowed(self, i: int) -> Tensor | None:
        """``W[cols_i][:, cols_k]``: the fused Dense of activation ``i`` (:meth:`_fast_step`) restricted to
        the alive columns of the activation ``k`` feeding it, when ``k`` feeds that Dense alone and its
        error is charged below it (none at ``k`` itself, which would need all of ``k``'s columns): the
        coefficients reach ``k`` already narrowed, a smaller product and no selection. None otherwise."""
        cache = self._cache.setdefault("narrow", {})
        if i not in cache:
            cache[i] = None
            k, w, _ = self._fast_step(i)[3]
            j = self.graph.nodes[i].inputs[0]
            if k != 0 and isinstance(self.graph.nodes[k].op, ops.Activation) and self.graph.consumers[k] == (j,):
                fk = self._fast_step(k)
                if fk is not None and fk[0] is not None and self.error(k) is None:
                    cache[i] = w.index_select(1, fk[0])
        return cache[i]

    def _folded(self, i: int, e: Tensor | None, e_in: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """``(vp, vn)`` (b, n_cols, 1), None where 0: the step through activation ``i`` (cached
        :meth:`_fast_step`) adds ``pos vp + neg vn`` to the constant, ``pos``/``neg`` the positive and
        negative parts of its coefficients ``A``: the intercepts ``lb``/``ub``, minus the charge of ``i``'s
        own error ``e`` (``|A| e = pos e - neg e``), minus the charge of its input's error ``e_in`` through
        the slopes when they are >= 0 (``|A'| e_in = pos lw e_in - neg uw e_in``, ``A' = pos lw + neg uw``).
        Kept while ``e`` and ``e_in`` are the same tensors."""
        cache = self._cache.setdefault("folded", {})
        hit = cache.get(i)
        if hit is not None and hit[0] is e and hit[1] is e_in:
            return hit[2]
        lw, uw, lb, ub = (self._fast_step(i)[k] for k in (1, 2, 5, 6))
        vp, vn = lb, ub
        if e is not None:
            vp, vn = vp - e, vn + e
        if e_in is not None:
            vp, vn = vp - lw[:, 0] * e_in, vn + uw[:, 0] * e_in
        column = lambda t: t[:, :, None] if bool(t.any()) else None  # noqa: E731
        out = (column(vp), column(vn))
        cache[i] = (e, e_in, out)
        return out

    def _finite(self, e: Tensor) -> bool:
        """Is every entry of the error tensor ``e`` finite? Checked once per tensor (errors are
        computed once per node and charged at every back-substitution through it)."""
        cache = self._cache.setdefault("finite_err", {})
        hit = cache.get(id(e))
        if hit is None or hit[0] is not e:
            hit = cache[id(e)] = (e, bool(torch.isfinite(e).all()))
        return hit[1]

    def _charged_cols(self, j: int, cols: Tensor | None) -> Tensor | None:
        """``_charged_error(j, None)[:, cols]`` (all columns when ``cols`` is None), kept while that
        error is the same tensor."""
        e = self._charged_error(j, None)
        if e is None or cols is None:
            return e
        cache = self._cache.setdefault("ecols", {})
        hit = cache.get(j)
        if hit is None or hit[0] is not e:
            hit = cache[j] = (e, e.index_select(-1, cols))
        return hit[1]
