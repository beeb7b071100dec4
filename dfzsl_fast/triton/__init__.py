"""Import-safe Triton shim: `HAS_TRITON` is False (and nothing breaks) when triton is missing.

TRITON_INTERPRET=1 must be set before this package is imported for Triton kernels to run on CPU
tensors (Triton reads it when kernels are decorated). The kernel modules (`vmf`, `cosine`,
`generator`) register themselves in the backend table when imported (dfzsl_fast/_load.py
imports them when triton is importable); without triton the whole backend is marked
unavailable here.
"""

from __future__ import annotations

import os

from .. import _backend

INTERPRET = os.environ.get("TRITON_INTERPRET", "").strip() not in ("", "0")

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401

    HAS_TRITON = True
    TRITON_VERSION: str | None = triton.__version__
    IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install
    HAS_TRITON = False
    TRITON_VERSION = None
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
    _backend.mark_unavailable("triton", f"triton not importable ({IMPORT_ERROR})")

#: Why CPU tensors cannot use the Triton kernels (the notes of their backend-table entries).
CPU_NOTE = "CPU tensors need TRITON_INTERPRET=1 (set before dfzsl_fast is imported)"


def devices(dtypes) -> tuple[dict, dict]:
    """(devices, notes) for `_backend.register` of a Triton kernel taking `dtypes`."""
    devs = {"cuda": tuple(dtypes)}
    notes = {}
    if INTERPRET:
        devs["cpu"] = tuple(dtypes)
    else:
        notes["cpu"] = CPU_NOTE
    return devs, notes


__all__ = ["HAS_TRITON", "TRITON_VERSION", "IMPORT_ERROR", "INTERPRET", "CPU_NOTE", "devices"]
