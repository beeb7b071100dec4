"""`dfzsl-fast run` end to end on tiny files (precomputed text features: no text tower)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.cli import UsageError, main
from dfzsl_fast.cli.run import load_run_config
from dfzsl_fast.evaluation import validate_results

C_ALL, C_S, D = 8, 5, 16
pytestmark = pytest.mark.usefixtures("cwd_in_tmp", "one_thread")


@pytest.fixture()
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(C_ALL, D, generator=g), dim=1)
    W = F.normalize(text[:C_S] + 0.3 * torch.randn(C_S, D, generator=g), dim=1)
    y = torch.arange(C_ALL).repeat_interleave(6)
    x = 4 * F.normalize(text[y] + 0.4 * torch.randn(y.numel(), D, generator=g), dim=1)
    names = [f"class {i}" for i in range(C_ALL)]
    np.save(tmp_path / "W.npy", W.numpy())
    np.save(tmp_path / "text.npy", text.numpy())
    np.savez(tmp_path / "test.npz", features=x.numpy(), labels=y.numpy())
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    cfg = {"name": "tiny", "simulator": {"epochs": 10, "nsample": 8, "num": 20},
           "generator": {"kind": "vmf", "syn_num": 20},
           "classifier": {"epochs": 2, "batch_size": 64, "lr": 1e-3}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return tmp_path


def _args(f, out):
    return ["run", str(f / "cfg.json"), "--teacher", str(f / "W.npy"), "--class-names",
            str(f / "names.txt"), "--text-features", str(f / "text.npy"), "--test-features",
            str(f / "test.npz"), "--out", str(out), "--no-progress"]


def test_run_writes_a_complete_run_folder_and_resumes(files):
    out = files / "run"
    assert main(_args(files, out)) == 0
    for name in ("config.json", "classifier.safetensors", "metrics.json", "per_class.csv",
                 "run.json", "log.txt"):
        assert (out / name).is_file(), name
    pytest.importorskip("matplotlib")
    for name in ("per_class_accuracy.png", "features_pca.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    m = validate_results(out)
    assert m["command"] == "run" and m["n_test"] == C_ALL * 6
    assert {"S", "U", "H"} <= set(m["gzsl"]) and {"S", "U", "H"} <= set(
        m["baselines"]["zero_shot"]["gzsl"])
    assert 0 < m["gzsl"]["H"] <= 1
    assert m["details"]["prompt_tuning"].startswith("skipped")
    assert m["details"]["cached_stages"] == []
    assert json.loads((out / "run.json").read_text())["cached_stages"] == []
    from dfzsl_fast.io import load_extended

    clf = load_extended(out / "classifier.safetensors")
    assert clf.class_names == [f"class {i}" for i in range(C_ALL)]
    assert clf.seen_classes.tolist() == list(range(C_S))
    # a non-empty folder is refused; --resume reuses every cached stage
    assert main(_args(files, out)) == 2
    assert main(_args(files, out) + ["--resume"]) == 0
    m2 = validate_results(out)
    assert m2["details"]["cached_stages"] == ["virtual", "generator"]
    assert m2["gzsl"] == m["gzsl"]


def test_run_bad_inputs_fail_before_work(files, capsys):
    bad = _args(files, files / "r1")
    bad[bad.index("--teacher") + 1] = str(files / "missing.npy")
    assert main(bad) == 2
    assert "--teacher" in capsys.readouterr().err
    assert not (files / "r1").exists()
    np.save(files / "text8.npy", np.zeros((C_ALL, 8), np.float32) + 1)
    bad = _args(files, files / "r2")
    bad[bad.index("--text-features") + 1] = str(files / "text8.npy")
    assert main(bad) == 1
    assert "width" in capsys.readouterr().err
    assert not (files / "r2").exists()
    assert main(_args(files, files / "r3") + ["--set", "generator.epochz=3"]) == 2
    assert "generator.epochz" in capsys.readouterr().err


def test_load_run_config_presets_and_overrides():
    cfg = load_run_config("awa2", ["generator.kind=\"vmf\"", "classifier.epochs=5"])
    assert cfg.name == "AWA2" and cfg.generator.kind == "vmf" and cfg.classifier.epochs == 5
    with pytest.raises(UsageError, match="unknown dataset"):
        load_run_config("NOPE")
    with pytest.raises(UsageError, match="classifier.epochs"):
        load_run_config("awa2", ["classifier.epochs=\"x\""])


def test_run_with_class_attributes(files, capsys):
    """--attributes feeds generator.semantics=attributes|combined (semantics.py); without it a
    non-text semantics fails before any work."""
    att = torch.rand(C_ALL, 5, generator=torch.Generator().manual_seed(3))
    np.save(files / "att.npy", att.numpy())
    sets = ["--set", "generator.kind=tfvaegan", "--set", "generator.epochs=1", "--set",
            "generator.hidden=32", "--set", "generator.critic_iters=1", "--set",
            "generator.semantics=combined"]
    out = files / "att_run"
    assert main(_args(files, out) + sets + ["--attributes", str(files / "att.npy")]) == 0
    assert json.loads((out / "config.json").read_text())["generator"]["semantics"] == "combined"
    capsys.readouterr()
    assert main(_args(files, files / "no_att") + sets) != 0
    assert "class_attributes" in capsys.readouterr().err
    assert not (files / "no_att").exists()
