"""Class names and class descriptors (the inputs of ICIS and of the text side).

Example:
    >>> names = load_names("classes.txt")                  # one name per line, or a JSON list
    >>> attrs, embedded = load_descriptors("attributes.npz")   # (C, A) float32, names or None
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classnames import check_classnames
from ._checks import check_finite, numeric_tensor, strings
from .atomic import PathLike

__all__ = ["load_names", "load_descriptors"]

_NAME_KEYS = ("names", "class_names")


def load_names(path: PathLike) -> list[str]:
    """Class names from a file: a JSON list of strings (``.json``), else one name per line.

    Blank lines are skipped and surrounding whitespace stripped.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a JSON list of strings, no names, or duplicate names.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no names file at {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{p}: cannot read as UTF-8 text ({exc})") from None
    if p.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc})") from exc
        if isinstance(names, dict) and any(k in names for k in _NAME_KEYS):
            names = names.get("names", names.get("class_names"))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{p}: expected a JSON list of strings")
        names = [n.strip() for n in names]
        blank = [i for i, n in enumerate(names) if not n]
        if blank:
            raise ValueError(f"{p}: entry [{blank[0]}] is blank; every class needs a name")
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise ValueError(f"{p}: no class names found")
    try:
        check_classnames(names, "names")
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
    return names


def load_descriptors(
    path: PathLike, *, key: str | None = None
) -> tuple[torch.Tensor, list[str] | None]:
    """Class descriptors (attributes or text embeddings), one row per class.

    Formats: ``.npy`` (C, A) array; ``.npz`` with ``descriptors`` (or ``key``, or its only
    array) and optional ``names``; ``.pt``/``.pth`` holding a (C, A) tensor or a dict with
    ``descriptors`` (or ``key``) and optional ``names``; ``.safetensors`` with a ``descriptors``
    tensor (or ``key``, or its only tensor).

    Args:
        path: the file.
        key: the entry to read in a multi-entry file.

    Returns:
        ``(descriptors, names)``: (C, A) float32 tensor and the embedded names (or None).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unknown suffix, no descriptor entry, not 2-D, not float, NaN/Inf, or a name
            count differing from C.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no descriptor file at {p}")
    suffix = p.suffix.lower()
    names = None
    entries: dict[str, Any]
    try:
        if suffix == ".npy":
            entries = {"descriptors": np.load(p, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                entries = {k: z[k] for k in z.files}
        elif suffix in (".pt", ".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
            entries = obj if isinstance(obj, dict) else {"descriptors": obj}
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            entries = dict(load_file(str(p)))
        else:
            raise ValueError(
                f"`path`: unsupported descriptor file type {suffix!r}; use .npy, .npz, .pt, "
                ".safetensors"
            )
    except Exception as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("`path`") else
                         f"{p}: cannot read the descriptor file ({msg})") from None
    for k in _NAME_KEYS:
        if k in entries:
            names = strings(entries.pop(k), k, str(p))
            break
    if key is not None:
        if key not in entries:
            raise ValueError(f"{p}: no entry `{key}` (found {sorted(entries)})")
        arr = entries[key]
    elif "descriptors" in entries:
        arr = entries["descriptors"]
    elif len(entries) == 1:
        arr = next(iter(entries.values()))
    else:
        raise ValueError(
            f"{p}: several entries {sorted(entries)}; name the descriptor one `descriptors` "
            "(or pass key=...)"
        )
    t = numeric_tensor(arr, "descriptors", str(p))
    if t.dim() != 2 or 0 in t.shape:
        raise ValueError(f"{p}: descriptors must be a non-empty (C, A) array, got shape "
                         f"{tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{p}: descriptors must be floating point, got {t.dtype}")
    t = t.to(torch.float32).contiguous()
    check_finite(t, f"{p}: descriptors")
    if names is not None and len(names) != t.shape[0]:
        raise ValueError(f"{p}: {len(names)} names but {t.shape[0]} descriptor rows")
    return t, names

