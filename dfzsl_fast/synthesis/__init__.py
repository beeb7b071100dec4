"""Synthesis at scale: the generator contract, Philox noise, sharded feature files.

- `generators`: `FeatureGenerator` (`generate(class_embeddings, class_ids, row_ids, *, seed)`),
  `TFVAEGANGenerator`, `VMFGenerator`.
- `noise`: the counter-based noise of row r of class c (`synth_normals`, the reference).
- `rows`: random access to training rows by index, in memory, in shards or regenerated on
  read (`Rows`), what the final classifier reads.
"""

from __future__ import annotations

from .generators import FeatureGenerator, TFVAEGANGenerator, VMFGenerator, generate_all
from .noise import synth_normals
from .rows import ConcatRows, GeneratedRows, MappedRows, Rows, ShardRows, TensorRows

__all__ = [
    "FeatureGenerator",
    "TFVAEGANGenerator",
    "VMFGenerator",
    "generate_all",
    "synth_normals",
    "Rows",
    "TensorRows",
    "GeneratedRows",
    "ShardRows",
    "ConcatRows",
    "MappedRows",
]
