"""Stage caching for the pipeline: each stage's output is a safetensors file keyed by its inputs.

A stage's key is the SHA-256 of everything its output depends on: its config section, the keys
of the stages it consumes, the seed, and fingerprints of the input tensors. On a re-run with the
same key the stored output is loaded instead of recomputed; any change (a config value, a
different teacher, other class names) changes the key and recomputes that stage and every stage
after it. Files are written atomically (temp file + ``os.replace``), so an interrupted run never
leaves a half-written stage behind.

Example:
    >>> cache = StageCache("runs/awa2/cache")
    >>> key = stage_key("virtual", cfg.simulator, teacher_fp, seed)
    >>> hit = cache.load("virtual", key)          # None, or {name: tensor}
    >>> cache.save("virtual", key, {"mu": mu, "x": x, "y": y}, {"kept": "22379"})
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["StageCache", "stage_key", "fingerprint"]


def fingerprint(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (CPU copy); 16 hex digits."""
    c = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{c.dtype}|{tuple(c.shape)}|".encode())
    if c.numel():
        h.update(c.view(torch.uint8).numpy().tobytes() if c.dtype != torch.bool
                 else c.to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    if isinstance(v, torch.Tensor):
        return fingerprint(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def stage_key(*parts: Any) -> str:
    """A stable key of the given parts (dataclasses, tensors, strings, numbers, lists, dicts)."""
    blob = json.dumps([_jsonable(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class StageCache:
    """A folder of ``<stage>.safetensors`` files, each with its key in the metadata.

    Args:
        root: the folder (created on first save); None disables caching (every load misses,
            saves are no-ops).
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def path(self, stage: str) -> Path | None:
        return None if self.root is None else self.root / f"{stage}.safetensors"

    def load(self, stage: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """The stored (tensors, metadata) of `stage` if its key matches, else None."""
        p = self.path(stage)
        if p is None or not p.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
                if meta.get("stage_key") != key:
                    return None
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # a corrupt or foreign file is a cache miss, not a crash
            return None
        return tensors, meta

    def save(
        self,
        stage: str,
        key: str,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Store `tensors` (made contiguous, CPU) with `meta` (values stringified) atomically."""
        p = self.path(stage)
        if p is None:
            return
        from safetensors.torch import save_file

        p.parent.mkdir(parents=True, exist_ok=True)
        m = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (meta or {}).items()}
        m["stage_key"] = key
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".partial")
        os.close(fd)
        try:
            save_file(data, tmp, metadata=m)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
