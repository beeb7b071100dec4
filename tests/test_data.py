from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import torch

from dfzsl_fast.config import (
    BASE_TO_NEW_DATASETS,
    GZSL_DATASETS,
    DFZSLConfig,
    get_config,
    list_configs,
)
from dfzsl_fast.data import (
    check_classnames,
    clean_classname,
    clean_classnames,
    load_att_splits,
    load_features,
    shared_data_dir,
)

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None or not (SHARED / "xlsa17").is_dir(),
    reason="real data not found (../shared/data or $DFZSL_SHARED_DATA)",
)

# ------------------------------------------------------------------------------------------
# class names
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, dataset, clean",
    [
        ("grizzly+bear", "AWA2", "grizzly bear"),
        ("killer+whale", "awa1", "killer whale"),
        ("002.Laysan_Albatross", "CUB", "Laysan Albatross"),
        ("200.Common_Yellowthroat", "cub", "Common Yellowthroat"),
        ("access_road", "SUN", "access road"),
        ("  outdoor   apartment_building ", None, "outdoor apartment building"),
        ("tvmonitor", "APY", "tvmonitor"),
        ("a_b", "none", "a_b"),
    ],
)
def test_clean_classname(raw, dataset, clean):
    assert clean_classname(raw, dataset) == clean


def test_classname_checks():
    with pytest.raises(ValueError, match=r"duplicate.*\[0\].*\[2\]"):
        check_classnames(["cat", "dog", " cat "])
    # case counts: CLIP's ImageNet list has "Cardigan" (the corgi) and "cardigan" (the sweater)
    assert check_classnames(["Cardigan", "cardigan"]) == ["Cardigan", "cardigan"]
    with pytest.raises(ValueError, match=r"my_names`\[1\] is empty"):
        check_classnames(["cat", "  "], argument="my_names")
    with pytest.raises(ValueError, match="duplicate"):
        clean_classnames(["grizzly+bear", "grizzly bear"], "AWA2")
    with pytest.raises(ValueError, match="empty"):
        clean_classnames(["001.", "002.b"], "CUB")
    with pytest.raises(ValueError, match="is empty"):
        check_classnames([])
    with pytest.raises(TypeError, match="single string"):
        clean_classnames("cat")
    with pytest.raises(TypeError, match=r"\[1\] must be a string"):
        check_classnames(["cat", 3])


# ------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------


def test_presets_cover_all_datasets():
    assert GZSL_DATASETS == ("AWA2", "CUB", "SUN", "FLO", "APY")
    assert len(BASE_TO_NEW_DATASETS) == 11
    assert list_configs() == [*GZSL_DATASETS, *BASE_TO_NEW_DATASETS]
    for name in list_configs():
        c = get_config(name)
        assert c.template.count("{}") == 1
        assert c.num_seen + c.num_unseen == c.num_classes
        assert c.protocol == ("gzsl" if name in GZSL_DATASETS else "base2new")


def test_reference_values():
    awa2 = get_config("AWA2")
    assert (awa2.num_seen, awa2.num_unseen) == (40, 10)
    assert awa2.simulator.lr == 3e-3 and awa2.simulator.epochs == 1000
    assert awa2.simulator.num == 600 and awa2.generator.syn_num == 1800
    assert awa2.teacher.C == 0.316 and awa2.teacher.fit_intercept is False
    assert awa2.classifier.lr == 5e-5 and awa2.classifier.scale == 100.0
    assert awa2.prompt("zebra") == "a photo of a zebra, a type of animal."
    assert get_config("SUN").simulator.epochs == 1500 and get_config("SUN").simulator.lr == 1e-3
    assert get_config("CUB").simulator.lr == 1.5e-3
    assert get_config("caltech-101").simulator.epochs == 500
    assert get_config("EuroSAT").simulator.num == 2000
    assert get_config("dtd").template == "{} texture."
    assert (get_config("ImageNet").num_seen, get_config("OxfordPets").num_seen) == (500, 19)
    assert get_config("102flowers").name == "Flowers102"


def test_config_roundtrip_dict_and_json(tmp_path):
    c = get_config("CUB")
    assert DFZSLConfig.from_dict(c.to_dict()) == c
    c.to_json(tmp_path / "c.json")
    assert DFZSLConfig.from_json(tmp_path / "c.json") == c
    json.loads((tmp_path / "c.json").read_text())  # plain JSON
    partial = DFZSLConfig.from_dict({"name": "mine", "simulator": {"num": 7}})
    assert partial.simulator.num == 7 and partial.simulator.lr == 3e-3
    assert get_config("AWA2") is not get_config("AWA2")  # fresh copies


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'simulator.lrr'"):
        DFZSLConfig.from_dict({"name": "x", "simulator": {"lrr": 1.0}})
    with pytest.raises(ValueError, match="unknown config key 'colour'"):
        DFZSLConfig.from_dict({"name": "x", "colour": 1})
    with pytest.raises(ValueError, match="missing the required key 'name'"):
        DFZSLConfig.from_dict({})
    with pytest.raises(TypeError, match="'simulator.epochs': expected an int"):
        DFZSLConfig.from_dict({"name": "x", "simulator": {"epochs": "10"}})
    with pytest.raises(TypeError, match="'teacher.fit_intercept': expected a bool"):
        DFZSLConfig.from_dict({"name": "x", "teacher": {"fit_intercept": 1}})
    with pytest.raises(ValueError, match="SimulatorConfig.lr"):
        DFZSLConfig.from_dict({"name": "x", "simulator": {"lr": -1.0}})
    with pytest.raises(ValueError, match="template"):
        DFZSLConfig.from_dict({"name": "x", "template": "no slot"})
    with pytest.raises(ValueError, match="unknown dataset"):
        get_config("MNIST")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DFZSLConfig.from_json(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------
# xlsa17 split files (synthetic, always run)
# ------------------------------------------------------------------------------------------


def _fake_split(tmp_path, with_lists=True):
    names = ["a+b", "c", "d", "e"]
    cell = np.empty((4, 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = np.array([n])
    # feature file rows: labels (1-based) 1,1,2,2,3,3,4,4 for rows 1..8
    scipy.io.savemat(
        tmp_path / "att_splits.mat",
        {
            "allclasses_names": cell,
            "att": np.arange(12, dtype=np.float64).reshape(3, 4),  # (A=3, C=4)
            "trainval_loc": np.array([[1], [3], [5]]),
            "test_seen_loc": np.array([[2], [4], [6]]),
            "test_unseen_loc": np.array([[7], [8]]),
        },
    )
    if with_lists:
        (tmp_path / "trainvalclasses.txt").write_text("a+b\nc\nd\n")
        (tmp_path / "testclasses.txt").write_text("e\n")
    return np.repeat(np.arange(4), 2)  # 0-based labels of the 8 feature rows


def test_load_att_splits_synthetic(tmp_path):
    labels = _fake_split(tmp_path)
    s = load_att_splits(tmp_path, dataset="AWA2")
    assert s.class_names == ["a+b", "c", "d", "e"]
    assert s.clean_names() == ["a b", "c", "d", "e"]
    assert s.attributes.shape == (4, 3) and s.attributes.dtype == torch.float32
    assert s.attributes[1].tolist() == [1.0, 5.0, 9.0]
    assert s.trainval_loc.tolist() == [0, 2, 4]  # 0-based
    assert s.test_unseen_loc.tolist() == [6, 7]
    assert s.train_loc is None
    assert s.seen_classes.tolist() == [0, 1, 2] and s.unseen_classes.tolist() == [3]
    s2 = s.with_labels(labels)
    assert torch.equal(s2.seen_classes, s.seen_classes)
    with pytest.raises(ValueError, match="reaches row"):
        s.with_labels(labels[:5])
    with pytest.raises(ValueError, match="disagree"):
        s.with_labels(np.array([0, 0, 1, 1, 3, 3, 2, 2]))


def test_load_att_splits_without_lists_needs_labels(tmp_path):
    labels = _fake_split(tmp_path, with_lists=False)
    s = load_att_splits(tmp_path / "att_splits.mat")
    assert s.seen_classes is None
    s = load_att_splits(tmp_path, labels=labels)
    assert s.seen_classes.tolist() == [0, 1, 2] and s.unseen_classes.tolist() == [3]


def test_load_att_splits_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_att_splits(tmp_path)
    scipy.io.savemat(tmp_path / "att_splits.mat", {"att": np.ones((2, 3))})
    with pytest.raises(ValueError, match="trainval_loc"):
        load_att_splits(tmp_path)
    scipy.io.savemat(
        tmp_path / "x.mat",
        {
            "att": np.ones((2, 3)),
            "trainval_loc": [[0]],
            "test_seen_loc": [[1]],
            "test_unseen_loc": [[1]],
        },
    )
    with pytest.raises(ValueError, match="1-based"):
        load_att_splits(tmp_path / "x.mat")


# ------------------------------------------------------------------------------------------
# feature files
# ------------------------------------------------------------------------------------------


def test_load_features_formats(tmp_path):
    g = np.random.default_rng(0)
    x = g.standard_normal((10, 6)).astype(np.float32)
    y = np.arange(10) % 3
    scipy.io.savemat(tmp_path / "res101.mat", {"features": x.T, "labels": (y + 1)[:, None]})
    np.savez(tmp_path / "f.npz", features=x, labels=y)
    torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y)}, tmp_path / "f.pt")
    for name in ("res101.mat", "f.npz", "f.pt"):
        fs = load_features(tmp_path / name, expected_dim=6, num_classes=3)
        assert fs.features.shape == (10, 6) and fs.features.dtype == torch.float32
        assert fs.labels.dtype == torch.int64 and fs.labels.tolist() == y.tolist()
        np.testing.assert_allclose(fs.features.numpy(), x)
        assert len(fs) == 10


def test_load_features_errors(tmp_path):
    x = np.ones((4, 3), dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    with pytest.raises(FileNotFoundError):
        load_features(tmp_path / "none.npz")
    np.savez(tmp_path / "a.npz", features=x, labels=y[:3])
    with pytest.raises(ValueError, match="expected \\(N, d\\)"):
        load_features(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", feats=x, labels=y)
    with pytest.raises(ValueError, match="missing the `features`"):
        load_features(tmp_path / "b.npz")
    bad = x.copy()
    bad[2, 1] = np.nan
    np.savez(tmp_path / "c.npz", features=bad, labels=y)
    with pytest.raises(ValueError, match="row 2"):
        load_features(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", features=x, labels=y)
    with pytest.raises(ValueError, match="expected 512"):
        load_features(tmp_path / "d.npz", expected_dim=512)
    with pytest.raises(ValueError, match="num_classes"):
        load_features(tmp_path / "d.npz", num_classes=1)
    scipy.io.savemat(tmp_path / "e.mat", {"features": x.T, "labels": y[:, None]})
    with pytest.raises(ValueError, match="label_base=0"):
        load_features(tmp_path / "e.mat")
    assert load_features(tmp_path / "e.mat", label_base=0).labels.tolist() == y.tolist()
    np.savez(tmp_path / "f.npz", features=x, labels=y + 0.5)
    with pytest.raises(ValueError, match="integers"):
        load_features(tmp_path / "f.npz")
    (tmp_path / "g.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported"):
        load_features(tmp_path / "g.csv")


# ------------------------------------------------------------------------------------------
# real xlsa17 files (skipped without ../shared/data)
# ------------------------------------------------------------------------------------------

# dataset: (classes, seen, unseen, trainval, test_seen, test_unseen, attribute dim)
REAL = {
    "AWA2": (50, 40, 10, 23527, 5882, 7913, 85),
    "CUB": (200, 150, 50, 7057, 1764, 2967, 312),
    "SUN": (717, 645, 72, 10320, 2580, 1440, 102),
    "APY": (32, 20, 12, 5932, 1483, 7924, 64),
}


@needs_shared
@pytest.mark.parametrize("dataset", list(REAL))
def test_real_xlsa17_counts(dataset):
    c, cs, cu, ntv, nts, ntu, a = REAL[dataset]
    s = load_att_splits(SHARED / "xlsa17" / dataset)
    assert s.num_classes == c and s.attributes.shape == (c, a)
    assert (len(s.seen_classes), len(s.unseen_classes)) == (cs, cu)
    assert (len(s.trainval_loc), len(s.test_seen_loc), len(s.test_unseen_loc)) == (ntv, nts, ntu)
    assert int(s.trainval_loc.min()) >= 0
    names = s.clean_names()
    assert len(set(names)) == c
    cfg = get_config(dataset)
    assert (cfg.num_classes, cfg.num_seen, cfg.num_unseen) == (c, cs, cu)
    torch.testing.assert_close(s.attributes.norm(dim=1), torch.ones(c), atol=1e-4, rtol=0)


@needs_shared
def test_real_xlsa17_flo_and_cleaning():
    flo = load_att_splits(SHARED / "xlsa17" / "FLO")
    assert flo.num_classes == 102 and flo.class_names is None and flo.seen_classes is None
    assert flo.attributes.shape == (102, 1024)
    with pytest.raises(ValueError, match="no `allclasses_names`"):
        flo.clean_names()
    awa = load_att_splits(SHARED / "xlsa17" / "AWA2")
    assert "grizzly bear" in awa.clean_names()
    unseen = [awa.clean_names()[i] for i in awa.unseen_classes.tolist()]
    assert "sheep" in unseen and "blue whale" in unseen
    cub = load_att_splits(SHARED / "xlsa17" / "CUB").clean_names()
    assert cub[:2] == ["Laysan Albatross", "Sooty Albatross"]
    sun = load_att_splits(SHARED / "xlsa17" / "SUN").clean_names()
    assert "access road" in sun
    tv = load_att_splits(SHARED / "xlsa17" / "AWA2", filename="att_splits_with_train_val_loc.mat")
    assert tv.train_loc is not None and len(tv.val_loc) > 0


@needs_shared
def test_real_clip_classnames_duplicates_are_caught():
    path = SHARED / "classnames" / "clip_classnames.json"
    if not path.is_file():
        pytest.skip("clip_classnames.json not found")
    data = json.loads(path.read_text())
    for name in ("Caltech101", "OxfordPets", "Food101", "DescribableTextures", "EuroSAT"):
        assert len(clean_classnames(data[name]["classes"], name)) == len(data[name]["classes"])
    # CLIP's curated ImageNet list names two classes "missile": a clear error, not a silent clash
    with pytest.raises(ValueError, match="duplicate names.*missile"):
        clean_classnames(data["ImageNet"]["classes"], "ImageNet")
