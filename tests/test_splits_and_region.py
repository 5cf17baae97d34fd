"""Splits and the sample region as plain functions."""

import json

import numpy as np
import polars as pl
import rasterio

from aras_assets.grid import parse_tile_id, s2_filename, wc_filename
from aras_assets.sources.sample_region import SAMPLE_TILES, landscape, wc_offset
from aras_assets.sources.splits import assign_splits


def grid(tiles: list[str], n: int) -> pl.DataFrame:
    rows = [{"patch_id": f"{t}_{r:03d}_{c:03d}", "s2_tile": t, "row": r, "col": c}
            for t in tiles for r in range(n) for c in range(n)]
    return pl.DataFrame(rows)


def test_blocked_splits_keep_blocks_together_and_hit_the_fractions():
    patches = grid(["N38E028", "N38E029", "N36E030"], 40)
    out = assign_splits(patches, "blocked", (0.8, 0.1, 0.1), block=4, seed=1)
    assert out.height == patches.height and out["patch_id"].n_unique() == patches.height
    assert out.group_by("block_id").agg(pl.col("split").n_unique())["split"].max() == 1
    shares = out.group_by("split").len().with_columns(pl.col("len") / out.height)
    share = dict(zip(shares["split"], shares["len"], strict=True))
    assert abs(share["train"] - 0.8) < 0.05 and abs(share["val"] - 0.1) < 0.04 and abs(share["test"] - 0.1) < 0.04


def test_splits_are_deterministic_and_stable_when_tiles_are_added():
    small = assign_splits(grid(["N38E028"], 12), "blocked", block=2, seed=3)
    assert small.equals(assign_splits(grid(["N38E028"], 12), "blocked", block=2, seed=3))
    grown = assign_splits(grid(["N38E028", "N36E031"], 12), "blocked", block=2, seed=3)
    assert small.equals(grown.filter(pl.col("s2_tile") == "N38E028"))
    assert not small.equals(assign_splits(grid(["N38E028"], 12), "blocked", block=2, seed=4))


def test_random_splits_and_no_empty_split_with_few_blocks():
    out = assign_splits(grid(["N38E028"], 30), "random", seed=0)
    assert out["block_id"].n_unique() == 900 and set(out["split"]) == {"train", "val", "test"}
    few = assign_splits(grid(["N38E028"], 4), "blocked", block=2, seed=0)  # 4 blocks only
    assert set(few["split"]) == {"train", "val", "test"}


def test_landscape_is_deterministic_plausible_and_exercises_the_remap():
    codes_by_tile = {}
    for recipe in SAMPLE_TILES:
        codes, refl = landscape(recipe, 768, 7)
        again, _ = landscape(recipe, 768, 7)
        assert (codes == again).all() and refl.dtype == np.uint16 and refl.shape == (4, 768, 768)
        codes_by_tile[recipe.tile] = codes
        # Every class but nodata has data in every band; spatially coherent, not salt and pepper.
        land = codes > 0
        assert (refl[:, land] > 0).all()
        assert (codes[1:, :] == codes[:-1, :]).mean() > 0.9
    allcodes = set(np.unique(np.concatenate([c.ravel() for c in codes_by_tile.values()])).tolist())
    assert {10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100, 0} <= allcodes
    assert (codes_by_tile["N36E030"] == 0).any()  # the coast has nodata sea
    assert not (landscape(SAMPLE_TILES[0], 768, 8)[0] == codes_by_tile["N38E028"]).all()


def test_sample_region_files_are_real_cogs_on_the_real_grid(sample_region):
    spec = json.loads((sample_region / "sample_region.json").read_text())
    assert len(spec["tiles"]) >= 4
    wc_tiles = {wc_offset(t)[0] for t in spec["tiles"]}
    assert len(wc_tiles) >= 2
    # At least one S2 tile lies more than a degree from its WorldCover tile's corner.
    assert any(max(abs(a - b) for a, b in zip(parse_tile_id(t), parse_tile_id(wc_offset(t)[0]), strict=True)) > 1
               for t in spec["tiles"])
    for t in spec["tiles"]:
        lat, lon = parse_tile_id(t)
        with rasterio.open(sample_region / s2_filename(t)) as ds:
            assert ds.crs.to_epsg() == 4326 and ds.count == 4 and ds.dtypes[0] == "uint16" and ds.nodata == 0
            assert (ds.bounds.left, ds.bounds.top) == (lon, lat + 1)
            assert abs(ds.res[0] - 1 / 12000) < 1e-12 and ds.is_tiled and ds.overviews(1)
            assert ds.profile["compress"] == "deflate"
    for wc in wc_tiles:
        with rasterio.open(sample_region / wc_filename(wc)) as ds:
            assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.overviews(1)
            lat, lon = parse_tile_id(wc)
            col = (ds.bounds.left - lon) * 12000
            assert abs(col - round(col)) < 1e-6  # cut pixel-aligned on its own tile's grid
