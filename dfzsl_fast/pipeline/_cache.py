"""Stage caching for the pipeline: each stage's output is a safetensors file keyed by its inputs.

A stage's key is the SHA-256 of everything its output depends on: its config section, the keys
of the stages it consumes, the seed, and fingerprints of the input tensors. On a re-run with the
same key the stored output is loaded instead of recomputed; any change (a config value, a
different teacher, other class names) changes the key and recomputes that stage and every stage
after it. Files go through the one atomic writer (`dfzsl_fast.io.atomic`), so an interrupted
run never leaves a half-written stage behind.

Example:
    >>> cache = StageCache("runs/awa2/cache")
    >>> key = stage_key("virtual", cfg.simulator, teacher_fp, seed)
    >>> tensors, meta, hit = cache.get_or_compute("virtual", key, lambda: ({"mu": mu}, {}))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..hashing import fingerprint
from ..io.atomic import atomic_path

__all__ = ["StageCache", "stage_key"]


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

        m = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (meta or {}).items()}
        m["stage_key"] = key
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        with atomic_path(p) as tmp:
            save_file(data, str(tmp), metadata=m)

    def get_or_compute(
        self,
        stage: str,
        key: str,
        compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
        device: torch.device | str | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, str], bool]:
        """The stage's output: loaded when the stored key matches, else computed and stored.

        Args:
            stage: file stem of the stage. key: its `stage_key`.
            compute: ``() -> (tensors, meta)``, run only on a miss.
            device: where loaded tensors go (computed ones are returned as computed).

        Returns:
            ``(tensors, meta, hit)``: ``hit`` is True when the output came from the cache.
        """
        found = self.load(stage, key)
        if found is not None:
            tensors, meta = found
            if device is not None:
                tensors = {k: v.to(device) for k, v in tensors.items()}
            return tensors, meta, True
        tensors, meta = compute()
        self.save(stage, key, tensors, meta)
        return tensors, {k: (v if isinstance(v, str) else json.dumps(v))
                         for k, v in (meta or {}).items()}, False
