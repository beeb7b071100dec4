"""Files in and out: atomic writes, saved classifiers, feature files, descriptors, names.

Every writer here goes through :func:`atomic_path`: the data is written to a temporary file in
the destination folder, flushed to disk, then renamed over the destination with ``os.replace``.
A crash, Ctrl-C or full disk therefore leaves either the old file or the new one, never half a
file (the temporary file is removed on error).

Classifier files (``*.safetensors``; see ``shared/docs/ecosystem.md`` section 4):

- tensors ``weight`` (C, D) and, for an ``nn.Linear`` with bias, ``bias`` (C,), in the head's
  dtype;
- safetensors metadata ``format = "dfzsl_fast.classifier/v1"`` and one key ``dfzsl_fast``
  holding a JSON object: ``kind`` ("cosine" or "linear"), ``num_classes``, ``in_features``,
  ``scale`` / ``eps`` / ``learnable`` (cosine), ``has_bias`` (linear), ``class_names``,
  ``seen_classes``, ``unseen_classes``, ``n_base`` (when the seen classes are rows
  ``0 .. n_base-1``) and ``provenance`` (dfzsl_fast, torch and Python versions, UTC creation
  time, plus whatever the caller passed: config, CLIP model, weights sha256, ...).

Feature files (``.npz``, ``.pt``/``.pth`` dict, or ``.safetensors``):

- ``features`` (N, D) float, ``labels`` (N,) integer 0-based class indices;
- optional ``class_names`` (C,) strings (label i is ``class_names[i]``);
- optional ``split``: (N,) strings (e.g. "train", "test"), or (N,) integer codes plus
  ``split_names`` (K,) strings;
- optional ``paths`` (N,) strings (the image each row came from) and ``metadata`` (a JSON
  object; in ``.npz`` a JSON string).

In ``.safetensors`` files strings cannot be tensors: ``class_names``, ``split_names`` and
``metadata`` sit in the header's ``dfzsl_fast`` JSON key (``format = "dfzsl_fast.features/v1"``),
``split`` is an int64 tensor of codes and ``paths`` is two tensors ``paths_utf8`` (uint8 bytes)
and ``paths_offsets`` (N + 1,) int64 (the header is limited to 100 MB; a million paths are not).

Example:
    >>> save_classifier("head.safetensors", head, class_names=names, n_base=50,
    ...                 metadata={"clip_model": "ViT-B-16"})
    >>> head, meta = load_classifier("head.safetensors")
    >>> meta["seen_classes"][:3], meta["provenance"]["clip_model"]
    ([0, 1, 2], 'ViT-B-16')
    >>> save_features("test.npz", feats, labels, class_names=names, split=["test"] * len(labels))
    >>> ff = load_features("test.npz")          # FeatureFile(features (N, D), labels (N,), ...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from .nn import CosineClassifier

__all__ = [
    "CLASSIFIER_FORMAT",
    "FEATURES_FORMAT",
    "atomic_path",
    "atomic_open",
    "atomic_write",
    "save_json",
    "save_csv",
    "sha256_file",
    "provenance",
    "save_classifier",
    "load_classifier",
    "FeatureFile",
    "save_features",
    "load_features",
    "load_descriptors",
    "load_names",
]

#: safetensors metadata ``format`` of a saved classifier.
CLASSIFIER_FORMAT = "dfzsl_fast.classifier/v1"
#: safetensors metadata ``format`` of a feature file written by :func:`save_features`.
FEATURES_FORMAT = "dfzsl_fast.features/v1"
_META_KEY = "dfzsl_fast"
_FEATURE_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------

_UMASK: int | None = None


def _file_mode() -> int:
    """0o666 minus the process umask: the mode a plain ``open(path, "w")`` would give."""
    global _UMASK
    if _UMASK is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK = mask
    return 0o666 & ~_UMASK


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, makedirs: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    The temporary file lies in ``path``'s folder (so ``os.replace`` is a rename on one file
    system) and ends with ``path``'s suffix (writers that pick a format from the suffix, such as
    ``np.savez`` or matplotlib, keep working). On an exception it is deleted and ``path`` is
    left as it was.

    Args:
        path: the final file.
        makedirs: create missing parent folders (default True).

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
        FileNotFoundError: the parent folder is missing and ``makedirs`` is False.

    Example:
        >>> with atomic_path("out/weights.safetensors") as tmp:
        ...     safetensors.torch.save_file(tensors, tmp)
    """
    final = Path(path).expanduser()
    if final.is_dir():
        raise IsADirectoryError(f"`path`: {final} is a folder, expected a file path")
    parent = final.parent
    if makedirs:
        parent.mkdir(parents=True, exist_ok=True)
    elif not parent.is_dir():
        raise FileNotFoundError(f"`path`: the folder {parent} does not exist")
    fd, name = tempfile.mkstemp(dir=parent, prefix=f".{final.name}.", suffix=f".tmp{final.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush the data before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(parent)


@contextlib.contextmanager
def atomic_open(
    path: PathLike, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO]:
    """``open()`` for writing, atomically: the file appears complete or not at all.

    Args:
        path: the final file. mode: "w" (text, default) or "wb" (bytes).
        encoding, newline: as for ``open`` (text mode only).

    Example:
        >>> with atomic_open("run/log.csv", newline="") as fh:
        ...     csv.writer(fh).writerows(rows)
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"`mode`: expected 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        if "b" in mode:
            with open(tmp, "wb") as fh:
                yield fh
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as fh:
                yield fh


def atomic_write(path: PathLike, writer: Callable[[Path], Any] | str | bytes) -> Path:
    """Write ``path`` atomically.

    Args:
        path: the final file (parent folders are created).
        writer: a callable ``writer(tmp_path)`` that writes the whole file at ``tmp_path`` (e.g.
            ``lambda p: torch.save(obj, p)``), or the ``str`` (UTF-8) / ``bytes`` content itself.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> atomic_write("out.pt", lambda p: torch.save({"x": x}, p))
        >>> atomic_write("notes.txt", "hello\\n")
    """
    final = Path(path).expanduser()
    with atomic_path(final) as tmp:
        if isinstance(writer, str):
            tmp.write_text(writer, encoding="utf-8")
        elif isinstance(writer, (bytes, bytearray, memoryview)):
            tmp.write_bytes(bytes(writer))
        elif callable(writer):
            writer(tmp)
        else:
            raise TypeError(
                f"`writer`: expected a callable taking a path, str or bytes; got "
                f"{type(writer).__name__}"
            )
    return final


# ------------------------------------------------------------------------------------------
# JSON, CSV, hashes, provenance
# ------------------------------------------------------------------------------------------


def _to_jsonable(obj: Any, where: str = "value") -> Any:
    """Plain JSON types; NaN/Inf become None. Tensors and arrays become lists."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str(obj)  # plain str: subclasses (torch's TorchVersion) do not unpickle safely
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _to_jsonable(obj.item(), where)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return _to_jsonable(arr.tolist(), where)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"{where}: dict key {k!r} is not a string")
            out[str(k)] = _to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        seq = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(seq)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_jsonable(dataclasses.asdict(obj), where)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored as JSON")


def save_json(path: PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON, atomically (tensors/arrays as lists, NaN/Inf as null, Paths as str).

    Raises:
        TypeError: a value that has no JSON form (the message names where it is).
    """
    text = json.dumps(_to_jsonable(obj, "obj"), indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, text)


def save_csv(path: PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) as CSV with a header of ``columns``, atomically.

    Floats are written with ``repr`` precision; None and NaN as an empty cell.
    """
    import csv

    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return v

    with atomic_open(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(columns))
        for r in rows:
            w.writerow([cell(r.get(c)) for c in columns])
    return Path(path)


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file (read in 4 MiB chunks), e.g. to record which CLIP weights were used."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _package_version() -> str:
    try:
        from ._extension import _version

        return _version()
    except Exception:  # pragma: no cover
        return "unknown"


def provenance(**extra: Any) -> dict[str, Any]:
    """Versions and UTC time of creation, plus ``extra`` (which wins on a clash).

    Returns:
        ``{"dfzsl_fast": ..., "torch": ..., "python": ..., "created": "2026-...Z", **extra}``.
    """
    out: dict[str, Any] = {
        "dfzsl_fast": _package_version(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.update(extra)
    return out


# ------------------------------------------------------------------------------------------
# classifiers
# ------------------------------------------------------------------------------------------

Head = CosineClassifier | nn.Linear


def _check_names(names: Any, what: str) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence | np.ndarray):
        raise TypeError(f"`{what}`: expected a sequence of strings, got {type(names).__name__}")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, np.str_):
            n = str(n)
        if not isinstance(n, str):
            raise TypeError(f"`{what}`[{i}]: expected a string, got {type(n).__name__}")
        out.append(n)
    return out


def _check_finite(t: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = bad.nonzero()[0].tolist()
        raise ValueError(f"{what} contains NaN or Inf (first at index {tuple(first)})")


def _class_ids(v: Any, what: str, C: int) -> list[int]:
    t = torch.as_tensor(np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v))
    if t.numel() == 0:
        return []
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"`{what}`: expected a 1-D sequence of integer class indices")
    ids = t.long().tolist()
    if min(ids) < 0 or max(ids) >= C:
        raise ValueError(
            f"`{what}`: class indices must lie in [0, {C}), got range [{min(ids)}, {max(ids)}]"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"`{what}`: holds duplicate class indices")
    return sorted(ids)


def save_classifier(
    path: PathLike,
    head: Head,
    *,
    class_names: Sequence[str],
    seen_classes: Sequence[int] | torch.Tensor | None = None,
    n_base: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    input_shift: torch.Tensor | None = None,
    input_center: torch.Tensor | None = None,
) -> Path:
    """Save a classification head as ``*.safetensors`` with its class names and seen/unseen split.

    Args:
        path: output file (written atomically; parent folders are created).
        head: a :class:`~dfzsl_fast.nn.CosineClassifier` (weight (C, D), scale) or an
            ``nn.Linear`` (weight (C, D), optional bias (C,)). Saved in its dtype, on CPU.
        class_names: C names, one per row of ``head.weight``.
        seen_classes: indices of the seen (base) classes; every other class is unseen.
        n_base: shorthand for ``seen_classes = range(n_base)`` (the base-to-new layout). Give at
            most one of the two (or both, consistent); with neither, every class is seen (a
            base head, e.g. before ICIS injection).
        metadata: caller's provenance, any JSON-able dict (tensors and Paths are converted):
            config, CLIP model name, weights sha256, QuickGELU, text tower, feature
            normalisation... stored under ``provenance`` beside the automatic versions and
            creation time (the caller's keys win on a clash).
        input_shift: optional (D,) shift added to the unit-normalised input before a cosine
            head (DFZSL's prompt-tuning residual; see `ExtendedClassifier`). Stored as the
            tensor ``input_shift``; `load_classifier` then returns an `ExtendedClassifier`.
        input_center: optional (D,) unit direction projected out of the unit-normalised input
            (the centred frame of `ExtendedClassifier`); stored as ``input_center``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TypeError: ``head`` is neither a CosineClassifier nor an nn.Linear; names not strings;
            metadata not JSON-able.
        ValueError: ``len(class_names)`` differs from the number of rows; NaN/Inf weights or
            bias; seen indices out of range or duplicated; ``n_base`` inconsistent.
    """
    from safetensors.torch import save_file

    if isinstance(head, CosineClassifier):
        kind = "cosine"
    elif isinstance(head, nn.Linear):
        kind = "linear"
    else:
        raise TypeError(
            f"`head`: expected a CosineClassifier or an nn.Linear, got {type(head).__name__}"
        )
    weight = head.weight.detach().cpu().contiguous()
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"`head.weight`: expected a (C, D) float tensor, got {tuple(weight.shape)}"
        )
    C, D = weight.shape
    names = _check_names(class_names, "class_names")
    if len(names) != C:
        raise ValueError(
            f"`class_names` has {len(names)} names but the head has {C} classes (rows of weight)"
        )
    _check_finite(weight, "`head.weight`")
    tensors = {"weight": weight}
    for name, value, what in (("input_shift", input_shift, "an input shift"),
                              ("input_center", input_center, "an input centre")):
        if value is None:
            continue
        if kind != "cosine":
            raise ValueError(f"`{name}`: only a cosine head takes {what}")
        v = torch.as_tensor(value).detach().cpu().contiguous()
        if tuple(v.shape) != (D,) or not v.is_floating_point():
            raise ValueError(f"`{name}`: expected a ({D},) float tensor")
        _check_finite(v, f"`{name}`")
        tensors[name] = v.to(weight.dtype)
    bias = getattr(head, "bias", None) if kind == "linear" else None
    if bias is not None:
        bias = bias.detach().cpu().contiguous()
        _check_finite(bias, "`head.bias`")
        tensors["bias"] = bias

    if n_base is not None:
        if isinstance(n_base, bool) or not isinstance(n_base, int) or not 0 <= n_base <= C:
            raise ValueError(f"`n_base`: expected an int in [0, {C}], got {n_base!r}")
        base_ids = list(range(n_base))
        if seen_classes is not None and _class_ids(seen_classes, "seen_classes", C) != base_ids:
            raise ValueError("`seen_classes` and `n_base` disagree; give one of them")
        seen = base_ids
    elif seen_classes is not None:
        seen = _class_ids(seen_classes, "seen_classes", C)
    else:
        seen = list(range(C))
    seen_set = set(seen)
    unseen = [c for c in range(C) if c not in seen_set]
    nb = len(seen) if seen == list(range(len(seen))) else None

    meta: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "kind": kind,
        "num_classes": C,
        "in_features": D,
        "dtype": str(weight.dtype).replace("torch.", ""),
        "class_names": names,
        "seen_classes": seen,
        "unseen_classes": unseen,
        "n_base": nb,
    }
    if kind == "cosine":
        meta.update(scale=float(head.scale), eps=float(head.eps), learnable=bool(head.learnable))
    else:
        meta.update(has_bias=bias is not None)
    meta["provenance"] = _to_jsonable(provenance(**dict(metadata or {})), "metadata")
    header = {"format": CLASSIFIER_FORMAT, _META_KEY: json.dumps(meta, allow_nan=False)}
    final = Path(path).expanduser()
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return final


def _read_safetensors(p: Path, expected_format: str, what: str) -> tuple[dict, dict]:
    """(tensors, parsed JSON metadata) of a dfzsl_fast safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"{p}: not a readable safetensors file ({exc})") from exc
    fmt = header.get("format")
    if fmt != expected_format:
        raise ValueError(
            f"{p}: not a dfzsl_fast {what} file: safetensors metadata format = {fmt!r}, "
            f"expected {expected_format!r}"
        )
    try:
        meta = json.loads(header[_META_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: the `{_META_KEY}` metadata key is missing or not JSON") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{p}: the `{_META_KEY}` metadata is not a JSON object")
    return tensors, meta


def load_classifier(
    path: PathLike, *, device: str | torch.device | None = None
) -> tuple[Head, dict[str, Any]]:
    """Load a head saved by :func:`save_classifier`.

    Args:
        path: the ``.safetensors`` file.
        device: move the head there (default: CPU).

    Returns:
        ``(head, metadata)``: a :class:`~dfzsl_fast.nn.CosineClassifier` (same scale, eps,
        learnability) or an ``nn.Linear`` with the saved weight (and bias), and the parsed JSON
        metadata dict (``class_names``, ``seen_classes``, ``unseen_classes``, ``kind``,
        ``provenance``, ...; see the module docstring).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it).
        ValueError: not a safetensors file; another ``format``; missing ``weight``; class-name
            count differing from the rows; NaN/Inf weights; bad seen/unseen indices.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no classifier file at {p}")
    tensors, meta = _read_safetensors(p, CLASSIFIER_FORMAT, "classifier")
    if "weight" not in tensors:
        raise ValueError(f"{p}: no `weight` tensor (found {sorted(tensors)})")
    w = tensors["weight"]
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"{p}: `weight` must be a (C, D) float tensor, got {tuple(w.shape)}")
    C, D = w.shape
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{p}: metadata `class_names` must be a list of strings")
    if len(names) != C:
        raise ValueError(f"{p}: {len(names)} class names but `weight` has {C} rows")
    _check_finite(w, f"{p}: `weight`")
    seen = _class_ids(meta.get("seen_classes", list(range(C))), f"{p}: seen_classes", C)
    unseen = _class_ids(meta.get("unseen_classes", []), f"{p}: unseen_classes", C)
    if set(seen) & set(unseen):
        raise ValueError(f"{p}: seen_classes and unseen_classes overlap")
    meta["seen_classes"], meta["unseen_classes"] = seen, unseen
    kind = meta.get("kind")
    if kind == "cosine":
        scale = meta.get("scale")
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"{p}: a cosine head needs a finite `scale`, got {scale!r}")
        shift = tensors.get("input_shift")
        center = tensors.get("input_center")
        if shift is not None or center is not None:
            # a pipeline product: cosine head on the centred normalize(x) + shift
            from .pipeline.extended import ExtendedClassifier

            for name, v in (("input_shift", shift), ("input_center", center)):
                if v is None:
                    continue
                if tuple(v.shape) != (D,):
                    raise ValueError(f"{p}: `{name}` must be ({D},), got {tuple(v.shape)}")
                _check_finite(v, f"{p}: `{name}`")
            head = ExtendedClassifier(w, names, seen, scale=float(scale), shift=shift,
                                      center=center, metadata=meta.get("provenance", {}))
        else:
            head = CosineClassifier(
                w, float(scale), learnable=bool(meta.get("learnable", True)),
                eps=float(meta.get("eps", 1e-12)),
            )
    elif kind == "linear":
        b = tensors.get("bias")
        if meta.get("has_bias", b is not None) and b is None:
            raise ValueError(f"{p}: metadata says has_bias but there is no `bias` tensor")
        head = nn.Linear(D, C, bias=b is not None, dtype=w.dtype)
        with torch.no_grad():
            head.weight.copy_(w)
            if b is not None:
                if tuple(b.shape) != (C,):
                    raise ValueError(f"{p}: `bias` must be ({C},), got {tuple(b.shape)}")
                _check_finite(b, f"{p}: `bias`")
                head.bias.copy_(b)
    else:
        raise ValueError(f"{p}: unknown head kind {kind!r} (expected 'cosine' or 'linear')")
    if device is not None:
        head = head.to(device)
    return head, meta


# ------------------------------------------------------------------------------------------
# feature files
# ------------------------------------------------------------------------------------------


@dataclass
class FeatureFile:
    """Image features with labels, as read by :func:`load_features`.

    Attributes:
        features: (N, D) float32 features, as stored (CLIP image features are kept unnormalised).
        labels: (N,) int64 0-based class indices.
        class_names: C names (``labels < C``), or None.
        split: (N,) int64 codes into ``split_names``, or None.
        split_names: K split names (e.g. ["train", "test"]), or None.
        paths: N source paths (strings), or None.
        metadata: free JSON-able dict (e.g. the CLIP model and weights hash of an extraction).
        path: the file it was read from (None when built in memory).
    """

    features: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] | None = None
    split: torch.Tensor | None = None
    split_names: list[str] | None = None
    paths: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def dim(self) -> int:
        """D, the feature width."""
        return int(self.features.shape[1])

    def split_mask(self, names: str | Sequence[str]) -> torch.Tensor:
        """(N,) bool mask of the rows whose split is one of ``names``.

        Raises:
            ValueError: the file has no split, or a name is unknown (the known ones are listed).
        """
        if self.split is None or self.split_names is None:
            raise ValueError("`split`: this feature file has no split names")
        wanted = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in wanted if n not in self.split_names]
        if unknown:
            raise ValueError(f"`split`: unknown split {unknown}; the file has {self.split_names}")
        codes = torch.tensor([self.split_names.index(n) for n in wanted], dtype=torch.int64)
        return torch.isin(self.split, codes)

    def select(self, rows: str | Sequence[str] | torch.Tensor) -> FeatureFile:
        """A copy with only some rows: split name(s), or a (N,) bool mask / index tensor."""
        if isinstance(rows, torch.Tensor):
            idx = rows.nonzero().flatten() if rows.dtype == torch.bool else rows.long()
        else:
            idx = self.split_mask(rows).nonzero().flatten()
        return dataclasses.replace(
            self,
            features=self.features[idx],
            labels=self.labels[idx],
            split=None if self.split is None else self.split[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
        )

    def save(self, path: PathLike) -> Path:
        """:func:`save_features` of this object."""
        return save_features(
            path, self.features, self.labels, class_names=self.class_names, split=self.split,
            split_names=self.split_names, paths=self.paths, metadata=self.metadata,
        )


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _strings(x: Any, what: str, src: str) -> list[str]:
    if isinstance(x, str):
        raise ValueError(f"{src}: `{what}` must be a sequence of strings, got one string")
    a = np.asarray(x)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "UO"):
        raise ValueError(f"{src}: `{what}` must be a 1-D sequence of strings")
    out = [str(s) if isinstance(s, (str, np.str_)) else None for s in a.tolist()]
    if any(s is None for s in out):
        raise ValueError(f"{src}: `{what}` must hold only strings")
    return out  # type: ignore[return-value]


def _validate(
    features: Any,
    labels: Any,
    class_names: Any,
    split: Any,
    split_names: Any,
    paths: Any,
    metadata: Any,
    src: str,
) -> FeatureFile:
    f = torch.as_tensor(_np(features))
    y = torch.as_tensor(_np(labels))
    if y.dim() == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.dim() != 1:
        raise ValueError(f"{src}: `labels` must be (N,), got shape {tuple(y.shape)}")
    n = y.numel()
    if n == 0:
        raise ValueError(f"{src}: no samples (`labels` is empty)")
    if f.dim() != 2:
        raise ValueError(f"{src}: `features` must be (N, D), got shape {tuple(f.shape)}")
    if f.shape[0] != n:
        raise ValueError(f"{src}: `features` has {f.shape[0]} rows but `labels` has {n}")
    if not f.dtype.is_floating_point:
        raise ValueError(f"{src}: `features` must be floating point, got {f.dtype}")
    f = f.to(torch.float32).contiguous()
    bad = ~torch.isfinite(f).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{src}: `features` row {int(bad.nonzero()[0])} contains NaN or Inf")
    if y.dtype == torch.bool or y.dtype.is_complex:
        raise ValueError(f"{src}: `labels` must be integers, got {y.dtype}")
    if y.dtype.is_floating_point:
        if not bool((y == y.round()).all()):
            raise ValueError(f"{src}: `labels` must be integers")
    y = y.long().contiguous()
    if int(y.min()) < 0:
        raise ValueError(f"{src}: `labels` holds {int(y.min())}; labels are 0-based indices")
    names = None
    if class_names is not None:
        names = _strings(class_names, "class_names", src)
        if int(y.max()) >= len(names):
            raise ValueError(
                f"{src}: label {int(y.max())} but only {len(names)} `class_names`"
            )
    codes = snames = None
    if split is not None:
        s = np.asarray(_np(split) if isinstance(split, torch.Tensor) else split)
        if s.ndim != 1 or s.shape[0] != n:
            raise ValueError(f"{src}: `split` must be (N,) = ({n},), got shape {s.shape}")
        if s.dtype.kind in "UO":
            per_row = _strings(s, "split", src)
            snames = list(split_names) if split_names is not None else sorted(set(per_row))
            index = {k: i for i, k in enumerate(snames)}
            missing = sorted(set(per_row) - set(index))
            if missing:
                raise ValueError(f"{src}: `split` holds {missing} not in `split_names`")
            codes = torch.tensor([index[k] for k in per_row], dtype=torch.int64)
        elif s.dtype.kind in "iu":
            if split_names is None:
                raise ValueError(f"{src}: integer `split` codes need `split_names`")
            snames = _strings(split_names, "split_names", src)
            codes = torch.as_tensor(s.astype(np.int64))
            if int(codes.min()) < 0 or int(codes.max()) >= len(snames):
                raise ValueError(
                    f"{src}: `split` codes must lie in [0, {len(snames)}) (`split_names`)"
                )
        else:
            raise ValueError(f"{src}: `split` must hold strings or integer codes, got {s.dtype}")
        snames = _strings(snames, "split_names", src)
        if len(set(snames)) != len(snames):
            raise ValueError(f"{src}: `split_names` holds duplicates")
    path_list = None
    if paths is not None:
        path_list = _strings(paths, "paths", src)
        if len(path_list) != n:
            raise ValueError(f"{src}: {len(path_list)} `paths` but {n} samples")
    meta = {} if metadata is None else metadata
    if not isinstance(meta, dict):
        raise ValueError(f"{src}: `metadata` must be a dict, got {type(meta).__name__}")
    return FeatureFile(f, y, names, codes, snames, path_list, meta)


def save_features(
    path: PathLike,
    features: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    split: Sequence[str] | torch.Tensor | np.ndarray | None = None,
    split_names: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a feature file (``.npz``, ``.pt``/``.pth`` or ``.safetensors``, by suffix), atomically.

    Args:
        path: output file; the suffix picks the format.
        features: (N, D) float features (stored as float32).
        labels: (N,) integer 0-based class indices.
        class_names: optional C names, ``labels < C``.
        split: optional (N,) split name per row (strings), or (N,) integer codes with
            ``split_names``. Stored as codes + ``split_names``.
        split_names: names of the codes (with string ``split``: fixes their order).
        paths: optional N source paths.
        metadata: optional JSON-able dict (model name, weights hash, ...).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: unknown suffix, or the data fails the checks of :func:`load_features`.
    """
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in _FEATURE_SUFFIXES:
        raise ValueError(
            f"`path`: unsupported feature file type {suffix!r}; use one of {_FEATURE_SUFFIXES}"
        )
    meta = _to_jsonable(dict(metadata or {}), "metadata")
    ff = _validate(features, labels, class_names, split, split_names, paths, meta, "save_features")
    if suffix == ".npz":
        arrays: dict[str, np.ndarray] = {
            "features": ff.features.numpy(),
            "labels": ff.labels.numpy(),
        }
        if ff.class_names is not None:
            arrays["class_names"] = np.array(ff.class_names, dtype=str)
        if ff.split is not None:
            arrays["split"] = ff.split.numpy()
            arrays["split_names"] = np.array(ff.split_names, dtype=str)
        if ff.paths is not None:
            arrays["paths"] = np.array(ff.paths, dtype=str)
        arrays["metadata"] = np.array(json.dumps(ff.metadata))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez must not append ".npz"
                np.savez(fh, **arrays)

        return atomic_write(p, write)
    if suffix in (".pt", ".pth"):
        obj: dict[str, Any] = {"features": ff.features, "labels": ff.labels}
        if ff.class_names is not None:
            obj["class_names"] = ff.class_names
        if ff.split is not None:
            obj["split"] = ff.split
            obj["split_names"] = ff.split_names
        if ff.paths is not None:
            obj["paths"] = ff.paths
        obj["metadata"] = ff.metadata
        return atomic_write(p, lambda tmp: torch.save(obj, tmp))
    from safetensors.torch import save_file

    tensors = {"features": ff.features, "labels": ff.labels}
    if ff.split is not None:
        tensors["split"] = ff.split
    if ff.paths is not None:
        encoded = [s.encode("utf-8") for s in ff.paths]
        lengths = torch.tensor([0] + [len(b) for b in encoded], dtype=torch.int64)
        tensors["paths_offsets"] = torch.cumsum(lengths, 0)
        blob = b"".join(encoded)
        tensors["paths_utf8"] = (
            torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()
            if blob else torch.zeros(0, dtype=torch.uint8)
        )
    info = {"class_names": ff.class_names, "split_names": ff.split_names, "metadata": ff.metadata}
    header = {"format": FEATURES_FORMAT, _META_KEY: json.dumps(info, allow_nan=False)}
    return atomic_write(p, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _read_feature_dict(p: Path) -> dict[str, Any]:
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                d: dict[str, Any] = {k: z[k] for k in z.files}
        except Exception as exc:
            raise ValueError(f"{p}: cannot read as .npz ({exc})") from exc
        if "metadata" in d:
            try:
                d["metadata"] = json.loads(str(d["metadata"]))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}: `metadata` is not a JSON string") from exc
        return d
    if suffix in (".pt", ".pth"):
        try:
            d = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{p}: cannot read as a torch file ({exc})") from exc
        if not isinstance(d, dict):
            raise ValueError(
                f"{p}: expected a dict with `features` and `labels`, got {type(d).__name__}"
            )
        return d
    if suffix == ".safetensors":
        tensors, info = _read_safetensors(p, FEATURES_FORMAT, "feature")
        d = dict(tensors)
        for k in ("class_names", "split_names", "metadata"):
            if info.get(k) is not None:
                d[k] = info[k]
        if "paths_offsets" in d:
            off = d.pop("paths_offsets").tolist()
            blob = d.pop("paths_utf8", torch.zeros(0, dtype=torch.uint8)).numpy().tobytes()
            d["paths"] = [blob[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:], strict=True)]
        return d
    raise ValueError(
        f"`path`: unsupported feature file type {suffix!r}; use one of {_FEATURE_SUFFIXES}"
    )


def load_features(path: PathLike) -> FeatureFile:
    """Read and validate a feature file (see the module docstring for the layout).

    Args:
        path: ``.npz``, ``.pt``/``.pth`` (a dict) or ``.safetensors`` file.

    Returns:
        :class:`FeatureFile` with (N, D) float32 ``features``, (N,) int64 ``labels`` and the
        optional ``class_names``, ``split`` codes + ``split_names``, ``paths``, ``metadata``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unknown suffix, unreadable file, missing ``features``/``labels``, bad shapes,
            no samples, NaN/Inf features (first bad row named), non-integer or negative labels,
            a label >= ``len(class_names)``, a bad ``split`` or ``paths`` entry.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no feature file at {p}")
    d = _read_feature_dict(p)
    for key in ("features", "labels"):
        if key not in d:
            raise ValueError(f"{p}: missing the `{key}` entry (found {sorted(d)[:10]})")
    ff = _validate(
        d["features"], d["labels"], d.get("class_names"), d.get("split"), d.get("split_names"),
        d.get("paths"), d.get("metadata"), str(p),
    )
    ff.path = p
    return ff


# ------------------------------------------------------------------------------------------
# descriptors and names (ICIS inputs)
# ------------------------------------------------------------------------------------------

_NAME_KEYS = ("names", "class_names")


def load_names(path: PathLike) -> list[str]:
    """Class names from a file: a JSON list of strings (``.json``), else one name per line.

    Blank lines are skipped and surrounding whitespace stripped.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a JSON list of strings, no names, or duplicate names.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no names file at {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc})") from exc
        if isinstance(names, dict) and any(k in names for k in _NAME_KEYS):
            names = names.get("names", names.get("class_names"))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{p}: expected a JSON list of strings")
        names = [n.strip() for n in names]
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise ValueError(f"{p}: no class names found")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{p}: duplicate class names {dup[:5]}")
    return names


def load_descriptors(
    path: PathLike, *, key: str | None = None
) -> tuple[torch.Tensor, list[str] | None]:
    """Class descriptors (attributes or text embeddings), one row per class.

    Formats: ``.npy`` (C, A) array; ``.npz`` with ``descriptors`` (or ``key``, or its only
    array) and optional ``names``; ``.pt``/``.pth`` holding a (C, A) tensor or a dict with
    ``descriptors`` (or ``key``) and optional ``names``; ``.safetensors`` with a ``descriptors``
    tensor (or ``key``, or its only tensor).

    Args:
        path: the file.
        key: the entry to read in a multi-entry file.

    Returns:
        ``(descriptors, names)``: (C, A) float32 tensor and the embedded names (or None).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unknown suffix, no descriptor entry, not 2-D, not float, NaN/Inf, or a name
            count differing from C.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no descriptor file at {p}")
    suffix = p.suffix.lower()
    names = None
    entries: dict[str, Any]
    try:
        if suffix == ".npy":
            entries = {"descriptors": np.load(p, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                entries = {k: z[k] for k in z.files}
        elif suffix in (".pt", ".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
            entries = obj if isinstance(obj, dict) else {"descriptors": obj}
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            entries = dict(load_file(str(p)))
        else:
            raise ValueError(
                f"`path`: unsupported descriptor file type {suffix!r}; use .npy, .npz, .pt, "
                ".safetensors"
            )
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{p}: cannot read the descriptor file ({exc})") from exc
    for k in _NAME_KEYS:
        if k in entries:
            names = _strings(entries.pop(k), k, str(p))
            break
    if key is not None:
        if key not in entries:
            raise ValueError(f"{p}: no entry `{key}` (found {sorted(entries)})")
        arr = entries[key]
    elif "descriptors" in entries:
        arr = entries["descriptors"]
    elif len(entries) == 1:
        arr = next(iter(entries.values()))
    else:
        raise ValueError(
            f"{p}: several entries {sorted(entries)}; name the descriptor one `descriptors` "
            "(or pass key=...)"
        )
    t = torch.as_tensor(_np(arr))
    if t.dim() != 2:
        raise ValueError(f"{p}: descriptors must be (C, A), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{p}: descriptors must be floating point, got {t.dtype}")
    t = t.to(torch.float32).contiguous()
    _check_finite(t, f"{p}: descriptors")
    if names is not None and len(names) != t.shape[0]:
        raise ValueError(f"{p}: {len(names)} names but {t.shape[0]} descriptor rows")
    return t, names
