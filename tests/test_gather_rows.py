"""`dfzsl_fast::gather_rows` (ops/rows.py): native kernel and default kernel against indexing."""

from __future__ import annotations

import pytest
import torch

from dfzsl_fast import testing
from dfzsl_fast.ops.rows import gather_rows

BACKENDS = ["torch", "native"]


def _need(backend):
    if backend == "native":
        testing.skip_unless_available("native", torch.device("cpu"), op="gather_rows")


def _sources(width, dtypes, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for dt, n in zip(dtypes, sizes, strict=True):
        shape = (n, width) if width else (n,)
        if dt == torch.int64:
            out.append(torch.randint(-5, 1000, shape, generator=g))
        else:
            out.append(torch.randn(shape, generator=g, dtype=torch.float64).to(dt))
    return out


def _expected(sources, part, local, dtype):
    rows = [sources[int(p)][int(i)].to(dtype) for p, i in zip(part, local, strict=True)]
    shape = (0,) + tuple(sources[0].shape[1:])
    return torch.stack(rows) if rows else torch.empty(shape, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width", [1, 7, 19, 512])  # 19: 8-wide vector steps and a tail
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_sources_of_every_dtype(backend, width, dtype):
    _need(backend)
    dts = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float16]
    srcs = _sources(width, dts, [5, 0, 33, 1, 300])
    g = torch.Generator().manual_seed(1)
    part = torch.tensor([0, 2, 4, 3, 4, 2, 0, 4] * 40)[torch.randperm(320, generator=g)]
    local = torch.stack([torch.randint(0, srcs[int(p)].shape[0], (), generator=g)
                         for p in part])
    got = gather_rows(srcs, part, local, dtype, backend=backend)
    exp = _expected(srcs, part, local, dtype)
    assert got.dtype == dtype and got.shape == (320, width)
    # float16/bfloat16 -> float32/float64 is exact, so the rows are equal bit for bit
    assert torch.equal(got, exp)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("src_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_special_values_convert_exactly(backend, src_dtype):
    # every special class of the format: signed zeros, subnormals, the extremes, +-inf and NaN
    # (the native kernel converts float16 with F16C instructions, bfloat16 by a shift)
    _need(backend)
    fi = torch.finfo(src_dtype)
    vals = torch.tensor([0.0, -0.0, fi.tiny, -fi.tiny, fi.smallest_normal / 4, fi.max, -fi.max,
                         fi.eps, 1.0, -2.5, float("inf"), float("-inf"), float("nan")],
                        dtype=torch.float64).to(src_dtype)
    src = vals.repeat(3).reshape(3, -1)  # width 13: one vector step and a tail
    part = torch.zeros(3, dtype=torch.int64)
    local = torch.tensor([2, 0, 1])
    got = gather_rows([src], part, local, torch.float32, backend=backend)
    exp = src.to(torch.float32)[local]
    torch.testing.assert_close(got, exp, rtol=0, atol=0, equal_nan=True)
    finite = torch.isfinite(exp)
    assert torch.equal(got[finite].view(torch.int32), exp[finite].view(torch.int32))  # -0.0 too


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_empty_batch_and_repeats(backend):
    _need(backend)
    srcs = _sources(None, [torch.int64, torch.int64], [4, 9])
    part, local = torch.tensor([1, 1, 0, 1]), torch.tensor([8, 8, 3, 0])
    assert torch.equal(gather_rows(srcs, part, local, torch.int64, backend=backend),
                       _expected(srcs, part, local, torch.int64))
    empty = torch.empty(0, dtype=torch.int64)
    out = gather_rows(_sources(6, [torch.float16], [3]), empty, empty, torch.float32,
                      backend=backend)
    assert out.shape == (0, 6) and out.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_refused_before_any_read(backend):
    _need(backend)
    srcs = _sources(4, [torch.float32, torch.float16], [3, 5])
    p, i = torch.tensor([0, 1]), torch.tensor([2, 4])
    with pytest.raises(ValueError, match="part"):
        gather_rows(srcs, torch.tensor([0, 2]), i, torch.float32, backend=backend)
    with pytest.raises(ValueError, match="local"):
        gather_rows(srcs, p, torch.tensor([3, 0]), torch.float32, backend=backend)
    with pytest.raises(ValueError, match="local"):
        gather_rows(srcs, p, torch.tensor([-1, 0]), torch.float32, backend=backend)
    with pytest.raises(ValueError, match="one length"):
        gather_rows(srcs, p, torch.tensor([0]), torch.float32, backend=backend)
    with pytest.raises(TypeError, match="part"):
        gather_rows(srcs, p.int(), i, torch.float32, backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        gather_rows(srcs, p, i, torch.float16, backend=backend)
    with pytest.raises(TypeError, match="source 1"):
        gather_rows([srcs[0], srcs[1].long()], p, i, torch.float32, backend=backend)
    with pytest.raises(ValueError, match="source 1"):
        gather_rows([srcs[0], torch.zeros(5, 3)], p, i, torch.float32, backend=backend)
    with pytest.raises(TypeError, match="sources"):
        gather_rows([], p, i, torch.float32, backend=backend)


def test_native_op_checks_indices_itself():
    # the dispatcher op, called without the wrapper, refuses bad indices too (no wild read)
    testing.skip_unless_available("native", torch.device("cpu"), op="gather_rows")
    srcs = [torch.zeros(3, 2)]
    with pytest.raises(RuntimeError, match="local"):
        torch.ops.dfzsl_fast.gather_rows(srcs, torch.tensor([0]), torch.tensor([3]),
                                         torch.float32)
    with pytest.raises(RuntimeError, match="part"):
        torch.ops.dfzsl_fast.gather_rows(srcs, torch.tensor([1]), torch.tensor([0]),
                                         torch.float32)
