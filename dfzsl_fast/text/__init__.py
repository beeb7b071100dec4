"""Text encoders used outside the CLIP towers (the MiniLM sentence encoder for the demo world)."""

from __future__ import annotations

from .minilm import EMBED_DIM, MiniLMEncoder, encode, is_available

__all__ = ["EMBED_DIM", "MiniLMEncoder", "encode", "is_available"]
