"""The evaluation studies as functions: projections and silhouettes on hand-made feature sets,
the ablation's training sets and tables (known answers from hand-made confusion matrices), and
the report's two renderings."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from aras_assets.evaluation.ablation import (
    TABLE3_HEADS,
    AblationError,
    class_frequency,
    class_gains,
    compose,
    gain_plot_png,
    table_markdown,
    table_rows,
)
from aras_assets.evaluation.paper import PAPER_TABLE3, PAPER_TABLE4, TRAIN_SETS
from aras_assets.evaluation.projection import ProjectionError, silhouettes, standardize, tsne_2d, umap_2d
from aras_assets.evaluation.report import Figure, Section, Table, render_html, render_markdown
from aras_assets.segmentation.metrics import scores_from_confusion
from aras_assets.settings import SettingsError, load_settings
from tests.helpers import HtmlPage

RNG = np.random.default_rng(0)


def test_separated_sets_score_near_one_and_one_distribution_near_zero() -> None:
    a, b = RNG.normal(0, 1, (150, 16)), RNG.normal(40, 1, (150, 16))
    labels = ["real"] * 150 + ["uncond"] * 150
    apart = silhouettes(np.concatenate([a, b]), labels, sample=200, seed=0)
    assert apart["overall"] > 0.9 and apart["real~uncond"] == pytest.approx(apart["overall"], abs=0.05)
    mixed = silhouettes(RNG.normal(0, 1, (300, 16)), labels, sample=200, seed=0)
    assert abs(mixed["overall"]) < 0.05
    three = silhouettes(np.concatenate([a, b, RNG.normal(0, 1, (50, 16))]), labels + ["cond"] * 50, sample=300, seed=1)
    assert set(three) == {"overall", "cond~real", "cond~uncond", "real~uncond"}
    assert three["cond~real"] < 0.1 < 0.9 < three["cond~uncond"]  # cond drawn like real, far from uncond


def test_silhouette_sample_bounds_the_points_scored(monkeypatch) -> None:
    import sklearn.metrics

    seen = []
    real = sklearn.metrics.silhouette_score
    monkeypatch.setattr(sklearn.metrics, "silhouette_score", lambda x, y: seen.append(len(x)) or real(x, y))
    silhouettes(RNG.normal(0, 1, (5000, 4)), ["real"] * 4000 + ["cond"] * 1000, sample=500, seed=0)
    assert seen and max(seen) <= 500


def test_tsne_and_umap_have_two_columns_and_repeat_with_a_seed() -> None:
    features = standardize(np.concatenate([RNG.normal(0, 1, (40, 12)), RNG.normal(5, 1, (40, 12))]))
    assert features.mean(axis=0) == pytest.approx(np.zeros(12), abs=1e-5)
    for method in (tsne_2d, umap_2d):
        first, again = method(features, 3), method(features, 3)
        assert first.shape == (80, 2) and np.array_equal(first, again)
    with pytest.raises(ProjectionError, match="at least 4"):
        umap_2d(features[:3], 0)


def _frames(uncond: int, cond: int) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    real = pl.DataFrame({"patch_id": [f"N38E029_000_{i:03d}" for i in range(10)],
                         "image_path": [f"patches/r{i}.png" for i in range(10)],
                         "mask_path": [f"patches/m{i}.png" for i in range(10)]})

    def synthetic(origin: str, n: int) -> pl.DataFrame:
        return pl.DataFrame({"image_id": [f"{origin}_{i:04d}" for i in range(n)],
                             "image_path": [f"synthetic/{origin}/{i}.png" for i in range(n)],
                             "mask_path": [f"labels/{origin}/{i}.png" for i in range(n)]})

    return real, {"uncond": synthetic("uncond", uncond), "cond": synthetic("cond", cond)}


def test_training_sets_take_the_papers_proportions() -> None:
    real, synthetic = _frames(uncond=40, cond=20)
    counts = {t: compose(t, real, synthetic, uncond_multiple=3).counts for t in TRAIN_SETS}
    assert counts == {"real": {"real": 10}, "uncond_1x": {"uncond": 10}, "uncond_3x": {"uncond": 30},
                      "real+uncond": {"real": 10, "uncond": 30}, "real+cond": {"real": 10, "cond": 10},
                      "real+uncond+cond": {"real": 10, "uncond": 30, "cond": 10}}
    both = compose("real+uncond+cond", real, synthetic, 3)
    assert both.records.height == 50 and both.records["patch_id"].is_unique().all()
    assert both.version != compose("real+uncond", real, synthetic, 3).version
    assert set(both.origin_versions()) == {"real", "uncond", "cond"}


def test_too_few_synthetic_images_are_used_and_reported() -> None:
    real, synthetic = _frames(uncond=12, cond=0)
    short = compose("uncond_3x", real, synthetic, 3)
    assert short.counts == {"uncond": 12} and short.shortfall == {"uncond": 18}


@pytest.mark.parametrize(("train_set", "asset"), [("uncond_1x", "uncond_labels"), ("real+cond", "cond_images")])
def test_a_training_set_without_its_synthetic_images_names_the_asset(train_set: str, asset: str) -> None:
    real, _ = _frames(0, 0)
    empty = pl.DataFrame(schema={"image_id": pl.String, "image_path": pl.String, "mask_path": pl.String})
    with pytest.raises(AblationError, match=f"materialize {asset} first"):
        compose(train_set, real, {"uncond": empty, "cond": empty}, 3)
    with pytest.raises(AblationError, match=r"unknown training set 'real\+both'"):
        compose("real+both", real, {}, 3)


def _confusion(hits: int, misses: int) -> np.ndarray:
    """7 classes; class 1 (shrub) is rare and gets `hits` of 10 right."""
    counts = np.diag([900, hits, 500, 600, 300, 200, 700]).astype(np.int64)
    counts[1, 0] = misses
    return counts


def test_tables_hold_exactly_the_runs_numbers_beside_the_papers() -> None:
    results = {("real", "pan"): scores_from_confusion(_confusion(4, 6)),
               ("real", "fpn"): scores_from_confusion(_confusion(6, 4)),
               ("real+uncond", "pan"): scores_from_confusion(_confusion(8, 2))}
    rows = table_rows(results, per_class=False)
    assert [(r.train_set, r.model) for r in rows] == [("real", "pan"), ("real", "fpn"), ("real", "mean"),
                                                      ("real+uncond", "pan")]
    pan = results[("real", "pan")]
    assert rows[0].ours == pytest.approx((100 * pan.f1, 100 * pan.iou, 100 * pan.precision, 100 * pan.recall,
                                          100 * pan.accuracy))
    assert rows[2].ours[0] == pytest.approx((rows[0].ours[0] + rows[1].ours[0]) / 2)
    assert rows[0].paper == PAPER_TABLE3["real"]["pan"] and rows[2].paper == PAPER_TABLE3["real"]["mean"]
    assert rows[3].difference[0] == pytest.approx(rows[3].ours[0] - PAPER_TABLE3["real+uncond"]["pan"][0])
    text = table_markdown(rows, TABLE3_HEADS)
    assert f"| Real Data | pan | ours | {100 * pan.f1:.2f} |" in text and "| Real + Uncond. 300k | pan | ours |" in text
    per_class = table_rows(results, per_class=True)
    assert per_class[0].ours[1] == pytest.approx(100 * pan.per_class_f1[1])
    assert per_class[3].paper == PAPER_TABLE4["real+uncond"]["pan"]


def test_gain_over_real_per_class_and_its_plot() -> None:
    results = {("real", "pan"): scores_from_confusion(_confusion(4, 6)),
               ("real+uncond", "pan"): scores_from_confusion(_confusion(9, 1))}
    gains = class_gains(results)
    real_f1, aug_f1 = results[("real", "pan")].per_class_f1[1], results[("real+uncond", "pan")].per_class_f1[1]
    assert gains["real+uncond"][1] == pytest.approx(100 * (aug_f1 - real_f1)) and gains["real+uncond"][1] > 0
    assert gains["real+uncond"][2] == pytest.approx(0.0)
    frequency = class_frequency(results)
    assert frequency.sum() == pytest.approx(1.0) and frequency.argmin() == 1  # the rare class
    assert gain_plot_png(gains, frequency).startswith(b"\x89PNG")


def test_report_renders_tables_and_embedded_figures() -> None:
    png = gain_plot_png({}, np.full(7, 1 / 7))
    section = Section("Segmentation", ["a note"], [("Table 3", Table(("Model", "F1"), (("pan", "12.34"),)))],
                      [Figure("gain plot.png", "gain", png)])
    md = render_markdown("Report", [section])
    assert "| pan | 12.34 |" in md and "![gain](figures/gain-plot.png)" in md
    parsed = HtmlPage()
    parsed.feed(render_html("Report", [section]))
    assert parsed.tables == 1 and "12.34" in parsed.cells and parsed.images[0].startswith("data:image/png;base64,")


def test_ablation_settings_refuse_unknown_names() -> None:
    assert load_settings("paper").ablation_train_sets == TRAIN_SETS
    with pytest.raises(SettingsError, match="ablation_train_sets"):
        load_settings(None, {"ablation_train_sets": '["real", "real+both"]'})
