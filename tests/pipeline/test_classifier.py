from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.config import ClassifierConfig
from dfzsl_fast.nn import CosineClassifier
from dfzsl_fast.pipeline import logit_adjustment, train_final_classifier

SEEN, UNSEEN = [0, 1, 2, 3], [4, 5]
COUNTS = torch.tensor([40, 60, 30, 50, 45, 45])


def _problem(seed=0, spread=1.5):
    """6 separable classes in 16 dims; prototypes start as perturbed class centres."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    y = torch.repeat_interleave(torch.arange(6), COUNTS)
    x = F.normalize(centers[y] + 0.3 * torch.randn(len(y), 16, generator=g), dim=1)
    y_test = torch.arange(6).repeat(30)
    x_test = F.normalize(centers[y_test] + 0.3 * torch.randn(len(y_test), 16, generator=g), dim=1)
    init = centers + spread * torch.randn(6, 16, generator=g)
    return x, y, x_test, y_test, init


def test_logit_adjustment_formula():
    y = torch.repeat_interleave(torch.arange(6), COUNTS)
    adj = logit_adjustment(y, SEEN, UNSEEN, 6)
    seen_total = 40 + 60 + 30 + 50
    expected = [math.log(c / seen_total) + math.log(0.5) for c in (40, 60, 30, 50)]
    expected += [math.log(1 / 2) + math.log(0.5)] * 2
    torch.testing.assert_close(adj, torch.tensor(expected, dtype=torch.float64))
    adj2 = logit_adjustment(y, SEEN, UNSEEN, 6, ratio=3.0)  # p0(seen) = 1 / (1 + 1/3) = 0.75
    torch.testing.assert_close(
        adj2[:4] - adj[:4], torch.full((4,), math.log(0.75 / 0.5), dtype=torch.float64)
    )
    torch.testing.assert_close(
        adj2[4:] - adj[4:], torch.full((2,), math.log(0.25 / 0.5), dtype=torch.float64)
    )
    # interleaved groups: seen classes need not come first
    adj3 = logit_adjustment(torch.tensor([1, 1, 3]), [1, 3], [0, 2], 4)
    torch.testing.assert_close(
        adj3.exp(), torch.tensor([0.25, 1 / 3, 0.25, 1 / 6], dtype=torch.float64)
    )


def test_training_matches_a_reference_loop():
    """Full-batch epochs equal Adam(beta1 0.5) on F.cross_entropy(100 cos + adjustment)."""
    x, y, _, _, init = _problem()
    head = train_final_classifier(
        x, y, init, SEEN, UNSEEN, ClassifierConfig(lr=1e-3), epochs=3, batch_size=10_000,
        progress=False,
    )
    assert isinstance(head, CosineClassifier) and head.scale == 100.0 and head.learnable
    adj = logit_adjustment(y, SEEN, UNSEEN, 6).float()
    P = torch.nn.Parameter(F.normalize(init, dim=1).clone())
    opt = torch.optim.Adam([P], lr=1e-3, betas=(0.5, 0.999))
    for _ in range(3):
        logits = 100.0 * F.normalize(x, dim=1) @ F.normalize(P, dim=1).T
        loss = F.cross_entropy(logits + adj, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(head.weight.detach(), P.detach(), rtol=1e-4, atol=1e-5)
    plain = train_final_classifier(
        x,
        y,
        init,
        SEEN,
        UNSEEN,
        ClassifierConfig(lr=1e-3, logit_adjust=False),
        epochs=3,
        batch_size=10_000,
        progress=False,
    )
    assert not torch.allclose(plain.weight, head.weight, atol=1e-6)


def test_training_improves_accuracy_and_test_time_is_plain_argmax():
    x, y, x_test, y_test, init = _problem()
    before = float(
        ((F.normalize(x_test, dim=1) @ F.normalize(init, dim=1).T).argmax(1) == y_test)
        .float()
        .mean()
    )
    seen_epochs = []
    head = train_final_classifier(
        x,
        y,
        init,
        SEEN,
        UNSEEN,
        ClassifierConfig(lr=1e-2),
        epochs=30,
        batch_size=64,
        seed=0,
        progress=False,
        callback=lambda epoch, h, loss: seen_epochs.append((epoch, loss)),
    )
    after = float((head.predict(x_test) == y_test).float().mean())
    assert before < 0.6 and after > 0.9, (before, after)
    assert [e for e, _ in seen_epochs] == list(range(30))
    assert seen_epochs[-1][1] < seen_epochs[0][1]
    logits = head(x_test)
    assert torch.equal(head.predict(x_test), logits.argmax(1))  # no adjustment at test time


def test_seeded_and_deterministic():
    x, y, _, _, init = _problem()
    kw = dict(config=ClassifierConfig(lr=1e-2), epochs=2, batch_size=32, progress=False)
    a = train_final_classifier(x, y, init, SEEN, UNSEEN, seed=1, **kw)
    b = train_final_classifier(x, y, init, SEEN, UNSEEN, seed=1, **kw)
    c = train_final_classifier(x, y, init, SEEN, UNSEEN, seed=2, **kw)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)


ONE_EPOCH = dict(epochs=1, batch_size=8, progress=False)


def test_bad_inputs():
    x, y, _, _, init = _problem()
    with pytest.raises(ValueError, match="overlap"):
        train_final_classifier(x, y, init, [0, 1, 2, 3], [3, 4, 5], **ONE_EPOCH)
    with pytest.raises(ValueError, match="cover all 6 classes"):
        train_final_classifier(x, y, init, [0, 1, 2], [4, 5], **ONE_EPOCH)
    with pytest.raises(ValueError, match="seen class 2 has no training samples"):
        train_final_classifier(x[y != 2], y[y != 2], init, SEEN, UNSEEN, **ONE_EPOCH)
    with pytest.raises(ValueError, match="width 8 does not match"):
        train_final_classifier(x, y, init[:, :8], SEEN, UNSEEN, **ONE_EPOCH)
    bad = init.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_final_classifier(x, y, bad, SEEN, UNSEEN, **ONE_EPOCH)
    with pytest.raises(ValueError, match="class indices"):
        train_final_classifier(x, y, init, [0, 1, 2, 3], [4, 9], **ONE_EPOCH)
    with pytest.raises(TypeError, match="int64"):
        train_final_classifier(x, y.int(), init, SEEN, UNSEEN, **ONE_EPOCH)
    with pytest.raises(ValueError, match="ratio"):
        logit_adjustment(y, SEEN, UNSEEN, 6, ratio=0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_streamed_batch_with_nan_or_inf_is_refused_before_the_step(bad):
    # rows of a Rows source are checked per batch (through the batch's loss); the error names
    # the features and comes before the optimizer step of that batch
    from dfzsl_fast.synthesis import TensorRows

    x, y, _, _, init = _problem()
    x = x.clone()
    x[-1, 3] = bad  # one entry of one row: the last batch of the shuffled epoch or an earlier one
    seen_steps = []
    with pytest.raises(ValueError, match="Rows source holds NaN or Inf"):
        train_final_classifier(TensorRows(x, y), None, init, SEEN, UNSEEN,
                               callback=lambda *a: seen_steps.append(a), **ONE_EPOCH)
    assert not seen_steps  # the epoch never completed
