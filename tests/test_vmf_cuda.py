"""Tests of the CUDA kernels of dfzsl_fast::vmf_sample (csrc/cuda/vmf_sample_*.cu[h]).

The CUDA kernel draws from the same Philox streams as the CPU kernel (row i of a call uses stream
row offset + i; normals g[4j .. 4j+3] from block j; w by the same float64 Wood loop), so for a given
(seed, offset) both must give the same samples to float rounding: that is the main check here.
The statistical checks (mean of w = mu^T x against A_d(kappa), |z| < 5 with the exact variance) and
the functional ones (unit norms, empty input, opcheck, devices) complete it.

All tests need a GPU and a `_C` built with CUDA; they are skipped otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch

import dfzsl_fast
from dfzsl_fast import _extension, theory

HAVE_CUDA_EXT = bool(_extension.build_info().get("with_cuda"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not HAVE_CUDA_EXT, reason="dfzsl_fast._C was built without CUDA kernels"),
]

CUDA = torch.device("cuda")
OP = torch.ops.dfzsl_fast.vmf_sample.default
OP_OUT = torch.ops.dfzsl_fast.vmf_sample_out.default
Z_MAX = 5.0


def _unit_rows(C: int, d: int, dtype=torch.float64, generator=None) -> torch.Tensor:
    mu = torch.randn(C, d, dtype=torch.float64, generator=generator)
    return (mu / mu.norm(dim=1, keepdim=True)).to(dtype)


def _e1_rows(C: int, d: int, dtype=torch.float64) -> torch.Tensor:
    mu = torch.zeros(C, d, dtype=dtype)
    mu[:, 0] = 1.0
    return mu


def _both(mu, kappa, labels, seed, offset=0, mode=0):
    """(x, w, q) from the CPU kernel and from the CUDA kernel (moved to the CPU)."""
    k = torch.as_tensor(kappa, dtype=torch.float64).expand(mu.shape[0]).contiguous()
    cpu = OP(mu, k, labels, seed, offset, mode)
    gpu = OP(mu.to(CUDA), k.to(CUDA), labels.to(CUDA), seed, offset, mode)
    return cpu, tuple(t.cpu() for t in gpu)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# ------------------------------------------------------------------------------- stream equality
@pytest.mark.parametrize("d", [1, 3, 4, 64, 129, 771, 4100])
@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789, 7), (-5, 2**33 + 3)])
def test_direction_normals_match_cpu(d, seed, offset):
    n = 129
    cpu = _extension.C.direction_normals_cpu(n, d, seed, offset)
    gpu = _extension.C.direction_normals_cuda(n, d, seed, offset)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert gpu.shape == cpu.shape == (n, 4 * math.ceil(d / 4))
    # Same Philox bits and the same fastmath.h code; only FMA contraction may differ (a few ulp).
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    # chunked by offset: rows [k, n) of offset o == rows [0, n - k) of offset o + k
    tail = _extension.C.direction_normals_cuda(n - 50, d, seed, offset + 50)
    assert torch.equal(tail, gpu[50:])


@pytest.mark.parametrize("d", [3, 64, 512, 771])
@pytest.mark.parametrize("kappa", [0.0, 1.0, 100.0, 1e4, 1e6])
@pytest.mark.parametrize("mu_kind", ["random", "e1"])
def test_cpu_and_cuda_give_the_same_samples_float32(d, kappa, mu_kind):
    C, n = 5, 600
    mu = (_unit_rows(C, d) if mu_kind == "random" else _e1_rows(C, d)).float()
    labels = torch.randint(0, C, (n,))
    (xc, wc, qc), (xg, wg, qg) = _both(mu, kappa, labels, seed=2024, offset=11)
    assert xg.dtype == torch.float32 and wg.dtype == torch.float64 and qg.dtype == torch.float64
    assert _max_abs(xg, xc) < 1e-5, f"max |x_cuda - x_cpu| = {_max_abs(xg, xc):.3g}"
    # w: the same float64 Wood loop on both; only libm vs CUDA math ulps differ
    torch.testing.assert_close(wg, wc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(qg, qc, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d", [3, 64, 512, 771, 2048])
@pytest.mark.parametrize("kappa", [0.0, 100.0, 1e6])
def test_cpu_and_cuda_give_the_same_samples_float64(d, kappa):
    # float64 math on float32 normals: the normals agree to float rounding, hence ~1e-7 here too
    C, n = 3, 400
    mu = _unit_rows(C, d)
    labels = torch.randint(0, C, (n,))
    (xc, wc, qc), (xg, wg, qg) = _both(mu, kappa, labels, seed=99)
    assert xg.dtype == torch.float64
    assert _max_abs(xg, xc) < 1e-5
    torch.testing.assert_close(wg, wc, rtol=1e-12, atol=1e-12)
    assert (xg.norm(dim=1) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("d", [64, 512])
@pytest.mark.parametrize("kappa", [5.0, 50.0, 1e4])
def test_cpu_and_cuda_agree_in_reference_mode(d, kappa):
    C, n = 2, 300
    mu = _unit_rows(C, d).float()
    labels = torch.randint(0, C, (n,))
    (xc, wc, _), (xg, wg, _) = _both(mu, kappa, labels, seed=7, mode=1)
    assert _max_abs(xg, xc) < 1e-5
    torch.testing.assert_close(wg, wc, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [3, 512, 1500])
def test_public_api_cpu_equals_cuda_and_chunks_compose(d):
    mu = torch.randn(4, d)
    kappa = torch.tensor([0.0, 10.0, 300.0, 1e5])
    x_cpu, y_cpu = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=50, seed=31, backend="native")
    x_gpu, y_gpu = dfzsl_fast.sample_vmf(
        mu.to(CUDA), kappa.to(CUDA), n_per_class=50, seed=31, backend="native"
    )
    assert x_gpu.device.type == "cuda" and torch.equal(y_gpu.cpu(), y_cpu)
    assert _max_abs(x_gpu.cpu(), x_cpu) < 1e-5
    # two chunks with matching offsets reproduce the single call bit for bit on the GPU
    lab = y_gpu
    a, _ = dfzsl_fast.sample_vmf(mu.to(CUDA), kappa, labels=lab[:77], seed=31, offset=0)
    b, _ = dfzsl_fast.sample_vmf(mu.to(CUDA), kappa, labels=lab[77:], seed=31, offset=77)
    assert torch.equal(torch.cat([a, b]), x_gpu)
    # same seed: same output; another seed: another output
    again, _ = dfzsl_fast.sample_vmf(mu.to(CUDA), kappa, n_per_class=50, seed=31)
    other, _ = dfzsl_fast.sample_vmf(mu.to(CUDA), kappa, n_per_class=50, seed=32)
    assert torch.equal(again, x_gpu) and not torch.equal(other, x_gpu)


def test_out_variant_matches_functional():
    C, d, n = 3, 100, 257
    mu = _unit_rows(C, d).float().to(CUDA)
    k = torch.tensor([1.0, 50.0, 2000.0], dtype=torch.float64, device=CUDA)
    lab = torch.randint(0, C, (n,), device=CUDA)
    x, w, q = OP(mu, k, lab, 5, 3, 0)
    xo = torch.full((n, d), float("nan"), device=CUDA)
    wo = torch.full((n,), float("nan"), dtype=torch.float64, device=CUDA)
    qo = torch.full_like(wo, float("nan"))
    OP_OUT(mu, k, lab, 5, 3, 0, xo, wo, qo)
    assert torch.equal(xo, x) and torch.equal(wo, w) and torch.equal(qo, q)


# -------------------------------------------------------------------------------------- theory
@pytest.mark.parametrize("d", [3, 85, 512, 2048])
@pytest.mark.parametrize("kappa", [0.0, 1.0, 100.0, 1e4, 1e6])
def test_mean_w_matches_theory(d, kappa):
    # z-test on the kernel's float64 w: for kappa = 1e6 the standard error of the mean (~1e-9 at
    # d = 3) is below float32 rounding of x, so mu^T x from the float32 output is only checked
    # for consistency with w, not tested against theory.
    n = 200_000
    mu = _unit_rows(2, d).float().to(CUDA)
    k = torch.full((2,), float(kappa), dtype=torch.float64, device=CUDA)
    lab = torch.arange(2, device=CUDA).repeat_interleave(n // 2)
    x, w, _ = OP(mu, k, lab, 17, 0, 0)
    A = theory.vmf_mean_resultant_length(d, kappa)
    var = theory.vmf_w_variance(d, kappa)
    z = (float(w.mean()) - A) / math.sqrt(var / n)
    assert abs(z) < Z_MAX, f"mean w {float(w.mean())} vs A_d = {A} (z = {z:.2f})"
    proj = (x.double() * mu.double()[lab]).sum(1)
    assert float((proj - w).abs().max()) < 1e-5


@pytest.mark.parametrize("d", [3, 64, 771, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unit_norms(d, dtype):
    mu = torch.randn(10, d, dtype=dtype, device=CUDA)
    x, _ = dfzsl_fast.sample_vmf(
        mu,
        torch.logspace(-2, 6, 10, dtype=torch.float64),
        n_per_class=100,
        seed=3,
        backend="native",
    )
    assert x.dtype == dtype and torch.isfinite(x).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float((x.double().norm(dim=1) - 1).abs().max()) < tol


# ---------------------------------------------------------------------------------- functional
def test_empty_input():
    mu = _unit_rows(3, 16).float().to(CUDA)
    k = torch.ones(3, dtype=torch.float64, device=CUDA)
    lab = torch.empty(0, dtype=torch.int64, device=CUDA)
    x, w, q = OP(mu, k, lab, 0, 0, 0)
    assert x.shape == (0, 16) and w.shape == (0,) and q.shape == (0,)
    assert x.device.type == w.device.type == q.device.type == "cuda"
    xs, ys = dfzsl_fast.sample_vmf(mu, 1.0, n_per_class=0, seed=0, backend="native")
    assert xs.shape == (0, 16) and ys.shape == (0,) and xs.is_cuda
    g = _extension.C.direction_normals_cuda(0, 5, 0, 0)
    assert g.shape == (0, 8) and g.is_cuda


def test_opcheck():
    C, d, n = 4, 37, 50
    mu = _unit_rows(C, d).float().to(CUDA)
    k = torch.tensor([0.0, 1.0, 100.0, 1e4], dtype=torch.float64, device=CUDA)
    lab = torch.randint(0, C, (n,), device=CUDA)
    torch.library.opcheck(OP, (mu, k, lab, 1, 0, 0))
    torch.library.opcheck(OP, (mu.double().requires_grad_(), k, lab, 1, 5, 1))
    x = torch.empty(n, d, device=CUDA)
    w = torch.empty(n, dtype=torch.float64, device=CUDA)
    q = torch.empty_like(w)
    torch.library.opcheck(
        OP_OUT, (mu, k, lab, 1, 0, 0, x, w, q), test_utils=("test_schema", "test_faketensor")
    )


def test_gradient_matches_cpu():
    C, d = 3, 33
    mu0 = torch.randn(C, d, dtype=torch.float64)
    lab = torch.randint(0, C, (64,))
    G = torch.randn(64, d, dtype=torch.float64)
    grads = []
    for dev in ("cpu", "cuda"):
        mu = mu0.to(dev).requires_grad_()
        x, _ = dfzsl_fast.sample_vmf(mu, 50.0, labels=lab.to(dev), seed=8, backend="native")
        (x * G.to(dev)).sum().backward()
        grads.append(mu.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_outputs_on_input_device_and_current_stream():
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    mu = _unit_rows(2, 20).float().to(last)
    k = torch.tensor([1.0, 10.0], dtype=torch.float64, device=last)
    lab = torch.tensor([0, 1, 1, 0], device=last)
    with torch.cuda.device(0):  # current device may differ from the inputs' (guard)
        x, w, q = OP(mu, k, lab, 0, 0, 0)
    assert x.device == w.device == q.device == last
    ref_x, _, _ = OP(mu.cpu(), k.cpu(), lab.cpu(), 0, 0, 0)
    assert _max_abs(x.cpu(), ref_x) < 1e-5
    # launched on a side stream: results visible after syncing that stream
    s = torch.cuda.Stream(device=last)
    with torch.cuda.device(last), torch.cuda.stream(s):
        x2, _, _ = OP(mu, k, lab, 0, 0, 0)
    s.synchronize()
    assert torch.equal(x2, x)


def test_input_errors():
    mu = _unit_rows(2, 8).float().to(CUDA)
    k = torch.ones(2, dtype=torch.float64, device=CUDA)
    with pytest.raises(RuntimeError, match="vmf_sample: expected labels in"):
        OP(mu, k, torch.tensor([0, 2], device=CUDA), 0, 0, 0)
    with pytest.raises(RuntimeError, match="vmf_sample: expected finite kappa"):
        OP(
            mu,
            torch.tensor([1.0, -1.0], dtype=torch.float64, device=CUDA),
            torch.tensor([0, 1], device=CUDA),
            0,
            0,
            0,
        )
    with pytest.raises(RuntimeError, match="vmf_sample: expected kappa float64"):
        OP(mu, k.float(), torch.tensor([0], device=CUDA), 0, 0, 0)
    with pytest.raises(RuntimeError, match="vmf_sample: expected mode"):
        OP(mu, k, torch.tensor([0], device=CUDA), 0, 0, 2)
    with pytest.raises(RuntimeError, match="one CUDA device"):
        OP(mu, k.cpu(), torch.tensor([0], device=CUDA), 0, 0, 0)


def test_throughput_smoke_1m_rows():
    # Not a timed assertion: runs the full-size path once and reports the rate.
    n_per, C, d = 1000, 1000, 512
    mu = torch.randn(C, d, device=CUDA)
    kappa = torch.logspace(0, 4, C, dtype=torch.float64)
    dfzsl_fast.sample_vmf(mu[:2], 10.0, n_per_class=10, seed=0)  # warm-up
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    x, y = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n_per, seed=1, backend="native")
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end)
    assert x.shape == (C * n_per, d) and x.is_cuda
    sub = x[::997]
    assert torch.isfinite(sub).all()
    assert float((sub.double().norm(dim=1) - 1).abs().max()) < 1e-5
    print(
        f"\nvmf_sample CUDA: {C * n_per} x {d} fp32 in {ms:.2f} ms "
        f"({C * n_per / ms / 1e6:.3f} G samples/s, incl. Python-side checks)"
    )
