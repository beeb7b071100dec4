from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfzsl_fast.nn import CosineClassifier
from dfzsl_fast.pipeline import ICIS, fit_icis, head_targets, icis_extend, icis_loss, inject


def _linear_world(C=60, d_a=12, d_w=17, seed=0):
    """Descriptors a (unit rows) and classifier rows w = A a: a linear semantic relation."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(C, d_a, generator=g), dim=1)
    A = torch.randn(d_w, d_a, generator=g)
    return a, a @ A.T


def test_icis_predicts_held_out_rows():
    a, w = _linear_world()
    seen, unseen = torch.arange(48), torch.arange(48, 60)
    model, info = fit_icis(
        a[seen],
        w[seen],
        a[unseen],
        hidden=128,
        lr=1e-3,
        epochs=100,
        early_stopping=False,
        seed=0,
        progress=False,
        return_info=True,
    )
    assert info.epochs_run == 100 and not info.stopped_early
    assert float(info.losses[-1]) < 0.01 * float(info.losses[0])
    with torch.no_grad():
        pred = model.predict(a[unseen])
    cos = F.cosine_similarity(pred, w[unseen], dim=1)
    # chance: a row predicted without semantics, e.g. the mean seen row
    chance = F.cosine_similarity(w[seen].mean(0, keepdim=True), w[unseen], dim=1)
    assert float(cos.mean()) > 0.9 and float(cos.mean()) > float(chance.mean()) + 0.5
    # each new class's predicted row is closest to its own true row (chance: 1/12)
    sims = F.normalize(pred, dim=1) @ F.normalize(w[unseen], dim=1).T
    assert float((sims.argmax(1) == torch.arange(12)).float().mean()) >= 0.9


def test_loss_matches_the_masked_formula():
    torch.manual_seed(0)
    model = ICIS(6, 9, hidden=16, init_std=0.3)
    a, w = torch.randn(5, 6), torch.randn(5, 9)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    total, parts = icis_loss(model, a, w, mask)
    z_a, z_w = model.enc_a(a), model.enc_w(w)

    def dist(p, t):
        return 1 - F.cosine_similarity(p, t, dim=1)

    m = mask
    ref = {
        "a_from_a": dist(model.dec_a(z_a), a).mean(),
        "a_from_w": (dist(model.dec_a(z_w), a) * m).sum() / m.sum(),
        "w_from_w": (dist(model.dec_w(z_w), w) * m).sum() / m.sum(),
        "w_from_a": (dist(model.dec_w(z_a), w) * m).sum() / m.sum(),
    }
    for k, v in ref.items():
        torch.testing.assert_close(parts[k], v)
    torch.testing.assert_close(total, sum(ref.values()))
    # masked rows' weight targets do not matter
    w2 = w.clone()
    w2[mask == 0] = 123.0
    torch.testing.assert_close(icis_loss(model, a, w2, mask)[0], total)
    # a batch without seen rows: only the descriptor self-reconstruction term
    t0, p0 = icis_loss(model, a, w, torch.zeros(5))
    torch.testing.assert_close(t0, p0["a_from_a"])
    assert float(p0["w_from_a"].detach()) == 0.0
    # MSE variant: row means of squared errors
    _, pm = icis_loss(model, a, w, mask, loss="mse")
    torch.testing.assert_close(pm["a_from_a"], ((model.dec_a(z_a) - a) ** 2).mean())
    with pytest.raises(ValueError, match="loss"):
        icis_loss(model, a, w, mask, loss="l1")


def test_init_and_early_stopping_rule():
    a, w = _linear_world(C=20)
    m1 = fit_icis(a[:15], w[:15], a[15:], hidden=32, epochs=0, seed=3, progress=False)
    m2 = fit_icis(a[:15], w[:15], a[15:], hidden=32, epochs=0, seed=3, progress=False)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert float(m1.dec_w.weight.detach().std()) == pytest.approx(0.02, rel=0.2)
    assert float(m1.dec_w.bias.detach().abs().max()) == 0.0
    # a flat loss (tiny lr, full batch): the slope test runs from epoch index 21 and fires
    # 5 epochs later
    _, info = fit_icis(
        a[:15],
        w[:15],
        a[15:],
        hidden=32,
        epochs=100,
        lr=1e-12,
        batch_size=64,
        seed=0,
        progress=False,
        return_info=True,
    )
    assert info.stopped_early and info.epochs_run == 26


@pytest.mark.parametrize("bias", [True, False])
def test_inject_into_linear(bias):
    lin = nn.Linear(16, 5, bias=bias)
    d_w = 17 if bias else 16
    assert head_targets(lin).shape == (5, d_w)
    rows = torch.randn(3, d_w)
    out = inject(lin, rows)
    assert isinstance(out, nn.Linear) and out is not lin
    assert out.weight.shape == (8, 16) and lin.weight.shape == (5, 16)
    assert torch.equal(out.weight[:5], lin.weight) and torch.equal(out.weight[5:], rows[:, :16])
    if bias:
        assert torch.equal(out.bias[:5], lin.bias) and torch.equal(out.bias[5:], rows[:, 16])
    else:
        assert out.bias is None
    x = torch.randn(4, 16)
    torch.testing.assert_close(out(x)[:, :5], lin(x))
    scaled = inject(lin, rows, rescale="seen_norm")
    norms = head_targets(scaled)[5:].norm(dim=1)
    torch.testing.assert_close(norms, head_targets(lin).norm(dim=1).mean().expand(3))


def test_inject_into_cosine_head():
    head = CosineClassifier(torch.randn(5, 16), scale=20.0)
    rows = torch.randn(2, 16)
    out = inject(head, rows)
    assert isinstance(out, CosineClassifier) and out is not head
    assert out.num_classes == 7 and head.num_classes == 5 and out.scale == 20.0
    assert torch.equal(out.weight[5:], rows)
    assert out.predict(torch.randn(3, 16)).shape == (3,)


def test_icis_extend_end_to_end():
    a, w = _linear_world(C=30, d_a=10, d_w=9)
    lin = nn.Linear(8, 24)
    with torch.no_grad():
        lin.weight.copy_(w[:24, :8])
        lin.bias.copy_(w[:24, 8])
    out, model, info = icis_extend(
        lin,
        a[:24],
        a[24:],
        hidden=64,
        lr=3e-3,
        epochs=60,
        early_stopping=False,
        progress=False,
        return_model=True,
    )
    assert out.weight.shape == (30, 8) and out.bias.shape == (30,)
    assert isinstance(model, ICIS) and info.epochs_run == 60
    cos = F.cosine_similarity(head_targets(out)[24:], w[24:], dim=1)
    assert float(cos.mean()) > 0.8
    assert torch.equal(out.weight[:24], lin.weight)


def test_bad_inputs():
    a, w = _linear_world(C=10)
    lin = nn.Linear(16, 5)
    with pytest.raises(ValueError, match="width 4 does not match the head's row width 17"):
        inject(lin, torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        inject(lin, torch.full((1, 17), float("nan")))
    bad = nn.Linear(16, 5)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        head_targets(bad)
    with pytest.raises(TypeError, match="nn.Linear or a CosineClassifier"):
        head_targets(torch.randn(3, 3))
    with pytest.raises(ValueError, match="one descriptor per seen class"):
        fit_icis(a[:4], w[:5], progress=False, epochs=1)
    with pytest.raises(ValueError, match="width"):
        fit_icis(a[:5], w[:5], a[5:, :3], progress=False, epochs=1)
    with pytest.raises(ValueError, match="NaN"):
        fit_icis(a[:5] * float("nan"), w[:5], progress=False, epochs=1)
    with pytest.raises(ValueError, match="all zero"):
        fit_icis(torch.zeros(5, 12), w[:5], progress=False, epochs=1)
    with pytest.raises(ValueError, match="rescale"):
        inject(lin, torch.randn(1, 17), rescale="unit")
