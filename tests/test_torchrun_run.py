"""`torchrun -m dfzsl_fast run` (2 processes, gloo): every rank runs stages 1-3, the final
classifier trains data-parallel, rank 0 alone writes the run folder; the classifier equals the
one-process run's to float rounding. The config synthesizes to disk shards (generator.synthesis
= "disk"), so the shards are also written by both ranks into the shared cache folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfzsl_fast.cli import main
from dfzsl_fast.io import load_extended

ROOT = Path(__file__).resolve().parents[1]
C_ALL, C_S, D = 8, 5, 16


def _files(tmp: Path) -> list[str]:
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(C_ALL, D, generator=g), dim=1)
    W = F.normalize(text[:C_S] + 0.3 * torch.randn(C_S, D, generator=g), dim=1)
    np.save(tmp / "W.npy", W.numpy())
    np.save(tmp / "text.npy", text.numpy())
    (tmp / "names.txt").write_text("\n".join(f"class {i}" for i in range(C_ALL)) + "\n")
    cfg = {"name": "tiny", "simulator": {"epochs": 10, "nsample": 8, "num": 20},
           "generator": {"kind": "vmf", "syn_num": 40, "synthesis": "disk"},
           "classifier": {"epochs": 3, "batch_size": 30, "lr": 1e-3, "fallback": False}}
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    return ["run", str(tmp / "cfg.json"), "--teacher", str(tmp / "W.npy"), "--class-names",
            str(tmp / "names.txt"), "--text-features", str(tmp / "text.npy"), "--no-progress",
            "--no-plots"]


def test_torchrun_run_equals_one_process(tmp_path):
    args = _files(tmp_path)
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "dfzsl_fast", *args, "--out",
                        str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count("results in") == 2  # rank 0's two lines, once
    one = load_extended(tmp_path / "one" / "classifier.safetensors")
    two = load_extended(tmp_path / "two" / "classifier.safetensors")
    assert (one.weight - two.weight).abs().max() < 1e-5
    shards = list((tmp_path / "two" / "cache").glob("synthetic-*/shard-*.safetensors"))
    assert shards, "the disk mode wrote no shards"
