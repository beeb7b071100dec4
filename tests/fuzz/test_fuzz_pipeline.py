"""Property-based tests of DFZSL.fit's input validation: every bad input raises TypeError or
ValueError naming the argument, before any stage runs."""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dfzsl_fast.config import DFZSLConfig  # noqa: E402
from dfzsl_fast.pipeline import dfzsl as dfzsl_mod  # noqa: E402
from dfzsl_fast.pipeline.dfzsl import DFZSL  # noqa: E402

C_S, C_ALL, D = 4, 6, 8
NAMES = [f"class {i}" for i in range(C_ALL)]


def _valid():
    g = torch.Generator().manual_seed(0)
    return {
        "teacher": torch.randn(C_S, D, generator=g),
        "class_names": list(NAMES),
        "seen_classes": list(range(C_S)),
        "text_features": torch.randn(C_ALL, D, generator=g),
        "eval_data": (torch.randn(5, D, generator=g), torch.tensor([0, 1, 4, 5, 2])),
    }


NAN = float("nan")
MUTATIONS = {
    "teacher": [torch.full((C_S, D), NAN), torch.zeros(C_S, D), torch.randn(C_S, D + 1),
                torch.randn(C_S), torch.ones(C_S, D, dtype=torch.int64), "weights", None,
                torch.randn(0, D)],
    "class_names": ["abcdef", NAMES[:-1] + [NAMES[0]], NAMES[:-1] + ["  "], NAMES[:-1] + [3],
                    NAMES[:C_S], None, NAMES + ["extra"]],
    "seen_classes": [[0, 1, 2], [0, 1, 2, 2], [0, 1, 2, 9], [0, 1, 2, -1], [0.0, 1.0, 2.0, 3.0],
                     "0123", [True, False, True, False], torch.tensor([[0, 1], [2, 3]]) + 0.5],
    "text_features": [torch.full((C_ALL, D), float("inf")), torch.randn(C_ALL, D + 2),
                      torch.randn(C_ALL - 1, D), torch.zeros(C_ALL, D),
                      torch.ones(C_ALL, D, dtype=torch.int32), [[0.0] * D] * C_ALL],
    "eval_data": [(torch.full((5, D), NAN), torch.tensor([0, 1, 4, 5, 2])),
                  (torch.randn(5, D), torch.tensor([0.0, 1.0, 4.0, 5.0, 2.0])),
                  (torch.randn(5, D), torch.tensor([0, 1, 4, 5, 6])),
                  (torch.randn(5, D), torch.tensor([0, 1, 4, 5])),
                  (torch.randn(5, D + 1), torch.tensor([0, 1, 4, 5, 2])),
                  (torch.randn(0, D), torch.zeros(0, dtype=torch.int64)),
                  (torch.randn(5, D), torch.tensor([True, False, True, False, True])),
                  (torch.randn(5, D),), "test"],
}
CASES = [(k, i) for k, vs in MUTATIONS.items() for i in range(len(vs))]


@pytest.mark.parametrize("case", CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_fit_rejects_bad_input_before_any_work(monkeypatch, case):
    key, i = case
    _expect_rejected(monkeypatch, key, MUTATIONS[key][i])


tensors = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 9), min_size=0, max_size=3),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]),
    st.sampled_from([0.0, 1.0, -2.0, float("nan"), float("inf"), 1e30]),
)


@given(key=st.sampled_from(["teacher", "text_features"]), value=tensors)
def test_fit_with_random_tensors(monkeypatch, key, value):
    good = _valid()[key]
    ok = (value.shape == good.shape and value.is_floating_point()
          and bool(torch.isfinite(value).all()) and bool((value != 0).any(dim=-1).all()))
    if ok:  # a valid input of this kind: not what this test is about
        return
    _expect_rejected(monkeypatch, key, value)


def _expect_rejected(monkeypatch, key, value):
    kwargs = _valid()
    kwargs[key] = value

    def no_work(*a, **k):
        raise AssertionError("a stage started before the inputs were validated")

    monkeypatch.setattr(dfzsl_mod, "virtual_stage", no_work)
    cfg = DFZSLConfig(name="fuzz")
    teacher = kwargs.pop("teacher")
    names = kwargs.pop("class_names")
    seen = kwargs.pop("seen_classes")
    with pytest.raises((TypeError, ValueError)) as exc:
        DFZSL(cfg, progress=False).fit(teacher, names, seen, **kwargs)
    msg = str(exc.value)
    named = {"teacher": ("teacher", "weight", "classifier"), "class_names": ("class_names",),
             "seen_classes": ("seen_classes", "class_names"),
             "text_features": ("text_features",), "eval_data": ("eval_data",)}[key]
    assert any(n in msg for n in named), msg
