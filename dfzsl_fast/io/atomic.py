"""Atomic writes: the one writer every file of the project goes through.

The data is written to a temporary file in the destination folder (so ``os.replace`` is a
rename on one file system), flushed to disk, then renamed over the destination. A crash, Ctrl-C
or full disk therefore leaves either the old file or the new one, never half a file: the
temporary file is removed on any error, including KeyboardInterrupt.

Example:
    >>> atomic_write("out.pt", lambda p: torch.save({"x": x}, p))
    >>> save_json("run/metrics.json", {"H": 0.71})
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = ["PathLike", "atomic_path", "atomic_open", "atomic_write", "to_jsonable", "save_json",
           "save_csv"]

PathLike = str | os.PathLike

_UMASK: int | None = None


def _file_mode() -> int:
    """0o666 minus the process umask: the mode a plain ``open(path, "w")`` would give."""
    global _UMASK
    if _UMASK is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK = mask
    return 0o666 & ~_UMASK


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, makedirs: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    The temporary file lies in ``path``'s folder (so ``os.replace`` is a rename on one file
    system) and ends with ``path``'s suffix (writers that pick a format from the suffix, such as
    ``np.savez`` or matplotlib, keep working). On an exception it is deleted and ``path`` is
    left as it was.

    Args:
        path: the final file.
        makedirs: create missing parent folders (default True).

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
        FileNotFoundError: the parent folder is missing and ``makedirs`` is False.

    Example:
        >>> with atomic_path("out/weights.safetensors") as tmp:
        ...     safetensors.torch.save_file(tensors, tmp)
    """
    final = Path(path).expanduser()
    if final.is_dir():
        raise IsADirectoryError(f"`path`: {final} is a folder, expected a file path")
    parent = final.parent
    if makedirs:
        parent.mkdir(parents=True, exist_ok=True)
    elif not parent.is_dir():
        raise FileNotFoundError(f"`path`: the folder {parent} does not exist")
    fd, name = tempfile.mkstemp(dir=parent, prefix=f".{final.name}.", suffix=f".tmp{final.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush the data before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(parent)


@contextlib.contextmanager
def atomic_open(
    path: PathLike, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO]:
    """``open()`` for writing, atomically: the file appears complete or not at all.

    Args:
        path: the final file. mode: "w" (text, default) or "wb" (bytes).
        encoding, newline: as for ``open`` (text mode only).

    Example:
        >>> with atomic_open("run/log.csv", newline="") as fh:
        ...     csv.writer(fh).writerows(rows)
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"`mode`: expected 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        if "b" in mode:
            with open(tmp, "wb") as fh:
                yield fh
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as fh:
                yield fh


def atomic_write(path: PathLike, writer: Callable[[Path], Any] | str | bytes) -> Path:
    """Write ``path`` atomically.

    Args:
        path: the final file (parent folders are created).
        writer: a callable ``writer(tmp_path)`` that writes the whole file at ``tmp_path`` (e.g.
            ``lambda p: torch.save(obj, p)``), or the ``str`` (UTF-8) / ``bytes`` content itself.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> atomic_write("out.pt", lambda p: torch.save({"x": x}, p))
        >>> atomic_write("notes.txt", "hello\\n")
    """
    final = Path(path).expanduser()
    with atomic_path(final) as tmp:
        if isinstance(writer, str):
            tmp.write_text(writer, encoding="utf-8")
        elif isinstance(writer, (bytes, bytearray, memoryview)):
            tmp.write_bytes(bytes(writer))
        elif callable(writer):
            writer(tmp)
        else:
            raise TypeError(
                f"`writer`: expected a callable taking a path, str or bytes; got "
                f"{type(writer).__name__}"
            )
    return final


# ------------------------------------------------------------------------------------------
# JSON and CSV
# ------------------------------------------------------------------------------------------


def to_jsonable(obj: Any, where: str = "value") -> Any:
    """Plain JSON types; NaN/Inf become None. Tensors and arrays become lists."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str(obj)  # plain str: subclasses (torch's TorchVersion) do not unpickle safely
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), where)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return to_jsonable(arr.tolist(), where)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"{where}: dict key {k!r} is not a string")
            out[str(k)] = to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        seq = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(seq)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), where)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored as JSON")


def save_json(path: PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON, atomically (tensors/arrays as lists, NaN/Inf as null, Paths as str).

    Raises:
        TypeError: a value that has no JSON form (the message names where it is).
    """
    text = json.dumps(to_jsonable(obj, "obj"), indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, text)


def save_csv(path: PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) as CSV with a header of ``columns``, atomically.

    Floats are written with ``repr`` precision; None and NaN as an empty cell.
    """
    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return v

    with atomic_open(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(columns))
        for r in rows:
            w.writerow([cell(r.get(c)) for c in columns])
    return Path(path)

