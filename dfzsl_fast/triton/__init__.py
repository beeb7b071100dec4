"""Import-safe Triton shim: `HAS_TRITON` is False (and nothing breaks) when triton is missing.

TRITON_INTERPRET=1 must be set before this package is imported for Triton kernels to run on CPU
tensors (Triton reads it when kernels are decorated).
"""

from __future__ import annotations

import os

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

__all__ = ["HAS_TRITON", "TRITON_VERSION", "IMPORT_ERROR", "INTERPRET"]
