"""Benchmarks of TF-VAEGAN synthesis: the fused op against the eager forwards, same weights.

Groups `synthesis/{shape}` put the providers side by side (rows/s in `extra_info["samples/s"]`):

- fused_native      `TFVAEGANGenerator(model, backend="native")`: the C++ kernel (float32;
                    noise drawn in the kernel, condition hoisted, fused epilogues)
- fused_native_bf16 the same kernel in its bf16 mode (`compute_dtype=torch.bfloat16`: bf16 GEMM
                    operands, float32 accumulation and epilogues; the GPU kernels' precision)
- fused_triton      the same through Triton (CUDA only; bf16 tensor cores)
- fused_torch       the op's pure-PyTorch reference kernel (float32, same math and noise)
- eager_module      `TFVAEGAN.generate(torch.randn(N, Z), a, a2)`: our eager module, which
                    already computes G's hidden layer once for both passes and skips the
                    decoder's output layer
- published_pattern the reference code's `generate_syn_feature` on the same networks: G(z, a)
                    twice (its first layer recomputed on [z; a] each time), the full decoder
                    (its output layer too) and F, with torch.randn noise

Shapes ("published": A = Z = D = 512, H = 1024, the DFZSL widths; "wide": A = Z = 512,
H = 4096, D = 512). Multiply-adds per row: fused Z H + 2 H D + D H + 2 H^2 (4.0M published),
eager_module (Z + A) H + ... (4.5M), published_pattern 2 (Z + A) H + 2 H D + D H + H A + 2 H^2
(6.0M): on a CPU whose GEMMs run at their peak in every provider, the fused kernel's gain over
eager_module is bounded by about 4.5 / 4.0.

Correctness first: each provider's rows are compared with the float64 eager module on the same
noise (`synthesis.synth_normals`) for the fused providers, and on its own noise by construction
for the eager ones (their unit norm is checked). Smoke mode (`--benchmark-disable`) runs tiny
sizes once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast import testing
from dfzsl_fast.models.tfvaegan import TFVAEGAN
from dfzsl_fast.synthesis import TFVAEGANGenerator, synth_normals

SHAPES = {"published": (512, 512, 1024, 512), "wide": (512, 512, 4096, 512)}  # A, Z, H, D
ROWS = {"published": 8192, "wide": 2048}
CLASSES = 50
PROVIDERS = ("fused_native", "fused_native_bf16", "fused_triton", "fused_torch", "eager_module",
             "published_pattern")
# max |x - x_float64| per row norm allowed before timing: float32 kernels, bf16 GEMM operands
# (see tests/test_generator.py for the bf16 bound)
TOL = {"fused_native_bf16": 0.03}
A2 = 0.01


def _model(shape, smoke: bool) -> TFVAEGAN:
    A, Z, H, D = shape
    if smoke:
        A, Z, H, D = 24, 16, 40, 32
    m = TFVAEGAN(D, A, H, Z, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return m.eval()


def published_pattern(m: TFVAEGAN, z: torch.Tensor, a: torch.Tensor, a2: float) -> torch.Tensor:
    """The reference `generate_syn_feature` body on our networks (see the module docstring)."""
    fake = m.generator(z, a)  # G(z, a): first layer on [z; a]
    _, dec_hidden = m.decoder(fake, return_hidden=True)  # netDec(fake), then its hidden layer
    feedback = m.feedback(dec_hidden)
    return m.generator(z, a, feedback=feedback, a1=a2)  # G again, first layer recomputed


def _cases():
    for dev in testing.DEVICES:
        for shape in SHAPES:
            for prov in PROVIDERS:
                if prov == "fused_triton" and dev.type != "cuda":
                    continue
                marks = [pytest.mark.cuda] if dev.type == "cuda" else []
                yield pytest.param(dev, shape, prov, marks=marks, id=f"{dev.type}-{shape}-{prov}")


@pytest.mark.parametrize("device,shape,provider", list(_cases()))
def test_synthesis(benchmark, bench, device, shape, provider):
    backend = {"fused_native": "native", "fused_native_bf16": "native", "fused_triton": "triton",
               "fused_torch": "torch"}.get(provider)
    if backend in ("native", "triton"):
        testing.skip_unless_available(backend, device)
    smoke = bench.smoke(benchmark)
    m = _model(SHAPES[shape], smoke).to(device)
    N = 256 if smoke else ROWS[shape]
    gen = torch.Generator().manual_seed(2)
    emb = F.normalize(torch.randn(CLASSES, m.embed_dim, generator=gen), dim=1).to(device)
    c = torch.randint(0, CLASSES, (N,), generator=gen)
    r = torch.randint(0, 2**20, (N,), generator=gen)
    a = emb[c.to(device)]

    if backend is not None:
        fg = TFVAEGANGenerator(m, a2=A2, backend=backend,
                               compute_dtype=torch.bfloat16 if provider.endswith("bf16") else None)

        def run():
            return fg.generate(emb, c, r, seed=7)

        # correctness: against the float64 eager module on the same noise (first 512 rows)
        k = min(N, 512)
        m64 = _model(SHAPES[shape], smoke).double()
        z = synth_normals(7, c[:k], r[:k], m.latent_dim, torch.float64)
        with torch.no_grad():
            ref = m64.generate(z, emb[c[:k].to(device)].double().cpu(), A2)
        err = float((run()[:k].double().cpu() - ref).norm(dim=1).max())
        benchmark.extra_info["max_row_err_vs_float64"] = err
        assert err < TOL.get(provider, 1e-4), f"{provider}: max |x - x_float64| = {err:.2e}"
    else:
        fwd = m.generate if provider == "eager_module" else (
            lambda z, a, a2: published_pattern(m, z, a, a2))

        def run():
            with torch.no_grad():
                z = torch.randn(N, m.latent_dim, device=device)
                return fwd(z, a, A2)

        x = run()
        assert float((x.norm(dim=1) - 1).abs().max()) < 1e-4

    bench.record_environment(benchmark, device)
    benchmark.extra_info["provider"] = provider
    benchmark.extra_info["shape_AZHD"] = list(SHAPES[shape])
    benchmark.group = f"synthesis/{shape}" + ("/cuda" if device.type == "cuda" else "")
    benchmark.pedantic(run, rounds=bench.rounds_for(device), iterations=1, warmup_rounds=1)
    bench.record_throughput(benchmark, N)
