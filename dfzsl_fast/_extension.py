"""Loading of the native module `dfzsl_fast._C`, and the report of what this install can use.

Importing dfzsl_fast never fails because `_C` is missing, stale or broken: the failure is kept
here, the pure-PyTorch reference kernels serve every op, and `show_config()` (also
`python -m dfzsl_fast`) says why.
"""

from __future__ import annotations

import importlib
import os
import platform
import traceback
from typing import Any

__all__ = ["C", "load_error", "native_available", "build_info", "show_config", "config"]

C: Any = None
load_error: str | None = None


def _load() -> None:
    global C, load_error
    if os.environ.get("DFZSL_DISABLE_EXT", "").strip() not in ("", "0"):
        load_error = "disabled by DFZSL_DISABLE_EXT"
        return
    try:
        import torch

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


_load()


def native_available() -> bool:
    """True when `dfzsl_fast._C` is loaded (its CPU kernels are then registered)."""
    return C is not None


def build_info() -> dict:
    """Build facts compiled into `_C` (empty dict when it is not loaded)."""
    return dict(C.build_info()) if C is not None else {}


def config() -> dict:
    """Versions, build facts and backend availability, as a dict (see `show_config`)."""
    import torch

    from . import _backend, triton as dtriton

    try:
        import numpy
        import scipy

        np_v, sp_v = numpy.__version__, scipy.__version__
    except ImportError:  # pragma: no cover
        np_v = sp_v = None
    cfg = {
        "dfzsl_fast": _version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "numpy": np_v,
        "scipy": sp_v,
        "triton": dtriton.TRITON_VERSION,
        "triton_interpret": dtriton.INTERPRET,
        "torch_threads": torch.get_num_threads(),
        "native_loaded": C is not None,
        "native_load_error": load_error,
        "build_info": build_info(),
        "backends": _backend.availability(),
    }
    return cfg


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dfzsl_fast")
    except Exception:
        return "unknown (not installed)"


def show_config(file=None) -> None:
    """Print versions, what `_C` was compiled with, and which backends work here and why not."""
    import sys

    out = file or sys.stdout
    cfg = config()
    w = out.write
    w(f"dfzsl_fast {cfg['dfzsl_fast']}  (python {cfg['python']})\n")
    w(f"torch {cfg['torch']} (CUDA build: {cfg['torch_cuda'] or 'no'}), "
      f"{cfg['torch_threads']} CPU threads\n")
    w(f"GPU: {cfg['gpu'] or 'none visible'}\n")
    w(f"numpy {cfg['numpy']}, scipy {cfg['scipy']}, triton {cfg['triton'] or 'not installed'}"
      f"{' (TRITON_INTERPRET=1: kernels run on the CPU interpreter)' if cfg['triton_interpret'] else ''}\n")
    if cfg["native_loaded"]:
        bi = cfg["build_info"]
        w("native extension dfzsl_fast._C: loaded\n")
        w(f"  built for torch {bi.get('torch_version')}, CUDA kernels: "
          f"{'yes (CUDA ' + bi.get('cuda_version', '') + ', archs ' + bi.get('cuda_archs', '') + ')' if bi.get('with_cuda') else 'no'}, "
          f"OpenMP: {'yes' if bi.get('openmp') else 'no'}\n")
        w(f"  compiler: {bi.get('compiler')}\n")
    else:
        w(f"native extension dfzsl_fast._C: NOT loaded ({cfg['native_load_error']})\n")
    w("backends (device: status):\n")
    for name, per_dev in cfg["backends"].items():
        for dev, reasons in per_dev.items():
            status = "available" if not reasons else "unavailable: " + "; ".join(reasons)
            w(f"  {name:7s} {dev:4s}: {status}\n")
