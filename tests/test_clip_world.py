"""CLIP-like worlds (dfzsl_fast.clip_world): calibration, shapes, errors, the real ImageNet head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfzsl_fast.clip_world import (
    CLIPWorldConfig,
    build_clip_world,
    calibrate_clip_world,
    load_imagenet_text_head,
    text_statistics,
)
from dfzsl_fast.data import shared_data_dir


def _clip_like_text(c: int, d: int = 64, shared: float = 0.78, seed: int = 0) -> torch.Tensor:
    """Text rows with a large shared component (CLIP: mean pairwise cosine about 0.6)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g)
    own = torch.randn(c, d, generator=g)
    x = shared * common / common.norm() + (1 - shared**2) ** 0.5 * own / own.norm(dim=1,
                                                                                 keepdim=True)
    return 7.0 * x / x.norm(dim=1, keepdim=True)  # unnormalised, as a CLIP head is


SMALL = dict(n_train=40, n_test=30, calib_per_class=20, teacher_max_iter=200)


def test_text_statistics_measures_the_shared_component():
    t = _clip_like_text(200)
    s = text_statistics(t)
    # pairwise cos of unit rows shared*common + sqrt(1-shared^2)*own = shared^2 + O(1/sqrt(d))
    assert abs(s["pairwise_cos"] - 0.78**2) < 0.05
    assert abs(s["mean_norm"] ** 2 - s["pairwise_cos"]) < 0.02


def test_calibration_meets_targets():
    t = _clip_like_text(120)
    cfg = CLIPWorldConfig(target_zero_shot=0.55, target_linear_probe=0.75, seed=3, **SMALL)
    p = calibrate_clip_world(t, cfg)
    a = p.achieved
    # binomial sd of an accuracy on 2400 draws is <= 0.0102; calibration is on another draw
    assert abs(a["linear_probe"] - 0.75) < 0.05
    assert abs(a["zero_shot"] - 0.55) < 0.05 or p.rho < 1e-2  # rho = 0: zero-shot at its max
    assert abs(a["image_pairwise_cos"] - cfg.image_pairwise_cos) < 0.03
    assert abs(a["modality_gap"] - cfg.modality_gap) < 0.03


def test_build_clip_world_shapes_and_split():
    t = _clip_like_text(30)
    names = [f"thing {i}" for i in range(30)]
    w = build_clip_world(t, names, n_unseen=8, seed=1, **SMALL)
    assert w.family == "clip" and w.projection is None
    assert w.seen_classes.numel() == 22 and w.unseen_classes.numel() == 8
    assert w.teacher_weight.shape == (22, 64)
    assert set(w.train_labels.unique().tolist()) <= set(w.seen_classes.tolist())
    assert set(w.test_labels.unique().tolist()) == set(range(30))
    s = w.summary()
    assert s["family"] == "clip"
    assert 0.0 < s["zero_shot"]["H"] < 1.0
    assert s["cos_image_image_pairwise"] > 0.3  # the image cone is there
    # the teacher is a softmax without bias: its rows sum to zero (blind to shared parts)
    assert float(w.teacher_weight.sum(0).norm()) < 1e-2 * float(w.teacher_weight.norm())
    # same seed, same world
    w2 = build_clip_world(t, names, n_unseen=8, seed=1, params=w.calibration, **SMALL)
    assert torch.equal(w.test_features, w2.test_features)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_zero_shot=0.8, target_linear_probe=0.7), "below"),
        (dict(target_zero_shot=1.5), "target_zero_shot"),
        (dict(image_pairwise_cos=0.99), "image_pairwise_cos"),
        (dict(n_train=0), "n_train"),
        (dict(nuisance_frac=0.8, semantic_frac=0.5), "<= 1"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CLIPWorldConfig(**kwargs)


def test_build_errors():
    t = _clip_like_text(10)
    names = [f"n{i}" for i in range(10)]
    with pytest.raises(ValueError, match="names for 10"):
        build_clip_world(t, names[:9])
    bad = t.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_clip_world(bad, names)
    with pytest.raises(TypeError, match="unknown CLIPWorldConfig field"):
        build_clip_world(t, names, colour=3)
    with pytest.raises((TypeError, ValueError), match=r"\(C, D\)"):
        build_clip_world(np.zeros(5), names)


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data is absent")
def test_real_imagenet_head_statistics():
    text, names = load_imagenet_text_head()
    assert text.shape == (1000, 512) and len(set(names)) == 1000
    assert "Cardigan" in names and "cardigan" in names  # case counts: two ImageNet classes
    s = text_statistics(text)
    assert 0.58 < s["pairwise_cos"] < 0.64  # 0.61, the figure the docs quote
