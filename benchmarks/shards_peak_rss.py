"""Peak host memory of `synthesize_to` at scale: 10M x 512 float16 vMF features (issue 11).

Each size runs in a fresh subprocess (so ru_maxrss is that run's own peak), which writes
`--rows` rows (`--classes` classes x rows/classes) with `VMFGenerator(1000, 512)` into a shard
folder and reports: peak RSS (ru_maxrss), RSS after imports (the floor), wall time and rows/s,
shards and bytes written. Running two sizes shows that the peak does not grow with the total
(memory is bounded by one shard: its tensor and its serialized bytes).

    python benchmarks/shards_peak_rss.py                      # 1M, then 10M rows (~10 GB disk)
    python benchmarks/shards_peak_rss.py --rows 10000000 --out /big/disk/synth --keep

Target: peak RSS < 1.5 GiB for 10M x 512 fp16 (a 10 GB output). The folder is removed after
each run unless --keep. The child checks the first and last rows against generator.generate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_GIB = 1.5
ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    import torch

    from dfzsl_fast.synthesis import FeatureShards, VMFGenerator, synthesize_to

    torch.set_num_threads(args.threads or torch.get_num_threads())
    per_class = args.rows // args.classes
    emb = torch.randn(args.classes, args.dim, generator=torch.Generator().manual_seed(0))
    gen = VMFGenerator(1000.0, args.dim)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = synthesize_to(args.out, gen, emb, range(args.classes), per_class, seed=0,
                        shard_rows=args.shard_rows, dtype=torch.float16, progress=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds = FeatureShards(out, batch_size=4096, dtype=torch.float16)
    x0, y0 = next(iter(ds))
    ref = gen.generate(emb, y0[:8], torch.arange(8), seed=0, out_dtype=torch.float16)
    assert torch.equal(x0[:8], ref) and ds.num_rows == per_class * args.classes
    nbytes = sum(f.stat().st_size for f in Path(out).iterdir())
    print(json.dumps({
        "rows": per_class * args.classes, "dim": args.dim, "dtype": "float16",
        "classes": args.classes, "shard_rows": args.shard_rows, "shards": len(ds.files),
        "bytes": nbytes, "seconds": round(dt, 2), "rows_per_s": round(ds.num_rows / dt),
        "MB_per_s": round(nbytes / dt / 1e6, 1), "peak_rss_gib": round(peak / 2**20, 3),
        "rss_after_imports_gib": round(base / 2**20, 3), "threads": torch.get_num_threads(),
    }))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shard-rows", type=int, default=None, help="default: the library's")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=None, help="folder (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.shard_rows is None:
        args.shard_rows = 1 << 17  # synthesis.shards.DEFAULT_SHARD_ROWS
    if args.child:
        args.rows = args.rows[0]
        child(args)
        return 0
    results, ok = [], True
    for rows in args.rows:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="shards-rss-")) / "s"
        need = rows * args.dim * 2 * 1.01
        free = shutil.disk_usage(out.parent if out.parent.exists() else ".").free
        if need > free:
            print(f"skip {rows:,} rows: needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
            continue
        cmd = [sys.executable, __file__, "--child", "--rows", str(rows), "--classes",
               str(args.classes), "--dim", str(args.dim), "--shard-rows", str(args.shard_rows),
               "--threads", str(args.threads), "--out", str(out)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                   ""))
        print("$ " + " ".join(cmd[1:]), flush=True)
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            if not args.out:
                shutil.rmtree(out.parent, ignore_errors=True)
        if r.returncode != 0:
            print(f"child failed with exit code {r.returncode}")
            return 1
        res = json.loads(r.stdout.strip().splitlines()[-1])
        results.append(res)
        good = res["peak_rss_gib"] < TARGET_GIB
        ok &= good
        print(f"{res['rows']:>12,} rows x {res['dim']} fp16 ({res['bytes'] / 1e9:.2f} GB, "
              f"{res['shards']} shards): {res['seconds']:.1f} s, {res['rows_per_s']:,} rows/s, "
              f"{res['MB_per_s']} MB/s; peak RSS {res['peak_rss_gib']:.3f} GiB (after imports "
              f"{res['rss_after_imports_gib']:.3f}) -> {'PASS' if good else 'FAIL'} "
              f"(< {TARGET_GIB} GiB)", flush=True)
    print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
