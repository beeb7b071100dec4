"""dfzsl_fast.extract: CLIP image features of an image folder, on a tiny random open_clip tower."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
open_clip = pytest.importorskip("open_clip")
Image = pytest.importorskip("PIL.Image")

from dfzsl_fast import extract  # noqa: E402
from dfzsl_fast.io import load_features, sha256_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# ecosystem.md 1.5: a 3.4 M-parameter tower with the real tokenizer; image_size 32
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16,
                   "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLASSES = {"beta": 3, "alpha": 2, "gamma": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(image root, tiny config file, weights file, the model) shared by the tests."""
    d = tmp_path_factory.mktemp("extract")
    root = d / "images"
    g = torch.Generator().manual_seed(0)
    for name, n in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            size = (24 + 9 * i, 40 - 3 * i)  # different sizes and aspect ratios
            arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
            sub = root / name / ("nested" if i == 2 else "")
            sub.mkdir(exist_ok=True)
            Image.fromarray(arr).save(sub / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "alpha" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    cfg = d / "cfg" / "dfzsl-tiny.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("dfzsl-tiny", pretrained=None).eval()
    from safetensors.torch import save_file

    weights = d / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return root, cfg, weights, model


def test_scan_image_folder(world):
    root = world[0]
    paths, labels, names = extract.scan_image_folder(root)
    assert names == ["alpha", "beta", "gamma"]  # sorted, hidden folder skipped
    assert labels == [0] * 2 + [1] * 3 + [2] * 4
    assert all(p.suffix in (".png", ".jpg") for p in paths)
    assert any("nested" in p.parts for p in paths)
    p2, l2, n2 = extract.scan_image_folder(root, classes=["gamma", "alpha"])
    assert n2 == ["gamma", "alpha"] and l2 == [0] * 4 + [1] * 2
    with pytest.raises(FileNotFoundError, match="zeta"):
        extract.scan_image_folder(root, classes=["zeta"])
    with pytest.raises(FileNotFoundError, match="no image folder"):
        extract.scan_image_folder(root / "missing")


def test_extract_matches_encode_image(world, tmp_path):
    root, cfg, weights, model = world
    out = tmp_path / "feats.safetensors"
    ff = extract.extract_image_features(
        root, "dfzsl-tiny", weights, model_config=cfg, batch_size=4, device="cpu",
        num_workers=0, split="test", out=out, progress=False,
    )
    assert ff.features.shape == (9, 64) and ff.features.dtype == torch.float32
    assert ff.labels.tolist() == [0] * 2 + [1] * 3 + [2] * 4
    assert ff.class_names == ["alpha", "beta", "gamma"]
    assert ff.paths[0] == "alpha/img0.jpg" and "beta/nested/img2.jpg" in ff.paths
    norms = ff.features.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))  # unnormalised, like DFZSL
    # the reference: the same model and its eval transform, image by image
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    with torch.no_grad():
        ref = torch.cat([
            model.encode_image(preprocess(Image.open(root / p).convert("RGB"))[None])
            for p in ff.paths
        ])
    torch.testing.assert_close(ff.features, ref, rtol=1e-5, atol=1e-5)
    m = ff.metadata
    assert m["weights_sha256"] == sha256_file(weights) and m["quick_gelu"] is False
    assert m["normalize"] is False and m["model_name"] == "dfzsl-tiny"
    assert m["image_size"] in (32, [32, 32])
    # the file holds the same
    back = load_features(out)
    assert torch.equal(back.features, ff.features) and back.paths == ff.paths
    assert back.split_names == ["test"] and back.metadata["weights_sha256"] == m["weights_sha256"]
    assert not any(".tmp" in p.name for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError, match="overwrite"):
        extract.extract_image_features(root, "dfzsl-tiny", weights, model_config=cfg, out=out)


def test_normalize_and_quick_gelu(world):
    root, cfg, _, _ = world
    ff = extract.extract_image_features(
        root, "dfzsl-tiny", None, allow_random_weights=True, model_config=cfg, quick_gelu="true",
        normalize=True, device="cpu", progress=False,
    )
    torch.testing.assert_close(ff.features.norm(dim=1), torch.ones(9))
    assert ff.metadata["quick_gelu"] is True and ff.metadata["random_weights"] is True


def test_weights_errors(world, tmp_path):
    root, cfg, _, _ = world
    missing = tmp_path / "ViT-B-16.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        extract.extract_image_features(root, "dfzsl-tiny", missing, model_config=cfg)
    with pytest.raises(ValueError, match="random-weights"):
        extract.extract_image_features(root, "dfzsl-tiny", None, model_config=cfg)
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        extract.extract_image_features(root, "dfzsl-tiny", tmp_path, model_config=cfg)
    with pytest.raises(ValueError, match="`out`"):
        extract.extract_image_features(root, "dfzsl-tiny", None, allow_random_weights=True,
                                       model_config=cfg, out=tmp_path / "f.csv")


def test_unreadable_image_is_named(world, tmp_path):
    _, cfg, _, _ = world
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    (tmp_path / "imgs" / "c" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        extract.extract_image_features(tmp_path / "imgs", "dfzsl-tiny", None,
                                       allow_random_weights=True, model_config=cfg,
                                       progress=False, out=tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_resolve_quick_gelu(tmp_path):
    r = extract.resolve_quick_gelu
    assert r("auto", "ViT-B-16-quickgelu", None) is True
    assert r("auto", "ViT-B-16", tmp_path / "ViT-B-16-openai.safetensors") is True
    assert r("auto", "ViT-B-16", tmp_path / "laion2b.safetensors") is None
    assert r(True, "ViT-B-16", None) is True and r("false", "ViT-B-16", None) is False
    with pytest.raises(ValueError, match="contradicts"):
        r("false", "ViT-B-16-quickgelu", None)
    with pytest.raises(ValueError, match="quick_gelu"):
        r("maybe", "ViT-B-16", None)


def test_script_wrapper(world, tmp_path, capsys):
    root, cfg, weights, _ = world
    spec = importlib.util.spec_from_file_location(
        "extract_clip_features", REPO / "scripts" / "extract_clip_features.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "f.npz"
    classes = tmp_path / "classes.txt"
    classes.write_text("gamma\nbeta\n")
    rc = script.main([str(root), "--model", "dfzsl-tiny", "--model-config", str(cfg),
                      "--weights", str(weights), "--out", str(out), "--classes", str(classes),
                      "--device", "cpu", "--num-workers", "2", "--batch-size", "2",
                      "--no-progress"])
    assert rc == 0 and out.exists()
    ff = load_features(out)
    assert ff.class_names == ["gamma", "beta"] and ff.labels.tolist() == [0] * 4 + [1] * 3
    assert "saved to" in capsys.readouterr().out
    # errors: one line, exit code 2
    rc = script.main([str(root), "--model", "dfzsl-tiny", "--model-config", str(cfg),
                      "--out", str(tmp_path / "g.npz")])
    assert rc == 2 and "--weights" in capsys.readouterr().err


def test_cli_subcommand(world, tmp_path, capsys):
    from dfzsl_fast import cli

    root, cfg, _, _ = world
    out = tmp_path / "f.pt"
    rc = cli.main(["extract-features", str(root), "--model", "dfzsl-tiny", "--model-config",
                   str(cfg), "--random-weights", "--out", str(out), "--device", "cpu",
                   "--num-workers", "0", "--no-progress", "--split", "train"])
    assert rc == 0 and load_features(out).split_names == ["train"]
    rc = cli.main(["extract-features", str(root), "--model", "dfzsl-tiny", "--model-config",
                   str(cfg), "--weights", str(tmp_path / "none.safetensors"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dfzsl-fast extract-features: error:")
