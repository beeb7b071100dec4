"""Shared pieces of the pytest-benchmark suite: collection, environment recording, sizes.

Run the real benchmarks with
    pytest benchmarks/bench_vmf.py --benchmark-only --benchmark-json=out.json
and the CI smoke / correctness pass with
    pytest benchmarks --benchmark-disable
Plain `pytest` collects only tests/ (pyproject's testpaths); the hook below makes `pytest
benchmarks` collect the `bench_*.py` files here as well.

Smoke mode is detected from the fixture itself: under `--benchmark-disable` pytest-benchmark sets
`benchmark.disabled` and runs each body once, untimed. `smoke(benchmark)` is the one switch the
benchmark files use to shrink their expensive cases (the SciPy loop, the DFZSL-pattern loop, the
1M preset) so the whole suite runs in a few minutes on a 2-core CI machine. No environment
variable is involved.

Helpers reach benchmark bodies through the session fixture `bench` (conftest modules are not
importable): `bench.smoke(benchmark)`, `bench.record_environment(benchmark, device)` (device
name, CPU model, thread count, torch/scipy/numpy/triton versions, `_C` build info, load average),
`bench.record_throughput(benchmark, samples)` (samples, samples/s from the median),
`bench.rounds_for(device)` (3 on CPU, 10 on CUDA, or DFZSL_BENCH_ROUNDS) and
`bench.CpuMonitor(benchmark)` (how much CPU other processes took during the timed rounds) and
`bench.wait_quiet(benchmark)` (on shared machines, DFZSL_BENCH_QUIET_WAIT=<seconds> makes each
case wait, up to that long, for < DFZSL_BENCH_QUIET_PCT (15) percent busy CPU before timing).
"""

from __future__ import annotations

import functools
import os
import platform

import pytest
import torch


# ------------------------------------------------------------------------------------ collection
def pytest_collect_file(file_path, parent):
    """Collect benchmarks/bench_*.py when the directory (not the file) is named on the command line.

    A file named explicitly is collected by pytest itself; returning a second Module for it
    would run it twice.
    """
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# ------------------------------------------------------------------------------------ smoke mode
def smoke(benchmark) -> bool:
    """True when timing is disabled (`--benchmark-disable`): run reduced sizes, once."""
    return bool(getattr(benchmark, "disabled", False))


# ------------------------------------------------------------------------------ the environment
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Versions, build facts and hardware, computed once per session."""
    import numpy
    import scipy

    import dfzsl_fast
    from dfzsl_fast import _extension
    from dfzsl_fast import triton as dtriton

    info = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "triton": dtriton.TRITON_VERSION,
        "dfzsl_fast_native_loaded": _extension.native_available(),
        "dfzsl_fast_native_load_error": _extension.load_error,
        "dfzsl_fast_build": {str(k): str(v) for k, v in _extension.build_info().items()},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    del dfzsl_fast
    return info


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    env = environment()
    return f"{env['cpu_model']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads)"


def record_environment(benchmark, device: torch.device) -> None:
    """Put device, versions, build info, thread count and the load average into extra_info."""
    env = environment()
    benchmark.extra_info.update(
        {
            "device": device_name(device),
            "device_type": device.type,
            "threads": env["torch_threads"],
            "torch": env["torch"],
            "torch_cuda": env["torch_cuda"],
            "scipy": env["scipy"],
            "numpy": env["numpy"],
            "triton": env["triton"],
            "python": env["python"],
            "build_info": env["dfzsl_fast_build"],
            "native_loaded": env["dfzsl_fast_native_loaded"],
            "loadavg_at_start": loadavg(),
        }
    )


def record_throughput(benchmark, samples: int) -> None:
    """samples and samples/s (from the median) into extra_info; None under --benchmark-disable."""
    benchmark.extra_info["samples"] = int(samples)
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    if median:
        benchmark.extra_info["median_s"] = median
        benchmark.extra_info["samples/s"] = samples / median
        benchmark.extra_info["us_per_sample"] = 1e6 * median / samples
    else:
        benchmark.extra_info["samples/s"] = None
    benchmark.extra_info["loadavg_at_end"] = loadavg()


class CpuMonitor:
    """Contention check around a timed region, from /proc (Linux; silent elsewhere).

    Records in `benchmark.extra_info`: `cpu_self` (CPU seconds of this process per wall second,
    about the thread count when it runs unhindered) and `cpu_others_pct` (percent of the
    machine's total CPU capacity used by everything else meanwhile). On a shared machine a
    large `cpu_others_pct` means the timing is inflated by contention.
    """

    def __init__(self, benchmark):
        self.benchmark = benchmark

    @staticmethod
    def _machine():
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return sum(vals[:8]), idle

    @staticmethod
    def _self():
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads

    def __enter__(self):
        import time

        try:
            self.t0, self.m0, self.s0 = time.perf_counter(), self._machine(), self._self()
        except (OSError, ValueError, IndexError):
            self.t0 = None
        return self

    def __exit__(self, *exc):
        import time

        if self.t0 is None or exc[0] is not None:
            return False
        try:
            wall = time.perf_counter() - self.t0
            (tot1, idle1), self1 = self._machine(), self._self()
        except (OSError, ValueError, IndexError):
            return False
        tck = os.sysconf("SC_CLK_TCK")
        total = tot1 - self.m0[0]
        busy = total - (idle1 - self.m0[1])
        mine = self1 - self.s0
        info = self.benchmark.extra_info
        info["cpu_self"] = round(mine / tck / wall, 2) if wall > 0 else None
        others = 100.0 * max(busy - mine, 0) / total if total > 0 else None
        info["cpu_others_pct"] = None if others is None else round(others, 1)
        return False


def _busy_pct(window_s: float) -> float | None:
    """Percent of total CPU capacity busy (everything, this process included) over a window."""
    import time

    try:
        t0, i0 = CpuMonitor._machine()
        time.sleep(window_s)
        t1, i1 = CpuMonitor._machine()
    except (OSError, ValueError, IndexError):
        return None
    total = t1 - t0
    return 100.0 * (total - (i1 - i0)) / total if total > 0 else None


def wait_quiet(benchmark) -> None:
    """Before timing, wait up to DFZSL_BENCH_QUIET_WAIT seconds (default 0: don't) for the
    machine to be quiet (< DFZSL_BENCH_QUIET_PCT, default 15, percent busy over 2 s).

    For shared machines: other jobs inflate CPU timings by 2-3x or more. Records the wait and
    the last busy percentage in extra_info; never fails, it only delays.
    """
    import time

    limit = float(os.environ.get("DFZSL_BENCH_QUIET_WAIT", "0") or 0)
    if limit <= 0:
        return
    threshold = float(os.environ.get("DFZSL_BENCH_QUIET_PCT", "15") or 15)
    t0 = time.perf_counter()
    busy = _busy_pct(2.0)
    while busy is not None and busy >= threshold and time.perf_counter() - t0 < limit:
        busy = _busy_pct(2.0)
    benchmark.extra_info["quiet_wait_s"] = round(time.perf_counter() - t0, 1)
    benchmark.extra_info["busy_pct_before"] = None if busy is None else round(busy, 1)


def rounds_for(device: torch.device) -> int:
    """Timed rounds: 3 on CPU (seconds per call), 10 on CUDA. DFZSL_BENCH_ROUNDS overrides."""
    env = os.environ.get("DFZSL_BENCH_ROUNDS", "").strip()
    if env:
        return max(1, int(env))
    return 10 if device.type == "cuda" else 3


class _Helpers:
    """What bench files get from the `bench` fixture (conftest modules are not importable)."""

    smoke = staticmethod(smoke)
    environment = staticmethod(environment)
    device_name = staticmethod(device_name)
    record_environment = staticmethod(record_environment)
    record_throughput = staticmethod(record_throughput)
    rounds_for = staticmethod(rounds_for)
    CpuMonitor = CpuMonitor
    wait_quiet = staticmethod(wait_quiet)
    loadavg = staticmethod(loadavg)


@pytest.fixture(scope="session")
def bench() -> _Helpers:
    """Helpers for benchmark bodies: `bench.smoke(benchmark)`, `bench.record_environment(...)`."""
    return _Helpers()


def pytest_report_header(config):
    env = environment()
    return [
        f"dfzsl_fast bench: {env['cpu_model']}, {env['cpu_count']} CPUs, "
        f"{env['torch_threads']} torch threads, GPU: {env['gpu'] or 'none'}",
        f"torch {env['torch']}, scipy {env['scipy']}, numpy {env['numpy']}, "
        f"triton {env['triton'] or 'not installed'}, native _C loaded: "
        f"{env['dfzsl_fast_native_loaded']} {env['dfzsl_fast_build']}",
        f"load average at start: {loadavg()}",
    ]
