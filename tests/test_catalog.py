"""The tile catalog from a folder and from URI templates."""

import polars as pl

from aras_assets.grid import Footprint
from aras_assets.landcover import label_lut
from aras_assets.settings import S2_BUCKET_TEMPLATE, WC_BUCKET_TEMPLATE
from aras_assets.sources.catalog import build_catalog, from_templates, match_tiles
from aras_assets.sources.patches import PatchOptions, TileSource, extract_tile
from aras_assets.sources.rasters import gdal_path


def test_bucket_templates_expand_to_the_real_names_and_match_by_footprint():
    s2, wc = from_templates(Footprint(28.5, 37.5, 29.5, 38.5), S2_BUCKET_TEMPLATE, WC_BUCKET_TEMPLATE)
    assert [i.tile for i in s2] == ["N37E028", "N37E029", "N38E028", "N38E029"]
    assert s2[3].uri == "s3://esa-worldcover-s2/rgbnir/2021/N38/ESA_WorldCover_10m_2021_v200_N38E029_S2RGBNIR.tif"
    assert [i.tile for i in wc] == ["N36E027"]
    assert wc[0].uri == "s3://esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_N36E027_Map.tif"
    # Matching by footprint (the catalog itself probes each header first: tests/test_remote.py).
    catalog = match_tiles(Footprint(28.5, 37.5, 29.5, 38.5), s2, wc, "templates")
    offsets = {r["s2_tile"]: (r["wc_tile"], r["wc_row_off"], r["wc_col_off"]) for r in catalog.iter_rows(named=True)}
    assert offsets["N38E029"] == ("N36E027", 0, 24000)
    assert offsets["N37E028"] == ("N36E027", 12000, 12000)


def test_gdal_paths_for_remote_cogs():
    assert gdal_path("s3://esa-worldcover/v200/x.tif") == "/vsis3/esa-worldcover/v200/x.tif"
    assert gdal_path("https://host/x.tif") == "/vsicurl/https://host/x.tif"
    assert gdal_path("file:///data/x.tif") == "/data/x.tif" and gdal_path("/data/x.tif") == "/data/x.tif"


def test_local_path_templates_use_the_same_reader(sample_region, tmp_path):
    # A template over local files runs the code path of the remote buckets end to end.
    s2_t = str(sample_region / "ESA_WorldCover_10m_2021_v200_{tile}_S2RGBNIR.tif")
    wc_t = str(sample_region / "ESA_WorldCover_10m_2021_v200_{tile}_Map.tif")
    catalog = build_catalog(Footprint(29.01, 38.01, 29.1, 38.99), "templates", None, s2_t, wc_t)
    assert catalog["s2_tile"].to_list() == ["N38E029"]
    row = catalog.row(0, named=True)
    result = extract_tile(TileSource(row["s2_tile"], row["s2_uri"], row["wc_tile"], row["wc_uri"]),
                          PatchOptions(label_lut()), tmp_path / "out", "out")
    folder_catalog = build_catalog(Footprint(29.01, 38.01, 29.1, 38.99), "folder", sample_region, "", "")
    assert folder_catalog["s2_uri"].to_list() == [row["s2_uri"]]
    assert result.manifest.height > 0 and result.manifest.filter(pl.col("wc_tile") != "N36E027").is_empty()
