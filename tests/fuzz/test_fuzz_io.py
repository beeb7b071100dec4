"""Property-based tests of the loaders and savers (dfzsl_fast.io).

Properties: a loader either returns valid data (finite float features, int64 labels in range,
distinct non-empty names, ...) or raises FileNotFoundError / ValueError whose message names the
file; a saver either writes a file that loads back equal or raises TypeError / ValueError naming
the argument; loading never runs code; an interrupted write leaves the old file and no temp file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import string
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dfzsl_fast import io as dio  # noqa: E402
from dfzsl_fast.nn import CosineClassifier  # noqa: E402

LOAD_ERRORS = (ValueError, FileNotFoundError)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=8,
)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16,
                          torch.int64, torch.int32, torch.uint8, torch.bool])


def _tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fz")


def _no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    assert not left, f"temporary files left behind: {left}"


def _valid_head(C: int = 3, D: int = 4) -> CosineClassifier:
    return CosineClassifier(torch.randn(C, D), 10.0)


# ------------------------------------------------------------------------------ classifiers
META_KEYS = ["kind", "num_classes", "in_features", "class_names", "seen_classes",
             "unseen_classes", "scale", "eps", "learnable", "has_bias", "provenance", "n_base"]


@given(key=st.sampled_from(META_KEYS), value=json_values)
def test_classifier_metadata_of_any_type(tmp_path_factory, key, value):
    from safetensors.torch import save_file

    d = _tmp(tmp_path_factory)
    p = dio.save_classifier(d / "h.safetensors", _valid_head(), class_names=["a", "b", "c"])
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        header, w = f.metadata(), f.get_tensor("weight")
    meta = json.loads(header["dfzsl_fast"])
    meta[key] = value
    header["dfzsl_fast"] = json.dumps(meta)
    save_file({"weight": w}, str(p), metadata=header)
    try:
        head, m = dio.load_classifier(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert isinstance(head, CosineClassifier)
    assert m["class_names"] == ["a", "b", "c"] and head.weight.shape == (3, 4)
    assert set(m["seen_classes"]) | set(m["unseen_classes"]) <= {0, 1, 2}
    assert torch.isfinite(torch.tensor(float(head.scale)))


@given(dtype=dtypes, shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
       fill=st.sampled_from([0.0, 1.0, float("nan"), float("inf"), 1e30]))
def test_classifier_weight_of_any_dtype_and_shape(tmp_path_factory, dtype, shape, fill):
    from safetensors.torch import save_file

    d = _tmp(tmp_path_factory)
    p = dio.save_classifier(d / "h.safetensors", _valid_head(), class_names=["a", "b", "c"])
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        header = f.metadata()
    w = torch.full(shape, fill).to(dtype) if dtype.is_floating_point else torch.ones(shape,
                                                                                 dtype=dtype)
    save_file({"weight": w.contiguous()}, str(p), metadata=header)
    try:
        head, _ = dio.load_classifier(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert head.weight.shape == (3, 4)
    assert bool(torch.isfinite(head.weight).all())


@given(cut=st.floats(0.0, 0.999))
def test_truncated_classifier(tmp_path_factory, cut):
    d = _tmp(tmp_path_factory)
    p = dio.save_classifier(d / "h.safetensors", _valid_head(), class_names=["a", "b", "c"])
    data = p.read_bytes()
    p.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(LOAD_ERRORS) as exc:
        dio.load_classifier(p)
    assert str(p) in str(exc.value)


@given(names=st.lists(st.text(max_size=4), min_size=0, max_size=5), C=st.integers(0, 4),
       scale=st.floats(allow_nan=True, allow_infinity=True))
def test_save_classifier_arguments(tmp_path_factory, names, C, scale):
    d = _tmp(tmp_path_factory)
    try:
        head = CosineClassifier(torch.randn(C, 3), scale)
    except (TypeError, ValueError):
        return
    try:
        p = dio.save_classifier(d / "h.safetensors", head, class_names=names)
    except (TypeError, ValueError) as exc:
        assert "class_names" in str(exc) or "head" in str(exc)
        assert not (d / "h.safetensors").exists()
        _no_temp_files(d)
        return
    back, meta = dio.load_classifier(p)
    assert meta["class_names"] == names and torch.equal(back.weight, head.weight)


# ------------------------------------------------------------------------------ features
FEATURE_KEYS = ["features", "labels", "class_names", "split", "split_names", "paths", "metadata"]
arrays = st.one_of(
    st.builds(lambda n, d, v: np.full((n, d), v, np.float32), st.integers(0, 3),
              st.integers(0, 3), st.sampled_from([0.0, 1.5, np.nan, np.inf])),
    st.builds(lambda n, v: np.full((n,), v, np.int64), st.integers(0, 3),
              st.integers(-(2**62), 2**62)),
    st.builds(lambda n, v: np.full((n,), v, np.float64), st.integers(0, 3),
              st.sampled_from([0.0, 0.5, -1.0, 2.0, np.nan])),
    st.builds(lambda xs: np.array(xs, dtype=str), st.lists(st.text(max_size=3), max_size=3)),
    st.builds(lambda b: np.array(b), st.booleans()),
    st.just(np.zeros((2, 2, 2), np.float32)),
    st.just(np.array([1 + 2j, 3j])),
)


def _valid_feature_dict() -> dict:
    return {"features": np.random.randn(3, 2).astype(np.float32),
            "labels": np.array([0, 1, 1]), "class_names": np.array(["a", "b"]),
            "split": np.array([0, 1, 0]), "split_names": np.array(["train", "test"])}


def _check_feature_file(ff, p: Path) -> None:
    assert ff.features.dtype == torch.float32 and ff.features.dim() == 2
    assert bool(torch.isfinite(ff.features).all())
    assert ff.labels.dtype == torch.int64 and ff.labels.shape == (ff.features.shape[0],)
    assert int(ff.labels.min()) >= 0
    if ff.class_names is not None:
        assert int(ff.labels.max()) < len(ff.class_names)
        assert all(isinstance(n, str) and n.strip() for n in ff.class_names)
        assert len(set(ff.class_names)) == len(ff.class_names)
    if ff.split is not None:
        assert ff.split.shape == ff.labels.shape and int(ff.split.max()) < len(ff.split_names)
    assert isinstance(ff.metadata, dict)


@given(key=st.sampled_from(FEATURE_KEYS), value=arrays)
def test_npz_entries_of_any_type(tmp_path_factory, key, value):
    d = _tmp(tmp_path_factory)
    entries = _valid_feature_dict()
    entries[key] = value
    p = d / "f.npz"
    np.savez(p, **entries)
    try:
        ff = dio.load_features(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    _check_feature_file(ff, p)


@given(key=st.sampled_from(FEATURE_KEYS), value=st.one_of(json_values, arrays.map(torch.as_tensor)
                                                           if False else json_values))
def test_pt_entries_of_any_type(tmp_path_factory, key, value):
    d = _tmp(tmp_path_factory)
    entries = {k: torch.as_tensor(v) if v.dtype.kind != "U" else v.tolist()
               for k, v in _valid_feature_dict().items()}
    entries[key] = value
    p = d / "f.pt"
    torch.save(entries, p)
    try:
        ff = dio.load_features(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    _check_feature_file(ff, p)


@given(key=st.sampled_from(["class_names", "split_names", "metadata"]), value=json_values)
def test_safetensors_feature_header_of_any_type(tmp_path_factory, key, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    d = _tmp(tmp_path_factory)
    p = dio.save_features(d / "f.safetensors", torch.randn(3, 2), [0, 1, 1],
                          class_names=["a", "b"], split=["train", "test", "train"],
                          paths=["x", "y", "z"])
    with safe_open(str(p), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(header["dfzsl_fast"])
    info[key] = value
    header["dfzsl_fast"] = json.dumps(info)
    save_file(tensors, str(p), metadata=header)
    try:
        ff = dio.load_features(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    _check_feature_file(ff, p)


@given(offsets=st.lists(st.integers(-5, 50), min_size=0, max_size=5),
       blob=st.binary(max_size=20))
def test_safetensors_paths_tensors(tmp_path_factory, offsets, blob):
    from safetensors import safe_open
    from safetensors.torch import save_file

    d = _tmp(tmp_path_factory)
    p = dio.save_features(d / "f.safetensors", torch.randn(3, 2), [0, 1, 1],
                          paths=["x", "y", "z"])
    with safe_open(str(p), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["paths_offsets"] = torch.tensor(offsets, dtype=torch.int64)
    tensors["paths_utf8"] = torch.tensor(list(blob), dtype=torch.uint8)
    save_file(tensors, str(p), metadata=header)
    try:
        ff = dio.load_features(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert len(ff.paths) == 3


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
@given(cut=st.floats(0.0, 0.999))
def test_truncated_feature_file(tmp_path_factory, suffix, cut):
    d = _tmp(tmp_path_factory)
    p = dio.save_features(d / f"f{suffix}", torch.randn(4, 3), [0, 1, 2, 0],
                          class_names=["a", "b", "c"])
    data = p.read_bytes()
    p.write_bytes(data[: int(cut * len(data))])
    try:
        ff = dio.load_features(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    _check_feature_file(ff, p)  # a zip can survive losing only its tail comment


@given(n=st.integers(0, 4), D=st.integers(0, 3),
       fill=st.sampled_from([0.0, 2.0, float("nan"), float("-inf")]),
       labels=st.lists(st.one_of(st.integers(-3, 5), st.floats(-1, 5)), max_size=5),
       names=st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=4)))
def test_save_features_arguments(tmp_path_factory, n, D, fill, labels, names):
    d = _tmp(tmp_path_factory)
    p = d / "f.npz"
    try:
        dio.save_features(p, torch.full((n, D), fill), labels, class_names=names)
    except (TypeError, ValueError) as exc:
        assert any(k in str(exc) for k in ("features", "labels", "class_names"))
        assert not p.exists()
        _no_temp_files(d)
        return
    _check_feature_file(dio.load_features(p), p)


# ------------------------------------------------------------------------------ names, descriptors
@given(text=st.text(alphabet=string.printable + "é\u00a0\u2028", max_size=40))
def test_names_file_of_any_text(tmp_path_factory, text):
    d = _tmp(tmp_path_factory)
    p = d / "names.txt"
    p.write_text(text, encoding="utf-8")
    try:
        names = dio.load_names(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert names and all(isinstance(n, str) and n.strip() == n and n for n in names)
    assert len(set(names)) == len(names)


@given(value=json_values)
def test_names_json_of_any_value(tmp_path_factory, value):
    d = _tmp(tmp_path_factory)
    p = d / "names.json"
    p.write_text(json.dumps(value), encoding="utf-8")
    try:
        names = dio.load_names(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert names and all(isinstance(n, str) and n.strip() == n and n for n in names)
    assert len(set(names)) == len(names)


def test_names_case_distinct_are_kept_and_duplicates_named(tmp_path):
    p = tmp_path / "n.txt"
    p.write_text("Cardigan\ncardigan\n")
    assert dio.load_names(p) == ["Cardigan", "cardigan"]
    p.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"\[0\].*\[2\]"):
        dio.load_names(p)
    q = tmp_path / "n.json"
    q.write_text(json.dumps(["a", " ", "b"]))
    with pytest.raises(ValueError, match=r"\[1\]"):
        dio.load_names(q)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors"])
@given(value=arrays)
def test_descriptors_of_any_array(tmp_path_factory, suffix, value):
    from safetensors.torch import save_file

    d = _tmp(tmp_path_factory)
    p = d / f"desc{suffix}"
    if suffix == ".npy":
        np.save(p, value)
    elif suffix == ".npz":
        np.savez(p, descriptors=value)
    elif suffix == ".pt":
        torch.save(value.tolist() if value.dtype.kind in "UO" else torch.as_tensor(value), p)
    else:
        assume(value.dtype.kind not in "UOc")
        save_file({"descriptors": torch.as_tensor(value).contiguous()}, str(p))
    try:
        t, names = dio.load_descriptors(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert t.dtype == torch.float32 and t.dim() == 2 and t.shape[0] >= 1 and t.shape[1] >= 1
    assert bool(torch.isfinite(t).all())


# ------------------------------------------------------------------------------ safety
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".npy"])
def test_loading_never_runs_code(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / f"evil{suffix}"
    if suffix == ".pt":
        p.write_bytes(pickle.dumps({"features": _Evil(), "labels": [0]}))
        loaders = [dio.load_features, dio.load_descriptors]
    elif suffix == ".npz":
        np.savez(p, features=np.array([_Evil()], dtype=object), labels=np.array([0]))
        loaders = [dio.load_features, dio.load_descriptors]
    else:
        np.save(p, np.array([_Evil()], dtype=object), allow_pickle=True)
        loaders = [dio.load_descriptors]
    for load in loaders:
        with pytest.raises(ValueError) as exc:
            load(p)
        assert str(p) in str(exc.value)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("what", ["json", "classifier", "features", "csv"])
def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch, what):
    target = {"json": "m.json", "classifier": "h.safetensors", "features": "f.npz",
              "csv": "c.csv"}[what]
    p = tmp_path / target

    def write():
        if what == "json":
            dio.save_json(p, {"a": 1})
        elif what == "classifier":
            dio.save_classifier(p, _valid_head(), class_names=["a", "b", "c"])
        elif what == "features":
            dio.save_features(p, torch.randn(2, 2), [0, 1])
        else:
            dio.save_csv(p, [{"a": 1}], ["a"])

    write()
    before = p.read_bytes()
    real_replace = os.replace

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write()
    monkeypatch.setattr(os, "replace", real_replace)
    assert p.read_bytes() == before
    _no_temp_files(tmp_path)


# ------------------------------------------------------------------------------ other loaders
@given(key=st.sampled_from(["features", "labels"]), value=arrays)
def test_xlsa17_feature_file_of_any_type(tmp_path_factory, key, value):
    import scipy.io

    from dfzsl_fast.data import load_features as load_xlsa17_features

    d = _tmp(tmp_path_factory)
    entries = {"features": np.random.randn(4, 3).astype(np.float32),
               "labels": np.array([[1], [2], [2], [1]])}
    entries[key] = value
    p = d / "res101.mat"
    try:
        scipy.io.savemat(p, entries)
    except Exception:  # a value scipy cannot store as .mat
        return
    try:
        fs = load_xlsa17_features(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert fs.features.dtype == torch.float32 and bool(torch.isfinite(fs.features).all())
    assert fs.labels.dtype == torch.int64 and int(fs.labels.min()) >= 0


@given(key=st.sampled_from(["att", "trainval_loc", "test_seen_loc", "test_unseen_loc",
                            "allclasses_names"]), value=arrays)
def test_xlsa17_split_file_of_any_type(tmp_path_factory, key, value):
    import scipy.io

    from dfzsl_fast.data import load_att_splits

    d = _tmp(tmp_path_factory)
    entries = {"att": np.random.rand(5, 4), "trainval_loc": np.array([[1], [2]]),
               "test_seen_loc": np.array([[3]]), "test_unseen_loc": np.array([[4]])}
    entries[key] = value
    p = d / "att_splits.mat"
    try:
        scipy.io.savemat(p, entries)
    except Exception:
        return
    try:
        split = load_att_splits(p)
    except LOAD_ERRORS as exc:
        assert str(p) in str(exc)
        return
    assert bool(torch.isfinite(split.attributes).all())


@given(cut=st.floats(0.0, 0.999))
def test_truncated_generator_checkpoint(tmp_path_factory, cut):
    from dfzsl_fast.models import TFVAEGAN
    from dfzsl_fast.pipeline import load_generator

    d = _tmp(tmp_path_factory)
    p = d / "g.pt"
    torch.save({"format": "dfzsl_fast.tfvaegan/1", "state": TFVAEGAN(4, 3, hidden=4).state_dict()},
               p)
    data = p.read_bytes()
    p.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(ValueError):
        load_generator(p)


@given(value=json_values)
def test_config_json_of_any_value(tmp_path_factory, value):
    from dfzsl_fast.config import DFZSLConfig

    d = _tmp(tmp_path_factory)
    p = d / "c.json"
    p.write_text(json.dumps(value))
    try:
        cfg = DFZSLConfig.from_json(p)
    except (TypeError, ValueError, FileNotFoundError):
        return
    assert isinstance(cfg, DFZSLConfig)


@given(section=st.sampled_from(["simulator", "flpt", "generator", "classifier"]),
       field=st.sampled_from(["epochs", "batch_size", "lr", "num", "syn_num", "hidden", "scale"]),
       value=json_scalars)
def test_config_field_of_any_value(section, field, value):
    from dfzsl_fast.config import DFZSLConfig, get_config

    data = get_config("AWA2").to_dict()
    if field not in data[section]:
        return
    data[section][field] = value
    try:
        cfg = DFZSLConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        assert field in str(exc)
        return
    v = getattr(getattr(cfg, section), field)
    assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                         and math.isfinite(v))


def test_stage_cache_ignores_a_corrupt_file(tmp_path):
    from dfzsl_fast.pipeline._cache import StageCache

    cache = StageCache(tmp_path)
    cache.save("virtual", "k", {"x": torch.ones(2)})
    (tmp_path / "virtual.safetensors").write_bytes(b"garbage")
    calls = []
    tensors, _, hit = cache.get_or_compute("virtual", "k",
                                           lambda: (calls.append(1) or {"x": torch.zeros(2)}, {}))
    assert not hit and calls == [1] and torch.equal(tensors["x"], torch.zeros(2))
    _no_temp_files(tmp_path)
