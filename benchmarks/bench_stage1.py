"""Benchmark of the fused stage-1 step (`dfzsl_fast.vmf_logit_mse`, issue 13 item 1).

One optimiser step of DFZSL's vMF-mean fit (method.md 2.3; `pipeline.fit_vmf_means`): draw
nsample = 50 vMF samples per class, the cosine-logit MSE against the teacher, the gradient in the
mean directions, Adam (weight decay 5e-4) and the inverse-decay schedule. d = 512, one shared
kappa = 228.72 (AWA2's). Two sizes: C = 500 (the issue's 25,000 x 512 x 500 shape) and SUN's
C = 645. Every group puts the providers side by side in the same run:

- `fused`: the loop body of `fit_vmf_means(fused=True)`: one `vmf_logit_mse` call (samples,
  loss and gradient, nothing of size N x d or N x C kept), `mu.grad = grad`, Adam, schedule.
- `composed`: the loop body of `fit_vmf_means(fused=False)`: `sample_vmf` (differentiable) +
  `cosine_logit_mse` + backward + Adam (bench_pipeline.py's `ours`).
- `gemm_floor`: the four float32 `torch.mm` calls of N x d x C (N = 50 C) the eager loss and
  backward need (student and teacher logits, the gradients in x and in the weights); the
  issue's yardstick for the step.
- `published` (SUN only): the DFZSL pattern, 50 Python-loop calls of the s-vae sampler per step
  (bench_pipeline.py's `published`).

Correctness first: the fused op's loss and gradient equal the composed ops' (same mu, same draws)
to relative 1e-5 (float32 through d = 512 reductions); 3 steps of `fused` and `composed` give the
same losses; `fit_vmf_means` (fused by default) reproduces the replicated `fused` step.

Ratios: `python benchmarks/bench_stage1.py JSON` prints, per group, each provider's median time
and its ratio to `gemm_floor` and to `published`.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

import dfzsl_fast
from dfzsl_fast import testing
from dfzsl_fast.ops.vmf_fit import composed_vmf_logit_mse
from dfzsl_fast.pipeline import fit_vmf_means

sys.path.insert(0, os.path.dirname(__file__))
import bench_pipeline as bp  # noqa: E402  (the published and composed steps live there)

D = 512
NSAMPLE = 50
SIZES = {"C500": 500, "SUN-C645": 645}
SMOKE_C = {"C500": 12, "SUN-C645": 16}
SMOKE_NSAMPLE = 5
PROVIDERS = ("fused", "composed", "gemm_floor", "published")


def make_fused_step(text, w_teacher, kappa, nsample, seed):
    """One iteration of fit_vmf_means(fused=True)'s loop; returns (step_fn, state)."""
    C = text.shape[0]
    mu = torch.nn.Parameter(F.normalize(text, dim=1).clone())
    k = torch.full((C,), float(kappa), dtype=torch.float64, device=text.device)
    opt, sched = bp._adam(mu)
    state = {"step": 0, "mu": mu}

    def step():
        loss, grad = dfzsl_fast.vmf_logit_mse(
            mu.detach(), k, w_teacher, nsample, seed=seed,
            offset=state["step"] * C * nsample, check_inputs=False,
        )
        opt.zero_grad(set_to_none=True)
        mu.grad = grad
        opt.step()
        sched.step()
        state["step"] += 1
        return loss

    return step, state


def make_gemm_floor(C, nsample, device):
    N = C * nsample
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=gen).to(device)
    w = torch.randn(C, D, generator=gen).to(device)
    e = torch.randn(N, C, generator=gen).to(device)

    def run():
        torch.mm(x, w.T)  # student logits
        torch.mm(x, w.T)  # teacher logits
        torch.mm(e, w)  # gradient in x
        return torch.mm(e.T, x)  # gradient in the weights

    return run


def _cases():
    for dev in testing.DEVICES:
        for size in SIZES:
            for prov in PROVIDERS:
                # the published loop only at SUN size, and not on a GPU (the lent GPU's time
                # goes to our paths; its CPU numbers are here)
                if prov == "published" and (size != "SUN-C645" or dev.type != "cpu"):
                    continue
                marks = [pytest.mark.cuda] if dev.type == "cuda" else []
                suffix = "" if dev.type == "cpu" else f"-{dev.type}"
                yield pytest.param(dev, size, prov, marks=marks, id=f"{size}-{prov}{suffix}")


@pytest.mark.parametrize("device,size,provider", list(_cases()))
def test_stage1_step(benchmark, bench, device, size, provider):
    is_smoke = bench.smoke(benchmark) or bp.ENV_SMOKE
    C = SMOKE_C[size] if is_smoke else SIZES[size]
    nsample = SMOKE_NSAMPLE if is_smoke else NSAMPLE
    gen = torch.Generator().manual_seed(C)
    text = torch.randn(C, D, generator=gen)
    w_teacher = F.normalize(text, dim=1) + 0.05 * torch.randn(C, D, generator=gen)
    text, w_teacher = text.to(device), w_teacher.to(device)
    benchmark.group = f"stage1-step/{size}/d{D}/n{NSAMPLE}" + bp._suffix(device)
    bench.record_environment(benchmark, device)
    info = benchmark.extra_info
    info.update(provider=provider, C=C, d=D, nsample=nsample, kappa=bp.KAPPA, dtype="float32",
                smoke=is_smoke, native=testing.backend_reasons("native", device,
                                                               "vmf_logit_mse") == [])
    N = C * nsample

    # ---- correctness, once, before timing
    if provider in ("fused", "composed"):
        # the step's loss and gradient: the fused op against the composed ops, same mu and draws
        mu0 = F.normalize(text, dim=1)
        k = torch.full((C,), bp.KAPPA, dtype=torch.float64, device=device)
        args = (k, w_teacher, nsample)
        lf, gf = dfzsl_fast.vmf_logit_mse(mu0, *args, seed=7, offset=0)
        lc, gc = composed_vmf_logit_mse(mu0, *args, 7, 0, 0, 1.0, 1.0, 1e-12)
        torch.testing.assert_close(lf, lc, rtol=1e-5, atol=0.0)
        assert float((gf - gc).abs().max()) <= 1e-5 * float(gc.abs().max())
        # 3 optimiser steps: the same losses (not compared: mu itself, since Adam divides by
        # sqrt(v), so entries whose gradient is near 0 turn rounding differences into visible
        # steps)
        steps = 3
        fused, fstate = make_fused_step(text, w_teacher, bp.KAPPA, nsample, seed=7)
        comp, _ = bp.make_ours_step(text, w_teacher, bp.KAPPA, nsample, seed=7)
        lf = torch.stack([fused() for _ in range(steps)]).double()
        lc = torch.stack([comp() for _ in range(steps)]).double()
        torch.testing.assert_close(lf, lc, rtol=1e-5, atol=0.0)
        # the replicated step is fit_vmf_means' (fused by default): the same computation
        mu_fit = fit_vmf_means(w_teacher, text, bp.KAPPA, steps=steps, lr=bp.SIM_LR,
                               nsample=nsample, weight_decay=bp.SIM_WD, seed=7, progress=False)
        torch.testing.assert_close(F.normalize(fstate["mu"].detach(), dim=1), mu_fit, rtol=0.0,
                                   atol=1e-7)
        step = fused if provider == "fused" else comp
    elif provider == "gemm_floor":
        step = make_gemm_floor(C, nsample, device)
    else:
        step, pstate = bp.make_published_step(text, w_teacher, bp.KAPPA, nsample)
        mu0 = pstate["mu"].detach().clone()
        loss = step()
        assert torch.isfinite(loss) and pstate["x"].shape == (N, D)
        assert not torch.equal(pstate["mu"].detach(), mu0), "Adam step did not move mu"

    sync = bp._sync(device)

    def timed():
        out = step()
        sync()
        return out

    bp._time_rounds(benchmark, bench, device, timed, is_smoke)
    bench.record_throughput(benchmark, N)


# ================================================================ report
def report(path: str) -> str:
    """Markdown table: median (min) per provider, and ratios to gemm_floor and published."""
    groups = bp.load_groups(path)

    def fmt(s):
        return f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.0f} ms"

    out = [
        "| group | provider | median (min) | rounds | other CPU load | provider / gemm_floor "
        "| published / provider |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, g in groups.items():
        floor = g.get("gemm_floor", {}).get("stats", {}).get("median")
        pub = g.get("published", {}).get("stats", {}).get("median")
        for prov in PROVIDERS:
            if prov not in g:
                continue
            st = g[prov]["stats"]
            load = bp.load_cell(g[prov])
            r_floor = f"{st['median'] / floor:.2f}×" if floor else ""
            r_pub = f"**{pub / st['median']:.2f}×**" if pub and prov != "published" else ""
            out.append(f"| {name} | {prov} | {fmt(st['median'])} ({fmt(st['min'])}) "
                       f"| {st['rounds']} | {load} | {r_floor} | {r_pub} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/bench_stage1.py RESULTS.json")
    print(report(sys.argv[1]))
