"""Stage 3 (TF-VAEGAN) tests: tiny dims (D = A = 16, hidden 32), one thread, CPU."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.config import GeneratorConfig
from dfzsl_fast.pipeline import generator as gen_mod
from dfzsl_fast.pipeline.generator import (
    TFVAEGAN,
    Discriminator,
    adapt_lambda,
    load_generator,
    synthesize,
    train_generator,
    weighted_l1,
)

D = A = 16


def _data(n=120, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(C, A, generator=g)
    y = torch.arange(C - 1).repeat(n // (C - 1) + 1)[:n]  # class C-1 has no rows (unseen)
    x = emb[y] @ torch.randn(A, D, generator=g) + 0.5 * torch.randn(n, D, generator=g)
    return x, y, emb


def _cfg(**kw):
    base = dict(epochs=2, hidden=32, batch_size=32, critic_iters=2, lr=1e-3, seed=3)
    base.update(kw)
    return GeneratorConfig(**base)


def _state_equal(a: TFVAEGAN, b: TFVAEGAN, atol=0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=atol, msg=k)


# ------------------------------------------------------------------------------- networks
def test_layer_table_shapes_and_init():
    m = TFVAEGAN(D, 12, hidden=32, latent_dim=8, seed=0)
    # method.md 2.5: E [x; a] -> H -> 2Z -> (Z, Z); G [z; a] -> H -> D; D [x; a] -> H -> 1;
    # F H -> H -> H; Dec D -> H -> A.
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items() if k.endswith("weight")}
    assert shapes == {
        "encoder.fc1.weight": (32, D + 12),
        "encoder.fc3.weight": (16, 32),
        "encoder.linear_means.weight": (8, 16),
        "encoder.linear_log_var.weight": (8, 16),
        "generator.fc1.weight": (32, 8 + 12),
        "generator.fc3.weight": (D, 32),
        "discriminator.fc1.weight": (32, D + 12),
        "discriminator.fc2.weight": (1, 32),
        "feedback.fc1.weight": (32, 32),
        "feedback.fc2.weight": (32, 32),
        "decoder.fc1.weight": (32, D),
        "decoder.fc3.weight": (12, 32),
    }
    for k, v in m.state_dict().items():
        if k.endswith("bias"):
            assert bool((v == 0).all()), k
    big = TFVAEGAN(64, 64, hidden=256, seed=1)
    w = big.feedback.fc1.weight.detach()
    assert abs(float(w.std()) - 0.02) < 1e-3 and abs(float(w.mean())) < 1e-3

    x, a, z = torch.randn(5, D), F.normalize(torch.randn(5, 12), dim=1), torch.randn(5, 8)
    mu, logvar = m.encoder(x, a)
    assert mu.shape == logvar.shape == (5, 8)
    out = m.generator(z, a)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    dec, hid = m.decoder(out, return_hidden=True)
    assert dec.shape == (5, 12) and hid.shape == (5, 32)
    torch.testing.assert_close(dec.norm(dim=1), torch.ones(5))
    fb = m.feedback(hid)
    assert fb.shape == (5, 32)
    assert m.discriminator(x, a).shape == (5, 1)
    # feedback path: h + a1 F(dec_hidden) before the last FC; a1 = 0 is plain G
    torch.testing.assert_close(m.generator(z, a, fb, 0.0), out)
    manual = F.normalize(
        m.generator.fc3(F.leaky_relu(m.generator.fc1(torch.cat((z, a), 1)), 0.2) + 0.3 * fb),
        dim=1,
    )
    torch.testing.assert_close(m.generate(z, a, 0.3), manual)


def test_construction_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = TFVAEGAN(D, A, hidden=32, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    _state_equal(a, TFVAEGAN(D, A, hidden=32, seed=5))


def test_input_gradient_matches_double_backward():
    torch.manual_seed(0)
    disc = Discriminator(D, A, 32)
    with torch.no_grad():  # make both signs of the pre-activation common
        disc.fc1.bias.normal_(0, 0.05)
    x, a = torch.randn(9, D), torch.randn(9, A)

    xr = x.clone().requires_grad_(True)
    ref = torch.autograd.grad(disc(xr, a).sum(), xr, create_graph=True)[0]
    gp_ref = (ref.norm(dim=1) - 1).square().mean()
    g_ref = torch.autograd.grad(gp_ref, list(disc.parameters()), allow_unused=True)

    got = disc.input_gradient(x, a)
    gp = (got.norm(dim=1) - 1).square().mean()
    g_got = torch.autograd.grad(gp, list(disc.parameters()), allow_unused=True)
    torch.testing.assert_close(got, ref.detach())
    for r, g in zip(g_ref, g_got, strict=True):
        r = torch.zeros_like(g) if r is None and g is not None else r
        g = torch.zeros_like(r) if g is None and r is not None else g
        if r is not None:
            torch.testing.assert_close(g, r)


def test_critic_terms_match_separate_calls():
    torch.manual_seed(1)
    disc = Discriminator(D, A, 32)
    with torch.no_grad():
        disc.fc1.bias.normal_(0, 0.05)
    real, fake, interp, a = (torch.randn(7, n) for n in (D, D, D, A))

    def loss(r, f, g):
        return r.mean() - 2 * f.mean() + (g.norm(dim=1) - 1).square().mean()

    r, f, g = disc.critic_terms(real, fake, interp, a)
    grads = torch.autograd.grad(loss(r, f, g), list(disc.parameters()))
    r2, f2, g2 = disc(real, a), disc(fake, a), disc.input_gradient(interp, a)
    grads2 = torch.autograd.grad(loss(r2, f2, g2), list(disc.parameters()))
    for got, want in zip((r, f, g, *grads), (r2, f2, g2, *grads2), strict=True):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------- losses
def test_weighted_l1_by_hand():
    pred = torch.tensor([[3.0, 4.0], [1.0, -1.0], [0.5, 0.5]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.5, 0.5]])  # last row: e = 0
    # row 0: (3*9 + 4*16) / 5 = 18.2; row 1: (1 + 1) / sqrt(2); row 2: 0
    expected = (18.2 + 2 / math.sqrt(2) + 0.0) / 3
    p = pred.clone().requires_grad_(True)
    loss = weighted_l1(p, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert bool(torch.isfinite(p.grad).all())
    assert torch.equal(p.grad[2], torch.zeros(2))
    # d/de_j of sum|e|^3/||e|| = 3 e_j |e_j| / ||e|| - e_j sum|e|^3 / ||e||^3 (row 0, / 3 rows)
    e = torch.tensor([3.0, 4.0])
    g0 = (3 * e * e.abs() / 5 - e * 91 / 125) / 3
    torch.testing.assert_close(p.grad[0], g0)


@pytest.mark.parametrize(
    "gp, expected",
    [(1.2, 11.0), (1.05, 10.0), (1.03, 10.0), (1.001, 10.0), (1.0005, 10 / 1.1), (0.0, 10 / 1.1)],
)
def test_adapt_lambda_rule(gp, expected):
    assert adapt_lambda(10.0, gp) == pytest.approx(expected, rel=1e-12)
    t = adapt_lambda(torch.tensor(10.0, dtype=torch.float64), torch.tensor(gp))
    assert isinstance(t, torch.Tensor) and float(t) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------- training
def test_seed_determinism_and_global_rng():
    x, y, emb = _data()
    state = torch.get_rng_state()
    m1 = train_generator(x, y, emb, _cfg(), progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    m2 = train_generator(x, y, emb, _cfg(), progress=False)
    _state_equal(m1, m2)
    m3 = train_generator(x, y, emb, _cfg(), seed=4, progress=False)
    assert not torch.equal(m1.generator.fc3.weight, m3.generator.fc3.weight)
    assert not m1.training and m1.config.epochs == 2


def test_resume_equals_straight_run(tmp_path):
    x, y, emb = _data()
    straight, info = train_generator(x, y, emb, _cfg(epochs=4), progress=False, return_info=True)
    ck = tmp_path / "gan.pt"
    train_generator(x, y, emb, _cfg(epochs=2), progress=False, checkpoint=ck)
    assert load_generator(ck).config.epochs == 2
    resumed, info2 = train_generator(
        x, y, emb, _cfg(epochs=4), progress=False, checkpoint=ck, return_info=True
    )
    assert info2.start_epoch == 2 and info2.epochs == 4
    _state_equal(straight, resumed, atol=1e-6)
    for k in ("d_cost", "vae", "lambda", "gp"):
        assert info2.history[k] == pytest.approx(info.history[k], rel=1e-5, abs=1e-7), k
    _state_equal(resumed, load_generator(ck))
    # nothing left over from the atomic writes
    assert sorted(os.listdir(tmp_path)) == ["gan.pt"]
    # already complete: returns at once with the same weights
    again = train_generator(x, y, emb, _cfg(epochs=4), progress=False, checkpoint=ck)
    _state_equal(again, resumed)


def test_interrupt_keeps_last_epoch_checkpoint(tmp_path, monkeypatch):
    x, y, emb = _data()
    ck = tmp_path / "gan.pt"

    def stop_after_second(epoch, model, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_generator(
            x, y, emb, _cfg(epochs=4), progress=False, checkpoint=ck, callback=stop_after_second
        )
    assert torch.load(ck, weights_only=True)["epoch"] == 2

    # an interrupt in the middle of writing epoch 3 leaves epoch 2 intact and no temp file
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        if obj["epoch"] == 3:
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(gen_mod.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        train_generator(x, y, emb, _cfg(epochs=4), progress=False, checkpoint=ck)
    monkeypatch.setattr(gen_mod.torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["gan.pt"]
    assert torch.load(ck, weights_only=True)["epoch"] == 2

    straight = train_generator(x, y, emb, _cfg(epochs=4), progress=False)
    resumed = train_generator(x, y, emb, _cfg(epochs=4), progress=False, checkpoint=ck)
    _state_equal(straight, resumed, atol=1e-6)


def test_checkpoint_from_another_run_is_refused(tmp_path):
    x, y, emb = _data()
    ck = tmp_path / "gan.pt"
    train_generator(x, y, emb, _cfg(), progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match=r"config differs.*lr"):
        train_generator(x, y, emb, _cfg(lr=2e-3), progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match=r"shapes differ.*hidden"):
        train_generator(x, y, emb, _cfg(hidden=16), progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match=r"shapes differ.*D"):
        train_generator(x[:, :8], y, emb, _cfg(), progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="training data"):
        train_generator(x + 0.1, y, emb, _cfg(), progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="seed differs"):
        train_generator(x, y, emb, _cfg(), seed=9, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="already holds 2 epochs"):
        train_generator(x, y, emb, _cfg(epochs=1), progress=False, checkpoint=ck)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        train_generator(x, y, emb, _cfg(), progress=False, checkpoint=tmp_path / "junk.pt")
    # resume=False overwrites
    train_generator(x, y, emb, _cfg(lr=2e-3), progress=False, checkpoint=ck, resume=False)
    assert load_generator(ck).config.lr == 2e-3


def test_input_errors():
    x, y, emb = _data()
    cfg = _cfg()

    def run(*args, **kw):
        return train_generator(*args, progress=False, **kw)

    with pytest.raises(ValueError, match="features: is empty"):
        run(x[:0], y[:0], emb, cfg)
    with pytest.raises(ValueError, match="labels: class indices must lie in"):
        run(x, torch.full_like(y, 5), emb, cfg)
    with pytest.raises(ValueError, match="labels: class indices must lie in"):
        run(x, y - 1, emb, cfg)
    with pytest.raises(ValueError, match="labels: expected shape"):
        run(x, y[:-1], emb, cfg)
    with pytest.raises(TypeError, match="labels: expected an int64"):
        run(x, y.int(), emb, cfg)
    bad = x.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match="features: row 7 contains NaN or Inf"):
        run(bad, y, emb, cfg)
    bad_e = emb.clone()
    bad_e[2, 0] = float("inf")
    with pytest.raises(ValueError, match="class_embeddings: row 2 contains NaN or Inf"):
        run(x, y, bad_e, cfg)
    with pytest.raises(ValueError, match="class_embeddings: row 1 is all zero"):
        run(x, y, emb * (torch.arange(5) != 1).float()[:, None], cfg)
    with pytest.raises(TypeError, match="features: expected a floating-point"):
        run(x.long(), y, emb, cfg)
    with pytest.raises(TypeError, match="config: expected a GeneratorConfig"):
        run(x, y, emb, {"epochs": 1})
    with pytest.raises(ValueError, match="latent_dim: expected an int >= 1"):
        run(x, y, emb, cfg, latent_dim=0)
    with pytest.raises(ValueError, match="GeneratorConfig.epochs must be finite and > 0"):
        GeneratorConfig(epochs=0)

    m = TFVAEGAN(D, A, hidden=32)
    with pytest.raises(ValueError, match="class_embeddings: width 8 does not match"):
        synthesize(m, emb[:, :8], [0], 3, seed=0)
    with pytest.raises(ValueError, match="num_per_class: expected an int >= 1"):
        synthesize(m, emb, [0], 0, seed=0)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        synthesize(m, emb, [0], 3, seed=0, batch_size=0)
    with pytest.raises(ValueError, match="classes: class indices must lie in"):
        synthesize(m, emb, [5], 3, seed=0)
    with pytest.raises(ValueError, match="classes: is empty"):
        synthesize(m, emb, [], 3, seed=0)
    with pytest.raises(ValueError, match="classes: contains duplicate"):
        synthesize(m, emb, [1, 1], 3, seed=0)
    with pytest.raises(ValueError, match="class_embeddings: row 2 contains NaN"):
        synthesize(m, bad_e, [0], 3, seed=0)


# ------------------------------------------------------------------------------- synthesis
def test_synthesize_shapes_seeds_batching_and_sharding():
    x, y, emb = _data()
    m = train_generator(x, y, emb, _cfg(epochs=1), progress=False)
    xs, ys = synthesize(m, emb, [4, 0, 2], 7, seed=11)
    assert xs.shape == (21, D) and xs.dtype == torch.float32
    assert ys.dtype == torch.int64 and ys.tolist() == [4] * 7 + [0] * 7 + [2] * 7
    torch.testing.assert_close(xs.norm(dim=1), torch.ones(21))
    assert not m.training  # mode kept

    same, _ = synthesize(m, emb, [4, 0, 2], 7, seed=11)
    assert torch.equal(same, xs)
    other, _ = synthesize(m, emb, [4, 0, 2], 7, seed=12)
    assert not torch.allclose(other, xs)
    for bs in (1, 5, 7, 8, 100):  # batches crossing class boundaries, and not
        got, _ = synthesize(m, emb, [4, 0, 2], 7, seed=11, batch_size=bs)
        torch.testing.assert_close(got, xs, rtol=0, atol=1e-6)
    # sharding the class list gives the same rows
    parts = [synthesize(m, emb, c, 7, seed=11)[0] for c in ([4], [0, 2])]
    torch.testing.assert_close(torch.cat(parts), xs, rtol=0, atol=1e-6)
    # rows within a class are distinct draws; class order does not change a class's rows
    assert torch.cdist(xs[:7], xs[:7]).add(torch.eye(7)).min() > 1e-4
    swapped, _ = synthesize(m, emb, [2, 4, 0], 7, seed=11)
    torch.testing.assert_close(swapped[:7], xs[14:], rtol=0, atol=1e-6)
    # row r of class c is the contract's row (c, r): the generator gives it alone
    from dfzsl_fast.synthesis import TFVAEGANGenerator

    one = TFVAEGANGenerator(m).generate(emb, torch.tensor([0]), torch.tensor([3]), seed=11)
    torch.testing.assert_close(one[0], xs[10], rtol=0, atol=1e-6)
    # a2 and the no-feedback path
    plain, _ = synthesize(m, emb, [4], 7, seed=11, use_feedback=False)
    zero_fb, _ = synthesize(m, emb, [4], 7, seed=11, a2=0.0)
    torch.testing.assert_close(plain, zero_fb)


# ------------------------------------------------------------------------------- learning
def _toy(seed, n=100, d=16, spread=0.5):
    """Three seen classes with orthonormal embeddings e_0..e_2 and an unseen class embedded as
    e_3 = (e_0 + e_1 + e_2) / sqrt(3). Features are unit vectors around m_c = R e_c, R a random
    rotation (a linear semantic map): cos(m_3, m_i) = 1/sqrt(3) for every seen i."""
    g = torch.Generator().manual_seed(seed)
    e = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:3]
    e = torch.cat([e, F.normalize(e.sum(0, keepdim=True), dim=1)])
    R = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    m = e @ R.T
    y = torch.arange(3).repeat_interleave(n)
    x = F.normalize(m[y] + spread * torch.randn(len(y), d, generator=g) / d**0.5, dim=1)
    return e, m, x, y


@pytest.mark.parametrize("seed", [0, 1])
def test_generalises_to_an_unseen_class(seed):
    e, m, x, y = _toy(seed)
    cfg = GeneratorConfig(
        epochs=15, hidden=32, lr=1e-3, feedback_lr=1e-2, decoder_lr=1e-2, seed=seed
    )

    def unseen_margin(model):
        xs, _ = synthesize(model, e, [3], 200, seed=0)
        cos = (xs @ m.T).mean(0)  # mean cosine to each class's true mean direction
        return float(cos[3] - cos[:3].max()), cos

    # Margin from the geometry: a generator that ignored the new embedding and produced some
    # seen class's features would score cos(m_3, m_i) - 1 = 1/sqrt(3) - 1 ~ -0.42; one that
    # produced m_3 itself scores 1 - 1/sqrt(3) ~ +0.42. Require a third of the ideal.
    need = (1 - 1 / math.sqrt(3)) / 3
    untrained, _ = unseen_margin(TFVAEGAN(D, A, hidden=32, seed=seed))
    assert untrained < need  # the test is not passed by the architecture alone
    model = train_generator(x, y, e, cfg, progress=False)
    margin, cos = unseen_margin(model)
    assert margin > need, (margin, cos)
    # seen classes are reproduced around their own means
    xs, ys = synthesize(model, e, [0, 1, 2], 100, seed=1)
    own = (xs * m[ys]).sum(1).mean()
    assert float(own) > 0.8


# ------------------------------------------------------------------ fast path (issue 13)
_EPS32 = torch.finfo(torch.float32).eps


def _assert_same_training(fast, ref, info_f, info_r, cfg, n_updates):
    """Losses and every parameter of two runs equal to float32 rounding.

    Both runs apply the same kernels to the same operands in the same order (the fast path
    only skips a recomputation of identical values), so they are expected bitwise equal; the
    bound allows what float32 rounding could still add: each of the `n_updates` Adam steps of
    a parameter moves it by about lr at most, so its accumulated rounding is at most
    eps32 * (|p| + n_updates * lr) per element (with a factor 4 of slack); each recorded loss
    is a float64 mean of float32 values, equal to 8 eps32 relative.
    """
    lr = max(cfg.lr, cfg.feedback_lr, cfg.decoder_lr)
    for k in ("d_cost", "wasserstein", "gp", "g_adv", "vae", "dec_real", "dec_fake", "lambda"):
        for a, b in zip(info_f.history[k], info_r.history[k], strict=True):
            assert abs(a - b) <= 8 * _EPS32 * max(abs(a), abs(b), 1e-30), (k, a, b)
    sf, sr = fast.state_dict(), ref.state_dict()
    assert sf.keys() == sr.keys()
    for k in sf:
        atol = 4 * _EPS32 * (float(sr[k].abs().max()) + n_updates * lr)
        torch.testing.assert_close(sf[k], sr[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("critic_iters", [1, 2, 3])
def test_fast_impl_equals_reference(critic_iters):
    # Both feedback loops (loop 1 runs F), 2 epochs, several critic steps per iteration.
    x, y, emb = _data()
    cfg = _cfg(critic_iters=critic_iters)
    kw = dict(progress=False, return_info=True, num_threads=1)
    fast, info_f = train_generator(x, y, emb, cfg, impl="fast", **kw)
    ref, info_r = train_generator(x, y, emb, cfg, impl="reference", **kw)
    iters = math.ceil(x.shape[0] / cfg.batch_size) * 2 * cfg.epochs
    _assert_same_training(fast, ref, info_f, info_r, cfg, iters * critic_iters)


def test_fast_impl_equals_reference_at_demo_width():
    # The demo's generator settings (demo.demo_config: hidden 256, critic_iters 2, lr 1e-3,
    # batch 64) at CLIP width D = A = 512: 2 iterations per loop, 1 epoch.
    g = torch.Generator().manual_seed(5)
    C, W = 6, 512
    emb = torch.randn(C, W, generator=g)
    y = torch.arange(128) % (C - 1)
    x = emb[y] + 0.5 * torch.randn(128, W, generator=g)
    cfg = GeneratorConfig(epochs=1, hidden=256, critic_iters=2, lr=1e-3, batch_size=64, seed=7)
    kw = dict(progress=False, return_info=True, num_threads=1)
    fast, info_f = train_generator(x, y, emb, cfg, impl="fast", **kw)
    ref, info_r = train_generator(x, y, emb, cfg, impl="reference", **kw)
    _assert_same_training(fast, ref, info_f, info_r, cfg, 2 * 2 * 2)


def test_num_threads_is_restored_and_impl_checked():
    x, y, emb = _data(n=40)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = []

        def threads_now(epoch, model, record):
            seen.append(torch.get_num_threads())

        train_generator(x, y, emb, _cfg(epochs=1), progress=False, num_threads=1,
                        callback=threads_now)
        assert seen == [1] and torch.get_num_threads() == 2  # 1 thread while training, restored
        train_generator(x, y, emb, _cfg(epochs=1), progress=False, callback=threads_now)
        assert seen == [1, 2] and torch.get_num_threads() == 2  # default: torch's setting
        train_generator(
            x, y, emb, _cfg(epochs=1), progress=False, impl="reference", callback=threads_now
        )
        assert seen == [1, 2, 2] and torch.get_num_threads() == 2  # reference: untouched
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="impl"):
        train_generator(x, y, emb, _cfg(), progress=False, impl="eager")
    with pytest.raises(ValueError, match="num_threads"):
        train_generator(x, y, emb, _cfg(), progress=False, num_threads=0)
