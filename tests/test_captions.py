"""Captions: compositions and layout on hand-made masks, the release's prompts, the offline
captioner, resumable captioning, redundancy and consistency, and the caption assets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from aras_assets.captions.captioning import CaptionError, CaptionJob, caption_partition
from aras_assets.captions.composition import SHARE_COLUMNS, CompositionError, compute_composition
from aras_assets.captions.evaluation import consistency, mentions, redundancy, redundancy_table
from aras_assets.captions.offline import offline_captions
from aras_assets.captions.prompts import RELEASE_PROMPTS, PromptTemplateError, class_info, prompt_templates
from aras_assets.settings import PAPER_CAPTION_PLAN
from resources.captioner import CaptionBackendError, SamplingConfig
from resources.clip import ClipResource
from tests.caption_fixtures import composition_rows, text_job
from tests.test_clipscore import TINY, tiny_weights  # noqa: F401 (a fixture)

TREE, SHRUB, GRASS, CROP, BUILT, BARREN, WATER = range(7)


def release_class_info(percents: list[float]) -> str:
    """The release's own rule, written out as it built class_info."""
    names = ["Tree", "Shrub", "Grass", "Crop", "Built-up", "Barren", "Water"]
    return ", ".join(f"{name} ({round(pct, 2)}%)" for name, pct in zip(names, percents, strict=True) if pct > 0)


RELEASE_CASES = {  # percentages as the release formats them: Python's round, never padded
    "one decimal": ([8.2, 0.0, 91.8, 0.0, 0.0, 0.0, 0.0], "Tree (8.2%), Grass (91.8%)"),
    "two decimals": ([10.54, 0.0, 0.0, 0.0, 0.0, 0.0, 89.46], "Tree (10.54%), Water (89.46%)"),
    "rounded": ([45.123, 0.0, 30.0, 0.0, 0.0, 14.877, 10.0], "Tree (45.12%), Grass (30.0%), Barren (14.88%), Water (10.0%)"),
    "hundred": ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0], "Water (100.0%)"),
    "built-up": ([0.0, 0.0, 0.0, 0.0, 100.0 / 3, 0.0, 200.0 / 3], "Built-up (33.33%), Water (66.67%)"),
    "empty": ([0.0] * 7, ""),
}


@pytest.mark.parametrize("case", sorted(RELEASE_CASES))
def test_class_info_and_prompts_byte_for_byte_as_the_release(case: str) -> None:
    percents, expected = RELEASE_CASES[case]
    assert class_info(percents) == release_class_info(percents) == expected
    t = prompt_templates()
    if expected:
        text = f"An image shows: {expected}. Describe the scene in 1 or 2 concise sentences focusing on dominant land use."
        hybrid = (f"This remote sensing image contains the following land cover distribution: {expected}. Based on this "
                  "information, describe the scene in 1 or 2 concise sentences focusing on spatial layout and dominant "
                  "land use types.")
    else:  # the release's fallbacks: Text names no class, Hybrid asks the Vision prompt
        text = ("An image shows: unidentified land cover. Describe the scene in 1 or 2 concise sentences focusing on "
                "dominant land use.")
        hybrid = t["vision"].user
    assert t["text"].render(percents) == text and t["hybrid"].render(percents) == hybrid
    assert t["vision"].render(percents) == t["vision"].user


def test_two_decimal_percent_format_stays_available() -> None:
    percents = [45.123, 0.0, 30.0, 0.0, 0.0, 14.877, 10.0]
    assert class_info(percents, "two_decimals") == "Tree (45.12%), Grass (30.00%), Barren (14.88%), Water (10.00%)"
    t = prompt_templates(percent_format="two_decimals")
    assert "Grass (30.00%)" in t["text"].render(percents) and t["text"].hash != prompt_templates()["text"].hash
    assert prompt_templates({"vision": "Say what you see."})["hybrid"].render([0.0] * 7) == "Say what you see."


def test_release_prompts_byte_identical() -> None:
    percents = [45.123, 0.0, 30.0, 0.0, 0.0, 14.877, 10.0]
    assert class_info(percents) == "Tree (45.12%), Grass (30.0%), Barren (14.88%), Water (10.0%)"
    t = prompt_templates()
    assert t["vision"].render(percents) == ("Describe this remote sensing image in 1 or 2 concise sentences, focusing on "
                                            "land use and key geographical features.")
    assert t["hybrid"].render(percents) == (
        "This remote sensing image contains the following land cover distribution: Tree (45.12%), Grass (30.0%), "
        "Barren (14.88%), Water (10.0%). Based on this information, describe the scene in 1 or 2 concise sentences "
        "focusing on spatial layout and dominant land use types.")
    assert t["text"].system == "You are a remote sensing expert."
    assert t["text"].render(percents) == ("An image shows: Tree (45.12%), Grass (30.0%), Barren (14.88%), Water (10.0%). "
                                          "Describe the scene in 1 or 2 concise sentences focusing on dominant land use.")
    assert t["vision"].uses_image and t["hybrid"].uses_image and not t["text"].uses_image
    assert t["text"].hash == RELEASE_PROMPTS["text"].hash != t["hybrid"].hash


def test_prompt_template_with_unknown_placeholder() -> None:
    with pytest.raises(PromptTemplateError, match=r"unknown placeholder\(s\) \['landuse'\]"):
        prompt_templates({"hybrid": "Shares: {class_info}; uses {landuse}"})
    with pytest.raises(PromptTemplateError, match="caption_prompts names"):
        prompt_templates({"captions": "x"})
    assert prompt_templates({"vision": "Say what you see."})["vision"].render([100, 0, 0, 0, 0, 0, 0]) == "Say what you see."


def test_composition_known_answers() -> None:
    mask = np.full((90, 90), CROP, dtype=np.uint8)
    mask[:, :30] = TREE  # a west third of forest
    mask[40:44, :] = WATER  # a thin band across the scene: a river
    mask[70:80, 70:80] = BUILT
    c = compute_composition(mask, min_component_px=16)
    expected = np.bincount(mask.ravel(), minlength=7) / mask.size * 100
    np.testing.assert_allclose(c.percents, expected)
    assert c.dominant.name == "crop"
    assert c.layout_of("tree").region in ("west", "north-west", "south-west")
    assert c.layout_of("tree").components == 2  # the river cuts the forest in two
    assert c.layout_of("built-up").region == "south-east"
    assert c.layout_of("water").form == "river"
    lake = np.full((64, 64), GRASS, dtype=np.uint8)
    lake[20:40, 20:44] = WATER
    assert compute_composition(lake).layout_of("water").form == "lake"
    assert compute_composition(lake).layout_of("water").region == "centre"
    assert {c.borders[0][0], c.borders[0][1]} <= {"tree", "crop", "water", "built-up"}
    with pytest.raises(CompositionError, match="class 9"):
        compute_composition(np.full((4, 4), 9, dtype=np.uint8))
    with pytest.raises(CompositionError, match="non-empty"):
        compute_composition(np.zeros((0, 0), dtype=np.uint8))


def test_offline_captions_are_distinct_deterministic_and_true() -> None:
    mask = np.full((64, 64), BARREN, dtype=np.uint8)
    mask[:, 40:] = SHRUB
    mask[:10, :10] = WATER
    c = compute_composition(mask)
    for mode in ("text", "vision", "hybrid"):
        captions = offline_captions(c, mode, seed=3)
        assert len(captions) == len(set(captions)) == 5
        assert captions == offline_captions(c, mode, seed=3) != offline_captions(c, mode, seed=4)
        for text in captions:
            result = consistency(text, c.percents)
            assert result.precision == 1.0 and not result.contradictions, (text, result)
            assert "crop" not in text and "forest" not in text


def test_mentions_and_consistency_catch_contradictions() -> None:
    named, stated = mentions("Cropland (45.5%) with a river and some forest covering 20%.")
    assert named == ["crop", "water", "tree"] and stated == [("crop", 45.5), ("tree", 20.0)]
    percents = [20.0, 0, 0, 50.0, 0, 0, 30.0]
    bad = consistency("A town beside cropland (45.5%).", percents)
    assert bad.precision == 0.5 and any("built-up" in p for p in bad.contradictions)
    assert bad.recall == pytest.approx(1 / 3) and bad.percent_error == pytest.approx(4.5)
    wrong = consistency("Cropland at 80%.", percents)
    assert wrong.contradictions == ("says crop 80% (mask 50.00%)",)


def test_redundancy_known_answers() -> None:
    assert redundancy(["a", "b", "a", "a"]) == pytest.approx(0.5)
    assert redundancy([]) == 0.0
    frame = pl.DataFrame({"origin": ["real"] * 4, "mode": ["text", "text", "vision", "vision"],
                          "text": ["A field.", "a field", "Water.", "Trees."]})
    table = redundancy_table(frame)
    text = table.filter(pl.col("mode") == "text").row(0, named=True)
    assert text["redundancy_pct"] == 0.0 and text["redundancy_norm_pct"] == 50.0
    overall = table.filter(pl.col("origin") == "all").row(0, named=True)
    assert overall["captions"] == 4 and overall["redundancy_norm_pct"] == 25.0


class FlakyClient:
    """A model backend that answers `n` captions per request until it is told to fail."""

    def __init__(self, fail_after_calls: int | None = None) -> None:
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def caption(self, requests, sampling, seeds):
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise CaptionBackendError("endpoint http://127.0.0.1:9/v1 is down: connection refused")
        return [[f"{r.user[:20]} #{s} v{k}" for k in range(sampling.n)] for r, s in zip(requests, seeds, strict=True)]


def job(client) -> CaptionJob:
    return text_job(client, n=5)


def test_crash_and_resume_without_duplicates(tmp_path: Path) -> None:
    images = composition_rows(10)
    flaky = FlakyClient(fail_after_calls=2)
    with pytest.raises(CaptionBackendError, match="down"):
        caption_partition(images, "real", job(flaky), tmp_path, batch_size=3)
    assert len(list((tmp_path / "parts").glob("*.parquet"))) == 2  # two finished batches kept
    healthy = FlakyClient()
    captions, new = caption_partition(images, "real", job(healthy), tmp_path, batch_size=3)
    assert new == 4 and healthy.calls == 2  # only the 4 images not done
    assert captions.height == 50 and captions["caption_id"].n_unique() == 50
    assert captions["image_id"].unique(maintain_order=True).to_list() == images["image_id"].to_list()
    assert set(captions["prompt_hash"]) == {prompt_templates()["text"].hash} and set(captions["model"]) == {"test-model"}
    again, new = caption_partition(images, "real", job(FlakyClient(fail_after_calls=0)), tmp_path, batch_size=3)
    assert new == 0 and again.equals(captions)  # nothing left to do, the backend is not called


def test_caption_job_samples_each_mode_as_the_release(tmp_path: Path) -> None:
    """Text 0.7 / 0.8, Hybrid greedy, Vision sends nothing (the model's defaults), 100 new tokens."""
    from aras_assets.captions.assets import caption_job
    from aras_assets.settings import SettingsResource
    from resources.captioner import CaptionerResource

    the_job = caption_job(SettingsResource(), CaptionerResource())
    assert [p.name for p in the_job.pairs] == ["text:Qwen3-4B", "vision:Gemma3-4B", "vision:Qwen3-VL-8B",
                                               "hybrid:Gemma3-4B", "hybrid:Qwen3-VL-8B"]
    got = {p.name: p.sampling for p in the_job.pairs}
    assert (got["text:Qwen3-4B"].temperature, got["text:Qwen3-4B"].top_p) == (0.7, 0.8)
    assert {(got[p].temperature, got[p].top_p) for p in ("hybrid:Gemma3-4B", "hybrid:Qwen3-VL-8B")} == {(0.0, None)}
    assert {(got[p].temperature, got[p].top_p) for p in ("vision:Gemma3-4B", "vision:Qwen3-VL-8B")} == {(None, None)}
    assert {s.max_tokens for s in got.values()} == {100} and {s.n for s in got.values()} == {1}

    class Recorder(FlakyClient):
        def caption(self, requests, sampling, seeds):
            seen.append((requests[0].user[:8], sampling.temperature))
            return super().caption(requests, sampling, seeds)

    seen: list[tuple[str, float | None]] = []
    kept = tuple(p for p in the_job.pairs if p.name in ("text:Qwen3-4B", "hybrid:Gemma3-4B"))
    recorded = dataclasses.replace(the_job, pairs=kept, client_for=lambda pair: Recorder())
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "png.png")
    caption_partition(composition_rows(1).with_columns(pl.lit(str(tmp_path / "png.png")).alias("image_path")), "real",
                      recorded, tmp_path / "out")
    assert seen == [("An image", 0.7), ("This rem", 0.0)]


def test_captions_need_compositions_and_full_answers(tmp_path: Path) -> None:
    images = composition_rows(2).with_columns(pl.when(pl.col("image_id") == "img_01").then(None)
                                              .otherwise(pl.col(SHARE_COLUMNS[0])).alias(SHARE_COLUMNS[0]))
    with pytest.raises(CaptionError, match="img_01"):
        caption_partition(images, "real", job(FlakyClient()), tmp_path)

    class Short(FlakyClient):
        def caption(self, requests, sampling, seeds):
            return [["only one"] for _ in requests]

    with pytest.raises(CaptionError, match="expected 5 non-empty captions, got 1"):
        caption_partition(composition_rows(2), "real", job(Short()), tmp_path / "short")


def test_caption_assets_on_the_sample_region(resources, instance, data_root, tiny_weights) -> None:  # noqa: F811
    from aras_assets.captions.assets import ASSETS as CAPTION_ASSETS
    from aras_assets.captions.assets import caption_eval, real_captions, real_compositions
    from aras_assets.sources.assets import ASSETS as SOURCE_ASSETS
    from aras_assets.sources.assets import real_patches, tile_catalog

    def run(selection, key=None):
        return dg.materialize([*SOURCE_ASSETS, *CAPTION_ASSETS], selection=selection, resources=resources,
                              instance=instance, partition_key=key)

    run([tile_catalog])
    tiles = sorted(instance.get_dynamic_partitions("s2_tile"))
    for tile in tiles:
        run([real_patches], tile)
        run([real_compositions, real_captions], tile)
    result = run([caption_eval])
    meta = {k: v.value for k, v in result.asset_materializations_for_node("caption_eval")[0].metadata.items()}
    captions = pl.concat([pl.read_parquet(data_root / "captions" / "real" / t / "captions.parquet") for t in tiles])
    patches = pl.concat([pl.read_parquet(data_root / "patches" / t / "manifest.parquet") for t in tiles])
    # The paper's plan through the offline captioner: five captions per image, one per (method, model) pair.
    assert captions.height == patches.height * 5 == meta["captions"]
    per_image = captions.group_by("image_id", maintain_order=True).agg(pl.concat_str("mode", pl.lit(":"), "model"))
    assert per_image["mode"].to_list() == [list(PAPER_CAPTION_PLAN)] * patches.height
    table2 = pl.read_parquet(data_root / "eval" / "captions" / "table2.parquet")
    assert table2.select("subset", "model", "mode").rows() == [
        (subset, *reversed(pair.split(":"))) for subset in ("all", "real") for pair in PAPER_CAPTION_PLAN]
    assert table2["captions"].to_list() == [patches.height] * 10 and table2["paper_redundancy_pct"][0] == 46.45
    assert "| all | Qwen3-VL-8B | hybrid |" in meta["table2"]
    assert set(captions["backend"]) == {"offline"} and captions["caption_id"].n_unique() == captions.height
    assert meta["redundancy_pct"] < 5.0
    assert meta["contradicting_captions"] == 0
    assert "no CLIP weights configured" in meta["clipscore"]
    consistency_rows = pl.read_parquet(data_root / "eval" / "captions" / "consistency.parquet")
    assert consistency_rows["precision"].min() == 1.0

    # With local CLIP weights configured, the same asset reports CLIPScore per mode and overall.
    from aras_assets.captions.clipscore import clip_scores

    clip = ClipResource(model_name=TINY, weights_path=str(tiny_weights))
    result = dg.materialize([*SOURCE_ASSETS, *CAPTION_ASSETS], selection=[caption_eval],
                            resources={**resources, "clip": clip}, instance=instance)
    meta = {k: v.value for k, v in result.asset_materializations_for_node("caption_eval")[0].metadata.items()}
    first = captions.filter(pl.col("image_id") == patches["patch_id"][0])
    direct = clip_scores(clip.load(), [data_root / patches["image_path"][0]] * first.height, first["text"].to_list())
    assert 0 <= meta["clipscore"] <= 100 and meta["clip_model"] == TINY
    scored = pl.read_parquet(data_root / "eval" / "captions" / "table2.parquet")
    assert scored["clipscore"].null_count() == 0 and scored["paper_clipscore"][0] == 26.34
    assert direct.shape == (5,) and np.all((direct >= 0) & (direct <= 100))


def test_malformed_captions_are_found() -> None:
    from aras_assets.captions.evaluation import malformed

    texts = pl.Series(["Low shrubs, about 40.8%,, with pasture.", "Forest , and fields.", "Two  spaces.", " ",
                       "An aerial view of forest (45.12%) and water.", "Cropland, about 8.2%, with grass."])
    assert malformed(texts).to_list() == [True, True, True, True, False, False]


def test_offline_captions_have_no_doubled_commas() -> None:
    """Regression: '{n}, about {p},' followed by ', with ...' wrote ',,' in about 4% of captions."""
    import random

    from aras_assets.captions.composition import compute_composition
    from aras_assets.captions.evaluation import malformed
    from aras_assets.captions.offline import offline_captions

    rng = np.random.default_rng(0)
    texts = []
    for k in range(60):
        mask = np.zeros((64, 64), dtype=np.uint8)
        for c in rng.choice(7, size=3, replace=False):
            y, x = rng.integers(0, 48, size=2)
            mask[y:y + rng.integers(8, 40), x:x + rng.integers(8, 40)] = c
        composition = compute_composition(mask)
        for mode in ("text", "vision", "hybrid"):
            texts += offline_captions(composition, mode, seed=random.Random(k).randint(0, 10**6), n=5)
    assert len(texts) > 500
    assert not malformed(pl.Series(texts)).any(), [t for t in texts if ",," in t][:3]


def test_parts_count_as_done_only_for_the_same_pair_and_configuration(tmp_path: Path) -> None:
    """Regression: re-running with another backend over offline captions wrote nothing, reported
    captioned_now 0 and labelled the old offline rows with the new backend's name."""
    images = composition_rows(4)
    offline = dataclasses.replace(text_job(None, n=1), pairs=(dataclasses.replace(
        text_job(None, n=1).pairs[0], backend="offline", served_model="aras-offline"),))
    first, new = caption_partition(images, "real", offline, tmp_path)
    assert new == 4 and set(first["backend"]) == {"offline"}
    served, new = caption_partition(images, "real", text_job(FlakyClient(), n=1), tmp_path)
    assert new == 4 and set(served["backend"]) == {"openai"} and served.height == 4
    assert served["text"].str.contains("#").all()  # the endpoint's answers, not the offline captions relabelled
    resampled = dataclasses.replace(text_job(FlakyClient(), n=1), pairs=(dataclasses.replace(
        text_job(None, n=1).pairs[0], sampling=SamplingConfig(n=1, seed=1, temperature=0.3)),))
    assert caption_partition(images, "real", resampled, tmp_path)[1] == 4  # another sampling is another configuration
    back, new = caption_partition(images, "real", offline, tmp_path)
    assert new == 0 and back.equals(first)  # the offline parts were kept, so nothing is redone
