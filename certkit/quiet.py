"""Silence C-level output that Python cannot redirect (HiGHS's start-up banner)."""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def without_stdout(make: Callable[[], T]) -> T:
    """``make()`` with the process's file descriptor 1 pointed at /dev/null, so that a library
    printing from C (HiGHS prints a banner when its first solver object is built, before any
    option can be set) cannot mix with certkit's own output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            return make()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
