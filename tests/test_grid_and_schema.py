"""Grid math, tile names, record ids and the land-cover schema."""

import numpy as np
import pytest

from aras_assets.grid import (
    PIXEL_DEG,
    Footprint,
    grid_offset,
    parse_tile_id,
    s2_filename,
    tile_id,
    tiles_in_bbox,
    wc_filename,
    wc_tile_containing,
)
from aras_assets.ids import parse_patch_id, patch_id
from aras_assets.landcover import (
    DEFAULT_REMAP,
    NODATA_INDEX,
    PALETTE,
    UNKNOWN_INDEX,
    label_lut,
    mask_to_rgb,
    rgb_to_mask,
    validate_remap,
)


def test_tile_names_round_trip_in_all_hemispheres():
    for lat, lon in [(36, 27), (-3, -60), (0, 0), (-34, 151), (5, -1)]:
        assert parse_tile_id(tile_id(lat, lon)) == (lat, lon)
    assert tile_id(36, 27) == "N36E027"
    assert tile_id(-3, -60) == "S03W060"
    assert s2_filename("N37E028") == "ESA_WorldCover_10m_2021_v200_N37E028_S2RGBNIR.tif"
    assert wc_filename("N36E027") == "ESA_WorldCover_10m_2021_v200_N36E027_Map.tif"
    with pytest.raises(ValueError, match="not a tile id"):
        parse_tile_id("N36E27")


def test_worldcover_tile_is_the_three_degree_cell():
    assert wc_tile_containing(38.5, 29.5) == "N36E027"  # two degrees from the corner
    assert wc_tile_containing(36.5, 27.5) == "N36E027"
    assert wc_tile_containing(39.0, 30.0) == "N39E030"
    assert wc_tile_containing(-0.5, -0.5) == "S03W003"


def test_footprint_matching_finds_tile_deep_inside_its_worldcover_tile():
    wc = Footprint.of_tile("N36E027", 3)
    deep = Footprint.of_tile("N38E029", 1)
    assert wc.contains(deep) and wc.intersects(deep)
    # The release only looked at WorldCover ids within +-1 degree: N38E029 vs N36E027 is 2 away.
    assert not Footprint.of_tile("N39E030", 3).intersects(deep)
    # Touching edges do not count as overlap.
    assert not Footprint.of_tile("N38E030", 1).intersects(deep)


def test_tiles_in_bbox_on_the_grid():
    assert tiles_in_bbox(Footprint(28.2, 37.5, 29.5, 38.2), 1) == ["N37E028", "N37E029", "N38E028", "N38E029"]
    assert tiles_in_bbox(Footprint(28.0, 38.0, 29.0, 39.0), 1) == ["N38E028"]
    assert tiles_in_bbox(Footprint(27.5, 36.5, 31.0, 37.0), 3) == ["N36E027", "N36E030"]


def test_grid_offset_is_whole_pixels_or_an_error():
    assert grid_offset(27.0, 39.0, 29.0, 39.0) == (0, 24000)
    assert grid_offset(27.0, 39.0, 28.0, 38.0) == (12000, 12000)
    assert grid_offset(27.0, 39.0, 27.0 + 5 * PIXEL_DEG, 39.0 - 7 * PIXEL_DEG) == (7, 5)
    with pytest.raises(ValueError, match="not pixel-aligned"):
        grid_offset(27.0, 39.0, 27.0 + 0.5 * PIXEL_DEG, 39.0)


def test_patch_ids_name_tile_and_window():
    assert patch_id("N36E027", 12, 3) == "N36E027_012_003"
    pid = parse_patch_id("N36E027_012_003")
    assert (pid.tile, pid.row, pid.col) == ("N36E027", 12, 3)
    assert pid.window() == (768, 3072, 256, 256)
    with pytest.raises(ValueError):
        parse_patch_id("N36E027_12_3")


def test_default_remap_follows_the_release_code():
    lut = label_lut()
    assert lut[90] == 2 and lut[100] == 2  # wetland and moss to grass
    assert lut[95] == 0  # mangrove to tree
    assert lut[70] == 5  # snow to barren
    assert [lut[c] for c in (10, 20, 30, 40, 50, 60, 80)] == list(range(7))
    assert lut[0] == NODATA_INDEX and lut[45] == UNKNOWN_INDEX and lut[255] == UNKNOWN_INDEX
    assert DEFAULT_REMAP == {90: 30, 100: 30, 95: 10, 70: 60}


def test_remap_is_configurable_and_validated():
    assert label_lut({90: 10, 100: 30, 95: 10, 70: 60})[90] == 0  # the paper text's wetland -> tree
    with pytest.raises(ValueError, match="without a class"):
        validate_remap({90: 30})
    with pytest.raises(ValueError, match="not one of the kept codes"):
        validate_remap({90: 95, 100: 30, 95: 10, 70: 60})


def test_mask_colours_round_trip_and_reject_unknown_colours():
    classes = np.tile(np.arange(7, dtype=np.uint8), (4, 1))
    rgb = mask_to_rgb(classes)
    assert tuple(rgb[0, 0]) == (0, 100, 0) and tuple(rgb[0, -1]) == (0, 0, 255)
    assert (rgb_to_mask(rgb) == classes).all()
    rgb[2, 3] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"colour \(1, 2, 3\) at pixel \(row 2, col 3\)"):
        rgb_to_mask(rgb, source="x.png")
    assert PALETTE.shape == (7, 3)
