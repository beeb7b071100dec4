"""dfzsl_fast.plots: PNGs are written (atomically), subsampling honours its limits."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from dfzsl_fast import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(p):
    data = p.read_bytes()
    return p.stat().st_size > 1000 and data[:8] == PNG_MAGIC


def _no_temp(folder):
    return not any(".tmp" in q.name for q in folder.rglob("*"))


def test_per_class_accuracy_png(tmp_path):
    acc = torch.tensor([0.9, 0.5, float("nan"), 0.1, 0.7, 0.3], dtype=torch.float64)
    seen = torch.tensor([True, True, True, False, False, False])
    names = [f"class {i}" for i in range(6)]
    p = plots.plot_per_class_accuracy(
        acc, names, seen, tmp_path / "plots" / "per_class.png",
        scores={"S": 0.7, "U": 0.366, "H": 0.48}, title="toy",
    )
    assert p.exists() and _is_png(p) and _no_temp(tmp_path)
    # many classes: no tick labels, wide but capped figure; numpy inputs
    rng = np.random.default_rng(0)
    q = plots.plot_per_class_accuracy(rng.random(300), [str(i) for i in range(300)],
                                      rng.random(300) < 0.5, tmp_path / "many.png", sort=False)
    assert _is_png(q)


def test_per_class_accuracy_errors(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        plots.plot_per_class_accuracy([0.5, 0.2], ["a"], [True, False], tmp_path / "x.png")
    with pytest.raises(ValueError, match="every class is NaN"):
        plots.plot_per_class_accuracy([float("nan")], ["a"], [True], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_subsample_limits():
    labels = {"a": np.repeat(np.arange(30), 7), "b": np.repeat(np.arange(0, 30, 2), 3)}
    classes, rows = plots.subsample(labels, max_per_class=5, max_classes=10, seed=3)
    assert len(classes) == 10 and classes == sorted(classes)
    ya = labels["a"][rows["a"]]
    assert set(ya) <= set(classes) and np.bincount(ya).max() <= 5
    assert all((ya == c).sum() == 5 for c in classes)
    yb = labels["b"][rows["b"]]
    assert set(yb) <= set(classes) and np.bincount(yb).max() <= 3
    again = plots.subsample(labels, max_per_class=5, max_classes=10, seed=3)
    assert again[0] == classes and all(np.array_equal(again[1][k], rows[k]) for k in rows)
    fixed, _ = plots.subsample(labels, classes=[4, 2], max_classes=1)
    assert fixed == [2, 4]


def test_feature_projection_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(25, 16, generator=g)
    sets, labs = {}, {}
    for name, n, noise in (("virtual", 400, 0.1), ("synthesized", 300, 0.2), ("test", 200, 0.5)):
        y = torch.randint(0, 25, (n,), generator=g)
        sets[name] = mu[y] + noise * torch.randn(n, 16, generator=g)
        labs[name] = y
    p = plots.plot_feature_projection(
        sets, labs, tmp_path / "proj.png", class_names=[f"c{i}" for i in range(25)],
        max_per_class=10, max_classes=8, seed=1,
    )
    assert _is_png(p) and _no_temp(tmp_path)
    # PCA keeps the two leading directions: well-separated clusters stay separated
    xy = plots.project_2d(np.concatenate([np.zeros((5, 3)), np.ones((5, 3)) * 10]))
    assert xy.shape == (10, 2) and abs(xy[:5, 0].mean() - xy[5:, 0].mean()) > 10


def test_feature_projection_tsne_wiring(tmp_path, monkeypatch):
    """method="tsne": PCA-50 first, init="pca", fixed random_state (a fake TSNE keeps it fast)."""
    import types

    seen = {}

    class FakeTSNE:
        def __init__(self, n_components, **kw):
            seen.update(kw, n_components=n_components)

        def fit_transform(self, z):
            seen["shape"] = z.shape
            return z[:, :2]

    fake = types.ModuleType("sklearn.manifold")
    fake.TSNE = FakeTSNE
    monkeypatch.setitem(sys.modules, "sklearn.manifold", fake)
    x = torch.randn(80, 64)
    y = torch.arange(4).repeat_interleave(20)
    p = plots.plot_feature_projection({"test": x}, {"test": y}, tmp_path / "t.png",
                                      method="tsne", seed=7)
    assert _is_png(p)
    assert seen["n_components"] == 2 and seen["init"] == "pca" and seen["random_state"] == 7
    assert seen["shape"] == (80, 50) and 1 <= seen["perplexity"] < 80


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DFZSL_SLOW_TESTS"), reason="set DFZSL_SLOW_TESTS=1")
def test_feature_projection_real_tsne(tmp_path):
    pytest.importorskip("sklearn")
    x = torch.randn(40, 8)
    y = torch.arange(4).repeat_interleave(10)
    p = plots.plot_feature_projection({"test": x}, {"test": y}, tmp_path / "t.png",
                                      method="tsne", seed=0)
    assert _is_png(p)


def test_feature_projection_errors(tmp_path):
    x = {"a": torch.randn(4, 3), "b": torch.randn(4, 5)}
    y = {"a": torch.zeros(4), "b": torch.zeros(4)}
    with pytest.raises(ValueError, match="D = 5"):
        plots.plot_feature_projection(x, y, tmp_path / "e.png")
    with pytest.raises(ValueError, match="same keys"):
        plots.plot_feature_projection({"a": x["a"]}, y, tmp_path / "e.png")
    with pytest.raises(ValueError, match="method"):
        plots.project_2d(np.zeros((3, 2)), method="umap")


def test_no_pyplot_import(tmp_path):
    """Plots never switch the global backend: dfzsl_fast does not import pyplot."""
    if "matplotlib.pyplot" in sys.modules:
        pytest.skip("pyplot was already imported by another test")
    plots.plot_per_class_accuracy([0.5], ["a"], [True], tmp_path / "x.png")
    plots.plot_feature_projection({"a": torch.randn(5, 3)}, {"a": torch.zeros(5)},
                                  tmp_path / "y.png")
    assert "matplotlib.pyplot" not in sys.modules


def _capture_fig(monkeypatch):
    got = {}
    real = plots._save

    def save(fig, path, dpi):
        got["fig"] = fig
        return real(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", save)
    return got


def _texts(fig):
    ax = fig.axes[0]
    out = [ax.get_title()] + [t.get_text() for t in fig.texts]
    for leg in [*ax.artists, ax.get_legend()]:
        if leg is not None and hasattr(leg, "get_texts"):
            out += [t.get_text() for t in leg.get_texts()]
    return out


def test_feature_projection_marks_seen_and_new(tmp_path, monkeypatch):
    got = _capture_fig(monkeypatch)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(30).repeat_interleave(5)
    x = torch.randn(150, 16, generator=g)
    names = [f"c{i}" for i in range(30)]
    p = plots.plot_feature_projection({"test": x, "synthesized": x}, {"test": y, "synthesized": y},
                                      tmp_path / "p.png", class_names=names, max_classes=30,
                                      seen_classes=range(20))
    assert _is_png(p)
    texts = _texts(got["fig"])
    assert "20 seen, 10 new classes" in texts[0]
    assert any(t.startswith("Healthy") for t in texts)
    assert sum(t.startswith("[seen] ") for t in texts) == 20
    assert sum(t.startswith("[new] ") for t in texts) == 10
    # the two colour families do not share a colour
    ax = got["fig"].axes[0]
    cols = {t.get_text(): tuple(h.get_color()) for t, h in
            zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles, strict=True)}
    seen_c = {c for t, c in cols.items() if t.startswith("[seen]")}
    new_c = {c for t, c in cols.items() if t.startswith("[new]")}
    assert seen_c and new_c and not seen_c & new_c
    # caption="" draws none
    plots.plot_feature_projection({"test": x}, {"test": y}, tmp_path / "q.png",
                                  seen_classes=range(20), caption="")
    assert got["fig"].texts == []


@pytest.mark.parametrize("n_seen,n_new,subset", [(20, 10, False), (60, 40, True)])
def test_evaluation_pca_shows_every_class_or_says_which(tmp_path, monkeypatch, n_seen, n_new,
                                                        subset):
    from dfzsl_fast.evaluation import plot_feature_projection

    got = _capture_fig(monkeypatch)
    C = n_seen + n_new
    y = torch.arange(C).repeat_interleave(3)
    x = torch.randn(y.numel(), 8, generator=torch.Generator().manual_seed(1))
    p = plot_feature_projection(tmp_path, [f"c{i}" for i in range(C)], torch.arange(n_seen),
                                torch.arange(n_seen, C), {"test": (x, y)})
    assert _is_png(p) and p.name == "features_pca.png"
    title = _texts(got["fig"])[0]
    if subset:
        assert f"the first 20 of {n_seen} seen and 20 of {n_new} new" in title
    else:
        assert f"all {n_seen} seen and {n_new} new classes" in title
