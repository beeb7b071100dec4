"""`dfzsl-fast evaluate` and `dfzsl-fast inject`, run in-process through dfzsl_fast.cli.main;
`dfzsl_fast.evaluation` (the one metrics schema) directly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from dfzsl_fast import cli
from dfzsl_fast.evaluation import evaluate_head, validate_results
from dfzsl_fast.io import load_classifier, save_classifier, save_features
from dfzsl_fast.metrics import base_to_new_scores, gzsl_scores, per_class_accuracy
from dfzsl_fast.nn import CosineClassifier

pytestmark = pytest.mark.usefixtures("cwd_in_tmp")

NAMES = ["ant", "bee", "cow", "dog", "elk", "fly"]
SEEN, UNSEEN = [0, 1, 2, 3], [4, 5]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (OpenMP spin-waits cost ~100x on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def files(tmp_path):
    """A 6-class cosine head (4 seen, 2 unseen) and noisy test features of all 6 classes."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 16, generator=g)
    head = CosineClassifier(w, scale=20.0)
    y = torch.arange(6).repeat_interleave(torch.tensor([5, 6, 4, 7, 5, 6]))
    x = 3.0 * w[y] + 4.0 * torch.randn(len(y), 16, generator=g)  # some mistakes
    clf = save_classifier(tmp_path / "clf.safetensors", head, class_names=NAMES,
                          seen_classes=SEEN, metadata={"clip_model": "tiny"})
    feats = save_features(tmp_path / "test.npz", x, y, class_names=NAMES,
                          split=["test"] * (len(y) - 3) + ["val"] * 3)
    return tmp_path, head, x, y, clf, feats


def _run(*argv):
    return cli.main([str(a) for a in argv])


def test_evaluate_gzsl_matches_metrics(files, capsys):
    tmp, head, x, y, clf, feats = files
    out = tmp / "eval"
    assert _run("evaluate", "--classifier", clf, "--features", feats, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "GZSL   S =" in printed and "wrote" in printed
    m = json.loads((out / "metrics.json").read_text())
    ref = gzsl_scores(head.predict(x), y, SEEN, UNSEEN)
    for k in ("S", "U", "H", "n_seen", "n_unseen", "absent_seen", "absent_unseen"):
        assert m["gzsl"][k] == ref[k], k
    assert 0 < ref["H"] < 1  # a non-trivial case
    assert m["protocol"] == "gzsl" and m["base2new"] is None and m["closed_set"] is None
    assert m["n_test"] == len(y) and m["n_classes"] == 6
    assert m["schema"] == "dfzsl_fast.metrics/v1" and m["command"] == "evaluate"
    assert m["inputs"]["classifier"] == str(clf)
    assert m["provenance"]["classifier"]["clip_model"] == "tiny"
    assert validate_results(out) == m
    with open(out / "per_class.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    acc, cnt = per_class_accuracy(head.predict(x), y, classes=range(6), num_classes=6)
    assert [r["class_name"] for r in rows] == NAMES
    assert [r["group"] for r in rows] == ["seen"] * 4 + ["unseen"] * 2
    assert [int(r["n_test"]) for r in rows] == cnt.tolist()
    np.testing.assert_allclose([float(r["accuracy"]) for r in rows], acc.numpy(), rtol=1e-12)
    png = out / "plots" / "per_class_accuracy.png"
    if png.exists():  # matplotlib installed
        assert png.stat().st_size > 1000
    # a second run refuses to overwrite, --overwrite replaces
    assert _run("evaluate", "--classifier", clf, "--features", feats, "--out", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _run("evaluate", "--classifier", clf, "--features", feats, "--out", out,
                "--overwrite", "--no-plot") == 0


def test_evaluate_base2new_and_split(files, capsys):
    tmp, head, x, y, clf, feats = files
    out = tmp / "b2n"
    assert _run("evaluate", "--classifier", clf, "--features", feats, "--out", out,
                "--protocol", "base2new", "--split", "test") == 0
    printed = capsys.readouterr().out
    assert "B2N    B =" in printed and "GZSL" in printed
    m = json.loads((out / "metrics.json").read_text())
    xs, ys = x[:-3], y[:-3]  # the "test" rows
    ref = base_to_new_scores(head(xs), ys, SEEN, UNSEEN)
    for k in ("B", "N", "HM", "n_base", "n_new"):
        assert m["base2new"][k] == pytest.approx(ref[k], abs=1e-12), k
    assert m["gzsl"]["H"] == gzsl_scores(head.predict(xs), ys, SEEN, UNSEEN)["H"]
    with open(out / "per_class.csv", newline="") as fh:
        assert "accuracy_within_block" in next(csv.reader(fh))
    validate_results(out)


def test_evaluate_linear_head_and_name_matching(tmp_path):
    lin = nn.Linear(8, 4)
    names = ["a", "b", "c", "d"]
    clf = save_classifier(tmp_path / "lin.safetensors", lin, class_names=names, n_base=2)
    x = torch.randn(40, 8)
    with torch.no_grad():
        pred = lin(x).argmax(1)
    y = torch.arange(4).repeat(10)
    # the feature file lists the classes in another order: labels are matched by name
    perm = [2, 0, 3, 1]
    feats = save_features(tmp_path / "f.pt", x, torch.tensor([perm.index(int(v)) for v in y]),
                          class_names=[names[i] for i in perm])
    assert _run("evaluate", "--classifier", clf, "--features", feats, "--out", tmp_path / "o",
                "--no-plot") == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    ref = gzsl_scores(pred, y, [0, 1], [2, 3])
    assert (m["gzsl"]["S"], m["gzsl"]["U"], m["gzsl"]["H"]) == (ref["S"], ref["U"], ref["H"])


def test_evaluate_head_any_module():
    """evaluate_head also takes other heads with a (C, D) weight and (N, C) logits."""

    class Shifted(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.weight = nn.Parameter(w)

        def forward(self, x):
            return (x + 0.3) @ self.weight.T

    g = torch.Generator().manual_seed(2)
    head = Shifted(torch.randn(6, 5, generator=g))
    y = torch.arange(6).repeat(5)
    x = head.weight.detach()[y] + torch.randn(30, 5, generator=g)
    m, per_class = evaluate_head(head, x, y, SEEN, UNSEEN, protocol="base2new", batch_size=7)
    with torch.no_grad():
        logits = head(x)
    ref = gzsl_scores(logits, y, SEEN, UNSEEN)
    assert (m["gzsl"]["S"], m["gzsl"]["U"], m["gzsl"]["H"]) == (ref["S"], ref["U"], ref["H"])
    ref = base_to_new_scores(logits, y, SEEN, UNSEEN)
    assert (m["base2new"]["B"], m["base2new"]["N"]) == (ref["B"], ref["N"])
    assert per_class["accuracy"].shape == (6,) and per_class["count"].sum() == 30


def test_evaluate_errors(files, capsys):
    tmp, _, _, _, clf, feats = files
    assert _run("evaluate", "--classifier", tmp / "missing.safetensors", "--features", feats) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfzsl-fast evaluate: error:") and "missing.safetensors" in err
    save_features(tmp / "wide.npz", torch.randn(3, 5), [0, 1, 4])
    assert _run("evaluate", "--classifier", clf, "--features", tmp / "wide.npz") == 1
    assert "width D = 16" in capsys.readouterr().err
    save_features(tmp / "other.npz", torch.randn(2, 16), [0, 1], class_names=["ant", "yak"])
    assert _run("evaluate", "--classifier", clf, "--features", tmp / "other.npz") == 1
    assert "yak" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):  # --debug shows the real exception
        _run("--debug", "evaluate", "--classifier", tmp / "nope", "--features", feats)


def test_inject_then_evaluate(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    n_base, n_new, d_a = 6, 2, 12
    att = torch.randn(n_base + n_new, d_a, generator=g)
    proj = torch.randn(d_a, 16, generator=g)
    w = att @ proj  # class rows a linear function of the descriptors: ICIS can learn it
    base = CosineClassifier(w[:n_base], scale=20.0)
    names = [f"class{i}" for i in range(n_base + n_new)]
    clf = save_classifier(tmp_path / "base.safetensors", base, class_names=names[:n_base])
    np.save(tmp_path / "att_base.npy", att[:n_base].numpy())
    torch.save({"descriptors": att[n_base:], "names": names[n_base:]}, tmp_path / "att_new.pt")
    out = tmp_path / "ext.safetensors"
    rc = _run("inject", "--classifier", clf, "--base-descriptors", tmp_path / "att_base.npy",
              "--new-descriptors", tmp_path / "att_new.pt", "--out", out, "--epochs", "30",
              "--hidden", "64", "--batch-size", "4", "--lr", "1e-3", "--no-progress")
    assert rc == 0, capsys.readouterr().err
    assert "saved 8 classes" in capsys.readouterr().out
    ext, meta = load_classifier(out)
    assert isinstance(ext, CosineClassifier) and ext.num_classes == 8 and ext.scale == 20.0
    assert torch.equal(ext.weight[:n_base], base.weight)  # base rows bit for bit
    assert meta["class_names"] == names
    assert meta["seen_classes"] == list(range(6)) and meta["unseen_classes"] == [6, 7]
    icis = meta["provenance"]["icis"]
    assert icis["epochs"] == 30 and icis["hidden"] == 64 and icis["epochs_run"] >= 1
    assert len(meta["provenance"]["base_classifier"]["sha256"]) == 64

    # names given inline override; an existing --out is refused
    rc = _run("inject", "--classifier", clf, "--base-descriptors", tmp_path / "att_base.npy",
              "--new-descriptors", tmp_path / "att_new.pt", "--new-names", "yak", "zebu",
              "--out", out, "--epochs", "1", "--hidden", "8", "--no-progress")
    assert rc == 2 and "exists" in capsys.readouterr().err
    out2 = tmp_path / "ext2.safetensors"
    rc = _run("inject", "--classifier", clf, "--base-descriptors", tmp_path / "att_base.npy",
              "--new-descriptors", tmp_path / "att_new.pt", "--new-names", "yak", "zebu",
              "--out", out2, "--epochs", "1", "--hidden", "8", "--no-progress")
    assert rc == 0 and load_classifier(out2)[1]["class_names"][-2:] == ["yak", "zebu"]
    capsys.readouterr()

    # a second injection on a head that already has unseen classes
    np.save(tmp_path / "att_all.npy", att.numpy())
    np.save(tmp_path / "att_more.npy", torch.randn(1, d_a, generator=g).numpy())
    (tmp_path / "more.txt").write_text("newcomer\n")
    out3 = tmp_path / "ext3.safetensors"
    rc = _run("inject", "--classifier", out, "--base-descriptors", tmp_path / "att_all.npy",
              "--new-descriptors", tmp_path / "att_more.npy", "--new-names", tmp_path / "more.txt",
              "--out", out3, "--epochs", "2", "--hidden", "8", "--no-progress")
    assert rc == 0, capsys.readouterr().err
    ext3, meta3 = load_classifier(out3)
    assert ext3.num_classes == 9 and meta3["unseen_classes"] == [6, 7, 8]
    assert torch.equal(ext3.weight[:8], ext.weight)

    # the extended head evaluates
    y = torch.arange(8).repeat_interleave(3)
    x = w[y] + 0.1 * torch.randn(len(y), 16, generator=g)
    feats = save_features(tmp_path / "t.safetensors", x, y)
    assert _run("evaluate", "--classifier", out, "--features", feats) == 0
    assert "GZSL" in capsys.readouterr().out

    # mismatches are reported
    np.save(tmp_path / "short.npy", att[:3].numpy())
    rc = _run("inject", "--classifier", clf, "--base-descriptors", tmp_path / "short.npy",
              "--new-descriptors", tmp_path / "att_new.pt", "--out", tmp_path / "z.safetensors")
    assert rc == 1 and "3 rows but the classifier has 6" in capsys.readouterr().err
    np.save(tmp_path / "nonames.npy", att[n_base:].numpy())
    rc = _run("inject", "--classifier", clf, "--base-descriptors", tmp_path / "att_base.npy",
              "--new-descriptors", tmp_path / "nonames.npy", "--out", tmp_path / "z.safetensors")
    assert rc == 2 and "--new-names" in capsys.readouterr().err


def test_linear_head_inject(tmp_path):
    lin = nn.Linear(5, 3)
    clf = save_classifier(tmp_path / "lin.safetensors", lin, class_names=["a", "b", "c"])
    np.save(tmp_path / "a.npy", np.random.rand(3, 4))
    np.save(tmp_path / "n.npy", np.random.rand(2, 4))
    out = tmp_path / "o.safetensors"
    assert _run("inject", "--classifier", clf, "--base-descriptors", tmp_path / "a.npy",
                "--new-descriptors", tmp_path / "n.npy", "--new-names", "d", "e", "--out", out,
                "--epochs", "2", "--hidden", "8", "--rescale", "seen_norm", "--no-progress") == 0
    ext, meta = load_classifier(out)
    assert isinstance(ext, nn.Linear) and ext.out_features == 5 and ext.bias is not None
    assert torch.equal(ext.weight[:3], lin.weight) and torch.equal(ext.bias[:3], lin.bias)
    rows = torch.cat([ext.weight, ext.bias[:, None]], 1).detach()
    old = torch.cat([lin.weight, lin.bias[:, None]], 1).detach()
    torch.testing.assert_close(rows[3:].norm(dim=1), old.norm(dim=1).mean().expand(2))


@pytest.mark.parametrize("cmd", ["info", "sample", "evaluate", "inject", "extract-features"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"dfzsl-fast {cmd}" in text
    if cmd not in ("info",):
        assert "example:" in text


def test_inject_settings_via_set_and_bad_values(tmp_path, capsys):
    """`inject --set KEY=VALUE` on ICISConfig; bad values fail before any output exists."""
    lin = nn.Linear(5, 3)
    clf = save_classifier(tmp_path / "lin.safetensors", lin, class_names=["a", "b", "c"])
    np.save(tmp_path / "a.npy", np.random.rand(3, 4))
    np.save(tmp_path / "n.npy", np.random.rand(2, 4))
    base = ["inject", "--classifier", clf, "--base-descriptors", tmp_path / "a.npy",
            "--new-descriptors", tmp_path / "n.npy", "--new-names", "d", "e", "--no-progress"]
    out = tmp_path / "sub" / "o.safetensors"
    assert _run(*base, "--out", out, "--epochs", "5", "--set", "hidden=8",
                "--set", "epochs=2", "--set", "early_stopping=false") == 0
    icis = load_classifier(out)[1]["provenance"]["icis"]
    assert (icis["hidden"], icis["epochs"], icis["early_stopping"]) == (8, 2, False)
    assert icis["epochs_run"] == 2
    capsys.readouterr()
    for bad, words in ((["--epochs", "0"], "--epochs"), (["--set", "epochs=0"], "epochs"),
                       (["--set", "hidden=x"], "hidden"), (["--set", "hiden=3"], "hiden"),
                       (["--set", "hidden"], "KEY=VALUE"), (["--lr", "nan"], "--lr"),
                       (["--set", "hidden=100000000"], "hidden")):
        out2 = tmp_path / "new" / "o.safetensors"
        assert _run(*base, "--out", out2, *bad) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dfzsl-fast inject: error:"), err
        assert words in err and not (tmp_path / "new").exists()


def test_evaluate_closed_set_head(tmp_path):
    lin = nn.Linear(4, 3)
    clf = save_classifier(tmp_path / "c.safetensors", lin, class_names=["a", "b", "c"])
    feats = save_features(tmp_path / "f.npz", torch.randn(9, 4), [0, 1, 2] * 3)
    assert _run("evaluate", "--classifier", clf, "--features", feats, "--out", tmp_path / "e",
                "--no-plot") == 0
    m = validate_results(tmp_path / "e")
    assert m["gzsl"] is None and 0 <= m["closed_set"]["accuracy"] <= 1


def test_validate_metrics_rejects_schema_violations(files):
    """The validator shared by run, demo and evaluate catches a drifting writer."""
    import copy

    from dfzsl_fast.evaluation import build_metrics, validate_metrics

    _, head, x, y, _, _ = files
    scores, _ = evaluate_head(head, x, y, SEEN, UNSEEN)
    m = build_metrics("evaluate", scores, baselines={"zero_shot": scores})
    validate_metrics(m)
    breakages = [
        lambda d: d.update(schema="v0"),
        lambda d: d.pop("gzsl"),
        lambda d: d["gzsl"].update(S=1.5),
        lambda d: d["gzsl"].update(H=None),
        lambda d: d.update(closed_set={"accuracy": 0.5, "mean_per_class": 0.5}),
        lambda d: d.update(base2new={"B": 0.1, "N": 0.1, "HM": 0.1}),
        lambda d: d.update(n_test=-1),
        lambda d: d["baselines"]["zero_shot"].pop("accuracy"),
        lambda d: d.update(command="train"),
    ]
    for brk in breakages:
        bad = copy.deepcopy(m)
        brk(bad)
        with pytest.raises(ValueError, match="metrics"):
            validate_metrics(bad)


def test_icis_extend_takes_an_icis_config():
    from dfzsl_fast.config import ICISConfig
    from dfzsl_fast.pipeline.icis import icis_extend

    g = torch.Generator().manual_seed(3)
    head = CosineClassifier(torch.randn(4, 6, generator=g), 10.0)
    a_s, a_u = torch.randn(4, 5, generator=g), torch.randn(2, 5, generator=g)
    cfg = ICISConfig(hidden=8, epochs=3, batch_size=2, lr=1e-3, seed=1)
    a = icis_extend(head, a_s, a_u, cfg, progress=False)
    b = icis_extend(head, a_s, a_u, hidden=8, epochs=3, batch_size=2, lr=1e-3, seed=1,
                    progress=False)
    assert torch.equal(a.weight, b.weight) and a.weight.shape == (6, 6)
    with pytest.raises(TypeError, match="epochs"):
        icis_extend(head, a_s, a_u, cfg, epochs=2)
    with pytest.raises(ValueError, match="ICISConfig.hidden"):
        ICISConfig(hidden=0)
