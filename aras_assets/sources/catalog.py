"""The tile catalog: S2 tiles in a bounding box and the WorldCover tiles that cover them.

A local folder is scanned and every file's header is checked; a URI template (the public
buckets, say) is expanded for the cells of the grid inside the box, and each candidate's
header is asked for once (concurrently, bounded): cells with no tile (sea, outside coverage)
are skipped and counted, and only tiles that exist enter the catalog. WorldCover tiles are
matched to S2 tiles by footprint, never by nearby ids as the release did."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from aras_assets.errors import BadInputError
from aras_assets.grid import (
    PIXELS_PER_DEGREE,
    S2_NAME_RE,
    S2_TILE_DEG,
    WC_NAME_RE,
    WC_TILE_DEG,
    Footprint,
    grid_offset,
    lat_band,
    tiles_in_bbox,
    wc_filename,
    wc_tile_containing,
)
from aras_assets.sources.rasters import S2_KIND, WC_KIND, RasterKind, TileError, footprint, open_raster
from aras_assets.sources.remote import BucketAccessError, TileMissing, TileUnavailable, endpoint_of


@dataclass(frozen=True)
class TileInfo:
    tile: str
    uri: str
    footprint: Footprint
    width: int
    height: int


def scan_folder(folder: Path) -> tuple[list[TileInfo], list[TileInfo]]:
    """S2 and WorldCover files under a folder, each opened once to read and check its header."""
    if not folder.is_dir():
        raise TileError(f"tile source folder {folder} does not exist or is not a folder")
    s2, wc = [], []
    for path in sorted(folder.rglob("*.tif")):
        for regex, kind, out in ((S2_NAME_RE, S2_KIND, s2), (WC_NAME_RE, WC_KIND, wc)):
            m = regex.match(path.name)
            if m:
                with open_raster(str(path), kind) as ds:
                    out.append(TileInfo(m.group(1), str(path), footprint(ds), ds.width, ds.height))
    return s2, wc


def from_templates(bbox: Footprint, s2_template: str, wc_template: str) -> tuple[list[TileInfo], list[TileInfo]]:
    """Full-size tiles on the grid inside the box, with URIs from the templates
    (placeholders {tile} and {lat_band})."""
    s2 = [TileInfo(t, _expand(s2_template, t), Footprint.of_tile(t, S2_TILE_DEG),
                   S2_TILE_DEG * PIXELS_PER_DEGREE, S2_TILE_DEG * PIXELS_PER_DEGREE)
          for t in tiles_in_bbox(bbox, S2_TILE_DEG)]
    wc_ids = sorted({wc_tile_containing(i.footprint.south + 0.5, i.footprint.west + 0.5) for i in s2})
    wc = [TileInfo(t, _expand(wc_template, t), Footprint.of_tile(t, WC_TILE_DEG),
                   WC_TILE_DEG * PIXELS_PER_DEGREE, WC_TILE_DEG * PIXELS_PER_DEGREE) for t in wc_ids]
    return s2, wc


def _expand(template: str, tile: str) -> str:
    try:
        return template.format(tile=tile, lat_band=lat_band(tile))
    except (KeyError, IndexError) as exc:
        raise BadInputError(f"URI template {template!r} has an unknown placeholder {exc}; use {{tile}} and {{lat_band}}") from exc


CATALOG_SCHEMA = {
    "s2_tile": pl.String, "s2_uri": pl.String, "wc_tile": pl.String, "wc_uri": pl.String,
    "west": pl.Float64, "south": pl.Float64, "east": pl.Float64, "north": pl.Float64,
    "width": pl.Int32, "height": pl.Int32, "wc_row_off": pl.Int32, "wc_col_off": pl.Int32,
}


def match_tiles(bbox: Footprint, s2: list[TileInfo], wc: list[TileInfo], source: str) -> pl.DataFrame:
    """One row per S2 tile in the box with the WorldCover tile whose footprint covers it."""
    if not s2:
        raise TileError(f"no Sentinel-2 RGBNIR tiles (*_S2RGBNIR.tif) found in {source}")
    chosen = [info for info in s2 if info.footprint.intersects(bbox)]
    if not chosen:
        span = Footprint(min(i.footprint.west for i in s2), min(i.footprint.south for i in s2),
                         max(i.footprint.east for i in s2), max(i.footprint.north for i in s2))
        raise TileError(f"bounding box {bbox} covers none of the {len(s2)} S2 tiles in {source} "
                        f"(they span west {span.west}, south {span.south}, east {span.east}, north {span.north})")
    rows = []
    for info in sorted(chosen, key=lambda i: i.tile):
        covering = [w for w in wc if w.footprint.contains(info.footprint)]
        if not covering:
            expected = wc_filename(wc_tile_containing(info.footprint.south + 1e-6, info.footprint.west + 1e-6))
            raise TileError(f"S2 tile {info.tile} ({info.uri}) has no covering WorldCover tile in {source}; "
                            f"expected {expected} covering {info.footprint}")
        cover = covering[0]
        row_off, col_off = grid_offset(cover.footprint.west, cover.footprint.north,
                                       info.footprint.west, info.footprint.north)
        rows.append({"s2_tile": info.tile, "s2_uri": info.uri, "wc_tile": cover.tile, "wc_uri": cover.uri,
                     "west": info.footprint.west, "south": info.footprint.south, "east": info.footprint.east,
                     "north": info.footprint.north, "width": info.width, "height": info.height,
                     "wc_row_off": row_off, "wc_col_off": col_off})
    return pl.DataFrame(rows, schema=CATALOG_SCHEMA)


@dataclass
class CatalogReport:
    """The catalog and the template cells that hold no tile (sea, outside coverage)."""

    catalog: pl.DataFrame
    skipped: list[str] = field(default_factory=list)


def probe(candidates: list[TileInfo], kind: RasterKind, remote_options: Mapping[str, str] | None,
          workers: int) -> list[TileInfo | None]:
    """Each candidate's header, read once and checked, concurrently (at most `workers` at a
    time): its real footprint and size, or None when the tile does not exist."""
    def one(info: TileInfo) -> TileInfo | None:
        try:
            with open_raster(info.uri, kind, remote_options) as ds:
                return TileInfo(info.tile, info.uri, footprint(ds), ds.width, ds.height)
        except TileMissing:
            return None

    if not candidates:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(candidates)))) as pool:
        return list(pool.map(one, candidates))


def probe_templates(bbox: Footprint, s2_template: str, wc_template: str, remote_options: Mapping[str, str] | None = None,
                    workers: int = 16) -> tuple[list[TileInfo], list[TileInfo], list[str]]:
    """The S2 and WorldCover tiles of the templates that exist, and the S2 cells with no tile."""
    s2_cells, _ = from_templates(bbox, s2_template, wc_template)
    if not s2_cells:
        raise TileError(f"bounding box {bbox} holds no 1-degree tile")
    try:
        found = probe(s2_cells, S2_KIND, remote_options, workers)
    except BucketAccessError as exc:
        raise BucketAccessError(f"S2 template {s2_template!r}: the first URI tried, {s2_cells[0].uri}, "
                                f"at {endpoint_of(s2_cells[0].uri, remote_options)}: {exc}") from exc
    except TileUnavailable as exc:  # unreachable or failing: still transient, now naming the template
        raise TileUnavailable(f"S2 template {s2_template!r}, first URI tried {s2_cells[0].uri}: {exc}") from exc
    s2 = [info for info in found if info is not None]
    skipped = [cell.tile for cell, info in zip(s2_cells, found, strict=True) if info is None]
    if not s2:
        raise TileMissing(f"S2 template {s2_template!r} gives no tile in bounding box {bbox}: all {len(s2_cells)} "
                          f"candidate URIs are missing (HTTP 404 / no such key), the first {s2_cells[0].uri} "
                          f"at {endpoint_of(s2_cells[0].uri, remote_options)}; check the template and the endpoint")
    wc_ids = sorted({wc_tile_containing(i.footprint.south + 1e-6, i.footprint.west + 1e-6) for i in s2})
    wc_cells = [TileInfo(t, _expand(wc_template, t), Footprint.of_tile(t, WC_TILE_DEG),
                         WC_TILE_DEG * PIXELS_PER_DEGREE, WC_TILE_DEG * PIXELS_PER_DEGREE) for t in wc_ids]
    wc = [info for info in probe(wc_cells, WC_KIND, remote_options, workers) if info is not None]
    return s2, wc, skipped


def catalog_report(bbox: Footprint, source: str, folder: Path | None, s2_template: str, wc_template: str,
                   remote_options: Mapping[str, str] | None = None, workers: int = 16) -> CatalogReport:
    """The catalog from a folder (when `folder` is given) or from the URI templates, probed."""
    if folder is not None:
        s2, wc = scan_folder(folder)
        return CatalogReport(match_tiles(bbox, s2, wc, str(folder)))
    s2, wc, skipped = probe_templates(bbox, s2_template, wc_template, remote_options, workers)
    return CatalogReport(match_tiles(bbox, s2, wc, source), skipped)


def build_catalog(bbox: Footprint, source: str, folder: Path | None, s2_template: str, wc_template: str,
                  remote_options: Mapping[str, str] | None = None, workers: int = 16) -> pl.DataFrame:
    """The catalog from a folder (when `folder` is given) or from the URI templates."""
    return catalog_report(bbox, source, folder, s2_template, wc_template, remote_options, workers).catalog
