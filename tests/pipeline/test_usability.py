"""What a new user sees: progress in logs, cache-hit logs, file modes, stale checkpoints."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.pipeline import _progress
from dfzsl_fast.pipeline._progress import Progress
from dfzsl_fast.pipeline.dfzsl import DFZSL

from .test_dfzsl import NAMES, SEEN, D, _tiny_tower, tiny_config, tiny_world


class _FakeBar:
    made = 0

    def __init__(self, **kw):
        type(self).made += 1

    def update(self, n):
        pass

    def set_postfix(self, *a, **kw):
        pass

    def close(self):
        pass


def _fake_tqdm(monkeypatch, tty: bool):
    _FakeBar.made = 0
    monkeypatch.setattr(_progress, "_tqdm", _FakeBar)
    monkeypatch.setattr(_progress, "_stderr_is_terminal", lambda: tty)


def test_progress_off_a_terminal_prints_plain_lines(monkeypatch, capsys):
    _fake_tqdm(monkeypatch, tty=False)
    with Progress(1000, "stage x") as bar:
        for _ in range(1000):
            bar.update(loss=0.5)
    err = capsys.readouterr().err
    assert _FakeBar.made == 0  # no bar even though tqdm is installed
    assert "\r" not in err
    lines = err.splitlines()
    assert 10 <= len(lines) <= 11 and lines[-1].startswith("stage x: 1000/1000 (100%)")
    assert "loss=0.5" in lines[-1]


def test_progress_on_a_terminal_uses_the_bar(monkeypatch, capsys):
    _fake_tqdm(monkeypatch, tty=True)
    with Progress(10, "stage x") as bar:
        bar.update()
    assert _FakeBar.made == 1 and capsys.readouterr().err == ""


def test_progress_prints_after_a_quiet_interval(monkeypatch, capsys):
    _fake_tqdm(monkeypatch, tty=False)
    monkeypatch.setattr(Progress, "PLAIN_EVERY_S", 0.0)
    with Progress(1000, "slow") as bar:
        for _ in range(5):
            bar.update()
    assert len(capsys.readouterr().err.splitlines()) == 5  # every step: the interval passed


def test_flpt_validation_shows_progress(monkeypatch, capsys):
    from dfzsl_fast.pipeline.flpt_validation import select_flpt_steps

    _fake_tqdm(monkeypatch, tty=False)
    tower = _tiny_tower()
    names = [f"thing {i}" for i in range(8)]
    y = torch.arange(8).repeat(12)
    x = F.normalize(torch.randn(y.numel(), D, generator=torch.Generator().manual_seed(0)), dim=1)
    select_flpt_steps(tower, names, "a photo of a {}.", x, y, torch.arange(8),
                      tiny_config().flpt, progress=True)
    assert "prompt validation" in capsys.readouterr().err


def _modes(folder):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cache_and_checkpoint_files_have_normal_modes(tmp_path, umask):
    text, W, _, _ = tiny_world()
    old = os.umask(umask)
    try:
        from dfzsl_fast.io import atomic

        monkey = atomic._UMASK
        atomic._UMASK = None  # re-read the umask set here
        DFZSL(tiny_config(), cache_dir=tmp_path, progress=False).fit(
            W, NAMES, SEEN, text_features=text)
    finally:
        atomic._UMASK = monkey
        os.umask(old)
    modes = _modes(tmp_path)
    assert any(n.startswith("generator-") and n.endswith(".pt") for n in modes)
    assert any(n.endswith(".safetensors") for n in modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_cached_stages_say_so_and_stale_checkpoints_go(tmp_path, caplog):
    text, W, _, _ = tiny_world()
    DFZSL(tiny_config(), cache_dir=tmp_path, progress=False).fit(W, NAMES, SEEN,
                                                                  text_features=text)
    first = sorted(p.name for p in tmp_path.glob("generator-*.pt"))
    assert len(first) == 1
    with caplog.at_level(logging.INFO, logger="dfzsl_fast.pipeline.dfzsl"):
        again = DFZSL(tiny_config(), cache_dir=tmp_path, progress=False).fit(
            W, NAMES, SEEN, text_features=text)
    assert again.cached == ["virtual", "generator"]
    msgs = [r.getMessage() for r in caplog.records]
    assert any("stage 1 (virtual): loaded from the cache" in m and "virtual.safetensors" in m
               for m in msgs)
    assert any("stage 3" in m and "loaded from the cache" in m for m in msgs)
    assert not any("trusted filter" in m for m in msgs)  # not logged like a fresh stage
    assert sorted(p.name for p in tmp_path.glob("generator-*.pt")) == first  # own: kept
    caplog.clear()
    # another generator configuration: the first key's checkpoint is removed, and logged
    with caplog.at_level(logging.INFO, logger="dfzsl_fast.pipeline.dfzsl"):
        DFZSL(tiny_config(syn_num=8), cache_dir=tmp_path, progress=False).fit(
            W, NAMES, SEEN, text_features=text)
    now = sorted(p.name for p in tmp_path.glob("generator-*.pt"))
    assert len(now) == 1 and now != first
    assert any("removed 1 generator checkpoint" in r.getMessage() and first[0] in r.getMessage()
               for r in caplog.records)
    # a vMF run keeps no checkpoint at all
    DFZSL(tiny_config(kind="vmf"), cache_dir=tmp_path, progress=False).fit(
        W, NAMES, SEEN, text_features=text)
    assert list(tmp_path.glob("generator-*.pt")) == []
