"""Text towers that accept learned context tokens (`towers`: open_clip, MiniLM, projected,
fixed features) and the offline MiniLM sentence encoder used by the demo world (`minilm`).
open_clip and sentence-transformers are imported only when a tower is built."""

from __future__ import annotations

from .minilm import EMBED_DIM, MiniLMEncoder, encode, is_available
from .towers import (
    FixedTextFeatures,
    MiniLMTextTower,
    OpenCLIPTextTower,
    ProjectedTextTower,
    TextTower,
)

__all__ = [
    "EMBED_DIM",
    "MiniLMEncoder",
    "encode",
    "is_available",
    "TextTower",
    "OpenCLIPTextTower",
    "MiniLMTextTower",
    "ProjectedTextTower",
    "FixedTextFeatures",
]
