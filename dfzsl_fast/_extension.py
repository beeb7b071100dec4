"""Loading of the native module `dfzsl_fast._C`, and registration of its kernels.

Importing dfzsl_fast never fails because `_C` is missing, stale or broken: the failure is kept
in `load_error` (and given to the backend table), the pure-PyTorch reference kernels serve every
op, and `show_config()` (`dfzsl_fast._diagnostics`, also `python -m dfzsl_fast info`) says why.
This module only loads `_C`; the report lives in `_diagnostics`.
"""

from __future__ import annotations

import importlib
import os
import traceback
from typing import Any

import torch

from . import _backend
from .ops import _library

__all__ = ["C", "load_error", "native_available", "build_info"]

C: Any = None
load_error: str | None = None

#: dtypes of mu (vmf_sample) or x (cosine ops) that the native kernels take, per device type.
#: The cosine CPU kernels compute half inputs in float32; the CUDA sampler takes float32/float64.
_NATIVE_DTYPES = {
    "vmf_sample": (torch.float32, torch.float64),
    "cosine": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "tfvaegan": (torch.float32, torch.bfloat16),  # of the GEMM weights
    "gather_rows": (torch.float32, torch.float64, torch.int64),  # of the output
}


def _load() -> None:
    global C, load_error
    if os.environ.get("DFZSL_DISABLE_EXT", "").strip() not in ("", "0"):
        load_error = "disabled by DFZSL_DISABLE_EXT"
        return
    try:
        mod = importlib.import_module("dfzsl_fast._C")
        info = mod.build_info()
        built = info.get("torch_version", "")
        # An extension built against another torch major.minor can crash at call time (ABI
        # drift, undefined symbols): refuse it and fall back instead.
        if built.split(".")[:2] != torch.__version__.split(".")[:2]:
            load_error = (
                f"_C was built for torch {built} but torch {torch.__version__} is installed; "
                "rebuild with `pip install --no-build-isolation -e .`"
            )
            return
        C = mod
    except Exception as exc:  # ImportError, OSError (undefined symbol), ...
        load_error = f"{type(exc).__name__}: {exc}"
        if os.environ.get("DFZSL_VERBOSE", "").strip() not in ("", "0"):
            traceback.print_exc()


def _register() -> None:
    """Fill the backend table with the kernels `_C` registered with the dispatcher."""
    if C is None:
        _backend.mark_unavailable("native", f"native extension not loaded ({load_error})")
        return
    with_cuda = bool(build_info().get("with_cuda"))
    for op in _library.OPS:
        devices, notes = {}, {}
        dtypes = _NATIVE_DTYPES[
            "vmf_sample" if op.startswith("vmf") else "tfvaegan" if op.startswith("tfvaegan")
            else "gather_rows" if op == "gather_rows" else "cosine"
        ]
        for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"dfzsl_fast::{op}", key):
                devices[dev] = dtypes
            elif dev == "cuda" and not with_cuda:
                notes[dev] = "_C was built without CUDA kernels"
            else:
                notes[dev] = f"_C has no {key} kernel for {op}"
        if devices:
            _backend.register(
                op, "native", getattr(torch.ops.dfzsl_fast, op), devices=devices, notes=notes
            )


_load()


def native_available() -> bool:
    """True when `dfzsl_fast._C` is loaded (its CPU kernels are then registered)."""
    return C is not None


def build_info() -> dict:
    """Build facts compiled into `_C` (empty dict when it is not loaded)."""
    return dict(C.build_info()) if C is not None else {}


def _version() -> str:
    """The installed dfzsl_fast version (kept here for callers outside the kernel layer)."""
    try:
        from importlib.metadata import version

        return version("dfzsl_fast")
    except Exception:
        return "unknown (not installed)"


_register()
