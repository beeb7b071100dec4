"""Benchmarks of synthesis at scale: writing shards with `synthesize_to` and reading them with
`FeatureShards` (CPU; the vMF generator, d = 512, float16 shards).

Groups put the providers side by side (compare through `extra_info["samples/s"]`, rows/s):

- `shards-write/{preset}/d512/fp16`
  synthesize_to     `synthesize_to(fresh folder, VMFGenerator(1000, 512), ...)`: generation,
                    serialisation, sha256 and atomic writes (fsync) of every shard + manifest
  generate_only     the same `generator.generate` calls into one shard buffer, nothing written:
                    the floor of the write path (the gap is the I/O cost)
- `shards-read/{preset}/d512/fp16`
  ordered           `FeatureShards(batch_size=4096)`: every batch, float32, global order
  shuffled          the same with `shuffle=True` (seeded shard order, permuted windows of 4
                    shards)
  load_file_loop    `safetensors.torch.load_file` of every shard, converted to float32: the floor

Presets: "200x1000" (200 classes x 1000 rows = 200k rows, 7 shards of 32768 rows); under
`--benchmark-disable` (smoke) "20x100" is used instead, so the bodies run in seconds.

Correctness first: the written folder is checked once against `generator.generate` of its
first and last rows and its manifest must be complete; the read providers are checked to
return every row (ordered: equal to `load_all`).

Timing: `benchmark.pedantic(rounds=bench.rounds_for(device), warmup_rounds=1, iterations=1)`;
every write round goes to a fresh folder (created and removed outside the timed region). The
page cache is warm for reads (the folder was just written): these are in-memory read rates.
"""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from dfzsl_fast.synthesis import FeatureShards, VMFGenerator, synthesize_to

D = 512
KAPPA = 1000.0
PRESETS = {"200x1000": (200, 1000)}
SMOKE = (20, 100)
SHARD_ROWS = 1 << 15
BATCH = 4096
DEVICE = torch.device("cpu")


def _sizes(bench, benchmark, preset):
    return SMOKE if bench.smoke(benchmark) else PRESETS[preset]


def _emb(c):
    return torch.randn(c, D, generator=torch.Generator().manual_seed(0))


def _check_folder(out, gen, emb, classes, npc):
    ds = FeatureShards(out, batch_size=BATCH, dtype=torch.float16)
    assert ds.manifest["complete"] and ds.num_rows == len(classes) * npc
    x, y = ds.load_all()
    n = x.shape[0]
    idx = torch.cat([torch.arange(16), torch.arange(n - 16, n)])
    cls, rows = torch.tensor(classes)[idx // npc], idx % npc
    ref = gen.generate(emb, cls, rows, seed=0, out_dtype=torch.float16)
    assert torch.equal(x[idx], ref) and torch.equal(y[idx], cls)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("provider", ["synthesize_to", "generate_only"])
def test_shards_write(benchmark, bench, tmp_path, preset, provider):
    c, npc = _sizes(bench, benchmark, preset)
    benchmark.group = f"shards-write/{preset}/d{D}/fp16"
    bench.record_environment(benchmark, DEVICE)
    benchmark.extra_info.update(provider=provider, classes=c, per_class=npc,
                                shard_rows=SHARD_ROWS)
    gen, emb, classes = VMFGenerator(KAPPA, D), _emb(c), list(range(c))
    total = c * npc
    counter = itertools.count()

    def write_setup():
        i = next(counter)
        shutil.rmtree(tmp_path / f"w{i - 1}", ignore_errors=True)
        return (tmp_path / f"w{i}",), {}

    def write(out):
        synthesize_to(out, gen, emb, classes, npc, seed=0, shard_rows=SHARD_ROWS,
                      progress=False)

    def generate_only():
        buf = torch.empty(min(SHARD_ROWS, total), D, dtype=torch.float16)
        g = torch.arange(total)
        for lo in range(0, total, SHARD_ROWS):
            for a in range(lo, min(total, lo + SHARD_ROWS), 1 << 14):
                b = min(total, lo + SHARD_ROWS, a + (1 << 14))
                buf[a - lo : b - lo] = gen.generate(emb, g[a:b] // npc, g[a:b] % npc, seed=0,
                                                    out_dtype=torch.float16)

    # correctness first
    write(tmp_path / "check")
    _check_folder(tmp_path / "check", gen, emb, classes, npc)
    shutil.rmtree(tmp_path / "check")
    rounds = 1 if bench.smoke(benchmark) else bench.rounds_for(DEVICE)
    bench.wait_quiet(benchmark)
    with bench.CpuMonitor(benchmark):
        if provider == "synthesize_to":
            benchmark.pedantic(write, setup=write_setup, rounds=rounds, warmup_rounds=1,
                               iterations=1)
        else:
            benchmark.pedantic(generate_only, rounds=rounds, warmup_rounds=1, iterations=1)
    bench.record_throughput(benchmark, total)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    made = {}

    def get(c, npc):
        if (c, npc) not in made:
            out = tmp_path_factory.mktemp("shards-read") / f"{c}x{npc}"
            synthesize_to(out, VMFGenerator(KAPPA, D), _emb(c), range(c), npc, seed=0,
                          shard_rows=SHARD_ROWS, progress=False)
            made[(c, npc)] = out
        return made[(c, npc)]

    return get


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("provider", ["ordered", "shuffled", "load_file_loop"])
def test_shards_read(benchmark, bench, written, preset, provider):
    from safetensors.torch import load_file

    c, npc = _sizes(bench, benchmark, preset)
    out = written(c, npc)
    benchmark.group = f"shards-read/{preset}/d{D}/fp16"
    bench.record_environment(benchmark, DEVICE)
    benchmark.extra_info.update(provider=provider, classes=c, per_class=npc, batch=BATCH)
    total = c * npc
    ds = FeatureShards(out, batch_size=BATCH, shuffle=provider == "shuffled", seed=0)

    def read_dataset():
        rows = 0
        for x, _ in ds:
            rows += x.shape[0]
        return rows

    def read_files():
        rows = 0
        for f in ds.files:
            t = load_file(f)
            rows += t["features"].float().shape[0]
        return rows

    fn = read_files if provider == "load_file_loop" else read_dataset
    # correctness first: every row, and the ordered stream is the folder in global order
    assert fn() == total
    if provider == "ordered":
        x, _ = ds.load_all()
        assert torch.equal(torch.cat([b[0] for b in ds]), x)
    rounds = 1 if bench.smoke(benchmark) else bench.rounds_for(DEVICE)
    bench.wait_quiet(benchmark)
    with bench.CpuMonitor(benchmark):
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    bench.record_throughput(benchmark, total)
