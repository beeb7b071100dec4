"""Benchmarks of the fused cosine cross-entropy against what users run today.

Groups `cosine_ce/N{N}/d{d}/C{C}/{mode}` (suffix `/cuda` on CUDA), mode "forward" (no_grad loss)
or "full" (forward + backward in x and w), put these providers side by side:

- eager                 s * F.normalize(x) @ F.normalize(w).T, then F.cross_entropy
- linear_cross_entropy  F.normalize both, then torch.nn.functional.linear_cross_entropy with the
                        chunked `torch.nn.LinearCrossEntropyOptions()` (skipped when this torch
                        lacks it)
- torch_compile         torch.compile of eager (skipped with a reason when compiling takes more
                        than COMPILE_LIMIT_S seconds, or fails)
- dfzsl                 dfzsl_fast.cosine_cross_entropy (never holds the (N, C) logits)
- dfzsl_unchecked       the same with check_inputs=False: the cost of the default input checks

Sizes: N = 65536, d = 512, C in {200, 1000, 10000}, float32. Smoke mode (`--benchmark-disable`,
or DFZSL_BENCH_SMOKE=1) runs N = 2048 and C = 200 only, once, untimed, after the correctness check.

Peak memory: `extra_info["peak_mem_mb"]`, on CUDA torch.cuda.max_memory_allocated above the
inputs; on the CPU the peak resident set size above the start of the call, sampled every
millisecond from /proc/self/statm by a thread (approximate; allocator caching can hide reuse).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import dfzsl_fast
from dfzsl_fast import testing

N_FULL, D = 65536, 512
C_LIST = (200, 1000, 10000)
N_SMOKE, C_SMOKE = 2048, 200
SCALE = 16.0
COMPILE_LIMIT_S = 120.0
PROVIDERS = ("eager", "linear_cross_entropy", "torch_compile", "dfzsl", "dfzsl_unchecked")
MODES = ("forward", "full")

ENV_SMOKE = os.environ.get("DFZSL_BENCH_SMOKE", "").strip() not in ("", "0")
HAS_LCE = hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")


# ---------------------------------------------------------------------------------- providers
def eager_loss(x, w, t):
    return F.cross_entropy(SCALE * (F.normalize(x, dim=1) @ F.normalize(w, dim=1).T), t)


def lce_loss(x, w, t):
    return F.linear_cross_entropy(
        F.normalize(x, dim=1),
        SCALE * F.normalize(w, dim=1),
        t,
        options=torch.nn.LinearCrossEntropyOptions(),
    )


def dfzsl_loss(x, w, t):
    return dfzsl_fast.cosine_cross_entropy(x, w, t, SCALE)


def dfzsl_unchecked_loss(x, w, t):
    # the cost of the default input checks (NaN/Inf scan, overflow-safe rows): compare with dfzsl
    return dfzsl_fast.cosine_cross_entropy(x, w, t, SCALE, check_inputs=False)


_COMPILED: dict = {}


def compiled_loss():
    """torch.compile(eager_loss), compiled once per process; (fn, None) or (None, reason)."""
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(eager_loss)
        _COMPILED["reason"] = None
    return _COMPILED["fn"], _COMPILED["reason"]


def provider_fn(provider):
    if provider == "eager":
        return eager_loss
    if provider == "linear_cross_entropy":
        if not HAS_LCE:
            pytest.skip("torch.nn.functional.linear_cross_entropy is not in this torch")
        return lce_loss
    if provider == "torch_compile":
        fn, reason = compiled_loss()
        if reason:
            pytest.skip(reason)
        return fn
    if provider == "dfzsl_unchecked":
        return dfzsl_unchecked_loss
    return dfzsl_loss


# ----------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(fn, device) -> float | None:
    """Peak memory of one call above its start, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        base = _rss_bytes()
    except OSError:
        return None
    peak = [base]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], _rss_bytes())
    return (peak[0] - base) / 2**20


# ------------------------------------------------------------------------------- parametrize
def _cases():
    c_list = (C_SMOKE,) if ENV_SMOKE else C_LIST
    for dev in testing.DEVICES:
        for C in c_list:
            for prov in PROVIDERS:
                marks = [pytest.mark.cuda] if dev.type == "cuda" else []
                yield pytest.param(dev, C, prov, marks=marks, id=f"{dev.type}-C{C}-{prov}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,C,provider", list(_cases()))
def test_cosine_ce(benchmark, bench, device, C, provider, mode):
    is_smoke = bench.smoke(benchmark) or ENV_SMOKE
    if is_smoke and C != C_SMOKE:
        pytest.skip(f"smoke mode runs C = {C_SMOKE} only")
    N = N_SMOKE if is_smoke else N_FULL
    gen = torch.Generator().manual_seed(C)
    x0 = torch.randn(N, D, generator=gen).to(device)
    w0 = torch.randn(C, D, generator=gen).to(device)
    t = torch.randint(0, C, (N,), generator=gen).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn = provider_fn(provider)

    benchmark.group = f"cosine_ce/N{N}/d{D}/C{C}/{mode}" + (
        "" if device.type == "cpu" else f"/{device.type}"
    )
    bench.record_environment(benchmark, device)
    info = benchmark.extra_info
    info.update(provider=provider, N=N, d=D, C=C, mode=mode, dtype="float32", smoke=is_smoke)

    x = x0.clone().requires_grad_(mode == "full")
    w = w0.clone().requires_grad_(mode == "full")

    def run():
        if mode == "forward":
            with torch.no_grad():
                out = fn(x, w, t)
        else:
            x.grad = w.grad = None
            out = fn(x, w, t)
            out.backward()
        sync()
        return out

    # correctness once (also the warm-up / compilation)
    start = time.perf_counter()
    try:
        loss = run()
    except Exception as exc:  # pragma: no cover - depends on the compiler toolchain
        if provider == "torch_compile":
            _COMPILED["reason"] = f"torch.compile failed: {type(exc).__name__}: {exc}"[:300]
            pytest.skip(_COMPILED["reason"])
        raise
    first_s = time.perf_counter() - start
    info["first_call_s"] = first_s
    if provider == "torch_compile" and device.type == "cpu" and first_s > COMPILE_LIMIT_S:
        _COMPILED["reason"] = f"torch.compile on CPU took {first_s:.0f} s > {COMPILE_LIMIT_S:.0f} s"
        pytest.skip(_COMPILED["reason"])
    with torch.no_grad():
        expected = eager_loss(x0.double(), w0.double(), t)
    tol = 1e-4 * max(1.0, abs(float(expected)))
    loss = float(loss.detach())
    assert abs(loss - float(expected)) < tol, (provider, loss, float(expected))
    if mode == "full" and provider != "eager":
        gx, gw = x.grad.clone(), w.grad.clone()
        xr, wr = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        eager_loss(xr, wr, t).backward()
        torch.testing.assert_close(gx, xr.grad, rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(gw, wr.grad, rtol=1e-3, atol=1e-6)
        del xr, wr, gx, gw

    info["peak_mem_mb"] = peak_memory_mb(run, device)
    if is_smoke:
        benchmark.pedantic(run, rounds=1, iterations=1)
    else:
        benchmark.pedantic(run, rounds=bench.rounds_for(device), warmup_rounds=1, iterations=1)
    bench.record_throughput(benchmark, N)
