"""Backend selection shared by every op: one table, one selection function.

Each backend fills the per-op table with `register(op, backend, fn, devices=..., reason_fn=...)`:

- "native": the C++ (CPU) / CUDA kernels of `dfzsl_fast._C`, registered by the native loader
  (`dfzsl_fast._extension`) for the dispatch keys `_C` really carries;
- "triton": Triton custom ops, registered by `dfzsl_fast/triton/<op>.py` (CUDA tensors, or CPU
  tensors when TRITON_INTERPRET=1);
- "torch": the pure-PyTorch reference kernels (float64-capable; the oracle of the tests),
  registered by `dfzsl_fast/ops/<op>.py` for every device.

A backend that cannot load at all says why with `mark_unavailable(backend, reason)`.

Which backend runs a call: an explicit `backend=` argument, then the innermost
`use_backend(...)` context, then the `DFZSL_BACKEND` environment variable, then "auto": the first
of native, triton (CUDA tensors only: the CPU interpreter is for tests) and torch that can serve
the input. An explicit backend that cannot serve the input raises ValueError with the reasons.

Routing depends only on static facts (op, device type, dtype, build flags, environment, a few
ints such as k or d), never on tensor values, so it is safe under torch.compile; while compiling
(and for meta / fake tensors) every op goes through the dispatcher, whose fake kernels give
shapes. This module imports nothing from the package: every other module may use it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "BACKENDS",
    "use_backend",
    "requested",
    "declare",
    "register",
    "mark_unavailable",
    "reasons",
    "select",
    "resolve",
    "availability",
    "native_reasons",
    "triton_reasons",
    "ops",
]

BACKENDS = ("auto", "native", "triton", "torch")
#: The order in which "auto" tries backends (triton only for CUDA tensors).
AUTO_ORDER = ("native", "triton", "torch")
_state = threading.local()


@dataclass(frozen=True)
class Kernel:
    """One backend's kernel of one op.

    fn: the callable the public wrapper calls (same arguments as the op's schema).
    devices: device type -> dtypes of the (first) tensor input this kernel accepts.
    notes: device type -> why the kernel does not serve that device type (shown by show_config).
    reason_fn: `reason_fn(**attrs) -> list[str]`, extra static reasons (e.g. k above a cap).
    """

    fn: Callable
    devices: Mapping[str, tuple[torch.dtype, ...]]
    notes: Mapping[str, str] = field(default_factory=dict)
    reason_fn: Callable[..., list[str]] | None = None


_TABLE: dict[str, dict[str, Kernel]] = {}
_DISPATCH: dict[str, Callable] = {}
_UNAVAILABLE: dict[str, str] = {}


# ------------------------------------------------------------------------------- filling the table
def declare(op: str, dispatcher: Callable) -> None:
    """Declare `op` with its dispatcher entry (`torch.ops.dfzsl_fast.<op>`): what runs under
    torch.compile and for meta/fake tensors (the registered fake kernel gives the shapes)."""
    _DISPATCH[op] = dispatcher
    _TABLE.setdefault(op, {})


def register(
    op: str,
    backend: str,
    fn: Callable,
    *,
    devices: Mapping[str, Sequence[torch.dtype]],
    notes: Mapping[str, str] | None = None,
    reason_fn: Callable[..., list[str]] | None = None,
) -> None:
    """Register `backend`'s kernel of `op` (called by the native loader, the Triton modules and
    the ops modules for the reference kernels)."""
    if backend not in AUTO_ORDER:
        raise ValueError(f"register: backend must be one of {AUTO_ORDER}, got {backend!r}")
    _TABLE.setdefault(op, {})[backend] = Kernel(
        fn, {k: tuple(v) for k, v in devices.items()}, dict(notes or {}), reason_fn
    )


def mark_unavailable(backend: str, reason: str) -> None:
    """Record why a whole backend cannot run here (extension not loaded, triton missing)."""
    _UNAVAILABLE[backend] = reason


def ops() -> tuple[str, ...]:
    """The declared ops, in declaration order."""
    return tuple(_TABLE)


# ------------------------------------------------------------------------------------- choosing
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
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {name!r}")


def requested(explicit: str | None) -> str:
    """The backend asked for: explicit, else use_backend, else DFZSL_BACKEND, else "auto"."""
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


_DISPLAY = {"native": "native", "triton": "Triton", "torch": "torch"}


def _dtype_names(dtypes) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def reasons(
    op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None, **attrs
) -> list[str]:
    """Why `backend` cannot run `op` on `device` for this dtype and these attributes ([] if it
    can). Static facts only."""
    if backend in _UNAVAILABLE:
        return [_UNAVAILABLE[backend]]
    kern = _TABLE.get(op, {}).get(backend)
    if kern is None:
        return [f"no {_DISPLAY.get(backend, backend)} kernel for {op}"]
    dev = torch.device(device).type
    if dev not in kern.devices:
        return [kern.notes.get(dev, f"no {backend} kernel of {op} for device type {dev!r}")]
    out = []
    if dtype is not None and dtype not in kern.devices[dev]:
        out.append(
            f"the {_DISPLAY.get(backend, backend)} kernel of {op} takes "
            f"{_dtype_names(kern.devices[dev])} "
            f"on {dev}, got {str(dtype).replace('torch.', '')}"
        )
    if kern.reason_fn is not None:
        out += list(kern.reason_fn(**attrs))
    return out


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except Exception:  # pragma: no cover
        return False


def select(
    op: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    backend: str | None = None,
    **attrs,
) -> tuple[str, Callable]:
    """THE routing function: (backend name, callable) for one call of `op`.

    While torch.compile traces, and for meta tensors, the result is ("dispatch", the op's
    dispatcher entry): the registered kernel or fake kernel then serves the call (the backend
    request is still validated).
    """
    name = requested(backend)
    if _is_compiling() or torch.device(device).type == "meta":
        return "dispatch", _DISPATCH[op]
    table = _TABLE.get(op, {})
    if name == "auto":
        dev = torch.device(device).type
        for b in AUTO_ORDER:
            if b == "triton" and dev != "cuda":
                continue
            if b == "native":
                why = native_reasons(op, device, dtype, **attrs)
            else:
                why = reasons(op, b, device, dtype, **attrs)
            if not why and b in table:
                return b, table[b].fn
        raise ValueError(f"no backend can run {op} on {dev} here")  # pragma: no cover
    why = (
        native_reasons(op, device, dtype, **attrs)
        if name == "native"
        else reasons(op, name, device, dtype, **attrs)
    )
    if why:
        raise ValueError(f"backend={name!r} cannot run {op} here: " + "; ".join(why))
    return name, table[name].fn


def resolve(
    explicit: str | None, op: str, device: torch.device, dtype: torch.dtype | None = None, **attrs
) -> str:
    """The backend name `select` picks (see there)."""
    return select(op, device, dtype, explicit, **attrs)[0]


# ------------------------------------------------------------------- per-backend views (tests)
def native_reasons(op: str, device: torch.device, dtype=None, **attrs) -> list[str]:
    """Why the native kernel of `dfzsl_fast::<op>` cannot run on `device` ([] if it can)."""
    return reasons(op, "native", device, dtype, **attrs)


def triton_reasons(device: torch.device, op: str | None = None, dtype=None, **attrs) -> list[str]:
    """Why Triton kernels cannot run on `device` ([] if they can); of one op if `op` is given,
    else of the vMF sampler (the op every Triton install has)."""
    return reasons(op or "vmf_sample", "triton", device, dtype, **attrs)


def availability() -> dict:
    """{op: {backend: {device: [reasons]}}} for CPU and (if present) CUDA, as show_config prints.

    An op is "available" on a device only when a kernel of that backend is registered for that
    device type: a CUDA entry is never reported for an op without a CUDA kernel.
    """
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    out: dict = {}
    for op in _TABLE:
        if op.endswith("_backward") or op.endswith("_out"):
            continue  # served together with their forward op
        out[op] = {b: {dev.type: reasons(op, b, dev) for dev in devices} for b in AUTO_ORDER}
    return out


def supported(op: str, backend: str) -> Mapping[str, tuple[torch.dtype, ...]]:
    """device type -> dtypes of `backend`'s kernel of `op` ({} when not registered)."""
    if backend in _UNAVAILABLE:
        return {}
    kern = _TABLE.get(op, {}).get(backend)
    return dict(kern.devices) if kern is not None else {}
