"""Shared helpers for tests and benchmarks: devices, backends, statistical checks.

Shipped in the package (as pytorch_scatter and pyg-lib do) so that tests, benchmarks and users
checking their own install use the same definitions.
"""

from __future__ import annotations

import math
import os

import torch

from . import _backend, _load, theory  # noqa: F401  (_load fills the backend table)

__all__ = [
    "DEVICES",
    "available_backends",
    "skip_unless_available",
    "require_native",
    "mean_w_zscore",
]

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def require_native() -> bool:
    """True when DFZSL_REQUIRE_NATIVE=1 (CI): a missing native kernel is then a failure."""
    return os.environ.get("DFZSL_REQUIRE_NATIVE", "").strip() not in ("", "0")


def backend_reasons(backend: str, device: torch.device, op: str = "vmf_sample") -> list[str]:
    if backend == "native":
        return _backend.native_reasons(op, device)
    if backend == "triton":
        return _backend.triton_reasons(device)
    return []


def available_backends(device: torch.device, op: str = "vmf_sample") -> list[str]:
    return [b for b in ("native", "triton", "torch") if not backend_reasons(b, device, op)]


def skip_unless_available(backend: str, device: torch.device, op: str = "vmf_sample") -> None:
    """pytest.skip (or fail, for native under DFZSL_REQUIRE_NATIVE=1) when unavailable."""
    import pytest

    reasons = backend_reasons(backend, device, op)
    if not reasons:
        return
    if backend == "native" and device.type == "cpu" and require_native():
        pytest.fail("native CPU kernel required (DFZSL_REQUIRE_NATIVE=1): " + "; ".join(reasons))
    pytest.skip(f"{backend} on {device.type}: " + "; ".join(reasons))


def mean_w_zscore(w: torch.Tensor, d: int, kappa: float) -> float:
    """z-score of the sample mean of w = mu^T x against A_d(kappa), with the exact variance."""
    n = w.numel()
    mean = float(w.double().mean())
    expected = theory.vmf_mean_resultant_length(d, kappa)
    var = theory.vmf_w_variance(d, kappa)
    se = math.sqrt(var / n)
    if se == 0.0:
        return 0.0 if mean == expected else math.inf
    return (mean - expected) / se


def triton_test_setup(module: str):
    """(device, the `dfzsl_fast.triton.<module>` module or None, pytestmark) for a test file of
    Triton kernels: CUDA when present, else the CPU under the interpreter; the marks skip the
    file when Triton is not importable, or when there is no GPU and the kernels were defined
    without TRITON_INTERPRET=1 (the test file sets it before importing dfzsl_fast)."""
    import importlib

    import pytest

    from .triton import HAS_TRITON, IMPORT_ERROR

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mod = importlib.import_module(f"dfzsl_fast.triton.{module}") if HAS_TRITON else None
    interpreted = bool(getattr(mod, "_INTERPRETED", False))
    marks = [
        pytest.mark.triton,
        pytest.mark.skipif(not HAS_TRITON, reason=f"triton not importable ({IMPORT_ERROR})"),
        pytest.mark.skipif(
            device.type == "cpu" and not interpreted,
            reason="no GPU and the Triton kernels were defined without TRITON_INTERPRET=1 "
            "(dfzsl_fast was imported before it was set)",
        ),
    ]
    return device, mod, marks


def tiny_open_clip_tower(output_dim: int = 16):
    """A random-weight open_clip text tower of width 32, one layer, with the given output dim
    (fast on a CPU), as an `OpenCLIPTextTower`; skips the calling test without open_clip."""
    import pytest

    open_clip = pytest.importorskip("open_clip")
    from .text.towers import OpenCLIPTextTower

    torch.manual_seed(0)
    model = open_clip.create_model(
        "ViT-B-32", pretrained=None, embed_dim=output_dim,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                    "head_width": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                  "layers": 1},
    ).eval()
    return OpenCLIPTextTower(model)
