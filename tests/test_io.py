"""dfzsl_fast.io: atomic writes, classifier files, feature files, descriptors and names."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dfzsl_fast import io as dio
from dfzsl_fast.nn import CosineClassifier

NAMES = ["cat", "dog", "owl", "eel", "fox"]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------


def test_atomic_write_text_bytes_callable(tmp_path):
    p = dio.atomic_write(tmp_path / "sub" / "a.txt", "hello\n")
    assert p.read_text() == "hello\n"
    dio.atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    dio.atomic_write(tmp_path / "t.pt", lambda q: torch.save({"x": torch.ones(2)}, q))
    assert torch.equal(torch.load(tmp_path / "t.pt")["x"], torch.ones(2))
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []
    # a plain file mode, not mkstemp's 0600
    assert (os.stat(p).st_mode & 0o777) == (0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_atomic_write_failure_keeps_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def bad(q):
        q.write_text("half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        dio.atomic_write(target, bad)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []
    with pytest.raises(KeyError):
        with dio.atomic_open(tmp_path / "new.csv") as fh:
            fh.write("a,b\n")
            raise KeyError("x")
    assert not (tmp_path / "new.csv").exists() and _leftovers(tmp_path) == []
    with pytest.raises(TypeError, match="writer"):
        dio.atomic_write(tmp_path / "x", 3)
    with pytest.raises(IsADirectoryError):
        dio.atomic_write(tmp_path, "x")


def test_atomic_path_keeps_suffix_for_suffix_sensitive_writers(tmp_path):
    with dio.atomic_path(tmp_path / "a.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, x=np.arange(3))
    with np.load(tmp_path / "a.npz") as z:
        assert z["x"].tolist() == [0, 1, 2]


def test_save_json_and_csv(tmp_path):
    p = dio.save_json(
        tmp_path / "m.json",
        {"a": float("nan"), "t": torch.tensor([1.5, 2.0]), "p": tmp_path, "n": np.int64(3)},
    )
    d = json.loads(p.read_text())
    assert d == {"a": None, "t": [1.5, 2.0], "p": str(tmp_path), "n": 3}
    with pytest.raises(TypeError, match=r"obj\['bad'\]"):
        dio.save_json(tmp_path / "x.json", {"bad": object()})
    dio.save_csv(tmp_path / "r.csv", [{"a": 1, "b": float("nan")}, {"a": 2}], ["a", "b"])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b", "1,", "2,"]


# ------------------------------------------------------------------------------------------
# classifiers
# ------------------------------------------------------------------------------------------


def test_cosine_classifier_roundtrip(tmp_path):
    head = CosineClassifier(torch.randn(5, 8), scale=16.0, learnable=False, eps=1e-8)
    p = dio.save_classifier(
        tmp_path / "head.safetensors", head, class_names=NAMES, n_base=3,
        metadata={"clip_model": "ViT-B-16", "config": {"lr": 1e-3}, "w": torch.arange(2)},
    )
    with safe_open(str(p), "pt") as f:
        header = f.metadata()
        assert sorted(f.keys()) == ["weight"]
    assert header["format"] == "dfzsl_fast.classifier/v1"
    raw = json.loads(header["dfzsl_fast"])
    assert raw["class_names"] == NAMES and raw["kind"] == "cosine"
    head2, meta = dio.load_classifier(p)
    assert isinstance(head2, CosineClassifier)
    assert torch.equal(head2.weight, head.weight)
    assert head2.scale == 16.0 and head2.eps == 1e-8 and head2.learnable is False
    assert meta["seen_classes"] == [0, 1, 2] and meta["unseen_classes"] == [3, 4]
    assert meta["n_base"] == 3
    prov = meta["provenance"]
    assert prov["clip_model"] == "ViT-B-16" and prov["config"] == {"lr": 1e-3}
    assert prov["w"] == [0, 1] and prov["torch"] == torch.__version__
    assert prov["created"].endswith("Z") and "dfzsl_fast" in prov
    x = torch.randn(7, 8)
    assert torch.equal(head2.predict(x), head.predict(x))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_classifier_roundtrip(tmp_path, bias):
    lin = nn.Linear(8, 5, bias=bias, dtype=torch.float64)
    p = dio.save_classifier(tmp_path / "lin.safetensors", lin, class_names=NAMES,
                            seen_classes=[4, 0, 2])
    with safe_open(str(p), "pt") as f:
        assert sorted(f.keys()) == (["bias", "weight"] if bias else ["weight"])
    lin2, meta = dio.load_classifier(p)
    assert isinstance(lin2, nn.Linear) and (lin2.bias is not None) == bias
    assert lin2.weight.dtype == torch.float64
    assert torch.equal(lin2.weight, lin.weight)
    if bias:
        assert torch.equal(lin2.bias, lin.bias)
    assert meta["seen_classes"] == [0, 2, 4] and meta["unseen_classes"] == [1, 3]
    assert meta["n_base"] is None and meta["kind"] == "linear"


def test_default_split_is_all_seen(tmp_path):
    head = CosineClassifier(torch.randn(5, 4), scale=10.0)
    _, meta = dio.load_classifier(
        dio.save_classifier(tmp_path / "h.safetensors", head, class_names=NAMES)
    )
    assert meta["seen_classes"] == [0, 1, 2, 3, 4] and meta["unseen_classes"] == []


def test_save_classifier_errors(tmp_path):
    head = CosineClassifier(torch.randn(5, 4), scale=10.0)
    p = tmp_path / "h.safetensors"
    with pytest.raises(ValueError, match="class_names.*4 names.*5 classes"):
        dio.save_classifier(p, head, class_names=NAMES[:4])
    with pytest.raises(TypeError, match="head"):
        dio.save_classifier(p, nn.Conv1d(1, 1, 1), class_names=NAMES)
    with pytest.raises(TypeError, match=r"class_names`\[1\]"):
        dio.save_classifier(p, head, class_names=["a", 1, "c", "d", "e"])
    with pytest.raises(ValueError, match="seen_classes.*range"):
        dio.save_classifier(p, head, class_names=NAMES, seen_classes=[0, 5])
    with pytest.raises(ValueError, match="disagree"):
        dio.save_classifier(p, head, class_names=NAMES, seen_classes=[0, 2], n_base=2)
    bad = CosineClassifier(torch.randn(5, 4), scale=10.0)
    with torch.no_grad():
        bad.weight[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dio.save_classifier(p, bad, class_names=NAMES)
    assert not p.exists() and _leftovers(tmp_path) == []


def test_load_classifier_errors(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        dio.load_classifier(missing)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        dio.load_classifier(junk)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.randn(2, 3)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="format = 'pt'.*dfzsl_fast.classifier/v1"):
        dio.load_classifier(other)

    def handmade(name, weight, meta):
        q = tmp_path / name
        save_file({"weight": weight}, str(q),
                  metadata={"format": dio.CLASSIFIER_FORMAT, "dfzsl_fast": json.dumps(meta)})
        return q

    base = {"kind": "cosine", "scale": 10.0, "class_names": ["a", "b"]}
    with pytest.raises(ValueError, match="2 class names but `weight` has 3 rows"):
        dio.load_classifier(handmade("n.safetensors", torch.randn(3, 4), base))
    w = torch.randn(2, 4)
    w[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dio.load_classifier(handmade("nan.safetensors", w, base))
    with pytest.raises(ValueError, match="kind"):
        dio.load_classifier(handmade("k.safetensors", torch.randn(2, 4), {**base, "kind": "mlp"}))
    with pytest.raises(ValueError, match="overlap"):
        dio.load_classifier(handmade("o.safetensors", torch.randn(2, 4),
                                     {**base, "seen_classes": [0, 1], "unseen_classes": [1]}))


# ------------------------------------------------------------------------------------------
# feature files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
def test_features_roundtrip(tmp_path, suffix):
    x = torch.randn(6, 4) * 3
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    split = ["train", "test", "test", "train", "test", "test"]
    paths = ["cat/1.jpg", "dog/ä.png", "owl/x.jpg", "owl/y.jpg", "dog/z.jpg", "cat/2.jpg"]
    p = dio.save_features(tmp_path / f"f{suffix}", x, y, class_names=NAMES[:3], split=split,
                          paths=paths, metadata={"model": "tiny", "d": 4,
                                                       "torch": torch.__version__})
    assert _leftovers(tmp_path) == []
    ff = dio.load_features(p)
    assert ff.features.dtype == torch.float32 and torch.equal(ff.features, x)
    assert ff.labels.dtype == torch.int64 and torch.equal(ff.labels, y)
    assert ff.class_names == NAMES[:3] and ff.paths == paths
    assert ff.split_names == ["test", "train"]
    assert [ff.split_names[c] for c in ff.split.tolist()] == split
    assert ff.metadata == {"model": "tiny", "d": 4, "torch": str(torch.__version__)}
    assert type(ff.metadata["torch"]) is str and ff.path == p
    assert len(ff) == 6 and ff.dim == 4
    test = ff.select("test")
    assert len(test) == 4 and test.paths == [paths[i] for i in (1, 2, 4, 5)]
    assert torch.equal(test.features, x[[1, 2, 4, 5]])
    # FeatureFile.save writes the same content
    again = dio.load_features(test.save(tmp_path / f"g{suffix}"))
    assert torch.equal(again.features, test.features) and again.split_names == ["test", "train"]


def test_minimal_user_files(tmp_path):
    """Hand-written files: only features and labels; (N, 1) labels; float64 features; codes."""
    np.savez(tmp_path / "a.npz", features=np.random.randn(3, 2), labels=np.array([[0], [1], [1]]))
    ff = dio.load_features(tmp_path / "a.npz")
    assert ff.features.dtype == torch.float32 and ff.labels.tolist() == [0, 1, 1]
    assert ff.class_names is None and ff.split is None and ff.metadata == {}
    torch.save({"features": torch.randn(2, 3), "labels": torch.tensor([1.0, 0.0]),
                "split": torch.tensor([1, 0]), "split_names": ["a", "b"]}, tmp_path / "b.pt")
    ff = dio.load_features(tmp_path / "b.pt")
    assert ff.labels.tolist() == [1, 0] and ff.select("b").labels.tolist() == [1]
    with pytest.raises(ValueError, match="unknown split"):
        ff.select("c")


def test_load_features_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature file"):
        dio.load_features(tmp_path / "x.npz")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported feature file type '.csv'"):
        dio.load_features(tmp_path / "x.csv")
    np.savez(tmp_path / "nolab.npz", features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing the `labels`"):
        dio.load_features(tmp_path / "nolab.npz")
    f = np.zeros((3, 2))
    f[1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", features=f, labels=np.arange(3))
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        dio.load_features(tmp_path / "nan.npz")
    np.savez(tmp_path / "n.npz", features=np.zeros((3, 2)), labels=np.arange(2))
    with pytest.raises(ValueError, match="3 rows but `labels` has 2"):
        dio.load_features(tmp_path / "n.npz")
    np.savez(tmp_path / "c.npz", features=np.zeros((2, 2)), labels=np.array([0, 3]),
             class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="label 3 but only 2 `class_names`"):
        dio.load_features(tmp_path / "c.npz")
    np.savez(tmp_path / "neg.npz", features=np.zeros((2, 2)), labels=np.array([0, -1]))
    with pytest.raises(ValueError, match="0-based"):
        dio.load_features(tmp_path / "neg.npz")
    torch.save([1, 2], tmp_path / "l.pt")
    with pytest.raises(ValueError, match="expected a dict"):
        dio.load_features(tmp_path / "l.pt")
    with pytest.raises(ValueError, match="unsupported"):
        dio.save_features(tmp_path / "f.h5", torch.zeros(1, 2), [0])
    with pytest.raises(ValueError, match="`split` must be"):
        dio.save_features(tmp_path / "f.npz", torch.zeros(2, 2), [0, 1], split=["a"])
    assert not (tmp_path / "f.npz").exists()


# ------------------------------------------------------------------------------------------
# descriptors and names
# ------------------------------------------------------------------------------------------


def test_descriptors_and_names(tmp_path):
    a = np.random.rand(3, 5).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    t, names = dio.load_descriptors(tmp_path / "a.npy")
    assert t.dtype == torch.float32 and t.shape == (3, 5) and names is None
    np.savez(tmp_path / "a.npz", descriptors=a, names=np.array(["x", "y", "z"]))
    t, names = dio.load_descriptors(tmp_path / "a.npz")
    assert names == ["x", "y", "z"]
    torch.save({"descriptors": torch.tensor(a), "names": ["x", "y", "z"]}, tmp_path / "a.pt")
    assert dio.load_descriptors(tmp_path / "a.pt")[1] == ["x", "y", "z"]
    torch.save(torch.tensor(a), tmp_path / "t.pt")
    assert torch.allclose(dio.load_descriptors(tmp_path / "t.pt")[0], t)
    save_file({"descriptors": torch.tensor(a)}, str(tmp_path / "a.safetensors"))
    assert dio.load_descriptors(tmp_path / "a.safetensors")[0].shape == (3, 5)
    np.savez(tmp_path / "two.npz", p=a, q=a)
    with pytest.raises(ValueError, match="several entries"):
        dio.load_descriptors(tmp_path / "two.npz")
    assert dio.load_descriptors(tmp_path / "two.npz", key="q")[0].shape == (3, 5)
    np.save(tmp_path / "v.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"\(C, A\)"):
        dio.load_descriptors(tmp_path / "v.npy")
    with pytest.raises(FileNotFoundError, match="descriptor file"):
        dio.load_descriptors(tmp_path / "none.npy")

    (tmp_path / "n.txt").write_text("  red fox\n\nblue whale \n")
    assert dio.load_names(tmp_path / "n.txt") == ["red fox", "blue whale"]
    (tmp_path / "n.json").write_text(json.dumps(["a", "b"]))
    assert dio.load_names(tmp_path / "n.json") == ["a", "b"]
    (tmp_path / "d.txt").write_text("a\na\n")
    with pytest.raises(ValueError, match="duplicate"):
        dio.load_names(tmp_path / "d.txt")
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        dio.load_names(tmp_path / "bad.json")
