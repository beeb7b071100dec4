"""Datasets: xlsa17 split and feature-file loaders, class-name cleaning.

The per-dataset configs live in :mod:`dfzsl_fast.config`.
"""

from __future__ import annotations

from .classnames import CLEANING_STYLES, check_classnames, clean_classname, clean_classnames
from .paths import ENV_SHARED_DATA, shared_data_dir
from .xlsa17 import FeatureSet, XLSA17Split, load_att_splits, load_features

__all__ = [
    "CLEANING_STYLES",
    "check_classnames",
    "clean_classname",
    "clean_classnames",
    "ENV_SHARED_DATA",
    "shared_data_dir",
    "FeatureSet",
    "XLSA17Split",
    "load_att_splits",
    "load_features",
]
