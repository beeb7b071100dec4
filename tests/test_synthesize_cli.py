"""`dfzsl-fast synthesize`: the command line against the API, SIGKILL / Ctrl-C then resume,
refusals and bad inputs (small sizes, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfzsl_fast.cli import main
from dfzsl_fast.cli.synthesize import _BATCH_ROWS, _SHARD_ROWS, parse_classes
from dfzsl_fast.io import save_features
from dfzsl_fast.synthesis import FeatureShards, VMFGenerator, synthesize_to
from dfzsl_fast.synthesis.shards import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_SHARD_ROWS,
    MANIFEST,
    read_manifest,
    shard_name,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
D = 16
NAMES = [f"class_{i}" for i in range(6)]


def folder_bytes(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


@pytest.fixture()
def emb_file(tmp_path):
    """Class embeddings stored out of order: row i is class labels[i]."""
    emb = torch.randn(6, D, generator=torch.Generator().manual_seed(0))
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    p = tmp_path / "emb.safetensors"
    save_features(p, emb[order], order, class_names=NAMES)
    return p, emb


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


_HELP_WITHOUT_TORCH = """
import sys, types
pkg = types.ModuleType("dfzsl_fast"); pkg.__path__ = [{pkg!r}]
sys.modules["dfzsl_fast"] = pkg
from dfzsl_fast.cli import main
try:
    main(["synthesize", "--help"])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print("TORCH" if "torch" in sys.modules else "NO TORCH")
"""


def test_help_needs_no_torch():
    r = subprocess.run([sys.executable, "-c", _HELP_WITHOUT_TORCH.format(pkg=str(ROOT /
                        "dfzsl_fast"))], capture_output=True, text=True, env=_env(), cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--num-per-class" in r.stdout and "torchrun" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "NO TORCH"


def test_defaults_match_the_library():
    assert (_SHARD_ROWS, _BATCH_ROWS) == (DEFAULT_SHARD_ROWS, DEFAULT_BATCH_ROWS)


def test_parse_classes():
    assert parse_classes("all", 4) == [0, 1, 2, 3]
    assert parse_classes("3,0-1, 5", 6) == [3, 0, 1, 5]
    assert parse_classes("class_4,1", 6, NAMES) == [4, 1]
    for bad, match in [("0-6", "out of range"), ("2-1", "empty range"), ("x", "neither"),
                       ("1,,2", "empty entry"), ("1,0-2", "named twice"), ("-1", "neither")]:
        with pytest.raises(Exception, match=match):
            parse_classes(bad, 6, NAMES)


def test_cli_writes_what_the_api_writes(tmp_path, emb_file, capsys):
    path, emb = emb_file
    rc = main(["synthesize", "--kind", "vmf", "--kappa", "40", "--embeddings", str(path),
               "--classes", "class_5,1-2", "--num-per-class", "70", "--seed", "4",
               "--shard-rows", "64", "--dtype", "bfloat16", "--out", str(tmp_path / "cli"),
               "--no-progress"])
    assert rc == 0
    assert "wrote 210 rows (3 classes x 70, bfloat16) as 4 shards" in capsys.readouterr().out
    api = synthesize_to(tmp_path / "api", VMFGenerator(40.0, D), emb, [5, 1, 2], 70, seed=4,
                        shard_rows=64, dtype=torch.bfloat16, progress=False)
    assert folder_bytes(tmp_path / "cli") == folder_bytes(api)
    x, y = FeatureShards(api, batch_size=50, dtype=torch.bfloat16).load_all()
    cls = torch.tensor([5, 1, 2]).repeat_interleave(70)
    ref = VMFGenerator(40.0, D).generate(emb, cls, torch.arange(70).repeat(3), seed=4,
                                         out_dtype=torch.bfloat16)
    assert torch.equal(x, ref) and torch.equal(y, cls)


def test_cli_with_a_tfvaegan_checkpoint(tmp_path, emb_file):
    from dfzsl_fast.config import GeneratorConfig
    from dfzsl_fast.pipeline.generator import load_generator, train_generator
    from dfzsl_fast.synthesis import TFVAEGANGenerator

    path, emb = emb_file
    g = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat(20)
    x = emb[y] @ torch.randn(D, 12, generator=g) + 0.3 * torch.randn(80, 12, generator=g)
    ck = tmp_path / "gen.pt"
    cfg = GeneratorConfig(epochs=1, hidden=32, batch_size=32, critic_iters=1, lr=1e-3, seed=3)
    train_generator(x, y, emb, cfg, progress=False, checkpoint=ck)
    rc = main(["synthesize", "--generator", str(ck), "--embeddings", str(path), "--classes",
               "4,0", "--num-per-class", "30", "--shard-rows", "25", "--dtype", "float32",
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0
    gen = TFVAEGANGenerator(load_generator(ck))
    xs, ys = FeatureShards(tmp_path / "o", batch_size=7).load_all()
    cls = torch.tensor([4, 0]).repeat_interleave(30)
    rows = torch.arange(30).repeat(2)
    # one generator call per 25-row shard: the same calls give the same bytes
    ref = torch.cat([gen.generate(emb, cls[a : a + 25], rows[a : a + 25], seed=0)
                     for a in range(0, 60, 25)])
    assert xs.shape == (60, 12) and torch.equal(xs, ref) and torch.equal(ys, cls)
    # the torch reference kernel's batch sizes round differently (float32 GEMMs), to about 1e-7
    # only; the native kernel is bitwise batch-invariant (tests/test_generator.py)
    torch.testing.assert_close(xs, gen.generate(emb, cls, rows, seed=0), rtol=0, atol=1e-6)
    # the bf16 mode: another generator identity, rows within bf16 rounding of float32's
    rc = main(["synthesize", "--generator", str(ck), "--embeddings", str(path), "--classes",
               "4,0", "--num-per-class", "30", "--shard-rows", "25", "--dtype", "float32",
               "--compute-dtype", "bfloat16", "--out", str(tmp_path / "b"), "--no-progress"])
    assert rc == 0
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["generator"]["compute_dtype"] == "bfloat16"
    xb, _ = FeatureShards(tmp_path / "b", batch_size=7).load_all()
    err = float((xb - xs).norm(dim=1).max())
    assert 0 < err < 0.03  # the bf16 bound of tests/test_generator.py
    assert read_manifest(tmp_path / "o")["generator"]["kind"] == "tfvaegan"


# A child that makes every generator call slow, so that it can be stopped mid-run.
_SLOW_CHILD = """
import signal, sys, time
# a child started from a background job inherits SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler: restore it, as an interactive shell's child has it
signal.signal(signal.SIGINT, signal.default_int_handler)
from dfzsl_fast.synthesis import generators
real = generators.VMFGenerator._generate
def slow(self, *a, **k):
    time.sleep(0.04)
    return real(self, *a, **k)
generators.VMFGenerator._generate = slow
from dfzsl_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(path, out):
    # 24 shards of 100 rows, 4 calls of 25 rows each: about 4 s of (slowed) work
    return ["synthesize", "--kind", "vmf", "--kappa", "25", "--embeddings", str(path),
            "--num-per-class", "400", "--shard-rows", "100", "--batch-rows", "25", "--seed", "9",
            "--out", str(out), "--no-progress"]


def _start_and_stop(path, out, sig, min_shards=3):
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, *_args(path, out)], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("shard-*.safetensors"))) >= min_shards:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the child ended before it was stopped: {proc.communicate()}"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr


def _reference(tmp_path, path):
    ref = tmp_path / "ref"
    assert main(_args(path, ref)) == 0
    return folder_bytes(ref)


def test_sigkill_mid_run_then_resume_gives_identical_bytes(tmp_path, emb_file):
    path, _ = emb_file
    out = tmp_path / "killed"
    rc, _, _ = _start_and_stop(path, out, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    m = read_manifest(out)
    assert m["complete"] is False and m["num_shards"] == 24
    done = sorted(out.glob("shard-*.safetensors"))
    assert 3 <= len(done) < 24
    r = subprocess.run([sys.executable, "-m", "dfzsl_fast", *_args(path, out)], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert folder_bytes(out) == _reference(tmp_path, path)
    assert not (out / ".partial").exists()


def test_ctrl_c_exits_130_with_a_resume_hint_then_resumes(tmp_path, emb_file, capsys):
    path, _ = emb_file
    out = tmp_path / "interrupted"
    rc, stdout, stderr = _start_and_stop(path, out, signal.SIGINT)
    assert rc == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "rerun the same command to resume" \
        in lines[0] and lines[0].startswith("dfzsl-fast synthesize:"), stderr
    assert read_manifest(out)["complete"] is False
    assert main(_args(path, out)) == 0
    assert folder_bytes(out) == _reference(tmp_path, path)


def test_other_arguments_are_refused(tmp_path, emb_file, capsys):
    path, _ = emb_file
    out = tmp_path / "o"
    args = ["synthesize", "--kind", "vmf", "--kappa", "5", "--embeddings", str(path),
            "--num-per-class", "10", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    want = folder_bytes(out)
    capsys.readouterr()
    assert main(args + ["--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert "different arguments: seed (folder: 0, now: 1)" in err and len(err.splitlines()) == 1
    assert main([*args[:4], "6", *args[5:]]) == 1
    assert "generator (folder: " in capsys.readouterr().err
    assert main(args + ["--dtype", "float32"]) == 1
    assert "dtype (folder: \"float16\", now: \"float32\")" in capsys.readouterr().err
    assert folder_bytes(out) == want


def test_bad_inputs(tmp_path, emb_file, capsys):
    path, emb = emb_file
    out = tmp_path / "o"
    base = ["synthesize", "--embeddings", str(path), "--num-per-class", "5", "--out", str(out)]
    vmf = ["--kind", "vmf", "--kappa", "3"]
    bad_labels = tmp_path / "dup.npz"
    save_features(bad_labels, emb, torch.tensor([0, 1, 2, 3, 4, 4]))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data.bin").write_text("x")
    cases = [
        (["--kind", "vmf"], 2, "--kind vmf needs --kappa"),
        ([], 2, "--kind tfvaegan needs --generator"),
        (["--generator", str(tmp_path / "none.pt")], 2, "--generator: no file"),
        (vmf + ["--generator", str(path)], 2, "--generator is for --kind tfvaegan"),
        (vmf + ["--classes", "0-6"], 2, "--classes: '0-6' is out of range"),
        (vmf + ["--classes", "nope"], 2, "--classes: 'nope' is neither"),
        (vmf + ["--num-per-class", "0"], 2, "--num-per-class"),
        (vmf + ["--dtype", "float64"], 2, "--dtype"),
        (vmf + ["--shard-rows", "0"], 2, "--shard-rows"),
        (vmf + ["--embeddings", str(tmp_path / "none.npz")], 2, "--embeddings: no file"),
        (vmf + ["--embeddings", str(bad_labels)], 2, "labels must hold each class index"),
        (vmf + ["--out", str(tmp_path / "afile")], 2, "exists and is not a folder"),
        (vmf + ["--out", str(tmp_path / "theirs")], 1, "holds no manifest.json"),
        (vmf + ["--device", "tpu"], 2, "--device"),
    ]
    for extra, code, match in cases:
        capsys.readouterr()
        assert main(base + extra) == code, extra
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists()
    assert os.listdir(tmp_path / "theirs") == ["data.bin"]
    assert not any(p.name == MANIFEST for p in (tmp_path / "theirs").iterdir())
    assert shard_name(0) == "shard-00000.safetensors"
