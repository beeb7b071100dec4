"""Run by tests/test_ddp_classifier.py under torchrun: train the final classifier data-parallel
(gloo) from a Rows source and save rank 0's prototypes to argv[1]."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dfzsl_fast.config import ClassifierConfig
from dfzsl_fast.distributed import shutdown
from dfzsl_fast.pipeline.classifier import train_final_classifier
from dfzsl_fast.synthesis import TensorRows


def problem():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(21)
    x = F.normalize(torch.randn(y.numel(), 16, generator=g) + 2 * F.one_hot(y, 16).float(), dim=1)
    init = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    return x, y, init


def train(rows: bool):
    x, y, init = problem()
    cfg = ClassifierConfig(epochs=3, batch_size=25, lr=1e-2, estimate=False)
    feats, labels = (TensorRows(x, y), None) if rows else (x, y)
    return train_final_classifier(feats, labels, init, [0, 1, 2, 3], [4, 5], cfg, seed=3,
                                  progress=False).weight.detach()


if __name__ == "__main__":
    dist.init_process_group("gloo")
    w = train(rows=dist.get_rank() % 2 == 0)  # ranks may mix sources: same rows
    if dist.get_rank() == 0:
        torch.save(w, sys.argv[1])
    shutdown()
