"""VNN-LIB reader: text -> the normalised :class:`~certkit.spec.spec.Spec` (DESIGN.md section 1).

A VNN-LIB file describes the **unsafe** set. certkit reads the subset of VNN-LIB 1.0
that VNN-COMP uses:

* ``(declare-const X_i Real)`` for the inputs and ``(declare-const Y_j Real)`` for the
  outputs, ``i``/``j`` the flat C-order index into the model's input/output tensor.
  Indices must run contiguously from 0; their counts are ``n_inputs``/``n_outputs``.
  Declarations may appear anywhere in the file. The SMT-LIB housekeeping commands
  ``set-logic``, ``set-info``, ``set-option``, ``check-sat``, ``get-model`` and
  ``exit`` are accepted and ignored; any other command is an error.
* ``(assert F)``; several asserts are a conjunction. ``F`` is built from ``and`` and
  ``or`` (nested arbitrarily, at least one argument each) over comparisons
  ``(op a b)`` with ``op`` one of ``<=``, ``>=``, ``<``, ``>``, ``=``:

  - ``X_i`` against a number (either order): a bound on input ``i``;
  - ``Y_j`` against a number (either order), or ``Y_a`` against ``Y_b``: an output atom.

  Strict ``<``/``>`` are read as ``<=``/``>=`` (the difference is a null set for the
  verifier); ``=`` is the two atoms ``<=`` and ``>=``; a chain ``(<= a b c)`` is
  ``a <= b`` and ``b <= c``. Numbers are decimal literals (``1``, ``-0.5``, ``+2``,
  ``.5``, ``1e-3``) or ``(- c)``.
* Rejected with a :class:`~certkit.errors.SpecError` naming ``path:line:col``:
  comparisons of two inputs (the input set must be a box), of an input with an
  output, or of two constants; arithmetic (``+``, ``*``, ...), ``not``, ``=>`` and any
  other operator; undeclared or badly named variables; bad numbers; unbalanced
  parentheses; a file without any output atom.

Normalisation. The conjunction of all asserts is expanded to disjunctive normal form
(DNF). Each DNF term is a set of input bounds and a set of output atoms. An atom
``X_i >= c`` is a lower bound ``c`` (the largest lower bound of a term wins, the smallest
upper bound likewise); every input of every term needs both bounds and a non-empty
interval. Output atoms are rows of ``C y <= d``:

=================  ===================  ========
atom               row of ``C``         ``d``
=================  ===================  ========
``Y_j <= c``       ``e_j``              ``c``
``Y_j >= c``       ``-e_j``             ``-c``
``Y_a <= Y_b``     ``e_a - e_b``        ``0``
=================  ===================  ========

Terms are grouped by their input box: the spec has one :class:`Property` per distinct
box (in order of first appearance) whose disjuncts are the output parts of the terms
with that box (in DNF order, not deduplicated). A term without output atoms gives a
disjunct with ``C`` of shape ``(0, n_outputs)``: every output is unsafe there.
The expansion keeps shared conjunctions shared, so an input-only ``or`` of ``k`` boxes
combined with an output-only ``or`` of ``m`` terms costs ``k`` box computations and
``k * m`` small terms; more than :data:`MAX_TERMS` DNF terms is an error.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib

import numpy as np

from ..errors import SpecError
from .spec import Disjunct, Property, Spec

__all__ = ["MAX_TERMS", "parse_vnnlib", "parse_vnnlib_text"]

MAX_TERMS = 100_000
"""Largest number of DNF terms the expansion may produce before it is refused."""

# Group 1 captures a token; comments match with an empty group 1 and are dropped.
_TOKEN_RE = re.compile(r";[^\n]*|([()]|[^\s();]+)")
_VAR_RE = re.compile(r"([XY])_(\d+)\Z")
_NUM_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_IGNORED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})
_ARITHMETIC = frozenset({"+", "-", "*", "/", "div", "mod", "abs", "to_real", "to_int"})
_LOGIC_UNSUPPORTED = frozenset({"not", "=>", "xor", "ite", "distinct", "let", "forall", "exists"})

# Atom kinds in the atom table.
_LOWER, _UPPER, _OUTPUT = 0, 1, 2
_KIND_NAME = {"X": "input", "Y": "output"}


def parse_vnnlib(path: str | os.PathLike, n_inputs: int | None = None,
                 n_outputs: int | None = None) -> Spec:
    """Read a ``.vnnlib`` (or gzip-compressed ``.vnnlib.gz``) file into a :class:`Spec`.

    ``n_inputs``/``n_outputs``, when given (the model's sizes), must equal the numbers of
    declared ``X``/``Y`` variables. ``Spec.sha256`` is the SHA-256 of the file's bytes
    *after* decompression, so a spec and its gzipped copy hash alike. Gzip is recognised
    by its magic bytes, whatever the file name.
    """
    spath = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SpecError(f"cannot read VNN-LIB file: {exc.strerror or exc}", spath) from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise SpecError(f"cannot decompress gzip VNN-LIB file: {exc}", spath) from exc
    text = data.decode("utf-8-sig", errors="replace")
    return _Parser(text, spath).parse(n_inputs, n_outputs, hashlib.sha256(data).hexdigest())


def parse_vnnlib_text(text: str, path: str = "<string>", n_inputs: int | None = None,
                      n_outputs: int | None = None) -> Spec:
    """Parse VNN-LIB source text; ``path`` only labels errors and ``Spec.path``.

    ``Spec.sha256`` is the SHA-256 of ``text`` encoded as UTF-8.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return _Parser(text, str(path)).parse(n_inputs, n_outputs, digest)


class _List(list):
    """A parenthesised S-expression; ``tok`` is the index of its ``(`` token.

    Children are ``_List`` nodes or ``int`` token indices (atoms).
    """

    __slots__ = ("tok",)


class _Parser:
    """One parse of one text. Tokens are kept as strings; positions are recomputed only
    when an error needs them, which keeps the happy path to a single ``re.findall``."""

    def __init__(self, text: str, path: str) -> None:
        self.text, self.path = text, path
        self.toks = [t for t in _TOKEN_RE.findall(text) if t]
        # variable name -> (kind letter, index); filled from the declarations
        self.names: dict[str, tuple[str, int]] = {}
        self.decl_tok: dict[tuple[str, int], int] = {}
        # atom table (see _le); kinds _LOWER/_UPPER: a_i = input index, a_val = bound;
        # _OUTPUT: row a_ci * e_{a_i} + a_cj * e_{a_j} (a_j = -1: none), a_val = d
        self.a_kind: list[int] = []
        self.a_i: list[int] = []
        self.a_j: list[int] = []
        self.a_ci: list[float] = []
        self.a_cj: list[float] = []
        self.a_val: list[float] = []
        self.a_tok: list[int] = []
        self.chunks: list[tuple[int, ...]] = []  # conjunctions of atom ids, shared by terms

    # ---------------------------------------------------------------- errors
    def _where(self, tok: int) -> tuple[int, int]:
        """1-based (line, col) of token number ``tok``."""
        k = -1
        for m in _TOKEN_RE.finditer(self.text):
            if m.group(1):
                k += 1
                if k == tok:
                    off = m.start()
                    return self.text.count("\n", 0, off) + 1, off - self.text.rfind("\n", 0, off)
        return 0, 0

    def error(self, message: str, tok: int | None = None) -> SpecError:
        line, col = self._where(tok) if tok is not None else (0, 0)
        return SpecError(message, self.path, line, col)

    def line_of(self, tok: int) -> int:
        return self._where(tok)[0]

    # ---------------------------------------------------------------- driver
    def parse(self, n_inputs: int | None, n_outputs: int | None, sha256: str) -> Spec:
        forms = self._read()
        asserts = self._commands(forms)
        n_in = self._size("X", n_inputs)
        n_out = self._size("Y", n_outputs)
        try:
            terms = self._conj(asserts, None)
        except RecursionError:
            raise self.error("the formula is nested too deeply to read") from None
        properties = self._normalise(terms, n_in, n_out)
        return Spec(properties, n_in, n_out, self.path, sha256)

    def _read(self) -> list:
        """Tokens -> top-level S-expressions, iteratively (no recursion limit)."""
        top: list = []
        cur: list = top
        stack: list[list] = []
        for i, t in enumerate(self.toks):
            if t == "(":
                node = _List()
                node.tok = i
                cur.append(node)
                stack.append(cur)
                cur = node
            elif t == ")":
                if not stack:
                    raise self.error("unexpected ')' without a matching '('", i)
                cur = stack.pop()
            else:
                cur.append(i)
        if stack:
            # the outermost list still open is the last top-level form
            raise self.error("'(' is never closed (missing ')')", top[-1].tok)
        return top

    def _commands(self, forms: list) -> list:
        """Record declarations; return the asserted formulas in file order."""
        toks = self.toks
        asserts = []
        for form in forms:
            if not isinstance(form, _List):
                raise self.error(f"expected a command such as (assert ...) or (declare-const ...), "
                                 f"found '{toks[form]}'", form)
            if not form:
                raise self.error("empty command '()'", form.tok)
            head = form[0]
            if not isinstance(head, int):
                raise self.error("expected a command name after '('", head.tok)
            name = toks[head]
            if name == "assert":
                if len(form) != 2:
                    raise self.error(f"assert takes exactly one formula, found {len(form) - 1}", head)
                asserts.append(form[1])
            elif name == "declare-const":
                self._declare(form)
            elif name not in _IGNORED_COMMANDS:
                raise self.error(f"unknown command '{name}' (VNN-LIB uses declare-const and assert)", head)
        return asserts

    def _declare(self, form: _List) -> None:
        toks = self.toks
        if len(form) != 3 or not all(isinstance(a, int) for a in form[1:]):
            raise self.error("declare-const needs a name and a sort, e.g. (declare-const X_0 Real)",
                             form[0])
        name_tok, sort_tok = form[1], form[2]
        name = toks[name_tok]
        m = _VAR_RE.match(name)
        if not m:
            raise self.error(f"variable '{name}' is neither X_<int> (an input) nor Y_<int> (an output)",
                             name_tok)
        if len(m.group(2)) > 1 and m.group(2)[0] == "0":
            raise self.error(f"variable '{name}': write the index without leading zeros", name_tok)
        if toks[sort_tok] != "Real":
            raise self.error(f"{name} is declared with sort '{toks[sort_tok]}'; only Real is supported",
                             sort_tok)
        key = (m.group(1), int(m.group(2)))
        if key in self.decl_tok:
            first = self.line_of(self.decl_tok[key])
            raise self.error(f"{name} is declared twice (first at line {first})", name_tok)
        self.decl_tok[key] = name_tok
        self.names[name] = key

    def _size(self, letter: str, expected: int | None) -> int:
        """Number of declared ``letter`` variables, checked contiguous and against the model."""
        idx = sorted(i for (k, i) in self.decl_tok if k == letter)
        what = _KIND_NAME[letter]
        if not idx:
            raise self.error(f"no {what} variables declared (expected (declare-const {letter}_0 Real) ...)")
        n = idx[-1] + 1
        if len(idx) != n:
            missing = next(k for k, i in enumerate(idx) if i != k)
            raise self.error(f"{what} variables must be declared contiguously from {letter}_0: "
                             f"{letter}_{missing} is missing but {letter}_{idx[-1]} is declared",
                             self.decl_tok[(letter, idx[-1])])
        if expected is not None and n != expected:
            at = self.decl_tok[(letter, expected if n > expected else n - 1)]
            raise self.error(f"the spec declares {n} {what}{'s' * (n != 1)} ({letter}_0..{letter}_{n - 1}) "
                             f"but the model has {expected} {what}{'s' * (expected != 1)}", at)
        return n

    # ---------------------------------------------------------------- DNF
    # A term is a tuple of chunk ids (their conjunction); a DNF is a list of terms.
    def _is_comparison(self, node) -> bool:
        return (isinstance(node, _List) and len(node) > 0 and isinstance(node[0], int)
                and self.toks[node[0]] in _COMPARISONS)

    def _new_chunk(self, atoms: list[int]) -> int:
        self.chunks.append(tuple(atoms))
        return len(self.chunks) - 1

    def _conj(self, nodes: list, where: int | None) -> list[tuple[int, ...]]:
        """DNF of the conjunction of ``nodes``.

        Single-term conjuncts are merged into one shared chunk, so the product only runs
        over the genuinely disjunctive conjuncts and never copies the common atoms.
        """
        common: list[int] = []
        factors: list[tuple[list[tuple[int, ...]], _List]] = []
        for node in nodes:
            if self._is_comparison(node):
                common.extend(self._compare(node))
                continue
            terms = self._dnf(node)
            if len(terms) == 1:
                for c in terms[0]:
                    common.extend(self.chunks[c])
            else:
                factors.append((terms, node))
        result: list[tuple[int, ...]] = [(self._new_chunk(common),)] if common else [()]
        for terms, node in factors:
            if len(result) * len(terms) > MAX_TERMS:
                raise self.error(f"expanding the and/or structure into disjunctive normal form gives "
                                 f"more than {MAX_TERMS} terms (at this expression)", node.tok)
            result = [r + t for r in result for t in terms]
        return result

    def _dnf(self, node) -> list[tuple[int, ...]]:
        toks = self.toks
        if not isinstance(node, _List):
            raise self.error(f"expected a constraint in parentheses, found '{toks[node]}'", node)
        if not node:
            raise self.error("empty expression '()'", node.tok)
        head = node[0]
        if not isinstance(head, int):
            raise self.error("expected an operator (and, or, <=, >=, ...) after '('", head.tok)
        op = toks[head]
        if op in _COMPARISONS:
            return [(self._new_chunk(self._compare(node)),)]
        if op not in ("and", "or"):
            raise self._unsupported(op, head)
        if len(node) < 2:
            raise self.error(f"'{op}' needs at least one argument", head)
        if op == "and":
            return self._conj(node[1:], head)
        terms: list[tuple[int, ...]] = []
        for child in node[1:]:
            if self._is_comparison(child):
                terms.append((self._new_chunk(self._compare(child)),))
            else:
                terms.extend(self._dnf(child))
            if len(terms) > MAX_TERMS:
                raise self.error(f"expanding the and/or structure into disjunctive normal form gives "
                                 f"more than {MAX_TERMS} terms (at this expression)", node.tok)
        return terms

    def _unsupported(self, op: str, tok: int) -> SpecError:
        if op in _ARITHMETIC:
            return self.error(f"arithmetic '{op}' is not supported: compare a variable with a number "
                              f"or two outputs, e.g. (<= Y_0 Y_1)", tok)
        if op in _LOGIC_UNSUPPORTED:
            return self.error(f"operator '{op}' is not supported (only and, or and comparisons)", tok)
        return self.error(f"unknown operator '{op}' (expected and, or, <=, >=, <, >, =)", tok)

    # ---------------------------------------------------------------- atoms
    def _compare(self, node: _List) -> list[int]:
        """Atom ids for the comparison ``node`` (a chain gives one atom per pair)."""
        op_tok = node[0]
        op = self.toks[op_tok]
        if len(node) < 3:
            raise self.error(f"'{op}' needs two arguments, found {len(node) - 1}", op_tok)
        args = [self._arg(a) for a in node[1:]]
        atoms: list[int] = []
        for left, right in zip(args, args[1:]):
            if op in ("<=", "<", "="):
                self._le(left, right, node.tok, op_tok, atoms)
            if op in (">=", ">", "="):
                self._le(right, left, node.tok, op_tok, atoms)
        return atoms

    def _arg(self, a) -> tuple[str, float, int]:
        """``(kind, value, tok)``: kind ``X``/``Y`` with value the index, or ``c`` a number."""
        toks = self.toks
        if isinstance(a, _List):
            if (len(a) == 2 and isinstance(a[0], int) and toks[a[0]] == "-"
                    and isinstance(a[1], int) and _NUM_RE.match(toks[a[1]])):
                kind, value, _ = self._arg(a[1])
                return kind, -value, a.tok
            if a and isinstance(a[0], int):
                raise self._unsupported(toks[a[0]], a[0])
            raise self.error("expected a variable or a number", a.tok)
        t = toks[a]
        var = self.names.get(t)
        if var is not None:
            return var[0], var[1], a
        if _NUM_RE.match(t):
            value = float(t)
            if not np.isfinite(value):
                raise self.error(f"number '{t}' is out of the float64 range", a)
            return "c", value, a
        m = _VAR_RE.match(t)
        if m:
            letter = m.group(1)
            n = sum(1 for (k, _) in self.decl_tok if k == letter)
            declared = f"{letter}_0..{letter}_{n - 1}" if n else f"no {letter} variables"
            raise self.error(f"{t} is not declared (the spec declares {declared})", a)
        if t[0] in "+-.0123456789":
            raise self.error(f"bad number '{t}'", a)
        if t in ("and", "or") or t in _COMPARISONS:
            raise self.error(f"'{t}' must follow '(' as an operator", a)
        raise self.error(f"unknown symbol '{t}': variables are X_<int> (inputs) and Y_<int> "
                         f"(outputs), declared with declare-const", a)

    def _le(self, left, right, node_tok: int, op_tok: int, atoms: list[int]) -> None:
        """Append the atom(s) for ``left <= right``."""
        lk, lv, _ = left
        rk, rv, _ = right
        if lk == "X" and rk == "c":
            self._atom(_UPPER, lv, -1, 1.0, 0.0, rv, node_tok, atoms)
        elif lk == "c" and rk == "X":
            self._atom(_LOWER, rv, -1, 1.0, 0.0, lv, node_tok, atoms)
        elif lk == "Y" and rk == "c":
            self._atom(_OUTPUT, lv, -1, 1.0, 0.0, rv, node_tok, atoms)
        elif lk == "c" and rk == "Y":
            self._atom(_OUTPUT, rv, -1, -1.0, 0.0, -lv, node_tok, atoms)
        elif lk == "Y" and rk == "Y":
            self._atom(_OUTPUT, lv, rv, 1.0, -1.0, 0.0, node_tok, atoms)
        elif lk == "c" and rk == "c":
            raise self.error("comparison of two constants: one side must be a variable", op_tok)
        elif lk == "X" and rk == "X":
            raise self.error(f"comparison of two inputs (X_{lv} and X_{rv}) is not supported: "
                             f"inputs may only be bounded by numbers (a box)", op_tok)
        else:
            x, y = (lv, rv) if lk == "X" else (rv, lv)
            raise self.error(f"comparison of an input with an output (X_{x} and Y_{y}) is not "
                             f"supported", op_tok)

    def _atom(self, kind, i, j, ci, cj, val, tok, atoms) -> None:
        atoms.append(len(self.a_kind))
        self.a_kind.append(kind)
        self.a_i.append(i)
        self.a_j.append(j)
        self.a_ci.append(ci)
        self.a_cj.append(cj)
        self.a_val.append(val)
        self.a_tok.append(tok)

    # ---------------------------------------------------------------- normalise
    def _normalise(self, terms, n_in: int, n_out: int) -> tuple[Property, ...]:
        kind = np.array(self.a_kind, dtype=np.int8)
        if not (kind == _OUTPUT).any():
            raise self.error("no output constraint: no assert mentions a Y variable, so the "
                             "unsafe output set is undefined")
        self.k_kind = kind
        self.k_i = np.array(self.a_i, dtype=np.intp)
        self.k_j = np.array(self.a_j, dtype=np.intp)
        self.k_ci = np.array(self.a_ci, dtype=np.float64)
        self.k_cj = np.array(self.a_cj, dtype=np.float64)
        self.k_val = np.array(self.a_val, dtype=np.float64)
        self.k_tok = np.array(self.a_tok, dtype=np.intp)
        chunk_in: dict[int, np.ndarray] = {}
        chunk_out: dict[int, np.ndarray] = {}
        for term in terms:
            for c in term:
                if c not in chunk_in:
                    ids = np.array(self.chunks[c], dtype=np.intp)
                    is_out = kind[ids] == _OUTPUT
                    chunk_in[c], chunk_out[c] = ids[~is_out], ids[is_out]
        in_keys = [tuple(c for c in term if chunk_in[c].size) for term in terms]
        several = len(set(in_keys)) > 1
        boxes: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        disjuncts: dict[tuple[int, ...], Disjunct] = {}
        groups: dict[bytes, tuple[np.ndarray, np.ndarray, list[Disjunct]]] = {}
        for term, in_key in zip(terms, in_keys):
            box = boxes.get(in_key)
            if box is None:
                box = boxes[in_key] = self._box(in_key, chunk_in, n_in, several)
            out_key = tuple(c for c in term if chunk_out[c].size)
            dj = disjuncts.get(out_key)
            if dj is None:
                dj = disjuncts[out_key] = self._disjunct(out_key, chunk_out, n_out)
            key = box[0].tobytes() + box[1].tobytes()
            group = groups.get(key)
            if group is None:
                group = groups[key] = (box[0], box[1], [])
            group[2].append(dj)
        return tuple(Property(lo, up, tuple(djs)) for lo, up, djs in groups.values())

    def _box(self, in_key, chunk_in, n_in: int, several: bool) -> tuple[np.ndarray, np.ndarray]:
        ids = (np.concatenate([chunk_in[c] for c in in_key]) if in_key
               else np.zeros(0, dtype=np.intp))
        kind, var, val = self.k_kind[ids], self.k_i[ids], self.k_val[ids]
        is_lo = kind == _LOWER
        lower = np.full(n_in, -np.inf)
        upper = np.full(n_in, np.inf)
        np.maximum.at(lower, var[is_lo], val[is_lo])
        np.minimum.at(upper, var[~is_lo], val[~is_lo])
        unbounded = np.flatnonzero(np.isinf(lower) | np.isinf(upper))
        if unbounded.size:
            i = int(unbounded[0])
            missing = ("no bounds" if np.isinf(lower[i]) and np.isinf(upper[i])
                       else "no lower bound" if np.isinf(lower[i]) else "no upper bound")
            where = ""
            if several and ids.size:
                where = (f" in the input region whose constraints start at line "
                         f"{self.line_of(int(self.k_tok[ids].min()))}")
            raise self.error(f"input X_{i} has {missing}{where}; every input needs both a lower "
                             f"and an upper bound", self.decl_tok[("X", i)])
        empty = np.flatnonzero(lower > upper)
        if empty.size:
            i = int(empty[0])
            on_i = var == i
            lo_tok = self.k_tok[ids[on_i & is_lo & (val == lower[i])]].max()
            up_tok = self.k_tok[ids[on_i & ~is_lo & (val == upper[i])]].max()
            raise self.error(f"empty input box: X_{i} has lower bound {float(lower[i])!r} above its "
                             f"upper bound {float(upper[i])!r}", int(max(lo_tok, up_tok)))
        return lower, upper

    def _disjunct(self, out_key, chunk_out, n_out: int) -> Disjunct:
        ids = (np.concatenate([chunk_out[c] for c in out_key]) if out_key
               else np.zeros(0, dtype=np.intp))
        m = ids.size
        C = np.zeros((m, n_out))
        rows = np.arange(m)
        np.add.at(C, (rows, self.k_i[ids]), self.k_ci[ids])
        j = self.k_j[ids]
        two = j >= 0
        np.add.at(C, (rows[two], j[two]), self.k_cj[ids][two])
        return Disjunct(C, self.k_val[ids].copy())
