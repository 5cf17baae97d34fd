"""The whole graph through the command line: the Dagster CLI on definitions.py, and `aras demo`."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from aras_assets.pipeline import COMMAND_TAG

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def cli_env(tmp_path, sample_region):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "ARAS_DATA_ROOT": str(tmp_path / "data"),
           "ARAS_TILE_SOURCE": str(sample_region), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("ARAS_PROFILE", None)
    return env


@pytest.mark.slow
def test_dagster_cli_validates_and_materializes(cli_env, tmp_path):
    run(["dagster", "definitions", "validate", "-m", "definitions"], cli_env)
    run(["dagster", "asset", "materialize", "-m", "definitions", "--select", "tile_catalog"], cli_env)
    run(["dagster", "asset", "materialize", "-m", "definitions", "--select", "real_patches",
         "--partition", "N38E029"], cli_env)
    manifest = pl.read_parquet(tmp_path / "data" / "patches" / "N38E029" / "manifest.parquet")
    assert manifest.height > 0
    with dg.DagsterInstance.from_config(cli_env["DAGSTER_HOME"]) as instance:
        assert "N38E029" in instance.get_dynamic_partitions("s2_tile")
        event = instance.get_latest_materialization_event(dg.AssetKey("real_patches"))
        assert event is not None and event.dagster_event.partition == "N38E029"
        assert instance.get_run_by_id(event.run_id).is_success


@pytest.mark.slow
def test_aras_demo_end_to_end(cli_env, tmp_path):
    env = {**cli_env, "ARAS_SAMPLE_TILE_PX": "1024", "ARAS_SEG_EPOCHS": "1", "ARAS_GAN_STEPS": "8",
           "ARAS_COND_STEPS": "8", "ARAS_GEN_SHARDS": "2", "ARAS_GEN_SHARD_SIZE": "6", "ARAS_COND_IMAGES_PER_MASK": "1",
           "ARAS_ABLATION_EPOCHS": "1"}
    env.pop("ARAS_TILE_SOURCE")  # the demo writes and uses its own sample region
    proc = run([str(BIN / "aras"), "demo", "--in-process"], env)  # launched runs: tests/e2e, test_cli_errors.py
    assert "Done: 4 tiles" in proc.stdout and "segmentation: pan, fpn" in proc.stdout and "dagster dev" in proc.stdout
    assert "| PAN | ours |" in proc.stdout and "| FPN | ours |" in proc.stdout
    data = tmp_path / "data"
    assert (data / "sample_region" / "sample_region.json").exists()
    table = pl.read_parquet(data / "splits" / "splits.parquet")
    manifests = pl.concat([pl.read_parquet(p) for p in sorted((data / "patches").glob("*/manifest.parquet"))])
    assert table.height == manifests.height > 40
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for key in ("tile_catalog", "real_patches", "splits", "segmentation_model", "segmentation_eval",
                    "real_patch_labels", "real_compositions", "real_captions", "caption_eval", "uncond_gan", "cond_gan",
                    "uncond_images", "uncond_labels", "uncond_compositions", "uncond_captions", "cond_images",
                    "cond_compositions", "cond_captions", "gan_fid", "feature_projection", "ablation",
                    "ablation_tables", "report"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None
        demo_runs = instance.get_runs(dg.RunsFilter(tags={COMMAND_TAG: "aras demo"}))
        assert len(demo_runs) > 10 and all(r.is_success for r in demo_runs)
    labelled = pl.concat([pl.read_parquet(p) for p in (data / "labels" / "real_patch_labels").glob("*/manifest.parquet")])
    assert labelled.height == manifests.height
    captions = pl.concat([pl.read_parquet(p) for p in (data / "captions" / "real").glob("*/captions.parquet")])
    assert captions.height == manifests.height * 5 and (data / "eval" / "captions" / "redundancy.parquet").exists()
    assert "Qwen3-VL-8B" in proc.stdout and "paper_redundancy_pct" in proc.stdout  # Table 2 in the summary
    # synthetic images: two shards, every training patch conditioned once, all labelled and captioned
    uncond = pl.concat([pl.read_parquet(p) for p in sorted((data / "synthetic" / "uncond").glob("*/manifest.parquet"))])
    assert sorted(uncond["shard"].unique()) == ["0000", "0001"] and uncond.height == 12
    cond = pl.concat([pl.read_parquet(p) for p in sorted((data / "synthetic" / "cond").glob("*/manifest.parquet"))])
    assert cond.height == table.filter(pl.col("split") == "train").height
    for origin, count in (("uncond", 12), ("cond", cond.height)):
        found = pl.concat([pl.read_parquet(p) for p in (data / "captions" / origin).glob("*/captions.parquet")])
        assert found.height == count * 5
    assert "FID uncond" in proc.stdout and "FID   cond" in proc.stdout
    # the evaluation studies: the demo's three training sets for PAN, their tables and the report
    trained = sorted(p.parent.parent.name for p in (data / "eval" / "ablation").glob("*/pan/metrics.json"))
    assert trained == ["real", "real+cond", "real+uncond"] and (data / "report" / "report.html").exists()
    assert "report:" in proc.stdout and "ablation:" in proc.stdout
    export = data / "export"  # the release layout with STAC, Croissant and a card
    assert {"train.zip", "val.zip", "test.zip", "synth.zip", "croissant.json", "README.md", "md5sums.txt"} <= {
        p.name for p in export.iterdir()} and (export / "stac" / "collection.json").exists()
    image_id = uncond["image_id"][3]
    regen = run([str(BIN / "aras"), "regenerate", image_id], env)
    assert "byte-identical" in regen.stdout
    # The help's example ids are ids the demo makes: each traces.
    helped = run([str(BIN / "aras"), "lineage", "--help"], env).stdout
    examples = sorted({w for line in helped.splitlines() if line.strip().startswith("aras lineage")
                       for w in line.split()[2:] if not w.startswith("-") and not w.endswith(".txt")})
    assert len(examples) == 4
    run([str(BIN / "aras"), "lineage", "--no-runs", *examples], env)


@pytest.mark.slow
def test_aras_run_set_gen_shards_makes_that_many_shards(cli_env, tmp_path):
    """`--set gen_shards=6` takes effect without ARAS_GEN_SHARDS in the environment: the shards
    are partitions of the run's settings, not of the settings when the definitions loaded."""
    tiny = ["sample_tile_px=512", "seg_archs=[\"pan\"]", "seg_epochs=1", "gan_steps=4", "cond_steps=4",
            "gan_fid_every=0", "gen_shards=6", "gen_shard_size=2", "cond_images_per_mask=1", "caption_modes=[\"text\"]",
            "captions_per_image=1", "fid_images=16", "ablation_epochs=1", "ablation_train_sets=[\"real\"]"]
    env = {**cli_env}
    env.pop("ARAS_TILE_SOURCE")
    proc = run([str(BIN / "aras"), "run", "--in-process", "--profile", "demo", *[a for kv in tiny for a in ("--set", kv)]], env)
    assert "Done: 4 tiles" in proc.stdout
    shards = sorted(p.parent.name for p in (tmp_path / "data" / "synthetic" / "uncond").glob("*/manifest.parquet"))
    assert shards == [f"{i:04d}" for i in range(6)]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_dynamic_partitions("gen_shard") == shards
        done = instance.get_materialized_partitions(dg.AssetKey("uncond_captions"))
        assert sorted(done) == shards
