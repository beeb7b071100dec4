"""TF-VAEGAN training iterations (stage 3, issue 13): `train_generator(impl="fast")` against the
loop as it was (`impl="reference"`), side by side in one run.

Groups `tfvaegan-train/{preset}/H{H}/ci{ci}` at D = A = Z = 512 (CLIP width), batch 64, on
random unit features of 40 classes (AWA2's seen classes):

- `demo`: the demo's short schedule (`demo.demo_config`: hidden 256, critic_iters 2, lr 1e-3);
- `published`: the AWA2 launch script (method.md 2.5: hidden 1024, critic_iters 5, lr 3e-5).

Providers (one call = `train_generator(..., epochs=1)` on N = 64 * K rows, i.e. 2K iterations,
both feedback loops; model construction and input checks included, < 2% of a call):

- `reference`: `impl="reference"` with torch's thread setting untouched: what ran before
  issue 13 (2 intra-op threads on the 2-core build machines), the baseline of the ratios;
- `reference_1thread`: `impl="reference", num_threads=1`: how much of the gain is the thread
  count alone;
- `fast`: `impl="fast"` (the default: torch's thread setting, the encoder forward of the last
  critic step reused by the generator step);
- `fast_1thread`: `impl="fast", num_threads=1` (what to pass on a machine other jobs share).
  Before 2026-12-05 20:00 UTC `fast` ran 1 thread by default and this provider was
  `fast_2threads`; the JSON files of that time name them so.

Correctness first: in the `fast` case, 1 epoch of 1 iteration per loop of both impls at the
preset's widths is checked equal (losses and every parameter, to float32 rounding, as in
tests/pipeline/test_generator.py) before timing.

Timing: as bench_pipeline.py, adaptive rounds (about TARGET_S seconds, at least
`bench.rounds_for(device)`), one warm-up, `bench.CpuMonitor` records the other jobs' CPU share
(`cpu_others_pct`); extra_info has `iterations`, `ms/iteration` and `iterations/s` (median).
Ratios: `python benchmarks/bench_generator_train.py JSON` prints reference / provider per
group.

Smoke mode (`--benchmark-disable` or DFZSL_BENCH_SMOKE=1): hidden 32, 2 iterations, one call.
"""

from __future__ import annotations

import math
import os
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.config import GeneratorConfig
from dfzsl_fast.pipeline.generator import train_generator

ENV_SMOKE = os.environ.get("DFZSL_BENCH_SMOKE", "").strip() not in ("", "0")
PROVIDERS = ("reference", "reference_1thread", "fast", "fast_1thread")
W = 512  # D = A = Z
CLASSES = 40
BATCH = 64
# preset: (hidden, critic_iters, lr, iterations per loop K)
PRESETS = {  # K: each call is long enough (about 2 s) that one round's noise stays small
    "demo": (256, 2, 1e-3, 40),
    "published": (1024, 5, 3e-5, 4),
}
SMOKE_PRESET = (32, 2, 1e-3, 1)
TARGET_S = 10.0
MAX_ROUNDS = 20
_EPS32 = torch.finfo(torch.float32).eps


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(CLASSES, W, generator=g), dim=1)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = F.normalize(emb[y] + 0.5 * torch.randn(n, W, generator=g) / math.sqrt(W), dim=1)
    return x, y, emb


def _config(hidden: int, critic_iters: int, lr: float) -> GeneratorConfig:
    return GeneratorConfig(
        epochs=1, hidden=hidden, critic_iters=critic_iters, lr=lr, batch_size=BATCH, seed=806
    )


def _kwargs(provider: str) -> dict:
    return {
        "reference": {"impl": "reference"},
        "reference_1thread": {"impl": "reference", "num_threads": 1},
        "fast": {"impl": "fast"},
        "fast_1thread": {"impl": "fast", "num_threads": 1},
    }[provider]


def _check_equal(cfg: GeneratorConfig) -> None:
    """fast == reference for one iteration per loop (bound as in tests/pipeline)."""
    x, y, emb = _data(BATCH, seed=1)
    kw = dict(progress=False, return_info=True, num_threads=1)
    fast, info_f = train_generator(x, y, emb, cfg, impl="fast", **kw)
    ref, info_r = train_generator(x, y, emb, cfg, impl="reference", **kw)
    for k, v in info_r.history.items():
        if k != "seconds":
            a, b = info_f.history[k][0], v[0]
            assert abs(a - b) <= 8 * _EPS32 * max(abs(a), abs(b), 1e-30), (k, a, b)
    lr = max(cfg.lr, cfg.feedback_lr, cfg.decoder_lr)
    sr = ref.state_dict()
    for k, p in fast.state_dict().items():
        atol = 4 * _EPS32 * (float(sr[k].abs().max()) + 2 * cfg.critic_iters * lr)
        torch.testing.assert_close(p, sr[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_tfvaegan_train_full(benchmark, bench, preset, provider):
    is_smoke = bench.smoke(benchmark) or ENV_SMOKE
    hidden, critic_iters, lr, k = SMOKE_PRESET if is_smoke else PRESETS[preset]
    cfg = _config(hidden, critic_iters, lr)
    device = torch.device("cpu")
    benchmark.group = f"tfvaegan-train/{preset}/H{hidden}/ci{critic_iters}"
    bench.record_environment(benchmark, device)
    kw = _kwargs(provider)
    benchmark.extra_info.update(
        provider=provider,
        impl=kw["impl"],
        num_threads=kw.get("num_threads", torch.get_num_threads()),
        hidden=hidden,
        critic_iters=critic_iters,
        lr=lr,
        batch=BATCH,
        width=W,
    )
    if provider == "fast":
        _check_equal(cfg)
    x, y, emb = _data(BATCH * k)
    iters = 2 * k  # both feedback loops

    def run():
        train_generator(x, y, emb, cfg, progress=False, **kw)

    if is_smoke:
        benchmark.pedantic(run, rounds=1, iterations=1)
        return
    t0 = time.perf_counter()
    run()  # probe (also a warm-up)
    probe = time.perf_counter() - t0
    env_rounds = os.environ.get("DFZSL_BENCH_ROUNDS", "").strip()
    if env_rounds:
        rounds = max(1, int(env_rounds))
    else:
        rounds = int(min(MAX_ROUNDS, max(bench.rounds_for(device), math.ceil(TARGET_S / probe))))
    benchmark.extra_info.update(probe_s=probe, rounds=rounds, iterations=iters)
    bench.wait_quiet(benchmark)
    with bench.CpuMonitor(benchmark):
        benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["ms/iteration"] = 1e3 * median / iters
    benchmark.extra_info["iterations/s"] = iters / median
    benchmark.extra_info["loadavg_at_end"] = bench.loadavg()


# ================================================================ report
def report(path: str) -> str:
    """Markdown table: ms per iteration (median, min) and reference / provider, per group."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_pipeline import load_cell, load_groups  # the reports' one reader and cell

    groups = load_groups(path)
    out = [
        "| group | provider | threads | ms / iteration, median (min) | iterations/s | rounds "
        "| other CPU load | **reference / provider (median)** | (min) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in groups.items():
        ref = g.get("reference")
        for prov in PROVIDERS:
            if prov not in g:
                continue
            b = g[prov]
            st, info = b["stats"], b["extra_info"]
            n = info.get("iterations", 1)
            ratio = ratio_min = ""
            if ref is not None:
                ratio = f"**{ref['stats']['median'] / st['median']:.2f}×**"
                ratio_min = f"{ref['stats']['min'] / st['min']:.2f}×"
            out.append(
                f"| {name} | {prov} | {info.get('num_threads')} "
                f"| {1e3 * st['median'] / n:.1f} ({1e3 * st['min'] / n:.1f}) "
                f"| {n / st['median']:.2f} | {st['rounds']} "
                f"| {load_cell(b)} | {ratio} | {ratio_min} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/bench_generator_train.py RESULTS.json")
    print(report(sys.argv[1]))
