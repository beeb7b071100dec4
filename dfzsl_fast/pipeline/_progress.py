"""A tiny progress reporter: a tqdm bar on a terminal, else a few plain lines on stderr.

When stderr is not a terminal (a log file, a pipe, a CI job) carriage-return bars would fill the
log with redrawn lines, so plain lines are printed instead: one at each tenth of the work, and
one at least every `Progress.PLAIN_EVERY_S` seconds when a tenth takes longer.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress"]

try:  # optional dependency
    from tqdm.auto import tqdm as _tqdm
except Exception:  # pragma: no cover - depends on the environment
    _tqdm = None


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Progress:
    """Counts `total` steps; a tqdm bar on a terminal, else about ten plain lines on stderr.

    Args:
        total: number of steps expected (>= 0).
        desc: short label printed in front of the bar.
        enabled: False makes every method a no-op.

    Example:
        >>> with Progress(100, "fit") as bar:
        ...     for step in range(100):
        ...         bar.update(loss=0.1)
    """

    #: seconds after which a plain line is printed even when the next tenth is not reached
    PLAIN_EVERY_S: float = 60.0

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total = max(int(total), 0)
        self.desc = desc
        if not isinstance(enabled, (bool, int)) or isinstance(enabled, float):
            raise TypeError(f"progress: expected True or False, got {type(enabled).__name__}")
        self.enabled = bool(enabled)
        self.n = 0
        self._bar = None
        self._every = max(1, self.total // 10)
        self._next = self._every
        self._t0 = time.perf_counter()
        self._last = self._t0
        if self.enabled and _tqdm is not None and _stderr_is_terminal():
            self._bar = _tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by `n` steps; `postfix` values (e.g. loss=...) are shown beside the bar."""
        if not self.enabled:
            return
        self.n += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.n >= self._next or self.n == self.total or now - self._last >= self.PLAIN_EVERY_S:
            self._next = (self.n // self._every + 1) * self._every
            self._last = now
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
            pct = f" ({100 * self.n // self.total}%)" if self.total else ""
            print(f"{self.desc}: {self.n}/{self.total}{pct} [{now - self._t0:.1f}s] {extra}"
                  .rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
