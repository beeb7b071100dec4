"""Synthesis at scale: the generator contract, Philox noise, sharded feature files.

- `generators`: `FeatureGenerator` (`generate(class_embeddings, class_ids, row_ids, *, seed)`),
  `TFVAEGANGenerator`, `VMFGenerator`.
- `noise`: the counter-based noise of row r of class c (`synth_normals`, the reference).
"""

from __future__ import annotations

from .generators import FeatureGenerator, TFVAEGANGenerator, VMFGenerator
from .noise import synth_normals
from .reader import FeatureShards
from .shards import synthesize_to

__all__ = ["FeatureGenerator", "TFVAEGANGenerator", "VMFGenerator", "synth_normals",
           "synthesize_to", "FeatureShards"]
