"""Stage 3 of DFZSL: training and sampling the TF-VAEGAN feature generator (method.md 2.5).

The five networks (encoder E, generator G, critic D, feedback F, semantic decoder Dec) live in
:mod:`dfzsl_fast.models.tfvaegan`, with their shapes.

Training (`train_generator`) follows ``tfvaegan/train_images.py`` with the AWA2 launch flags
(``--encoded_noise --freeze_dec --feedback_loop 2``). Per epoch, for loop in (0, 1) and for each
of ceil(N / batch) iterations:

- `critic_iters` critic steps, each on a fresh random batch (x, a): the decoder takes one Adam
  step on recon_weight * WeightedL1(Dec(x), a); a fake is made from z = mu_z + sigma_z eps of the
  encoder (loop 1: through the feedback path with a1); the critic takes one Adam step on
  gamma_d (D(fake) - D(real)) + gamma_d lambda GP, GP = mean (||grad_x D(interp)|| - 1)^2.
- Adaptive lambda (`adapt_lambda`): with gp_avg the mean of GP / (gamma_d lambda) over those
  steps, lambda *= 1.1 if gp_avg > 1.05, lambda /= 1.1 if gp_avg < 1.001.
- One generator step on the last critic batch: VAE loss (sum of squared errors + KL, both / B)
  - gamma_g D(x_hat) + recon_weight WeightedL1(Dec(x_hat), a), with D and Dec frozen; E and G
  step, and F too in loop 1.

`synthesize` runs G -> Dec hidden -> F -> G with a2 (the reference's `generate_syn_feature`)
through the fused synthesis op (`ops/generator.py`); z of row r of class c comes from the
counter-based stream (seed, c, r), so rows do not depend on the batch size or on how the class
list is split.

Choices where method.md is silent, taken from the reference code:
- The two feedback loops are the OUTER loop inside an epoch (all iterations of loop 0, then all
  iterations of loop 1), not two passes per iteration; the step count is the same.
- Features are L2-normalised here (the fork's ``--preprocessing``), like the class embeddings:
  G's output is a unit vector, so the VAE term only makes sense against unit targets.
- The G step reuses the batch of the last critic step.
- The decoder hidden layer that feeds F is detached (``getLayersOutDet``), so the first pass of
  G in the feedback path carries no gradient; we run it under no_grad.

Same updates as the reference, computed with less work: the critic's fake is made without a
graph (the reference detaches it anyway); the gradient penalty uses the closed-form input
gradient of the two-layer critic instead of a double backward (`Discriminator.input_gradient`,
same parameter gradients); real, fake and interpolate share the condition's share of the
critic's first layer (`Discriminator.critic_terms`); both passes of G in the feedback path share
their first layer; Adam is the fused kernel; lambda and the loss sums stay on the device, so
there is one host sync per epoch. The default ``impl="fast"`` (issue 13) also hands the encoder
forward of the last critic step, made with its graph, to the generator step (same batch, same
weights: the reference recomputes identical values); ``impl="reference"`` is the loop as it
was, the oracle of the equivalence tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import check_class_indices, check_int, check_matrix, check_seed
from ..config import GeneratorConfig
from ..hashing import fingerprint, seeded_generator
from ..io.atomic import atomic_write
from ..models.tfvaegan import (
    TFVAEGAN,
    Discriminator,
    Encoder,
    Feedback,
    Generator,
    SemanticDecoder,
)
from ._progress import Progress

__all__ = [
    "Encoder",
    "Generator",
    "Discriminator",
    "Feedback",
    "SemanticDecoder",
    "TFVAEGAN",
    "GeneratorFitInfo",
    "weighted_l1",
    "adapt_lambda",
    "train_generator",
    "synthesize",
    "load_generator",
]

_FEEDBACK_LOOPS = 2  # --feedback_loop 2 (the reference script; not a config field)
_IMPLS = ("fast", "reference")  # train_generator(impl=...): same algorithm, see its docstring
_CKPT_FORMAT = "dfzsl_fast.tfvaegan/1"
# Config fields that may differ between a checkpoint and the run resuming it: `epochs` (to train
# longer) and the two synthesis-only settings.
_RESUMABLE_FIELDS = ("epochs", "syn_num", "feedback_weight_syn")


# ------------------------------------------------------------------------------- losses
def weighted_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TF-VAEGAN's WeightedL1: mean over rows of sum_j |e_j| e_j^2 / ||e||_2, e = pred - target.

    A row with e = 0 contributes 0 (the norm is clamped to the dtype's tiny, which also keeps
    the gradient finite there; the reference would give 0/0 = NaN).

    Args:
        pred, target: (B, A) float tensors.

    Returns:
        0-d tensor (differentiable).

    Example:
        >>> weighted_l1(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2))  # (27 + 64) / 5
        tensor(18.2000)
    """
    e = pred - target
    norm = e.norm(dim=1).clamp_min(torch.finfo(e.dtype).tiny)
    return ((e.abs() * e.square()).sum(dim=1) / norm).mean()


def _vae_loss(
    recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    # Reference `loss_fn`: summed squared error + KL(N(mu, sigma^2) || N(0, I)), both / B.
    B = x.shape[0]
    sse = (recon - x).square().sum()
    kld = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum()
    return (sse + kld) / B


def adapt_lambda(
    lam: float | torch.Tensor,
    gp_avg: float | torch.Tensor,
    *,
    upper: float = 1.05,
    lower: float = 1.001,
    factor: float = 1.1,
) -> float | torch.Tensor:
    """The adaptive gradient-penalty weight of TF-VAEGAN.

    gp_avg is the mean of (||grad|| - 1)^2 over the critic steps just taken (= the reference's
    gp_sum / (gamma_d * lambda * critic_iters)). Returns lambda * factor if gp_avg > upper,
    lambda / factor if gp_avg < lower, else lambda. Works on Python floats and, without a host
    sync, on 0-d tensors (`torch.where`).

    Note what the published thresholds do: gp_avg lies in [1.001, 1.05] only when ||grad|| is
    about 2.0-2.02 (or about 0), so lambda shrinks by 1.1 at almost every iteration while the
    critic's gradient norm is below ~2 and grows only beyond it; with ||grad|| near 1 (the
    usual WGAN-GP target) lambda decays geometrically (~1e-7 after 190 iterations). This is the
    reference behaviour and is kept; lambda_gp = 0 disables the penalty altogether.

    Example:
        >>> adapt_lambda(10.0, 1.2), adapt_lambda(10.0, 1.02), adapt_lambda(10.0, 0.5)
        (11.0, 10.0, 9.090909090909092)
    """
    if isinstance(lam, torch.Tensor) or isinstance(gp_avg, torch.Tensor):
        lam_t = torch.as_tensor(lam)
        gp_t = torch.as_tensor(gp_avg, device=lam_t.device)
        return torch.where(
            gp_t > upper, lam_t * factor, torch.where(gp_t < lower, lam_t / factor, lam_t)
        )
    if gp_avg > upper:
        return lam * factor
    if gp_avg < lower:
        return lam / factor
    return lam


# ------------------------------------------------------------------------------- checks
# ------------------------------------------------------------------------------- training
@dataclass
class GeneratorFitInfo:
    """Per-epoch records of `train_generator(..., return_info=True)` (all epochs, resumed ones
    included; Python floats).

    Attributes:
        history: dict of lists, one entry per epoch:
            ``d_cost`` mean critic loss gamma_d (D(fake) - D(real)) + gamma_d lambda GP;
            ``wasserstein`` mean gamma_d (D(real) - D(fake));
            ``gp`` mean (||grad|| - 1)^2;
            ``g_adv`` mean -D(x_hat) (unscaled; the G loss uses gamma_g times it);
            ``vae`` mean VAE loss; ``dec_real`` mean WeightedL1(Dec(x), a) of the decoder steps;
            ``dec_fake`` mean WeightedL1(Dec(x_hat), a) of the G steps;
            ``lambda`` the GP weight at the end of the epoch; ``seconds`` the epoch's wall time.
        start_epoch: epochs already done when this call started (from a checkpoint).
        epochs: epochs done when it returned.
        seconds: wall time of this call's training.
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    start_epoch: int = 0
    epochs: int = 0
    seconds: float = 0.0


_HISTORY_KEYS = (
    "d_cost",
    "wasserstein",
    "gp",
    "g_adv",
    "vae",
    "dec_real",
    "dec_fake",
    "lambda",
    "seconds",
)


def _config_dict(config: GeneratorConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE_FIELDS}


def _save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    # an interrupt (Ctrl-C, a killed job) leaves the previous complete checkpoint or the new one
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or damaged file
        raise ValueError(f"checkpoint: cannot read {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
        raise ValueError(f"checkpoint: {path} is not a dfzsl_fast TF-VAEGAN checkpoint")
    return ckpt


def _check_compatible(ckpt: dict[str, Any], expect: dict[str, Any], path: Path) -> None:
    for key in ("shapes", "data", "seed", "config"):
        have, want = ckpt.get(key), expect[key]
        if have == want:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            diff = [
                f"{k}: checkpoint {have.get(k)!r} vs now {want.get(k)!r}"
                for k in sorted(set(want) | set(have))
                if have.get(k) != want.get(k)
            ]
            detail = "; ".join(diff)
        else:
            detail = f"checkpoint {have!r} vs now {want!r}"
        what = {
            "shapes": "network/data shapes differ",
            "data": "the training data (features, labels or class embeddings) differ",
            "seed": "the seed differs",
            "config": "the generator config differs",
        }[key]
        raise ValueError(
            f"checkpoint: {path} was written by a different run ({what}: {detail}); pass "
            "resume=False to overwrite it, or another checkpoint path"
        )


def load_generator(path: str | os.PathLike, device: torch.device | str | None = None) -> TFVAEGAN:
    """Rebuild the trained `TFVAEGAN` stored in a `train_generator` checkpoint.

    Args:
        path: the checkpoint file. device: where to put the networks (default CPU).

    Returns:
        The model after the checkpoint's last completed epoch, in eval mode, with its config.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no checkpoint at {p}")
    ckpt = _load_checkpoint(p)
    cfg = GeneratorConfig(**{**dataclasses.asdict(GeneratorConfig()), **ckpt["full_config"]})
    model = TFVAEGAN(**ckpt["shapes_model"], seed=None, config=cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device if device is not None else "cpu").eval()


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    # torch.set_num_threads for the duration of the block, restored after (None: leave it).
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batch_indices(n: int, b: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    # The reference `next_seen_batch`: every batch is the first b entries of a fresh randperm(n)
    # (no repeats inside a batch, batches independent). Drawn for a whole loop at once on the CPU
    # so the device sees a single copy.
    out = torch.empty(steps, b, dtype=torch.int64)
    for s in range(steps):
        out[s] = torch.randperm(n, generator=gen)[:b]
    return out


def train_generator(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_embeddings: torch.Tensor,
    config: GeneratorConfig | None = None,
    *,
    seed: int | None = None,
    latent_dim: int | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callback: Callable[[int, TFVAEGAN, dict[str, float]], None] | None = None,
    device: torch.device | str | None = None,
    return_info: bool = False,
    impl: str = "fast",
    num_threads: int | None = None,
) -> TFVAEGAN | tuple[TFVAEGAN, GeneratorFitInfo]:
    """Train DFZSL's TF-VAEGAN on (virtual) seen features (method.md 2.5).

    Args:
        features: (N, D) float training features (any norm; L2-normalised here, as the fork's
            ``--preprocessing``). NaN/Inf or all-zero rows are errors.
        labels: (N,) int64 class indices into `class_embeddings`, in [0, C).
        class_embeddings: (C, A) float class embeddings (the tuned text features of all
            classes, any norm; L2-normalised here). Classes without training rows (the unseen
            ones) are allowed: `synthesize` uses them later.
        config: `GeneratorConfig` (None: the defaults = the AWA2 launch script): epochs,
            batch_size, hidden, lr (E, G, D), beta1, feedback_lr, decoder_lr, critic_iters,
            lambda_gp (initial), gamma_d, gamma_g, recon_weight, feedback_weight_train (a1).
        seed: seeds the init, the batches and the noise through private generators; the global
            RNG is untouched (None: `config.seed`). Same seed, data and config => same weights.
        latent_dim: Z (None: D, as in DFZSL).
        progress: progress bar over iterations (losses shown after each epoch).
        checkpoint: a file path. After every epoch the full state (networks, optimisers, lambda,
            RNG states, history) is written there atomically. None: no checkpointing.
        resume: if `checkpoint` exists, continue from it (it must come from the same data,
            shapes, seed and config except `epochs`, `syn_num`, `feedback_weight_syn`, else a
            ValueError). False: start afresh and overwrite it.
        callback: called as callback(epoch, model, record) after each epoch (after the
            checkpoint is written), record = that epoch's `GeneratorFitInfo.history` entries.
            The model is in train mode (and is put back in it afterwards), so a callback may
            evaluate, e.g. `synthesize` on held-out classes.
        device: where to train (None: features' device).
        return_info: also return a `GeneratorFitInfo`.
        impl: ``"fast"`` (default) or ``"reference"``: the same algorithm, losses, update
            order and random draws (results equal to float rounding; bitwise at equal thread
            counts, tested). ``"fast"`` gives the generator step the encoder forward of the last
            critic step instead of recomputing it (same batch, same weights: only the generator
            step updates E), one encoder forward fewer per iteration. ``"reference"`` is the
            loop as it was before issue 13, kept as the oracle of the tests and the benchmark
            baseline.
        num_threads: intra-op threads while training on the CPU (torch's setting is restored
            on return); None (default): torch's setting. On a machine whose cores other jobs
            share, pass 1: a batch-64 step is ~76 small GEMMs, each a fork/join of the thread
            pool, and every join then waits for a descheduled thread (2 threads ran the
            demo-width loop 3-8x slower than 1 there); on an idle 2-core machine 2 threads
            are 1.4x faster than 1 (benchmarks/RESULTS.md, issue 13). `callback` runs under
            the same setting. Ignored on other devices.

    Returns:
        The trained `TFVAEGAN` (eval mode, on `device`, `model.config = config`); with
        `return_info`, (model, info).

    Raises:
        TypeError / ValueError naming the argument: wrong types, width mismatches, labels out of
        range, empty inputs, NaN/Inf, a checkpoint from a different run, or a checkpoint with
        more epochs than `config.epochs`.

    Cost: per epoch 2 x ceil(N / batch) iterations of (critic_iters + 1) steps, about 13 GFLOP
    per iteration at D = A = Z = 512, H = 1024, critic_iters 5 (1.75 GFLOP at the demo's
    H = 256, critic_iters 2, of which the encoder is 44%). A batch-64 step is a few dozen small
    GEMMs: on the CPU it is arithmetic-bound with one thread (~65 GFLOP/s per core) and, with
    2 threads on cores that other jobs share, bound by the thread pool's fork/join instead
    (~10x slower). Measured on the 2-core build CPU: benchmarks/RESULTS.md ("TF-VAEGAN training
    iterations"). Before issue 13, idle machine, N = 6000 (188 iterations): ~185 ms per
    iteration with 2 threads, ~270 ms with 1 thread. Published settings are meant for a GPU.

    Example:
        >>> cfg = GeneratorConfig(epochs=120)
        >>> model = train_generator(x_virtual, y_virtual, text_all, cfg, checkpoint="gan.pt")
        >>> x_syn, y_syn = synthesize(model, text_all, unseen, cfg.syn_num, seed=0)
    """
    if config is None:
        config = GeneratorConfig()
    if not isinstance(config, GeneratorConfig):
        raise TypeError(f"config: expected a GeneratorConfig, got {type(config).__name__}")
    if impl not in _IMPLS:
        raise ValueError(f"impl: expected one of {_IMPLS}, got {impl!r}")
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads", 1)
    x_in = check_matrix(features, "features", "(N, D)")
    e_in = check_matrix(class_embeddings, "class_embeddings", "(C, A)")
    N, D = x_in.shape
    C, A = e_in.shape
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise TypeError("labels: expected an int64 tensor")
    if labels.shape != (N,):
        raise ValueError(
            f"labels: expected shape ({N},) to match features' {N} rows, got {tuple(labels.shape)}"
        )
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= C:
        raise ValueError(
            f"labels: class indices must lie in [0, {C}) (rows of class_embeddings), got range "
            f"[{lo}, {hi}]"
        )
    seed = config.seed if seed is None else seed
    seed = check_seed(seed)
    if latent_dim is not None:
        latent_dim = check_int(latent_dim, "latent_dim", 1)
    Z = D if latent_dim is None else latent_dim
    epochs = check_int(config.epochs, "config.epochs", 1)
    H = check_int(config.hidden, "config.hidden", 1)
    critic_iters = check_int(config.critic_iters, "config.critic_iters", 1)
    batch = check_int(config.batch_size, "config.batch_size", 1)
    device = torch.device(device) if device is not None else x_in.device
    ckpt_path = Path(checkpoint) if checkpoint is not None else None

    B = min(batch, N)  # randperm(N)[:batch] holds N rows when N < batch
    iters = math.ceil(N / batch)  # the reference: range(0, ntrain, batch_size)
    a1 = float(config.feedback_weight_train)
    gamma_d, gamma_g = float(config.gamma_d), float(config.gamma_g)
    rw = float(config.recon_weight)

    x_all = F.normalize(x_in.to(device=device, dtype=torch.float32), dim=1)
    emb = F.normalize(e_in.to(device=device, dtype=torch.float32), dim=1)
    y_all = labels.detach().to(device)
    expect = {
        "shapes": {"N": N, "D": D, "C": C, "A": A, "hidden": H, "latent_dim": Z},
        "data": fingerprint(x_in.float(), labels, e_in.float()),
        "seed": seed,
        "config": _config_dict(config),
    }

    model = TFVAEGAN(D, A, H, Z, seed=seed, config=config).to(device)
    E, G, Dn, Fb, Dec = (
        model.encoder,
        model.generator,
        model.discriminator,
        model.feedback,
        model.decoder,
    )
    betas = (float(config.beta1), 0.999)
    # The fused Adam kernel (one pass over each tensor; CPU and CUDA) is the same update as the
    # default per-tensor loop but ~7x faster on a 2-core CPU, where the loop's ten elementwise
    # passes over 16.6M parameter updates per iteration cost more than the matmuls.
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    opt_e = torch.optim.Adam(E.parameters(), lr=config.lr, **fused)  # default betas (reference)
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr, betas=betas, **fused)
    opt_d = torch.optim.Adam(Dn.parameters(), lr=config.lr, betas=betas, **fused)
    opt_f = torch.optim.Adam(Fb.parameters(), lr=config.feedback_lr, betas=betas, **fused)
    opt_dec = torch.optim.Adam(Dec.parameters(), lr=config.decoder_lr, betas=betas, **fused)
    opts = {"e": opt_e, "g": opt_g, "d": opt_d, "f": opt_f, "dec": opt_dec}

    idx_gen = seeded_generator(seed, 1)  # batches (CPU)
    noise_gen = seeded_generator(seed, 2, device)  # eps, alpha
    # lambda lives on the device so the adaptive rule needs no host sync per iteration.
    lam = torch.tensor(float(config.lambda_gp), dtype=torch.float64, device=device)
    history: dict[str, list[float]] = {k: [] for k in _HISTORY_KEYS}
    start_epoch = 0

    if ckpt_path is not None and resume and ckpt_path.exists():
        ckpt = _load_checkpoint(ckpt_path)
        _check_compatible(ckpt, expect, ckpt_path)
        if ckpt["epoch"] > epochs:
            raise ValueError(
                f"checkpoint: {ckpt_path} already holds {ckpt['epoch']} epochs but "
                f"config.epochs is {epochs}; raise config.epochs or pass resume=False"
            )
        model.load_state_dict(ckpt["model"])
        for k, o in opts.items():
            o.load_state_dict(ckpt["optim"][k])
        lam.fill_(float(ckpt["lambda"]))
        idx_gen.set_state(ckpt["rng"]["idx"])
        noise_gen.set_state(ckpt["rng"]["noise"].to(noise_gen.get_state().device))
        history = {k: list(ckpt["history"].get(k, [])) for k in _HISTORY_KEYS}
        start_epoch = int(ckpt["epoch"])

    def save(epoch: int) -> None:
        _save_checkpoint(
            {
                "format": _CKPT_FORMAT,
                **expect,
                "full_config": dataclasses.asdict(config),
                "shapes_model": model.shape_dict(),
                "epoch": epoch,
                "model": model.state_dict(),
                "optim": {k: o.state_dict() for k, o in opts.items()},
                "lambda": float(lam),
                "rng": {"idx": idx_gen.get_state(), "noise": noise_gen.get_state().cpu()},
                "history": history,
            },
            ckpt_path,
        )

    model.train()
    d_params = list(Dn.parameters())
    dec_params = list(Dec.parameters())
    zero = torch.zeros((), dtype=torch.float64, device=device)
    t_start = time.perf_counter()
    total_iters = (epochs - start_epoch) * _FEEDBACK_LOOPS * iters
    fast = impl == "fast"
    threads = num_threads if device.type == "cpu" else None
    with (
        _intra_op_threads(threads),
        Progress(total_iters, "dfzsl stage 3: TF-VAEGAN", enabled=progress) as bar,
    ):
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            # Sums over the epoch, kept on the device (no per-step host sync).
            acc = {k: zero.clone() for k in _HISTORY_KEYS if k not in ("lambda", "seconds")}
            n_crit = n_gen = 0
            for loop in range(_FEEDBACK_LOOPS):
                use_fb = loop == 1
                idx_loop = _batch_indices(N, B, iters * critic_iters, idx_gen).to(device)
                for it in range(iters):
                    # ---------------- critic (and decoder) steps
                    for p in d_params:
                        p.requires_grad_(True)
                    for p in dec_params:
                        p.requires_grad_(True)
                    gp_sum = zero.clone()
                    for c in range(critic_iters):
                        idx = idx_loop[it * critic_iters + c]
                        x = x_all[idx]
                        a = emb[y_all[idx]]
                        # Decoder on real features (before the fake is made, as the reference).
                        opt_dec.zero_grad(set_to_none=True)
                        r_real = weighted_l1(Dec(x), a)
                        (rw * r_real).backward()
                        opt_dec.step()
                        # The fake: its gradient is never used by the critic step (the
                        # reference detaches it), so E, G, Dec and F run without a graph.
                        # impl="fast": the generator step runs E on this same last batch with
                        # the same weights (only the generator step updates E), so E's
                        # forward here is made with its graph and handed on (bitwise the
                        # values the generator step would recompute).
                        if fast and c == critic_iters - 1:
                            enc = E(x, a)
                            mu, logvar = enc[0].detach(), enc[1].detach()
                        with torch.no_grad():
                            if not (fast and c == critic_iters - 1):
                                mu, logvar = E(x, a)
                            eps = torch.randn(mu.shape, generator=noise_gen, device=device)
                            z = eps * torch.exp(0.5 * logvar) + mu
                            fake = model.generate(z, a, a1) if use_fb else G(z, a)
                            alpha = torch.rand((B, 1), generator=noise_gen, device=device)
                            interp = alpha * x + (1 - alpha) * fake
                        opt_d.zero_grad(set_to_none=True)
                        out_real, out_fake, grad = Dn.critic_terms(x, fake, interp, a)
                        d_real, d_fake = out_real.mean(), out_fake.mean()
                        gp = (grad.norm(dim=1) - 1).square().mean()
                        d_cost = gamma_d * (d_fake - d_real) + gamma_d * lam.float() * gp
                        d_cost.backward()
                        opt_d.step()
                        gp_sum += gp.detach()
                        acc["d_cost"] += d_cost.detach()
                        acc["wasserstein"] += gamma_d * (d_real - d_fake).detach()
                        acc["dec_real"] += r_real.detach()
                        n_crit += 1
                    acc["gp"] += gp_sum
                    lam = adapt_lambda(lam, gp_sum / critic_iters)

                    # ---------------- generator step (D and Dec frozen: --freeze_dec)
                    for p in d_params:
                        p.requires_grad_(False)
                    for p in dec_params:
                        p.requires_grad_(False)
                    opt_e.zero_grad(set_to_none=True)
                    opt_g.zero_grad(set_to_none=True)
                    opt_f.zero_grad(set_to_none=True)
                    mu, logvar = enc if fast else E(x, a)
                    eps = torch.randn(mu.shape, generator=noise_gen, device=device)
                    z = eps * torch.exp(0.5 * logvar) + mu
                    x_hat = model.generate(z, a, a1) if use_fb else G(z, a)
                    vae = _vae_loss(x_hat, x, mu, logvar)
                    g_adv = -Dn(x_hat, a).mean()
                    r_fake = weighted_l1(Dec(x_hat), a)
                    err_g = vae + gamma_g * g_adv + rw * r_fake
                    err_g.backward()
                    opt_e.step()
                    opt_g.step()
                    if use_fb:
                        opt_f.step()
                    acc["g_adv"] += g_adv.detach()
                    acc["vae"] += vae.detach()
                    acc["dec_fake"] += r_fake.detach()
                    n_gen += 1
                    bar.update(1)

            # One host sync per epoch.
            n_gp = n_gen * critic_iters
            record = {
                "d_cost": float(acc["d_cost"]) / n_crit,
                "wasserstein": float(acc["wasserstein"]) / n_crit,
                "gp": float(acc["gp"]) / n_gp,
                "g_adv": float(acc["g_adv"]) / n_gen,
                "vae": float(acc["vae"]) / n_gen,
                "dec_real": float(acc["dec_real"]) / n_crit,
                "dec_fake": float(acc["dec_fake"]) / n_gen,
                "lambda": float(lam),
                "seconds": time.perf_counter() - t_epoch,
            }
            for k in _HISTORY_KEYS:
                history[k].append(record[k])
            for p in d_params + dec_params:
                p.requires_grad_(True)
            if ckpt_path is not None:
                save(epoch + 1)
            bar.update(0, epoch=epoch + 1, d=record["d_cost"], vae=record["vae"])
            if callback is not None:
                callback(epoch, model, record)
                model.train()

    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    if not return_info:
        return model
    info = GeneratorFitInfo(
        history=history,
        start_epoch=start_epoch,
        epochs=max(epochs, start_epoch),
        seconds=time.perf_counter() - t_start,
    )
    return model, info


# ------------------------------------------------------------------------------- synthesis
def synthesize(
    model: TFVAEGAN,
    class_embeddings: torch.Tensor,
    classes: Sequence[int] | torch.Tensor,
    num_per_class: int,
    *,
    seed: int,
    batch_size: int | None = None,
    a2: float | None = None,
    use_feedback: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesise features of the given classes with a trained TF-VAEGAN, in memory (no grad).

    Each row is G(z, a_c, F(Dec.hidden(G(z, a_c))), a2) (the reference `generate_syn_feature`),
    computed by the fused synthesis op through `synthesis.TFVAEGANGenerator`. Row r of class c
    draws z from the counter-based stream (seed, c, r) (`reference.philox`), so the result does
    not depend on `batch_size`, thread count or the order/splitting of `classes`:
    synthesize(m, e, [0, 1], n) is the concatenation of synthesize(m, e, [0], n) and
    synthesize(m, e, [1], n), bitwise on the native kernel. For more rows than fit in memory,
    use `dfzsl_fast.synthesize_to` (shards on disk) or `synthesis.GeneratedRows` (on read).

    Args:
        model: a trained `TFVAEGAN` (its device is used).
        class_embeddings: (C, A) float embeddings of all classes (any norm; L2-normalised here,
            as in training).
        classes: (K,) distinct class indices into `class_embeddings`.
        num_per_class: rows per class (>= 1), e.g. `config.syn_num`.
        seed: noise seed.
        batch_size: rows per kernel call, bounding working memory (None: 65536).
        a2: feedback weight (None: `model.config.feedback_weight_syn`, 0.01).
        use_feedback: False uses G(z, a) alone.
        backend: "native", "triton", "torch" or None (auto).

    Returns:
        x: (K * num_per_class, D) float32 unit rows on the model's device, grouped by class in
        the order of `classes`; y: (K * num_per_class,) int64 class indices.

    Example:
        >>> x_u, y_u = synthesize(model, text_all, unseen_classes, 1800, seed=0)
    """
    from ..synthesis import TFVAEGANGenerator, generate_all

    gen = TFVAEGANGenerator(model, a2=a2, use_feedback=use_feedback, backend=backend)
    e_in = check_matrix(class_embeddings, "class_embeddings", "(C, A)")
    if e_in.shape[1] != model.embed_dim:
        raise ValueError(
            f"class_embeddings: width {e_in.shape[1]} does not match the model's embedding width "
            f"{model.embed_dim}"
        )
    cls = check_class_indices(classes, "classes", e_in.shape[0])
    if cls.numel() == 0:
        raise ValueError("classes: is empty")
    num = check_int(num_per_class, "num_per_class", 1)
    seed = check_seed(seed)
    bs = 65536 if batch_size is None else check_int(batch_size, "batch_size", 1)
    return generate_all(gen, e_in, cls, num, seed=seed, batch_rows=bs)
