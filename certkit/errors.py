"""One exception tree for certkit.

Library code raises these; only :mod:`certkit.cli` turns them into one-line
messages and exit codes (see ``EXIT_CODES`` there and the README).
"""
from __future__ import annotations


class CertkitError(Exception):
    """Base class of every error certkit raises on purpose."""

    exit_code = 70  # internal error unless a subclass says otherwise


class UsageError(CertkitError):
    """Bad command-line or API arguments (incompatible options, bad values)."""

    exit_code = 2


class OutputError(UsageError):
    """An output file (``--out``, ``--json``) could not be written after the result was printed.

    The paths are checked before any work starts, so this is rare (a folder removed
    meanwhile, a full disk); the printed result stands, and the other files are written."""


class ModelError(CertkitError):
    """The model file cannot be read, checked, or lowered to the IR."""

    exit_code = 3


class UnsupportedOpError(ModelError):
    """The model uses operators certkit does not support.

    ``nodes`` lists every offending node as ``(name, op_type, opset, reason)`` so
    that one error reports all of them at once.
    """

    def __init__(self, nodes: list[tuple[str, str, int, str]], path: str = "") -> None:
        self.nodes = list(nodes)
        where = f"{path}: " if path else ""
        parts = [f"{name or '<unnamed>'} ({op} opset {opset}{': ' + why if why else ''})"
                 for name, op, opset, why in self.nodes]
        super().__init__(f"{where}unsupported ONNX node(s): " + "; ".join(parts))


class SpecError(CertkitError):
    """The specification (VNN-LIB file or data set) is malformed or does not fit the model.

    Carries ``path``, ``line`` and ``col`` (1-based) when known; the message then
    starts with ``path:line:col:``.
    """

    exit_code = 4

    def __init__(self, message: str, path: str = "", line: int = 0, col: int = 0) -> None:
        self.path, self.line, self.col = path, line, col
        self.reason = message
        loc = path
        if path and line:
            loc = f"{path}:{line}:{col}" if col else f"{path}:{line}"
        super().__init__(f"{loc}: {message}" if loc else message)


class DataError(SpecError):
    """A data set file (``.npz``) is missing keys or does not match the model's input."""


class BackendError(CertkitError):
    """A requested backend or solver is unknown, not installed, or not licensed."""

    exit_code = 5


class VerificationTimeout(CertkitError):
    """Raised inside a backend when the time budget is used up."""

    exit_code = 0
