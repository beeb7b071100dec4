"""The centred frame of the final classifier and the held-out-base estimate (issue 8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast.config import ClassifierConfig
from dfzsl_fast.io import load_extended, save_classifier
from dfzsl_fast.metrics import prototype_accuracy
from dfzsl_fast.nn import ExtendedClassifier, project_out, text_center
from dfzsl_fast.pipeline.dfzsl import DFZSL
from dfzsl_fast.pipeline.estimate import prototype_start
from dfzsl_fast.pipeline.text_map import fit_text_map

from .test_dfzsl import NAMES, SEEN, tiny_config, tiny_world


def _shared_world(seed: int = 0, C: int = 12, D: int = 24, shared: float = 0.8):
    """Text with a large shared component; images with another one (CLIP's two cones)."""
    g = torch.Generator().manual_seed(seed)
    tdir, idir = F.normalize(torch.randn(2, D, generator=g), dim=1)
    own = F.normalize(torch.randn(C, D, generator=g), dim=1)
    text = F.normalize(shared * tdir + 0.6 * own, dim=1)
    y = torch.arange(C).repeat_interleave(20)
    x = F.normalize(2.0 * idir + own[y] + 0.3 * torch.randn(y.numel(), D, generator=g), dim=1)
    return text, own, x, y


def test_project_out_and_text_center():
    text, _, x, _ = _shared_world()
    c = text_center(text)
    assert torch.allclose(c.norm(), torch.tensor(1.0))
    p = project_out(x, c)
    assert float((p @ c).abs().max()) < 1e-6
    assert torch.allclose(project_out(p, c), p, atol=1e-7)  # idempotent


def test_centre_makes_the_classifier_blind_to_the_shared_direction():
    text, _, x, _ = _shared_world()
    c = text_center(text)
    P = F.normalize(project_out(text, c), dim=1)
    clf = ExtendedClassifier(P, [f"c{i}" for i in range(12)], list(range(6)), center=c)
    moved = F.normalize(x, dim=1) + 5.0 * c  # any amount of the shared direction
    assert torch.equal(clf.predict(x), clf.predict(moved))


def test_center_saved_and_loaded(tmp_path):
    text, _, x, _ = _shared_world()
    c = text_center(text)
    clf = ExtendedClassifier(F.normalize(project_out(text, c), dim=1),
                             [f"c{i}" for i in range(12)], list(range(6)), center=c)
    save_classifier(tmp_path / "h.safetensors", clf)
    back = load_extended(tmp_path / "h.safetensors")
    assert back.center is not None and torch.equal(back.center, clf.center)
    assert torch.equal(back(x), clf(x))
    with pytest.raises(ValueError, match="center"):
        ExtendedClassifier(text, [f"c{i}" for i in range(12)], [0], center=torch.zeros(24))


@pytest.mark.parametrize("centred", [False, True])
def test_seen_offset_lowers_base_logits_and_round_trips(tmp_path, centred):
    text, _, x, _ = _shared_world()
    names, seen = [f"c{i}" for i in range(12)], [1, 4, 5, 9]
    c = text_center(text) if centred else None
    P = F.normalize(project_out(text, c), dim=1)
    plain = ExtendedClassifier(P, names, seen, center=c)
    calib = ExtendedClassifier(P, names, seen, center=c, seen_offset=2.5)
    want = plain(x).double()
    want[:, seen] -= 2.5
    torch.testing.assert_close(calib(x).double(), want)  # new-class logits untouched
    assert torch.equal(calib.predict(x), want.argmax(1))
    save_classifier(tmp_path / "h.safetensors", calib)
    back = load_extended(tmp_path / "h.safetensors")
    assert back.seen_offset == 2.5 and torch.equal(back(x), calib(x))
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="seen_offset"):
            ExtendedClassifier(P, names, seen, seen_offset=bad)
    assert calib(x[:0]).shape == (0, 12)


def test_prototype_start():
    text, own, _, _ = _shared_world()
    seen = torch.arange(6)
    c = text_center(text)
    mu = own[:6]
    P, tm = prototype_start(text, mu, seen, c, use_map=True, teacher_weight=2.0)
    assert torch.allclose(P.norm(dim=1), torch.ones(12), atol=1e-6)
    assert float((P @ c).abs().max()) < 1e-5
    tc = F.normalize(project_out(text, c), dim=1)
    mapped = F.normalize(project_out(tm.apply(tc), c), dim=1)
    mc = F.normalize(project_out(mu, c), dim=1)
    # new rows: the centred text through the map; base rows: that plus 2 x the centred mean
    assert torch.allclose(P[6:], mapped[6:], atol=1e-6)
    assert torch.allclose(P[:6], F.normalize(mapped[:6] + 2.0 * mc, dim=1), atol=1e-6)
    P_inf, _ = prototype_start(text, mu, seen, c, teacher_weight=float("inf"))
    assert torch.allclose(P_inf[:6], mc, atol=1e-6)
    P2, none = prototype_start(text, mu, seen, c, use_map=False, teacher_weight=0.0)
    assert none is None and torch.allclose(P2, tc, atol=1e-6)
    # published frame: the plain normalised text
    P3, _ = prototype_start(text, mu, seen, None)
    assert torch.allclose(P3, F.normalize(text, dim=1))


def test_teacher_weight_selection_on_a_pseudo_task():
    from dfzsl_fast.pipeline.estimate import pseudo_task, select_teacher_weight
    from dfzsl_fast.pipeline.teacher import Teacher

    text, own, _, _ = _shared_world(C=20, D=24)
    mu = F.normalize(own + 0.1 * text, dim=1)  # the teacher's view: the image-side directions
    teacher = Teacher(own)
    task = pseudo_task(teacher, mu, torch.full((20,), 50.0, dtype=torch.float64), text, seed=0)
    assert task.keep.numel() == 16 and task.hold.numel() == 4
    assert task.x_val.shape == (20 * 50, 24)
    c = text_center(text)
    assert torch.allclose(task.x_val @ c, torch.full((1000,), 0.25), atol=1e-5)
    # the image cone: a shared part of size sqrt(0.5 - 0.25^2) along a direction orthogonal
    # to c, so that the shared parts alone give a pairwise cosine of 0.5
    assert abs(float(task.cone @ c)) < 1e-6
    assert torch.allclose(task.x_val @ task.cone, torch.full((1000,), (0.5 - 0.0625) ** 0.5),
                          atol=1e-5)
    assert torch.allclose(task.x_val.norm(dim=1), torch.ones(1000), atol=1e-5)
    best, scores = select_teacher_weight(task, text, mu, c, seed=0)
    assert best in scores and scores[best] == max(scores.values())
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_text_map_recovers_a_rotation_and_shrinks_to_identity():
    g = torch.Generator().manual_seed(0)
    D, C = 16, 60
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    t = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=1)
    tm = fit_text_map(t, t @ q)  # targets: an exact rotation of the text
    new = F.normalize(torch.randn(5, D, generator=g, dtype=torch.float64), dim=1)
    assert float(F.cosine_similarity(tm.apply(new), new @ q).min()) > 0.95
    # one pair cannot teach a map: the identity prior keeps new texts where they are
    tm1 = fit_text_map(t[:1], (t @ q)[:1])
    assert float(F.cosine_similarity(tm1.apply(new), new).mean()) > 0.8
    with pytest.raises(ValueError, match="one shape"):
        fit_text_map(t, t[:, :3])
    with pytest.raises(ValueError, match="positive"):
        fit_text_map(t, t, lambdas=[0.0])


def test_fit_reports_estimate_and_centres():
    text, W, x, y = tiny_world()
    res = DFZSL(tiny_config(kind="vmf"), progress=False).fit(W, NAMES, SEEN, text_features=text)
    clf = res.classifier
    assert res.estimate is not None and 0.0 <= res.estimate.extended["H"] <= 1.0
    assert "estimate" in clf.metadata or res.fell_back
    if not res.fell_back:
        assert clf.center is not None
        assert float((clf.weight @ clf.center).abs().max()) < 1e-5


def test_fallback_and_override(monkeypatch):
    """When the estimate says no, zero-shot is returned; fallback=false keeps the extension."""
    import dfzsl_fast.pipeline.dfzsl as dfzsl_mod
    from dfzsl_fast.config import DFZSLConfig
    from dfzsl_fast.pipeline.estimate import GainEstimate

    def says_no(*a, **k):
        return GainEstimate(zero_shot={"S": 0.6, "U": 0.6, "H": 0.6},
                            extended={"S": 0.9, "U": 0.1, "H": 0.18}, likely_better=False,
                            likely_worse=True, kappa_val=10.0, held_out=[0])

    monkeypatch.setattr(dfzsl_mod, "estimate_gain", says_no)
    text, W, _, _ = tiny_world()
    d = tiny_config(kind="vmf").to_dict()
    d["classifier"]["fallback"] = True
    cfg = DFZSLConfig.from_dict(d)
    res = DFZSL(cfg, progress=False).fit(W, NAMES, SEEN, text_features=text)
    assert res.fell_back and res.classifier.metadata["method"].startswith("zero-shot")
    assert torch.equal(res.classifier.weight, text)
    assert res.classifier.metadata["estimate"]["likely_better"] is False
    d = cfg.to_dict()
    d["classifier"]["fallback"] = False
    kept = DFZSL(DFZSLConfig.from_dict(d), progress=False).fit(W, NAMES, SEEN,
                                                               text_features=text)
    assert not kept.fell_back and kept.classifier.metadata["method"] == "DFZSL"


def test_classifier_config_checks():
    with pytest.raises(ValueError, match="frame"):
        ClassifierConfig(frame="tilted")
    with pytest.raises(ValueError, match="lr"):
        ClassifierConfig(lr=-1.0)


def test_prototype_accuracy():
    text, own, x, y = _shared_world()
    classes = torch.arange(6, 12)
    m = torch.isin(y, classes)
    acc = prototype_accuracy(own[6:], x[m], y[m], classes)
    pred = classes[(F.normalize(x[m], dim=1) @ own[6:].T).argmax(1)]
    per_class = [float((pred[y[m] == c] == c).double().mean()) for c in classes.tolist()]
    assert abs(acc - sum(per_class) / len(per_class)) < 1e-12
    with pytest.raises(ValueError, match="outside"):
        prototype_accuracy(own[6:], x, y, classes)


def test_icis_linear_injects_in_the_centred_frame():
    from dfzsl_fast.nn import CosineClassifier
    from dfzsl_fast.pipeline.icis import icis_linear

    g = torch.Generator().manual_seed(3)
    D, C_s, C_u = 12, 80, 5
    text, _, _, _ = _shared_world(C=C_s + C_u, D=D)
    c = text_center(text)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    q = q - torch.outer(c, c @ q)  # a map that keeps rows orthogonal to the centre...
    q = q - torch.outer(q @ c, c)  # ...and ignores the centre
    tc = F.normalize(project_out(text, c), dim=1)
    rows_true = F.normalize(tc @ q, dim=1)
    head = CosineClassifier(rows_true[:C_s], scale=100.0)
    lin = icis_linear(head, text[:C_s], text[C_s:], seed=0)
    assert lin.rows.shape == (C_s + C_u, D)
    assert torch.allclose(lin.center, c, atol=1e-6)
    assert float((lin.rows @ lin.center).abs().max()) < 1e-5
    assert torch.allclose(lin.rows[:C_s], rows_true[:C_s], atol=1e-5)  # base rows kept
    # the injected rows recover the new classes' true rows through the learned map
    assert float(F.cosine_similarity(lin.rows[C_s:], rows_true[C_s:]).min()) > 0.9
    with pytest.raises(ValueError, match="icis_extend"):
        icis_linear(head, text[:C_s, :5], text[C_s:, :5])
    with pytest.raises(ValueError, match="bias"):
        icis_linear(torch.nn.Linear(D, C_s), text[:C_s], text[C_s:])


def test_new_class_quality_matches_its_definition():
    from dfzsl_fast.metrics import new_class_quality

    text, own, x, y = _shared_world()
    unseen = torch.arange(6, 12)
    g = torch.Generator().manual_seed(1)
    y_syn = unseen.repeat_interleave(7)
    x_syn = own[y_syn] + 0.5 * torch.randn(y_syn.numel(), own.shape[1], generator=g)
    q = new_class_quality(x_syn, y_syn, text, x, y, unseen)
    means = torch.stack([F.normalize(x_syn[y_syn == c], dim=1).sum(0) for c in unseen.tolist()])
    m = torch.isin(y, unseen)
    assert q["synthesized_means"] == prototype_accuracy(means, x[m], y[m], unseen)
    assert q["text_features"] == prototype_accuracy(text[unseen], x[m], y[m], unseen)
