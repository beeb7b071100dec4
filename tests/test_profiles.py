"""Config profiles, the generic preset, the config summary and preset-mismatch warnings."""

from __future__ import annotations

import os

import pytest

from dfzsl_fast.config import (
    GENERIC,
    PROFILES,
    DFZSLConfig,
    apply_profile,
    describe_config,
    get_config,
    list_configs,
    preset_mismatch,
)


def test_generic_preset_has_no_dataset_assumptions():
    cfg = get_config("generic")
    assert cfg.name == GENERIC and get_config("Generic").name == GENERIC
    assert cfg.template == "a photo of a {}."
    assert (cfg.num_classes, cfg.num_seen, cfg.num_unseen) == (None, None, None)
    assert cfg.profile == "published"
    assert GENERIC not in list_configs()  # the dataset presets only
    with pytest.raises(ValueError, match="generic"):
        get_config("nope")


def test_profiles():
    assert PROFILES == ("fast", "published")
    base = get_config("generic")
    pub = apply_profile(base, "published")
    assert pub.profile == "published"
    assert {**pub.to_dict(), "profile": None} == {**base.to_dict(), "profile": None}
    fast = apply_profile(base, "fast")
    assert fast.profile == "fast" and base.profile == "published"  # a new config
    assert fast.generator.kind == "vmf"
    assert fast.simulator.epochs < base.simulator.epochs
    assert fast.classifier.epochs < base.classifier.epochs
    assert not fast.flpt.validate
    assert fast.template == base.template and fast.name == base.name
    # published after fast records the profile but keeps the (already fast) schedule values
    assert apply_profile(fast, "published").generator.kind == "vmf"
    # caps never raise a value already below them
    small = DFZSLConfig.from_dict({"name": "x", "simulator": {"epochs": 10},
                                   "classifier": {"epochs": 3}})
    f = apply_profile(small, "fast")
    assert f.simulator.epochs == 10 and f.classifier.epochs == 3
    with pytest.raises(ValueError, match=r"'fast', 'published'"):
        apply_profile(base, "quick")
    with pytest.raises(TypeError):
        apply_profile(base.to_dict(), "fast")


def test_profile_round_trips_and_old_configs_load():
    fast = apply_profile(get_config("AWA2"), "fast")
    again = DFZSLConfig.from_dict(fast.to_dict())
    assert again == fast and again.profile == "fast"
    old = get_config("AWA2").to_dict()
    del old["profile"]  # a config saved before profiles existed
    assert DFZSLConfig.from_dict(old).profile == "published"
    with pytest.raises(ValueError, match="profile"):
        DFZSLConfig.from_dict({**old, "profile": "turbo"})


def test_describe_config():
    text = describe_config(apply_profile(get_config("generic"), "fast"))
    assert "generic" in text and "profile fast" in text and "a photo of a {}." in text
    assert "vMF" in text and "300 steps" in text
    awa = describe_config(get_config("AWA2"))
    assert "50 (40 seen, 10 new)" in awa and "TF-VAEGAN" in awa and "profile published" in awa


def test_preset_mismatch():
    names30 = [f"imagenet class {i}" for i in range(30)]
    warn = preset_mismatch(get_config("AWA2"), names30, 20)
    assert any("50 classes, you gave 30" in w for w in warn)
    assert any("40 seen" in w for w in warn)
    assert any("a type of animal" in w and "generic" in w for w in warn)
    assert preset_mismatch(get_config("generic"), names30, 20) == []
    assert preset_mismatch(get_config("AWA2"), [f"a{i}" for i in range(50)], 40) == []
    assert preset_mismatch(get_config("AWA2"), [f"a{i}" for i in range(50)], None) == []


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DFZSL_SLOW_TESTS"), reason="set DFZSL_SLOW_TESTS=1")
def test_fast_profile_time():
    """The fast profile fits a 30-class, D = 512 world in minutes on a CPU (measured: ~41 s)."""
    import time

    import torch

    from dfzsl_fast.clip_world import build_clip_world
    from dfzsl_fast.pipeline import DFZSL

    names = [f"class{i}" for i in range(30)]
    text = torch.nn.functional.normalize(
        torch.randn(30, 512, generator=torch.Generator().manual_seed(0)), dim=1)
    w = build_clip_world(text, names, unseen=list(range(20, 30)))
    cfg = apply_profile(get_config("generic"), "fast")
    t = time.perf_counter()
    res = DFZSL(cfg, progress=False).fit(w.teacher.weight, w.class_names, w.seen_classes,
                                         text_features=w.text_features,
                                         eval_data=(w.test_features, w.test_labels))
    assert time.perf_counter() - t < 180
    assert res.scores["last_epoch"]["H"] > 0.3
