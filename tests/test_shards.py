"""synthesize_to (sharded, resumable synthesis) and FeatureShards (the reader): small sizes, CPU."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dfzsl_fast.synthesis import FeatureShards, VMFGenerator, synthesize_to
from dfzsl_fast.synthesis import shards as shards_mod
from dfzsl_fast.synthesis.shards import MANIFEST, SHARDS_FORMAT, read_manifest, shard_name

pytestmark = pytest.mark.usefixtures("one_thread")

D = 24
C = 9
CLASSES = [7, 2, 5, 0]
NPC = 250  # 1000 rows


def _emb(seed=0, c=C, d=D):
    return torch.randn(c, d, generator=torch.Generator().manual_seed(seed))


def _gen(kappa=80.0, d=D):
    return VMFGenerator(kappa, d)


def _write(out, *, gen=None, emb=None, classes=CLASSES, npc=NPC, seed=11, shard_rows=300,
           dtype=torch.float16, batch_rows=128):
    return synthesize_to(out, gen or _gen(), _emb() if emb is None else emb, classes, npc,
                         seed=seed, shard_rows=shard_rows, dtype=dtype, batch_rows=batch_rows,
                         progress=False)


def folder_bytes(p: Path) -> dict[str, bytes]:
    """Every file under p (hidden ones too), by relative path."""
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def _reference(gen, emb, classes, npc, seed, dtype):
    cls = torch.tensor(classes).repeat_interleave(npc)
    rows = torch.arange(npc).repeat(len(classes))
    return gen.generate(emb, cls, rows, seed=seed, out_dtype=dtype), cls


# ------------------------------------------------------------------------------------ writing
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rows_equal_generate_of_the_same_rows(tmp_path, dtype):
    from safetensors.torch import load_file

    out = _write(tmp_path / "s", dtype=dtype)
    ref, cls = _reference(_gen(), _emb(), CLASSES, NPC, 11, dtype)
    m = read_manifest(out)
    assert m["complete"] is True and m["num_shards"] == 4 and m["total_rows"] == 1000
    got_x, got_y = [], []
    for s, entry in enumerate(m["shards"]):
        f = out / shard_name(s)
        assert entry == {"file": f.name, "rows": 300 if s < 3 else 100,
                         "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        t = load_file(f)
        assert set(t) == {"features", "labels"}
        assert t["features"].dtype == dtype and t["labels"].dtype == torch.int64
        got_x.append(t["features"])
        got_y.append(t["labels"])
    assert torch.equal(torch.cat(got_x), ref)
    assert torch.equal(torch.cat(got_y), cls)
    assert sorted(os.listdir(out)) == [MANIFEST] + [shard_name(s) for s in range(4)]


def test_manifest_records_the_arguments_and_nothing_else(tmp_path):
    gen, emb = _gen(), _emb()
    out = _write(tmp_path / "s", gen=gen, emb=emb)
    m = json.loads((out / MANIFEST).read_text())
    assert m["format"] == SHARDS_FORMAT
    assert m["generator"] == gen.describe() and m["generator_fingerprint"] == gen.fingerprint()
    assert m["classes"] == CLASSES and m["num_per_class"] == NPC and m["seed"] == 11
    assert m["dtype"] == "float16" and m["shard_rows"] == 300 and m["feature_dim"] == D
    assert m["batch_rows"] == 128
    from dfzsl_fast.hashing import fingerprint

    assert m["class_embeddings"] == fingerprint(emb)
    assert set(m) == {"format", "complete", "generator", "generator_fingerprint",
                      "class_embeddings", "classes", "num_per_class", "seed", "dtype",
                      "shard_rows", "batch_rows", "total_rows", "feature_dim", "num_shards",
                      "shards"}


def test_batch_rows_is_recorded_and_vmf_shards_do_not_depend_on_it(tmp_path):
    a = folder_bytes(_write(tmp_path / "a", batch_rows=7))
    b = folder_bytes(_write(tmp_path / "b", batch_rows=299))
    assert a.keys() == b.keys() and len(a) == 5
    assert all(a[k] == b[k] for k in a if k != MANIFEST)
    ma, mb = json.loads(a[MANIFEST]), json.loads(b[MANIFEST])
    assert (ma.pop("batch_rows"), mb.pop("batch_rows")) == (7, 299) and ma == mb
    # rows per call beyond a shard are the shard: the same folder
    assert folder_bytes(_write(tmp_path / "c", batch_rows=300)) == \
        folder_bytes(_write(tmp_path / "d", batch_rows=10**6))


def test_rerun_on_a_complete_folder_is_a_no_op_and_repairs(tmp_path):
    out = _write(tmp_path / "s")
    want = folder_bytes(out)
    _write(out)
    assert folder_bytes(out) == want
    (out / shard_name(1)).unlink()
    raw = bytearray((out / shard_name(2)).read_bytes())
    raw[-5] ^= 0xFF  # a flipped bit inside the features
    (out / shard_name(2)).write_bytes(bytes(raw))
    (out / ".shard-00003.safetensors.abc.tmp.safetensors").write_bytes(b"left by SIGKILL")
    _write(out)
    assert folder_bytes(out) == want


class _StopAfter(VMFGenerator):
    """A VMFGenerator that raises KeyboardInterrupt (as Ctrl-C would) after `calls` calls."""

    def __init__(self, calls, *a, **k):
        super().__init__(*a, **k)
        self.left = calls

    def _generate(self, *a, **k):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super()._generate(*a, **k)


def test_interrupted_run_resumes_to_identical_bytes(tmp_path):
    want = folder_bytes(_write(tmp_path / "ref"))
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        _write(out, gen=_StopAfter(7, 80.0, D))  # 128-row batches: shards 0 and 1 done
    m = read_manifest(out)
    assert m["complete"] is False
    assert (out / shard_name(1)).exists() and not (out / shard_name(2)).exists()
    assert (out / ".partial" / "shard-00001.sha256").exists()
    with pytest.raises(ValueError, match="incomplete"):
        FeatureShards(out, batch_size=10)
    calls = []
    real = shards_mod._shard_bytes

    def spy(*a, **k):
        calls.append(a[6])  # lo: the first global row of the shard written
        return real(*a, **k)

    shards_mod._shard_bytes = spy
    try:
        _write(out)
    finally:
        shards_mod._shard_bytes = real
    assert calls == [600, 900]  # only the missing shards were generated
    assert folder_bytes(out) == want


class _Drifting(VMFGenerator):
    """Same describe() as a VMFGenerator, different rows: a generator that does not reproduce."""

    def _generate(self, *a, **k):
        return super()._generate(*a, **k) * 0.5


def test_a_repaired_shard_must_match_its_recorded_hash(tmp_path):
    out = _write(tmp_path / "s")
    (out / shard_name(0)).write_bytes(b"corrupt")
    with pytest.raises(RuntimeError, match="shard 0.*sha256"):
        _write(out, gen=_Drifting(80.0, D))


@pytest.mark.parametrize("change, key", [
    (dict(seed=12), "seed"),
    (dict(npc=251), "num_per_class"),
    (dict(classes=[7, 2, 5, 1]), "classes"),
    (dict(dtype=torch.float32), "dtype"),
    (dict(shard_rows=301), "shard_rows"),
    (dict(batch_rows=129), "batch_rows"),
    (dict(gen=VMFGenerator(81.0, D)), "generator"),
    (dict(emb=_emb(seed=1)), "class_embeddings"),
])
def test_other_arguments_on_an_existing_folder_are_refused(tmp_path, change, key):
    out = _write(tmp_path / "s")
    want = folder_bytes(out)
    with pytest.raises(ValueError, match=rf"different arguments: .*{key} \(folder: "):
        _write(out, **change)
    assert folder_bytes(out) == want


def test_a_folder_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no manifest.json"):
        _write(tmp_path / "a")
    assert os.listdir(tmp_path / "a") == ["notes.txt"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / MANIFEST).write_text(json.dumps({"format": "something/v1"}))
    with pytest.raises(ValueError, match="not a dfzsl_fast.shards/v1 manifest"):
        _write(tmp_path / "b")
    (tmp_path / "c").write_text("a file")
    with pytest.raises(NotADirectoryError, match="out_dir"):
        _write(tmp_path / "c")
    (tmp_path / "d").mkdir()  # an empty folder is fine
    assert read_manifest(_write(tmp_path / "d"))["complete"] is True


@pytest.mark.parametrize("kw, err, match", [
    (dict(classes=[0, 0]), ValueError, "classes: contains duplicate"),
    (dict(classes=[9]), ValueError, r"classes: class indices must lie in \[0, 9\)"),
    (dict(classes=[]), ValueError, "classes: expected at least one"),
    (dict(classes=[1.5]), TypeError, "classes"),
    (dict(npc=0), ValueError, "num_per_class"),
    (dict(npc=2.0), TypeError, "num_per_class"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(shard_rows=0), ValueError, "shard_rows"),
    (dict(batch_rows=0), ValueError, "batch_rows"),
    (dict(dtype=torch.float64), TypeError, "dtype"),
    (dict(emb=torch.randn(C, D + 1)), ValueError, "class_embeddings: expected shape"),
    (dict(emb=torch.zeros(C, D, dtype=torch.int64)), TypeError, "class_embeddings"),
    (dict(gen="vmf"), TypeError, "generator"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kw, err, match):
    with pytest.raises(err, match=match):
        _write(tmp_path / "s", **kw)
    assert not (tmp_path / "s").exists()


def test_non_finite_embedding_of_a_requested_class_is_named(tmp_path):
    emb = _emb()
    emb[5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"row 5 \(classes\[2\]\)"):
        _write(tmp_path / "s", emb=emb)
    assert not (tmp_path / "s").exists()
    emb[5, 3] = 0.0
    emb[8, 0] = float("inf")  # not requested: fine
    _write(tmp_path / "t", emb=emb)


# ------------------------------------------------------------------------------------ reading
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    return _write(tmp_path_factory.mktemp("shards") / "s")


def _cat(batches):
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_unshuffled_iteration_is_global_order(folder):
    ref, cls = _reference(_gen(), _emb(), CLASSES, NPC, 11, torch.float16)
    ds = FeatureShards(folder, batch_size=128)
    assert ds.num_rows == 1000 and len(ds) == 8
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [128] * 7 + [104]
    assert batches[0][0].dtype == torch.float32
    x, y = _cat(batches)
    assert torch.equal(x, ref.float()) and torch.equal(y, cls)
    lx, ly = ds.load_all()
    assert torch.equal(lx, x) and torch.equal(ly, y)
    dl = FeatureShards(folder, batch_size=128, drop_last=True, dtype=torch.float16)
    assert len(dl) == 7 and len(list(dl)) == 7
    assert torch.equal(_cat(list(dl))[0], ref[:896])


def test_shuffle_is_seeded_per_epoch_and_keeps_every_row(folder):
    x0, y0 = FeatureShards(folder, batch_size=100).load_all()
    ds = FeatureShards(folder, batch_size=100, shuffle=True, seed=3, shuffle_shards=2)
    xa, ya = _cat(list(ds))
    xb, _ = _cat(list(ds))
    assert torch.equal(xa, xb)  # same epoch, same order
    assert not torch.equal(xa, x0)
    # a permutation of the rows: match rows by their bytes
    key = lambda x: sorted(map(bytes, x.numpy()))  # noqa: E731
    assert key(xa) == key(x0) and torch.equal(ya.sort().values, y0.sort().values)
    ds.set_epoch(1)
    xc, _ = _cat(list(ds))
    assert not torch.equal(xa, xc) and key(xc) == key(x0)
    other = FeatureShards(folder, batch_size=100, shuffle=True, seed=4, shuffle_shards=2)
    assert not torch.equal(_cat(list(other))[0], xa)
    # rows of one window stay in that window: the first window holds two shards' rows
    order = ds.shards_for_rank()
    first = torch.cat([x0[s * 300 : s * 300 + 300] for s in order[:2]])
    n = 300 * 2 if 3 not in order[:2] else 400
    assert key(xc[:n]) == key(first)


@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_workers_give_the_same_batches(folder, shuffle):
    ds = FeatureShards(folder, batch_size=96, shuffle=shuffle, seed=5, shuffle_shards=2)
    ds.set_epoch(2)
    want = list(ds)
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(got) == len(want) == len(ds)
    for (a, b), (c, d) in zip(got, want, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_read_disjoint_shards_covering_everything(folder, shuffle):
    x0, _ = FeatureShards(folder, batch_size=1000).load_all()
    parts = []
    for r in range(3):
        ds = FeatureShards(folder, batch_size=64, shuffle=shuffle, rank=r, world_size=3)
        ds.set_epoch(1)
        xs = _cat(list(ds))[0] if len(ds) else torch.empty(0, D)
        assert xs.shape[0] == ds.rows_for_rank()
        parts.append(xs)
    assert [p.shape[0] for p in parts] == [
        sum(300 if s < 3 else 100 for s in ds.shards_for_rank(r)) for r in range(3)]
    key = lambda x: sorted(map(bytes, x.numpy()))  # noqa: E731
    assert key(torch.cat(parts)) == key(x0)


def test_drop_last_gives_every_rank_the_same_number_of_full_batches(folder):
    lens = []
    for r in range(3):
        ds = FeatureShards(folder, batch_size=64, drop_last=True, rank=r, world_size=3)
        batches = list(ds)
        assert all(b[0].shape[0] == 64 for b in batches) and len(batches) == len(ds)
        lens.append(len(ds))
    # ranks hold 400 (shards 0, 3), 300 and 300 rows: 4 full batches each, not 6 / 4 / 4
    assert lens == [4, 4, 4]
    assert len(FeatureShards(folder, batch_size=64, rank=0, world_size=3)) == 7


def test_reader_checks(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        FeatureShards(tmp_path, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        FeatureShards(folder, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        FeatureShards(folder, batch_size=4, rank=3, world_size=3)
    with pytest.raises(TypeError, match="dtype"):
        FeatureShards(folder, batch_size=4, dtype=torch.int32)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    FeatureShards(bad, batch_size=4, verify=True)
    raw = bytearray((bad / shard_name(3)).read_bytes())
    raw[-1] ^= 1
    (bad / shard_name(3)).write_bytes(bytes(raw))
    FeatureShards(bad, batch_size=4)  # not verified: accepted
    with pytest.raises(ValueError, match="shard-00003.safetensors does not match its sha256"):
        FeatureShards(bad, batch_size=4, verify=True)
    (bad / shard_name(2)).unlink()
    with pytest.raises(FileNotFoundError, match="shard-00002.safetensors is missing"):
        FeatureShards(bad, batch_size=4)
