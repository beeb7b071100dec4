"""`torchrun -m dfzsl_fast synthesize` with 1, 2 and 3 processes (gloo, CPU) gives byte-identical
shard folders, and FeatureShards splits a folder across torch.distributed ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfzsl_fast.io import save_features
from dfzsl_fast.synthesis import FeatureShards, VMFGenerator, synthesize_to

ROOT = Path(__file__).resolve().parents[1]
D = 12


def folder_bytes(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={n}", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    emb = torch.randn(5, D, generator=torch.Generator().manual_seed(2))
    save_features(tmp / "emb.npz", emb, torch.arange(5))
    ref = synthesize_to(tmp / "ref", VMFGenerator(30.0, D), emb, [4, 0, 2, 3], 90, seed=6,
                        shard_rows=50, progress=False)  # 8 shards, the last of 10 rows
    return tmp, folder_bytes(ref)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_torchrun_folders_are_byte_identical(inputs, n):
    tmp, want = inputs
    out = tmp / f"n{n}"
    r = _torchrun(n, "-m", "dfzsl_fast", "synthesize", "--kind", "vmf", "--kappa", "30",
                  "--embeddings", str(tmp / "emb.npz"), "--classes", "4,0,2,3",
                  "--num-per-class", "90", "--seed", "6", "--shard-rows", "50",
                  "--out", str(out))
    assert r.stdout.count("wrote 360 rows") == 1  # rank 0 reports, once
    # rank 0 wrote only its shards 0, n, 2n, ... (its progress counts their rows)
    mine = sum(50 if s < 7 else 10 for s in range(0, 8, n))
    tag = f"synthesize (rank 0/{n})" if n > 1 else "synthesize"
    assert f"{tag}: {mine}/{mine} (100%)" in r.stderr, r.stderr[-2000:]
    assert folder_bytes(out) == want and len(want) == 9


_READ = """
import sys, torch, torch.distributed as dist
from dfzsl_fast.distributed import shutdown
from dfzsl_fast.synthesis import FeatureShards
dist.init_process_group("gloo")
ds = FeatureShards(sys.argv[1], batch_size=32, shuffle=True, seed=1)
ds.set_epoch(3)
x = torch.cat([b[0] for b in ds]); y = torch.cat([b[1] for b in ds])
torch.save({"x": x, "y": y, "shards": ds.shards_for_rank()}, f"{sys.argv[2]}-{dist.get_rank()}.pt")
shutdown()
"""


def test_reader_splits_across_distributed_ranks(inputs):
    tmp, _ = inputs
    script = tmp / "read.py"
    script.write_text(_READ)
    _torchrun(2, str(script), str(tmp / "ref"), str(tmp / "part"))
    parts = [torch.load(tmp / f"part-{r}.pt") for r in range(2)]
    assert set(parts[0]["shards"]).isdisjoint(parts[1]["shards"])
    assert sorted(parts[0]["shards"] + parts[1]["shards"]) == list(range(8))
    for r, p in enumerate(parts):  # each rank read what FeatureShards(rank=r) describes
        ds = FeatureShards(tmp / "ref", batch_size=32, shuffle=True, seed=1, rank=r,
                           world_size=2)
        ds.set_epoch(3)
        x = torch.cat([b[0] for b in ds])
        assert torch.equal(p["x"], x) and p["shards"] == ds.shards_for_rank()
    x0, y0 = FeatureShards(tmp / "ref", batch_size=1).load_all()
    key = lambda x: sorted(map(bytes, x.numpy()))  # noqa: E731
    assert key(torch.cat([p["x"] for p in parts])) == key(x0)
    assert torch.equal(torch.cat([p["y"] for p in parts]).sort().values, y0.sort().values)
