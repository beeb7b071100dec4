"""SHIP's VAE trained data-free (method.md 4.2): the decoder synthesizes through the text tower.

`train_ship(features, labels, class_names, tower, template, config)` fits `models.ship.SHIPVAE`
on (feature, class) pairs: the virtual base features of DFZSL's stage 1 (data-free) or real base
features a user has (SHIP's own few-shot setting). Per batch (``config.batch_size`` rows of a
fresh permutation each epoch):

    mu, logvar = E(x);  z = mu + exp(logvar / 2) eps;  x_hat = normalize(tower(ctx + G(z), name))
    loss = sum_dims (x_hat - x)^2, averaged over the batch
           + kl_weight * KL(N(mu, sigma^2) || N(0, I)), summed over dims, averaged over the batch

with AdamW over E, G and ctx (the tower is frozen). The prompts are tokenised once
(`TextTower.prepare`); each step runs the tower on the batch's rows only, each with its own
context ctx + beta (sequences cut after the end token by the tower).

Features are L2-normalised first (SHIP normalises CLIP features; x_hat is a unit vector).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import check_matrix
from ..config import SHIPConfig
from ..hashing import seeded_generator
from ..models.ship import SHIPVAE
from ._progress import Progress

__all__ = ["train_ship", "ship_prompts"]


def ship_prompts(tower, template: str, class_names: Sequence[str], config: SHIPConfig):
    """The `PreparedPrompts` SHIP decodes through: n_ctx context slots in front of what the
    template keeps after ``config.ctx_init`` (see `text.towers.ctx_suffix_template`)."""
    if not getattr(tower, "tunable", False):
        raise TypeError(
            "tower: SHIP synthesizes through a text encoder; precomputed text features "
            f"({type(tower).__name__}) have none: give a text tower (open_clip weights, MiniLM)")
    return tower.prepare(template, list(class_names), config.n_ctx, config.ctx_init)


def train_ship(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    tower,
    template: str,
    config: SHIPConfig | None = None,
    *,
    progress: bool = True,
) -> SHIPVAE:
    """Fit SHIP's VAE on (feature, class) pairs; see the module docstring.

    Args:
        features: (N, D) float features (unit rows after normalisation), on any device.
        labels: (N,) int64 class indices into `class_names`.
        class_names: the C names the prompts are built from (all classes; only those in
            `labels` are trained on).
        tower: a tunable `TextTower` with output_dim D.
        template: the dataset's prompt template (one ``{}``).
        config: `SHIPConfig` (None: the defaults).
        progress: progress bar over epochs.

    Returns:
        The trained `SHIPVAE` (eval mode) on the tower's device, with `.train_seconds`.
    """
    cfg = SHIPConfig() if config is None else config
    if not isinstance(cfg, SHIPConfig):
        raise TypeError(f"config: expected a SHIPConfig, got {type(cfg).__name__}")
    x_all = check_matrix(features, "features", "(N, D)")
    N, D = x_all.shape
    if D != tower.output_dim:
        raise ValueError(f"features: width {D} does not match the tower's output_dim "
                         f"{tower.output_dim}")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or \
            labels.shape != (N,):
        raise TypeError(f"labels: expected an ({N},) int64 tensor")
    C = len(class_names)
    if int(labels.min()) < 0 or int(labels.max()) >= C:
        raise ValueError(f"labels: expected class indices in [0, {C})")
    prompts = ship_prompts(tower, template, class_names, cfg)
    device = tower.device
    x_all = F.normalize(x_all.to(device=device, dtype=torch.float32), dim=1)
    y_all = labels.to(device)
    model = SHIPVAE(D, tower.width, latent_dim=cfg.latent, enc_hidden=cfg.enc_hidden,
                    gen_hidden=cfg.gen_hidden, n_ctx=cfg.n_ctx, activation=cfg.activation,
                    seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = seeded_generator(cfg.seed, 1)
    noise = seeded_generator(cfg.seed, 2, device)
    t0 = time.perf_counter()
    model.train()
    with Progress(cfg.epochs, "ship: VAE through the text tower", enabled=progress) as bar:
        for _ in range(cfg.epochs):
            perm = torch.randperm(N, generator=gen).to(device)
            total, nb = 0.0, 0
            for s in range(0, N, cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                x = x_all[idx]
                mu, logvar = model.encode(x)
                eps = torch.randn(mu.shape, generator=noise, device=device)
                z = mu + torch.exp(0.5 * logvar) * eps
                x_hat = model.decode(z, prompts, y_all[idx])
                rec = (x_hat - x).pow(2).sum(1).mean()
                kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()
                loss = rec + cfg.kl_weight * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                nb += 1
            bar.update(loss=total / nb)
    model.eval()
    model.train_seconds = time.perf_counter() - t0
    return model
