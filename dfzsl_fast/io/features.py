"""Feature files: image features with labels, split, paths and metadata.

Formats (``.npz``, ``.pt``/``.pth`` dict, or ``.safetensors``):

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
Loading never runs code: ``.npz`` without pickles, ``.pt`` with ``weights_only=True``.

Example:
    >>> save_features("test.npz", feats, labels, class_names=names, split=["test"] * len(labels))
    >>> ff = load_features("test.npz")          # FeatureFile(features (N, D), labels (N,), ...)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classnames import check_classnames
from ._checks import META_KEY, np_array, numeric_tensor, read_safetensors, strings
from .atomic import PathLike, atomic_write, to_jsonable

__all__ = ["FEATURES_FORMAT", "FeatureFile", "save_features", "load_features"]

#: safetensors metadata ``format`` of a feature file written by :func:`save_features`.
FEATURES_FORMAT = "dfzsl_fast.features/v1"
_FEATURE_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")


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
    f = numeric_tensor(features, "features", src)
    y = numeric_tensor(labels, "labels", src)
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
        names = strings(class_names, "class_names", src)
        try:
            check_classnames(names, "class_names")
        except ValueError as exc:
            raise ValueError(f"{src}: {exc}") from None
        if int(y.max()) >= len(names):
            raise ValueError(
                f"{src}: label {int(y.max())} but only {len(names)} `class_names`"
            )
    codes = snames = None
    if split is not None:
        if isinstance(split, (str, bytes, dict)):
            raise ValueError(f"{src}: `split` must be (N,) strings or integer codes")
        try:
            s = np.asarray(np_array(split) if isinstance(split, torch.Tensor) else split)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{src}: `split` must be (N,) strings or integer codes") from exc
        if s.ndim != 1 or s.shape[0] != n:
            raise ValueError(f"{src}: `split` must be (N,) = ({n},), got shape {s.shape}")
        if s.dtype.kind in "UO":
            per_row = strings(s, "split", src)
            snames = list(split_names) if split_names is not None else sorted(set(per_row))
            index = {k: i for i, k in enumerate(snames)}
            missing = sorted(set(per_row) - set(index))
            if missing:
                raise ValueError(f"{src}: `split` holds {missing} not in `split_names`")
            codes = torch.tensor([index[k] for k in per_row], dtype=torch.int64)
        elif s.dtype.kind in "iu":
            if split_names is None:
                raise ValueError(f"{src}: integer `split` codes need `split_names`")
            snames = strings(split_names, "split_names", src)
            codes = torch.as_tensor(s.astype(np.int64))
            if int(codes.min()) < 0 or int(codes.max()) >= len(snames):
                raise ValueError(
                    f"{src}: `split` codes must lie in [0, {len(snames)}) (`split_names`)"
                )
        else:
            raise ValueError(f"{src}: `split` must hold strings or integer codes, got {s.dtype}")
        snames = strings(snames, "split_names", src)
        if len(set(snames)) != len(snames):
            raise ValueError(f"{src}: `split_names` holds duplicates")
    path_list = None
    if paths is not None:
        path_list = strings(paths, "paths", src)
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
    meta = to_jsonable(dict(metadata or {}), "metadata")
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
    header = {"format": FEATURES_FORMAT, META_KEY: json.dumps(info, allow_nan=False)}
    return atomic_write(p, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _decode_paths(offsets: torch.Tensor, blob: torch.Tensor | None, p: Path) -> list[str]:
    """The N paths of a safetensors feature file from (N + 1,) int64 offsets into UTF-8 bytes."""
    if blob is None:
        blob = torch.zeros(0, dtype=torch.uint8)
    if offsets.dim() != 1 or offsets.dtype != torch.int64 or offsets.numel() == 0 or (
        blob.dim() != 1 or blob.dtype != torch.uint8
    ):
        raise ValueError(f"{p}: `paths_offsets` must be (N + 1,) int64 and `paths_utf8` (B,) "
                         "uint8")
    off = offsets.tolist()
    data = blob.numpy().tobytes()
    rising = all(a <= b for a, b in zip(off, off[1:], strict=False))
    if off[0] != 0 or off[-1] != len(data) or not rising:
        raise ValueError(f"{p}: `paths_offsets` must rise from 0 to len(paths_utf8) = {len(data)}")
    try:
        return [data[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:], strict=True)]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: `paths_utf8` is not valid UTF-8 ({exc.reason})") from None


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
        tensors, info = read_safetensors(p, FEATURES_FORMAT, "feature")
        d = dict(tensors)
        for k in ("class_names", "split_names", "metadata"):
            if info.get(k) is not None:
                d[k] = info[k]
        if "paths_offsets" in d:
            d["paths"] = _decode_paths(d.pop("paths_offsets"), d.pop("paths_utf8", None), p)
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
