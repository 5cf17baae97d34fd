"""Opening and checking source rasters: local files or remote COGs, with errors that name them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import rasterio
from rasterio.errors import RasterioError, RasterioIOError

from aras_assets.errors import BadInputError
from aras_assets.grid import PIXEL_DEG, Footprint, on_grid

# Remote COGs: read only the header and the windows asked for, never list bucket folders.
GDAL_ENV = {"AWS_NO_SIGN_REQUEST": "YES", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif", "GDAL_HTTP_MAX_RETRY": "3"}


class TileError(BadInputError, ValueError):
    """A source tile cannot be used; the message names the file or tile and why."""


@dataclass(frozen=True)
class RasterKind:
    name: str
    count: int
    dtype: str


S2_KIND = RasterKind("Sentinel-2 RGBNIR", 4, "uint16")
WC_KIND = RasterKind("WorldCover map", 1, "uint8")


def gdal_path(uri: str) -> str:
    """The path GDAL opens for a URI: s3:// through /vsis3/, http(s):// through /vsicurl/."""
    if uri.startswith("s3://"):
        return "/vsis3/" + uri[len("s3://"):]
    if uri.startswith(("http://", "https://")):
        return "/vsicurl/" + uri
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return uri


@contextlib.contextmanager
def open_raster(uri: str, kind: RasterKind) -> Iterator[rasterio.io.DatasetReader]:
    with rasterio.Env(**GDAL_ENV):
        try:
            ds = rasterio.open(gdal_path(uri))
        except RasterioIOError as exc:
            raise TileError(f"{kind.name} tile {uri} cannot be opened (missing, corrupt or not a GeoTIFF): {exc}") from exc
        with ds:
            check_raster(ds, uri, kind)
            yield ds


def check_raster(ds: rasterio.io.DatasetReader, uri: str, kind: RasterKind) -> None:
    """The file must be EPSG:4326 on the 1/12000-degree grid, with the expected bands."""
    if ds.crs is None or ds.crs.to_epsg() != 4326:
        raise TileError(f"{kind.name} tile {uri} has CRS {ds.crs}; expected EPSG:4326")
    if ds.count != kind.count:
        raise TileError(f"{kind.name} tile {uri} has {ds.count} band(s); expected {kind.count}")
    if ds.dtypes[0] != kind.dtype:
        raise TileError(f"{kind.name} tile {uri} has data type {ds.dtypes[0]}; expected {kind.dtype}")
    t = ds.transform
    if abs(t.a - PIXEL_DEG) > 1e-9 or abs(t.e + PIXEL_DEG) > 1e-9 or t.b or t.d:
        raise TileError(f"{kind.name} tile {uri} has pixels of {t.a:.3g} x {-t.e:.3g} degrees; "
                        f"expected the 1/12000-degree grid")
    if not (on_grid(t.c) and on_grid(t.f)):
        raise TileError(f"{kind.name} tile {uri} has its origin ({t.c}, {t.f}) off the 1/12000-degree grid")


def footprint(ds: rasterio.io.DatasetReader) -> Footprint:
    b = ds.bounds
    return Footprint(b.left, b.bottom, b.right, b.top)


def read_error(uri: str, kind: RasterKind, what: str, exc: RasterioError) -> TileError:
    return TileError(f"{kind.name} tile {uri}: reading {what} failed (truncated or corrupt file?): {exc}")
