"""Assets through dagster.materialize on the sample region, with a real (temporary) instance."""

import dagster as dg
import polars as pl

from aras_assets.sources.assets import ASSETS, real_patches, splits, tile_catalog


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
