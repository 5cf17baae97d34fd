"""Bad inputs give a clear error that names the file, tile, folder or box, and leave finished
partitions alone.

Each case is checked at two tiers where it makes sense: the plain function (build_catalog,
open_raster, extract_tile, StorageResource) raising TileError / StorageError /
UnknownLabelError, and the assets through dagster.materialize, where the step fails with a
dg.Failure whose message names the culprit. The tiles are tiny hand-made ones on the real grid
(512 px, 2x2 patches) so the file stays fast; the session's sample region is never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import rasterio
from polars.testing import assert_frame_equal
from rasterio.transform import from_origin

from aras_assets.grid import Footprint, s2_filename, wc_filename
from aras_assets.landcover import UnknownLabelError, label_lut
from aras_assets.partitions import S2_TILE_PARTITIONS
from aras_assets.settings import Settings
from aras_assets.sources.assets import real_patches, splits, tile_catalog
from aras_assets.sources.catalog import build_catalog
from aras_assets.sources.patches import PatchOptions, TileResult, TileSource, extract_tile
from aras_assets.sources.rasters import S2_KIND, WC_KIND, TileError, open_raster
from aras_assets.sources.sample_region import wc_offset, write_s2_tile, write_wc_tile
from resources.storage import StorageError, StorageResource
from tests.conftest import make_resources

ASSETS = [tile_catalog, real_patches, splits]
# Two S2 tiles in WorldCover tile N36E027 and one in N36E030, like the sample region's layout.
TILES = ("N38E028", "N38E029", "N36E030")
BBOX = Settings().bbox_footprint  # the demo box holds all three
GOOD, BAD = "N36E030", "N38E028"  # partition A (finishes) and partition B (gets bad input)
# (rows, cols) in pixels. BAD is two read strips tall (4x2 patches), so a cut near its end fails
# the second strip after the first strip's patches were already written to the staging folder.
SHAPES = {"N38E028": (1024, 512), "N38E029": (512, 512), "N36E030": (512, 512)}


def codes_for(tile: str) -> np.ndarray:
    """Blocks of tree, grass, crop and built-up: no water, no nodata, so every patch is kept."""
    yy, xx = np.mgrid[0:SHAPES[tile][0], 0:SHAPES[tile][1]]
    legend = np.array([10, 30, 40, 50], dtype=np.uint8)
    return legend[(yy // 64 + xx // 64 + TILES.index(tile)) % 4]


def reflectance_for(tile: str) -> np.ndarray:
    """Noisy reflectance, so the compressed file is large and cutting it removes pixel data."""
    rng = np.random.default_rng(TILES.index(tile))
    return rng.integers(200, 4000, size=(4, *SHAPES[tile]), dtype=np.uint16)


def write_region(folder: Path, tiles: tuple[str, ...] = TILES) -> None:
    """S2 files for `tiles` and the WorldCover files covering them (one per 3-degree tile)."""
    parts: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    for tile in tiles:
        write_s2_tile(folder / s2_filename(tile), tile, reflectance_for(tile))
        wc, row, col = wc_offset(tile)
        parts.setdefault(wc, []).append((row, col, codes_for(tile)))
    for wc, wc_parts in parts.items():
        write_wc_tile(folder / wc_filename(wc), wc, wc_parts)


@pytest.fixture(scope="module")
def region_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad_inputs_region")
    write_region(folder)
    return folder


@pytest.fixture
def tiles(tmp_path: Path, region_template: Path) -> Path:
    """A private copy of the small region that a test may damage."""
    folder = tmp_path / "tiles"
    shutil.copytree(region_template, folder)
    return folder


def s2_path(folder: Path, tile: str) -> Path:
    return folder / s2_filename(tile)


def wc_path(folder: Path, s2_tile: str) -> Path:
    return folder / wc_filename(wc_offset(s2_tile)[0])


def truncate(path: Path, share: float = 0.6) -> bytes:
    """Cut a file to `share` of its bytes; return the original bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return data


def catalog_of(folder: Path, bbox: Footprint = BBOX) -> pl.DataFrame:
    return build_catalog(bbox, str(folder), folder, "", "")


def source_of(folder: Path, tile: str) -> TileSource:
    wc, _, _ = wc_offset(tile)
    return TileSource(tile, str(s2_path(folder, tile)), wc, str(folder / wc_filename(wc)))


def extract(source: TileSource, out: Path) -> TileResult:
    return extract_tile(source, PatchOptions(label_lut(), workers=2), out, "patches/x")


def materialize(data_root: Path, tiles: Path, instance: dg.DagsterInstance, selection: list,
                partition_key: str | None = None, **overrides: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=selection, resources=make_resources(data_root, tiles, workers="2", **overrides),
                          instance=instance, partition_key=partition_key, raise_on_error=False)


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The message of the run's one failed step, which must be a deliberate dg.Failure
    (a clear, non-retried error) rather than an unexpected exception with a traceback."""
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1, [e.message for e in failures]
    data = failures[0].event_specific_data
    assert data.user_failure_data is not None, f"not a dg.Failure: {data.error.to_string()}"
    return data.error.message


def catalog_run(data_root: Path, tiles: Path, instance: dg.DagsterInstance, **overrides: str) -> dg.ExecuteInProcessResult:
    return materialize(data_root, tiles, instance, [tile_catalog], **overrides)


def patches_run(data_root: Path, tiles: Path, instance: dg.DagsterInstance, tile: str) -> dg.ExecuteInProcessResult:
    return materialize(data_root, tiles, instance, [real_patches], partition_key=tile)


def assert_catalog_refused(data_root: Path, instance: dg.DagsterInstance) -> None:
    """A failed tile_catalog writes no catalog and registers no partitions."""
    assert not (data_root / "catalog" / "tiles.parquet").exists()
    assert instance.get_dynamic_partitions(S2_TILE_PARTITIONS) == []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_leftovers(data_root: Path) -> list[str]:
    return sorted(p.name for p in (data_root / "patches").iterdir() if p.name.startswith("."))


def test_small_region_is_good(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    """The baseline the damage is done to: it catalogs and cuts cleanly."""
    catalog = catalog_of(tiles)
    assert catalog["s2_tile"].to_list() == sorted(TILES)
    assert catalog_run(data_root, tiles, instance).success
    assert sorted(instance.get_dynamic_partitions(S2_TILE_PARTITIONS)) == sorted(TILES)
    assert extract(source_of(tiles, GOOD), data_root / "plain").manifest.height == 4


# --- 1. corrupt GeoTIFF -----------------------------------------------------------------

@pytest.mark.parametrize(("which", "content"), [
    ("s2", b"this is not a GeoTIFF\n" * 100),
    ("s2", b""),
    ("s2", b"II*\x00" + bytes(range(256)) * 8),  # TIFF magic, garbage after it
    ("wc", b"\x89PNG garbage" * 50),
])
def test_corrupt_geotiff_refused_by_catalog(tiles: Path, which: str, content: bytes) -> None:
    path = s2_path(tiles, BAD) if which == "s2" else wc_path(tiles, BAD)
    path.write_bytes(content)
    with pytest.raises(TileError, match="cannot be opened") as info:
        catalog_of(tiles)
    assert str(path) in str(info.value)
    with pytest.raises(TileError, match="cannot be opened") as info:
        with open_raster(str(path), S2_KIND if which == "s2" else WC_KIND):
            pass
    assert str(path) in str(info.value)


def test_corrupt_geotiff_fails_tile_catalog(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    path = s2_path(tiles, BAD)
    path.write_bytes(b"garbage with the right name\n" * 200)
    message = failure_message(catalog_run(data_root, tiles, instance))
    assert str(path) in message
    assert "cannot be opened" in message
    assert_catalog_refused(data_root, instance)


# --- 2. truncated GeoTIFF ---------------------------------------------------------------

def refusal_of(folder: Path, tile: str, out: Path) -> TileError:
    """The error for a bad tile, from the catalog if it refuses the file there, else from cutting it."""
    try:
        catalog = catalog_of(folder)
    except TileError as exc:
        return exc
    assert tile in catalog["s2_tile"].to_list()
    with pytest.raises(TileError) as info:
        extract(source_of(folder, tile), out)
    return info.value


@pytest.mark.parametrize(("which", "tile", "share"), [
    ("s2", BAD, 0.6), ("s2", BAD, 0.05), ("s2", GOOD, 0.6), ("wc", GOOD, 0.6), ("wc", GOOD, 0.05),
])
def test_truncated_geotiff_error_names_file(tiles: Path, tmp_path: Path, which: str, tile: str, share: float) -> None:
    path = s2_path(tiles, tile) if which == "s2" else wc_path(tiles, tile)
    truncate(path, share)
    error = refusal_of(tiles, tile, tmp_path / "out")
    assert str(path) in str(error)
    assert "truncated or corrupt" in str(error) or "cannot be opened" in str(error)


def test_truncated_geotiff_fails_partition_and_keeps_finished_ones(
        tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    assert catalog_run(data_root, tiles, instance).success
    assert patches_run(data_root, tiles, instance, GOOD).success
    finished = snapshot(data_root / "patches" / GOOD)
    assert "manifest.parquet" in finished and len([k for k in finished if k.startswith("images/")]) == 4
    assert (data_root / "patches" / GOOD / "manifest.parquet").read_bytes() == finished["manifest.parquet"]

    path = s2_path(tiles, BAD)
    truncate(path, 0.9)
    message = failure_message(patches_run(data_root, tiles, instance, BAD))
    assert str(path) in message
    assert "truncated or corrupt" in message
    assert "rows 512..1024" in message  # the first strip's patches were cut before it failed

    assert snapshot(data_root / "patches" / GOOD) == finished
    assert not (data_root / "patches" / BAD).exists()
    assert staging_leftovers(data_root) == []
    assert sorted(p.name for p in (data_root / "patches").iterdir()) == [GOOD]


def test_failed_rematerialization_keeps_previous_output(
        tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    """A partition that was good keeps its patches when a later run over a damaged file fails."""
    assert catalog_run(data_root, tiles, instance).success
    assert patches_run(data_root, tiles, instance, BAD).success
    before = snapshot(data_root / "patches" / BAD)
    truncate(s2_path(tiles, BAD))
    assert str(s2_path(tiles, BAD)) in failure_message(patches_run(data_root, tiles, instance, BAD))
    assert snapshot(data_root / "patches" / BAD) == before
    assert staging_leftovers(data_root) == []


def test_rerun_after_fix_matches_clean_run(tiles: Path, tmp_path: Path, data_root: Path,
                                           instance: dg.DagsterInstance) -> None:
    clean_root = tmp_path / "clean"
    clean_root.mkdir()
    with dg.instance_for_test() as clean_instance:
        assert catalog_run(clean_root, tiles, clean_instance).success
        assert patches_run(clean_root, tiles, clean_instance, BAD).success
    clean = snapshot(clean_root / "patches" / BAD)

    assert catalog_run(data_root, tiles, instance).success
    path = s2_path(tiles, BAD)
    good_bytes = truncate(path)
    assert str(path) in failure_message(patches_run(data_root, tiles, instance, BAD))
    path.write_bytes(good_bytes)  # the fix: the good file is back
    assert patches_run(data_root, tiles, instance, BAD).success

    assert_frame_equal(pl.read_parquet(data_root / "patches" / BAD / "manifest.parquet"),
                       pl.read_parquet(clean_root / "patches" / BAD / "manifest.parquet"))
    assert snapshot(data_root / "patches" / BAD) == clean
    assert staging_leftovers(data_root) == []


# --- 3. wrong CRS -----------------------------------------------------------------------

def write_s2_with_crs(path: Path, crs: str | None) -> None:
    """A 4-band uint16 S2 file under the real name, in a projected CRS (or none)."""
    refl = reflectance_for(GOOD)
    with rasterio.open(path, "w", driver="GTiff", width=refl.shape[2], height=refl.shape[1], count=4, dtype="uint16",
                       crs=crs, transform=from_origin(3_117_000.0, 4_721_000.0, 10.0, 10.0)) as dst:
        dst.write(refl)


def test_missing_crs_named(tiles: Path) -> None:
    path = s2_path(tiles, BAD)
    write_s2_with_crs(path, None)
    with pytest.raises(TileError, match="has CRS None; expected EPSG:4326") as info:
        catalog_of(tiles)
    assert str(path) in str(info.value)


def test_wrong_crs_named(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    path = s2_path(tiles, BAD)
    write_s2_with_crs(path, "EPSG:3857")
    with pytest.raises(TileError) as info:
        with open_raster(str(path), S2_KIND):
            pass
    assert str(path) in str(info.value) and "EPSG:3857" in str(info.value)
    with pytest.raises(TileError) as info:
        catalog_of(tiles)
    assert str(path) in str(info.value) and "EPSG:3857" in str(info.value) and "EPSG:4326" in str(info.value)

    message = failure_message(catalog_run(data_root, tiles, instance))
    assert str(path) in message and "EPSG:3857" in message
    assert_catalog_refused(data_root, instance)


# --- 4. wrong band count ----------------------------------------------------------------

def test_wrong_band_count_named(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    path = s2_path(tiles, BAD)
    write_s2_tile(path, BAD, reflectance_for(BAD)[:3])  # RGB only, on the right grid
    with pytest.raises(TileError, match=r"has 3 band\(s\); expected 4") as info:
        catalog_of(tiles)
    assert str(path) in str(info.value)

    message = failure_message(catalog_run(data_root, tiles, instance))
    assert str(path) in message and "3 band(s)" in message
    assert_catalog_refused(data_root, instance)


def test_worldcover_band_count_named(tiles: Path) -> None:
    path = wc_path(tiles, GOOD)
    with rasterio.open(path) as src:
        profile, codes = src.profile, src.read(1)
    profile.update(driver="GTiff", count=2)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack([codes, codes]))
    with pytest.raises(TileError, match=r"has 2 band\(s\); expected 1") as info:
        catalog_of(tiles)
    assert str(path) in str(info.value) and "WorldCover" in str(info.value)


# --- 5. no covering WorldCover tile -----------------------------------------------------

def test_missing_worldcover_names_tile_and_expected_file(
        tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    missing = wc_path(tiles, BAD)  # N36E027 covers N38E028 and N38E029
    missing.unlink()
    with pytest.raises(TileError, match="no covering WorldCover tile") as info:
        catalog_of(tiles)
    assert f"S2 tile {BAD}" in str(info.value) and missing.name in str(info.value)

    message = failure_message(catalog_run(data_root, tiles, instance))
    assert f"S2 tile {BAD}" in message and missing.name in message
    assert_catalog_refused(data_root, instance)


def test_worldcover_covering_only_part_of_region(tmp_path: Path) -> None:
    """The WorldCover file exists but covers just one of its two S2 tiles."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    write_region(folder, ("N38E028", "N38E029"))
    wc, row, col = wc_offset("N38E028")
    write_wc_tile(folder / wc_filename(wc), wc, [(row, col, codes_for("N38E028"))])
    with pytest.raises(TileError, match="no covering WorldCover tile") as info:
        catalog_of(folder)
    assert "S2 tile N38E029" in str(info.value) and wc_filename(wc) in str(info.value)


# --- 6. bounding box covering no tile ----------------------------------------------------

def test_bbox_covering_no_tile_named(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    bbox = Footprint(10.0, 10.0, 11.0, 11.0)
    with pytest.raises(TileError, match="covers none of the 3 S2 tiles") as info:
        catalog_of(tiles, bbox)
    assert str(bbox) in str(info.value) and str(tiles) in str(info.value)

    message = failure_message(catalog_run(data_root, tiles, instance, bbox="[10, 10, 11, 11]"))
    assert str(bbox) in message and "covers none" in message
    assert_catalog_refused(data_root, instance)


# --- 7. output folder that cannot be written ----------------------------------------------

def test_patches_folder_is_a_file(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    assert catalog_run(data_root, tiles, instance).success
    blocker = data_root / "patches"
    blocker.write_text("not a folder")
    folder = str(blocker.resolve())
    with pytest.raises(StorageError) as info:
        StorageResource(root=str(data_root)).writable_dir("patches")
    assert f"output folder {folder} " in str(info.value)

    message = failure_message(patches_run(data_root, tiles, instance, GOOD))
    assert f"output folder {folder} " in message and "not writable" in message
    assert blocker.read_text() == "not a folder"


def test_tile_output_path_is_a_file(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    """patches/<tile> is a regular file: the run refuses, naming it, and leaves the file alone."""
    assert catalog_run(data_root, tiles, instance).success
    (data_root / "patches").mkdir()
    blocker = data_root / "patches" / GOOD
    blocker.write_text("not a folder")
    result = patches_run(data_root, tiles, instance, GOOD)
    assert not result.success
    assert f"{blocker.resolve()} exists and is not a folder" in failure_message(result)
    assert blocker.read_text() == "not a folder"
    assert staging_leftovers(data_root) == []


def test_catalog_folder_is_a_file(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    blocker = data_root / "catalog"
    blocker.write_text("not a folder")
    message = failure_message(catalog_run(data_root, tiles, instance))
    assert f"output folder {blocker.resolve()} " in message and "not writable" in message
    assert blocker.read_text() == "not a folder"
    assert instance.get_dynamic_partitions(S2_TILE_PARTITIONS) == []


# --- 8. WorldCover value outside the legend ------------------------------------------------

def poison_label(folder: Path, value: int = 45) -> Path:
    """Put `value` into patch (1, 1) of BAD's labels; return the WorldCover file."""
    codes = codes_for(BAD)
    codes[300:302, 400] = value  # row 1, col 1 of the 2x2 patches
    wc, row, col = wc_offset(BAD)
    write_wc_tile(folder / wc_filename(wc), wc, [(row, col, codes), (*wc_offset("N38E029")[1:], codes_for("N38E029"))])
    return folder / wc_filename(wc)


def test_unknown_label_named_by_extract_tile(tiles: Path, tmp_path: Path) -> None:
    path = poison_label(tiles)
    catalog_of(tiles)  # headers are fine; the values are found when cutting
    with pytest.raises(UnknownLabelError) as info:
        extract(source_of(tiles, BAD), tmp_path / "out")
    message = str(info.value)
    assert str(path) in message and f"patch {BAD}_001_001" in message and "[45]" in message


def test_unknown_label_fails_partition(tiles: Path, data_root: Path, instance: dg.DagsterInstance) -> None:
    poison_label(tiles)
    assert catalog_run(data_root, tiles, instance).success
    assert patches_run(data_root, tiles, instance, GOOD).success
    finished = snapshot(data_root / "patches" / GOOD)

    with pytest.raises(dg.Failure) as info:
        dg.materialize([real_patches], resources=make_resources(data_root, tiles, workers="2"),
                       instance=instance, partition_key=BAD)
    assert f"patch {BAD}_001_001" in info.value.description and "[45]" in info.value.description
    assert not info.value.allow_retries

    message = failure_message(patches_run(data_root, tiles, instance, BAD))
    assert f"{BAD}_001_001" in message and "label value(s) [45]" in message
    assert snapshot(data_root / "patches" / GOOD) == finished
    assert not (data_root / "patches" / BAD).exists()
    assert staging_leftovers(data_root) == []
