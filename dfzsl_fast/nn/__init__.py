"""Modules: the fused cosine classifier and the pipeline's extended (base + new) classifier."""

from .cosine_classifier import CosineClassifier
from .extended_classifier import ExtendedClassifier, project_out, text_center

__all__ = ["CosineClassifier", "ExtendedClassifier", "project_out", "text_center"]
