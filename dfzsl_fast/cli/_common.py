"""Argument helpers shared by the `dfzsl-fast` commands: typed options with ranges, devices,
output paths checked before any work, and ``--set KEY=VALUE`` overrides.

Every helper raises :class:`UsageError` (exit code 2) with a message naming the option.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "UsageError",
    "CommandFailed",
    "int_option",
    "float_option",
    "check_device",
    "check_output_file",
    "check_output_dir",
    "apply_overrides",
    "build_config",
    "add_set_option",
    "check_input_file",
    "log_to",
    "pct",
    "default_out_dir",
    "legend",
    "far_below_zero_shot",
    "SELECTION_NOTE",
]


class UsageError(Exception):
    """A wrong command line (bad option value, output in the way, ...): exit code 2."""


class CommandFailed(Exception):
    """The command ran but its result is a failure (e.g. a statistical check): exit code 1."""


def int_option(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for integers in [low, high] (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            v = int(text, 0) if text.strip().lower().startswith(("0x", "0o", "0b")) else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {v}")
        return v

    parse.__name__ = "int"
    return parse


def float_option(low: float | None = None, high: float | None = None, *,
                 low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` for finite floats in [low, high] ((low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(v)
        bad = bad or (low is not None and (v <= low if low_open else v < low))
        bad = bad or (high is not None and v > high)
        if bad:
            lo = "(" if low_open else "["
            raise argparse.ArgumentTypeError(
                f"expected a finite number in {lo}{low}, {high}], got {text!r}")
        return v

    parse.__name__ = "float"
    return parse


def check_device(spec: str | None, option: str = "--device", *, allow_auto: bool = False):
    """``torch.device(spec)``, checked to exist on this machine (None stays None)."""
    if spec is None or (allow_auto and spec == "auto"):
        return spec
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{option}: not a device: {spec!r} (use cpu or cuda)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {spec}: no CUDA GPU is available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {spec}: only {torch.cuda.device_count()} GPU(s) here")
    elif dev.type != "cpu":
        raise UsageError(f"{option}: unsupported device {spec!r} (use cpu or cuda)")
    return dev


def _existing_ancestor(p: Path, option: str) -> Path:
    """The nearest existing ancestor of ``p``; it must be a writable folder."""
    q = p.parent
    while not q.exists():
        if q == q.parent:
            break
        q = q.parent
    if not q.is_dir():
        raise UsageError(f"{option}: {p} lies inside {q}, which is a file, not a folder")
    _check_writable(q, option)
    return q


def _check_writable(folder: Path, option: str) -> None:
    """Raise unless a file can be created in ``folder`` (probed: permissions alone do not tell
    for root, read-only mounts or /proc); the probe file is removed at once."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".dfzsl-probe-")
    except OSError as exc:
        raise UsageError(f"{option}: cannot write into {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


def check_output_file(path: str | os.PathLike, option: str, *, overwrite: bool,
                      suffixes: Sequence[str] | None = None) -> Path:
    """Check an output file path without creating anything; return it as a ``Path``."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise UsageError(f"{option}: empty path")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise UsageError(f"{option}: expected a file name ending in {' / '.join(suffixes)}, "
                         f"got {p.name!r}")
    if p.is_dir():
        raise UsageError(f"{option}: {p} is a folder, expected a file path")
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise UsageError(f"{option}: {p} exists (use --overwrite)")
        _check_writable(p.parent, option)
        return p
    _existing_ancestor(p, option)
    return p


def check_output_dir(path: str | os.PathLike, option: str, *, reuse: bool,
                     reuse_flag: str = "--overwrite",
                     clashing: Sequence[str] | None = None) -> Path:
    """Check an output folder without creating it; return it as a ``Path``.

    Args:
        reuse: an existing non-empty folder may be written into.
        clashing: only these file names count as "in the way" (default: any entry).
    """
    p = Path(path).expanduser()
    if not str(path).strip():
        raise UsageError(f"{option}: empty path")
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise UsageError(f"{option}: {p} exists and is not a folder")
        if not reuse:
            if clashing is None:
                if any(p.iterdir()):
                    raise UsageError(f"{option}: {p} is not empty (use {reuse_flag})")
            else:
                clash = [f for f in clashing if (p / f).exists()]
                if clash:
                    raise UsageError(f"{option}: {p} already holds {clash} (use {reuse_flag})")
        _check_writable(p, option)
        return p
    _existing_ancestor(p, option)
    return p


def check_input_file(path: str | os.PathLike, option: str) -> Path:
    """An input file given on the command line, checked to exist (FileNotFoundError: exit 2)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{option}: no file at {p}" + (" (a folder)" if p.is_dir() else ""))
    return p


@contextlib.contextmanager
def log_to(folder: Path | None, level: str, *, file_level: str | None = None) -> Iterator[None]:
    """Send the ``dfzsl_fast`` loggers to stderr at ``level`` (and to ``folder/log.txt`` at
    ``file_level``, default ``level``) while a command runs; the logging setup is restored
    afterwards (``main`` may be called in-process). The file handler is flushed per record, so
    log.txt holds every line of the run even if it is interrupted."""
    logger = logging.getLogger("dfzsl_fast")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level.upper())
    handlers: list[logging.Handler] = [console]
    levels = [level.upper()]
    if folder is not None:
        fh = logging.FileHandler(folder / "log.txt", encoding="utf-8")
        fh.setLevel((file_level or level).upper())
        handlers.append(fh)
        levels.append((file_level or level).upper())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    old = (logger.level, logger.propagate)
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.setLevel(min(logging.getLevelName(x) for x in levels))
    logger.propagate = False
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old[0])
        logger.propagate = old[1]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


def apply_overrides(data: dict[str, Any], items: Sequence[str] | None,
                    option: str = "--set") -> dict[str, Any]:
    """Apply dotted ``KEY=VALUE`` overrides (JSON values, else strings) to a config dict.

    Raises:
        UsageError: no ``=``, or a key that is not in ``data`` (types are checked by the
            config's ``from_dict``).
    """
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"{option}: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise UsageError(f"{option}: unknown config key {key.strip()!r}")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            valid = sorted(k for k, v in node.items() if not isinstance(v, dict))
            raise UsageError(f"{option}: unknown config key {key.strip()!r}; valid: {valid}")
        node[parts[-1]] = _parse_value(value)
    return data


def build_config(cls: Any, data: dict[str, Any], option: str = "--set") -> Any:
    """``cls.from_dict(data)``, with its type and value errors reported against ``option``."""
    try:
        return cls.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{option}: {exc}") from exc


def add_set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. {example} (repeatable; JSON values)")


def pct(v: float | None) -> str:
    """A fraction as a percentage with two decimals ("  n/a" for None)."""
    return "  n/a" if v is None else f"{100 * v:5.2f}"


def default_out_dir(command: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/<command>-<YYYYmmdd-HHMMSS>`` under the current folder (a ``-2``, ``-3``, ...
    suffix when that folder exists already); nothing is created."""
    import time

    base = Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    p, i = base, 1
    while p.exists() or p.is_symlink():
        i += 1
        p = base.with_name(f"{base.name}-{i}")
    return p


def legend(keys: Sequence[str]) -> str:
    """One line defining the score columns shown (S/U/H and/or B/N/HM)."""
    parts = []
    if "S" in keys or "H" in keys:
        parts.append("S = accuracy on seen (base) classes, U = on unseen (new) classes, both "
                     "averaged per class with every class a possible answer; H = their harmonic "
                     "mean (high only when both are)")
    if "B" in keys or "HM" in keys:
        parts.append("B / N = accuracy on base / new test images, choosing only among base / "
                     "new classes; HM = their harmonic mean")
    return "(" + "; ".join(parts) + "; all in %.)"


def far_below_zero_shot(method: str, h: float | None, h_zero_shot: float | None,
                        margin: float = 0.10) -> str | None:
    """A plain warning when ``method``'s H is more than ``margin`` under zero-shot CLIP's."""
    if h is None or h_zero_shot is None or not h < h_zero_shot - margin:
        return None
    return (f"warning: {method} scores H {100 * h:.1f}, {100 * (h_zero_shot - h):.1f} points "
            f"below plain zero-shot CLIP ({100 * h_zero_shot:.1f}): on these data it does worse "
            f"than classifying with the class names alone.")


SELECTION_NOTE = (
    "Note: the published code reports the best epoch as judged on the test images themselves, "
    "i.e. it peeks at the answers; that gives {h} for DFZSL here. It is shown only for "
    "comparison with the paper: the number to trust is the one above, where the epoch was "
    "chosen without looking at test data ({selection})."
)
