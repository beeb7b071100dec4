"""Tiny synthetic worlds for the pipeline tests (built inline, no downloads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class World:
    text: torch.Tensor  # (C, d) unit text features of the base classes
    W: torch.Tensor  # (C, d) unit teacher weights: text features rotated slightly


def make_world(C: int = 8, d: int = 32, tilt: float = 0.5, seed: int = 0) -> World:
    """C random unit text features in d dims; the teacher's rows are these, perturbed."""
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(C, d, generator=g), dim=1)
    W = F.normalize(text + tilt * F.normalize(torch.randn(C, d, generator=g), dim=1), dim=1)
    return World(text, W)
