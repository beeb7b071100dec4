from __future__ import annotations

import numpy as np
import pytest
import torch

from dfzsl_fast.metrics import base_to_new_scores, gzsl_scores, harmonic_mean, per_class_accuracy

# ecosystem.md 2.4 toy case: 3 seen, 2 unseen classes
Y_SEEN = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
P_SEEN = [0, 0, 3, 4, 1, 1, 2, 2, 2, 3]


def test_per_class_accuracy_toy_case():
    acc, cnt = per_class_accuracy(torch.tensor(P_SEEN), torch.tensor(Y_SEEN), classes=[0, 1, 2])
    torch.testing.assert_close(acc, torch.tensor([0.5, 1.0, 0.75], dtype=torch.float64))
    assert cnt.tolist() == [4, 2, 4]


def test_per_class_accuracy_absent_class_is_nan_and_numpy_input():
    acc, cnt = per_class_accuracy(np.array(P_SEEN), np.array(Y_SEEN), num_classes=5)
    assert cnt.tolist() == [4, 2, 4, 0, 0]
    assert torch.isnan(acc[3:]).all()


def test_gzsl_toy_case_not_torchmetrics_macro():
    # unseen test samples: class 3 twice (one right), class 4 once (wrong)
    y = Y_SEEN + [3, 3, 4]
    p = P_SEEN + [3, 0, 3]
    out = gzsl_scores(torch.tensor(p), torch.tensor(y), [0, 1, 2], [3, 4])
    assert out["S"] == pytest.approx(0.75)  # not 0.45 (torchmetrics macro over all 5 classes)
    assert out["U"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["H"] == pytest.approx(2 * 0.75 * 0.25 / 1.0)
    assert out["n_seen"] == 10 and out["n_unseen"] == 3
    assert out["absent_seen"] == [] and out["absent_unseen"] == []


def test_gzsl_matches_sklearn_balanced_accuracy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 12, (500,), generator=g)
    p = torch.where(
        torch.rand(500, generator=g) < 0.6, y, torch.randint(0, 12, (500,), generator=g)
    )
    seen, unseen = list(range(8)), list(range(8, 12))
    out = gzsl_scores(p, y, seen, unseen)
    ms, mu = y < 8, y >= 8
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sklearn_metrics.balanced_accuracy_score(y[ms].numpy(), p[ms].numpy())
        u = sklearn_metrics.balanced_accuracy_score(y[mu].numpy(), p[mu].numpy())
    assert out["S"] == pytest.approx(s)
    assert out["U"] == pytest.approx(u)


def test_gzsl_logits_equal_predictions_and_brute_force():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 7, generator=g)
    y = torch.randint(0, 7, (300,), generator=g)
    a = gzsl_scores(logits, y, [0, 2, 4, 6], [1, 3, 5])
    b = gzsl_scores(logits.argmax(1), y, [0, 2, 4, 6], [1, 3, 5])
    assert a["H"] == b["H"]
    pred = logits.argmax(1)
    s = np.mean([(pred[y == c] == c).float().mean().item() for c in [0, 2, 4, 6]])
    u = np.mean([(pred[y == c] == c).float().mean().item() for c in [1, 3, 5]])
    assert a["S"] == pytest.approx(s) and a["U"] == pytest.approx(u)


def test_gzsl_absent_class_excluded_and_reported():
    y = torch.tensor([0, 0, 1, 3])
    p = torch.tensor([0, 1, 1, 3])
    out = gzsl_scores(p, y, seen_classes=[0, 1, 2], unseen_classes=[3, 4])
    assert out["S"] == pytest.approx((0.5 + 1.0) / 2)  # class 2 absent: not a 0
    assert out["absent_seen"] == [2] and out["absent_unseen"] == [4]
    assert out["U"] == 1.0


def test_gzsl_h_zero_when_both_zero():
    out = gzsl_scores(torch.tensor([1, 0]), torch.tensor([0, 1]), [0], [1])
    assert out["S"] == out["U"] == out["H"] == 0.0
    assert harmonic_mean(0, 0) == 0.0


@pytest.mark.parametrize(
    "pred, target, seen, unseen, match",
    [
        ([], [], [0], [1], "empty"),
        ([0, 1], [0, 1], [0, 1], [1], "overlap"),
        ([0, 1], [0, 5], [0], [1], "neither"),
        ([0, 0], [0, 0], [0], [1], "unseen_classes"),
        ([1, 1], [1, 1], [0], [1], "seen_classes"),
        ([0, 1, 1], [0, 1], [0], [1], "rows"),
        ([0, 1], [0, 1], [], [1], "seen_classes"),
        ([0, 1], [-1, 1], [0], [1], "negative"),
    ],
)
def test_gzsl_errors(pred, target, seen, unseen, match):
    with pytest.raises(ValueError, match=match):
        gzsl_scores(
            torch.tensor(pred, dtype=torch.long),
            torch.tensor(target, dtype=torch.long),
            seen,
            unseen,
        )


def test_gzsl_nan_logits_and_float_labels_rejected():
    with pytest.raises(ValueError, match="NaN"):
        gzsl_scores(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), [0], [1])
    with pytest.raises(TypeError, match="target"):
        gzsl_scores(torch.tensor([0, 1]), torch.tensor([0.5, 1.0]), [0], [1])


def _b2n_case():
    # 2 base (0, 1), 2 new (2, 3). Base sample 0's global argmax is new class 2, but inside the
    # base block it is correctly class 0.
    logits = torch.tensor(
        [
            [0.5, 0.1, 0.9, 0.0],  # y=0: global argmax 2, base argmax 0 (right)
            [0.9, 0.2, 0.0, 0.0],  # y=1: base argmax 0 (wrong)
            [0.0, 0.0, 0.1, 0.8],  # y=3: new argmax 3 (right)
            [0.9, 0.0, 0.3, 0.2],  # y=2: global argmax 0, new argmax 2 (right)
            [0.0, 0.0, 0.1, 0.2],  # y=2: new argmax 3 (wrong)
        ]
    )
    y = torch.tensor([0, 1, 3, 2, 2])
    return logits, y


def test_base_to_new_restricted_argmax_sample_level():
    logits, y = _b2n_case()
    out = base_to_new_scores(logits, y, base_classes=[0, 1], new_classes=[2, 3])
    assert out["B"] == pytest.approx(0.5)
    assert out["N"] == pytest.approx(2 / 3)  # sample-level: 2 of 3 new samples
    assert out["HM"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert out["n_base"] == 2 and out["n_new"] == 3
    pc = base_to_new_scores(logits, y, [0, 1], [2, 3], per_class=True)
    assert pc["N"] == pytest.approx((0.5 + 1.0) / 2)  # per-class variant differs


def test_base_to_new_scorer_callable():
    logits, y = _b2n_case()
    calls = []

    def scorer(classes: torch.Tensor) -> torch.Tensor:
        calls.append(classes.tolist())
        return logits[:, classes]

    a = base_to_new_scores(scorer, y, [0, 1], [2, 3])
    b = base_to_new_scores(logits.numpy(), y, [0, 1], [2, 3])
    assert a["HM"] == b["HM"]
    assert calls == [[0, 1], [2, 3]]


def test_base_to_new_errors():
    logits, y = _b2n_case()
    with pytest.raises(ValueError, match="predictions"):
        base_to_new_scores(logits.argmax(1), y, [0, 1], [2, 3])
    with pytest.raises(ValueError, match="scorer returned shape"):
        base_to_new_scores(lambda c: logits[:2, c], y, [0, 1], [2, 3])
    with pytest.raises(ValueError, match="overlap"):
        base_to_new_scores(logits, y, [0, 1, 2], [2, 3])
    with pytest.raises(ValueError, match="empty"):
        base_to_new_scores(logits[:0], y[:0], [0, 1], [2, 3])
    with pytest.raises(ValueError, match="out of range"):
        base_to_new_scores(logits, y, [0, 1], [2, 3, 4])
    with pytest.raises(ValueError, match="new_classes"):
        base_to_new_scores(logits[:2], y[:2], [0, 1], [2, 3])
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        base_to_new_scores(bad, y, [0, 1], [2, 3])
