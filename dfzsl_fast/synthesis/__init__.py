"""Synthesis at scale: the generator contract, Philox noise, sharded feature files.

- `generators`: `FeatureGenerator` (`generate(class_embeddings, class_ids, row_ids, *, seed)`),
  `TFVAEGANGenerator`, `VMFGenerator`.
- `synth_normals` (from `reference/philox.py`): the counter-based noise of row r of class c,
  the pure-PyTorch reference of what every synthesis kernel draws.
- `shards`: `synthesize_to`, resumable sharded safetensors files (+ manifest), split over
  torch.distributed ranks; `reader`: `FeatureShards`, a streaming IterableDataset of them.
- `rows`: random access to training rows by index, in memory, in shards or regenerated on
  read (`Rows`), what the final classifier reads.
"""

from __future__ import annotations

from ..reference.philox import synth_normals
from .generators import (
    FeatureGenerator,
    SHIPGenerator,
    TFVAEGANGenerator,
    VMFGenerator,
    generate_all,
)
from .reader import FeatureShards
from .rows import ConcatRows, GeneratedRows, MappedRows, Rows, ShardRows, TensorRows
from .shards import synthesize_to

__all__ = [
    "FeatureGenerator",
    "TFVAEGANGenerator",
    "VMFGenerator",
    "SHIPGenerator",
    "generate_all",
    "synth_normals",
    "synthesize_to",
    "FeatureShards",
    "Rows",
    "TensorRows",
    "GeneratedRows",
    "ShardRows",
    "ConcatRows",
    "MappedRows",
]
