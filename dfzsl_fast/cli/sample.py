"""`dfzsl-fast sample`: exact vMF samples around random class means, throughput and a check
of the mean cosine against exact theory A_d(kappa); optionally saved (atomically)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ._common import CommandFailed, UsageError, check_device, check_output_file, float_option
from ._common import int_option as _int

EXAMPLE = """\
example:
  dfzsl-fast sample --classes 200 --per-class 5000 --dim 512 --kappa 1000
  dfzsl-fast sample --classes 50 --per-class 100 --kappa-rule --output samples.pt
"""

_DTYPES = ("float32", "float64", "bfloat16", "float16")
_ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}

__all__ = ["add", "run"]


def add(sub: Any) -> None:
    s = sub.add_parser(
        "sample",
        help="draw exact vMF samples for random class means; print throughput and a check",
        description="Draw exact von Mises-Fisher samples around random class means, report "
        "throughput, and check the mean cosine to the means against exact theory A_d(kappa).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--classes", type=_int(1, 10**7), default=200,
                   help="number of classes (default 200)")
    s.add_argument("--per-class", type=_int(0, 10**9), default=5000,
                   help="samples per class (default 5000)")
    s.add_argument("--dim", type=_int(2, 1 << 16), default=512,
                   help="feature dimension d (default 512)")
    s.add_argument("--kappa", type=float_option(0.0, 1e12), default=1000.0,
                   help="concentration kappa >= 0 (default 1000)")
    s.add_argument("--kappa-rule", action="store_true",
                   help="use DFZSL's rule 36/theta^2 (shared max) on the random means instead")
    s.add_argument("--dtype", default="float32", choices=_DTYPES)
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--backend", default=None, choices=["auto", "native", "triton", "torch"])
    s.add_argument("--seed", type=_int(0, 2**63 - 1), default=0)
    s.add_argument("--chunk", type=_int(1, 1 << 30), default=1 << 18,
                   help="rows per call (default 262144)")
    s.add_argument("--output", default=None,
                   help="save samples, labels and means (torch.save)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    s.set_defaults(func=run)


def _memory_bytes(device) -> int | None:
    """Memory the samples may use on ``device`` (half of RAM on CPU; free memory on a GPU)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


#: Bytes of float64 temporaries the statistical check may hold at once (bounded memory: the
#: check never needs more than this on top of the samples themselves).
_CHECK_BYTES = 64 << 20


def _check_rows(dim: int, n_total: int) -> int:
    """Rows per step of the float64 check: three (rows, dim) float64 temporaries fit in
    _CHECK_BYTES."""
    return max(1, min(n_total, _CHECK_BYTES // (3 * 8 * dim)))


def _backend_used(requested, device, dtype, dim: int) -> str:
    """The backend `sample_vmf` picks for these arguments (what `auto`/None resolves to)."""
    try:
        import torch

        from .. import _backend
        from ..ops.vmf import _DTYPES as computed  # as sample_vmf: others compute in float32

        dtype = dtype if dtype in computed else torch.float32
        return _backend.resolve(requested, "vmf_sample", device, dtype, d=dim)
    except Exception:  # pragma: no cover - reported as requested rather than fail the command
        return str(requested or "auto")


def _progress(done: int, total: int, t0: float, file=sys.stderr) -> None:
    if not file.isatty() and done != total:
        return
    rate = done / max(time.perf_counter() - t0, 1e-9)
    end = "\n" if done == total else "\r"
    file.write(f"  sampled {done:,}/{total:,} rows ({rate / 1e6:.2f} M rows/s){end}")
    file.flush()


def run(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    out_path = None
    if args.output:
        out_path = check_output_file(args.output, "--output", overwrite=args.overwrite)
    n_total = args.classes * args.per_class
    # samples, labels, w; means; the float64 check of one chunk (x, mu[labels], product)
    need = (n_total * (args.dim * _ITEMSIZE[args.dtype] + 8 + 8) + args.classes * args.dim * 8
            + 3 * _check_rows(args.dim, n_total) * args.dim * 8)
    have = _memory_bytes(device)
    if have is not None and need > have:
        raise UsageError(
            f"--classes {args.classes} x --per-class {args.per_class} x --dim {args.dim} "
            f"({args.dtype}) needs about {need / 2**30:.1f} GiB; {have / 2**30:.1f} GiB are "
            f"available on {device}"
        )

    import torch

    import dfzsl_fast
    from dfzsl_fast import testing, theory

    from ..io import atomic_write

    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    mu = torch.randn(args.classes, args.dim, generator=gen).to(device)
    kappa = args.kappa
    if args.kappa_rule:
        kappa = float(dfzsl_fast.kappa_from_prototypes(mu.double().cpu(), shared=True)[0])
        print(f"kappa from the DFZSL rule (36 / theta^2, shared max): {kappa:.2f}")
    labels = torch.arange(args.classes, device=device).repeat_interleave(args.per_class)
    out = torch.empty(n_total, args.dim, dtype=dtype, device=device)
    print(f"drawing {n_total:,} samples: {args.classes} classes x {args.per_class}, "
          f"d = {args.dim}, kappa = {kappa:g}, {args.dtype}, backend = "
          f"{_backend_used(args.backend, device, dtype, args.dim)}"
          f"{'' if args.backend not in (None, 'auto') else ' (auto)'}, "
          f"{torch.get_num_threads()} threads")
    # warm-up (first-call costs: page faults of the output, lazy init)
    dfzsl_fast.sample_vmf(mu, kappa, labels=labels[: min(n_total, 1024)], seed=args.seed,
                          backend=args.backend)
    t0 = time.perf_counter()
    for s in range(0, n_total, args.chunk):
        e = min(n_total, s + args.chunk)
        # rows keep their stream (seed, offset + i): chunking does not change the samples
        dfzsl_fast.sample_vmf(mu, kappa, labels=labels[s:e], seed=args.seed, offset=s,
                              out=out[s:e], backend=args.backend)
        _progress(e, n_total, t0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"throughput: {n_total / max(dt, 1e-12) / 1e6:.3f} M samples/s ({dt:.3f} s)")
    failed = None
    if n_total:  # in chunks: float64 copies of all samples would need 2-4x their memory
        mu_hat = torch.nn.functional.normalize(mu.double(), dim=1)
        w = torch.empty(n_total, dtype=torch.float64)
        norm_err = 0.0
        step = _check_rows(args.dim, n_total)
        for s in range(0, n_total, step):
            xs = out[s : s + step].double()
            w[s : s + xs.shape[0]] = (xs * mu_hat[labels[s : s + xs.shape[0]]]).sum(1).cpu()
            norm_err = max(norm_err, float((xs.norm(dim=1) - 1).abs().max()))
        z = testing.mean_w_zscore(w, args.dim, kappa)
        ok = abs(z) < 5 and norm_err < 1e-2
        print(f"check: mean mu^T x = {float(w.mean()):.6f}, exact A_d(kappa) = "
              f"{theory.vmf_mean_resultant_length(args.dim, kappa):.6f}, z = {z:+.2f} "
              f"(|z| < 5 expected); max | |x| - 1 | = {norm_err:.1e}  -> "
              f"{'PASS' if ok else 'FAIL'}")
        if not ok:
            failed = f"the statistical check failed (z = {z:+.2f}, max norm error {norm_err:.1e})"
    if out_path is not None:
        obj = {"samples": out.cpu(), "labels": labels.cpu(), "mu": mu.cpu(), "kappa": kappa,
               "seed": args.seed}
        atomic_write(out_path, lambda p: torch.save(obj, p))
        print(f"saved to {out_path}")
    if failed:
        raise CommandFailed(failed)
    return 0
