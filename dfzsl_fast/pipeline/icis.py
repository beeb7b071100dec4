"""ICIS: image-free classifier injection with semantics (method.md section 3).

Two one-hidden-layer autoencoders share a latent space of width H:

    descriptor AE:  enc_a = Linear(d_a -> H) + ReLU,  dec_a = Linear(H -> d_a)
    weight AE:      enc_w = Linear(d_w -> H) + ReLU,  dec_w = Linear(H -> d_w)

where a class descriptor a (attributes, or any text embedding) and the class's classifier row w
([W_c | b_c] for an nn.Linear with bias, W_c otherwise) form one training pair. With
z_a = enc_a(a) and z_w = enc_w(w), the loss over a batch is

    L = mean_i l(dec_a(z_a), a)_i                      (descriptor self-reconstruction)
      + sum_i m_i l(dec_a(z_w), a)_i / sum_i m_i       (weight -> descriptor)
      + sum_i m_i l(dec_w(z_w), w)_i / sum_i m_i       (weight self-reconstruction)
      + sum_i m_i l(dec_w(z_a), w)_i / sum_i m_i       (descriptor -> weight)

with l the cosine distance 1 - cos (or the row mean squared error), m_i = 1 for a seen class
and 0 for an unseen descriptor (used only by the first term); sum_i m_i is clamped to >= 1, so
a batch without seen rows contributes the first term only. A new class's row is then
dec_w(enc_a(a_u)), written into an extended copy of the head (`inject`).

Reference values (paper scripts): H = 2048, Adam(lr 1e-5, betas (0.9, 0.999), no weight decay),
batch 20 (AWA2) or 16 (CUB, SUN), up to 1000 epochs with the slope early stop, N(0, 0.02)
weights and zero biases, unseen descriptors included, last epoch kept (strict_eval).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ICISConfig, check_count
from ..hashing import seeded_generator
from ..nn import CosineClassifier
from ._progress import Progress

__all__ = [
    "LinearInjection",
    "icis_linear",
    "ICIS",
    "ICISFitInfo",
    "icis_loss",
    "head_targets",
    "fit_icis",
    "inject",
    "icis_extend",
]

Head = nn.Linear | CosineClassifier


class ICIS(nn.Module):
    """The joint descriptor/weight autoencoder of ICIS (`--num_layers 2`).

    Args:
        descriptor_dim: d_a, width of the class descriptors.
        weight_dim: d_w, width of a classifier row (in_features + 1 with a bias).
        hidden: latent width H (2048; the SUN table-2 script uses 4096).
        init_std: std of the N(0, std) weight init (0.02); biases start at zero.
        generator: optional torch.Generator for the init (None: torch's default RNG).

    Differentiable: yes (a plain nn.Module).

    Example:
        >>> model = ICIS(85, 2049)
        >>> rows = model.predict(torch.randn(10, 85))   # (10, 2049)
    """

    def __init__(
        self,
        descriptor_dim: int,
        weight_dim: int,
        hidden: int = 2048,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, v in (
            ("descriptor_dim", descriptor_dim),
            ("weight_dim", weight_dim),
            ("hidden", hidden),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        self.enc_a = nn.Sequential(nn.Linear(descriptor_dim, hidden), nn.ReLU())
        self.dec_a = nn.Linear(hidden, descriptor_dim)
        self.enc_w = nn.Sequential(nn.Linear(weight_dim, hidden), nn.ReLU())
        self.dec_w = nn.Linear(hidden, weight_dim)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, init_std, generator=generator)
                    m.bias.zero_()

    @property
    def descriptor_dim(self) -> int:
        return self.dec_a.out_features

    @property
    def weight_dim(self) -> int:
        return self.dec_w.out_features

    def forward(
        self, a: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a (B, d_a), w (B, d_w)) -> (a from a, a from w, w from w, w from a)."""
        z_a = self.enc_a(a)
        z_w = self.enc_w(w)
        return self.dec_a(z_a), self.dec_a(z_w), self.dec_w(z_w), self.dec_w(z_a)

    def predict(self, a: torch.Tensor) -> torch.Tensor:
        """(M, d_a) descriptors -> (M, d_w) predicted classifier rows dec_w(enc_a(a))."""
        return self.dec_w(self.enc_a(a))


def _row_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)
    return (pred - target).pow(2).mean(dim=1)


def icis_loss(
    model: ICIS, a: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, loss: str = "cosine"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The four-term masked ICIS loss of one batch (see the module docstring).

    Args:
        model: the `ICIS` autoencoders.
        a: (B, d_a) descriptors. w: (B, d_w) classifier rows (anything, e.g. zeros, where
            mask = 0). mask: (B,) bool or 0/1 float, 1 for rows with a real weight.
        loss: "cosine" (1 - cos, every paper script) or "mse" (row mean squared error).

    Returns:
        (total, parts): the scalar loss and its four terms ("a_from_a", "a_from_w",
        "w_from_w", "w_from_a"), each weighted 1.
    """
    if loss not in ("cosine", "mse"):
        raise ValueError(f"loss: expected 'cosine' or 'mse', got {loss!r}")
    m = mask.to(a.dtype)
    msum = m.sum().clamp(min=1.0)
    a_aa, a_wa, w_ww, w_aw = model(a, w)
    parts = {
        "a_from_a": _row_loss(a_aa, a, loss).mean(),
        "a_from_w": (_row_loss(a_wa, a, loss) * m).sum() / msum,
        "w_from_w": (_row_loss(w_ww, w, loss) * m).sum() / msum,
        "w_from_a": (_row_loss(w_aw, w, loss) * m).sum() / msum,
    }
    return sum(parts.values()), parts


@dataclass
class ICISFitInfo:
    """Training record of `fit_icis`.

    Attributes:
        losses: (epochs_run,) float64 mean batch loss per epoch.
        epochs_run: epochs actually run.
        stopped_early: whether the slope criterion stopped training.
        seconds: wall time.
        semantics: the descriptors' semantic space ("text", "attributes", "combined";
            set by `icis_extend`).
        attribute_weight: the attribute weight of "combined" (given, or chosen on held-out
            base classes), else None.
    """

    losses: torch.Tensor
    epochs_run: int
    stopped_early: bool
    seconds: float
    semantics: str = "text"
    attribute_weight: float | None = None


def head_targets(head: Head) -> torch.Tensor:
    """The ICIS regression targets of a head: (C_s, d_w).

    nn.Linear with bias: [W | b] (C_s, in + 1); without: W. CosineClassifier: its weight rows
    (their norms are irrelevant to a cosine head). NaN/Inf weights are an error.
    """
    if isinstance(head, CosineClassifier):
        t = head.weight.detach()
    elif isinstance(head, nn.Linear):
        t = head.weight.detach()
        if head.bias is not None:
            t = torch.cat([t, head.bias.detach()[:, None]], dim=1)
    else:
        raise TypeError(
            f"head: expected an nn.Linear or a CosineClassifier, got {type(head).__name__}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError("head: its weights (or bias) contain NaN or Inf")
    return t


def _check_desc(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
        raise TypeError(f"{name}: expected a (C, d_a) floating-point tensor")
    if t.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one column")
    if t.device.type == "meta":
        raise ValueError(f"{name}: a meta tensor holds no values")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return t.detach()


def _normalize_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    n = t.norm(dim=1)
    if bool((n == 0).any()):
        raise ValueError(f"{name}: row {int((n == 0).nonzero()[0, 0])} is all zero")
    return t / n[:, None]


def fit_icis(
    seen_descriptors: torch.Tensor,
    seen_targets: torch.Tensor | Head,
    unseen_descriptors: torch.Tensor | None = None,
    *,
    include_unseen: bool = True,
    hidden: int = 2048,
    epochs: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-5,
    betas: tuple[float, float] = (0.9, 0.999),
    loss: str = "cosine",
    early_stopping: bool = True,
    slope_threshold: float | None = None,
    normalize_descriptors: bool = True,
    seed: int = 0,
    progress: bool = True,
    return_info: bool = False,
) -> ICIS | tuple[ICIS, ICISFitInfo]:
    """Train the ICIS autoencoders on seen (descriptor, classifier row) pairs.

    Args:
        seen_descriptors: (C_s, d_a) descriptors of the seen classes, in the head's row order.
        seen_targets: (C_s, d_w) classifier rows, or the head itself (`head_targets`).
        unseen_descriptors: (C_u, d_a) descriptors of the new classes; with `include_unseen`
            they join the training set with zero weight targets and mask 0 (descriptor
            self-reconstruction only), as the paper scripts do.
        include_unseen: see above (ignored without unseen descriptors).
        hidden: latent width H (2048).
        epochs: maximum epochs (1000).
        batch_size: rows per batch (16 for CUB/SUN, 20 for AWA2).
        lr, betas: Adam (1e-5, (0.9, 0.999)), no weight decay.
        loss: "cosine" (default, paper) or "mse".
        early_stopping: the reference slope rule: from epoch index 21 on (0-based),
            slope = -(mean(last 10 epoch losses) - mean(previous 10)) / 10; stop after 5
            consecutive epochs with slope < threshold.
        slope_threshold: default 2e-3 for "cosine", 2e-6 for "mse".
        normalize_descriptors: L2-normalise descriptor rows (the reference's inputs all are:
            xlsa17 attributes are stored normalised, word/text embeddings are normalised at load).
        seed: seeds the init and the shuffling (private generators; the global RNG is untouched).
        progress: progress bar over epochs.
        return_info: also return an `ICISFitInfo`.

    Returns:
        The trained `ICIS` model in eval mode (last epoch: strict_eval, no test-set selection);
        with `return_info`, (model, info). The flag `model.normalize_descriptors` is set so
        that `inject`/`icis_extend` treat new descriptors the same way.

    Example:
        >>> model = fit_icis(att[seen], base_linear, att[unseen])
        >>> extended = inject(base_linear, model.predict(att[unseen]))
    """
    a_s = _check_desc(seen_descriptors, "seen_descriptors")
    if isinstance(seen_targets, (nn.Linear, CosineClassifier)):
        w_s = head_targets(seen_targets)
    else:
        w_s = _check_desc(seen_targets, "seen_targets")
    if w_s.shape[0] != a_s.shape[0]:
        raise ValueError(
            f"seen_descriptors has {a_s.shape[0]} rows but the classifier has {w_s.shape[0]} "
            "classes; give one descriptor per seen class, in the classifier's row order"
        )
    if a_s.shape[0] < 1:
        raise ValueError("seen_descriptors: expected at least one seen class")
    a_u = None
    if unseen_descriptors is not None:
        a_u = _check_desc(unseen_descriptors, "unseen_descriptors")
        if a_u.shape[1] != a_s.shape[1]:
            raise ValueError(
                f"unseen_descriptors: width {a_u.shape[1]} differs from seen_descriptors' "
                f"width {a_s.shape[1]}"
            )
    epochs = check_count(epochs, "icis.epochs", 0)
    batch_size = check_count(batch_size, "icis.batch_size", 1)
    hidden = check_count(hidden, "icis.hidden", 1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    if loss not in ("cosine", "mse"):
        raise ValueError(f"loss: expected 'cosine' or 'mse', got {loss!r}")
    threshold = (
        slope_threshold if slope_threshold is not None else (2e-3 if loss == "cosine" else 2e-6)
    )

    device = w_s.device
    dtype = torch.float64 if w_s.dtype == torch.float64 else torch.float32
    a_s = a_s.to(device=device, dtype=dtype)
    w_s = w_s.to(dtype)
    if normalize_descriptors:
        a_s = _normalize_rows(a_s, "seen_descriptors")
    a_train, w_train = a_s, w_s
    mask = torch.ones(a_s.shape[0], dtype=dtype, device=device)
    if a_u is not None and include_unseen and a_u.shape[0]:
        a_u = a_u.to(device=device, dtype=dtype)
        if normalize_descriptors:
            a_u = _normalize_rows(a_u, "unseen_descriptors")
        a_train = torch.cat([a_s, a_u])
        w_train = torch.cat([w_s, w_s.new_zeros(a_u.shape[0], w_s.shape[1])])
        mask = torch.cat([mask, mask.new_zeros(a_u.shape[0])])

    gen = seeded_generator(seed)
    model = ICIS(a_s.shape[1], w_s.shape[1], hidden=hidden, generator=gen).to(
        device=device, dtype=dtype
    )
    model.normalize_descriptors = bool(normalize_descriptors)
    # fused Adam: same update rule, ~8x faster on CPU for the 4 x (2049 x 2048) layers
    try:
        opt = torch.optim.Adam(
            model.parameters(), lr=float(lr), betas=tuple(betas), weight_decay=0.0, fused=True
        )
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - device/dtype without it
        opt = torch.optim.Adam(
            model.parameters(), lr=float(lr), betas=tuple(betas), weight_decay=0.0
        )
    n = a_train.shape[0]
    epoch_losses: list[float] = []
    counter = 0
    stopped = False
    t0 = time.perf_counter()
    model.train()
    with Progress(epochs, "icis: autoencoders", enabled=progress) as bar:
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen).to(device)
            total = torch.zeros((), dtype=torch.float64, device=device)
            nb = 0
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                batch_loss, _ = icis_loss(model, a_train[idx], w_train[idx], mask[idx], loss)
                opt.zero_grad(set_to_none=True)
                batch_loss.backward()
                opt.step()
                total += batch_loss.detach()
                nb += 1
            epoch_losses.append(float(total) / nb)
            bar.update(loss=epoch_losses[-1])
            if early_stopping and epoch > 20:
                last = sum(epoch_losses[-10:]) / 10
                prev = sum(epoch_losses[-20:-10]) / 10
                slope = -(last - prev) / 10
                counter = counter + 1 if slope < threshold else 0
                if counter == 5:
                    stopped = True
                    break
    model.eval()
    if not return_info:
        return model
    info = ICISFitInfo(
        losses=torch.tensor(epoch_losses, dtype=torch.float64),
        epochs_run=len(epoch_losses),
        stopped_early=stopped,
        seconds=time.perf_counter() - t0,
    )
    return model, info


@torch.no_grad()
def inject(head: Head, new_rows: torch.Tensor, rescale: str = "none") -> Head:
    """A new head with `new_rows` appended as extra classes; `head` is not modified.

    Args:
        head: an nn.Linear (rows [w | b] if it has a bias, else w) or a `CosineClassifier`
            (rows w).
        new_rows: (C_u, d_w) rows, e.g. `ICIS.predict(unseen_descriptors)`.
        rescale: "none" (ICIS reference: no rescaling or calibration) or "seen_norm": scale
            every new row to the mean norm of the head's rows (ours; for Linear heads, whose
            logits depend on the row norms; a no-op in effect for a cosine head).

    Returns:
        nn.Linear(in, C_s + C_u) (same bias setting, device, dtype) or a `CosineClassifier` with
        C_s + C_u classes (same scale, learnability, eps, backend). Rows [0, C_s) are the
        original ones, bit for bit.
    """
    old = head_targets(head)
    if (
        not isinstance(new_rows, torch.Tensor)
        or not new_rows.is_floating_point()
        or new_rows.dim() != 2
    ):
        raise TypeError("new_rows: expected a (C_u, d_w) floating-point tensor")
    if new_rows.shape[1] != old.shape[1]:
        extra = (
            " (in_features + 1 for the bias)"
            if isinstance(head, nn.Linear) and head.bias is not None
            else ""
        )
        raise ValueError(
            f"new_rows: width {new_rows.shape[1]} does not match the head's row width "
            f"{old.shape[1]}{extra}"
        )
    if not bool(torch.isfinite(new_rows).all()):
        raise ValueError("new_rows: contains NaN or Inf")
    rows = new_rows.detach().to(device=old.device, dtype=old.dtype)
    if rescale == "seen_norm":
        target = old.norm(dim=1).mean()
        rows = rows * (target / rows.norm(dim=1, keepdim=True).clamp(min=1e-12))
    elif rescale != "none":
        raise ValueError(f"rescale: expected 'none' or 'seen_norm', got {rescale!r}")
    if isinstance(head, CosineClassifier):
        return CosineClassifier(
            torch.cat([head.weight.detach(), rows]),
            head.scale,
            learnable=head.learnable,
            eps=head.eps,
            backend=head.backend,
        )
    has_bias = head.bias is not None
    C_new = old.shape[0] + rows.shape[0]
    out = nn.Linear(head.in_features, C_new, bias=has_bias, device=old.device, dtype=old.dtype)
    d = head.in_features
    out.weight.copy_(torch.cat([head.weight.detach(), rows[:, :d]]))
    if has_bias:
        out.bias.copy_(torch.cat([head.bias.detach(), rows[:, d]]))
    out.weight.requires_grad_(head.weight.requires_grad)
    if has_bias:
        out.bias.requires_grad_(head.bias.requires_grad)
    return out


def _semantic_descriptors(
    head_rows: torch.Tensor,
    seen_text: torch.Tensor | None,
    unseen_text: torch.Tensor | None,
    seen_attributes: torch.Tensor | None,
    unseen_attributes: torch.Tensor | None,
    semantics: str,
    weight: float | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """(seen (C_s, S), unseen (C_u, S), weight used) descriptors of one semantic space.

    "text": the descriptors as given. "attributes": the attributes. "combined": both fused by
    `semantics.class_semantics` over all classes at once (one centre); a weight of None is
    chosen on held-out base classes against `head_rows` (`select_attribute_weight`).
    """
    from ..semantics import check_semantics_inputs, class_semantics, select_attribute_weight

    check_semantics_inputs(semantics, seen_text, seen_attributes, where="seen")
    check_semantics_inputs(semantics, unseen_text, unseen_attributes, where="unseen")
    if semantics == "text":
        return seen_text, unseen_text, None
    a_s = _check_desc(seen_attributes, "seen_attributes")
    a_u = _check_desc(unseen_attributes, "unseen_attributes")
    if a_u.shape[1] != a_s.shape[1]:
        raise ValueError(f"unseen_attributes: width {a_u.shape[1]} differs from "
                         f"seen_attributes' width {a_s.shape[1]}")
    if a_s.shape[0] != head_rows.shape[0]:
        raise ValueError(f"seen_attributes: {a_s.shape[0]} rows but the head has "
                         f"{head_rows.shape[0]} classes (one per row, same order)")
    if semantics == "attributes":
        return a_s, a_u, None
    t_s = _check_desc(seen_text, "seen_descriptors")
    t_u = _check_desc(unseen_text, "unseen_descriptors").to(t_s.device, t_s.dtype)
    if t_u.shape[1] != t_s.shape[1]:
        raise ValueError(f"unseen_descriptors: width {t_u.shape[1]} differs from "
                         f"seen_descriptors' width {t_s.shape[1]}")
    a_s, a_u = a_s.to(t_s.device, t_s.dtype), a_u.to(t_s.device, t_s.dtype)
    if weight is None:
        weight = select_attribute_weight(t_s, a_s, head_rows.to(t_s.device, t_s.dtype),
                                         seed=seed)
    S = class_semantics(torch.cat([t_s, t_u]), torch.cat([a_s, a_u]), "combined",
                        weight=weight)
    C_s = t_s.shape[0]
    return S[:C_s], S[C_s:], float(weight)


def icis_extend(
    head: Head,
    seen_descriptors: torch.Tensor | None,
    unseen_descriptors: torch.Tensor | None,
    config: ICISConfig | None = None,
    *,
    rescale: str | None = None,
    return_model: bool = False,
    seen_attributes: torch.Tensor | None = None,
    unseen_attributes: torch.Tensor | None = None,
    semantics: str | None = None,
    attribute_weight: float | None = None,
    **fit_kwargs,
) -> Head | tuple[Head, ICIS, ICISFitInfo]:
    """Fit ICIS on `head`'s rows and return the head extended with the new classes.

    Args:
        head: the user's nn.Linear or CosineClassifier over the seen classes.
        seen_descriptors: (C_s, d_a), one per row of `head`, same order.
        unseen_descriptors: (C_u, d_a) descriptors of the new classes (rows C_s.. of the result).
        config: an `ICISConfig` (`dfzsl_fast.config`): all the knobs (hidden, epochs,
            batch_size, lr, loss, early stopping, seed, rescale, ...) in one object. None: its
            defaults, overridden by `rescale` and `fit_kwargs`.
        rescale: see `inject` (default "none"); not with `config` (set `config.rescale`).
        return_model: also return the fitted model and its `ICISFitInfo`.
        seen_attributes, unseen_attributes: (C_s, K) and (C_u, K) class attributes (e.g.
            xlsa17 `att`), needed by semantics "attributes" and "combined" (issue 12).
        semantics: "text" (default: the descriptors as given, as before), "attributes" or
            "combined" (`dfzsl_fast.semantics.class_semantics`); not with `config` (set
            `config.semantics`). With "attributes" the descriptors may be None.
        attribute_weight: the "combined" attribute weight (None: chosen on held-out base
            classes against the head's rows); not with `config`.
        **fit_kwargs: passed to `fit_icis` (progress, betas; without `config` also hidden,
            epochs, batch_size, lr, seed, ...).

    Returns:
        The extended head (a new module), or (head, model, info).

    Example:
        >>> extended = icis_extend(base_linear, att[seen], att[unseen], batch_size=20)
        >>> extended(x).argmax(1)           # over seen + new classes
    """
    if config is not None:
        both = sorted(set(fit_kwargs) & set(config.to_dict())) + [
            k for k, v in (("rescale", rescale), ("semantics", semantics),
                           ("attribute_weight", attribute_weight)) if v is not None]
        if both:
            raise TypeError(f"icis_extend: {both} given both in `config` and as arguments")
        fit_kwargs = {**config.fit_kwargs(), **fit_kwargs}
        rescale = config.rescale
        semantics, attribute_weight = config.semantics, config.attribute_weight
    rescale = "none" if rescale is None else rescale
    semantics = "text" if semantics is None else semantics
    seen_descriptors, unseen_descriptors, weight = _semantic_descriptors(
        head_targets(head), seen_descriptors, unseen_descriptors, seen_attributes,
        unseen_attributes, semantics, attribute_weight, int(fit_kwargs.get("seed", 0)))
    fit_kwargs = dict(fit_kwargs)
    fit_kwargs["return_info"] = True
    model, info = fit_icis(seen_descriptors, head, unseen_descriptors, **fit_kwargs)
    info.semantics, info.attribute_weight = semantics, weight
    a_u = _check_desc(unseen_descriptors, "unseen_descriptors")
    p = next(model.parameters())
    a_u = a_u.to(device=p.device, dtype=p.dtype)
    if model.normalize_descriptors:
        a_u = _normalize_rows(a_u, "unseen_descriptors")
    with torch.no_grad():
        rows = model.predict(a_u)
    new_head = inject(head, rows, rescale=rescale)
    if return_model:
        return new_head, model, info
    return new_head


# ------------------------------------------------------------------------------------------
# ICIS on CLIP heads (ours, issue 8)
# ------------------------------------------------------------------------------------------


@dataclass
class LinearInjection:
    """What `icis_linear` returns.

    Attributes:
        rows: (C_s + C_u, D) unit rows: the head's rows (centred), then the injected ones.
        center: (D,) the frame's centre, to project out of inputs (`ExtendedClassifier`).
        text_map: the fitted map (its lambda and held-out cosines).
        attribute_weight: the "combined" attribute weight used (None for other semantics).
    """

    rows: torch.Tensor
    center: torch.Tensor
    text_map: object
    attribute_weight: float | None = None


def icis_linear(
    head: Head,
    seen_descriptors: torch.Tensor | None,
    unseen_descriptors: torch.Tensor | None,
    *,
    seed: int = 0,
    seen_attributes: torch.Tensor | None = None,
    unseen_attributes: torch.Tensor | None = None,
    semantics: str = "text",
    attribute_weight: float | None = None,
) -> LinearInjection:
    """Classifier injection for a cosine head over CLIP features, from CLIP text descriptors.

    Why not the published autoencoders (measured, README "ICIS on CLIP heads"): trained on a
    few dozen to a few hundred (descriptor, row) pairs, the 2048-wide autoencoders reproduce
    the seen rows (cosine 0.999) but their rows for new classes are close to arbitrary
    (new-class-only accuracy 5-15 % where the text features alone give 67 %), so they never
    win. Two facts of CLIP heads fix it, data-free:

    1. CLIP's text and image spaces are aligned, so a map from descriptor to row should start
       at the identity, not at zero: `text_map.fit_text_map` (ridge towards I, lambda chosen
       on held-out seen classes) learns only the correction;
    2. a softmax head without bias is blind to what all classes share, while CLIP text and
       image features share large components: descriptors, rows and inputs are centred on the
       mean text direction (the frame of `ExtendedClassifier`).

    Args:
        head: the base cosine head (or an nn.Linear without bias) over D-dim CLIP features.
        seen_descriptors: (C_s, D) CLIP text features of the seen classes, head row order.
        unseen_descriptors: (C_u, D) CLIP text features of the new classes.
        seed: seeds the held-out split that chooses lambda.
        seen_attributes, unseen_attributes: (C_s, K), (C_u, K) class attributes, for
            `semantics` "attributes" / "combined" (issue 12).
        semantics: "text" (default, as before), "attributes" (a ridge map from the attributes,
            shrunk towards zero: attributes have no identity to start from) or "combined"
            (`semantics.class_semantics` of the centred text and the attributes; the map is
            shrunk towards the identity on the text block and zero on the attribute block).
        attribute_weight: the "combined" weight; None: the one of
            `semantics.ATTRIBUTE_WEIGHTS` whose map predicts held-out base rows best (the
            held-out split that also chooses lambda; base classes only).

    Returns:
        A :class:`LinearInjection`; build the classifier with
        ``ExtendedClassifier(rows, names, seen, center=center)``.

    Raises:
        ValueError: descriptors not D wide (this variant needs text features in the head's
            space, also beside attributes), a head with a bias, bad shapes, a `semantics`
            without the inputs it needs.
    """
    from ..nn import project_out, text_center
    from ..semantics import check_semantics_inputs
    from .text_map import fit_semantic_map, fit_text_map

    if isinstance(head, nn.Linear) and head.bias is not None:
        raise ValueError("head: icis_linear takes a cosine head (or a Linear without bias); "
                         "a bias has no place in the cosine frame")
    check_semantics_inputs(semantics, seen_descriptors, seen_attributes, where="seen")
    check_semantics_inputs(semantics, unseen_descriptors, unseen_attributes, where="unseen")
    if semantics == "attributes" and (seen_descriptors is None or unseen_descriptors is None):
        raise ValueError("icis_linear: semantics='attributes' still needs the CLIP text "
                         "features of all classes: they define the centred frame")
    W = head_targets(head).detach().to(torch.float32)
    a_s = _check_desc(seen_descriptors, "seen_descriptors").to(W.device, torch.float32)
    a_u = _check_desc(unseen_descriptors, "unseen_descriptors").to(W.device, torch.float32)
    C_s, D = W.shape
    if a_s.shape != (C_s, D) or a_u.shape[1] != D:
        raise ValueError(
            f"descriptors: expected ({C_s}, {D}) seen and (C_u, {D}) new CLIP text features "
            f"(the head's width), got {tuple(a_s.shape)} and {tuple(a_u.shape)}; for "
            "attributes use icis_extend"
        )
    a_s, a_u = _normalize_rows(a_s, "seen_descriptors"), _normalize_rows(a_u, "unseen_descriptors")
    c = text_center(torch.cat([a_s, a_u]))
    t_s = F.normalize(project_out(a_s, c), dim=1)
    t_u = F.normalize(project_out(a_u, c), dim=1)
    w_s = F.normalize(project_out(F.normalize(W, dim=1), c), dim=1)
    if semantics == "text":
        tm = fit_text_map(t_s, w_s, seed=seed)
        new = F.normalize(project_out(tm.apply(t_u), c), dim=1)
        return LinearInjection(rows=torch.cat([w_s, new]), center=c, text_map=tm)
    from ..semantics import class_semantics

    at_s = _check_desc(seen_attributes, "seen_attributes").to(W.device, torch.float32)
    at_u = _check_desc(unseen_attributes, "unseen_attributes").to(W.device, torch.float32)
    if at_s.shape[0] != C_s or at_u.shape[0] != a_u.shape[0] or at_u.shape[1] != at_s.shape[1]:
        raise ValueError(f"attributes: expected ({C_s}, K) seen and ({a_u.shape[0]}, K) new "
                         f"rows, got {tuple(at_s.shape)} and {tuple(at_u.shape)}")
    K = at_s.shape[1]
    if semantics == "attributes":  # a map towards zero: attributes have no identity
        S = class_semantics(None, torch.cat([at_s, at_u]), "attributes")
        tm = fit_text_map(S[:C_s], w_s, seed=seed, prior=torch.zeros(K, D, dtype=torch.float64))
        weight = None
    else:
        tm, S = fit_semantic_map(torch.cat([t_s, t_u]), torch.cat([at_s, at_u]),
                                 torch.arange(C_s, device=W.device), w_s,
                                 weight=attribute_weight, seed=seed)
        weight = tm.attribute_weight
    new = F.normalize(project_out(tm.apply(S[C_s:]), c), dim=1)
    return LinearInjection(rows=torch.cat([w_s, new]), center=c, text_map=tm,
                           attribute_weight=weight)

