"""Runs over partition ranges: how `aras run` cuts a stage's partitions into runs, the tags of a
range, and the one metadata a run of several partitions records."""

import dagster as dg
import pytest

from aras_assets.graph import STAGE_JOBS
from aras_assets.ranged import PARTITIONS_PER_RUN, combined_metadata, partition_ranges, range_tags


def test_ranges_are_contiguous_in_the_partitions_order_and_bounded() -> None:
    ordered = ["a", "b", "c", "d", "e", "f", "g"]
    assert partition_ranges(ordered, ["a", "b", "c", "d", "e"], per_run=2) == [["a", "b"], ["c", "d"], ["e"]]
    # a gap (a partition not wanted) ends a range: a range runs every partition between its ends
    assert partition_ranges(ordered, ["g", "a", "b", "d", "e", "f"], per_run=16) == [["a", "b"], ["d", "e", "f", "g"]]
    assert partition_ranges(ordered, [], per_run=4) == []
    assert partition_ranges(ordered, ["c"], per_run=1) == [["c"]]
    with pytest.raises(ValueError, match="not partitions: \\['z'\\]"):
        partition_ranges(ordered, ["a", "z"])


def test_range_tags() -> None:
    assert range_tags(["N38E028"]) == {"dagster/partition": "N38E028"}
    assert range_tags(["N36E030", "N36E031", "N38E028"]) == {"dagster/asset_partition_range_start": "N36E030",
                                                             "dagster/asset_partition_range_end": "N38E028"}


def test_metadata_of_several_partitions() -> None:
    image = dg.MetadataValue.md("![x](data:image/png;base64,AAAA)")
    merged = combined_metadata({
        "0000": {"images": 8, "model_version": "aras-gan-uncond/1", "psi": 0.7, "preview": image,
                 "manifest": dg.MetadataValue.path("/d/0000/manifest.parquet")},
        "0001": {"images": 6, "model_version": "aras-gan-uncond/1", "psi": 0.5, "preview": dg.MetadataValue.md("y"),
                 "manifest": dg.MetadataValue.path("/d/0001/manifest.parquet")},
    })
    assert merged["images"] == 14 and merged["model_version"] == "aras-gan-uncond/1" and merged["partitions"] == 2
    assert "psi" not in merged  # differs between partitions: only in the table
    assert merged["preview"] == image  # the first partition's picture
    table = merged["by_partition"].value
    assert "| 0000 | 8 | aras-gan-uncond/1 | 0.7 |" in table and "| 0001 | 6 | aras-gan-uncond/1 | 0.5 |" in table


def test_tile_and_shard_stages_run_in_ranges_and_the_others_per_partition() -> None:
    per_run = {job: stage.per_run for job, (stage, _) in STAGE_JOBS.items()}
    for job in ("patches_job", "labels_s2_tile_job", "generation_s2_tile_job", "captions_s2_tile_job",
                "generation_gen_shard_job", "labels_gen_shard_job", "captions_gen_shard_job"):
        assert per_run[job] == PARTITIONS_PER_RUN, job
    assert per_run["segmentation_job"] == per_run["ablation_job"] == 1  # one model per run
