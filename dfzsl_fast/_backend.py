"""Backend selection shared by every op.

Order of precedence: an explicit `backend=` argument, then the innermost `use_backend(...)`
context, then the `DFZSL_BACKEND` environment variable, then "auto". Values:

- "native": the C++ (CPU) / CUDA kernels of `dfzsl_fast._C`;
- "triton": Triton kernels (CUDA tensors, or CPU tensors when TRITON_INTERPRET=1);
- "torch":  the pure-PyTorch reference (float64-capable; the oracle of the tests);
- "auto":   the first that can serve the input, in the order native, triton, torch (triton is
            never chosen automatically for CPU tensors, whose interpreter is for tests only).

Routing depends only on static facts (device type, dtype, build flags, environment), so it is
safe under torch.compile. An explicit backend that cannot serve the input raises ValueError with
the reasons.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

from . import _extension
from . import triton as _triton

__all__ = ["BACKENDS", "use_backend", "resolve", "availability", "native_reasons", "triton_reasons"]

BACKENDS = ("auto", "native", "triton", "torch")
_state = threading.local()


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: route ops without an explicit `backend=` to `name`."""
    _check_name(name, "use_backend")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _check_name(name, where: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {name!r}")


def requested(explicit: str | None) -> str:
    if explicit is not None:
        _check_name(explicit, "backend")
        return explicit
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("DFZSL_BACKEND", "").strip()
    if env:
        _check_name(env, "DFZSL_BACKEND")
        return env
    return "auto"


def native_reasons(op: str, device: torch.device) -> list[str]:
    """Why the native kernel of `dfzsl_fast::<op>` cannot run on `device` ([] if it can)."""
    if not _extension.native_available():
        return [f"native extension not loaded ({_extension.load_error})"]
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is None:
        return [f"no native kernels for device type {device.type!r}"]
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dfzsl_fast::{op}", key):
        if key == "CUDA":
            return ["_C was built without CUDA kernels"]
        return [f"no {key} kernel registered for dfzsl_fast::{op}"]
    return []


def triton_reasons(device: torch.device) -> list[str]:
    """Why Triton kernels cannot run on `device` ([] if they can)."""
    if not _triton.HAS_TRITON:
        return [f"triton not importable ({_triton.IMPORT_ERROR})"]
    if device.type == "cuda":
        return []
    if device.type == "cpu":
        if _triton.INTERPRET:
            return []
        return ["CPU tensors need TRITON_INTERPRET=1 (set before dfzsl_fast is imported)"]
    return [f"device type {device.type!r} is not supported by Triton here"]


def resolve(explicit: str | None, op: str, device: torch.device, extra: dict | None = None) -> str:
    """Pick the backend for one call of `op` on `device`.

    `extra` maps a backend name to additional reasons why it cannot serve this input (e.g. a
    dtype it lacks); they count as unavailability.
    """
    name = requested(explicit)
    extra = extra or {}

    def reasons(b: str) -> list[str]:
        r = list(extra.get(b, []))
        if b == "native":
            r += native_reasons(op, device)
        elif b == "triton":
            r += triton_reasons(device)
        return r

    if name == "auto":
        if not reasons("native"):
            return "native"
        if device.type == "cuda" and not reasons("triton"):
            return "triton"
        return "torch"
    why = reasons(name)
    if why:
        raise ValueError(f"backend={name!r} cannot run {op} here: " + "; ".join(why))
    return name


def availability() -> dict:
    """{backend: {device: [reasons]}} for CPU and (if present) CUDA, as shown by show_config."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    out = {}
    for b in ("native", "triton", "torch"):
        out[b] = {}
        for dev in devices:
            if b == "native":
                r = native_reasons("vmf_sample", dev)
            elif b == "triton":
                r = triton_reasons(dev)
            else:
                r = []
            out[b][dev.type] = r
    return out
