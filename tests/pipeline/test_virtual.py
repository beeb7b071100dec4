from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dfzsl_fast
from dfzsl_fast.pipeline import (
    Teacher,
    _progress,
    default_kappa,
    fit_vmf_means,
    inverse_decay_lr,
    select_trusted,
    virtual_features,
)

from ._world import make_world


def _mean_cos(a, b):
    return float((F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).mean())


# ------------------------------------------------------------------------------ fit_vmf_means
def test_fit_reproduces_teacher_logits():
    w = make_world(tilt=1.0)
    before = _mean_cos(w.text, w.W)
    mu, info = fit_vmf_means(
        w.W, w.text, steps=100, lr=1e-2, seed=0, return_info=True, progress=False
    )
    assert mu.shape == w.text.shape and mu.dtype == torch.float32
    torch.testing.assert_close(mu.norm(dim=1), torch.ones(8))
    first, last = float(info.losses[:5].mean()), float(info.losses[-10:].mean())
    assert last < 0.05 * first, (first, last)
    after = _mean_cos(mu, w.W)  # the teacher's class directions are the true means
    assert before < 0.8 and after > 0.99, (before, after)
    torch.testing.assert_close(info.final_mu, mu)
    # the learned means reproduce the teacher's logits on fresh vMF samples
    x, _ = dfzsl_fast.sample_vmf(mu, info.kappa, n_per_class=50, seed=99)
    s = F.normalize(x, dim=1) @ mu.T
    t = Teacher(w.W).logits(x)
    x0, _ = dfzsl_fast.sample_vmf(w.text, info.kappa, n_per_class=50, seed=99)
    s0 = F.normalize(x0, dim=1) @ w.text.T
    t0 = Teacher(w.W).logits(x0)
    assert float(((s - t) ** 2).mean()) < 0.05 * float(((s0 - t0) ** 2).mean())


def test_lr_schedule_is_inverse_decay():
    w = make_world()
    _, info = fit_vmf_means(w.W, w.text, steps=7, lr=3e-3, seed=0, return_info=True, progress=False)
    expected = torch.tensor(
        [3e-3 * (1 + 0.001 * t) ** -0.75 for t in range(7)], dtype=torch.float64
    )
    torch.testing.assert_close(info.lrs, expected, rtol=1e-12, atol=0)
    assert inverse_decay_lr(0, 3e-3) == 3e-3
    assert inverse_decay_lr(1000, 3e-3) == pytest.approx(3e-3 * 2**-0.75)


def test_first_step_matches_explicit_formula():
    """One step equals Adam on MSE(cos(x, mu), cos(x, W).detach()), x = the seeded sample."""
    w = make_world()
    kappa = default_kappa(w.text)
    mu_ours = fit_vmf_means(w.W, w.text, kappa, steps=1, lr=1e-2, nsample=5, seed=3, progress=False)
    mu = torch.nn.Parameter(F.normalize(w.text, dim=1).clone())
    opt = torch.optim.Adam([mu], lr=1e-2, betas=(0.9, 0.999), weight_decay=5e-4)
    x, _ = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=5, seed=3, offset=0)
    xs = F.normalize(x, dim=1)
    student = xs @ F.normalize(mu, dim=1).T
    teacher = (xs @ F.normalize(w.W, dim=1).T).detach()
    ((student - teacher) ** 2).mean().backward()
    opt.step()
    torch.testing.assert_close(mu_ours, F.normalize(mu.detach(), dim=1), rtol=1e-5, atol=1e-6)


def test_fit_is_deterministic_for_a_seed():
    w = make_world()
    kw = dict(steps=10, lr=1e-2, progress=False)
    a = fit_vmf_means(w.W, w.text, seed=5, **kw)
    b = fit_vmf_means(w.W, w.text, seed=5, **kw)
    c = fit_vmf_means(w.W, w.text, seed=6, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_best_tracker_copies_the_state():
    w = make_world(tilt=1.0)
    mu_best, info = fit_vmf_means(
        w.W, w.text, steps=40, lr=3e-2, seed=0, select="best", return_info=True, progress=False
    )
    assert info.best_step >= 0
    scores = info.cos_to_teacher
    assert float(scores[info.best_step]) == pytest.approx(float(scores.max()))
    assert _mean_cos(mu_best, w.W) == pytest.approx(float(scores.max()), abs=1e-5)
    if info.best_step != 39:  # not aliased to the live parameter: differs from the final state
        assert not torch.equal(info.best_mu, info.final_mu)
    mu_final = fit_vmf_means(w.W, w.text, steps=40, lr=3e-2, seed=0, progress=False)
    torch.testing.assert_close(mu_final, info.final_mu)


def test_zero_steps_returns_normalised_text_features():
    w = make_world()
    mu = fit_vmf_means(w.W, 3.0 * w.text, steps=0, progress=False)
    torch.testing.assert_close(mu, w.text)


def test_fit_bad_inputs():
    w = make_world()
    with pytest.raises(ValueError, match="teacher has 8 classes"):
        fit_vmf_means(w.W, w.text[:5], steps=1, progress=False)
    with pytest.raises(ValueError, match="width 16 does not match"):
        fit_vmf_means(w.W, w.text[:, :16], steps=1, progress=False)
    bad = w.text.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        fit_vmf_means(w.W, bad, steps=1, progress=False)
    badw = w.W.clone()
    badw[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_vmf_means(badw, w.text, steps=1, progress=False)
    with pytest.raises(ValueError, match="select"):
        fit_vmf_means(w.W, w.text, steps=1, select="max", progress=False)
    with pytest.raises(ValueError, match="nsample"):
        fit_vmf_means(w.W, w.text, steps=1, nsample=0, progress=False)
    with pytest.raises(ValueError, match="kappa"):
        fit_vmf_means(w.W, w.text, torch.ones(3), steps=1, progress=False)


def test_progress_without_tqdm_prints_to_stderr(monkeypatch, capsys):
    monkeypatch.setattr(_progress, "_tqdm", None)
    w = make_world()
    fit_vmf_means(w.W, w.text, steps=20, lr=1e-2, progress=True)
    err = capsys.readouterr().err
    assert "fit vMF means: 20/20" in err
    assert err.count("\n") <= 12


# ------------------------------------------------------------------------------ sampling
def test_default_kappa_is_the_dfzsl_rule():
    w = make_world()
    k = default_kappa(w.text)
    expected = torch.as_tensor(dfzsl_fast.kappa_from_prototypes(w.text, shared=True))
    torch.testing.assert_close(k, expected.double())
    assert torch.all(k == k[0])


def test_trusted_filter_keeps_only_teacher_correct_samples():
    w = make_world()
    teacher = Teacher(w.W)
    # kappa 5 in d = 32: wide clusters, so the teacher rejects a good share
    x, y, stats = virtual_features(w.W, 5.0, 40, teacher, seed=0)
    assert torch.equal(teacher.predict(x), y)
    assert torch.equal(stats.drawn, torch.full((8,), 40))
    assert torch.equal(stats.kept, torch.bincount(y, minlength=8))
    assert bool((stats.kept <= 40).all()) and stats.total_kept < 320
    torch.testing.assert_close(x.norm(dim=1), torch.ones(len(x)))
    # filtering the same draw by hand gives the same rows
    labels = torch.arange(8).repeat(40)
    xa, ya = dfzsl_fast.sample_vmf(w.W, 5.0, labels=labels, seed=0)
    keep = teacher.predict(xa) == ya
    assert torch.equal(x, xa[keep]) and torch.equal(y, ya[keep])
    assert "kept" in str(stats)


def test_orders_and_per_class_counts():
    w = make_world()
    teacher = Teacher(w.W)
    counts = torch.tensor([3, 1, 2, 2, 1, 1, 4, 2])
    # a very large kappa: every sample sits on its mean and is trusted
    x, y, stats = virtual_features(w.W, 1e6, counts, teacher, seed=0, order="class_major")
    assert torch.equal(y, torch.repeat_interleave(torch.arange(8), counts))
    assert torch.equal(stats.drawn, counts) and torch.equal(stats.kept, counts)
    x, y, _ = virtual_features(w.W, 1e6, 3, teacher, seed=0)  # round robin (reference order)
    assert torch.equal(y, torch.arange(8).repeat(3))
    x, y, _ = virtual_features(w.W, 1e6, counts, teacher, seed=0)
    assert torch.equal(torch.bincount(y, minlength=8), counts)
    assert y[:8].tolist() == list(range(8))  # first round: every class once
    assert y[8:].tolist() == [0, 2, 3, 6, 7, 0, 6, 6]


def test_virtual_features_default_kappa_and_determinism():
    w = make_world()
    teacher = Teacher(w.W)
    a = virtual_features(w.W, None, 20, teacher, seed=4, text_features=w.text)
    b = virtual_features(w.W, default_kappa(w.text), 20, teacher, seed=4)
    c = virtual_features(w.W, None, 20, teacher, seed=5, text_features=w.text)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0][:5], c[0][:5])


def test_class_losing_all_samples_is_an_error():
    w = make_world()
    mu = w.W.clone()
    mu[3] = w.W[5]  # class 3's samples land on class 5: the teacher rejects all of them
    with pytest.raises(ValueError, match=r"every sample of 1 class\(es\) \(3\)"):
        virtual_features(mu, 1e4, 10, Teacher(w.W), seed=0)
    x, y, stats = select_trusted(
        *dfzsl_fast.sample_vmf(mu, 1e4, n_per_class=10, seed=0),
        Teacher(w.W),
        allow_empty_class=True,
    )
    assert int(stats.kept[3]) == 0 and int(stats.kept[5]) == 10


def test_virtual_features_bad_inputs():
    w = make_world()
    teacher = Teacher(w.W)
    with pytest.raises(ValueError, match="text_features"):
        virtual_features(w.W, None, 5, teacher)
    with pytest.raises(ValueError, match="order"):
        virtual_features(w.W, 10.0, 5, teacher, order="random")
    with pytest.raises(ValueError, match="class 2 asks 0"):
        virtual_features(w.W, 10.0, [1, 1, 0, 1, 1, 1, 1, 1], teacher)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        virtual_features(w.W, 10.0, [1, 1], teacher)
    with pytest.raises(ValueError, match="teacher has 8 classes"):
        virtual_features(w.W[:6], 10.0, 5, teacher)
    with pytest.raises(ValueError, match="width"):
        virtual_features(w.W[:, :10], 10.0, 5, teacher)
