"""Loaders for the standard xlsa17 GZSL split files and for a user's feature file.

``att_splits.mat`` (Xian et al., "Zero-Shot Learning - The Good, the Bad and the Ugly",
"proposed split" v2) holds, per dataset: ``allclasses_names`` (C, 1) cell of names (absent for
FLO), ``att`` (A, C) class attributes (L2-normalised per class), ``trainval_loc``,
``test_seen_loc``, ``test_unseen_loc`` (and sometimes ``train_loc``/``val_loc``): **1-based** row
indices into the image-feature file ``res101.mat`` (``features`` (d, N), ``labels`` (N, 1),
1-based). The feature file itself is not part of the splits; users bring their own (ResNet-101 or
CLIP features), as ``.mat``, ``.npz`` or ``.pt``.

Which classes are seen and unseen is defined by the labels of the ``*_loc`` rows: seen =
labels of ``trainval_loc``, unseen = labels of ``test_unseen_loc``. Without a feature file it is
read from ``trainvalclasses.txt`` / ``testclasses.txt`` beside the ``.mat`` when they exist.

Example:
    >>> split = load_att_splits("xlsa17/AWA2")          # a folder or the .mat file
    >>> len(split.seen_classes), len(split.unseen_classes)
    (40, 10)
    >>> feats = load_features("res101.mat")             # FeatureSet(features (N, d), labels (N,))
    >>> split = split.with_labels(feats.labels)         # validate locs and class lists
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import numeric_tensor
from .classnames import clean_classnames

__all__ = ["XLSA17Split", "FeatureSet", "load_att_splits", "load_features"]

_LOC_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")


@dataclass(frozen=True)
class XLSA17Split:
    """One dataset's xlsa17 split.

    Attributes:
        dataset: dataset name (e.g. ``"AWA2"``), from the argument or the folder name.
        path: the ``.mat`` file read.
        class_names: C raw names in class-index order, or None (FLO ships none).
        attributes: (C, A) float32 class attributes or sentence embeddings (``att`` transposed).
        trainval_loc, test_seen_loc, test_unseen_loc: (n,) int64 **0-based** rows of the feature
            file.
        train_loc, val_loc: (n,) int64 0-based, or None when the file has none.
        seen_classes, unseen_classes: sorted (Cs,), (Cu,) int64 0-based class indices, or None
            when neither class lists nor labels were available.
    """

    dataset: str
    path: Path
    class_names: list[str] | None
    attributes: torch.Tensor
    trainval_loc: torch.Tensor
    test_seen_loc: torch.Tensor
    test_unseen_loc: torch.Tensor
    train_loc: torch.Tensor | None = None
    val_loc: torch.Tensor | None = None
    seen_classes: torch.Tensor | None = None
    unseen_classes: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        """C, the number of classes (rows of ``attributes``)."""
        return int(self.attributes.shape[0])

    def clean_names(self) -> list[str]:
        """Class names cleaned with this dataset's rule (see :mod:`dfzsl_fast.data.classnames`).

        Raises:
            ValueError: the file has no class names (FLO), or cleaning yields empty/duplicates.
        """
        if self.class_names is None:
            raise ValueError(f"{self.path}: this split file has no `allclasses_names`")
        return clean_classnames(self.class_names, self.dataset)

    def with_labels(self, labels: Any) -> XLSA17Split:
        """Derive (or check) the seen/unseen classes from the feature file's labels.

        Args:
            labels: (N,) int 0-based labels of the feature file the ``*_loc`` index into.

        Returns:
            A copy with ``seen_classes`` = unique labels of ``trainval_loc`` and
            ``unseen_classes`` = unique labels of ``test_unseen_loc``.

        Raises:
            ValueError: a location is out of range for N, test-seen labels are not all seen,
                seen and unseen overlap, or the class lists already known (from the text files)
                disagree with the labels.
        """
        y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        n = y.numel()
        for key in _LOC_KEYS:
            loc = getattr(self, key)
            if loc is not None and loc.numel() and int(loc.max()) >= n:
                raise ValueError(
                    f"`labels` has {n} rows but {key} reaches row {int(loc.max())} (0-based): "
                    "wrong feature file for this split?"
                )
        if n and int(y.max()) >= self.num_classes:
            raise ValueError(
                f"`labels` holds class {int(y.max())} but the split has {self.num_classes} classes"
            )
        seen = torch.unique(y[self.trainval_loc])
        unseen = torch.unique(y[self.test_unseen_loc])
        test_seen = torch.unique(y[self.test_seen_loc])
        if bool(torch.isin(seen, unseen).any()):
            raise ValueError("seen (trainval) and unseen (test_unseen) classes overlap")
        if not bool(torch.isin(test_seen, seen).all()):
            raise ValueError("test_seen_loc holds classes that are not in trainval_loc")
        for name, known, new in (
            ("seen_classes", self.seen_classes, seen),
            ("unseen_classes", self.unseen_classes, unseen),
        ):
            if known is not None and not torch.equal(known, new):
                raise ValueError(f"{name} from the class-name lists disagree with `labels`")
        return replace(self, seen_classes=seen, unseen_classes=unseen)


@dataclass(frozen=True)
class FeatureSet:
    """Image features and labels read by :func:`load_features`.

    Attributes:
        features: (N, d) float32 features (as stored: not normalised).
        labels: (N,) int64 0-based class labels.
        path: the file read.
    """

    features: torch.Tensor
    labels: torch.Tensor
    path: Path

    def __len__(self) -> int:
        return int(self.labels.numel())


# ------------------------------------------------------------------------------------------


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5)
        raise ValueError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save it with "
            "scipy.io.savemat or convert it to .npz (features (N, d), labels (N,))"
        ) from exc
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a .mat file ({exc})") from exc


def _loc(m: dict, key: str, path: Path, required: bool) -> torch.Tensor | None:
    if key not in m:
        if required:
            raise ValueError(f"{path}: missing the `{key}` field of an xlsa17 split file")
        return None
    a = numeric_tensor(m[key], key, str(path)).reshape(-1)
    if a.is_floating_point() and not (bool((a == a.round()).all())
                                      and (a.numel() == 0 or float(a.abs().max()) < 2**53)):
        raise ValueError(f"{path}: `{key}` must hold integer locations")
    a = a.numpy().astype(np.int64)
    if a.size and a.min() < 1:
        raise ValueError(f"{path}: `{key}` holds {a.min()} but MATLAB locations are 1-based")
    return torch.from_numpy(a - 1)


def _read_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _classes_from_lists(mat: Path, names: list[str] | None) -> tuple[Any, Any]:
    tv, te = mat.parent / "trainvalclasses.txt", mat.parent / "testclasses.txt"
    if names is None or not (tv.is_file() and te.is_file()):
        return None, None
    index = {n: i for i, n in enumerate(names)}
    out = []
    for f in (tv, te):
        lst = _read_list(f)
        missing = [n for n in lst if n not in index]
        if missing:
            raise ValueError(f"{f}: names not in allclasses_names: {missing[:5]}")
        out.append(torch.tensor(sorted(index[n] for n in lst), dtype=torch.int64))
    seen, unseen = out
    if bool(torch.isin(seen, unseen).any()):
        raise ValueError(f"{tv} and {te} share classes")
    return seen, unseen


def load_att_splits(
    path: str | Path,
    dataset: str | None = None,
    labels: Any = None,
    *,
    filename: str = "att_splits.mat",
) -> XLSA17Split:
    """Read an xlsa17 ``att_splits.mat``.

    Args:
        path: the ``.mat`` file, or the dataset folder holding ``filename``.
        dataset: dataset name used for class-name cleaning; default the folder name.
        labels: optional (N,) int 0-based labels of the matching feature file; when given, the
            seen/unseen classes are derived from them and the locations are range-checked.
        filename: file to read inside a folder (e.g. ``att_splits_with_train_val_loc.mat``).

    Returns:
        An :class:`XLSA17Split` with 0-based locations and (C, A) float32 attributes.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a split file (a field missing), non-finite attributes, bad locations.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / filename
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no xlsa17 split file at {p}")
    m = _loadmat(p)
    if "att" not in m:
        raise ValueError(f"{p}: missing the `att` field of an xlsa17 split file")
    att = numeric_tensor(m["att"], "att", str(p)).double().numpy()
    if att.ndim != 2:
        raise ValueError(f"{p}: `att` must be 2-D (A, C), got shape {att.shape}")
    if not np.isfinite(att).all():
        raise ValueError(f"{p}: `att` contains NaN or Inf")
    names = None
    if "allclasses_names" in m:
        try:
            names = [str(np.asarray(x[0]).reshape(-1)[0]) for x in m["allclasses_names"]]
        except (IndexError, TypeError, ValueError):
            raise ValueError(f"{p}: `allclasses_names` is not a cell array of names") from None
        if len(names) != att.shape[1]:
            raise ValueError(
                f"{p}: {len(names)} class names but `att` has {att.shape[1]} class columns"
            )
    locs = {k: _loc(m, k, p, required=k in _LOC_KEYS[:3]) for k in _LOC_KEYS}
    seen, unseen = _classes_from_lists(p, names)
    split = XLSA17Split(
        dataset=dataset if dataset is not None else p.parent.name,
        path=p,
        class_names=names,
        attributes=torch.from_numpy(att.T.astype(np.float32).copy()),
        seen_classes=seen,
        unseen_classes=unseen,
        **locs,
    )
    if labels is not None:
        split = split.with_labels(labels)
    return split


# ------------------------------------------------------------------------------------------
# feature files
# ------------------------------------------------------------------------------------------


def _read_feature_file(p: Path) -> tuple[Any, Any, bool]:
    """(features, labels, is_mat) as stored."""
    suffix = p.suffix.lower()
    if suffix == ".mat":
        m = _loadmat(p)
        data, is_mat = m, True
    elif suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                data, is_mat = {k: z[k] for k in z.files}, False
        except Exception as exc:
            raise ValueError(f"{p}: cannot read as .npz ({exc})") from None
    elif suffix in (".pt", ".pth"):
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{p}: cannot read as a torch file ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a dict with `features` and `labels`")
        is_mat = False
    else:
        raise ValueError(f"`path`: unsupported feature file type {suffix!r} (use .mat, .npz, .pt)")
    for key in ("features", "labels"):
        if key not in data:
            raise ValueError(f"{p}: missing the `{key}` entry (found {sorted(data)[:8]})")
    return data["features"], data["labels"], is_mat


def load_features(
    path: str | Path,
    *,
    label_base: int | str = "auto",
    expected_dim: int | None = None,
    num_classes: int | None = None,
) -> FeatureSet:
    """Read a feature file and validate it.

    Formats: ``.mat`` as ``res101.mat`` (``features`` (d, N) — (N, d) is also accepted —
    and ``labels`` (N, 1), 1-based); ``.npz`` or ``.pt`` dict with ``features`` (N, d) and
    ``labels`` (N,), 0-based.

    Args:
        path: the file.
        label_base: 0 or 1, the index of the first class in the stored labels; ``"auto"``: 1
            for ``.mat`` and 0 otherwise.
        expected_dim: if given, d must equal it (e.g. 512 for CLIP ViT-B/16).
        num_classes: if given, every label must be < num_classes (after rebasing).

    Returns:
        :class:`FeatureSet` with (N, d) float32 features and (N,) int64 0-based labels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown format, missing entries, bad shapes, N = 0, non-integer or
            out-of-range labels, NaN/Inf features (first bad row named), wrong dimension.
    """
    if label_base not in (0, 1, "auto") or isinstance(label_base, bool):
        raise ValueError(f"`label_base` must be 0, 1 or 'auto', got {label_base!r}")
    for name, v in (("expected_dim", expected_dim), ("num_classes", num_classes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"`{name}` must be a positive int or None, got {v!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no feature file at {p}")
    feats, labels, is_mat = _read_feature_file(p)
    f = numeric_tensor(feats, "features", str(p))
    y = numeric_tensor(labels, "labels", str(p))
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1:
        raise ValueError(f"{p}: `labels` must be (N,) or (N, 1), got {tuple(y.shape)}")
    n = y.numel()
    if n == 0:
        raise ValueError(f"{p}: the file holds no samples")
    if f.ndim != 2:
        raise ValueError(f"{p}: `features` must be 2-D, got shape {tuple(f.shape)}")
    if is_mat and f.shape[1] == n and f.shape[0] != n:
        f = f.T  # MATLAB convention (d, N)
    if f.shape[0] != n:
        raise ValueError(
            f"{p}: `features` has shape {tuple(f.shape)} but there are {n} labels; expected (N, d)"
        )
    if not f.dtype.is_floating_point:
        raise ValueError(f"{p}: `features` must be floating point, got {f.dtype}")
    f = f.to(torch.float32).contiguous()
    bad = ~torch.isfinite(f).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{p}: `features` row {int(bad.nonzero()[0])} contains NaN or Inf")
    if expected_dim is not None and f.shape[1] != expected_dim:
        raise ValueError(f"{p}: features have dimension {f.shape[1]}, expected {expected_dim}")
    if y.dtype.is_floating_point:
        if not bool((y == y.round()).all()) or float(y.abs().max()) > 2**53:
            raise ValueError(f"{p}: `labels` must be integers")
    elif y.dtype == torch.bool:
        raise ValueError(f"{p}: `labels` must be integers, got bool")
    y = y.long()
    base = (1 if is_mat else 0) if label_base == "auto" else label_base
    if int(y.min()) < base:
        hint = " (pass label_base=0 for 0-based labels)" if base == 1 else ""
        raise ValueError(f"{p}: `labels` hold {int(y.min())} but label_base is {base}{hint}")
    y = y - base
    if num_classes is not None and int(y.max()) >= num_classes:
        raise ValueError(f"{p}: label {int(y.max())} (0-based) >= num_classes={num_classes}")
    return FeatureSet(features=f, labels=y.contiguous(), path=p)
