"""Output files of the command line: checked when the arguments are parsed, written whole or not at all.

Every option that names a file certkit writes (``certify --out/--json``, ``bounds --json``,
the sub-commands' ``--out``, ``--json``, ``-o``) is declared with ``type=output_path``, so a
path that cannot be written is a usage error (exit 2) before any model is loaded.
:func:`write_outputs` writes each file through a temporary file in the same folder and a
rename, so a failed write leaves neither a half-written file nor a damaged older one.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Callable, Iterable

from .errors import OutputError

Writer = Callable[[str], None]


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot be written (a missing or read-only folder, a folder, a read-only file), or None."""
    if not path:
        return "the path is empty"
    if os.path.isdir(path):
        return "it is a folder"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "the file is read-only"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        return f"folder {os.path.dirname(path) or folder} does not exist"
    if not os.path.isdir(folder):
        return f"{os.path.dirname(path)} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no write permission in folder {os.path.dirname(path) or folder}"
    return None


def output_path(path: str) -> str:
    """argparse ``type`` of an option naming an output file: the path, or a usage error saying why not."""
    why = output_problem(path)
    if why is not None:
        raise argparse.ArgumentTypeError(f"cannot write {path}: {why}")
    return path


def output_path_or_folder(path: str) -> str:
    """argparse ``type`` of ``certify --out``: a writable file path, or a folder (existing and
    writable, or one that can be created) -- which one the mode needs is checked by the command."""
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write into {path}: no write permission")
        return path
    return output_path(path)


def write_file(path: str, write: Writer) -> None:
    """``write(p)`` into a temporary file beside ``path``, then rename it onto ``path``.

    Devices and pipes (``/dev/null``, a FIFO) are written in place, as is a writable file
    in a folder without write permission (no temporary file can be made there)."""
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if (os.path.exists(target) and not os.path.isfile(target)) or not os.access(folder, os.W_OK | os.X_OK):
        write(path)
        return
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.part")
    try:
        write(tmp)
        if os.path.exists(target):
            shutil.copymode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_outputs(files: Iterable[tuple[str, str | None, Writer]]) -> None:
    """Write every ``(option, path, writer)`` whose path is set, all of them even when one fails;
    then one :class:`OutputError` naming each file that could not be written."""
    failed = []
    for option, path, write in files:
        if not path:
            continue
        try:
            write_file(path, write)
        except OSError as e:
            failed.append(f"cannot write {option} {path}: {e.strerror or e}")
    if failed:
        raise OutputError("; ".join(failed))
