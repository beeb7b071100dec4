"""Reading a shard folder written by `synthesize_to`: `FeatureShards`, an IterableDataset.

    ds = FeatureShards("synth", batch_size=4096, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=None, num_workers=4)    # batches come from ds
    for epoch in range(E):
        ds.set_epoch(epoch)                                    # before iterating (see below)
        for x, y in loader: ...                                # x (b, D) float32, y (b,) int64

The row stream of an epoch (what one process, rank r of W, iterates):

1. Shard order. Unshuffled: 0, 1, 2, ... Shuffled: ``randperm(num_shards)`` from a generator
   seeded with (seed, epoch). Rank r takes the shards at positions r, r + W, r + 2W, ... of that
   order (so ranks read disjoint shards; they may differ by the rows of one shard, see
   `rows_for_rank`).
2. Within the rank, its shards are cut into windows of ``shuffle_shards`` consecutive shards
   (default 4). Shuffled: the rows of each window are permuted by a generator seeded with
   (seed, epoch, first shard of the window). So a row can move anywhere within a window of
   about ``shuffle_shards * shard_rows`` rows, and memory holds one or two windows per reader.
3. The stream is cut into batches of ``batch_size`` (the last one partial unless
   ``drop_last``); batches may straddle windows. With ``drop_last`` every rank yields the same
   number of full batches (the least any rank can fill), so DistributedDataParallel's ranks
   take equal steps; without it, ranks may differ by one shard's worth of batches.

DataLoader workers: worker w of K yields the rank's batches w, w + K, w + 2K, ...; DataLoader
takes them round-robin, so the batches come out in the same order as with no workers (workers
read whole windows when shuffling; the OS page cache shares the file reads). Without shuffling,
one process with any number of workers yields the rows in global order (class-major, as
written), and workers read only their own rows.

Epochs: `set_epoch(e)` changes the shuffle. With ``persistent_workers=True`` the workers hold
their own copies of the dataset, so set_epoch must be called before the DataLoader is created.

Example:
    >>> ds = FeatureShards("synth", batch_size=1024)
    >>> x, y = ds.load_all()                           # (N, D) float32, (N,) int64, global order
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .._checks import check_int, check_seed
from ..hashing import mix_seed, seeded_generator, sha256_file
from ..io.atomic import PathLike
from .shards import MANIFEST, read_manifest

__all__ = ["FeatureShards"]

_READ_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class FeatureShards(IterableDataset):
    """Batches (x (b, D), y (b,)) of a complete shard folder; see the module docstring.

    Args:
        out_dir: a folder written by `synthesize_to` (its manifest must be complete).
        batch_size: rows per batch, >= 1.
        shuffle: shuffle shard order and rows within windows of shards (seeded).
        seed: shuffle seed, int in [0, 2^63).
        dtype: dtype of the yielded features (float32 default; the stored dtype is converted).
        drop_last: full batches only, and as many on every rank (the least any rank can fill).
        shuffle_shards: shards per shuffle window (default 4): the shuffle's reach and memory.
        verify: check every shard's sha256 against the manifest now (reads all the data).
        rank, world_size: this reader's share (default: the torch.distributed process group,
            else 0 and 1).

    Raises:
        FileNotFoundError: no manifest or a missing shard file.
        ValueError: an incomplete folder (an interrupted `synthesize_to`: rerun it to finish),
            a shard whose sha256 differs (with verify=True), or a bad argument.
    """

    def __init__(self, out_dir: PathLike, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0, dtype: torch.dtype = torch.float32, drop_last: bool = False,
                 shuffle_shards: int = 4, verify: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        self.batch_size = check_int(batch_size, "batch_size", 1)
        for name, v in (("shuffle", shuffle), ("drop_last", drop_last), ("verify", verify)):
            if not isinstance(v, bool):
                raise TypeError(f"{name}: expected True or False, got {type(v).__name__}")
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed = check_seed(seed)
        if dtype not in _READ_DTYPES:
            raise TypeError(f"dtype: expected one of {_READ_DTYPES}, got {dtype!r}")
        self.dtype = dtype
        self.shuffle_shards = check_int(shuffle_shards, "shuffle_shards", 1)
        if (rank is None) != (world_size is None):
            raise ValueError("rank, world_size: give both or neither")
        if rank is None:
            from ..distributed import rank_world

            rank, world_size = rank_world()
        world_size = check_int(world_size, "world_size", 1)
        rank = check_int(rank, "rank", 0)
        if rank >= world_size:
            raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        self.root = Path(out_dir).expanduser()
        m = read_manifest(self.root)
        if m.get("complete") is not True:
            raise ValueError(f"out_dir: {self.root} is incomplete (an interrupted synthesis): "
                             f"rerun synthesize with the same arguments to finish it")
        self.manifest = m
        self.feature_dim = int(m["feature_dim"])
        self.files = [self.root / s["file"] for s in m["shards"]]
        self.shard_rows = [int(s["rows"]) for s in m["shards"]]
        self.num_rows = int(m["total_rows"])
        if sum(self.shard_rows) != self.num_rows:
            raise ValueError(f"out_dir: {self.root / MANIFEST}: shard rows do not add up to "
                             f"total_rows {self.num_rows}")
        for f, s in zip(self.files, m["shards"], strict=True):
            if not f.is_file():
                raise FileNotFoundError(f"out_dir: shard {f} is missing")
            if verify and sha256_file(f) != s["sha256"]:
                raise ValueError(f"out_dir: shard {f} does not match its sha256 in the manifest "
                                 f"(corrupt: rerun synthesize with the same arguments to repair)")
        self.epoch = 0

    # ------------------------------------------------------------------------------ the plan
    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` (int >= 0) from the next iteration on."""
        self.epoch = check_int(epoch, "epoch", 0)

    def _shard_order(self) -> list[int]:
        n = len(self.files)
        if not self.shuffle:
            return list(range(n))
        g = seeded_generator(mix_seed(self.seed, self.epoch), 0)
        return torch.randperm(n, generator=g).tolist()

    def shards_for_rank(self, rank: int | None = None) -> list[int]:
        """Shard indices rank ``rank`` (default this reader's) reads this epoch, in order."""
        r = self.rank if rank is None else rank
        return self._shard_order()[r :: self.world_size]

    def rows_for_rank(self, rank: int | None = None) -> int:
        """Rows rank ``rank`` (default this reader's) reads this epoch."""
        return sum(self.shard_rows[s] for s in self.shards_for_rank(rank))

    def __len__(self) -> int:
        """Batches this rank yields this epoch (all its DataLoader workers together)."""
        if self.drop_last:  # the same count on every rank (DDP takes equal steps)
            return min(self.rows_for_rank(r) for r in range(self.world_size)) // self.batch_size
        return -(-self.rows_for_rank() // self.batch_size)

    # -------------------------------------------------------------------------------- reading
    def _read(self, s: int, a: int = 0, b: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [a, b) of shard s (features as stored, labels)."""
        from safetensors import safe_open

        b = self.shard_rows[s] if b is None else b
        with safe_open(str(self.files[s]), framework="pt") as f:
            x = f.get_slice("features")[a:b]
            y = f.get_slice("labels")[a:b]
        if x.shape != (b - a, self.feature_dim) or y.shape != (b - a,):
            raise ValueError(f"shard {self.files[s]}: rows {a}:{b} have shapes "
                             f"{tuple(x.shape)}, {tuple(y.shape)}; expected ({b - a}, "
                             f"{self.feature_dim}) and ({b - a},)")
        return x, y

    def _windows(self, shards: list[int]) -> list[list[int]]:
        k = self.shuffle_shards
        return [shards[i : i + k] for i in range(0, len(shards), k)]

    def _load_window(self, win: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self._read(s) for s in win]
        x = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        y = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        if self.shuffle:
            g = seeded_generator(mix_seed(self.seed, self.epoch), 1 + win[0])
            perm = torch.randperm(x.shape[0], generator=g)
            x, y = x[perm], y[perm]
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        shards = self.shards_for_rank()
        n = sum(self.shard_rows[s] for s in shards)
        nb = len(self)
        b = self.batch_size
        if self.shuffle:
            wins = self._windows(shards)
            starts = [0]
            for w in wins:
                starts.append(starts[-1] + sum(self.shard_rows[s] for s in w))
            cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

            def piece(i: int, a: int, c: int):  # stream rows [a, c) inside window i
                if i not in cache:
                    for k in [k for k in cache if k < i]:
                        del cache[k]
                    cache[i] = self._load_window(wins[i])
                x, y = cache[i]
                return x[a - starts[i] : c - starts[i]], y[a - starts[i] : c - starts[i]]
            bounds = starts
        else:
            bounds = [0]
            for s in shards:
                bounds.append(bounds[-1] + self.shard_rows[s])

            def piece(i: int, a: int, c: int):  # stream rows [a, c) inside shard shards[i]
                return self._read(shards[i], a - bounds[i], c - bounds[i])

        i = 0
        for j in range(wid, nb, nw):
            lo, hi = j * b, min(n, (j + 1) * b)
            while bounds[i + 1] <= lo:
                i += 1
            xs, ys, k, a = [], [], i, lo
            while a < hi:
                c = min(hi, bounds[k + 1])
                x, y = piece(k, a, c)
                xs.append(x)
                ys.append(y)
                a, k = c, k + 1
            x = xs[0] if len(xs) == 1 else torch.cat(xs)
            y = ys[0] if len(ys) == 1 else torch.cat(ys)
            yield x.to(self.dtype), y

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row in global order: (N, D) features in ``dtype``, (N,) int64 labels (ignores
        shuffle, rank and batch size; holds everything in memory)."""
        x = torch.empty(self.num_rows, self.feature_dim, dtype=self.dtype)
        y = torch.empty(self.num_rows, dtype=torch.int64)
        a = 0
        for s in range(len(self.files)):
            xs, ys = self._read(s)
            x[a : a + xs.shape[0]] = xs
            y[a : a + ys.shape[0]] = ys
            a += xs.shape[0]
        return x, y

    def __repr__(self) -> str:
        return (f"FeatureShards({str(self.root)!r}, rows={self.num_rows}, "
                f"shards={len(self.files)}, dim={self.feature_dim}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, rank={self.rank}/{self.world_size})")
