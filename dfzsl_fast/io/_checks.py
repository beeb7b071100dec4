"""Checks and readers shared by the io modules (not public)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import numeric_tensor  # noqa: F401  (re-exported for the io modules)

META_KEY = "dfzsl_fast"


def np_array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_finite(t: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = bad.nonzero()[0].tolist()
        raise ValueError(f"{what} contains NaN or Inf (first at index {tuple(first)})")


def check_names(names: Any, what: str) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence | np.ndarray):
        raise TypeError(f"`{what}`: expected a sequence of strings, got {type(names).__name__}")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, np.str_):
            n = str(n)
        if not isinstance(n, str):
            raise TypeError(f"`{what}`[{i}]: expected a string, got {type(n).__name__}")
        out.append(n)
    return out



def strings(x: Any, what: str, src: str) -> list[str]:
    if isinstance(x, str):
        raise ValueError(f"{src}: `{what}` must be a sequence of strings, got one string")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{src}: `{what}` must be a 1-D sequence of strings ({exc})") from None
    if a.ndim != 1 or (a.size and a.dtype.kind not in "UO"):
        raise ValueError(f"{src}: `{what}` must be a 1-D sequence of strings")
    out = [str(s) if isinstance(s, (str, np.str_)) else None for s in a.tolist()]
    if any(s is None for s in out):
        raise ValueError(f"{src}: `{what}` must hold only strings")
    return out  # type: ignore[return-value]



def read_safetensors(p: Path, expected_format: str, what: str) -> tuple[dict, dict]:
    """(tensors, parsed JSON metadata) of a dfzsl_fast safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"{p}: not a readable safetensors file ({exc})") from exc
    fmt = header.get("format")
    if fmt != expected_format:
        raise ValueError(
            f"{p}: not a dfzsl_fast {what} file: safetensors metadata format = {fmt!r}, "
            f"expected {expected_format!r}"
        )
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: the `{META_KEY}` metadata key is missing or not JSON") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{p}: the `{META_KEY}` metadata is not a JSON object")
    return tensors, meta
