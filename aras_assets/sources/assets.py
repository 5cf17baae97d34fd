"""Source assets: tile_catalog -> real_patches (per s2_tile) -> splits. Thin wiring only."""

from pathlib import Path

import dagster as dg
import polars as pl

from aras_assets import layout
from aras_assets.errors import step_errors
from aras_assets.exchange.importer import materialize_release_tile, read_index, release_catalog, release_splits
from aras_assets.grid import Footprint
from aras_assets.landcover import CLASS_NAMES, label_lut
from aras_assets.maps import catalog_map, splits_map
from aras_assets.partitions import S2_TILE_PARTITIONS, s2_tile_partitions
from aras_assets.previews import markdown_image, markdown_table, pair_grid
from aras_assets.ranged import BACKFILL_POLICY, PartitionResult, over_partitions
from aras_assets.settings import SettingsResource
from aras_assets.sources.catalog import catalog_report
from aras_assets.sources.checks import check_patches, check_splits
from aras_assets.sources.patches import (
    CLASS_COUNT_COLUMNS,
    REJECTED_SCHEMA,
    PatchOptions,
    TileResult,
    TileSource,
    materialize_tile,
)
from aras_assets.sources.records import catalog_entry, read_catalog, read_manifests
from aras_assets.sources.splits import SPLITS, assign_splits, splits_version
from resources.storage import StorageResource, read_parquet_checked

# The inputs from outside: shown upstream of tile_catalog in the UI, never materialized here.
S2_TILES = dg.AssetSpec(
    "s2_rgbnir_tiles", group_name="catalog", kinds={"geotiff"},
    description="ESA WorldCover 2021 Sentinel-2 RGBNIR composites (4-band uint16 GeoTIFFs, EPSG:4326, 1-degree "
                "tiles on the 1/12000-degree grid), read from the tile_source setting's folder or s2_uri_template.")
WORLDCOVER_TILES = dg.AssetSpec(
    "worldcover_tiles", group_name="catalog", kinds={"geotiff"},
    description="ESA WorldCover 10 m 2021 v200 land-cover maps (1-band uint8 GeoTIFFs, 3-degree tiles), read from "
                "the tile_source setting's folder or wc_uri_template.")
EXTERNAL = [S2_TILES, WORLDCOVER_TILES]


@dg.asset(group_name="catalog", code_version="1", kinds={"parquet"}, deps=EXTERNAL)
def tile_catalog(context: dg.AssetExecutionContext, settings: SettingsResource,
                 storage: StorageResource) -> dg.MaterializeResult:
    """S2 RGBNIR tiles inside the configured bounding box, each with the WorldCover tile that
    covers it (matched by footprint). Registers one `s2_tile` partition per S2 tile."""
    s = settings.get()
    with step_errors(context, s.retry_window_s):
        skipped: list[str] = []
        if s.tile_source == layout.RELEASE_SOURCE:  # an imported release (`aras import DIR`)
            catalog = release_catalog(read_index(storage.root_path), s.s2_uri_template, s.wc_uri_template)
        else:
            folder = None if s.tile_source == "templates" else storage.resolve(s.tile_source)
            report = catalog_report(s.bbox_footprint, s.tile_source, folder, s.s2_uri_template, s.wc_uri_template,
                                    s.remote_options, s.remote_probe_workers)
            catalog, skipped = report.catalog, report.skipped
        out = storage.path(layout.CATALOG)
        storage.writable_dir(out.parent)
        storage.write_parquet(catalog, out)
    tiles = catalog["s2_tile"].to_list()
    new = [t for t in tiles if not context.instance.has_dynamic_partition(S2_TILE_PARTITIONS, t)]
    context.instance.add_dynamic_partitions(S2_TILE_PARTITIONS, new)
    context.log.info(f"catalog: {len(tiles)} S2 tiles over {catalog['wc_tile'].n_unique()} WorldCover tiles; "
                     f"{len(new)} new partitions")
    footprints = {r["s2_tile"]: (r["west"], r["south"], r["east"], r["north"]) for r in catalog.iter_rows(named=True)}
    cells = {cell: Footprint.of_tile(cell, 1) for cell in skipped}  # S2 tiles are 1-degree cells
    picture = catalog_map(s.bbox, footprints, {c: (f.west, f.south, f.east, f.north) for c, f in cells.items()})
    storage.write_bytes(storage.path(layout.CATALOG_MAP), picture)
    return dg.MaterializeResult(metadata={
        "map": dg.MetadataValue.md(markdown_image(picture, "catalog tiles in the bounding box")),
        "map_path": dg.MetadataValue.path(str(storage.path(layout.CATALOG_MAP))),
        "s2_tiles": len(tiles),
        "worldcover_tiles": catalog["wc_tile"].n_unique(),
        "new_partitions": len(new),
        # Template cells with no tile (sea, outside coverage): asked for, absent, not partitions.
        "skipped_cells": len(skipped),
        "skipped": ", ".join(skipped) or "none",
        "bbox": str(s.bbox),
        "path": dg.MetadataValue.path(str(out)),
        "tiles": dg.MetadataValue.md(markdown_table(
            catalog.select("s2_tile", "wc_tile", "wc_row_off", "wc_col_off", "s2_uri").to_dicts())),
    })


PATCH_CHECKS = {
    "no_nodata_labels": "Every mask pixel is a palette class (no nodata) and agrees with the manifest's class counts.",
    "water_share": "No kept patch is more water than water_max_share.",
    "patch_shape": "Every image is 256x256 RGB and every mask 256x256 single-band, as the manifest says.",
    "unique_ids": "Every patch id occurs once in the tile's manifest.",
}
SPLIT_CHECKS = {
    "splits_disjoint": "No patch is in two splits.",
    "splits_complete": "Every patch on record has a split, every split a patch on record, and no wanted split is empty.",
}


@dg.asset(
    group_name="patches", code_version="1", kinds={"parquet", "png"},
    partitions_def=s2_tile_partitions, deps=[tile_catalog], backfill_policy=BACKFILL_POLICY,
    check_specs=[dg.AssetCheckSpec(name, asset="real_patches", description=d, partitions_def=s2_tile_partitions)
                 for name, d in PATCH_CHECKS.items()],  # per tile: one bad tile does not mark the others
)
def real_patches(context: dg.AssetExecutionContext, settings: SettingsResource,
                 storage: StorageResource) -> dg.MaterializeResult:
    """256x256 image and mask PNGs of each S2 tile of the run with a Parquet manifest of their
    lineage; patches with empty imagery, nodata labels or over the water limit are left out."""
    s = settings.get()
    opts = PatchOptions(label_lut(s.remap), s.normalization, s.stretch_max, s.water_max_share, s.effective_workers(),
                        s.png_compress_level, tuple(sorted(s.remote_options.items())))

    def one(tile: str) -> PartitionResult:
        with step_errors(context, s.retry_window_s):
            entry = catalog_entry(storage, tile)
        source = TileSource(entry["s2_tile"], entry["s2_uri"], entry["wc_tile"], entry["wc_uri"])
        last_logged = [0]

        def progress(done: int, total: int) -> None:
            if done == total or done - last_logged[0] >= max(total // 4, 1):
                last_logged[0] = done
                context.log.info(f"{tile}: {done}/{total} patches cut")

        with step_errors(context, s.retry_window_s):
            final = storage.path(layout.patches_dir(tile))
            storage.writable_dir(final.parent)
            if s.tile_source == layout.RELEASE_SOURCE:  # the imported release's files, lineage from their names
                result = TileResult(materialize_release_tile(storage.root_path, entry), pl.DataFrame(schema=REJECTED_SCHEMA))
            else:
                result = materialize_tile(source, opts, final, layout.patches_dir(tile).as_posix(), progress)
        return PartitionResult(tile_metadata(storage, tile, result, final, s.normalization), {
            name: (not found, {"problems": len(found), "first": "; ".join(found[:5])})
            for name, found in check_patches(storage.root_path, result.manifest, s.water_max_share).items()})

    return over_partitions(context, one)


def tile_metadata(storage: StorageResource, tile: str, result: TileResult, final: Path, normalization: str) -> dict:
    manifest = result.manifest
    metadata: dict[str, object] = {
        "patches": manifest.height,
        **{f"rejected_{reason}": n for reason, n in result.reject_counts.items()},
        "manifest": dg.MetadataValue.path(str(final / layout.MANIFEST)),
        "normalization": normalization,
    }
    total_px = max(sum(manifest[c].sum() for c in CLASS_COUNT_COLUMNS), 1)
    metadata["class_shares"] = dg.MetadataValue.json(
        {name: round(manifest[c].sum() / total_px, 4) for name, c in zip(CLASS_NAMES, CLASS_COUNT_COLUMNS, strict=True)})
    if manifest.height:
        sample = manifest.sample(n=min(8, manifest.height), seed=0).sort("patch_id")
        pairs = [(storage.inside(r["image_path"], r["patch_id"]), storage.inside(r["mask_path"], r["patch_id"]))
                 for r in sample.iter_rows(named=True)]
        grid = pair_grid(pairs, thumb=64, labels=sample["patch_id"].to_list())
        metadata["preview"] = dg.MetadataValue.md(markdown_image(grid, f"{tile} patches: image and mask"))
    return metadata


@dg.asset(group_name="splits", code_version="1", kinds={"parquet"}, deps=[real_patches],
          check_specs=[dg.AssetCheckSpec(n, asset="splits", description=d) for n, d in SPLIT_CHECKS.items()])
def splits(context: dg.AssetExecutionContext, settings: SettingsResource,
           storage: StorageResource) -> dg.MaterializeResult:
    """patch_id -> train/val/test over every materialized tile of the catalog."""
    s = settings.get()
    with step_errors(context, s.retry_window_s):
        tiles = read_catalog(storage)["s2_tile"].to_list()
        patches, missing = read_manifests(storage, tiles)
        if missing:
            context.log.warning(f"{len(missing)} catalog tiles have no patches yet and are left out: {missing}")
        if s.tile_source == layout.RELEASE_SOURCE:  # the release's own splits, from its folders
            table = release_splits(storage.root_path)
        else:
            table = assign_splits(patches, s.split_method, s.split_fractions, s.split_block, s.split_seed)
        out = storage.path(layout.SPLITS)
        storage.writable_dir(out.parent)
        storage.write_parquet(table, out)
    written = read_parquet_checked(out)
    problems = check_splits(written, patches["patch_id"], s.split_fractions)
    counts = {name: written.filter(pl.col("split") == name).height for name in SPLITS}
    context.log.info(f"splits: {counts} over {written['block_id'].n_unique()} blocks ({s.split_method})")
    version = splits_version(written)
    bounds = written.select("patch_id", "split").join(
        patches.select("patch_id", "lon_min", "lat_min", "lon_max", "lat_max"), on="patch_id")
    footprints = {r["s2_tile"]: (r["west"], r["south"], r["east"], r["north"])
                  for r in read_catalog(storage).iter_rows(named=True) if r["s2_tile"] in set(patches["s2_tile"])}
    picture = splits_map([((w, so, e, n), split) for _, split, w, so, e, n in bounds.iter_rows()], footprints)
    storage.write_bytes(storage.path(layout.SPLITS_MAP), picture)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={**counts, "map": dg.MetadataValue.md(markdown_image(picture, "patches by split")),
                  "map_path": dg.MetadataValue.path(str(storage.path(layout.SPLITS_MAP))),
                  "method": s.split_method, "blocks": written["block_id"].n_unique(),
                  "tiles_missing": len(missing), "version": version, "path": dg.MetadataValue.path(str(out))},
        check_results=[dg.AssetCheckResult(check_name=n, passed=not p, metadata={"problems": "; ".join(p[:5])})
                       for n, p in problems.items()])


ASSETS = [tile_catalog, real_patches, splits]
