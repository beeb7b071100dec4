"""dfzsl_fast: fast, exact data-free generalized zero-shot learning (DFZSL) on CLIP.

Importing never fails because the native extension, Triton or a GPU is missing: each op falls
back to the next backend. `python -m dfzsl_fast` (or `dfzsl_fast.show_config()`) says which
backends are available here and why not.
"""

from __future__ import annotations

from . import (
    _extension,  # noqa: F401  (loads _C and registers its kernels)
    nn,
)
from ._backend import use_backend
from ._diagnostics import show_config
from .ops.cosine import cosine_cross_entropy, cosine_logit_mse, cosine_logits, cosine_topk
from .ops.vmf import sample_vmf
from .theory import (
    estimate_kappa,
    kappa_from_prototypes,
    vmf_mean_resultant_length,
)

__all__ = [
    "sample_vmf",
    "cosine_logits",
    "cosine_cross_entropy",
    "cosine_topk",
    "cosine_logit_mse",
    "nn",
    "vmf_mean_resultant_length",
    "estimate_kappa",
    "kappa_from_prototypes",
    "use_backend",
    "show_config",
]

# Triton kernels register their custom ops on import; optional.
try:
    from .triton import HAS_TRITON as _HAS_TRITON

    if _HAS_TRITON:
        from .triton import vmf as _triton_vmf  # noqa: F401
except Exception:  # pragma: no cover - a broken triton install must not break import
    pass
try:
    if _HAS_TRITON:
        from .triton import cosine as _triton_cosine  # noqa: F401
except Exception:  # pragma: no cover
    pass
