"""Seed mixing, tensor fingerprints and file/text hashes: each written once, here.

Nothing here imports the rest of the package, so every layer (kernels' references, io, the
pipeline's stage cache, generator checkpoints, text-embedding caches) can use it.

Example:
    >>> mix_seed(0, 1) != mix_seed(1, 0)              # seed 0 / stream 1 is not seed 1 / stream 0
    True
    >>> fingerprint(torch.zeros(3)) == fingerprint(torch.zeros(3))
    True
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

__all__ = ["mix_seed", "seeded_generator", "fingerprint", "sha256_file", "sha256_text"]

_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for sub-stream ``stream`` of ``seed`` (splitmix64 finaliser).

    Distinct (seed, stream) pairs give unrelated seeds, unlike ``seed + stream``, where seed 0 /
    stream 1 would equal seed 1 / stream 0. Both arguments are Python ints of any size (they
    are reduced modulo 2^64 first).
    """
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(stream) * 0xD1B54A32D192ED03 + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


def seeded_generator(
    seed: int, stream: int | None = None, device: str | torch.device | None = None
) -> torch.Generator:
    """A ``torch.Generator`` for sub-stream ``stream`` of ``seed`` (``mix_seed``), on ``device``.

    ``stream=None`` seeds with ``seed`` itself (the main stream of a stage). Every random
    stream of the package is made here, so no two stages share draws by accident.
    """
    g = torch.Generator(device=device) if device is not None else torch.Generator()
    return g.manual_seed(int(seed) if stream is None else mix_seed(seed, stream))


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes (CPU copies); 16 hex digits.

    Any dtype (bool, bfloat16, ...) and any shape (0-d, empty) is hashed by its raw bytes.
    """
    h = hashlib.sha256()
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            raise TypeError(f"tensors[{i}]: expected a tensor with values, got "
                            f"{type(t).__name__ if not isinstance(t, torch.Tensor) else 'meta'}")
        c = t.detach().to("cpu").contiguous()
        h.update(f"{c.dtype}|{tuple(c.shape)}|".encode())
        if c.numel():
            h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (e.g. which CLIP weights were used)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: Any) -> str:
    """Hex SHA-256 of the parts' ``str`` forms joined by NUL (cache keys of texts)."""
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).hexdigest()
