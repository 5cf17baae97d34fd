"""Opening and checking source rasters: local files or remote COGs, with errors that name them."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from aras_assets.errors import BadInputError
from aras_assets.grid import PIXEL_DEG, Footprint, on_grid
from aras_assets.sources.remote import (
    BucketAccessError,
    TileMissing,
    credentials_hint,
    endpoint_of,
    gdal_options,
    is_remote,
    kind_of_failure,
    with_retries,
)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

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


class LocalTileMissing(TileError, TileMissing):
    """A local file named by a template or the catalog is not there."""


class _Transient(Exception):
    """A remote open or read that may pass on a retry (the message says why)."""


def error_text(exc: BaseException) -> str:
    """An exception and the GDAL errors chained under it, in one line."""
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def _http_status(uri: str, options: Mapping[str, str | int]) -> tuple[int | None, str, bytes]:
    """Status, content type and first bytes of an http(s) URI (a 16-byte range), to tell a page
    that is not a GeoTIFF from a timeout after GDAL says 'not recognized'."""
    request = urllib.request.Request(uri, headers={"Range": "bytes=0-15"})
    try:
        with urllib.request.urlopen(request, timeout=float(options.get("GDAL_HTTP_TIMEOUT", 30))) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read(16)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", "") if exc.headers else "", b""
    except OSError:
        return None, "", b""


def _open_once(uri: str, kind: RasterKind, options: Mapping[str, str | int]) -> rasterio.io.DatasetReader:
    """Open a raster; a remote failure becomes a `TileMissing`, `BucketAccessError` or `TileError`
    (bad input), or `_Transient` (retried by the caller)."""
    try:
        return rasterio.open(gdal_path(uri))
    except RasterioIOError as exc:
        if not is_remote(uri):
            if not Path(gdal_path(uri)).exists():
                raise LocalTileMissing(f"{kind.name} tile {uri} does not exist") from exc
            raise TileError(f"{kind.name} tile {uri} cannot be opened (missing, corrupt or not a GeoTIFF): {exc}") from exc
        text = error_text(exc)
        failure = kind_of_failure(text)
        where = _where(uri, options)
        if failure == "missing":
            raise TileMissing(f"{kind.name} tile {uri} does not exist at {where} (HTTP 404 / no such key)") from exc
        if failure == "denied":
            raise BucketAccessError(f"{where} denied access to {kind.name} tile {uri}; {credentials_hint(uri)} "
                                    f"({text})") from exc
        if failure == "transient":
            raise _Transient(f"{text}") from exc
        if "not recognized" in text and uri.startswith(("http://", "https://")):
            status, ctype, head = _http_status(uri, options)
            if status is None or status >= 500 or status == 429:
                raise _Transient(f"no answer or HTTP {status} from {where}") from exc
            if status == 404:
                raise TileMissing(f"{kind.name} tile {uri} does not exist at {where} (HTTP 404)") from exc
            if not head.startswith(TIFF_MAGIC):
                raise TileError(f"{kind.name} tile {uri}: {where} answered {ctype or 'something'} "
                                f"(starting {head[:16]!r}) instead of a GeoTIFF; check the URI template") from exc
        raise TileError(f"{kind.name} tile {uri} cannot be opened (corrupt or not a GeoTIFF): {text}") from exc


def _where(uri: str, options: Mapping[str, str | int]) -> str:
    return endpoint_of(uri, {k: str(v) for k, v in options.items()})


def open_checked(uri: str, kind: RasterKind, options: Mapping[str, str | int]) -> rasterio.io.DatasetReader:
    """Open and check a raster, retrying transient remote failures (inside a `rasterio.Env`)."""
    ds = with_retries(lambda: _open_once(uri, kind, options), uri, f"opening the {kind.name} header",
                      is_transient=lambda exc: isinstance(exc, _Transient), where=_where(uri, options))
    try:
        check_raster(ds, uri, kind)
    except BaseException:
        ds.close()
        raise
    return ds


@contextlib.contextmanager
def open_raster(uri: str, kind: RasterKind,
                remote_options: Mapping[str, str] | None = None) -> Iterator[rasterio.io.DatasetReader]:
    """A checked raster; remote URIs read with the GDAL options of `remote.gdal_options`."""
    options = gdal_options(remote_options, remote=is_remote(uri))
    with rasterio.Env(**options), open_checked(uri, kind, options) as ds:
        yield ds


class RasterReader:
    """A checked raster whose reads retry transient remote failures: the file is reopened (its
    cached blocks dropped, so a body cut short is never decoded twice) and the window read
    again, through `remote.READ_RETRY_WAITS_S`; then `TileUnavailable`. Local read failures
    are bad input (a truncated or corrupt file). Use inside `with`; opens the header once."""

    def __init__(self, uri: str, kind: RasterKind, remote_options: Mapping[str, str] | None = None) -> None:
        self.uri, self.kind = uri, kind
        self.remote = is_remote(uri)
        self.options = gdal_options(remote_options, remote=self.remote)
        self._env = rasterio.Env(**self.options)
        self._env.__enter__()
        try:
            self.ds: rasterio.io.DatasetReader | None = open_checked(uri, kind, self.options)
        except BaseException:
            self._env.__exit__(None, None, None)
            raise
        self.reopens = 0

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ds is not None:
            self.ds.close()
        self._env.__exit__(None, None, None)

    @property
    def dataset(self) -> rasterio.io.DatasetReader:
        if self.ds is None:
            self.ds = open_checked(self.uri, self.kind, self.options)
            self.reopens += 1
        return self.ds

    def read(self, indexes: int | tuple[int, ...], window: Window, what: str) -> np.ndarray:
        def attempt() -> np.ndarray:
            try:
                return self.dataset.read(indexes, window=window)
            except RasterioError as exc:
                if not self.remote:
                    raise read_error(self.uri, self.kind, what, exc) from exc
                if self.ds is not None:
                    self.ds.close()
                    self.ds = None
                raise _Transient(error_text(exc)) from exc

        return with_retries(attempt, self.uri, f"reading {what}", is_transient=lambda exc: isinstance(exc, _Transient),
                            where=_where(self.uri, self.options))


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
