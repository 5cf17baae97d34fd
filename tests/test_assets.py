"""Assets through dagster.materialize on the sample region, with a real (temporary) instance."""

import dagster as dg
import polars as pl

from aras_assets.sources.assets import ASSETS, PATCH_CHECKS, real_patches, splits, tile_catalog


def materialize(selection, resources, instance, partition_key=None):
    result = dg.materialize(ASSETS, selection=selection, resources=resources, instance=instance,
                            partition_key=partition_key)
    assert result.success
    return result


def check_results(result):
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION}


def test_catalog_patches_and_splits(resources, instance, data_root):
    materialize([tile_catalog], resources, instance)
    catalog = pl.read_parquet(data_root / "catalog" / "tiles.parquet")
    assert catalog["s2_tile"].to_list() == ["N36E030", "N36E031", "N38E028", "N38E029"]
    deep = catalog.filter(pl.col("s2_tile") == "N38E029").row(0, named=True)
    # The WorldCover file starts at N38E028, one degree (12000 px) west of N38E029.
    assert (deep["wc_tile"], deep["wc_row_off"], deep["wc_col_off"]) == ("N36E027", 0, 12000)
    assert sorted(instance.get_dynamic_partitions("s2_tile")) == catalog["s2_tile"].to_list()

    total = 0
    for tile in catalog["s2_tile"]:
        result = materialize([real_patches], resources, instance, tile)
        assert check_results(result) == {"no_nodata_labels": True, "water_share": True, "patch_shape": True,
                                         "unique_ids": True}
        assert {e.partition for e in result.get_asset_check_evaluations()} == {tile}  # checked per partition
        meta = result.asset_materializations_for_node("real_patches")[0].metadata
        manifest = pl.read_parquet(data_root / "patches" / tile / "manifest.parquet")
        assert meta["patches"].value == manifest.height
        total += manifest.height
        assert (data_root / manifest["image_path"][0]).exists() and (data_root / manifest["mask_path"][0]).exists()
    assert total > 40

    result = materialize([splits], resources, instance)
    assert check_results(result) == {"splits_disjoint": True, "splits_complete": True}
    meta = result.asset_materializations_for_node("splits")[0].metadata
    assert meta["map"].value.startswith("![patches by split](data:image/png;base64,")
    assert (data_root / "splits" / "splits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (data_root / "catalog" / "tiles.png").exists()
    table = pl.read_parquet(data_root / "splits" / "splits.parquet")
    assert table.height == total and set(table["split"]) == {"train", "val", "test"}
    latest = instance.get_latest_materialization_event(dg.AssetKey("splits"))
    assert latest is not None and latest.run_id == result.run_id


def test_rematerializing_a_partition_gives_identical_bytes(resources, instance, data_root):
    materialize([tile_catalog], resources, instance)
    materialize([real_patches], resources, instance, "N38E028")
    folder = data_root / "patches" / "N38E028"
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    materialize([real_patches], resources, instance, "N38E028")
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert before == after and len(before) > 3
    assert [p.name for p in (data_root / "patches").iterdir()] == ["N38E028"]  # no staging left


def test_one_run_over_a_range_of_tiles_keeps_checks_per_tile_and_finished_tiles(resources, instance, data_root,
                                                                                sample_region, tmp_path):
    """real_patches over three tiles in one run (as a backfill with its policy launches it): one
    materialization and one evaluation of each check per tile. A tile that fails ends the run with
    the tiles before it kept; re-running the range finishes it."""
    import shutil

    from aras_assets.ranged import BACKFILL_POLICY, range_tags
    from tests.conftest import make_resources

    assert real_patches.backfill_policy == BACKFILL_POLICY and BACKFILL_POLICY.max_partitions_per_run > 1
    region = tmp_path / "region"
    shutil.copytree(sample_region, region)
    resources = make_resources(data_root, region)
    materialize([tile_catalog], resources, instance)
    broken = region / "ESA_WorldCover_10m_2021_v200_N38E028_S2RGBNIR.tif"
    broken.write_bytes(b"not a GeoTIFF")  # after the catalog read its footprint
    tiles = ["N36E030", "N36E031", "N38E028"]

    failed = dg.materialize(ASSETS, selection=[real_patches], resources=resources, instance=instance,
                            tags=range_tags(tiles), raise_on_error=False)
    assert not failed.success
    assert sorted(p.name for p in (data_root / "patches").iterdir()) == tiles[:2]  # finished tiles stay, no staging
    assert not instance.fetch_materializations(dg.AssetKey("real_patches"), limit=10).records  # the step failed

    shutil.copyfile(sample_region / broken.name, broken)
    result = dg.materialize(ASSETS, selection=[real_patches], resources=resources, instance=instance,
                            tags=range_tags(tiles))
    records = instance.fetch_materializations(dg.AssetKey("real_patches"), limit=10).records
    assert sorted(r.partition_key for r in records) == tiles and {r.run_id for r in records} == {result.run_id}
    heights = {t: pl.read_parquet(data_root / "patches" / t / "manifest.parquet").height for t in tiles}
    meta = records[0].asset_materialization.metadata
    assert meta["patches"].value == sum(heights.values()) and meta["partitions"].value == 3
    for tile in tiles:  # the table by partition
        assert f"| {tile} | {heights[tile]} |" in meta["by_partition"].value
    evaluations = [e.asset_check_evaluation_data for e in result.all_events
                   if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    per_tile = {(e.check_name, e.partition) for e in evaluations if e.partition is not None}
    assert per_tile == {(check, tile) for check in PATCH_CHECKS for tile in tiles}
    assert all(e.passed for e in evaluations)
    summary = {e.check_name: e.metadata["failed_partitions"].value for e in evaluations if e.partition is None}
    assert summary == dict.fromkeys(PATCH_CHECKS, "none")
