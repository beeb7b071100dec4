"""The TF-VAEGAN networks (method.md 2.5); their training loop is `pipeline.generator`.

Five small MLPs (D = feature width `resSize`, A = class-embedding width `attSize`, Z = latent
width `nz` = D by default, H = `hidden` = ngh = ndh, LeakyReLU(0.2), weights N(0, 0.02), zero
biases), as in ``ylong4/DFZSL: tfvaegan/networks/TFVAEGAN_model.py``:

    Encoder E(x, a)       [x; a] -> FC H -> LReLU -> FC 2Z -> LReLU -> heads mu_z (Z), logvar_z (Z)
    Generator G(z, a)     [z; a] -> FC H -> LReLU = h -> (h + a1 F(dec_hidden)) -> FC D -> L2-norm
    Discriminator D(x, a) [x; a] -> FC H -> LReLU -> FC 1
    Feedback F(h)         FC H -> LReLU -> FC H -> LReLU
    Decoder Dec(x)        x -> FC H -> LReLU = dec_hidden -> FC A -> L2-norm (reconstructs a)

Shapes: x (B, D) float, a (B, A) float class embeddings (unit rows), z (B, Z); every network
keeps the dtype and device of its parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int
from ..config import GeneratorConfig
from ..hashing import seeded_generator

__all__ = [
    "Encoder",
    "Generator",
    "Discriminator",
    "Feedback",
    "SemanticDecoder",
    "TFVAEGAN",
]

_SLOPE = 0.2  # LeakyReLU negative slope of every network
_INIT_STD = 0.02


# ------------------------------------------------------------------------------- networks
def _linear(n_in: int, n_out: int) -> nn.Linear:
    # Built on the meta device and materialised uninitialised: nn.Linear's own kaiming init would
    # consume (and so perturb) the global RNG; `_init_linears` sets the real weights.
    return nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")


def _init_linears(module: nn.Module, generator: torch.Generator | None) -> None:
    """N(0, 0.02) weights and zero biases for every nn.Linear (the reference `weights_init`)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, _INIT_STD, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


def _lrelu(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, _SLOPE)


class Encoder(nn.Module):
    """E(x, a) -> (mu_z, logvar_z): [x; a] -> FC H -> LReLU -> FC 2Z -> LReLU -> two FC Z heads.

    Args:
        feature_dim: D. embed_dim: A. latent_dim: Z. hidden: H (ndh in the reference).
        generator: RNG of the N(0, 0.02) init (None: torch's global RNG).

    Shapes: x (B, D), a (B, A) float32 -> mu_z, logvar_z (B, Z).
    """

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        latent_dim: int,
        hidden: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.fc1 = _linear(feature_dim + embed_dim, hidden)
        self.fc3 = _linear(hidden, 2 * latent_dim)
        self.linear_means = _linear(2 * latent_dim, latent_dim)
        self.linear_log_var = _linear(2 * latent_dim, latent_dim)
        _init_linears(self, generator)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _lrelu(self.fc3(_lrelu(self.fc1(torch.cat((x, a), dim=1)))))
        return self.linear_means(h), self.linear_log_var(h)


class Generator(nn.Module):
    """G(z, a, feedback=None, a1=0) -> unit rows: [z; a] -> FC H -> LReLU -> (+ a1 fb) -> FC D.

    The output is L2-normalised (DFZSL's change; the original TF-VAEGAN used a sigmoid). With
    `feedback` (the (B, H) output of `Feedback`), the hidden layer becomes h + a1 * feedback
    before the last FC; without it, `a1` is ignored (as in the reference).

    Shapes: z (B, Z), a (B, A), feedback (B, H) or None -> (B, D) float32 unit rows.
    """

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        latent_dim: int,
        hidden: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.fc1 = _linear(latent_dim + embed_dim, hidden)
        self.fc3 = _linear(hidden, feature_dim)
        _init_linears(self, generator)

    def hidden(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The (B, H) hidden layer h = LReLU(FC([z; a])), before any feedback."""
        return _lrelu(self.fc1(torch.cat((z, a), dim=1)))

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The last layer on a (B, H) hidden layer: L2-normalise(FC(h)) -> (B, D)."""
        return F.normalize(self.fc3(h), dim=1)

    def forward(
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        feedback: torch.Tensor | None = None,
        a1: float = 0.0,
    ) -> torch.Tensor:
        h = self.hidden(z, a)
        if feedback is not None:
            h = h + a1 * feedback
        return self.output(h)


class Discriminator(nn.Module):
    """The conditional critic D(x, a): [x; a] -> FC H -> LReLU -> FC 1 (no output activation).

    Shapes: x (B, D), a (B, A) -> (B, 1).
    """

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        hidden: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.fc1 = _linear(feature_dim + embed_dim, hidden)
        self.fc2 = _linear(hidden, 1)
        _init_linears(self, generator)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.fc2(_lrelu(self.fc1(torch.cat((x, a), dim=1))))

    def input_gradient(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """grad_x D(x, a) per row, (B, D), differentiable w.r.t. D's weights.

        For this two-layer critic, grad_x D = (s * w2) @ W1[:, :D] with s = LeakyReLU'(pre) in
        {1, 0.2} (1 where pre > 0, as autograd's leaky_relu_backward). s is piecewise constant,
        so its derivative is zero almost everywhere and this closed form has exactly the
        parameter gradients of the reference double-backward (`autograd.grad(...,
        create_graph=True)`), at a fraction of the cost: the pre-activation needs no graph and
        x needs no gradient. Tested against autograd.
        """
        with torch.no_grad():
            pre = self.fc1(torch.cat((x, a), dim=1))
            s = torch.where(pre > 0, 1.0, _SLOPE).to(pre.dtype)
        return (s * self.fc2.weight) @ self.fc1.weight[:, : self.feature_dim]

    def critic_terms(
        self, real: torch.Tensor, fake: torch.Tensor, interp: torch.Tensor, a: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """D(real, a), D(fake, a) and `input_gradient(interp, a)` in one pass: (B, 1) x 2, (B, D).

        The three inputs share the condition a, so a's part of the first layer, a @ W1[:, D:]^T
        + b1, is computed once instead of three times (about 10% of a critic step's FLOPs at
        D = A). Same values as the separate calls up to float rounding (tested).
        """
        B, Dx = a.shape[0], self.feature_dim
        # split, not two slices: the backward of a split is one cat of the two gradients,
        # where two slices would each scatter into a zero (H, D + A) tensor and add them
        # (bitwise the same gradient; ~10% of a critic step at H = 256, issue 13).
        w_x, w_a = self.fc1.weight.split((Dx, self.fc1.weight.shape[1] - Dx), dim=1)
        pre_a = F.linear(a, w_a, self.fc1.bias)  # (B, H)
        pre = F.linear(torch.cat((real, fake)), w_x).view(2, B, -1) + pre_a
        out = self.fc2(_lrelu(pre))  # (2, B, 1)
        with torch.no_grad():
            s = torch.where(F.linear(interp, w_x) + pre_a > 0, 1.0, _SLOPE).to(pre.dtype)
        return out[0], out[1], (s * self.fc2.weight) @ w_x


class Feedback(nn.Module):
    """F(h): FC H -> LReLU -> FC H -> LReLU; maps the decoder hidden layer to G's hidden layer.

    Shapes: (B, H) -> (B, H).
    """

    def __init__(self, hidden: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.fc1 = _linear(hidden, hidden)
        self.fc2 = _linear(hidden, hidden)
        _init_linears(self, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return _lrelu(self.fc2(_lrelu(self.fc1(h))))


class SemanticDecoder(nn.Module):
    """Dec(x): x -> FC H -> LReLU (the hidden layer fed to F) -> FC A -> L2-normalise.

    Reconstructs the (unit) class embedding of a feature. `hidden(x)` gives the (B, H) hidden
    layer alone; `forward(x, return_hidden=True)` gives both.

    Shapes: x (B, D) -> (B, A) unit rows [, (B, H)].
    """

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        hidden: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.fc1 = _linear(feature_dim, hidden)
        self.fc3 = _linear(hidden, embed_dim)
        _init_linears(self, generator)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return _lrelu(self.fc1(x))

    def forward(
        self, x: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        out = F.normalize(self.fc3(h), dim=1)
        return (out, h) if return_hidden else out


class TFVAEGAN(nn.Module):
    """The five TF-VAEGAN networks: `encoder`, `generator`, `discriminator`, `feedback`, `decoder`.

    Args:
        feature_dim: D (resSize; 512 for CLIP ViT-B/16).
        embed_dim: A (attSize; 512 for CLIP text features).
        hidden: H = ngh = ndh (1024).
        latent_dim: Z = nz = latent_size (None: D, as in DFZSL).
        seed: seeds the N(0, 0.02) init with a private generator (None: torch's global RNG).
        config: the `GeneratorConfig` it was (or will be) trained with; `synthesize` takes its
            default a2 from it. None: `GeneratorConfig()`.

    Networks are initialised in the order E, G, D, F, Dec from one generator, in float32 on the
    CPU (move with `.to(device)`).
    """

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        hidden: int = 1024,
        latent_dim: int | None = None,
        *,
        seed: int | None = 0,
        config: GeneratorConfig | None = None,
    ) -> None:
        super().__init__()
        D = check_int(feature_dim, "feature_dim", 1)
        A = check_int(embed_dim, "embed_dim", 1)
        H = check_int(hidden, "hidden", 1)
        Z = D if latent_dim is None else check_int(latent_dim, "latent_dim", 1)
        self.feature_dim, self.embed_dim, self.hidden, self.latent_dim = D, A, H, Z
        self.config = config if config is not None else GeneratorConfig()
        g = None if seed is None else seeded_generator(seed, 0)
        self.encoder = Encoder(D, A, Z, H, g)
        self.generator = Generator(D, A, Z, H, g)
        self.discriminator = Discriminator(D, A, H, g)
        self.feedback = Feedback(H, g)
        self.decoder = SemanticDecoder(D, A, H, g)

    def shape_dict(self) -> dict[str, int]:
        return {
            "feature_dim": self.feature_dim,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "latent_dim": self.latent_dim,
        }

    def generate(
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        a1: float | None = None,
        *,
        use_feedback: bool = True,
    ) -> torch.Tensor:
        """x_hat = G(z, a, F(Dec.hidden(G(z, a))), a1): the feedback path (or plain G(z, a)).

        The decoder's hidden layer is detached, as in the reference, so gradients reach G's
        second pass and F only.

        Args:
            z: (B, Z) latent. a: (B, A) unit class embeddings.
            a1: feedback weight (None: `config.feedback_weight_syn`).
            use_feedback: False gives G(z, a) alone.

        Returns:
            (B, D) unit rows.
        """
        if not use_feedback:
            return self.generator(z, a)
        if a1 is None:
            a1 = self.config.feedback_weight_syn
        # Both passes of G share h = LReLU(FC([z; a])): computed once (the reference computes it
        # twice). The first pass only feeds the detached decoder hidden layer: no graph.
        h = self.generator.hidden(z, a)
        with torch.no_grad():
            dec_hidden = self.decoder.hidden(self.generator.output(h))
        return self.generator.output(h + a1 * self.feedback(dec_hidden))

    def forward(self, z: torch.Tensor, a: torch.Tensor, a1: float | None = None) -> torch.Tensor:
        """Same as `generate(z, a, a1)`."""
        return self.generate(z, a, a1)
