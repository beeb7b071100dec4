"""`dfzsl-fast synthesize`: write synthetic features of many classes as resumable safetensors
shards (`dfzsl_fast.synthesis.synthesize_to`); under torchrun the shards are split across ranks."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._common import UsageError, check_device, check_input_file, check_output_dir, float_option
from ._common import int_option as _int

EXAMPLE = """\
example:
  dfzsl-fast synthesize --generator runs/cub/generator.pt --embeddings cub_text.safetensors \\
      --classes 150-199 --num-per-class 20000 --out synth/cub --device cuda
  dfzsl-fast synthesize --kind vmf --kappa 1000 --embeddings text.npz --num-per-class 5000 \\
      --out synth/vmf
  torchrun --nproc_per_node=8 -m dfzsl_fast synthesize ...        (shards split across ranks)

inputs:
  --embeddings  a feature file (.safetensors, .npz or .pt dict, dfzsl_fast.io.load_features)
                whose `features` (C, A) are the class embeddings and `labels` (C,) the class
                index of each row (each of 0..C-1 once); `class_names`, if present, may be used
                in --classes.
  --classes     all (default), or indices and ranges such as 0-49,60,70-79, or class names.

output (--out): shard-00000.safetensors, ... ("features" (n, D) in --dtype, "labels" (n,)
int64) and manifest.json; rows are class-major in --classes order. An interrupted run (Ctrl-C,
a killed job) is resumed by rerunning the same command: finished shards are verified (sha256)
and kept. The folder is identical whatever the number of processes.
"""

_DTYPES = ("float16", "bfloat16", "float32")
#: synthesis.shards.DEFAULT_SHARD_ROWS / DEFAULT_BATCH_ROWS (not imported: --help needs no torch)
_SHARD_ROWS = 1 << 17
_BATCH_ROWS = 1 << 14

__all__ = ["add", "run", "parse_classes"]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "synthesize",
        help="write synthetic features as resumable safetensors shards (torchrun-aware)",
        description="Generate num-per-class synthetic features for each class with a trained "
        "TF-VAEGAN or a vMF sampler and write them as safetensors shards with a manifest. "
        "Rerun the same command to resume an interrupted run; launch with torchrun to split "
        "the shards across processes and machines.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--generator", default=None, metavar="CKPT",
                   help="TF-VAEGAN checkpoint (pipeline.generator.train_generator)")
    p.add_argument("--kind", default="tfvaegan", choices=["tfvaegan", "vmf"],
                   help="tfvaegan (default, needs --generator) or vmf (needs --kappa)")
    p.add_argument("--kappa", type=float_option(0.0, 1e12), default=None,
                   help="vMF concentration (with --kind vmf)")
    p.add_argument("--embeddings", required=True, metavar="FILE",
                   help="class embeddings: a feature file with features (C, A), labels (C,)")
    p.add_argument("--classes", default="all",
                   help="all (default), indices/ranges (0-49,60) or class names")
    p.add_argument("--num-per-class", type=_int(1, 1 << 32), required=True,
                   help="rows per class")
    p.add_argument("--seed", type=_int(0, 2**63 - 1), default=0)
    p.add_argument("--shard-rows", type=_int(1, 1 << 26), default=_SHARD_ROWS,
                   help=f"rows per shard (default {_SHARD_ROWS})")
    p.add_argument("--batch-rows", type=_int(1, 1 << 26), default=_BATCH_ROWS,
                   help=f"rows per generator call (default {_BATCH_ROWS}; output unchanged)")
    p.add_argument("--dtype", default="float16", choices=_DTYPES,
                   help="stored feature dtype (default float16)")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="TF-VAEGAN GEMM operands: float32 (default) or bfloat16 (float32 "
                   "accumulation; about 2x faster on CPUs with AVX512-BF16/AMX, the GPUs' "
                   "precision; rows differ from float32 by bf16 rounding)")
    p.add_argument("--out", required=True, metavar="DIR", help="the shard folder")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda (under torchrun, cuda means cuda:LOCAL_RANK)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_classes(spec: str, n_classes: int, names: list[str] | None = None) -> list[int]:
    """``all``, comma-separated indices and ranges ``a-b`` (inclusive), or class names."""
    spec = spec.strip()
    if spec == "all":
        return list(range(n_classes))
    out: list[int] = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            raise UsageError(f"--classes: empty entry in {spec!r}")
        lo, sep, hi = tok.partition("-")
        if lo.isdigit() and (not sep or hi.isdigit()):
            a, b = int(lo), int(hi) if sep else int(lo)
            if a > b:
                raise UsageError(f"--classes: empty range {tok!r}")
            if b >= n_classes:
                raise UsageError(f"--classes: {tok!r} is out of range: the embeddings have "
                                 f"{n_classes} classes (0-{n_classes - 1})")
            out.extend(range(a, b + 1))
        elif names is not None and tok in names:
            out.append(names.index(tok))
        else:
            raise UsageError(f"--classes: {tok!r} is neither an index, a range a-b nor a class "
                             f"name of the embeddings file")
    if len(set(out)) != len(out):
        raise UsageError("--classes: a class is named twice")
    return out


def _embeddings(path: str):
    import torch

    from ..io import load_features

    ff = load_features(check_input_file(path, "--embeddings"))
    c = len(ff)
    if not torch.equal(ff.labels.sort().values, torch.arange(c)):
        raise UsageError(f"--embeddings: labels must hold each class index 0..{c - 1} once (one "
                         f"embedding row per class)")
    e = torch.empty_like(ff.features)
    e[ff.labels] = ff.features
    return e, ff.class_names


def run(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    if args.kind == "vmf":
        if args.kappa is None:
            raise UsageError("--kind vmf needs --kappa")
        if args.generator is not None:
            raise UsageError("--generator is for --kind tfvaegan, not vmf")
    else:
        if args.generator is None:
            raise UsageError("--kind tfvaegan needs --generator CKPT (or use --kind vmf --kappa)")
        if args.kappa is not None:
            raise UsageError("--kappa is for --kind vmf")
        check_input_file(args.generator, "--generator")
    out = check_output_dir(args.out, "--out", reuse=True)
    emb, names = _embeddings(args.embeddings)
    classes = parse_classes(args.classes, emb.shape[0], names)

    import torch

    from ..distributed import init_from_env, shutdown
    from ..synthesis import TFVAEGANGenerator, VMFGenerator, synthesize_to

    device, started = init_from_env(device)
    rc = 1  # anything but a finished run ends the group without waiting for the other ranks
    try:
        if args.kind == "vmf":
            gen = VMFGenerator(args.kappa, emb.shape[1], device=device)
        else:
            from ..pipeline.generator import load_generator

            gen = TFVAEGANGenerator(load_generator(args.generator, device),
                                    compute_dtype=getattr(torch, args.compute_dtype))
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        t0 = time.perf_counter()
        try:
            synthesize_to(out, gen, emb, classes, args.num_per_class, seed=args.seed,
                          shard_rows=args.shard_rows, dtype=getattr(torch, args.dtype),
                          batch_rows=args.batch_rows, progress=not args.no_progress)
        except KeyboardInterrupt:
            if getattr(args, "debug", False):
                raise
            print(f"dfzsl-fast synthesize: interrupted; the finished shards in {out} are kept: "
                  f"rerun the same command to resume", file=sys.stderr, flush=True)
            rc = 130
            return rc
        if rank == 0:
            n = len(classes) * args.num_per_class
            dt = time.perf_counter() - t0
            print(f"wrote {n:,} rows ({len(classes)} classes x {args.num_per_class}, "
                  f"{args.dtype}) as {-(-n // args.shard_rows)} shards in {out} "
                  f"({dt:.1f} s, {n / max(dt, 1e-9):,.0f} rows/s)")
        rc = 0
    finally:
        if started:
            shutdown(sync=rc == 0)
    return rc
