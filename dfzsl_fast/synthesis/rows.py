"""Random access to training rows by global index: what the final classifier reads.

The classifier's epoch draws a permutation of [0, N) and reads batch after batch of rows by
index. `Rows` is that one interface, behind which the rows may live in memory
(`TensorRows`), in feature shards on disk (`ShardRows`, memory-mapped: a batch reads its rows,
never a whole shard), or nowhere at all (`GeneratedRows`: row g is regenerated from its
(class, row) pair by a `FeatureGenerator` whenever it is read, deterministic, so each epoch sees
the same rows). `ConcatRows` joins sources (virtual base features + synthesized new-class
features) and `MappedRows` applies a row-wise map on read (the pipeline's centring). Since every
source returns the same rows for the same indices, training from any of them gives the same
classifier for the same rows and order.

Shapes: `features(idx)` (n, D) float32 on CPU (or the generator's device), `labels(idx)` (n,)
int64; idx a 1-D int64 tensor of global row indices in [0, num_rows).
"""

from __future__ import annotations

import abc
import json
import struct
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["Rows", "TensorRows", "GeneratedRows", "ShardRows", "ConcatRows", "MappedRows"]


class Rows(abc.ABC):
    """N rows (feature, label) readable by global index; see the module docstring."""

    num_rows: int
    feature_dim: int

    def __len__(self) -> int:
        return self.num_rows

    @abc.abstractmethod
    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, D) float rows idx."""

    @abc.abstractmethod
    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        """(n,) int64 labels of rows idx."""

    def read(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (n, D), labels (n,)) of rows idx: what a training step reads. Sources
        that locate rows (shards, concatenations) override it to locate them once for both."""
        return self.features(idx), self.labels(idx)

    def _flat(self) -> _Flat | None:
        """The rows as tensors on the CPU, when they are (memory or memory-mapped), for
        `_Flat.read`'s one-pass gather; None otherwise (rows made on read)."""
        return None

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """(num_classes,) int64 rows per class (the classifier's prior), in chunks."""
        out = torch.zeros(num_classes, dtype=torch.int64)
        for s in range(0, self.num_rows, 1 << 20):
            idx = torch.arange(s, min(s + (1 << 20), self.num_rows))
            out += torch.bincount(self.labels(idx).cpu(), minlength=num_classes)[:num_classes]
        return out


class TensorRows(Rows):
    """Rows held in memory: x (N, D), y (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"TensorRows: expected x (N, D) and y (N,), got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        self.x, self.y = x, y
        self.num_rows, self.feature_dim = x.shape

    def features(self, idx):
        return self.x.index_select(0, idx.to(self.x.device))

    def labels(self, idx):
        return self.y.index_select(0, idx.to(self.y.device))

    def _flat(self):
        ok = (self.x.device.type == "cpu" and self.y.device.type == "cpu"
              and self.x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
              and self.y.dtype == torch.int64)
        return _Flat([self.x], [self.y], [self.num_rows]) if ok else None


class _Flat:
    """Rows held as K tensors on the CPU: global row g is row g - starts[k] of features[k] /
    labels[k], k the last source with starts[k] <= g. `read` gathers a batch in one pass
    (`ops.rows.gather_rows`: the native kernel where loaded), converting to float32."""

    def __init__(self, features: list[torch.Tensor], labels: list[torch.Tensor],
                 sizes: list[int]) -> None:
        self.features, self.labels = features, labels
        self.starts = torch.tensor([0] + list(np.cumsum(sizes))[:-1], dtype=torch.int64)
        self.num_rows = int(sum(sizes))

    @staticmethod
    def of(parts: Sequence[Rows]) -> _Flat | None:
        flats = [p._flat() for p in parts]
        if any(f is None for f in flats):
            return None
        feats = [t for f in flats for t in f.features]
        labs = [t for f in flats for t in f.labels]
        return _Flat(feats, labs, [t.shape[0] for t in feats])

    def read(self, idx: torch.Tensor, what: str = "both"):
        from ..ops.rows import gather_rows

        idx = idx.cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_rows):
            raise ValueError(f"idx: expected row indices in [0, {self.num_rows})")
        part = torch.searchsorted(self.starts, idx, right=True) - 1
        local = idx - self.starts[part]  # in range by construction
        kw = dict(check_inputs=False)
        if what == "labels":
            return gather_rows(self.labels, part, local, torch.int64, **kw)
        x = gather_rows(self.features, part, local, torch.float32, **kw)
        return x if what == "features" else (x, gather_rows(self.labels, part, local,
                                                            torch.int64, **kw))


class GeneratedRows(Rows):
    """Rows made on read: global row g is row g % n of class classes[g // n] (class-major, the
    order of `synthesize_to`'s shards), generated by `generator` with `seed`.

    Args:
        generator: a `FeatureGenerator`.
        class_embeddings: (C, A) embeddings the generator is conditioned on.
        classes: (K,) class ids (into class_embeddings), in output order.
        num_per_class: rows per class n.
        seed: the synthesis seed.
    """

    def __init__(self, generator, class_embeddings: torch.Tensor,
                 classes: Sequence[int] | torch.Tensor, num_per_class: int, *, seed: int) -> None:
        self.generator, self.emb, self.seed = generator, class_embeddings, seed
        self.classes = torch.as_tensor(classes, dtype=torch.int64).cpu()
        self.n = int(num_per_class)
        self.num_rows = self.classes.numel() * self.n
        self.feature_dim = generator.feature_dim

    def features(self, idx):
        idx = idx.cpu()
        return self.generator.generate(self.emb, self.classes[idx // self.n], idx % self.n,
                                       seed=self.seed)

    def labels(self, idx):
        return self.classes[idx.cpu() // self.n]

    def class_counts(self, num_classes):
        out = torch.zeros(num_classes, dtype=torch.int64)
        out[self.classes] += self.n
        return out


_NP = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64,
       "I64": np.int64}
_TORCH = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
          "F64": torch.float64, "I64": torch.int64}


def _as_tensor(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A read-only memmap as a tensor over the same pages (no copy; nothing writes to it)."""
    with warnings.catch_warnings():  # torch warns that the array is not writable
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    return t.view(dtype) if t.dtype != dtype else t


def _memmap_safetensors(path: Path) -> dict[str, np.memmap]:
    """Each tensor of a .safetensors file as a read-only np.memmap (no data is read)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        shape = tuple(meta["shape"])
        if meta["dtype"] not in _NP:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {meta['dtype']}")
        out[name] = (np.memmap(path, dtype=_NP[meta["dtype"]], mode="r", offset=8 + n + a,
                               shape=shape) if b > a else np.zeros(shape, _NP[meta["dtype"]]),
                     _TORCH[meta["dtype"]])
    return out


class ShardRows(Rows):
    """The rows of a complete `synthesize_to` folder, memory-mapped (no shard is loaded whole).

    Args:
        out_dir: the folder (its manifest.json must be complete).
    """

    def __init__(self, out_dir) -> None:
        self.dir = Path(out_dir)
        mpath = self.dir / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"out_dir: {self.dir} has no manifest.json (not a "
                                    "synthesize_to folder)")
        man = json.loads(mpath.read_text())
        if not man.get("complete", False):
            raise ValueError(f"out_dir: {self.dir} is incomplete; rerun the same synthesis to "
                             "finish it")
        self._feat, self._lab, sizes = [], [], []
        for sh in man["shards"]:
            maps = _memmap_safetensors(self.dir / sh["file"])
            self._feat.append(_as_tensor(*maps["features"]))
            self._lab.append(_as_tensor(*maps["labels"]))
            sizes.append(int(sh["rows"]))
        self._rows = _Flat(self._feat, self._lab, sizes)  # a batch: one gather over the shards
        self.num_rows = int(sum(sizes))
        self.feature_dim = int(man["feature_dim"])

    def features(self, idx):
        return self._rows.read(idx, "features")

    def labels(self, idx):
        return self._rows.read(idx, "labels")

    def read(self, idx):
        return self._rows.read(idx)

    def _flat(self):
        return self._rows


class ConcatRows(Rows):
    """Sources one after another: global rows [0, len(a)) are a's, then b's, ..."""

    def __init__(self, *parts: Rows) -> None:
        if not parts or len({p.feature_dim for p in parts}) != 1:
            raise ValueError("ConcatRows: expected sources of one feature width")
        self.parts = parts
        self._starts = torch.tensor([0] + list(np.cumsum([p.num_rows for p in parts])),
                                    dtype=torch.int64)
        self.num_rows, self.feature_dim = int(self._starts[-1]), parts[0].feature_dim
        self._flat_parts = _Flat.of(parts)

    def _locate(self, idx: torch.Tensor) -> list[tuple[int, torch.Tensor | None, torch.Tensor]]:
        """[(part, positions in idx (None: all of them), local rows)] for the parts idx
        touches: one stable sort by part, so each part's rows keep their batch order."""
        idx = idx.cpu()
        part = torch.searchsorted(self._starts, idx, right=True) - 1
        if idx.numel() == 0 or int(part.min()) == int(part.max()):
            p = int(part[0]) if idx.numel() else 0
            return [(p, None, idx - self._starts[p])]
        order = torch.argsort(part, stable=True)
        counts = torch.bincount(part, minlength=len(self.parts)).tolist()
        out, a = [], 0
        for p, n in enumerate(counts):
            if n:
                sel = order[a : a + n]
                out.append((p, sel, idx[sel] - self._starts[p]))
                a += n
        return out

    @staticmethod
    def _join(n: int, located, pieces) -> torch.Tensor:
        if located[0][1] is None:
            return pieces[0]
        first = pieces[0]
        out = first.new_empty((n,) + tuple(first.shape[1:]))
        for (_, sel, _), piece in zip(located, pieces, strict=True):
            out.index_copy_(0, sel.to(out.device), piece.to(out.dtype))
        return out

    def features(self, idx):
        if self._flat_parts is not None:
            return self._flat_parts.read(idx, "features")
        loc = self._locate(idx)
        return self._join(idx.numel(), loc, [self.parts[p].features(i).float() for p, _, i in loc])

    def labels(self, idx):
        if self._flat_parts is not None:
            return self._flat_parts.read(idx, "labels")
        loc = self._locate(idx)
        return self._join(idx.numel(), loc, [self.parts[p].labels(i).cpu() for p, _, i in loc])

    def read(self, idx):
        if self._flat_parts is not None:  # every part in memory or memory-mapped: one pass
            return self._flat_parts.read(idx)
        loc = self._locate(idx)
        got = [self.parts[p].read(i) for p, _, i in loc]
        return (self._join(idx.numel(), loc, [x.float() for x, _ in got]),
                self._join(idx.numel(), loc, [y.cpu() for _, y in got]))

    def _flat(self):
        return self._flat_parts

    def class_counts(self, num_classes):
        return sum(p.class_counts(num_classes) for p in self.parts)


class MappedRows(Rows):
    """`rows` with a row-wise map applied to features on read (e.g. the centring projection)."""

    def __init__(self, rows: Rows, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.rows, self.fn = rows, fn
        self.num_rows, self.feature_dim = rows.num_rows, rows.feature_dim

    def features(self, idx):
        return self.fn(self.rows.features(idx))

    def labels(self, idx):
        return self.rows.labels(idx)

    def read(self, idx):
        x, y = self.rows.read(idx)
        return self.fn(x), y

    def class_counts(self, num_classes):
        return self.rows.class_counts(num_classes)
