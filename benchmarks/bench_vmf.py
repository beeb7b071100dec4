"""Benchmarks of vMF sampling: dfzsl_fast backends against what users run today.

Groups `vmf/d{d}/k{kappa}/{preset}` (suffix `/cuda` for CUDA runs) put the providers side by side:

- native            `sample_vmf(..., backend="native")` (C++ / CUDA kernels of _C)
- torch_batched     `sample_vmf(..., backend="torch")`, the batched pure-PyTorch reference
- triton            `sample_vmf(..., backend="triton")`, only when CUDA is available
- scipy_loop        `scipy.stats.vonmises_fisher(mu_c, kappa).rvs(n)` looped over classes (CPU)
- published_pattern the DFZSL / s-vae-pytorch sampler re-implemented from its description
                    (docs/method.md, section 2.3) and called as DFZSL calls it: n calls of C rows

Presets: "200x500" (200 classes x 500 samples = 100k rows, every provider) and "1M" (1000 x 1000,
native and torch_batched only, marked `slow`: deselect with `-m "not slow"`).

Sizes. The SciPy loop costs O(d^2) per sample and takes minutes at 100k rows, so it runs on the
first SCIPY_CLASSES classes only (still 500 samples per class, so its per-call overhead is
amortised exactly as at full size) and reports its time per sample. Compare providers through
`extra_info["samples/s"]` (or `benchmarks/compare.py`), never through raw times.

Smoke mode (`--benchmark-disable`, detected through `benchmark.disabled`): every body runs once,
untimed, after its correctness check; the SciPy loop, the published pattern and the 1M preset
then run on the reduced sizes in SMOKE_SIZES, so `pytest benchmarks --benchmark-disable` fits in a
few minutes on 2 cores.

Correctness first: each provider's output is checked once before timing: the z-score of the mean
of w = mu^T x against A_d(kappa) (`dfzsl_fast.testing.mean_w_zscore`) and the unit norm. The
published pattern is recorded, not asserted, against A_d(kappa) (it is biased for 11 <= kappa <~
3000 at these d); it is asserted against the exact moments of the published sampler
(`dfzsl_fast.theory.reference_mode_w_moments`), which checks the re-implementation is faithful.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import dfzsl_fast
from dfzsl_fast import testing, theory

D = (512, 768)
KAPPA = (100, 1000)
PRESETS = {"200x500": (200, 500), "1M": (1000, 1000)}
PROVIDERS = ("native", "torch_batched", "triton", "scipy_loop", "published_pattern")
PROVIDERS_1M = ("native", "torch_batched", "triton")

# scipy_loop in timed runs: this many classes (x 500 samples each).
SCIPY_CLASSES = 40
# (classes, samples per class) under --benchmark-disable for the gated cases.
SMOKE_SIZES = {
    ("scipy_loop", "200x500"): (2, 500),
    ("published_pattern", "200x500"): (200, 20),
    ("native", "1M"): (1000, 10),
    ("torch_batched", "1M"): (1000, 10),
    ("triton", "1M"): (1000, 10),
}

# Peak host memory of one call, in multiples of the fp32 output (measured at 1M x 768 on CPU:
# torch_batched 18.7 GB peak RSS for a 3.1 GB output, its eager temporaries; native 3.6 GB).
PEAK_MEMORY_FACTOR = {
    "torch_batched": 6.5,
    "native": 1.5,
    "published_pattern": 3.0,
    "scipy_loop": 4.0,
}
Z_MAX = 5.0  # |z| bound for exact samplers (and the published pattern against its own theory)
NORM_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
CHUNK = 1 << 16  # rows per chunk when reducing big outputs


# ---------------------------------------------------------------------------------- providers
def published_pattern_rsample(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One draw per row of the DFZSL / s-vae-pytorch sampler, as described in method.md 2.3.

    Written from that description (not from the original code): float32 throughout; Wood's
    envelope with b_true blended into the Taylor value (d-1)/(4 kappa) for kappa > 10; Beta
    proposals from torch.distributions.Beta; the Davidson et al. log-form acceptance test; each
    rejection round re-draws the whole batch and writes only the still-pending entries (one
    host sync per round); tangent v ~ N(0, I_{d-1}) normalised; the Householder reflection
    e1 -> loc with 1e-5 added to the norm.

    Args:
        loc: (C, d) float32 unit mean directions.
        scale: (C, 1) float32 concentrations.

    Returns:
        (C, d) float32 samples.
    """
    C, d = loc.shape
    m = d - 1
    dev, dt = loc.device, loc.dtype
    c = torch.sqrt(4.0 * scale * scale + m * m)
    b_true = (c - 2.0 * scale) / m
    b_app = m / (4.0 * scale)
    s = (scale - 10.0).clamp(0.0, 1.0)
    b = s * b_app + (1.0 - s) * b_true
    a = (m + 2.0 * scale + c) / 4.0
    delta = 4.0 * a * b / (1.0 + b) - m * math.log(m)

    half = torch.tensor(m / 2.0, dtype=dt, device=dev)
    beta = torch.distributions.Beta(half, half)
    uniform = torch.distributions.Uniform(
        torch.tensor(0.0, dtype=dt, device=dev), torch.tensor(1.0, dtype=dt, device=dev)
    )
    w = torch.zeros_like(scale)
    pending = torch.ones_like(scale, dtype=torch.bool)
    while bool(pending.any()):
        eps = beta.sample(scale.shape)
        u = uniform.sample(scale.shape)
        den = 1.0 - (1.0 - b) * eps
        w_prop = (1.0 - (1.0 + b) * eps) / den
        t = 2.0 * a * b / den
        accept = (m * torch.log(t) - t + delta) >= torch.log(u)
        take = pending & accept
        w = torch.where(take, w_prop, w)
        pending = pending & ~accept

    v = torch.randn(C, m, dtype=dt, device=dev)
    v = v / v.norm(dim=-1, keepdim=True)
    rho = torch.sqrt(torch.clamp(1.0 - w * w, min=1e-10))
    x = torch.cat((w, rho * v), dim=-1)

    e1 = torch.zeros_like(loc)
    e1[:, 0] = 1.0
    h = e1 - loc
    h = h / (h.norm(dim=-1, keepdim=True) + 1e-5)
    return x - 2.0 * (x * h).sum(-1, keepdim=True) * h


def published_pattern_loop(mu: torch.Tensor, kappa: float, n: int):
    """DFZSL's usage: n calls, each one sample for every class; rows [class 0..C-1] x n."""
    C = mu.shape[0]
    loc = mu / mu.norm(dim=-1, keepdim=True)
    scale = torch.full((C, 1), float(kappa), dtype=mu.dtype, device=mu.device)
    x = torch.cat([published_pattern_rsample(loc, scale) for _ in range(n)], dim=0)
    labels = torch.arange(C, device=mu.device).repeat(n)
    return x, labels


def scipy_loop(mu_np: np.ndarray, kappa: float, n: int, seed: int):
    """What a SciPy user writes: one frozen vonmises_fisher per class, rvs(n) each."""
    from scipy.stats import vonmises_fisher

    rng = np.random.default_rng(seed)
    parts = [vonmises_fisher(mu_np[c], kappa).rvs(n, random_state=rng) for c in range(len(mu_np))]
    x = torch.from_numpy(np.concatenate(parts, axis=0))
    labels = torch.arange(len(mu_np)).repeat_interleave(n)
    return x, labels


def make_sampler(provider: str, mu: torch.Tensor, kappa: float, n: int, device: torch.device):
    """A zero-argument callable returning (x, labels); synchronises on CUDA."""
    seeds = itertools.count(12345)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if provider in ("native", "torch_batched", "triton"):
        backend = "torch" if provider == "torch_batched" else provider

        def run():
            out = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, seed=next(seeds), backend=backend)
            sync()
            return out

    elif provider == "scipy_loop":
        mu_np = mu.double().cpu().numpy()

        def run():
            return scipy_loop(mu_np, kappa, n, next(seeds))

    elif provider == "published_pattern":

        def run():
            torch.manual_seed(next(seeds))
            out = published_pattern_loop(mu, kappa, n)
            sync()
            return out

    else:  # pragma: no cover
        raise ValueError(provider)
    return run


# -------------------------------------------------------------------------------- correctness
@torch.no_grad()
def mean_cosine_and_norm_error(x: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor):
    """w = mu_hat[label]^T x for every row (float64, chunked) and max | |x| - 1 |."""
    mu_hat = mu.double() / mu.double().norm(dim=1, keepdim=True)
    mu_hat = mu_hat.to(x.device)
    w_parts, err = [], 0.0
    for i in range(0, x.shape[0], CHUNK):
        xc = x[i : i + CHUNK].double()
        lab = labels[i : i + CHUNK].to(x.device)
        w_parts.append((xc * mu_hat[lab]).sum(1))
        err = max(err, float((xc.norm(dim=1) - 1.0).abs().max()))
    return torch.cat(w_parts).cpu(), err


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def skip_unless_memory(provider: str, rows: int, d: int, device: torch.device) -> None:
    """Skip (not crash the run, or another process, by OOM) when host memory is short."""
    if device.type != "cpu":
        return
    need = PEAK_MEMORY_FACTOR.get(provider, 2.0) * rows * d * 4 + 512 * 2**20
    avail = _available_bytes()
    if avail is not None and need > avail:
        pytest.skip(
            f"{provider} at {rows:,} x {d} needs ~{need / 2**30:.1f} GiB of host memory, "
            f"{avail / 2**30:.1f} GiB available"
        )


def check_and_record(benchmark, provider, x, labels, mu, d, kappa):
    w, norm_err = mean_cosine_and_norm_error(x, labels, mu)
    z = testing.mean_w_zscore(w, d, kappa)
    info = benchmark.extra_info
    info["z"] = z
    info["mean_w"] = float(w.mean())
    info["expected_mean_w"] = float(theory.vmf_mean_resultant_length(d, kappa))
    info["max_norm_err"] = norm_err
    info["checked_rows"] = int(w.numel())
    tol = NORM_TOL.get(x.dtype, 1e-3)
    if provider == "published_pattern":
        # Biased by design: record the z against A_d(kappa), assert against its own theory.
        ref_mean, ref_var = theory.reference_mode_w_moments(d, kappa)
        z_own = (float(w.double().mean()) - ref_mean) / math.sqrt(ref_var / w.numel())
        info["published_theory_mean_w"] = ref_mean
        info["z_vs_published_theory"] = z_own
        assert abs(z_own) < Z_MAX, (
            f"published_pattern re-implementation does not match the published sampler's "
            f"theory: mean w {float(w.mean()):.6f} vs {ref_mean:.6f} (z = {z_own:.2f})"
        )
        assert norm_err < 1e-3, f"published_pattern: max | |x| - 1 | = {norm_err:.2e}"
        return
    assert abs(z) < Z_MAX, (
        f"{provider}: mean mu^T x = {float(w.mean()):.6f} vs A_d(kappa) = "
        f"{info['expected_mean_w']:.6f}, z = {z:.2f}"
    )
    assert norm_err < tol, f"{provider}: max | |x| - 1 | = {norm_err:.2e}"


# ------------------------------------------------------------------------------- parametrize
def _cases():
    """Group-major order: all providers of one group run back to back (same machine state)."""
    for dev in testing.DEVICES:
        for preset in PRESETS:
            for d in D:
                for kappa in KAPPA:
                    for prov in PROVIDERS if preset == "200x500" else PROVIDERS_1M:
                        if prov == "triton" and dev.type != "cuda":
                            continue  # the Triton interpreter on CPU is for tests, not timing
                        if prov == "scipy_loop" and dev.type != "cpu":
                            continue
                        marks = [pytest.mark.slow] if preset == "1M" else []
                        if dev.type == "cuda":
                            marks.append(pytest.mark.cuda)
                        yield pytest.param(
                            dev,
                            preset,
                            d,
                            kappa,
                            prov,
                            marks=marks,
                            id=f"{dev.type}-{preset}-d{d}-k{kappa}-{prov}",
                        )


@pytest.mark.parametrize("device,preset,d,kappa,provider", list(_cases()))
def test_vmf_forward(benchmark, bench, device, preset, d, kappa, provider):
    if provider in ("native", "triton"):
        testing.skip_unless_available(provider, device)
    is_smoke = bench.smoke(benchmark)

    C, n = PRESETS[preset]
    reduced = None
    if is_smoke and (provider, preset) in SMOKE_SIZES:
        C, n = SMOKE_SIZES[(provider, preset)]
        reduced = "smoke"
    elif provider == "scipy_loop" and not is_smoke:
        C = min(C, SCIPY_CLASSES)
        reduced = f"{C} of {PRESETS[preset][0]} classes (time per sample is what compares)"

    skip_unless_memory(provider, C * n, d, device)

    gen = torch.Generator().manual_seed(1000 * d + kappa)
    mu = torch.randn(C, d, generator=gen, dtype=torch.float32)
    mu = (mu / mu.norm(dim=1, keepdim=True)).to(device)

    suffix = "" if device.type == "cpu" else f"/{device.type}"
    benchmark.group = f"vmf/d{d}/k{kappa}/{preset}{suffix}"
    bench.record_environment(benchmark, device)
    info = benchmark.extra_info
    info.update(
        provider=provider,
        preset=preset,
        d=d,
        kappa=kappa,
        classes=C,
        samples_per_class=n,
        dtype=str(mu.dtype).replace("torch.", "") if provider != "scipy_loop" else "float64",
        reduced=reduced,
        smoke=is_smoke,
    )

    run = make_sampler(provider, mu, float(kappa), n, device)

    # correctness, once, before timing
    with torch.no_grad():
        x, labels = run()
    assert x.shape == (C * n, d) and labels.shape == (C * n,)
    check_and_record(benchmark, provider, x, labels, mu, d, float(kappa))
    del x, labels

    def timed():
        with torch.no_grad():
            run()  # output dropped inside the timed region, as in a loop that consumes it

    if not is_smoke:
        bench.wait_quiet(benchmark)  # opt-in (DFZSL_BENCH_QUIET_WAIT), for shared machines
    with bench.CpuMonitor(benchmark):
        benchmark.pedantic(timed, rounds=bench.rounds_for(device), warmup_rounds=1, iterations=1)
    bench.record_throughput(benchmark, C * n)
