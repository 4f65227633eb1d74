"""The IR (ops, the graph, lowering). Importing any module of the package loads :mod:`.ops` first, so the
op families it registers at its end (:mod:`.implicit`, :mod:`.rounding`, ...) can be imported directly."""
from . import ops  # noqa: F401,E402
