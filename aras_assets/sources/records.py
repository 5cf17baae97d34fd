"""Reading the source stages' records: the tile catalog, one tile's patch manifest, the
manifests of many tiles, the splits and the training data. Plain functions; a record that
is not there yet is a `BadInputError` naming the asset to materialize."""

from __future__ import annotations

import polars as pl

from aras_assets import layout
from aras_assets.errors import BadInputError
from aras_assets.sources.splits import splits_version
from resources.storage import StorageResource, read_parquet_checked


def read_catalog(storage: StorageResource) -> pl.DataFrame:
    path = storage.path(layout.CATALOG)
    if not path.exists():
        raise BadInputError(f"no tile catalog at {path}: materialize tile_catalog first")
    return read_parquet_checked(path)


def catalog_entry(storage: StorageResource, tile: str) -> dict:
    """The catalog row of one S2 tile."""
    found = read_catalog(storage).filter(pl.col("s2_tile") == tile)
    if found.is_empty():
        raise BadInputError(f"S2 tile {tile} is not in the tile catalog; re-materialize tile_catalog")
    return found.row(0, named=True)


def read_tile_manifest(storage: StorageResource, tile: str, columns: list[str]) -> pl.DataFrame:
    """Columns of one tile's patch manifest; a clear error when the tile has no patches yet."""
    path = storage.path(layout.patch_manifest(tile))
    if not path.exists():
        raise BadInputError(f"no patches for tile {tile}: materialize real_patches[{tile}] first")
    return read_parquet_checked(path, columns)


BOUNDS = ("lon_min", "lat_min", "lon_max", "lat_max")  # a patch's footprint in degrees


def read_manifests(storage: StorageResource, tiles: list[str]) -> tuple[pl.DataFrame, list[str]]:
    """The manifests of the given tiles that exist, and the tiles that have none yet."""
    have = [t for t in tiles if storage.path(layout.patch_manifest(t)).exists()]
    missing = [t for t in tiles if t not in have]
    if not have:
        return pl.DataFrame(schema={"patch_id": pl.String, "s2_tile": pl.String, "row": pl.Int32, "col": pl.Int32,
                                    **dict.fromkeys(BOUNDS, pl.Float64)}), missing
    frames = [read_parquet_checked(storage.path(layout.patch_manifest(t)), ["patch_id", "s2_tile", "row", "col", *BOUNDS])
              for t in have]
    return pl.concat(frames), missing


def read_splits(storage: StorageResource) -> pl.DataFrame:
    path = storage.path(layout.SPLITS)
    if not path.exists():
        raise BadInputError(f"no splits at {path}: materialize splits first")
    return read_parquet_checked(path)


def read_training_data(storage: StorageResource) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """Manifests of the split's tiles, the splits table and its content version."""
    table = read_splits(storage)
    tiles = table["s2_tile"].unique().sort().to_list()
    missing = [t for t in tiles if not storage.path(layout.patch_manifest(t)).exists()]
    if missing:
        raise BadInputError(f"splits name tiles without patches: {missing}; materialize real_patches for them")
    manifest = pl.concat([read_parquet_checked(storage.path(layout.patch_manifest(t)),
                                          columns=["patch_id", "image_path", "mask_path"]) for t in tiles]) \
        if tiles else pl.DataFrame(schema={"patch_id": pl.String, "image_path": pl.String, "mask_path": pl.String})
    return manifest, table, splits_version(table)


def tile_training_patches(storage: StorageResource, tile: str) -> pl.DataFrame:
    """patch_id and mask_path of one tile's training patches, by patch id (image indices follow
    this order, so it must not vary)."""
    read_splits(storage)  # the clear error when there are no splits yet
    train = pl.scan_parquet(storage.path(layout.SPLITS)).filter(
        (pl.col("s2_tile") == tile) & (pl.col("split") == "train")).select("patch_id").collect()
    return read_tile_manifest(storage, tile, ["patch_id", "mask_path"]).join(train, on="patch_id").sort("patch_id")


def synthetic_manifests(storage: StorageResource, origin: str) -> pl.DataFrame:
    """Every partition's manifest of one synthetic origin, in partition order (empty when none)."""
    paths = sorted(storage.root_path.glob(layout.synthetic_manifests(origin)))
    return pl.concat([read_parquet_checked(p) for p in paths]) if paths else pl.DataFrame()
