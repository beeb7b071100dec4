"""Datasets: xlsa17 split and feature-file loaders, class-name cleaning, per-dataset configs."""

from __future__ import annotations

from .classnames import CLEANING_STYLES, check_classnames, clean_classname, clean_classnames
from .configs import (
    BASE_TO_NEW_DATASETS,
    CONFIGS,
    GZSL_DATASETS,
    ClassifierConfig,
    DFZSLConfig,
    FLPTConfig,
    GeneratorConfig,
    SimulatorConfig,
    TeacherConfig,
    get_config,
    list_configs,
)
from .paths import ENV_SHARED_DATA, shared_data_dir
from .xlsa17 import FeatureSet, XLSA17Split, load_att_splits, load_features

__all__ = [
    "CLEANING_STYLES",
    "check_classnames",
    "clean_classname",
    "clean_classnames",
    "BASE_TO_NEW_DATASETS",
    "CONFIGS",
    "GZSL_DATASETS",
    "ClassifierConfig",
    "DFZSLConfig",
    "FLPTConfig",
    "GeneratorConfig",
    "SimulatorConfig",
    "TeacherConfig",
    "get_config",
    "list_configs",
    "ENV_SHARED_DATA",
    "shared_data_dir",
    "FeatureSet",
    "XLSA17Split",
    "load_att_splits",
    "load_features",
]
