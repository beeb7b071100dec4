"""dfzsl_fast: fast, exact data-free generalized zero-shot learning (DFZSL) on CLIP.

Importing never fails because the native extension, Triton or a GPU is missing: each op falls
back to the next backend. `python -m dfzsl_fast` (or `dfzsl_fast.show_config()`) says which
backends are available here and why not.

The package itself is light: the public names below are loaded on first use (PEP 562), so that
`import dfzsl_fast.cli` and `dfzsl-fast --help` do not import torch; the first op loads torch,
the native extension and Triton (`dfzsl_fast._load`).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute); None: the module itself
_PUBLIC = {
    "sample_vmf": ("ops.vmf", "sample_vmf"),
    "vmf_logit_mse": ("ops.vmf_fit", "vmf_logit_mse"),
    "cosine_logits": ("ops.cosine", "cosine_logits"),
    "cosine_cross_entropy": ("ops.cosine", "cosine_cross_entropy"),
    "cosine_cross_entropy_and_grad_w": ("ops.cosine", "cosine_cross_entropy_and_grad_w"),
    "cosine_topk": ("ops.cosine", "cosine_topk"),
    "cosine_logit_mse": ("ops.cosine", "cosine_logit_mse"),
    "nn": ("nn", None),
    "vmf_mean_resultant_length": ("theory", "vmf_mean_resultant_length"),
    "estimate_kappa": ("theory", "estimate_kappa"),
    "kappa_from_prototypes": ("theory", "kappa_from_prototypes"),
    "use_backend": ("_backend", "use_backend"),
    "show_config": ("_diagnostics", "show_config"),
    "synthesize_to": ("synthesis.shards", "synthesize_to"),
    "FeatureShards": ("synthesis.reader", "FeatureShards"),
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dfzsl_fast' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    mod = importlib.import_module(f"{__name__}.{module}")
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
