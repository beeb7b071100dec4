"""Property-based tests of the command line (`dfzsl_fast.cli.main`, called in-process).

For every command, random and garbage options, bad ``--set`` values, output paths in the way,
truncated or garbage input files and a Ctrl-C at any write must give: exit code 0 with valid
output, or a non-zero code (2 usage, 1 other, 130 interrupted) with exactly one
``dfzsl-fast ...: error: ...`` line on stderr and no traceback; never a leftover temporary
file, and no output folder or file when the inputs were invalid.

Long work (the pipeline, ICIS training, sampling, extraction, the demo) is replaced by a stub
that raises KeyboardInterrupt where a test only needs to know that the command got past its
checks (exit code 130 = "every check passed and the work started").
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dfzsl_fast.cli import main  # noqa: E402
from dfzsl_fast.evaluation import validate_results  # noqa: E402
from dfzsl_fast.io import load_classifier, save_classifier, save_features  # noqa: E402
from dfzsl_fast.nn import CosineClassifier  # noqa: E402

pytestmark = pytest.mark.usefixtures("cwd_in_tmp", "one_thread")

ERROR_LINE = re.compile(r"^dfzsl-fast( [a-z-]+)?: error: \S")
COMMANDS = ["info", "configs", "sample", "evaluate", "inject", "run", "demo", "extract-features"]
_counter = itertools.count()


# ------------------------------------------------------------------------------------------
# inputs and helpers
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny valid inputs of every command (8 classes: 5 seen, 3 unseen; D = 16)."""
    d = tmp_path_factory.mktemp("cli_inputs")
    g = torch.Generator().manual_seed(0)
    names = [f"class{i}" for i in range(8)]
    text = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    y = torch.arange(8).repeat_interleave(3)
    x = 3 * text[y] + torch.randn(len(y), 16, generator=g)
    save_classifier(d / "ext.safetensors", CosineClassifier(text, 20.0), class_names=names,
                    n_base=5)
    save_classifier(d / "base.safetensors", CosineClassifier(text[:5], 20.0),
                    class_names=names[:5])
    save_features(d / "test.npz", x, y, class_names=names)
    save_features(d / "test.safetensors", x, y)
    torch.save({"features": x, "labels": y}, d / "test.pt")
    att = torch.randn(8, 6, generator=g)
    np.save(d / "att_base.npy", att[:5].numpy())
    np.save(d / "att_new.npy", att[5:].numpy())
    np.save(d / "W.npy", text[:5].numpy())
    np.save(d / "text.npy", text.numpy())
    (d / "names.txt").write_text("\n".join(names) + "\n")
    (d / "new.txt").write_text("\n".join(names[5:]) + "\n")
    (d / "names.json").write_text(json.dumps(names))
    cfg = {"name": "tiny", "simulator": {"epochs": 2, "nsample": 4, "num": 8},
           "generator": {"kind": "vmf", "syn_num": 8}, "classifier": {"epochs": 1}}
    (d / "cfg.json").write_text(json.dumps(cfg))
    (d / "images").mkdir()
    return d


def argv_for(cmd: str, f: Path, out: Path) -> list[str]:
    """A valid command line of ``cmd`` writing under ``out``."""
    return {
        "info": ["info"],
        "configs": ["configs", "AWA2"],
        "sample": ["sample", "--classes", "3", "--per-class", "20", "--dim", "8",
                   "--output", str(out / "s.pt")],
        "evaluate": ["evaluate", "--classifier", str(f / "ext.safetensors"), "--features",
                     str(f / "test.npz"), "--out", str(out / "eval"), "--no-plot"],
        "inject": ["inject", "--classifier", str(f / "base.safetensors"), "--base-descriptors",
                   str(f / "att_base.npy"), "--new-descriptors", str(f / "att_new.npy"),
                   "--new-names", str(f / "new.txt"), "--out", str(out / "ext.safetensors"),
                   "--epochs", "2", "--hidden", "8", "--no-progress"],
        "run": ["run", str(f / "cfg.json"), "--teacher", str(f / "W.npy"), "--class-names",
                str(f / "names.txt"), "--text-features", str(f / "text.npy"),
                "--test-features", str(f / "test.npz"), "--out", str(out / "run"),
                "--no-progress", "--no-plots"],
        "demo": ["demo", "--out", str(out / "demo"), "--no-progress", "--no-plots"],
        "extract-features": ["extract-features", str(f / "images"), "--random-weights",
                             "--out", str(out / "f.npz"), "--no-progress", "--num-workers", "0"],
    }[cmd]


#: The output path each valid command line writes (relative to the example folder).
OUTPUT = {"sample": "s.pt", "evaluate": "eval", "inject": "ext.safetensors", "run": "run",
          "demo": "demo", "extract-features": "f.npz"}


@pytest.fixture()
def no_work(monkeypatch):
    """Replace every long computation with a KeyboardInterrupt (exit code 130)."""
    import dfzsl_fast
    import dfzsl_fast.demo
    import dfzsl_fast.extract
    import dfzsl_fast.pipeline.dfzsl
    import dfzsl_fast.pipeline.icis

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dfzsl_fast, "sample_vmf", stop)
    monkeypatch.setattr(dfzsl_fast.demo, "run_demo", stop)
    monkeypatch.setattr(dfzsl_fast.extract, "extract_image_features", stop)
    monkeypatch.setattr(dfzsl_fast.pipeline.dfzsl.DFZSL, "fit", stop)
    monkeypatch.setattr(dfzsl_fast.pipeline.icis, "icis_extend", stop)


def fresh(tmp_path: Path) -> Path:
    d = tmp_path / f"ex{next(_counter)}"
    d.mkdir()
    return d


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # --help only
        assert exc.code == 0, exc
        rc = 0
    out, err = capsys.readouterr()
    return rc, out, err


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial") or ".tmp" in p.name]


def check(rc: int, err: str, root: Path) -> None:
    """The properties every command line must have."""
    assert "Traceback" not in err, err
    assert rc in (0, 1, 2, 130), rc
    lines = [ln for ln in err.splitlines() if ERROR_LINE.match(ln)]
    if rc == 0:
        assert not lines, err
    else:
        assert len(lines) == 1, err
        assert len([ln for ln in err.splitlines() if ": error:" in ln]) == 1, err
    assert not leftovers(root), leftovers(root)
    assert not logging.getLogger("dfzsl_fast").handlers  # in-process: logging restored


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------

_OPTIONS = ["--classes", "--per-class", "--dim", "--kappa", "--kappa-rule", "--dtype",
            "--device", "--backend", "--seed", "--chunk", "--output", "--overwrite",
            "--classifier", "--features", "--out", "--protocol", "--split", "--batch-size",
            "--no-plot", "--base-descriptors", "--new-descriptors", "--new-names", "--epochs",
            "--hidden", "--lr", "--loss", "--rescale", "--set", "--teacher", "--class-names",
            "--text-features", "--test-features", "--resume", "--dataset", "--weights",
            "--model", "--num-workers", "--precision", "--debugx", "-h", "--", "-"]
_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "3", "1e400", "nan", "inf", "-inf", "10**15",
                     "1000000000000000", "0x10", "cuda", "cuda:7", "mps", "cpu", "gzsl",
                     "bfloat16", "epochs=0", "x=1", "=", "", " ", "é", "\x00"]),
    st.integers(-(10**18), 10**18).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


@given(cmd=st.sampled_from(COMMANDS),
       tokens=st.lists(st.one_of(st.sampled_from(_OPTIONS), _VALUES, st.sampled_from(
           ["@IN", "@OUT", "@FILE"])), max_size=8))
def test_garbage_argv(inputs, tmp_path, capsys, no_work, cmd, tokens):
    root = fresh(tmp_path)
    sub = {"@IN": str(inputs / "names.txt"), "@OUT": str(root / "o"),
           "@FILE": str(inputs / "test.npz")}
    argv = [cmd, *(sub.get(t, t) for t in tokens)]
    rc, out, err = call(argv, capsys)
    check(rc, err, root)
    if "-h" in argv:
        return
    if rc == 2:  # a usage error writes nothing
        assert not any(root.iterdir())


_NUMERIC = {
    "sample": ["--classes", "--per-class", "--dim", "--kappa", "--seed", "--chunk"],
    "evaluate": ["--batch-size"],
    "inject": ["--epochs", "--hidden", "--batch-size", "--lr", "--seed"],
    "run": ["--seed"],
    "demo": ["--seed"],
    "extract-features": ["--batch-size", "--num-workers"],
}


@given(case=st.sampled_from([(c, o) for c, opts in _NUMERIC.items() for o in opts]),
       value=st.one_of(st.integers(-(10**20), 10**20).map(str), _VALUES))
def test_numeric_options_are_checked(inputs, tmp_path, capsys, no_work, case, value):
    cmd, option = case
    root = fresh(tmp_path)
    argv = argv_for(cmd, inputs, root) + [option, value]
    rc, out, err = call(argv, capsys)
    check(rc, err, root)
    assert rc in (0, 2, 130), err  # 130: the value was fine and the (stubbed) work started
    if rc == 2:
        assert option in err or "--" in err, err
        assert not (root / OUTPUT[cmd]).exists()


_RUN_KEYS = ["seed", "protocol", "simulator.epochs", "simulator.num", "generator.kind",
             "generator.syn_num", "classifier.epochs", "classifier.lr", "flpt.validate",
             "classifier", "nope", "generator.nope", "simulator.epochs.x", ""]
_ICIS_KEYS = ["hidden", "epochs", "batch_size", "lr", "loss", "early_stopping",
              "slope_threshold", "normalize_descriptors", "include_unseen", "rescale", "seed",
              "nope", "hidden.x", ""]
_JSON = st.one_of(
    st.sampled_from(["0", "-3", "2", "1e-3", "true", "null", '"vmf"', '"mse"', "[1]", "{}",
                     "nan", "1e400", "x", '"seen_norm"', "100000000000"]),
    st.text(max_size=8),
)


@given(cmd=st.sampled_from(["run", "inject"]), key_i=st.integers(0, 13), value=_JSON,
       eq=st.booleans())
def test_bad_set_values(inputs, tmp_path, capsys, no_work, cmd, key_i, value, eq):
    root = fresh(tmp_path)
    key = (_RUN_KEYS if cmd == "run" else _ICIS_KEYS)[key_i]
    item = f"{key}={value}" if eq else key
    rc, out, err = call(argv_for(cmd, inputs, root) + ["--set", item], capsys)
    check(rc, err, root)
    assert rc in (2, 130), err
    if rc == 2:
        assert "--set" in err
        assert not (root / OUTPUT[cmd]).exists()


def _in_the_way(kind: str, root: Path, name: str) -> Path:
    """An output path that cannot be used: `kind` says why."""
    if kind == "file":
        (root / name).write_text("keep")
        return root / name
    if kind == "nested_in_file":
        (root / "afile").write_text("keep")
        return root / "afile" / "sub" / name
    if kind == "unwritable":
        if os.geteuid() == 0:  # root writes anywhere but in /proc
            return Path("/proc/self/dfzsl_no") / name
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "sub" / name
    if kind == "folder_for_file":  # a folder for a file output; a used one for a folder
        (root / name).mkdir()
        (root / name / "metrics.json").write_text("keep")
        return root / name
    raise AssertionError(kind)


@given(cmd=st.sampled_from(["sample", "evaluate", "inject", "run", "demo",
                            "extract-features"]),
       kind=st.sampled_from(["file", "nested_in_file", "unwritable", "folder_for_file"]))
def test_output_paths_in_the_way(inputs, tmp_path, capsys, no_work, cmd, kind):
    root = fresh(tmp_path)
    argv = argv_for(cmd, inputs, root)
    target = root / OUTPUT[cmd]
    bad = _in_the_way(kind, root, OUTPUT[cmd])
    argv[argv.index(str(target))] = str(bad)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    try:
        rc, out, err = call(argv, capsys)
    finally:
        if (root / "locked").exists():
            (root / "locked").chmod(0o700)
    check(rc, err, root)
    assert rc == 2, (rc, err)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing created
    if kind != "unwritable":
        assert str(bad.name) in err or str(bad) in err or "afile" in err, err


_CORRUPTIBLE = {
    # (command, option whose file is replaced, file in `inputs`)
    "classifier": ("evaluate", "--classifier", "ext.safetensors"),
    "features_npz": ("evaluate", "--features", "test.npz"),
    "features_st": ("evaluate", "--features", "test.safetensors"),
    "features_pt": ("evaluate", "--features", "test.pt"),
    "base_head": ("inject", "--classifier", "base.safetensors"),
    "descriptors": ("inject", "--base-descriptors", "att_base.npy"),
    "new_names": ("inject", "--new-names", "new.txt"),
    "teacher": ("run", "--teacher", "W.npy"),
    "class_names": ("run", "--class-names", "names.json"),
    "text": ("run", "--text-features", "text.npy"),
    "test_features": ("run", "--test-features", "test.npz"),
    "config": ("run", None, "cfg.json"),
}


@given(which=st.sampled_from(sorted(_CORRUPTIBLE)), how=st.sampled_from(["truncate", "garbage"]),
       cut=st.floats(0.0, 0.99), junk=st.binary(max_size=64))
def test_corrupt_inputs(inputs, tmp_path, capsys, no_work, which, how, cut, junk):
    cmd, option, name = _CORRUPTIBLE[which]
    root = fresh(tmp_path)
    good = (inputs / name).read_bytes()
    bad = root / "in" / name
    bad.parent.mkdir()
    bad.write_bytes(good[: int(cut * len(good))] if how == "truncate" else junk)
    argv = argv_for(cmd, inputs, root)
    if option is None:  # the config is the positional argument
        argv[1] = str(bad)
    elif option in argv:
        argv[argv.index(option) + 1] = str(bad)
    else:
        argv += [option, str(bad)]
    rc, out, err = call(argv, capsys)
    check(rc, err, root)
    assert rc != 0
    if rc != 130:  # refused: no output
        assert not (root / OUTPUT[cmd]).exists(), err


def _interrupt(*a, **k):
    raise KeyboardInterrupt


@given(cmd=st.sampled_from(["sample", "evaluate", "inject", "run"]), at=st.integers(0, 3))
def test_ctrl_c_while_writing_leaves_no_partial_file(inputs, tmp_path, capsys, monkeypatch,
                                                     cmd, at):
    """Ctrl-C at the `at`-th fsync of an atomic write: exit 130, one line, no temp file."""
    root = fresh(tmp_path)
    calls = itertools.count()
    real = os.fsync

    def fsync(fd):
        if next(calls) == at:
            raise KeyboardInterrupt
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, out, err = call(argv_for(cmd, inputs, root), capsys)
    monkeypatch.setattr(os, "fsync", real)
    check(rc, err, root)
    assert rc in (0, 130), err
    if rc == 130:
        assert "interrupted" in err


@given(cmd=st.sampled_from(["sample", "evaluate", "inject", "info"]))
def test_valid_command_lines_succeed(inputs, tmp_path, capsys, cmd):
    """The fast commands, with valid inputs: exit 0 and valid outputs."""
    root = fresh(tmp_path)
    rc, out, err = call(argv_for(cmd, inputs, root), capsys)
    check(rc, err, root)
    assert rc == 0, err
    if cmd == "evaluate":
        validate_results(root / "eval")
    elif cmd == "inject":
        assert load_classifier(root / "ext.safetensors")[1]["unseen_classes"] == [5, 6, 7]
    elif cmd == "sample":
        assert torch.load(root / "s.pt", weights_only=True)["samples"].shape == (60, 8)


def test_debug_reraises(inputs, tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "evaluate", "--classifier", str(tmp_path / "none.safetensors"),
              "--features", str(inputs / "test.npz")])
    with pytest.raises(KeyboardInterrupt):
        import dfzsl_fast

        real = dfzsl_fast.sample_vmf
        dfzsl_fast.sample_vmf = _interrupt
        try:
            main(["--debug", "sample", "--classes", "2", "--per-class", "2", "--dim", "4"])
        finally:
            dfzsl_fast.sample_vmf = real
