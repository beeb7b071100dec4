"""SHIP (method.md 4.2): the VAE that synthesizes through the text tower, as a feature
generator and as DFZSL's `generator.kind="ship"`, on a tiny random-weight open_clip tower."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.config import SHIPConfig
from dfzsl_fast.models.ship import SHIPVAE
from dfzsl_fast.pipeline.ship import ship_prompts, train_ship
from dfzsl_fast.synthesis import SHIPGenerator, generate_all

D = 16
NAMES = ["zebra", "horse", "tiger", "lion", "whale", "dolphin"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def tower():
    from dfzsl_fast.testing import tiny_open_clip_tower

    return tiny_open_clip_tower(D)


def _cfg(**kw):
    base = dict(latent=8, enc_hidden=32, gen_hidden=32, batch_size=32, epochs=3, lr=1e-2)
    return SHIPConfig(**{**base, **kw})


def _data(tower, n=40):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        text = tower.encode([TEMPLATE.format(c) for c in NAMES])
    y = torch.arange(4).repeat_interleave(n)  # classes 0..3 are "base"
    x = F.normalize(text[y] + 0.3 * torch.randn(y.numel(), D, generator=g), dim=1)
    return x, y, text


def test_per_row_context_equals_shared_context(tower):
    prompts = ship_prompts(tower, TEMPLATE, NAMES, _cfg())
    ctx = 0.02 * torch.randn(4, tower.width)
    idx = torch.tensor([0, 3, 3, 5])
    shared = prompts(ctx, idx)
    per_row = prompts(ctx.expand(4, -1, -1).clone(), idx)
    torch.testing.assert_close(per_row, shared, rtol=1e-5, atol=1e-6)
    # a different context on one row changes that row only
    other = ctx.expand(4, -1, -1).clone()
    other[2] += torch.randn(4, tower.width)  # (a constant shift would vanish in LayerNorm)
    moved = prompts(other, idx)
    torch.testing.assert_close(moved[[0, 1, 3]], shared[[0, 1, 3]], rtol=1e-5, atol=1e-6)
    assert (moved[2] - shared[2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="per-row"):
        prompts(other)
    with pytest.raises(ValueError, match="rows"):
        prompts(other[:3], idx)


def test_training_lowers_the_loss_and_generates_rows_of_the_class(tower):
    x, y, text = _data(tower)
    cfg = _cfg()
    prompts = ship_prompts(tower, TEMPLATE, NAMES, cfg)
    untrained = SHIPVAE(D, tower.width, latent_dim=8, enc_hidden=32, gen_hidden=32, seed=0)

    def rec_error(model):
        with torch.no_grad():
            mu, _ = model.encode(x)
            return float((model.decode(mu, prompts, y) - x).pow(2).sum(1).mean())

    model = train_ship(x, y, NAMES, tower, TEMPLATE, cfg, progress=False)
    assert rec_error(model) < 0.8 * rec_error(untrained)
    gen = SHIPGenerator(model, prompts)
    xs, ys = generate_all(gen, text, [4, 5], 10, seed=3)
    assert xs.shape == (20, D) and ys.tolist() == [4] * 10 + [5] * 10
    torch.testing.assert_close(xs.norm(dim=1), torch.ones(20))
    # row (c, r) is a pure function of (seed, c, r) (to the tower's rounding)
    one = gen.generate(text, torch.tensor([5]), torch.tensor([7]), seed=3)
    torch.testing.assert_close(one[0], xs[17], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(gen.generate(text, torch.tensor([5]), torch.tensor([7]), seed=4),
                              one)
    # rows of a class are distinct draws, and a new class's rows sit nearer its own text
    assert torch.cdist(xs[:10], xs[:10]).add(torch.eye(10)).min() > 1e-5
    assert gen.describe()["kind"] == "ship"


def test_bad_inputs(tower):
    x, y, _ = _data(tower)
    from dfzsl_fast.text.towers import FixedTextFeatures

    fixed = FixedTextFeatures(torch.randn(6, D), NAMES)
    with pytest.raises(TypeError, match="text encoder"):
        train_ship(x, y, NAMES, fixed, TEMPLATE, _cfg(), progress=False)
    with pytest.raises(ValueError, match="width"):
        train_ship(x[:, :8], y, NAMES, tower, TEMPLATE, _cfg(), progress=False)
    with pytest.raises(ValueError, match="class indices"):
        train_ship(x, y + 10, NAMES, tower, TEMPLATE, _cfg(), progress=False)
    with pytest.raises(ValueError, match="activation"):
        SHIPConfig(activation="tanh")
    model = SHIPVAE(D, tower.width, latent_dim=8, enc_hidden=32, gen_hidden=32, n_ctx=2)
    with pytest.raises(ValueError, match="context slots"):
        SHIPGenerator(model, ship_prompts(tower, TEMPLATE, NAMES, _cfg()))


def test_dfzsl_with_the_ship_generator(tower):
    from dfzsl_fast.config import DFZSLConfig
    from dfzsl_fast.pipeline.dfzsl import DFZSL

    names = NAMES + ["owl", "eagle", "cat"]
    seen = [0, 2, 3, 5, 7, 8]
    with torch.no_grad():
        text = tower.encode([TEMPLATE.format(n) for n in names])
    W = F.normalize(text[seen] + 0.1 * torch.randn(6, D, generator=torch.Generator()
                                                    .manual_seed(0)), dim=1)
    cfg = DFZSLConfig.from_dict({
        "name": "tiny", "template": TEMPLATE,
        "simulator": {"epochs": 15, "nsample": 10, "num": 24},
        "flpt": {"epochs": 1, "validate": False, "batch_size": 64, "residual_hidden": 16},
        "generator": {"kind": "ship", "syn_num": 12},
        "ship": {"latent": 8, "enc_hidden": 32, "gen_hidden": 32, "epochs": 2,
                 "batch_size": 32},
        "classifier": {"epochs": 2, "batch_size": 64, "lr": 1e-3, "fallback": False},
    })
    res = DFZSL(cfg, progress=False).fit(W, names, seen, text_tower=tower)
    xu, yu = res.features["synthesized"]
    assert xu.shape == (3 * 12, D) and sorted(set(yu.tolist())) == [1, 4, 6]
    assert torch.isfinite(res.classifier.weight).all()
    with pytest.raises(ValueError, match="synthesizes through the text tower"):
        DFZSL(cfg, progress=False).fit(W, names, seen, text_features=text)


def test_coop_and_coop_with_ship(tower):
    from dfzsl_fast.config import CoOpConfig
    from dfzsl_fast.evaluation import evaluate_head
    from dfzsl_fast.pipeline.coop import train_coop

    x, y, text = _data(tower)
    seen, unseen = [0, 1, 2, 3], [4, 5]
    cfg = CoOpConfig(epochs=4, batch_size=32, lr=2e-3, synthetic_pool=20, class_specific=False,
                     select=False, lr_candidates=())
    from dfzsl_fast.ops.cosine import cosine_cross_entropy

    def base_loss(head):
        return float(cosine_cross_entropy(x, head.weight.detach(), y, 100.0))

    zs = CoOpConfig(epochs=1, lr=1e-12, lr_candidates=(), select=False,
                    class_specific=False)  # (almost) no step: the init prompts
    start = base_loss(train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, zs, progress=False))
    coop = train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, cfg, progress=False)
    assert coop.weight.shape == (6, D) and base_loss(coop) < start - 0.01
    ship = train_ship(x, y, NAMES, tower, TEMPLATE, _cfg(), progress=False)
    gen = SHIPGenerator(ship, ship_prompts(tower, TEMPLATE, NAMES, _cfg()))
    with_ship = train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, cfg, generator=gen,
                           class_embeddings=text, progress=False)
    assert not torch.allclose(with_ship.weight, coop.weight)
    # the synthetic rows are labelled with the new classes: CoOp + SHIP predicts new classes
    # for its own synthetic rows more often than CoOp does
    xs, _ = generate_all(gen, text, unseen, 20, seed=0)
    new = torch.tensor(unseen)
    assert torch.isin(with_ship.predict(xs), new).float().mean() >= \
        torch.isin(coop.predict(xs), new).float().mean()
    s, _ = evaluate_head(with_ship, x, y, seen, unseen)
    assert 0 <= s["gzsl"]["S"] <= 1
    # the centred frame: the same direction out of features and prompts; an ExtendedClassifier
    from dfzsl_fast.nn import ExtendedClassifier, project_out, text_center

    c = text_center(text)
    centred = train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, cfg, center=c,
                         progress=False)
    assert isinstance(centred, ExtendedClassifier)
    assert float((centred.weight @ c).abs().max()) < 1e-5  # prompts carry no centre
    logits = F.normalize(project_out(F.normalize(x, dim=1), c), dim=1) @ centred.weight.T
    assert torch.equal(centred.predict(x), logits.argmax(1))
    # one fresh draw per step (SHIP's recipe) runs too
    fresh = CoOpConfig(epochs=1, batch_size=64, synthetic_pool=None, select=False)
    train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, fresh, generator=gen,
               class_embeddings=text, progress=False)


class _Recording(SHIPGenerator):
    """SHIP's generator, recording which classes it is asked for, in order."""

    asked: list

    def generate(self, E, class_ids, row_ids, **kw):
        self.asked.append(sorted(set(class_ids.tolist())))
        return super().generate(E, class_ids, row_ids, **kw)


def test_coop_class_specific_and_selection_on_held_out_base_classes(tower):
    from dfzsl_fast.config import CoOpConfig
    from dfzsl_fast.pipeline.coop import OFFSETS, train_coop

    x, y, text = _data(tower)
    seen, unseen = [0, 1, 2, 3], [4, 5]
    ship = train_ship(x, y, NAMES, tower, TEMPLATE, _cfg(), progress=False)
    gen = _Recording(ship, ship_prompts(tower, TEMPLATE, NAMES, _cfg()))
    gen.asked = []
    cfg = CoOpConfig(epochs=2, batch_size=32, synthetic_pool=10, lr_candidates=(1e-3, 0.5),
                     holdout=0.25)
    head = train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, cfg, generator=gen,
                      class_embeddings=text, progress=False)
    assert head.ctx.shape == (6, cfg.n_ctx, tower.width)  # one context per class (CSC)
    meta = head.metadata
    assert meta["lr"] in cfg.lr_candidates and head.seen_offset in OFFSETS
    assert meta["seen_offset"] == head.seen_offset and "held-out base" in meta["selection"]
    # the pseudo tasks (one per learning rate) draw synthetic rows of one held-out BASE class
    # only; the real new classes are asked for once, by the final fit
    assert len(gen.asked) == 3 and gen.asked[-1] == unseen
    assert all(len(a) == 1 and a[0] in seen for a in gen.asked[:2])
    # the offset is part of the head: base logits lowered by it
    logits = head(x)
    plain = 100.0 * F.normalize(x, dim=1) @ head.weight.T
    plain[:, seen] -= head.seen_offset
    torch.testing.assert_close(logits, plain, atol=1e-4, rtol=1e-5)
    # deterministic
    again = train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, cfg, generator=gen,
                       class_embeddings=text, progress=False)
    assert torch.equal(again.weight, head.weight) and again.seen_offset == head.seen_offset
    # shared context when asked; bad candidates named
    shared = train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen,
                        CoOpConfig(epochs=1, batch_size=64, class_specific=False, select=False),
                        progress=False)
    assert shared.ctx.shape == (cfg.n_ctx, tower.width) and shared.seen_offset == 0.0
    with pytest.raises(ValueError, match="lr_candidates"):
        CoOpConfig(lr_candidates=(0.1, -1.0))
    with pytest.raises(TypeError, match="lr_candidates"):
        CoOpConfig(lr_candidates=0.1)
    with pytest.raises(ValueError, match="holdout"):
        CoOpConfig(holdout=1.0)
    with pytest.raises(ValueError, match="base-class"):
        train_coop(x, y + 2, NAMES, tower, TEMPLATE, seen, unseen, cfg, progress=False)
    with pytest.raises(ValueError, match="class_embeddings"):
        train_coop(x, y, NAMES, tower, TEMPLATE, seen, unseen, cfg, generator=gen,
                   progress=False)
