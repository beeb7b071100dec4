"""Fill the backend table: load the native extension and the optional Triton kernels.

Imported by the modules that route ops (`ops/`, `_diagnostics`), not by the package's
`__init__`, so that `import dfzsl_fast` (and `dfzsl-fast --help`) stays light: torch, `_C` and
Triton are loaded by the first use of an op. A missing or broken Triton never breaks an import.
"""

from __future__ import annotations

from . import _extension  # noqa: F401  (loads _C and registers its kernels)
from .triton import HAS_TRITON

if HAS_TRITON:
    try:  # Triton kernels register their own table entries on import
        from .triton import cosine as _triton_cosine  # noqa: F401
        from .triton import generator as _triton_generator  # noqa: F401
        from .triton import vmf as _triton_vmf  # noqa: F401
    except Exception:  # pragma: no cover - a broken triton install must not break import
        pass
