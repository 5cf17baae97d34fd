"""Patch extraction as plain functions: alignment, remap, filters, normalization, idempotence."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from aras_assets.grid import PIXEL_DEG, s2_filename, wc_filename
from aras_assets.landcover import PALETTE, label_lut, rgb_to_mask
from aras_assets.sources.patches import (
    PatchOptions,
    TileSource,
    extract_tile,
    reject_reason,
    strip_height,
    to_8bit,
)
from aras_assets.sources.sample_region import write_s2_tile, write_wc_tile
from tests.helpers import write_pair

OPTS = PatchOptions(label_lut(), workers=2)


def source(folder: Path, s2_tile: str, wc_tile: str) -> TileSource:
    return TileSource(s2_tile, str(folder / s2_filename(s2_tile)), wc_tile, str(folder / wc_filename(wc_tile)))


def test_label_at_known_lon_lat_lands_in_the_right_patch_pixel(tmp_path):
    # S2 file at the top-left of N38E029 (row 0, col 24000 of WorldCover N36E027); the
    # WorldCover file starts 50 columns further west, so the two windows differ by an offset.
    write_s2_tile(tmp_path / s2_filename("N38E029"), "N38E029", np.full((4, 512, 512), 900, dtype=np.uint16))
    wc_path = tmp_path / wc_filename("N36E027")
    codes = np.full((600, 600), 30, dtype=np.uint8)
    write_wc_tile(wc_path, "N36E027", [(0, 24000 - 50, codes)])
    lon = 29 + 300.5 * PIXEL_DEG  # S2 column 300 -> patch column 1, x 44
    lat = 39 - 100.5 * PIXEL_DEG  # S2 row 100 -> patch row 0, y 100
    with rasterio.open(wc_path) as ds:  # find the pixel from the label file's own geotransform
        r, c = ds.index(lon, lat)
    assert (r, c) == (100, 350)
    codes[r, c] = 60
    write_wc_tile(wc_path, "N36E027", [(0, 24000 - 50, codes)])
    result = extract_tile(source(tmp_path, "N38E029", "N36E027"), OPTS, tmp_path / "out", "out")
    assert result.manifest["patch_id"].to_list() == [f"N38E029_00{r}_00{c}" for r in (0, 1) for c in (0, 1)]
    mask = rgb_to_mask(np.asarray(Image.open(tmp_path / "out" / "masks" / "N38E029_000_001.png")))
    assert mask[100, 44] == 5 and (mask == 5).sum() == 1  # barren exactly there
    row = result.manifest.filter(pl.col("patch_id") == "N38E029_000_001").row(0, named=True)
    assert row["lon_min"] == pytest.approx(29 + 256 * PIXEL_DEG) and row["lat_max"] == pytest.approx(39)
    assert (row["wc_x_off"], row["wc_y_off"]) == (24000 + 256, 0)  # on WorldCover's tile grid
    # The label file is a crop of its tile: its own window is 24000 - 50 columns further left, and
    # reading the file there gives the patch's labels.
    assert (row["wc_file_x_off"], row["wc_file_y_off"]) == (256 + 50, 0)
    with rasterio.open(wc_path) as ds:
        window = Window(row["wc_file_x_off"], row["wc_file_y_off"], row["width"], row["height"])
        labels = ds.read(1, window=window)
    assert labels[100, 44] == 60 and (labels == 60).sum() == 1 and labels.shape == (256, 256)
    assert row["px_barren"] == 1 and row["px_grass"] == 65535


def test_remap_and_each_filter(tmp_path):
    codes = np.full((512, 768), 40, dtype=np.uint8)
    refl = np.full((4, 512, 768), 1200, dtype=np.uint16)
    refl[:, :256, :256] = 0  # patch (0, 0): no imagery
    codes[10, 300] = 0  # patch (0, 1): one nodata label
    codes[256:, :256] = 80  # patch (1, 0): all water
    codes[256:, 256:512] = 80
    codes[256:256 + 30, 256:512] = 90  # patch (1, 1): 88% water, wetland becomes grass
    codes[:256, 512:] = 70  # patch (0, 2): snow becomes barren
    codes[256:, 512:] = 95  # patch (1, 2): mangrove becomes tree
    codes[300, 600] = 100  # moss becomes grass
    write_pair(tmp_path, "N36E030", codes, refl)
    result = extract_tile(source(tmp_path, "N36E030", "N36E030"), OPTS, tmp_path / "out", "out")
    assert dict(result.rejected.iter_rows()) == {"N36E030_000_000": "all_zero_image",
                                                 "N36E030_000_001": "nodata_label",
                                                 "N36E030_001_000": "too_much_water"}
    assert result.reject_counts == {"all_zero_image": 1, "nodata_label": 1, "too_much_water": 1}
    kept = {r["patch_id"]: r for r in result.manifest.iter_rows(named=True)}
    assert set(kept) == {"N36E030_001_001", "N36E030_000_002", "N36E030_001_002"}
    assert kept["N36E030_001_001"]["px_water"] == 226 * 256 and kept["N36E030_001_001"]["px_grass"] == 30 * 256
    assert kept["N36E030_000_002"]["px_barren"] == 256 * 256
    assert kept["N36E030_001_002"]["px_tree"] == 256 * 256 - 1 and kept["N36E030_001_002"]["px_grass"] == 1


def test_water_limit_is_strictly_above_the_share():
    rgb = np.ones((3, 10, 10), dtype=np.uint16)
    classes = np.full((10, 10), 6, dtype=np.uint8)
    classes[0, :] = 2
    assert reject_reason(rgb, classes, 0.9) is None  # exactly 90% water is kept
    classes[0, 0] = 6
    assert reject_reason(rgb, classes, 0.9) == "too_much_water"


def test_normalization_known_answers():
    rgb = np.array([[[1000, 500]], [[250, 0]], [[999, 1]]], dtype=np.uint16)  # (3, 1, 2)
    out = to_8bit(rgb, "per_patch_max")
    assert out.shape == (1, 2, 3)
    assert out[0, 0].tolist() == [255, 63, 254] and out[0, 1].tolist() == [127, 0, 0]
    stretched = to_8bit(np.array([[[3000, 6000]], [[1500, 0]], [[12, 2999]]], dtype=np.uint16), "stretch", 3000)
    assert stretched[0, 0].tolist() == [255, 127, 1] and stretched[0, 1].tolist() == [255, 0, 254]
    assert not to_8bit(np.zeros((3, 2, 2), dtype=np.uint16)).any()


def test_strips_cover_whole_blocks_and_patch_rows():
    assert strip_height(512) == 512 and strip_height(256) == 256
    assert strip_height(1024) == 1024 and strip_height(384) == 768 and strip_height(128) == 256


def test_extraction_is_idempotent_and_matches_the_palette(tmp_path, sample_region):
    tile = source(sample_region, "N38E029", "N36E027")
    a = extract_tile(tile, OPTS, tmp_path / "a", "x")
    b = extract_tile(tile, PatchOptions(label_lut(), workers=1), tmp_path / "b", "x")
    assert a.manifest.equals(b.manifest) and a.rejected.equals(b.rejected)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * a.manifest.height > 0
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    mask = np.asarray(Image.open(tmp_path / "a" / "masks" / f"{a.manifest['patch_id'][0]}.png"))
    colours = {tuple(c) for c in mask.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in PALETTE.tolist()}
    assert a.reject_counts["too_much_water"] >= 1  # the lake yields open-water patches
