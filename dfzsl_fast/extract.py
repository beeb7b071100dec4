"""Extract CLIP image features of an image folder with open_clip, into a feature file.

The folder is laid out like torchvision's ``ImageFolder``::

    root/
      cat/  001.jpg  002.png ...
      dog/  a.jpg ...            (sub-folders are searched too)

Class ``i`` is the i-th class folder in sorted order (or in the order of an explicit
``classes`` list, e.g. the class order of a saved classifier). Features are the **unnormalised**
outputs of ``model.encode_image`` (DFZSL normalises later, inside the cosine classifier), in
float32, computed with the model's own evaluation transform.

Weights come from a **local file** only (``.safetensors``, a state-dict ``.bin``/``.pt``, or an
OpenAI TorchScript ``.pt``) or from a ``local-dir`` folder with ``open_clip_config.json``;
nothing is downloaded. QuickGELU (``shared/docs/ecosystem.md`` 1.2, 1.6): OpenAI's weights need
it and a local file carries no tag, so ``quick_gelu="auto"`` turns it on for ``*-quickgelu``
model names, TorchScript archives and files whose name contains "openai", and otherwise leaves
the model config alone (logged). Pass ``quick_gelu=True`` for OpenAI weights stored under another
name. The resolved setting and the weights' SHA-256 are stored in the file's metadata.

Command line (same options as ``dfzsl-fast extract-features``)::

    python scripts/extract_clip_features.py data/cub/test --model ViT-B-16 \\
        --weights ~/weights/ViT-B-16-openai.safetensors --quick-gelu true \\
        --out features/cub_test.safetensors --split test

Example:
    >>> ff = extract_image_features("data/cub/test", "ViT-B-16", "clip.safetensors",
    ...                             quick_gelu=True, out="cub_test.safetensors")
    >>> ff.features.shape, ff.labels.shape, ff.class_names[:2], ff.paths[0]
"""

from __future__ import annotations

import logging
import os
import time
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .io import FeatureFile, provenance, save_features, sha256_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "scan_image_folder",
    "resolve_quick_gelu",
    "load_clip_image_model",
    "extract_image_features",
]

log = logging.getLogger(__name__)

#: File suffixes (lower case) read as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


# ------------------------------------------------------------------------------------------
# the folder
# ------------------------------------------------------------------------------------------


def scan_image_folder(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[list[Path], list[int], list[str]]:
    """List the images of an ImageFolder-style directory.

    Args:
        root: folder with one sub-folder per class.
        classes: class folder names in label order (default: all sub-folders, sorted; hidden
            ones skipped).
        extensions: file suffixes to read, lower case.

    Returns:
        ``(paths, labels, class_names)``: image paths sorted within each class, their 0-based
        labels, and the class folder names (label i = ``class_names[i]``).

    Raises:
        FileNotFoundError: ``root`` or a listed class folder is missing.
        ValueError: no class folder, or no image at all.
    """
    r = Path(root).expanduser()
    if not r.is_dir():
        raise FileNotFoundError(f"`root`: no image folder at {r}")
    if classes is None:
        names = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise ValueError(
                f"`root`: {r} has no class sub-folders; expected root/<class>/<image files>"
            )
    else:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise ValueError("`classes`: holds duplicate names")
        missing = [c for c in names if not (r / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"`classes`: no folder for {missing[:5]} under {r}")
    exts = tuple(e.lower() for e in extensions)
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(names):
        found = []
        for dirpath, dirnames, filenames in os.walk(r / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.startswith(".") and fn.lower().endswith(exts):
                    found.append(Path(dirpath) / fn)
        if not found:
            empty.append(name)
        paths.extend(found)
        labels.extend([label] * len(found))
    if not paths:
        raise ValueError(f"`root`: no image files ({', '.join(exts)}) under {r}")
    if empty:
        warnings.warn(
            f"{len(empty)} class folder(s) hold no images and get no samples: {empty[:5]}",
            stacklevel=2,
        )
    return paths, labels, names


class _ImageDataset(torch.utils.data.Dataset):
    """(preprocessed image, row index) pairs; picklable for DataLoader workers."""

    def __init__(self, paths: list[Path], transform: Any) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        p = self.paths[i]
        try:
            with Image.open(p) as im:
                img = im.convert("RGB")
        except Exception as exc:
            raise ValueError(f"cannot read image {p}: {exc}") from exc
        return self.transform(img), i


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------


def _is_torchscript(path: Path | None) -> bool:
    """OpenAI's original .pt files are TorchScript zip archives (they hold code/ + constants)."""
    if path is None or not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(
                n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()[:2000]
            )
    except (OSError, zipfile.BadZipFile):  # pragma: no cover
        return False


def resolve_quick_gelu(
    quick_gelu: bool | str, model_name: str, weights_path: str | os.PathLike | None
) -> bool | None:
    """Resolve the ``quick_gelu`` option.

    Args:
        quick_gelu: True/False, "true"/"false", or "auto".
        model_name: the open_clip model name.
        weights_path: the weights file (or None).

    Returns:
        True (force QuickGELU), False (a plain model name with GELU) or None ("auto" found no
        sign of OpenAI weights: keep what the model config says).

    Raises:
        ValueError: an unknown value, or ``quick_gelu=False`` with a ``*-quickgelu`` model name.
    """
    named = model_name.lower().endswith("quickgelu")
    if isinstance(quick_gelu, str):
        q = quick_gelu.strip().lower()
        if q in ("true", "yes", "1", "on"):
            quick_gelu = True
        elif q in ("false", "no", "0", "off"):
            quick_gelu = False
        elif q != "auto":
            raise ValueError(f"`quick_gelu`: expected true, false or auto, got {quick_gelu!r}")
    if quick_gelu is True:
        return True
    if quick_gelu is False:
        if named:
            raise ValueError(
                f"`quick_gelu`: false contradicts the model name {model_name!r}; use the name "
                "without -quickgelu"
            )
        return False
    wp = Path(weights_path).expanduser() if weights_path is not None else None
    if named:
        return True
    if wp is not None and (_is_torchscript(wp) or "openai" in wp.name.lower()):
        return True
    return None


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "QuickGELU" for m in model.modules())


def load_clip_image_model(
    model_name: str,
    weights_path: str | os.PathLike | None,
    *,
    quick_gelu: bool | str = "auto",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    allow_random_weights: bool = False,
    model_config: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Build an open_clip model with local weights, in eval mode, and its evaluation transform.

    Args:
        model_name: open_clip model name (``ViT-B-16``, ``ViT-B-16-quickgelu``, or a name
            registered by ``model_config``).
        weights_path: local weights file, or a folder with ``open_clip_config.json`` and
            ``open_clip_model.safetensors`` (``local-dir``). None only with
            ``allow_random_weights`` (tests).
        quick_gelu: "auto" (default), True or False; see :func:`resolve_quick_gelu`.
        device: "cpu", "cuda", "cuda:1", or "auto" (CUDA when available).
        precision: open_clip precision ("fp32", "fp16", "bf16", ...).
        allow_random_weights: permit ``weights_path=None`` (random init: for tests only).
        model_config: a model config JSON file (or folder of them) to register first, e.g. a
            tiny test tower; its file stem becomes a model name.
        model_kwargs: overrides of top-level config keys passed to ``create_model``.

    Returns:
        ``(model, preprocess, info)``: ``info`` holds ``model_name``, ``weights``,
        ``weights_sha256``, ``quick_gelu`` (as built), ``image_size``, ``precision``,
        ``open_clip`` version.

    Raises:
        ImportError: open_clip is not installed.
        FileNotFoundError: ``weights_path`` or ``model_config`` does not exist.
        ValueError: ``weights_path`` is None without ``allow_random_weights``; bad quick_gelu.
    """
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "feature extraction needs open_clip: `pip install 'open_clip_torch>=3.3,<4'`"
        ) from exc
    if model_config is not None:
        mc = Path(model_config).expanduser()
        if not mc.exists():
            raise FileNotFoundError(f"`model_config`: no model config at {mc}")
        open_clip.add_model_config(mc)
    name = model_name
    pretrained = None
    wp = None
    digest = None
    if weights_path is None:
        if not allow_random_weights:
            raise ValueError(
                "`weights_path`: give a local CLIP weights file (.safetensors, .bin or .pt) or a "
                "local-dir folder; random weights need allow_random_weights=True "
                "(--random-weights), for tests only"
            )
        log.warning("extracting with RANDOM weights (allow_random_weights): for tests only")
    else:
        wp = Path(weights_path).expanduser()
        if wp.is_dir():
            if not (wp / "open_clip_config.json").is_file():
                raise FileNotFoundError(
                    f"`weights_path`: the folder {wp} has no open_clip_config.json (a local-dir "
                    "model folder needs it); pass the weights file itself instead"
                )
            name = f"local-dir:{wp}"
        elif not wp.is_file():
            raise FileNotFoundError(
                f"`weights_path`: no CLIP weights file at {wp}; weights are read from local "
                "files only (download them once, then point here)"
            )
        else:
            pretrained = str(wp)
            digest = sha256_file(wp)
    qg = resolve_quick_gelu(quick_gelu, model_name, wp)
    if qg is None:
        log.info(
            "quick_gelu=auto: no sign of OpenAI weights (name, TorchScript, 'openai' in the file "
            "name); keeping the model config's activation. Pass --quick-gelu true for OpenAI "
            "weights."
        )
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" \
        else torch.device(device)
    torchscript = _is_torchscript(wp)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name,
        pretrained=pretrained,
        precision=precision,
        device=dev,
        force_quick_gelu=bool(qg),
        weights_only=not torchscript,
        **dict(model_kwargs or {}),
    )
    model.eval()
    built_qg = _uses_quick_gelu(model)
    if qg is False and built_qg:  # pragma: no cover - a config with quick_gelu: true
        raise ValueError(
            f"`quick_gelu`: false, but the config of {model_name!r} sets quick_gelu: true"
        )
    size = getattr(model.visual, "image_size", None)
    info = {
        "model_name": model_name,
        "weights": None if wp is None else str(wp),
        "weights_sha256": digest,
        "random_weights": wp is None,
        "quick_gelu": built_qg,
        "quick_gelu_option": str(quick_gelu).lower(),
        "image_size": list(size) if isinstance(size, (tuple, list)) else size,
        "precision": precision,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
    }
    return model, preprocess, info


# ------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------


def extract_image_features(
    root: str | os.PathLike,
    model_name: str,
    weights_path: str | os.PathLike | None,
    *,
    quick_gelu: bool | str = "auto",
    batch_size: int = 64,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    normalize: bool = False,
    precision: str = "fp32",
    classes: Sequence[str] | None = None,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    allow_random_weights: bool = False,
    model_config: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> FeatureFile:
    """CLIP image features of every image under ``root`` (ImageFolder layout).

    Args:
        root: folder with one sub-folder per class (see the module docstring).
        model_name: open_clip model name, e.g. "ViT-B-16".
        weights_path: local weights file or local-dir folder; None only with
            ``allow_random_weights``.
        quick_gelu: "auto", True or False (see :func:`resolve_quick_gelu`).
        batch_size: images per forward pass.
        device: "auto" (CUDA if available), "cpu", "cuda", ...
        num_workers: DataLoader worker processes decoding images (0: in this process).
        normalize: L2-normalise the features (default False: raw, as DFZSL stores them).
        precision: open_clip precision; features are returned in float32 regardless.
        classes: class folder names in label order (default: sorted sub-folders).
        split: optional split name stored for every row (e.g. "test").
        out: if given, also write a feature file there (``.safetensors``, ``.npz``, ``.pt``;
            atomically: an interrupted run leaves no partial file).
        overwrite: replace an existing ``out`` (otherwise FileExistsError, checked first).
        allow_random_weights, model_config, model_kwargs: see :func:`load_clip_image_model`.
        progress: progress bar (tqdm when installed) on stderr.

    Returns:
        :class:`~dfzsl_fast.io.FeatureFile`: ``features`` (N, D) float32, ``labels`` (N,)
        int64, ``class_names`` (C folder names), ``paths`` (N, relative to ``root``, POSIX
        style), ``metadata`` (model, weights hash, QuickGELU, image size, normalisation,
        versions).

    Raises:
        FileNotFoundError: missing ``root``, class folder or weights.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ValueError: no images, an unreadable image (named), bad options.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size`: expected an int >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers`: expected an int >= 0, got {num_workers!r}")
    if out is not None:
        out = Path(out).expanduser()
        if out.suffix.lower() not in (".safetensors", ".npz", ".pt", ".pth"):
            raise ValueError(
                f"`out`: use a .safetensors, .npz or .pt file name, got {out.name!r}"
            )
        if out.exists() and not overwrite:
            raise FileExistsError(f"`out`: {out} exists (pass overwrite=True / --overwrite)")
    r = Path(root).expanduser()
    paths, labels, class_names = scan_image_folder(r, classes=classes)
    model, preprocess, info = load_clip_image_model(
        model_name, weights_path, quick_gelu=quick_gelu, device=device, precision=precision,
        allow_random_weights=allow_random_weights, model_config=model_config,
        model_kwargs=model_kwargs,
    )
    param = next(model.visual.parameters())
    dev, dtype = param.device, param.dtype
    loader = torch.utils.data.DataLoader(
        _ImageDataset(paths, preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    from .pipeline._progress import Progress

    n = len(paths)
    feats: torch.Tensor | None = None
    t0 = time.perf_counter()
    with torch.inference_mode(), Progress(n, "extract: images", enabled=progress) as bar:
        for x, idx in loader:
            x = x.to(dev, dtype=dtype, non_blocking=True)
            f = model.encode_image(x, normalize=normalize).float().cpu()
            if feats is None:
                feats = torch.empty(n, f.shape[1], dtype=torch.float32)
            feats[idx] = f
            bar.update(len(idx))
    assert feats is not None
    seconds = time.perf_counter() - t0
    log.info("extracted %d images in %.1f s (%.1f img/s)", n, seconds, n / max(seconds, 1e-9))
    meta = provenance(
        **info, root=str(r), normalize=bool(normalize), device=str(dev), num_images=n,
        extract_seconds=round(seconds, 3),
    )
    rel = [p.relative_to(r).as_posix() for p in paths]
    ff = FeatureFile(
        features=feats,
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=class_names,
        split=None if split is None else torch.zeros(n, dtype=torch.int64),
        split_names=None if split is None else [str(split)],
        paths=rel,
        metadata=meta,
    )
    if out is not None:
        ff.path = save_features(
            out, ff.features, ff.labels, class_names=class_names, split=ff.split,
            split_names=ff.split_names, paths=rel, metadata=meta,
        )
    return ff


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
