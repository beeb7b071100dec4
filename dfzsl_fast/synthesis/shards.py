"""Synthesis at scale: features of many classes written as safetensors shards, resumable.

`synthesize_to(out_dir, generator, class_embeddings, classes, num_per_class, seed=...)` writes

    out_dir/shard-00000.safetensors   "features" (n, D) in `dtype`, "labels" (n,) int64 class ids
    out_dir/shard-00001.safetensors   ...
    out_dir/manifest.json             format "dfzsl_fast.shards/v1" (below)

Global row order is class-major in the order of `classes`: global row g = k * num_per_class + r
is row r of class classes[k], i.e. `generator.generate(E, [classes[k]], [r], seed=seed)`. Shard
s holds global rows [s * shard_rows, min((s + 1) * shard_rows, total)).

The folder is a pure function of the arguments: no timings, host names, world sizes or dates are
written anywhere, so 1, 2 or 3 processes, and an interrupted run resumed, give byte-identical
folders (for one generator on one kind of device).

``batch_rows`` is part of the arguments: the generator is called on rows [lo + k * batch_rows,
...) of each shard, and a generator whose matrix products round differently for different batch
sizes (TF-VAEGAN on the CPU: rows differ by ~1e-7) gives other bytes with another batch_rows.
So the folder records it and a resume must use the same value (the vMF sampler is exactly batch
invariant, but the rule is the same for every generator).

Manifest (``manifest.json``): ``format``, ``complete`` (false until every shard is written and
hashed), ``generator`` (its ``describe()``), ``generator_fingerprint``, ``class_embeddings``
(fingerprint of the whole (C, A) tensor), ``classes``, ``num_per_class``, ``seed``, ``dtype``,
``shard_rows``, ``batch_rows`` (at most shard_rows), ``total_rows``, ``feature_dim``,
``num_shards`` and ``shards``: one ``{"file", "rows", "sha256"}`` per shard (sha256 null while
unknown).

Resume: rerun with the same arguments. Shards already written (atomically: a shard file is
whole or absent) are verified against their recorded sha256 and kept; missing or corrupt ones
are written again. While a run is under way the sha256 of each finished shard sits in
``out_dir/.partial/shard-NNNNN.sha256`` (so a SIGKILL loses at most the shards being written);
that folder is removed when the manifest is complete. Different arguments on an existing folder
raise a ValueError naming what differs; a non-empty folder without our manifest is refused.

Memory: one shard (its tensor, then its serialized bytes) plus one generator batch, whatever
the total: peak RSS does not grow with the number of rows (benchmarks/shards_peak_rss.py).

torch.distributed: when a process group is initialised, rank r of W writes the shards s with
s % W == r; rank 0 writes the manifest; every rank returns once it is complete. The folder must
lie on a file system that all ranks see.

Example:
    >>> gen = VMFGenerator(1000.0, 512)
    >>> synthesize_to("synth", gen, emb, range(200), 5000, seed=0)   # 1M rows, 8 shards
    >>> ds = FeatureShards("synth", batch_size=4096, shuffle=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import check_class_indices, check_int, check_seed
from ..distributed import barrier, rank_world
from ..hashing import fingerprint, sha256_file
from ..io.atomic import PathLike, atomic_write, save_json
from ..reference.philox import MAX_INDEX
from .generators import OUT_DTYPES, FeatureGenerator

__all__ = [
    "SHARDS_FORMAT",
    "MANIFEST",
    "DEFAULT_SHARD_ROWS",
    "DEFAULT_BATCH_ROWS",
    "synthesize_to",
    "shard_name",
    "read_manifest",
]

#: ``format`` tag of a shard folder's manifest.
SHARDS_FORMAT = "dfzsl_fast.shards/v1"
#: The manifest's file name inside the folder.
MANIFEST = "manifest.json"
#: Default rows per shard: 131072 (128 MiB at D = 512 in float16, 256 MiB in float32). Bounds the
#: memory of a run (about two shards' bytes) and is the unit of resume and of work per rank.
DEFAULT_SHARD_ROWS = 1 << 17
#: Default rows per generator call: 16384 (a 32 MiB float32 batch at D = 512; small enough for
#: TF-VAEGAN's hidden layers on a GPU, large enough to amortise the call).
DEFAULT_BATCH_ROWS = 1 << 14
#: Most rows per shard (a shard is held in memory while it is written).
MAX_SHARD_ROWS = 1 << 26
_PARTIAL = ".partial"
_SPEC_KEYS = ("generator", "generator_fingerprint", "class_embeddings", "classes",
              "num_per_class", "seed", "dtype", "shard_rows", "batch_rows", "total_rows",
              "feature_dim", "num_shards")
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.safetensors`` (5+ digits)."""
    return f"shard-{index:05d}.safetensors"


def read_manifest(out_dir: PathLike) -> dict[str, Any]:
    """The manifest of a shard folder (complete or not), checked to be ours.

    Raises:
        FileNotFoundError: no ``manifest.json`` in ``out_dir``.
        ValueError: unreadable JSON, or another format tag.
    """
    p = Path(out_dir).expanduser() / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"out_dir: no {MANIFEST} in {p.parent} (not a shard folder)")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"out_dir: {p} is not a readable JSON manifest ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != SHARDS_FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise ValueError(f"out_dir: {p} is not a {SHARDS_FORMAT} manifest (format {got!r})")
    return m


# ------------------------------------------------------------------------------------ checks
def _check_args(out_dir, generator, class_embeddings, classes, num_per_class, seed, shard_rows,
                dtype, batch_rows, progress) -> tuple[Path, torch.Tensor, int, int]:
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir).strip():
        raise TypeError(f"out_dir: expected a folder path, got {out_dir!r}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir: {out} exists and is not a folder")
    if not isinstance(generator, FeatureGenerator):
        raise TypeError(f"generator: expected a FeatureGenerator, got {type(generator).__name__}")
    e = class_embeddings
    if not isinstance(e, torch.Tensor) or not e.is_floating_point() or e.dim() != 2 \
            or e.device.type == "meta":
        what = type(e).__name__ if not isinstance(e, torch.Tensor) else \
            f"{e.dtype} tensor of shape {tuple(e.shape)} on {e.device}"
        raise TypeError(f"class_embeddings: expected a (C, {generator.embed_dim}) float tensor, "
                        f"got {what}")
    if e.shape[0] == 0 or e.shape[1] != generator.embed_dim:
        raise ValueError(f"class_embeddings: expected shape (C >= 1, {generator.embed_dim}) "
                         f"(the generator's embedding width), got {tuple(e.shape)}")
    cls = check_class_indices(classes, "classes", min(e.shape[0], MAX_INDEX))
    if cls.numel() == 0:
        raise ValueError("classes: expected at least one class index")
    num_per_class = check_int(num_per_class, "num_per_class", 1)
    if num_per_class > MAX_INDEX:
        raise ValueError(f"num_per_class: expected an int in [1, 2**32], got {num_per_class}")
    seed = check_seed(seed)
    shard_rows = check_int(shard_rows, "shard_rows", 1)
    if shard_rows > MAX_SHARD_ROWS:
        raise ValueError(f"shard_rows: expected an int in [1, {MAX_SHARD_ROWS}], got {shard_rows}")
    if dtype not in OUT_DTYPES:
        raise TypeError(f"dtype: expected one of {', '.join(map(str, OUT_DTYPES))}, got {dtype!r}")
    batch_rows = min(check_int(batch_rows, "batch_rows", 1), shard_rows)  # as effective
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected True or False, got {type(progress).__name__}")
    rows = e.detach()[cls.to(e.device)]
    bad = ~torch.isfinite(rows).all(dim=1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"class_embeddings: row {int(cls[k])} (classes[{k}]) holds NaN or Inf")
    return out, cls, seed, batch_rows


def _spec(generator, e, cls, num_per_class, seed, dtype, shard_rows,
          batch_rows) -> dict[str, Any]:
    total = cls.numel() * num_per_class
    return {
        "format": SHARDS_FORMAT,
        "complete": False,
        "generator": generator.describe(),
        "generator_fingerprint": generator.fingerprint(),
        "class_embeddings": fingerprint(e),
        "classes": [int(c) for c in cls.tolist()],
        "num_per_class": num_per_class,
        "seed": seed,
        "dtype": _DTYPE_NAMES[dtype],
        "shard_rows": shard_rows,
        "batch_rows": batch_rows,
        "total_rows": total,
        "feature_dim": int(generator.feature_dim),
        "num_shards": -(-total // shard_rows),
    }


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_stale_tmp(name: str) -> bool:
    """A temporary file the atomic writer leaves behind when its process is SIGKILLed."""
    return name.startswith(".") and ".tmp" in name and (
        name.startswith(".shard-") or name.startswith(f".{MANIFEST}."))


def _inspect(out: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The existing manifest if ``out`` is our folder made with the same arguments; None for a
    missing or empty folder. Raises ValueError for another folder or other arguments."""
    if not out.is_dir():
        return None
    entries = [p.name for p in out.iterdir()]
    if not (out / MANIFEST).exists():
        if all(_is_stale_tmp(n) for n in entries):
            return None
        raise ValueError(f"out_dir: {out} is not empty and holds no {MANIFEST}: it is not a "
                         f"shard folder of ours; choose an empty or new folder")
    old = read_manifest(out)
    diff = [k for k in _SPEC_KEYS if old.get(k) != spec[k]]
    if diff:
        what = "; ".join(f"{k} (folder: {_short(old.get(k))}, now: {_short(spec[k])})"
                         for k in diff)
        raise ValueError(f"out_dir: {out} holds shards made with different arguments: {what}. "
                         f"Use another folder, or rerun with the folder's arguments to resume")
    shards = old.get("shards")
    if not isinstance(shards, list) or len(shards) != spec["num_shards"]:
        raise ValueError(f"out_dir: {out / MANIFEST} has a malformed 'shards' list")
    return old


def _expected_sha(s: int, out: Path, old: dict[str, Any] | None) -> str | None:
    if old is not None:
        sha = old["shards"][s].get("sha256") if isinstance(old["shards"][s], dict) else None
        if isinstance(sha, str):
            return sha
    side = out / _PARTIAL / f"shard-{s:05d}.sha256"
    try:
        text = side.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 else None


# -------------------------------------------------------------------------------- the writer
def _shard_bytes(generator, e, cls, num_per_class, seed, dtype, lo, hi, batch_rows) -> bytes:
    """Serialized shard of global rows [lo, hi), generated batch by batch into one buffer."""
    from safetensors.torch import save

    n = hi - lo
    feats = torch.empty(n, generator.feature_dim, dtype=dtype)
    g = torch.arange(lo, hi, dtype=torch.int64)
    labels = cls[g // num_per_class]
    row_ids = g % num_per_class
    for a in range(0, n, batch_rows):
        b = min(n, a + batch_rows)
        x = generator.generate(e, labels[a:b], row_ids[a:b], seed=seed, out_dtype=dtype)
        feats[a:b].copy_(x)
        del x
    data = save({"features": feats, "labels": labels})
    return data


def synthesize_to(
    out_dir: PathLike,
    generator: FeatureGenerator,
    class_embeddings: torch.Tensor,
    classes: Sequence[int] | torch.Tensor,
    num_per_class: int,
    *,
    seed: int,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    dtype: torch.dtype = torch.float16,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = True,
) -> Path:
    """Write ``num_per_class`` synthetic features of each class as resumable safetensors shards.

    Args:
        out_dir: the folder (created; an existing one must be empty, or ours with the same
            arguments, which resumes it).
        generator: a `FeatureGenerator` (`VMFGenerator`, `TFVAEGANGenerator`, ...).
        class_embeddings: (C, A) float tensor, A = generator.embed_dim; the rows of ``classes``
            must be finite. Its fingerprint is recorded.
        classes: K distinct class indices in [0, C): the classes, in output order.
        num_per_class: rows per class, >= 1.
        seed: int in [0, 2^63).
        shard_rows: rows per shard (default DEFAULT_SHARD_ROWS = 131072).
        dtype: stored feature dtype: float16 (default), bfloat16 or float32.
        batch_rows: rows per generator call within a shard (default DEFAULT_BATCH_ROWS = 16384).
            Recorded: some generators round differently by batch size (module docstring).
        progress: show a progress bar (rows/s and ETA) on stderr (rank 0 only).

    Returns:
        ``out_dir`` as a Path, once its manifest is complete.

    Raises:
        TypeError / ValueError: a bad argument (named), a folder that is not ours, or a folder
            made with other arguments (the message names the differing fields).
        RuntimeError: a rewritten shard does not match the sha256 recorded for it by an earlier
            run (the generator does not reproduce its rows here, e.g. another device).
    """
    out, cls, seed, batch_rows = _check_args(out_dir, generator, class_embeddings, classes,
                                             num_per_class, seed, shard_rows, dtype, batch_rows,
                                             progress)
    e = class_embeddings.detach()
    spec = _spec(generator, e, cls, num_per_class, seed, dtype, shard_rows, batch_rows)
    rank, world = rank_world()
    old = _inspect(out, spec)  # every rank checks before any rank writes
    barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for p in list(out.iterdir()) + (list((out / _PARTIAL).iterdir())
                                         if (out / _PARTIAL).is_dir() else []):
            if _is_stale_tmp(p.name) or (p.parent.name == _PARTIAL and p.name.startswith(".")):
                with contextlib.suppress(OSError):
                    p.unlink()
        shards = [{"file": shard_name(s), "rows": min(shard_rows, spec["total_rows"] - s *
                                                      shard_rows),
                   "sha256": (old["shards"][s].get("sha256") if old is not None else None)}
                  for s in range(spec["num_shards"])]
        (out / _PARTIAL).mkdir(exist_ok=True)
        if old is None or old.get("complete") is not False or old.get("shards") != shards:
            save_json(out / MANIFEST, {**spec, "shards": shards})
    barrier()

    total, n_shards = spec["total_rows"], spec["num_shards"]
    mine = list(range(rank, n_shards, world))
    my_rows = sum(min(shard_rows, total - s * shard_rows) for s in mine)
    from ..pipeline._progress import Progress

    bar = Progress(my_rows, f"synthesize (rank {rank}/{world})" if world > 1 else "synthesize",
                   enabled=progress and rank == 0)
    t0, done, made = time.perf_counter(), 0, 0
    with bar:
        for s in mine:
            lo, hi = s * shard_rows, min(total, (s + 1) * shard_rows)
            path = out / shard_name(s)
            want = _expected_sha(s, out, old)
            sha = None
            if want is not None and path.is_file() and sha256_file(path) == want:
                sha = want  # finished by an earlier run, verified
            else:
                data = _shard_bytes(generator, e, cls, num_per_class, seed, dtype, lo, hi,
                                    batch_rows)
                sha = hashlib.sha256(data).hexdigest()
                if want is not None and sha != want:
                    raise RuntimeError(
                        f"shard {s}: the regenerated shard's sha256 {sha[:12]}... differs from "
                        f"the one recorded for it, {want[:12]}...: the generator does not "
                        f"reproduce its rows here (another device or library version?)")
                atomic_write(path, data)
                del data
                made += hi - lo
            atomic_write(out / _PARTIAL / f"shard-{s:05d}.sha256", sha + "\n")
            done += hi - lo
            dt = time.perf_counter() - t0
            rate = made / dt if dt > 0 and made else 0.0
            eta = (my_rows - done) / rate if rate else 0.0
            bar.update(hi - lo, **{"rows/s": f"{rate:,.0f}", "eta": f"{eta:.0f}s"})
    barrier()
    if rank == 0:
        shards = []
        for s in range(n_shards):
            sha = (out / _PARTIAL / f"shard-{s:05d}.sha256").read_text(encoding="ascii").strip()
            shards.append({"file": shard_name(s),
                           "rows": min(shard_rows, total - s * shard_rows), "sha256": sha})
        save_json(out / MANIFEST, {**spec, "complete": True, "shards": shards})
        shutil.rmtree(out / _PARTIAL, ignore_errors=True)
    barrier()
    return out
