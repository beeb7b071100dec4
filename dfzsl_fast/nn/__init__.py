"""nn.Modules over the dfzsl_fast ops."""

from __future__ import annotations

from .cosine_classifier import CosineClassifier

__all__ = ["CosineClassifier"]
