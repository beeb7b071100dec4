"""The first hour of a new user (issue 10): help without torch, results folders by default,
log.txt, self-explaining output, `configs`, `run --profile`, and `./run.sh` forwarding."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfzsl_fast.cli import main
from dfzsl_fast.cli._common import default_out_dir, far_below_zero_shot, legend, log_to

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["info", "demo", "run", "configs", "sample", "evaluate", "inject",
            "extract-features", "synthesize"]


def test_the_help_list_covers_every_command():
    from dfzsl_fast.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) - {"extract"} == set(COMMANDS)  # "extract": an alias


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------ 1. --help
_STUB_HELP = """
import sys, types
pkg = types.ModuleType("dfzsl_fast"); pkg.__path__ = [{pkg!r}]
sys.modules["dfzsl_fast"] = pkg   # the package body (ops, kernels) is not the CLI's business
from dfzsl_fast.cli import main
for argv in [["--help"]] + [[c, "--help"] for c in {cmds!r}]:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
print("TORCH" if "torch" in sys.modules else "NO TORCH")
"""


def test_cli_modules_build_every_help_without_torch():
    """Every command module's top level is torch-free: --help of each needs no torch."""
    code = _STUB_HELP.format(pkg=str(ROOT / "dfzsl_fast"), cmds=COMMANDS)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(), cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO TORCH"
    assert "configs" in r.stdout and "--profile" in r.stdout


def test_python_m_help_does_not_import_torch():
    code = ("import runpy, sys; sys.argv = ['dfzsl_fast', '--help']\n"
            "try:\n    runpy.run_module('dfzsl_fast', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(), cwd=ROOT, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "NO TORCH"


def test_python_m_info_and_help_still_work():
    r = subprocess.run([sys.executable, "-m", "dfzsl_fast", "--help"], capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "configs" in r.stdout
    r = subprocess.run([sys.executable, "-m", "dfzsl_fast"], capture_output=True, text=True,
                       env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip()


# ------------------------------------------------------------------------------ 2. run.sh
def _run_sh_without_setup() -> str:
    """run.sh with ensure_env replaced by a no-op and the venv python by this one."""
    return (ROOT / "run.sh").read_text().replace("ensure_env() {", "ensure_env() { return 0\n", 1)


def test_run_sh_forwards_any_subcommand(tmp_path):
    fake = tmp_path / "venv" / "bin"
    fake.mkdir(parents=True)
    (fake / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (fake / "python").chmod(0o755)
    script = tmp_path / "run.sh"
    script.write_text(_run_sh_without_setup())
    env = {**_env(), "DFZSL_VENV": str(tmp_path / "venv")}
    r = subprocess.run(["bash", str(script), "configs"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "AWA2" in r.stdout
    r = subprocess.run(["bash", str(script), "evaluate", "--help"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "--classifier" in r.stdout
    r = subprocess.run(["bash", str(script), "no-such-command"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "error" in r.stderr


def test_run_sh_tells_how_to_use_dfzsl_fast_directly():
    text = (ROOT / "run.sh").read_text()
    assert "source" in text and "bin/activate" in text and "bin/dfzsl-fast" in text
    readme = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in readme and ".venv/bin/dfzsl-fast" in readme


# ------------------------------------------------------------------------------ 3. folders
def test_default_out_dir_is_timestamped_and_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = default_out_dir("run")
    assert p.parent == Path("runs") and p.name.startswith("run-") and len(p.name) == 19
    p.mkdir(parents=True)
    q = default_out_dir("run")
    assert q != p and not q.exists()
    assert {"runs/", "/runs/"} & set((ROOT / ".gitignore").read_text().split())


def test_log_txt_holds_the_log_lines(tmp_path):
    import logging

    with log_to(tmp_path, "warning", file_level="info"):
        logging.getLogger("dfzsl_fast.pipeline.x").info("stage 2 done")
        logging.getLogger("dfzsl_fast").warning("careful")
    text = (tmp_path / "log.txt").read_text()
    assert "stage 2 done" in text and "careful" in text
    assert not logging.getLogger("dfzsl_fast").handlers


def _tiny_run_files(d: Path) -> list[str]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    W = F.normalize(text[:5] + 0.3 * torch.randn(5, 16, generator=g), dim=1)
    y = torch.arange(8).repeat_interleave(6)
    x = 4 * F.normalize(text[y] + 0.4 * torch.randn(y.numel(), 16, generator=g), dim=1)
    np.save(d / "W.npy", W.numpy())
    np.save(d / "text.npy", text.numpy())
    np.savez(d / "test.npz", features=x.numpy(), labels=y.numpy())
    (d / "names.txt").write_text("\n".join(f"class {i}" for i in range(8)) + "\n")
    cfg = {"name": "tiny", "simulator": {"epochs": 3, "nsample": 8, "num": 20},
           "generator": {"kind": "vmf", "syn_num": 20},
           "classifier": {"epochs": 1, "batch_size": 64, "lr": 1e-3}}
    (d / "cfg.json").write_text(json.dumps(cfg))
    return [str(d / "cfg.json"), "--teacher", str(d / "W.npy"), "--class-names",
            str(d / "names.txt"), "--text-features", str(d / "text.npy"), "--test-features",
            str(d / "test.npz"), "--no-progress", "--no-plots"]


def _printed_folder(out: str) -> Path:
    lines = [ln for ln in out.splitlines() if ln.startswith("results in ")]
    assert lines, out
    return Path(lines[-1][len("results in "):])


def test_run_and_evaluate_write_a_default_folder(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    args = _tiny_run_files(tmp_path)
    assert main(["run", *args, "--log-level", "info"]) == 0
    out = capsys.readouterr().out
    folder = _printed_folder(out)
    assert folder.parent == Path("runs") and folder.name.startswith("run-")
    for f in ("config.json", "classifier.safetensors", "run.json", "metrics.json", "log.txt"):
        assert (folder / f).is_file(), f
    assert "harmonic mean" in out and "S = " in out
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["profile"] in ("as written in the file", "fast", "published")
    assert (folder / "log.txt").read_text().strip(), "log.txt is empty"
    # the run's config.json is a valid CONFIG again
    assert main(["run", str(folder / "config.json"), *args[1:], "--out",
                 str(tmp_path / "again")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--classifier", str(folder / "classifier.safetensors"),
                 "--features", str(tmp_path / "test.npz"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    ev = _printed_folder(out)
    assert ev.name.startswith("evaluate-") and (ev / "metrics.json").is_file()
    assert "harmonic mean" in out


# ------------------------------------------------------------------------------ 4. words
def test_legend_and_warning_words():
    assert "harmonic mean" in legend(["S", "U", "H"]) and "B / N" not in legend(["S"])
    assert "B / N" in legend(["B", "N", "HM"])
    assert far_below_zero_shot("DFZSL", 0.40, 0.55).startswith("warning: DFZSL")
    assert far_below_zero_shot("DFZSL", 0.50, 0.55) is None
    assert far_below_zero_shot("DFZSL", None, 0.55) is None


# ------------------------------------------------------------------------------ 5. configs
def test_configs_lists_and_shows(capsys):
    from dfzsl_fast.config import list_configs

    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in list_configs())
    assert main(["configs", "awa2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "AWA2"
    assert main(["configs", "awa2"]) == 0
    assert '"name": "AWA2"' in capsys.readouterr().out
    assert main(["configs", "nope"]) == 2


def test_profiles_when_the_library_has_them(capsys):
    config = pytest.importorskip("dfzsl_fast.config")
    if not hasattr(config, "apply_profile"):
        pytest.skip("dfzsl_fast.config.apply_profile not in this build (branch lib)")
    from dfzsl_fast.cli.run import load_run_config

    fast = load_run_config("AWA2", profile="fast")
    pub = load_run_config("AWA2", profile="published")
    assert fast.to_dict() != pub.to_dict()
    assert main(["configs", "AWA2", "--profile", "published", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pub.to_dict()


# ------------------------------------------------------------------------------ 6. sample
_SAMPLE_RSS = """
import resource, sys
import dfzsl_fast
from dfzsl_fast.cli import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rc = main(["sample", "--classes", "50", "--per-class", "4000", "--dim", "512"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RSS", rc, before * 1024, after * 1024)
"""


def test_sample_memory_is_bounded_and_names_its_backend():
    """Peak memory above the imports stays near the samples' own size (the float64 check runs
    in bounded steps; it once took 3 float64 copies of a 262144-row chunk)."""
    r = subprocess.run([sys.executable, "-c", _SAMPLE_RSS], capture_output=True, text=True,
                       env={**_env(), "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RSS")][0].split()
    rc, before, after = int(line[1]), int(line[2]), int(line[3])
    output = 50 * 4000 * 512 * 4
    assert rc == 0
    assert after - before < 1.5 * output, (after - before) / output
    assert "backend = None" not in r.stdout
    assert re.search(r"backend = (native|torch|triton)", r.stdout), r.stdout


def test_bad_demo_set_or_missing_profile_api_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--set", "nope=1", "--no-progress"]) == 2
    assert "--set" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    from dfzsl_fast import config
    from dfzsl_fast.cli.run import load_run_config

    monkeypatch.delattr(config, "apply_profile", raising=False)
    with pytest.raises(Exception, match="apply_profile"):
        load_run_config("AWA2", profile="published")
    assert main(["configs", "AWA2", "--profile", "fast"]) == 2
    assert "apply_profile" in capsys.readouterr().err


def test_demo_output_explains_itself(tmp_path, monkeypatch, capsys):
    """The lines under the demo's table, on a stubbed summary (no pipeline run)."""
    import dfzsl_fast.demo

    def fake(dataset, *, out_dir, **kw):
        import logging

        logging.getLogger("dfzsl_fast.pipeline").info("a stage finished")
        return {"world": {"classes": 32, "seen": 20, "unseen": 12, "teacher_seen_acc": 0.9},
                "prompt_tuning": "skipped", "zero_shot": {"S": 0.6, "U": 0.6, "H": 0.6},
                "icis_published": {"S": 0.97, "U": 0.001, "H": 0.003},
                "dfzsl": {"S": 0.9, "U": 0.65, "H": 0.75}, "selection": "0 of 30 epochs",
                "dfzsl_paper_protocol_max_over_epochs": {"H": 0.77}, "timings_s": {"all": 1.0}}

    monkeypatch.setattr(dfzsl_fast.demo, "run_demo", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "harmonic mean" in out
    assert "warning: ICIS (published) scores H 0.3" in out and "warning: DFZSL" not in out
    assert "peeks at the answers" in out and "H 77.0" in out
    folder = _printed_folder(out)
    assert folder.name.startswith("demo-")
    assert "a stage finished" in (tmp_path / folder / "log.txt").read_text()
