"""Remote tiles through real servers on 127.0.0.1: an HTTP server of our own that honours Range
requests (tests/servers.py) and moto's standalone S3 server, holding the sample region under the
public buckets' key layout. Outputs must be byte-identical to the local run of the same tiles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from servers import S2_KEY, WC_KEY, Fault, MotoS3, RangeServer, bucket_layout, free_port, mirror

from aras_assets.errors import TransientError
from aras_assets.grid import Footprint, s2_filename
from aras_assets.landcover import label_lut
from aras_assets.settings import SettingsError, load_settings
from aras_assets.sources import remote
from aras_assets.sources.assets import ASSETS, real_patches, tile_catalog
from aras_assets.sources.catalog import catalog_report
from aras_assets.sources.patches import PatchOptions, TileSource, extract_tile, materialize_tile
from aras_assets.sources.rasters import TileError
from aras_assets.sources.remote import BucketAccessError, TileMissing, TileUnavailable
from aras_assets.sources.sample_region import SAMPLE_TILES, wc_offset, write_s2_tile
from tests.conftest import make_resources
from tests.test_retries import _attempts, _failure

DEMO_BBOX = Footprint(27.9, 35.9, 31.2, 39.1)  # 5 x 5 one-degree cells, 4 of them with a sample tile
TILES = [r.tile for r in SAMPLE_TILES]
WC_TILES = sorted({wc_offset(t)[0] for t in TILES})
URI_COLUMNS = ("s2_uri", "wc_uri")
# Fast failures for the fault tests: GDAL retries once after 0.1 s, our read retries twice.
FAST = {"GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_DELAY": "0.1", "GDAL_HTTP_TIMEOUT": "1"}


@pytest.fixture(scope="module")
def bucket_dir(sample_region: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mirror(tmp_path_factory.mktemp("mirror"), bucket_layout(sample_region, TILES, WC_TILES))


@pytest.fixture
def http(bucket_dir: Path):
    with RangeServer(bucket_dir) as server:
        yield server


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "READ_RETRY_WAITS_S", (0.05, 0.05))


def templates(base: str) -> tuple[str, str]:
    return f"{base}/esa-worldcover-s2/{S2_KEY}", f"{base}/esa-worldcover/{WC_KEY}"


def local_source(region: Path, tile: str) -> TileSource:
    wc = wc_offset(tile)[0]
    return TileSource(tile, str(region / s2_filename(tile)), wc, str(region / f"ESA_WorldCover_10m_2021_v200_{wc}_Map.tif"))


def source_of(catalog: pl.DataFrame, tile: str) -> TileSource:
    row = catalog.filter(pl.col("s2_tile") == tile).row(0, named=True)
    return TileSource(row["s2_tile"], row["s2_uri"], row["wc_tile"], row["wc_uri"])


def files_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_output(remote_dir: Path, remote_result, local_dir: Path, local_result) -> None:
    assert remote_result.manifest.height > 0
    assert remote_result.manifest.drop(URI_COLUMNS).equals(local_result.manifest.drop(URI_COLUMNS))
    assert remote_result.rejected.equals(local_result.rejected)
    assert files_digest(remote_dir) == files_digest(local_dir)  # every PNG, byte for byte


def test_http_templates_give_the_real_grid_and_byte_identical_patches(http, sample_region, tmp_path):
    s2_t, wc_t = templates(http.url)
    report = catalog_report(DEMO_BBOX, "templates", None, s2_t, wc_t, {}, workers=8)
    assert report.catalog["s2_tile"].to_list() == sorted(TILES)
    assert len(report.skipped) == 21 and "N37E028" in report.skipped  # sea and empty cells: asked once, skipped
    # Each candidate's header once: GDAL's HEAD (twice for a missing file) and the first 16 KiB of those that exist.
    assert http.stats.requests <= 2 * 25 + 2 * (4 + 2), http.stats.log
    local = catalog_report(DEMO_BBOX, "folder", sample_region, "", "").catalog
    assert report.catalog.drop(URI_COLUMNS).equals(local.drop(URI_COLUMNS))

    opts = PatchOptions(label_lut(), workers=2)
    for tile in ("N38E029", "N36E030"):
        http.reset_stats()
        remote_result = extract_tile(source_of(report.catalog, tile), opts, tmp_path / "http" / tile, f"patches/{tile}")
        local_result = extract_tile(local_source(sample_region, tile), opts, tmp_path / "local" / tile, f"patches/{tile}")
        assert_same_output(tmp_path / "http" / tile, remote_result, tmp_path / "local" / tile, local_result)
        # Few requests: each file's header once, then block-aligned strips; bytes close to the files' size.
        heads = sum(1 for _, path, rng in http.stats.log if rng.startswith("bytes=0-"))
        assert heads == 2, http.stats.log
        s2_size = (sample_region / s2_filename(tile)).stat().st_size
        assert http.stats.bytes_sent < 1.2 * s2_size + 1_000_000, (http.stats.bytes_sent, s2_size)


def test_s3_templates_on_moto_give_byte_identical_patches(sample_region, tmp_path, monkeypatch):
    # Credentials come from the environment, the endpoint from settings, as a private store's would.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aras-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aras-test-secret")
    with MotoS3() as s3:
        s3.upload(bucket_layout(sample_region, TILES, WC_TILES), "aras-test-key", "aras-test-secret")
        options = {"AWS_S3_ENDPOINT": s3.endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                   "AWS_REGION": "us-east-1"}
        report = catalog_report(DEMO_BBOX, "templates", None, f"s3://esa-worldcover-s2/{S2_KEY}",
                                f"s3://esa-worldcover/{WC_KEY}", options, workers=8)
        assert report.catalog["s2_tile"].to_list() == sorted(TILES) and len(report.skipped) == 21
        opts = PatchOptions(label_lut(), workers=2, remote_options=tuple(options.items()))
        tile = "N38E028"
        remote_result = extract_tile(source_of(report.catalog, tile), opts, tmp_path / "s3", f"patches/{tile}")
    assert remote_result.manifest["s2_uri"][0].startswith("s3://esa-worldcover-s2/rgbnir/2021/N38/")
    local_result = extract_tile(local_source(sample_region, tile), opts, tmp_path / "local", f"patches/{tile}")
    assert_same_output(tmp_path / "s3", remote_result, tmp_path / "local", local_result)


def test_catalog_asset_reports_skipped_cells(http, data_root, sample_region, instance):
    s2_t, wc_t = templates(http.url)
    resources = make_resources(data_root, "templates", s2_uri_template=s2_t,
                               wc_uri_template=wc_t)
    result = dg.materialize(ASSETS, selection=[tile_catalog], resources=resources, instance=instance)
    meta = result.asset_materializations_for_node("tile_catalog")[0].metadata
    assert meta["s2_tiles"].value == 4 and meta["skipped_cells"].value == 21
    assert sorted(instance.get_dynamic_partitions("s2_tile")) == sorted(TILES)  # only existing tiles


# --- network faults ------------------------------------------------------------------------


def test_transient_faults_are_retried_inside_the_read(http, sample_region, tmp_path, fast_retries):
    s2_t, wc_t = templates(http.url)
    catalog = catalog_report(DEMO_BBOX, "templates", None, s2_t, wc_t, FAST).catalog
    opts = PatchOptions(label_lut(), workers=2, remote_options=tuple(FAST.items()))
    local = extract_tile(local_source(sample_region, "N38E028"), opts, tmp_path / "local", "p")
    for kind in ("503", "reset", "truncate"):
        http.faults = [Fault(kind, times=2, match="N38E028_S2RGBNIR")]
        http.reset_stats()
        out = tmp_path / kind
        result = extract_tile(source_of(catalog, "N38E028"), opts, out, "p")
        assert http.stats.faults_injected == 2, kind
        assert_same_output(out, result, tmp_path / "local", local)  # a body cut short never becomes a patch


@pytest.mark.parametrize("kind", ["503", "truncate", "slow"])
def test_persistent_faults_fail_as_transient_and_keep_the_last_version(kind, http, sample_region, tmp_path,
                                                                       fast_retries):
    s2_t, wc_t = templates(http.url)
    catalog = catalog_report(DEMO_BBOX, "templates", None, s2_t, wc_t, FAST).catalog
    opts = PatchOptions(label_lut(), workers=2, remote_options=tuple(FAST.items()))
    final = tmp_path / "patches" / "N38E028"
    materialize_tile(source_of(catalog, "N38E028"), opts, final, "patches/N38E028")
    before = files_digest(final)
    # Every data read after the header now fails (the header of a fresh open still comes through).
    http.faults = [Fault(kind, times=-1, match="N38E028_S2RGBNIR", slow_s=1.6)]
    with pytest.raises(TileUnavailable) as err:
        materialize_tile(source_of(catalog, "N38E028"), opts, final, "patches/N38E028")
    assert isinstance(err.value, TransientError) and "N38E028_S2RGBNIR.tif" in str(err.value)
    assert http.stats.faults_injected >= 3  # GDAL's retries and ours
    assert files_digest(final) == before  # manifest and files as before the run


# --- bad input -----------------------------------------------------------------------------


def test_template_whose_tiles_all_404_names_template_and_first_uri(http):
    s2_t = f"{http.url}/nowhere/{{tile}}.tif"
    with pytest.raises(TileMissing) as err:
        catalog_report(DEMO_BBOX, "templates", None, s2_t, templates(http.url)[1], {})
    assert s2_t in str(err.value) and f"{http.url}/nowhere/N35E027.tif" in str(err.value)


def test_bucket_needing_credentials_says_which_variables_to_set(http, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_NO_SIGN_REQUEST"):
        monkeypatch.delenv(name, raising=False)
    http.faults = [Fault("auth")]
    options = {"AWS_S3_ENDPOINT": http.endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    with pytest.raises(BucketAccessError) as err:
        catalog_report(DEMO_BBOX, "templates", None, f"s3://esa-worldcover-s2/{S2_KEY}", f"s3://esa-worldcover/{WC_KEY}",
                       options)
    message = str(err.value)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message and http.endpoint in message
    assert "s3://esa-worldcover-s2/rgbnir/2021/N35/ESA_WorldCover_10m_2021_v200_N35E027_S2RGBNIR.tif" in message


def test_tile_off_the_grid_over_http_is_refused(sample_region, tmp_path):
    folder = mirror(tmp_path / "bucket", bucket_layout(sample_region, [], WC_TILES))
    key = folder / "esa-worldcover-s2" / S2_KEY.format(lat_band="N38", tile="N38E029")
    write_s2_tile(key, "N38E029", np.full((4, 256, 256), 900, dtype=np.uint16), origin=(29.00001, 39.0))
    with RangeServer(folder) as server, pytest.raises(TileError, match="off the 1/12000-degree grid"):
        catalog_report(Footprint(29.01, 38.01, 29.1, 38.99), "templates", None, *templates(server.url), {})


def test_server_answering_html_instead_of_a_tiff_is_bad_input(http):
    http.faults = [Fault("html", match="N38E029")]
    with pytest.raises(TileError, match=r"text/html.*instead of a GeoTIFF"):
        catalog_report(Footprint(29.01, 38.01, 29.1, 38.99), "templates", None, *templates(http.url), {})


def test_dagster_retries_a_partition_whose_server_stays_down(http, data_root, instance, fast_retries):
    # Through real runs: the step fails as transient, is retried by Dagster, gives up after
    # retry_window_s, and the partition keeps its last good version.
    s2_t, wc_t = templates(http.url)
    resources = make_resources(data_root, "templates", s2_uri_template=s2_t, wc_uri_template=wc_t,
                               remote_options=json.dumps(FAST), retry_window_s="1")
    assert dg.materialize(ASSETS, selection=[tile_catalog], resources=resources, instance=instance).success
    assert dg.materialize(ASSETS, selection=[real_patches], partition_key="N38E029", resources=resources,
                          instance=instance).success
    before = files_digest(data_root / "patches" / "N38E029")
    http.faults = [Fault("503", match="N38E029_S2RGBNIR")]
    result = dg.materialize(ASSETS, selection=[real_patches], partition_key="N38E029", resources=resources,
                            instance=instance, raise_on_error=False)
    assert not result.success and _attempts(result, "real_patches") == 2
    assert "kept failing" in _failure(result) and "gave up after 1 retries" in _failure(result)
    assert files_digest(data_root / "patches" / "N38E029") == before


def test_credentials_are_never_settings():
    with pytest.raises(SettingsError, match=r"AWS_SECRET_ACCESS_KEY.*credentials only from the environment"):
        load_settings(overrides={"remote_options": {"AWS_SECRET_ACCESS_KEY": "x"}})
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    assert "AWS_NO_SIGN_REQUEST" not in remote.gdal_options({}, env)  # signed with the environment's keys
    assert remote.gdal_options({}, {})["AWS_NO_SIGN_REQUEST"] == "YES"  # the public buckets, unsigned


def test_unreachable_bucket_names_endpoint_and_first_uri(fast_retries):
    port = free_port()  # nothing listens there
    options = {**FAST, "AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    with pytest.raises(TileUnavailable) as err:
        catalog_report(Footprint(29.01, 38.01, 29.1, 38.99), "templates", None, f"s3://esa-worldcover-s2/{S2_KEY}",
                       f"s3://esa-worldcover/{WC_KEY}", options)
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message and "N38E029_S2RGBNIR.tif" in message
    assert isinstance(err.value, TransientError)  # an endpoint that is down may come back: the step retries
