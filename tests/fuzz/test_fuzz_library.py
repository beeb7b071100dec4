"""Property-based tests of the library's other public entry points (metrics, pipeline stages,
the extended classifier, the text map, the simulated worlds).

Each entry point gets valid arguments, then one argument is replaced by a hostile value. The
call must either raise TypeError/ValueError (naming the argument) or return a result whose
floating tensors are finite; any other exception type (IndexError, RuntimeError from torch, ...)
or a NaN from finite input fails.
"""

from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dfzsl_fast import metrics  # noqa: E402
from dfzsl_fast.clip_world import build_clip_world, text_statistics  # noqa: E402
from dfzsl_fast.config import ClassifierConfig, GeneratorConfig  # noqa: E402
from dfzsl_fast.evaluation import evaluate_head  # noqa: E402
from dfzsl_fast.hashing import fingerprint, mix_seed  # noqa: E402
from dfzsl_fast.models import TFVAEGAN  # noqa: E402
from dfzsl_fast.nn import (  # noqa: E402
    CosineClassifier,
    ExtendedClassifier,
    project_out,
    text_center,
)
from dfzsl_fast.pipeline import (  # noqa: E402
    Teacher,
    default_kappa,
    fit_icis,
    fit_vmf_means,
    head_targets,
    inject,
    logit_adjustment,
    select_trusted,
    synthesize,
    train_final_classifier,
    virtual_features,
    zero_shot_classifier,
)
from dfzsl_fast.pipeline.estimate import prototype_start  # noqa: E402
from dfzsl_fast.pipeline.generator import train_generator  # noqa: E402
from dfzsl_fast.pipeline.icis import icis_linear  # noqa: E402
from dfzsl_fast.pipeline.text_map import fit_text_map  # noqa: E402
from dfzsl_fast.plots import plot_per_class_accuracy, project_2d  # noqa: E402
from dfzsl_fast.text.towers import FixedTextFeatures  # noqa: E402
from dfzsl_fast.world import build_world  # noqa: E402

NAN, INF = float("nan"), float("inf")
HOSTILE = [
    None, "x", 3, -1, 2**70, 1.5, NAN, True, [], [[1.0, NAN]], {"a": 1},
    torch.tensor(NAN), torch.zeros(0), torch.zeros(0, 4), torch.zeros(3, 0),
    torch.full((3, 4), NAN), torch.full((3, 4), INF), torch.zeros(3, 4), torch.ones(3, 4) * 1e30,
    torch.ones(3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.bool),
    torch.ones(3, 4, dtype=torch.complex64), torch.ones(2, 3, 4), torch.tensor([0, 1, 99]),
    torch.tensor([-1, 0, 1]), torch.tensor([0.5, 1.0, 2.0]), torch.ones(3, 4, device="meta"),
]


def _finite_tensors(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "meta" or not (obj.is_floating_point() or obj.is_complex()):
            return True
        return bool(torch.isfinite(obj).all())
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite_tensors(v) for k, v in obj.items() if not str(k).startswith("per_"))
    if isinstance(obj, (list, tuple)):
        return all(_finite_tensors(v) for v in obj)
    if isinstance(obj, torch.nn.Module):
        return all(_finite_tensors(p) for p in obj.parameters())
    return True


def _inputs_finite(kwargs) -> bool:
    def ok(v):
        if isinstance(v, torch.Tensor):
            return (v.device.type != "meta" and not v.is_complex()
                    and (not v.is_floating_point() or bool(torch.isfinite(v).all())))
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        return True
    return all(ok(v) for v in kwargs.values())


_PLOT_DIR = __import__("pathlib").Path(__import__("tempfile").mkdtemp(prefix="dfzsl-fuzz-"))


def _g():
    return torch.Generator().manual_seed(0)


def _teacher():
    return Teacher(torch.randn(4, 8, generator=_g()))


def _classifier_problem():
    g = _g()
    x = torch.randn(24, 8, generator=g)
    y = torch.arange(6).repeat(4)
    return {"features": x, "labels": y, "init_weights": torch.randn(6, 8, generator=g),
            "seen_classes": [0, 1, 2, 3], "unseen_classes": [4, 5],
            "config": ClassifierConfig(), "epochs": 1, "batch_size": 8, "progress": False}


ENTRY_POINTS = {
    "gzsl_scores": (metrics.gzsl_scores, lambda: {
        "pred": torch.tensor([0, 1, 2, 3, 0, 1]), "target": torch.tensor([0, 1, 2, 3, 3, 2]),
        "seen_classes": [0, 1], "unseen_classes": [2, 3]}),
    "base_to_new_scores": (metrics.base_to_new_scores, lambda: {
        "logits": torch.randn(6, 4, generator=_g()), "target": torch.tensor([0, 1, 2, 3, 3, 2]),
        "base_classes": [0, 1], "new_classes": [2, 3]}),
    "per_class_accuracy": (metrics.per_class_accuracy, lambda: {
        "pred": torch.tensor([0, 1, 2]), "target": torch.tensor([0, 1, 1])}),
    "harmonic_mean": (metrics.harmonic_mean, lambda: {"a": 0.5, "b": 0.25}),
    "logit_adjustment": (logit_adjustment, lambda: {
        "labels": torch.tensor([0, 1, 2, 3]), "seen_classes": [0, 1], "unseen_classes": [2, 3],
        "num_classes": 4}),
    "default_kappa": (default_kappa, lambda: {"text_features": torch.randn(4, 8, generator=_g())}),
    "virtual_features": (virtual_features, lambda: {
        "mu": torch.randn(4, 8, generator=_g()), "kappa": 50.0, "num_per_class": 3,
        "teacher": _teacher()}),
    "train_final_classifier": (train_final_classifier, _classifier_problem),
    "fit_text_map": (fit_text_map, lambda: {
        "text": torch.randn(6, 8, generator=_g()), "targets": torch.randn(6, 8, generator=_g())}),
    "zero_shot_classifier": (zero_shot_classifier, lambda: {
        "text_features": torch.randn(6, 8, generator=_g()),
        "class_names": [f"c{i}" for i in range(6)], "seen_classes": [0, 1, 2]}),
    "ExtendedClassifier": (ExtendedClassifier, lambda: {
        "weight": torch.randn(6, 8, generator=_g()),
        "class_names": [f"c{i}" for i in range(6)], "seen_classes": [0, 1, 2],
        "shift": torch.randn(8, generator=_g()) * 0.1, "center": torch.randn(8, generator=_g())}),
    "project_out": (project_out, lambda: {"x": torch.randn(3, 8, generator=_g()),
                                          "center": torch.nn.functional.normalize(
                                              torch.randn(8, generator=_g()), dim=0)}),
    "text_center": (text_center, lambda: {"text_features": torch.randn(6, 8, generator=_g())}),
    "fit_vmf_means": (fit_vmf_means, lambda: {
        "teacher": _teacher(), "text_features": torch.randn(4, 8, generator=_g()),
        "kappa": 20.0, "steps": 2, "nsample": 2, "progress": False}),
    "select_trusted": (select_trusted, lambda: {
        "x": torch.randn(8, 8, generator=_g()), "y": torch.arange(4).repeat(2),
        "teacher": _teacher(), "allow_empty_class": True}),
    "Teacher": (Teacher, lambda: {"weight": torch.randn(4, 8, generator=_g()),
                                  "temperature": 1.0}),
    "head_targets": (head_targets, lambda: {"head": CosineClassifier(torch.randn(4, 8), 10.0)}),
    "inject": (inject, lambda: {"head": torch.nn.Linear(8, 4),
                                "new_rows": torch.randn(2, 9, generator=_g())}),
    "icis_linear": (icis_linear, lambda: {
        "head": CosineClassifier(torch.randn(4, 8, generator=_g()), 10.0),
        "seen_descriptors": torch.randn(4, 8, generator=_g()),
        "unseen_descriptors": torch.randn(2, 8, generator=_g())}),
    "fit_icis": (fit_icis, lambda: {
        "seen_descriptors": torch.randn(4, 5, generator=_g()),
        "seen_targets": torch.randn(4, 8, generator=_g()),
        "unseen_descriptors": torch.randn(2, 5, generator=_g()), "hidden": 8, "epochs": 2,
        "batch_size": 2, "progress": False}),
    "synthesize": (synthesize, lambda: {
        "model": TFVAEGAN(8, 5, hidden=8, seed=0),
        "class_embeddings": torch.nn.functional.normalize(torch.randn(6, 5, generator=_g()),
                                                          dim=1),
        "classes": [4, 5], "num_per_class": 3, "seed": 0}),
    "evaluate_head": (evaluate_head, lambda: {
        "head": CosineClassifier(torch.randn(4, 8, generator=_g()), 10.0),
        "features": torch.randn(6, 8, generator=_g()), "labels": torch.tensor([0, 1, 2, 3, 0, 3]),
        "seen_classes": [0, 1], "unseen_classes": [2, 3]}),
    "build_world": (build_world, lambda: {
        "class_names": [f"c{i}" for i in range(6)],
        "embeddings": torch.randn(6, 16, generator=_g()), "unseen": [4, 5], "dim": 16}),
    "build_clip_world": (build_clip_world, lambda: {
        "text": torch.randn(8, 16, generator=_g()), "class_names": [f"c{i}" for i in range(8)],
        "unseen": [6, 7]}),
    "text_statistics": (text_statistics, lambda: {"text": torch.randn(6, 8, generator=_g())}),
    "FixedTextFeatures": (FixedTextFeatures, lambda: {
        "features": torch.randn(3, 8, generator=_g()), "class_names": ["a", "b", "c"]}),
    "prototype_start": (prototype_start, lambda: {
        "text": torch.randn(6, 8, generator=_g()),
        "mu": torch.nn.functional.normalize(torch.randn(4, 8, generator=_g()), dim=1),
        "seen": torch.arange(4), "center": torch.nn.functional.normalize(
            torch.randn(8, generator=_g()), dim=0)}),
    "train_generator": (train_generator, lambda: {
        "features": torch.randn(8, 6, generator=_g()), "labels": torch.arange(4).repeat(2),
        "class_embeddings": torch.randn(6, 5, generator=_g()),
        "config": GeneratorConfig(epochs=1, batch_size=4, hidden=8, syn_num=2), "seed": 0,
        "progress": False}),
    "project_2d": (project_2d, lambda: {"x": torch.randn(12, 5, generator=_g()).numpy()}),
    "plot_per_class_accuracy": (plot_per_class_accuracy, lambda: {
        "per_class_acc": [0.5, 1.0, 0.0], "class_names": ["a", "b", "c"],
        "seen_mask": [True, True, False], "path": _PLOT_DIR / "p.png"}),
    "mix_seed": (mix_seed, lambda: {"seed": 3, "stream": 1}),
    "fingerprint": (lambda t: fingerprint(t), lambda: {"t": torch.randn(3, generator=_g())}),
}


def _arg_names():
    out = []
    for name, (_, make) in ENTRY_POINTS.items():
        for arg in make():
            out.append((name, arg))
    return out


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_valid_arguments_work(name):
    fn, make = ENTRY_POINTS[name]
    out = fn(**make())
    if name == "per_class_accuracy":  # NaN marks a class without samples, by design
        out = out[1]
    assert _finite_tensors(out)


@given(target=st.sampled_from(_arg_names()), value=st.sampled_from(HOSTILE))
def test_hostile_argument(target, value):
    name, arg = target
    fn, make = ENTRY_POINTS[name]
    kwargs = make()
    kwargs[arg] = value
    try:
        out = fn(**kwargs)
    except (TypeError, ValueError) as exc:
        assert str(exc), f"{name}({arg}=...): an empty error message"
        return
    if name == "per_class_accuracy":  # NaN marks a class without samples, by design
        out = out[1]
    if _inputs_finite(kwargs):
        assert _finite_tensors(out), f"{name}({arg}={value!r}) returned NaN/Inf"


@given(value=st.sampled_from(HOSTILE))
def test_extended_classifier_forward(value):
    clf = ExtendedClassifier(**ENTRY_POINTS["ExtendedClassifier"][1]())
    try:
        out = clf(value)
    except (TypeError, ValueError):
        return
    if _inputs_finite({"x": value}):
        assert _finite_tensors(out)
