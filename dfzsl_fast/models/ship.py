"""The SHIP networks (method.md 4.2, ``mrflogs/SHIP: main_coop_vae.py``); training is
`pipeline.ship`, synthesis `synthesis.SHIPGenerator`.

A VAE whose decoder is a frozen text tower: the encoder maps an image feature x to a latent z,
the generator maps z to a bias beta in the tower's token-embedding space, and the feature is
the tower's output for the prompt [SOS] (ctx_1 + beta) ... (ctx_n + beta) "{classname}." [EOS]
(the same beta added to every one of n learned context vectors), L2-normalised:

    Encoder E(x)     x (D) -> FC He -> ReLU -> mu_z (Z), logvar_z (Z)
    Generator G(z)   z (Z) -> FC Hg -> ReLU (LeakyReLU(0.2) in the ImageNet script) -> FC W = beta
    ctx              (n_ctx, W) learned context, N(0, 0.02) init (SHIP: random, not from words)

Widths: D feature dim, Z latent (512 in SHIP), He = 2048, Hg = 4096, W the tower's token width.
Linear layers N(0, 0.02) with zero biases, as the reference initialises them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int
from ..hashing import seeded_generator

__all__ = ["SHIPVAE"]

_INIT_STD = 0.02
_ACTIVATIONS = ("relu", "leaky_relu")


class SHIPVAE(nn.Module):
    """E, G and the shared context of SHIP (see the module docstring).

    Args:
        feature_dim: D. token_width: W (the text tower's `width`).
        latent_dim: Z. enc_hidden: He. gen_hidden: Hg. n_ctx: context vectors.
        activation: "relu" (10-dataset script) or "leaky_relu" (ImageNet script).
        seed: seeds the init with a private generator.
    """

    def __init__(self, feature_dim: int, token_width: int, *, latent_dim: int = 512,
                 enc_hidden: int = 2048, gen_hidden: int = 4096, n_ctx: int = 4,
                 activation: str = "relu", seed: int = 0) -> None:
        super().__init__()
        D = check_int(feature_dim, "feature_dim", 1)
        W = check_int(token_width, "token_width", 1)
        Z = check_int(latent_dim, "latent_dim", 1)
        He = check_int(enc_hidden, "enc_hidden", 1)
        Hg = check_int(gen_hidden, "gen_hidden", 1)
        n = check_int(n_ctx, "n_ctx", 1)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: one of {_ACTIVATIONS}, got {activation!r}")
        self.feature_dim, self.token_width, self.latent_dim = D, W, Z
        self.n_ctx, self.activation = n, activation
        g = seeded_generator(seed, 0)
        self.enc = nn.Linear(D, He)
        self.mu = nn.Linear(He, Z)
        self.logvar = nn.Linear(He, Z)
        self.gen1 = nn.Linear(Z, Hg)
        self.gen2 = nn.Linear(Hg, W)
        self.ctx = nn.Parameter(torch.empty(n, W))
        with torch.no_grad():
            for m in (self.enc, self.mu, self.logvar, self.gen1, self.gen2):
                m.weight.normal_(0.0, _INIT_STD, generator=g)
                m.bias.zero_()
            self.ctx.normal_(0.0, _INIT_STD, generator=g)

    def shape_dict(self) -> dict:
        return {"feature_dim": self.feature_dim, "token_width": self.token_width,
                "latent_dim": self.latent_dim, "enc_hidden": self.enc.out_features,
                "gen_hidden": self.gen1.out_features, "n_ctx": self.n_ctx,
                "activation": self.activation}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) features -> mu_z, logvar_z (B, Z)."""
        h = F.relu(self.enc(x))
        return self.mu(h), self.logvar(h)

    def bias(self, z: torch.Tensor) -> torch.Tensor:
        """(B, Z) latents -> beta (B, W)."""
        h = self.gen1(z)
        h = F.relu(h) if self.activation == "relu" else F.leaky_relu(h, 0.2)
        return self.gen2(h)

    def decode(self, z: torch.Tensor, prompts, index: torch.Tensor) -> torch.Tensor:
        """(B, D) unit features of latents z for prompts `index` of `prompts` (a
        `text.towers.PreparedPrompts` with n_ctx slots): tower(ctx + beta, class name)."""
        ctx = self.ctx.unsqueeze(0) + self.bias(z).unsqueeze(1)  # (B, n_ctx, W)
        return F.normalize(prompts(ctx, index), dim=-1)
