"""Provenance recorded in every file the project writes: versions and time of creation."""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any

import torch

__all__ = ["provenance"]


def _package_version() -> str:
    try:
        from .._extension import _version

        return _version()
    except Exception:  # pragma: no cover
        return "unknown"


def provenance(**extra: Any) -> dict[str, Any]:
    """Versions and UTC time of creation, plus ``extra`` (which wins on a clash).

    Returns:
        ``{"dfzsl_fast": ..., "torch": ..., "python": ..., "created": "2026-...Z", **extra}``.
    """
    out: dict[str, Any] = {
        "dfzsl_fast": _package_version(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.update(extra)
    return out

