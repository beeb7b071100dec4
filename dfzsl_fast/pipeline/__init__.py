"""The DFZSL pipeline, stage by stage (method.md sections 2 and 3).

- `teacher`: `Teacher`, the black-box base classifier used as a cosine classifier.
- `virtual` (stage 1): `virtual_stage` (from its `SimulatorConfig`), `fit_vmf_means`,
  `virtual_features`, `select_trusted`, `default_kappa`.
- `classifier` (stage 4): `train_final_classifier`, `logit_adjustment`.
- `icis`: `fit_icis`, `inject`, `icis_extend` (image-free classifier injection).
- `flpt` (stage 2): `PromptLearner`, `train_flpt`; `flpt_validation`: `select_flpt_steps`.
- `generator` (stage 3): `TFVAEGAN`, `train_generator`, `synthesize`, `load_generator`.
- `dfzsl`: `DFZSL(config).fit(...)`, the whole pipeline (its product, `ExtendedClassifier`,
  lives in `dfzsl_fast.nn`).

Every stage takes its config dataclass from `dfzsl_fast.config`.

Each stage is usable alone; every random step takes a seed.
"""

from __future__ import annotations

from ..evaluation import evaluate
from ..nn import ExtendedClassifier
from .classifier import logit_adjustment, train_final_classifier
from .dfzsl import DFZSL, DFZSLResult, zero_shot_classifier
from .flpt import FLPTResult, PromptLearner, train_flpt
from .flpt_validation import FLPTValidation, select_flpt_steps
from .generator import TFVAEGAN, load_generator, synthesize, train_generator
from .icis import ICIS, ICISFitInfo, fit_icis, head_targets, icis_extend, icis_loss, inject
from .teacher import Teacher, as_teacher
from .virtual import (
    KeepStats,
    VMFFitInfo,
    default_kappa,
    fit_vmf_means,
    inverse_decay_lr,
    select_trusted,
    virtual_features,
    virtual_stage,
)

__all__ = [
    "DFZSL",
    "DFZSLResult",
    "ExtendedClassifier",
    "evaluate",
    "zero_shot_classifier",
    "PromptLearner",
    "FLPTResult",
    "train_flpt",
    "FLPTValidation",
    "select_flpt_steps",
    "TFVAEGAN",
    "train_generator",
    "synthesize",
    "load_generator",
    "Teacher",
    "as_teacher",
    "fit_vmf_means",
    "virtual_features",
    "virtual_stage",
    "select_trusted",
    "default_kappa",
    "inverse_decay_lr",
    "VMFFitInfo",
    "KeepStats",
    "train_final_classifier",
    "logit_adjustment",
    "ICIS",
    "ICISFitInfo",
    "fit_icis",
    "icis_loss",
    "head_targets",
    "inject",
    "icis_extend",
]
