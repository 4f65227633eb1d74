"""Logging and progress: the standard :mod:`logging` module under the ``certkit`` logger.

The command line sets it up once (:func:`setup`): ``-q`` shows errors only, the default warnings,
``-v`` what each stage decided and how long it took, ``-vv`` the searches' progress; ``--log-file F``
writes everything (DEBUG, with times) to ``F`` whatever the terminal shows. Records go to stderr,
which the commands otherwise keep for their one error line: stdout (verdicts, tables) is unchanged.
Library users configure ``logging`` as they like; certkit adds no handler of its own then.

Progress bars (:func:`progress`) are tqdm's, on stderr, only when stderr is a terminal and ``-q`` was
not given: pipes, files and CI logs get none.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

LOGGER = "certkit"
_STATE = {"progress": None}  # None: decide by the terminal; False: -q


def get(name: str) -> logging.Logger:
    """The logger of a certkit module (``certkit.<name>``)."""
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


def setup(verbosity: int = 0, log_file: str | None = None) -> None:
    """Handlers for the command line: ``verbosity`` -1 (``-q``), 0, 1 (``-v``), 2 (``-vv``)."""
    root = logging.getLogger(LOGGER)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity < -1:
        level = logging.CRITICAL
    term = logging.StreamHandler(sys.stderr)
    term.setLevel(level)
    term.setFormatter(logging.Formatter("certkit: %(levelname)s: %(message)s"))
    root.addHandler(term)
    root.setLevel(min(level, logging.DEBUG if log_file else level))
    if log_file:
        fh = logging.FileHandler(log_file, mode="w")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root.addHandler(fh)
    root.propagate = False
    _STATE["progress"] = False if verbosity < 0 else None


def progress_enabled() -> bool:
    """Show progress bars: stderr is a terminal and ``-q`` was not given."""
    if _STATE["progress"] is False:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(total: int | None, unit: str, desc: str = ""):
    """A tqdm bar on stderr, or None when :func:`progress_enabled` says no."""
    if not progress_enabled():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc or None, file=sys.stderr, leave=False, dynamic_ncols=True)


class SearchProgress:
    """Progress of one branch-and-bound search: a tqdm bar (when :func:`progress_enabled`) and a DEBUG
    record every :attr:`EVERY` seconds. ``total`` 100 with ``fraction`` (the input volume closed, for
    input splitting) gives tqdm an ETA; without it the bar counts domains."""

    EVERY = 5.0
    REFRESH = 0.5

    def __init__(self, kind: str, by_volume: bool) -> None:
        import time

        self._time = time.monotonic
        self.kind, self.by_volume = kind, by_volume
        self.t0 = self._last_log = self._last_bar = self._time()
        self.bar = progress(100 if by_volume else None, "%" if by_volume else "domain", kind)
        self._shown = 0.0
        self._log = get("search")

    def update(self, domains: int, open_: int, fraction: float | None = None,
               worst: Callable[[], float] | None = None) -> None:
        """``worst``: the lowest value of an open domain (a domain closes above 0), asked for only when a
        record or the bar is due (alpha-beta-CROWN prints the same as its "global lb")."""
        now = self._time()
        bar_due = self.bar is not None and now - self._last_bar >= self.REFRESH
        log_due = now - self._last_log >= self.EVERY
        low = worst() if worst is not None and open_ and (bar_due or log_due) else None
        if bar_due:
            self._last_bar = now
            target = 100.0 * (fraction or 0.0) if self.by_volume else float(domains)
            if target > self._shown:
                self.bar.update(target - self._shown)
                self._shown = target
            extra = {} if low is None else {"worst": f"{low:.4g}"}
            self.bar.set_postfix(domains=domains, open=open_, refresh=True, **extra)
        if log_due:
            self._last_log = now
            extra = f", {100.0 * fraction:.2f}% of the volume closed" if fraction is not None else ""
            if low is not None:
                extra += f", worst open domain {low:.4g} (> 0 closes it)"
            self._log.debug("%s: %d domains bounded, %d open after %.1f s%s", self.kind, domains, open_,
                            now - self.t0, extra)

    def close(self, status: str, domains: int) -> None:
        if self.bar is not None:
            self.bar.close()
        self._log.info("%s: %s after %d domains in %.2f s", self.kind, status, domains, self._time() - self.t0)
