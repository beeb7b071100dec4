"""Row sources (`synthesis.rows`) and training the final classifier from them: the same rows in
the same order train the same classifier, bitwise, whether they live in memory, in shards or
are regenerated on read."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from dfzsl_fast import _extension
from dfzsl_fast.config import ClassifierConfig
from dfzsl_fast.models.tfvaegan import TFVAEGAN
from dfzsl_fast.pipeline.classifier import train_final_classifier
from dfzsl_fast.synthesis import (
    ConcatRows,
    GeneratedRows,
    MappedRows,
    ShardRows,
    TensorRows,
    TFVAEGANGenerator,
    generate_all,
)

needs_native = pytest.mark.skipif(not _extension.native_available(),
                                  reason="native extension not built")
D, A, C = 16, 8, 6
SEEN, UNSEEN = [0, 1, 2, 3], [4, 5]


def _gen():
    m = TFVAEGAN(D, A, 24, seed=2)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return TFVAEGANGenerator(m, backend="native")


def _virtual():
    g = torch.Generator().manual_seed(4)
    y = torch.tensor(SEEN).repeat_interleave(25)
    return F.normalize(torch.randn(y.numel(), D, generator=g), dim=1), y


def _write_shards(path, x, y, shard_rows):
    """A minimal synthesize_to-format folder (manifest + safetensors shards), written here so
    the reader is tested independently of the writer."""
    path.mkdir()
    shards = []
    for s in range(0, x.shape[0], shard_rows):
        name = f"shard-{len(shards):05d}.safetensors"
        safetensors.torch.save_file({"features": x[s : s + shard_rows].contiguous(),
                                     "labels": y[s : s + shard_rows].contiguous()},
                                    str(path / name))
        shards.append({"file": name, "rows": int(min(shard_rows, x.shape[0] - s))})
    (path / "manifest.json").write_text(json.dumps(
        {"complete": True, "feature_dim": x.shape[1], "shards": shards}))


def _train(features, labels, init, epochs=3):
    cfg = ClassifierConfig(epochs=epochs, batch_size=17, lr=1e-2, estimate=False)
    return train_final_classifier(features, labels, init, SEEN, UNSEEN, cfg, seed=5,
                                  progress=False).weight.detach()


@needs_native
def test_sources_return_the_same_rows(tmp_path):
    gen = _gen()
    emb = torch.randn(C, A)
    x, y = generate_all(gen, emb, UNSEEN, 30, seed=1)
    streamed = GeneratedRows(gen, emb, UNSEEN, 30, seed=1)
    _write_shards(tmp_path / "s", x, y, shard_rows=7)
    disk = ShardRows(tmp_path / "s")
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:25]
    for src in (streamed, disk, TensorRows(x, y)):
        assert src.num_rows == 60 and src.feature_dim == D
        assert torch.equal(src.features(idx), x[idx])
        assert torch.equal(src.labels(idx), y[idx])
        assert torch.equal(src.class_counts(C), torch.bincount(y, minlength=C))
    xv, yv = _virtual()
    cat = ConcatRows(TensorRows(xv, yv), disk)
    j = torch.tensor([0, 99, 100, 159, 3, 120])
    assert torch.equal(cat.features(j), torch.cat([xv, x])[j])
    assert torch.equal(cat.labels(j), torch.cat([yv, y])[j])
    mapped = MappedRows(cat, lambda t: 2 * t)
    assert torch.equal(mapped.features(j), 2 * torch.cat([xv, x])[j])
    # read(): features and labels together, the same rows (one part, several parts, none;
    # shards the batch touches in any order, repeated rows)
    xa, ya = torch.cat([xv, x]), torch.cat([yv, y])
    for k in (j, torch.tensor([5, 2, 2]), torch.tensor([150, 101, 140, 101]),
              torch.tensor([], dtype=torch.int64), torch.arange(160).flip(0)):
        for src, scale in ((cat, 1), (mapped, 2)):
            xr, yr = src.read(k)
            assert torch.equal(xr, scale * xa[k]) and torch.equal(yr, ya[k])
    for src in (streamed, disk):
        xr, yr = src.read(idx)
        assert torch.equal(xr, x[idx]) and torch.equal(yr, y[idx])


@needs_native
def test_classifier_from_rows_equals_in_memory(tmp_path):
    gen = _gen()
    emb = torch.randn(C, A)
    xu, yu = generate_all(gen, emb, UNSEEN, 40, seed=1)
    xv, yv = _virtual()
    init = F.normalize(torch.randn(C, D, generator=torch.Generator().manual_seed(9)), dim=1)
    ref = _train(torch.cat([xv, xu]), torch.cat([yv, yu]), init)
    streamed = ConcatRows(TensorRows(xv, yv), GeneratedRows(gen, emb, UNSEEN, 40, seed=1))
    assert torch.equal(_train(streamed, None, init), ref)
    _write_shards(tmp_path / "s", xu, yu, shard_rows=13)
    disk = ConcatRows(TensorRows(xv, yv), ShardRows(tmp_path / "s"))
    assert torch.equal(_train(disk, None, init), ref)
    # and a different row order is a different classifier (the check can fail)
    other = ConcatRows(TensorRows(xv, yv), GeneratedRows(gen, emb, UNSEEN, 40, seed=2))
    assert not torch.equal(_train(other, None, init), ref)


def test_rows_source_errors(tmp_path):
    xv, yv = _virtual()
    init = torch.randn(C, D)
    with pytest.raises(TypeError, match="labels: must be None"):
        _train(TensorRows(xv, yv), yv, init)
    bad = TensorRows(xv, yv.clone().fill_(C))
    with pytest.raises(ValueError, match="class indices"):
        _train(bad, None, init)
    nan = xv.clone()
    nan[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _train(TensorRows(nan, yv), None, init, epochs=1)
    with pytest.raises(FileNotFoundError, match="manifest"):
        ShardRows(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": False, "shards": []}))
    with pytest.raises(ValueError, match="incomplete"):
        ShardRows(tmp_path)
