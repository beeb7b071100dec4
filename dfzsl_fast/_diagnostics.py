"""What this install can use: versions, build facts of `_C`, and per-op backend availability.

`show_config()` (also `python -m dfzsl_fast` / `python -m dfzsl_fast info`) prints it; `config()`
returns it as a dict. An op is reported available on a device only when a kernel of that
backend is registered for that device type (never "CUDA available" for an op without a CUDA
kernel).
"""

from __future__ import annotations

import platform
import sys

import torch

from . import _backend, _extension, _load  # noqa: F401  (_load fills the table)
from . import triton as _triton

__all__ = ["config", "show_config"]


def config() -> dict:
    """Versions, build facts and backend availability per op and device, as a dict."""
    try:
        import numpy
        import scipy

        np_v, sp_v = numpy.__version__, scipy.__version__
    except ImportError:  # pragma: no cover
        np_v = sp_v = None
    return {
        "dfzsl_fast": _extension._version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "numpy": np_v,
        "scipy": sp_v,
        "triton": _triton.TRITON_VERSION,
        "triton_interpret": _triton.INTERPRET,
        "torch_threads": torch.get_num_threads(),
        "native_loaded": _extension.native_available(),
        "native_load_error": _extension.load_error,
        "build_info": _extension.build_info(),
        "backends": _backend.availability(),
        "dtypes": {
            op: {b: _backend.supported(op, b) for b in _backend.AUTO_ORDER}
            for op in _backend.availability()
        },
    }


def _dtypes(dts) -> str:
    return "/".join(str(d).replace("torch.", "").replace("float", "f").replace("bf16", "bf16")
                    for d in dts)


def show_config(file=None) -> None:
    """Print versions, what `_C` was compiled with, and which backend serves which op where."""
    out = file or sys.stdout
    cfg = config()
    w = out.write
    w(f"dfzsl_fast {cfg['dfzsl_fast']}  (python {cfg['python']})\n")
    w(
        f"torch {cfg['torch']} (CUDA build: {cfg['torch_cuda'] or 'no'}), "
        f"{cfg['torch_threads']} CPU threads\n"
    )
    w(f"GPU: {cfg['gpu'] or 'none visible'}\n")
    interp = " (TRITON_INTERPRET=1: kernels run on the CPU interpreter)"
    w(
        f"numpy {cfg['numpy']}, scipy {cfg['scipy']}, triton {cfg['triton'] or 'not installed'}"
        f"{interp if cfg['triton_interpret'] else ''}\n"
    )
    if cfg["native_loaded"]:
        bi = cfg["build_info"]
        cuda = (
            f"yes (CUDA {bi.get('cuda_version', '')}, archs {bi.get('cuda_archs', '')})"
            if bi.get("with_cuda")
            else "no"
        )
        w("native extension dfzsl_fast._C: loaded\n")
        w(
            f"  built for torch {bi.get('torch_version')}, CUDA kernels: {cuda}, "
            f"OpenMP: {'yes' if bi.get('openmp') else 'no'}\n"
        )
        w(f"  compiler: {bi.get('compiler')}\n")
    else:
        w(f"native extension dfzsl_fast._C: NOT loaded ({cfg['native_load_error']})\n")
    w("backends per op (device: status):\n")
    for op, per_backend in cfg["backends"].items():
        w(f"  {op}\n")
        for name, per_dev in per_backend.items():
            for dev, why in per_dev.items():
                if why:
                    status = "unavailable: " + "; ".join(why)
                else:
                    status = f"available ({_dtypes(cfg['dtypes'][op][name].get(dev, ()))})"
                w(f"    {name:7s} {dev:4s}: {status}\n")
