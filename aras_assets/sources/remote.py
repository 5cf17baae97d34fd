"""Remote tiles: the GDAL options for buckets and HTTP(S) servers, what a failed remote read
means, and retries with backoff inside a read.

Where the tiles live comes from settings (`remote_options`: endpoint, `AWS_HTTPS`, virtual
hosting, region, timeouts) or from the environment GDAL reads itself; credentials only ever
from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
`AWS_PROFILE`). Without credentials, requests go unsigned (`AWS_NO_SIGN_REQUEST=YES`), as the
public buckets need.

A failed open or read is one of: the tile does not exist (404: a cell of sea, outside
coverage), access is denied (403: credentials), the server answers something that is not a
GeoTIFF (bad input), or the network is briefly unwell (5xx, reset, cut short, timeout:
retried here, then a `TileUnavailable`, a `TransientError` the step's retries pick up)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from aras_assets.errors import BadInputError, TransientError

T = TypeVar("T")

# GDAL options the settings may set. Credentials are not among them: the environment only.
REMOTE_OPTION_NAMES = (
    "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_NO_SIGN_REQUEST",
    "AWS_REQUEST_PAYER", "GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT", "GDAL_HTTP_MAX_RETRY",
    "GDAL_HTTP_RETRY_DELAY", "GDAL_HTTP_MULTIRANGE", "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES", "GDAL_CACHEMAX",
    "CPL_VSIL_CURL_CHUNK_SIZE", "CPL_VSIL_CURL_CACHE_SIZE", "GDAL_HTTP_VERSION",
)
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")

# Read only the header and the blocks asked for, never list bucket folders; GDAL retries
# 429/5xx itself (GDAL_HTTP_MAX_RETRY, GDAL_HTTP_RETRY_DELAY, doubling), and we retry the
# read around it for resets and bodies cut short. A 128 MB block cache holds a strip of a full
# tile (49 MB of S2 pixels) twice over; GDAL's default (5% of memory) held 1.4 GiB of blocks.
# Measured with bench/remote.py (2048 px tile): 13 requests and 1.00x the compressed blocks
# needed with GDAL_HTTP_MERGE_CONSECUTIVE_RANGES YES or NO and GDAL_HTTP_MULTIRANGE SERIAL alike
# (a strip's blocks are contiguous in a COG, so each strip is one range), so GDAL's defaults stay.
BASE_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_CACHEMAX": "128",
    # A file's blocks are cached while it is open, not across opens: a retry that reopens a
    # file never decodes a body that was cut short the first time.
    "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/:/vsis3/",
}
# Our own retries around a read (on top of GDAL's): waits before each further attempt.
READ_RETRY_WAITS_S = (0.5, 1.0, 2.0)


class TileMissing(BadInputError):
    """The tile does not exist at its URI (HTTP 404, no such key)."""


class BucketAccessError(BadInputError):
    """The server refused access (HTTP 401/403): credentials are missing or wrong."""


class TileUnavailable(TransientError):
    """The server or network failed (5xx, reset, a body cut short, a timeout) and kept failing
    through the retries inside the read; the step's retries try again later."""


def is_remote(uri: str) -> bool:
    return uri.startswith(("s3://", "http://", "https://", "/vsis3/", "/vsicurl/"))


def gdal_options(settings_options: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None, remote: bool = True) -> dict[str, str | int]:
    """GDAL config options for reads: for remote files our base, then the settings'
    `remote_options`, requests unsigned unless the environment or settings hold credentials or
    say otherwise; for local files only the block cache's size (GDAL's default, 5% of the
    machine's memory, would hold every block of a full tile: 1.4 GiB measured)."""
    if not remote:
        return {"GDAL_CACHEMAX": int(BASE_OPTIONS["GDAL_CACHEMAX"])}
    env = os.environ if environ is None else environ
    options = {**BASE_OPTIONS, **dict(settings_options or {})}
    signed = any(env.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE"))
    if "AWS_NO_SIGN_REQUEST" not in options and not env.get("AWS_NO_SIGN_REQUEST") and not signed:
        options["AWS_NO_SIGN_REQUEST"] = "YES"
    out: dict[str, str | int] = dict(options)
    if str(out["GDAL_CACHEMAX"]).isdigit():  # rasterio takes the cache size in MB as a number
        out["GDAL_CACHEMAX"] = int(out["GDAL_CACHEMAX"])
    return out


def endpoint_of(uri: str, options: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Where a URI's requests go, in words for error messages."""
    env = os.environ if environ is None else environ
    if uri.startswith("s3://"):
        opts = options or {}
        host = opts.get("AWS_S3_ENDPOINT") or env.get("AWS_S3_ENDPOINT") or "s3.amazonaws.com"
        https = (opts.get("AWS_HTTPS") or env.get("AWS_HTTPS") or "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        return f"{'https' if https else 'http'}://{host} (bucket {uri[5:].split('/', 1)[0]})"
    m = re.match(r"^(https?://[^/]+)", uri)
    return m.group(1) if m else "the local file system"


_MISSING = re.compile(r"HTTP response code: 404|specified key does not exist|specified bucket does not exist|"
                      r"AWSObjectNotFound|AWSBucketNotFound|\b404\b|NoSuchKey|NoSuchBucket|does not exist in the file system|"
                      r"No such file or directory", re.I)
_DENIED = re.compile(r"HTTP response code: 40[13]|Access Denied|AWSAccessDenied|AWSInvalidCredentials|"
                     r"AWSSignatureDoesNotMatch|\b40[13]\b|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|"
                     r"AWS_SECRET_ACCESS_KEY|AWS_NO_SIGN_REQUEST|credentials", re.I)
_TRANSIENT = re.compile(r"HTTP response code: (5\d\d|429)|\b50[0-4]\b|timed out|timeout|Connection reset|"
                        r"reset by peer|transfer closed|outstanding read data|Recv failure|Send failure|"
                        r"Empty reply|Couldn't connect|Failed to connect|Connection refused|partial file|"
                        r"Could not resolve|SlowDown|ServiceUnavailable|InternalError|"
                        r"received \d+ bytes|Download of .* failed|Read error", re.I)


def kind_of_failure(message: str) -> str:
    """'missing', 'denied', 'transient' or 'other' for a GDAL error message."""
    if _DENIED.search(message):
        return "denied"
    if _MISSING.search(message):
        return "missing"
    if _TRANSIENT.search(message):
        return "transient"
    return "other"


def credentials_hint(uri: str) -> str:
    if uri.startswith("s3://"):
        return ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
                "credentials) or AWS_PROFILE in the environment for a private bucket, or AWS_NO_SIGN_REQUEST=YES "
                "for a public one")
    return "the server wants credentials this platform does not send; serve the tiles without authentication"


def with_retries(attempt: Callable[[], T], uri: str, what: str, waits: tuple[float, ...] | None = None,
                 is_transient: Callable[[BaseException], bool] | None = None,
                 sleep: Callable[[float], None] = time.sleep, where: str | None = None) -> T:
    """Run `attempt`; on a transient failure wait and try again, through `waits`; then raise
    `TileUnavailable` naming the URI, what was read and the last error. Other errors pass."""
    waits = READ_RETRY_WAITS_S if waits is None else waits
    check = is_transient or (lambda exc: kind_of_failure(str(exc)) == "transient")
    last: BaseException | None = None
    for wait in (*waits, None):
        try:
            return attempt()
        except Exception as exc:
            if not check(exc):
                raise
            last = exc
            if wait is None:
                break
            sleep(wait)
    raise TileUnavailable(f"{uri}: {what} kept failing after {len(waits) + 1} attempts "
                          f"(network or server trouble at {where or endpoint_of(uri)}): {last}") from last
