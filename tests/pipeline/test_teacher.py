from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfzsl_fast.nn import CosineClassifier
from dfzsl_fast.pipeline import Teacher, as_teacher


def _ref_logits(x, w, T):
    return F.normalize(x.double(), dim=1) @ F.normalize(w.double(), dim=1).T / T


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_logits_are_cosine_over_temperature(T):
    w, x = torch.randn(7, 24), torch.randn(33, 24)
    teacher = Teacher(w * 3.0, temperature=T)  # row norms do not matter
    torch.testing.assert_close(
        teacher.logits(x).double(), _ref_logits(x, w, T), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(teacher.predict(x), _ref_logits(x, w, T).argmax(1))


def test_outputs_are_detached_and_weight_is_copied():
    w = torch.randn(5, 8)
    teacher = Teacher(w)
    w.zero_()
    x = torch.randn(4, 8, requires_grad=True)
    out = teacher.logits(x)
    assert not out.requires_grad
    assert bool((teacher.weight != 0).any())


def test_predict_empty_and_float64():
    teacher = Teacher(torch.randn(3, 6))
    assert teacher.predict(torch.empty(0, 6)).shape == (0,)
    assert teacher.logits(torch.randn(2, 6, dtype=torch.float64)).dtype == torch.float64


def test_from_linear_bias_policy():
    lin = nn.Linear(10, 4, bias=False)
    t = Teacher.from_linear(lin)
    torch.testing.assert_close(t.weight, lin.weight.detach())
    lin_b = nn.Linear(10, 4)
    with torch.no_grad():
        lin_b.bias.zero_()
    Teacher.from_linear(lin_b)  # an all-zero bias is fine
    with torch.no_grad():
        lin_b.bias.fill_(0.3)
    with pytest.raises(ValueError, match="nonzero bias"):
        Teacher.from_linear(lin_b)
    with pytest.warns(UserWarning, match="dropping the nonzero bias"):
        t = Teacher.from_linear(lin_b, ignore_bias=True)
    torch.testing.assert_close(t.weight, lin_b.weight.detach())


def test_as_teacher_dispatch():
    w = torch.randn(3, 5)
    assert isinstance(as_teacher(w), Teacher)
    assert isinstance(as_teacher(nn.Linear(5, 3, bias=False)), Teacher)
    head = CosineClassifier(w, scale=16.0)
    torch.testing.assert_close(as_teacher(head).weight, w)
    t = Teacher(w)
    assert as_teacher(t) is t


def test_bad_inputs():
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        Teacher(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="Inf"):
        Teacher(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="all zero"):
        Teacher(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        Teacher(torch.randn(2, 3), temperature=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        Teacher(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        Teacher(torch.randn(3))
    with pytest.raises(TypeError, match="from_linear"):
        Teacher(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="nn.Linear"):
        Teacher.from_linear(torch.randn(2, 3))
    t = Teacher(torch.randn(4, 16))
    with pytest.raises(ValueError, match="width 12 does not match the teacher's width 16"):
        t.logits(torch.randn(5, 12))
    with pytest.raises(ValueError, match="width"):
        t.predict(torch.randn(5, 17))
