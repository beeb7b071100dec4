"""The `dfzsl-fast` command line.

    dfzsl-fast info                       versions, build facts, backends (= python -m dfzsl_fast)
    dfzsl-fast sample [options]           draw vMF samples, report throughput and a statistical
                                          check against exact theory, optionally save them
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

__all__ = ["main"]


def _progress(done: int, total: int, t0: float, file=sys.stderr) -> None:
    if not file.isatty() and done != total:
        return
    rate = done / max(time.perf_counter() - t0, 1e-9)
    end = "\n" if done == total else "\r"
    file.write(f"  sampled {done:,}/{total:,} rows ({rate / 1e6:.2f} M rows/s){end}")
    file.flush()


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    import dfzsl_fast
    from dfzsl_fast import testing, theory

    if args.classes < 1 or args.per_class < 0 or args.dim < 2:
        raise SystemExit("sample: need --classes >= 1, --per-class >= 0 and --dim >= 2")
    if args.kappa is not None and args.kappa < 0:
        raise SystemExit("sample: --kappa must be >= 0")
    if args.output and os.path.exists(args.output) and not args.overwrite:
        raise SystemExit(f"sample: {args.output} exists (use --overwrite)")
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[args.dtype]
    gen = torch.Generator().manual_seed(args.seed)
    mu = torch.randn(args.classes, args.dim, generator=gen).to(device)
    kappa = args.kappa
    if kappa is None:
        kappa = float(dfzsl_fast.kappa_from_prototypes(mu.double().cpu(), shared=True)[0])
        print(f"kappa from the DFZSL rule (36 / theta^2, shared max): {kappa:.2f}")
    n_total = args.classes * args.per_class
    labels = torch.arange(args.classes, device=device).repeat_interleave(args.per_class)
    out = torch.empty(n_total, args.dim, dtype=dtype, device=device)
    print(f"drawing {n_total:,} samples: {args.classes} classes x {args.per_class}, d = {args.dim}, "
          f"kappa = {kappa:g}, {args.dtype}, backend = {args.backend}, "
          f"{torch.get_num_threads()} threads")
    # warm-up (first-call costs: page faults of the output, lazy init)
    dfzsl_fast.sample_vmf(mu, kappa, labels=labels[: min(n_total, 1024)], seed=args.seed,
                          backend=args.backend)
    chunk = max(1, args.chunk)
    t0 = time.perf_counter()
    for s in range(0, n_total, chunk):
        e = min(n_total, s + chunk)
        # rows keep their stream (seed, offset + i): chunking does not change the samples
        dfzsl_fast.sample_vmf(mu, kappa, labels=labels[s:e], seed=args.seed, offset=s,
                              out=out[s:e], backend=args.backend)
        _progress(e, n_total, t0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"throughput: {n_total / dt / 1e6:.3f} M samples/s ({dt:.3f} s)")
    if n_total:
        mu_hat = torch.nn.functional.normalize(mu.double(), dim=1)
        w = (out.double() * mu_hat[labels]).sum(1).cpu()
        z = testing.mean_w_zscore(w, args.dim, kappa)
        norm_err = float((out.double().norm(dim=1) - 1).abs().max())
        verdict = "PASS" if abs(z) < 5 and norm_err < 1e-2 else "FAIL"
        print(f"check: mean mu^T x = {float(w.mean()):.6f}, exact A_d(kappa) = "
              f"{theory.vmf_mean_resultant_length(args.dim, kappa):.6f}, z = {z:+.2f} "
              f"(|z| < 5 expected); max | |x| - 1 | = {norm_err:.1e}  -> {verdict}")
    if args.output:
        tmp = args.output + ".partial"
        torch.save({"samples": out.cpu(), "labels": labels.cpu(), "mu": mu.cpu(),
                    "kappa": kappa, "seed": args.seed}, tmp)
        os.replace(tmp, args.output)  # never leave a half-written output behind
        print(f"saved to {args.output}")
    return 0 if (not n_total or verdict == "PASS") else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfzsl-fast",
        description="dfzsl_fast: fast, exact data-free generalized zero-shot learning on CLIP.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, build facts and which backends are available here")
    s = sub.add_parser(
        "sample",
        help="draw exact vMF samples for random class means; print throughput and a check",
        description="Draw exact von Mises-Fisher samples around random class means, report "
        "throughput, and check the mean cosine to the means against exact theory A_d(kappa).",
    )
    s.add_argument("--classes", type=int, default=200, help="number of classes (default 200)")
    s.add_argument("--per-class", type=int, default=5000, help="samples per class (default 5000)")
    s.add_argument("--dim", type=int, default=512, help="feature dimension d (default 512)")
    s.add_argument("--kappa", type=float, default=1000.0,
                   help="concentration kappa (default 1000)")
    s.add_argument("--kappa-rule", action="store_true",
                   help="use DFZSL's rule 36/theta^2 (shared max) on the random means instead")
    s.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--backend", default=None, choices=["auto", "native", "triton", "torch"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunk", type=int, default=1 << 18, help="rows per call (default 262144)")
    s.add_argument("--output", default=None, help="save samples, labels and means (torch.save)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "info":
        from ._extension import show_config

        show_config()
        return 0
    if args.cmd == "sample":
        if args.kappa_rule:
            args.kappa = None
        return _cmd_sample(args)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
