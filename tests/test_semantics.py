"""Class semantics (issue 12 part 3, CFZSL): the fusion, its errors, the base-class weight choice,
and the "semantics" switch of ICIS and of the DFZSL generator (default path unchanged)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.config import DFZSLConfig, GeneratorConfig, ICISConfig
from dfzsl_fast.nn import CosineClassifier
from dfzsl_fast.pipeline import dfzsl as dfzsl_mod
from dfzsl_fast.pipeline.dfzsl import DFZSL
from dfzsl_fast.pipeline.icis import icis_extend, icis_linear
from dfzsl_fast.semantics import (
    ATTRIBUTE_WEIGHTS,
    SEMANTICS,
    class_semantics,
    select_attribute_weight,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (tests/conftest.py)


def _parts(C=12, D=16, K=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(C, D, generator=g, dtype=dtype) + 2.0  # a large shared component
    att = torch.rand(C, K, generator=g, dtype=dtype)  # non-negative, as xlsa17
    return text, att


# ------------------------------------------------------------------------------------------
# the fusion
# ------------------------------------------------------------------------------------------


def test_single_modes_are_the_normalised_input_bit_for_bit():
    text, att = _parts()
    assert torch.equal(class_semantics(text, None, "text"), F.normalize(text, dim=1))
    assert torch.equal(class_semantics(text, att, "text"), F.normalize(text, dim=1))
    assert torch.equal(class_semantics(None, att, "attributes"), F.normalize(att, dim=1))


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 3.0])
def test_combined_is_centred_weighted_concatenated_and_unit(w):
    text, att = _parts(dtype=torch.float64)
    s = class_semantics(text, att, "combined", weight=w)
    assert s.shape == (12, 16 + 7) and s.dtype == torch.float64
    torch.testing.assert_close(s.norm(dim=1), torch.ones(12, dtype=torch.float64))
    t = F.normalize(text - text.mean(0), dim=1)
    a = F.normalize(att - att.mean(0), dim=1)
    torch.testing.assert_close(s[:, :16], t / math.sqrt(1 + w * w))
    torch.testing.assert_close(s[:, 16:], w * a / math.sqrt(1 + w * w))
    # class similarity in the combined space: the w^2-weighted mean of the parts' cosines
    torch.testing.assert_close(s @ s.T, (t @ t.T + w * w * (a @ a.T)) / (1 + w * w))
    # each part carries energy 1 / (1 + w^2) and w^2 / (1 + w^2) of every row
    torch.testing.assert_close(s[:, 16:].pow(2).sum(1), torch.full((12,), w * w / (1 + w * w),
                                                                   dtype=torch.float64))


def test_combined_ends_are_each_centred_part_alone():
    """w = 0 is the centred text alone and w = inf the centred attributes alone (the limit of
    the weighted mean), both in the (C, D + K) layout, so the selection can pick either."""
    text, att = _parts(dtype=torch.float64)
    t = F.normalize(text - text.mean(0), dim=1)
    a = F.normalize(att - att.mean(0), dim=1)
    zeros_a, zeros_t = torch.zeros(12, 7, dtype=torch.float64), torch.zeros_like(t)
    assert torch.equal(class_semantics(text, att, "combined", weight=0.0),
                       torch.cat([t, zeros_a], dim=1))
    assert torch.equal(class_semantics(text, att, "combined", weight=math.inf),
                       torch.cat([zeros_t, a], dim=1))
    torch.testing.assert_close(class_semantics(text, att, "combined", weight=1e8)[:, 16:], a)
    assert 0.0 in ATTRIBUTE_WEIGHTS and math.inf in ATTRIBUTE_WEIGHTS


def test_combined_centring_removes_the_shared_component():
    text, att = _parts(dtype=torch.float64)
    s = class_semantics(text, att, "combined", weight=1.0)
    raw = class_semantics(text, att, "combined", weight=1.0, center=False)
    # text rows share a large offset: uncentred their mean cosine is high, centred near 0
    off = ~torch.eye(12, dtype=torch.bool)
    assert float((raw[:, :16] @ raw[:, :16].T)[off].mean()) > 0.3
    assert abs(float((s[:, :16] @ s[:, :16].T)[off].mean())) < 0.15


def test_combined_casts_attributes_to_the_text_dtype_and_is_differentiable():
    text, att = _parts()
    text = text.double().requires_grad_()
    s = class_semantics(text, att, "combined")
    assert s.dtype == torch.float64
    s.sum().backward()
    assert text.grad is not None and bool(torch.isfinite(text.grad).all())


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((None, None, "text"), {}, ValueError, "needs the class text"),
        ((None, "A", "combined"), {}, ValueError, "needs the class text"),
        (("T", None, "attributes"), {}, ValueError, "needs class attributes"),
        (("T", None, "combined"), {}, ValueError, "needs class attributes"),
        (("T", "A", "both"), {}, ValueError, "semantics: expected one of"),
        (("T", "A3", "combined"), {}, ValueError, "12 rows but attributes has 3"),
        (("T", "A", "combined"), {"weight": -1.0}, ValueError, "weight"),
        (("T", "A", "combined"), {"weight": float("nan")}, ValueError, "weight"),
        (("T", "A", "combined"), {"weight": True}, ValueError, "weight"),
        (("Tnan", "A", "combined"), {}, ValueError, "text: row 3 contains NaN"),
        ((None, "Anan", "attributes"), {}, ValueError, "attributes: row 3 contains NaN"),
        (("T", "Azero", "attributes"), {}, ValueError, "row 2 is all zero"),
        (("T", "Asame", "combined"), {}, ValueError, r"attributes \(centred\): row 0"),
        (("T1d", None, "text"), {}, TypeError, "floating-point tensor"),
        (("Tint", None, "text"), {}, TypeError, "floating-point tensor"),
    ],
)
def test_errors_are_clear(args, kwargs, exc, match):
    text, att = _parts()
    textnan = text.clone()
    textnan[3, 0] = float("nan")
    attnan = att.clone()
    attnan[3, 1] = float("inf")
    attzero = att.clone()
    attzero[2] = 0
    attsame = att[:1].repeat(12, 1)
    pool = {"T": text, "A": att, "A3": att[:3], "Tnan": textnan, "Anan": attnan,
            "Azero": attzero, "Asame": attsame, "T1d": text[0], "Tint": text.long()}
    args = tuple(pool.get(a, a) if i < 2 else a for i, a in enumerate(args))
    with pytest.raises(exc, match=match):
        class_semantics(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# the weight, chosen on base classes
# ------------------------------------------------------------------------------------------


def _world_for_weights(C=40, D=24, K=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(C, D, generator=g)
    att = torch.rand(C, K, generator=g)
    M_t = torch.randn(D, D, generator=g)
    M_a = torch.randn(K, D, generator=g)
    tc = F.normalize(text - text.mean(0), dim=1)
    ac = F.normalize(att - att.mean(0), dim=1)
    return text, att, tc @ M_t, ac @ M_a


def test_weight_follows_the_part_that_predicts_the_targets():
    text, att, from_text, from_att = _world_for_weights()
    w_t, scores_t = select_attribute_weight(text, att, from_text, return_scores=True)
    w_a, scores_a = select_attribute_weight(text, att, from_att, return_scores=True)
    assert w_t == min(ATTRIBUTE_WEIGHTS) and w_a == max(ATTRIBUTE_WEIGHTS)
    assert set(scores_t) == {float(w) for w in ATTRIBUTE_WEIGHTS}
    assert scores_a[w_a] > scores_a[min(ATTRIBUTE_WEIGHTS)] + 0.05
    # deterministic for a seed
    assert select_attribute_weight(text, att, from_att, seed=3) == select_attribute_weight(
        text, att, from_att, seed=3)


def test_weight_choice_needs_matching_targets():
    text, att, from_text, _ = _world_for_weights()
    with pytest.raises(ValueError, match="targets: 39 rows for 40"):
        select_attribute_weight(text, att, from_text[:39])
    with pytest.raises(ValueError, match="at least 3 base classes"):
        select_attribute_weight(text[:2], att[:2], from_text[:2])


# ------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------


def test_config_fields_defaults_and_validation():
    assert ICISConfig().semantics == "text" and ICISConfig().attribute_weight is None
    assert GeneratorConfig().semantics == "text" and GeneratorConfig().attribute_weight is None
    assert set(SEMANTICS) == {"text", "attributes", "combined"}
    for cls in (ICISConfig, GeneratorConfig):
        with pytest.raises(ValueError, match=f"{cls.__name__}.semantics"):
            cls(semantics="both")
        with pytest.raises(ValueError, match=f"{cls.__name__}.attribute_weight"):
            cls(attribute_weight=-0.5)
        with pytest.raises(ValueError, match=f"{cls.__name__}.attribute_weight"):
            cls(attribute_weight=float("inf"))  # a config is JSON: semantics="attributes"
    with pytest.raises(ValueError, match="needs kind='tfvaegan'"):
        GeneratorConfig(kind="vmf", semantics="combined")
    # the fit_icis keywords stay those it knows
    assert "semantics" not in ICISConfig().fit_kwargs()
    assert "attribute_weight" not in ICISConfig().fit_kwargs()
    c = ICISConfig.from_dict({"semantics": "combined", "attribute_weight": 2})
    assert c.semantics == "combined" and c.attribute_weight == 2.0


# ------------------------------------------------------------------------------------------
# ICIS
# ------------------------------------------------------------------------------------------

C_S, C_U, D, K = 10, 4, 16, 6


def _icis_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(C_S + C_U, D, generator=g), dim=1)
    att = torch.rand(C_S + C_U, K, generator=g)
    W = F.normalize(text[:C_S] + 0.3 * torch.randn(C_S, D, generator=g), dim=1)
    return text, att, CosineClassifier(W, scale=100.0)


FAST = {"hidden": 8, "epochs": 3, "batch_size": 4, "lr": 1e-3, "progress": False}


def test_icis_extend_default_is_the_text_path():
    text, att, head = _icis_inputs()
    base = icis_extend(head, text[:C_S], text[C_S:], **FAST)
    same = icis_extend(head, text[:C_S], text[C_S:], semantics="text",
                       seen_attributes=att[:C_S], unseen_attributes=att[C_S:], **FAST)
    assert torch.equal(base.weight, same.weight)


@pytest.mark.parametrize("sem", ["attributes", "combined"])
def test_icis_extend_with_attributes_and_combined(sem):
    text, att, head = _icis_inputs()
    cfg = ICISConfig(hidden=8, epochs=3, batch_size=4, lr=1e-3, semantics=sem)
    out, model, info = icis_extend(head, text[:C_S], text[C_S:], cfg, return_model=True,
                                   seen_attributes=att[:C_S], unseen_attributes=att[C_S:],
                                   progress=False)
    assert out.weight.shape == (C_S + C_U, D)
    assert torch.equal(out.weight[:C_S], head.weight)
    assert bool(torch.isfinite(out.weight).all())
    assert model.descriptor_dim == (K if sem == "attributes" else D + K)
    assert info.semantics == sem
    if sem == "combined":
        assert info.attribute_weight in ATTRIBUTE_WEIGHTS
        fixed = icis_extend(head, text[:C_S], text[C_S:], seen_attributes=att[:C_S],
                            unseen_attributes=att[C_S:], semantics="combined",
                            attribute_weight=0.5, return_model=True, **FAST)
        assert fixed[2].attribute_weight == 0.5
    else:
        assert info.attribute_weight is None
        # attributes alone need no text
        alone = icis_extend(head, None, None, semantics="attributes",
                            seen_attributes=att[:C_S], unseen_attributes=att[C_S:], **FAST)
        assert torch.equal(alone.weight, out.weight)


def test_icis_extend_errors_before_training():
    text, att, head = _icis_inputs()
    with pytest.raises(ValueError, match="needs class attributes"):
        icis_extend(head, text[:C_S], text[C_S:], ICISConfig(semantics="combined"))
    with pytest.raises(TypeError, match="given both"):
        icis_extend(head, text[:C_S], text[C_S:], ICISConfig(), semantics="combined")
    with pytest.raises(ValueError, match="seen: text has 10 rows but attributes has 9"):
        icis_extend(head, text[:C_S], text[C_S:], semantics="combined",
                    seen_attributes=att[: C_S - 1], unseen_attributes=att[C_S:], **FAST)
    with pytest.raises(ValueError, match="unseen_attributes: width 5 differs"):
        icis_extend(head, text[:C_S], text[C_S:], semantics="combined",
                    seen_attributes=att[:C_S], unseen_attributes=att[C_S:, :5], **FAST)


def _attribute_world(seed=0, C_s=30, C_u=10, D=24, K=8):
    """Rows = text + a part that only the attributes explain: combined must help."""
    g = torch.Generator().manual_seed(seed)
    C = C_s + C_u
    text = F.normalize(torch.randn(C, D, generator=g), dim=1)
    att = torch.rand(C, K, generator=g)
    ac = F.normalize(att - att.mean(0), dim=1)
    rows = F.normalize(text + ac @ torch.randn(K, D, generator=g) / math.sqrt(K), dim=1)
    return text, att, rows, C_s


def test_icis_linear_combined_uses_what_the_attributes_add():
    text, att, rows, C_s = _attribute_world()
    head = CosineClassifier(rows[:C_s], scale=100.0)
    kw = {"seen_attributes": att[:C_s], "unseen_attributes": att[C_s:], "seed": 0}
    cos = {}
    for sem in SEMANTICS:
        lin = icis_linear(head, text[:C_s], text[C_s:], semantics=sem, **kw)
        assert lin.rows.shape == (rows.shape[0], text.shape[1])
        target = F.normalize(rows[C_s:] - (rows[C_s:] @ lin.center)[:, None] * lin.center, dim=1)
        cos[sem] = float(F.cosine_similarity(lin.rows[C_s:], target, dim=1).mean())
        assert (lin.attribute_weight in ATTRIBUTE_WEIGHTS) == (sem == "combined")
    assert cos["combined"] > cos["text"] + 0.02
    assert cos["combined"] > cos["attributes"]
    # the selection's two ends are usable maps too (w = inf: no text block to map back)
    for w in (0.0, math.inf):
        lin = icis_linear(head, text[:C_s], text[C_s:], semantics="combined",
                          attribute_weight=w, **kw)
        assert lin.attribute_weight == w and bool(torch.isfinite(lin.rows).all())


def test_prototype_starts_read_the_combined_semantics():
    """DFZSL's starting prototypes (centred frame) mapped from text + attributes land closer
    to the true new-class directions than from the text alone, where the attributes carry
    what the text misses; the weight is the map's held-out choice."""
    from dfzsl_fast.nn import project_out, text_center
    from dfzsl_fast.pipeline.estimate import prototype_start

    text, att, rows, C_s = _attribute_world()
    seen = torch.arange(C_s)
    c = text_center(text)
    target = F.normalize(project_out(rows, c), dim=1)

    def new_cos(**kw):
        init, tm = prototype_start(text, rows[:C_s], seen, c, seed=0, **kw)
        assert init.shape == text.shape and bool(torch.isfinite(init).all())
        assert float((init @ c).abs().max()) < 1e-5  # in the frame
        return float(F.cosine_similarity(init[C_s:], target[C_s:], dim=1).mean()), tm

    plain, tm_t = new_cos()
    comb, tm_c = new_cos(attributes=att)
    assert tm_t.attribute_weight is None and tm_c.attribute_weight in ATTRIBUTE_WEIGHTS
    assert comb > plain + 0.02
    fixed, tm_f = new_cos(attributes=att, attribute_weight=1.0)
    assert tm_f.attribute_weight == 1.0 and fixed > plain
    alone, _ = new_cos(attributes=att, attribute_weight=math.inf)  # "attributes": finite too
    assert math.isfinite(alone)


def test_icis_linear_default_unchanged():
    text, att, rows, C_s = _attribute_world()
    head = CosineClassifier(rows[:C_s], scale=100.0)
    a = icis_linear(head, text[:C_s], text[C_s:], seed=0)
    b = icis_linear(head, text[:C_s], text[C_s:], seed=0, semantics="text",
                    seen_attributes=att[:C_s], unseen_attributes=att[C_s:])
    assert torch.equal(a.rows, b.rows) and a.text_map.lam == b.text_map.lam
    with pytest.raises(ValueError, match="needs class attributes"):
        icis_linear(head, text[:C_s], text[C_s:], semantics="combined")


def test_icis_linear_golden_text_rows():
    """The text path gives the rows of before issue 12 (sums recorded on the parent commit)."""
    g = torch.Generator().manual_seed(0)
    seen = [0, 2, 3, 5, 7, 8]
    text = F.normalize(torch.randn(9, 16, generator=g), dim=1)
    W = F.normalize(text[seen] + 0.3 * torch.randn(6, 16, generator=g), dim=1)
    lin = icis_linear(CosineClassifier(W, scale=100.0), text[seen], text[[1, 4, 6]], seed=0)
    assert math.isclose(float(lin.rows.double().sum()), 0.2887315165717155, rel_tol=1e-5)
    assert math.isclose(float(lin.rows.double().abs().sum()), 29.031668200390413, rel_tol=1e-6)


# ------------------------------------------------------------------------------------------
# DFZSL generator conditioning
# ------------------------------------------------------------------------------------------

C_ALL, SEEN = 9, [0, 2, 3, 5, 7, 8]
NAMES = [f"class {i}" for i in range(C_ALL)]


def _tiny_config(**generator) -> DFZSLConfig:
    return DFZSLConfig.from_dict({
        "name": "tiny", "template": "a photo of a {}.",
        "simulator": {"epochs": 15, "nsample": 10, "num": 24},
        "flpt": {"batch_size": 64, "residual_hidden": 16},
        "generator": {"epochs": 1, "hidden": 32, "syn_num": 16, "batch_size": 32,
                      "critic_iters": 1, **generator},
        "classifier": {"epochs": 2, "batch_size": 64, "lr": 1e-3, "fallback": False},
    })


def _tiny_world():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(C_ALL, 16, generator=g), dim=1)
    W = F.normalize(text[SEEN] + 0.3 * torch.randn(6, 16, generator=g), dim=1)
    att = torch.rand(C_ALL, 5, generator=torch.Generator().manual_seed(1))
    return text, W, att


def _record_generator_inputs(monkeypatch):
    seen = {}
    import dfzsl_fast.pipeline.generator as gen_mod

    orig_train = gen_mod.train_generator

    def train(features, labels, emb, *a, **k):
        seen["emb"] = emb.clone()
        return orig_train(features, labels, emb, *a, **k)

    orig_key = dfzsl_mod.stage_key

    def key(*parts):
        if parts and parts[0] == "generator":
            seen["key_parts"] = parts
        return orig_key(*parts)

    monkeypatch.setattr(gen_mod, "train_generator", train)
    monkeypatch.setattr(dfzsl_mod, "stage_key", key)
    return seen


def test_generator_default_conditions_and_cache_key_unchanged(monkeypatch):
    text, W, att = _tiny_world()
    rec = _record_generator_inputs(monkeypatch)
    res = DFZSL(_tiny_config(), progress=False).fit(W, NAMES, SEEN, text_features=text)
    assert torch.equal(rec["emb"], F.normalize(res.tuned_text_features, dim=1))
    gkey = rec["key_parts"][2]
    fields = {f.name for f in dataclasses.fields(GeneratorConfig)}
    assert set(gkey) == fields - {"semantics", "attribute_weight"}  # the key of before
    first_parts = rec["key_parts"]
    assert "generator_semantics" not in res.classifier.metadata
    # class_attributes given but unused: the same product
    again = DFZSL(_tiny_config(), progress=False).fit(W, NAMES, SEEN, text_features=text,
                                                      class_attributes=att)
    assert torch.equal(res.classifier.weight, again.classifier.weight)
    from dfzsl_fast.hashing import fingerprint

    assert rec["key_parts"] == first_parts  # no attribute fingerprint in the default key
    assert fingerprint(att) not in rec["key_parts"]


@pytest.mark.parametrize("sem", ["attributes", "combined"])
def test_generator_conditions_on_the_chosen_semantics(monkeypatch, sem):
    text, W, att = _tiny_world()
    rec = _record_generator_inputs(monkeypatch)
    res = DFZSL(_tiny_config(semantics=sem), progress=False).fit(
        W, NAMES, SEEN, text_features=text, class_attributes=att)
    emb = rec["emb"]
    meta = res.classifier.metadata["generator_semantics"]
    assert meta["semantics"] == sem
    if sem == "attributes":
        assert torch.equal(emb, F.normalize(att, dim=1))
        assert meta["attribute_weight"] is None
    else:
        assert meta["attribute_weight"] in ATTRIBUTE_WEIGHTS
        assert torch.allclose(emb, class_semantics(res.tuned_text_features, att, "combined",
                                                   weight=meta["attribute_weight"]))
    from dfzsl_fast.hashing import fingerprint

    assert rec["key_parts"][-1] == fingerprint(att)  # the attributes are part of the key
    assert res.classifier.weight.shape == (C_ALL, 16)
    assert bool(torch.isfinite(res.classifier.weight).all())
    xu, yu = res.features["synthesized"]
    assert xu.shape == (3 * 16, 16) and bool(torch.isfinite(xu).all())


def test_generator_semantics_without_attributes_fails_before_any_work(monkeypatch):
    text, W, att = _tiny_world()
    import dfzsl_fast.pipeline.dfzsl as m

    def boom(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(m, "virtual_stage", boom)
    for sem in ("attributes", "combined"):
        with pytest.raises(ValueError, match="needs class_attributes"):
            DFZSL(_tiny_config(semantics=sem), progress=False).fit(W, NAMES, SEEN,
                                                                   text_features=text)
    bad = att.clone()
    bad[4, 0] = float("nan")
    with pytest.raises(ValueError, match="class_attributes: contains NaN"):
        DFZSL(_tiny_config(semantics="combined"), progress=False).fit(
            W, NAMES, SEEN, text_features=text, class_attributes=bad)
    with pytest.raises(ValueError, match=r"class_attributes: expected \(9, K\)"):
        DFZSL(_tiny_config(semantics="combined"), progress=False).fit(
            W, NAMES, SEEN, text_features=text, class_attributes=att[:8])


# ------------------------------------------------------------------------------------------
# dfzsl-fast inject
# ------------------------------------------------------------------------------------------


def test_cli_inject_with_combined_semantics(tmp_path, capsys):
    import numpy as np

    from dfzsl_fast import cli
    from dfzsl_fast.io import load_classifier, save_classifier

    text, att, head = _icis_inputs()
    names = [f"class{i}" for i in range(C_S + C_U)]
    clf = save_classifier(tmp_path / "base.safetensors", head, class_names=names[:C_S])
    for name, t in (("t_base", text[:C_S]), ("t_new", text[C_S:]), ("a_base", att[:C_S]),
                    ("a_new", att[C_S:])):
        np.save(tmp_path / f"{name}.npy", t.numpy())
    common = ["inject", "--classifier", clf, "--base-descriptors", tmp_path / "t_base.npy",
              "--new-descriptors", tmp_path / "t_new.npy", "--new-names", *names[C_S:],
              "--epochs", "2", "--hidden", "8", "--batch-size", "4", "--no-progress"]
    out = tmp_path / "ext.safetensors"
    # a semantics that needs attributes, without them: a usage error, nothing written
    rc = cli.main([str(a) for a in common + ["--semantics", "combined", "--out", out]])
    assert rc == 2 and "--base-attributes" in capsys.readouterr().err and not out.exists()
    rc = cli.main([str(a) for a in common + [
        "--semantics", "combined", "--base-attributes", tmp_path / "a_base.npy",
        "--new-attributes", tmp_path / "a_new.npy", "--out", out]])
    assert rc == 0, capsys.readouterr().err
    ext, meta = load_classifier(out)
    assert ext.num_classes == C_S + C_U and torch.equal(ext.weight[:C_S], head.weight)
    icis = meta["provenance"]["icis"]
    assert icis["semantics"] == "combined"
    assert icis["attribute_weight_used"] in ATTRIBUTE_WEIGHTS
    assert meta["provenance"]["new_attributes"].endswith("a_new.npy")
