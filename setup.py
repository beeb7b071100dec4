"""Build dfzsl_fast and its one native module, dfzsl_fast._C.

Install (torch must already be installed; it is deliberately not a build requirement):

    pip install --no-build-isolation -e .

Environment switches:
    DFZSL_NO_EXT=1     build no native extension (pure-Python install; the reference kernels serve)
    FORCE_ONLY_CPU=1   build the CPU kernels only, even where CUDA could be built
    FORCE_CUDA=1       require the CUDA kernels (error if torch has no CUDA or nvcc is missing)
    CUDA_HOME          CUDA toolkit root (default: $CUDA_PATH, /usr/local/cuda, torch's guess)
    TORCH_CUDA_ARCH_LIST   CUDA archs (default: "8.0;9.0" when no GPU is visible)
    MAX_JOBS           parallel compile jobs (default: min(cores, free GiB / 4))
    DEBUG=1            -O0 -g
    NVCC_FLAGS         extra nvcc flags

Sources are taken by convention (the same globs as CMakeLists.txt): csrc/*.cpp, csrc/cpu/*.cpp,
and csrc/cuda/*.cu when CUDA is built.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home() -> str | None:
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(key):
            return os.environ[key]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _nvidia_wheel_includes() -> list[str]:
    """Header folders of the nvidia-* pip wheels that come with a CUDA build of torch.

    A toolkit install without the library headers (cusparse.h, ...) cannot compile ATen's CUDA
    headers; the wheels ship them.
    """
    out = []
    for sp in sys.path:
        out += glob.glob(os.path.join(sp, "nvidia", "*", "include"))
    return sorted(set(p for p in out if os.path.isdir(p)))


def _max_jobs() -> None:
    if "MAX_JOBS" in os.environ:
        return
    try:
        free_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        free_gib = 8
    os.environ["MAX_JOBS"] = str(max(1, min(os.cpu_count() or 1, int(free_gib // 4))))


def _extensions():
    if _env_flag("DFZSL_NO_EXT"):
        print("dfzsl_fast: DFZSL_NO_EXT=1, building no native extension")
        return [], {}
    cuda_home = _cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(
            "dfzsl_fast: torch is required to build the native extension. Install torch first, "
            "then run `pip install --no-build-isolation -e .` (or set DFZSL_NO_EXT=1)."
        )
    _max_jobs()
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if _env_flag("FORCE_ONLY_CPU"):
        with_cuda = False
    if _env_flag("FORCE_CUDA"):
        if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
            sys.exit(
                "dfzsl_fast: FORCE_CUDA=1 but torch has no CUDA "
                f"(torch.version.cuda={torch.version.cuda}) or no toolkit was found "
                f"(CUDA_HOME={cpp_extension.CUDA_HOME})"
            )
        with_cuda = True
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        print(f"dfzsl_fast: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
    debug = _env_flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    defines = [
        ("DFZSL_WITH_CUDA", "1" if with_cuda else "0"),
        ("DFZSL_TORCH_VERSION", f'"{torch.__version__}"'),
        ("DFZSL_CUDA_VERSION", f'"{torch.version.cuda or ""}"' if with_cuda else '""'),
        ("DFZSL_CUDA_ARCHS", f'"{archs}"'),
    ]
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    extra = {
        "cxx": opt + ["-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
    }
    if with_cuda:
        include_dirs += _nvidia_wheel_includes()
        extra["nvcc"] = opt + [
            "--expt-relaxed-constexpr",
            "-lineinfo",
        ] + os.environ.get("NVCC_FLAGS", "").split()
    cls = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext = cls(
        name="dfzsl_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=defines,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    print(f"dfzsl_fast: building _C with CUDA={'yes' if with_cuda else 'no'} "
          f"from {len(sources)} sources")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["dfzsl_fast", "dfzsl_fast.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    package_data={"dfzsl_fast": ["py.typed", "*.pyi"]},
)
