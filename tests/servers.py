"""Real servers on 127.0.0.1 for the remote-read tests and benchmarks.

`RangeServer` is a threaded HTTP/1.1 server of our own that serves a folder and honours single
`Range` requests, counts every request and byte it sends, and can inject faults: HTTP 503, a
reset connection, a body cut short, a slow answer, an HTML page instead of the file, or an
S3-style 403 for requests that carry no credentials. `MotoS3` runs moto's standalone S3 server
in its own process and fills buckets with boto3. Both bind a free port and are torn down by
their context managers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aras_assets.grid import lat_band, s2_filename, wc_filename

RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")
FAULTS = ("503", "reset", "truncate", "slow", "html", "auth")

# The public buckets' key layout, for a folder of sample-region files.
S2_BUCKET, WC_BUCKET = "esa-worldcover-s2", "esa-worldcover"
S2_KEY = "rgbnir/2021/{lat_band}/ESA_WorldCover_10m_2021_v200_{tile}_S2RGBNIR.tif"
WC_KEY = "v200/2021/map/ESA_WorldCover_10m_2021_v200_{tile}_Map.tif"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bucket_layout(region: Path, tiles: list[str], wc_tiles: list[str]) -> dict[str, Path]:
    """'bucket/key' -> local file for the given S2 and WorldCover tiles of a sample region."""
    keys = {f"{S2_BUCKET}/{S2_KEY.format(lat_band=lat_band(t), tile=t)}": region / s2_filename(t) for t in tiles}
    keys |= {f"{WC_BUCKET}/{WC_KEY.format(tile=t)}": region / wc_filename(t) for t in wc_tiles}
    return keys


def mirror(folder: Path, layout: dict[str, Path]) -> Path:
    """Link the files under `folder` at their bucket keys (what an HTTP mirror would serve)."""
    for key, src in layout.items():
        dst = folder / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.link(src, dst) if src.stat().st_dev == folder.stat().st_dev else shutil.copyfile(src, dst)
    return folder


@dataclass
class Fault:
    """Inject `kind` into the next `times` GET requests whose path contains `match`
    (times < 0: every one). `slow_s` is how long a slow answer waits before its body."""

    kind: str
    times: int = -1
    match: str = ""
    slow_s: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {FAULTS}")


@dataclass
class Stats:
    requests: int = 0
    gets: int = 0
    heads: int = 0
    bytes_sent: int = 0
    faults_injected: int = 0
    log: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, range


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:  # clients that hang up are expected
        pass


class RangeServer:
    """Serves `root` at http://127.0.0.1:<port>/ with Range support, counters and faults."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.stats = Stats()
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", free_port()), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = Stats()

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.match in path and fault.times != 0:
                    fault.times -= 1 if fault.times > 0 else 0
                    self.stats.faults_injected += 1
                    return fault
        return None

    def _count(self, method: str, path: str, rng: str, sent: int) -> None:
        with self._lock:
            self.stats.requests += 1
            self.stats.gets += method == "GET"
            self.stats.heads += method == "HEAD"
            self.stats.bytes_sent += sent
            self.stats.log.append((method, path, rng))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _plain(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                server._count(self.command, self.path, self.headers.get("Range", ""), len(body))

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0].lstrip("/")
                if path.startswith("~"):  # /~<token>/key: the same file under a fresh URL (GDAL caches per URL)
                    path = path.split("/", 1)[1] if "/" in path else ""
                fault = server._take_fault(path)
                if fault is not None and fault.kind == "auth" and "Authorization" not in self.headers:
                    self._plain(403, b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                                     b"<Message>Access Denied</Message></Error>", "application/xml")
                    return
                if fault is not None and fault.kind == "503":
                    self._plain(503, b"service unavailable")
                    return
                if fault is not None and fault.kind == "reset":
                    # RST instead of an answer: linger on, timeout 0.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    server._count(self.command, self.path, self.headers.get("Range", ""), 0)
                    return
                if fault is not None and fault.kind == "html":
                    self._plain(200, b"<!DOCTYPE html><html><body><h1>Welcome</h1>" + b" " * 2000 + b"</body></html>",
                                "text/html")
                    return
                file = (server.root / path).resolve()
                if not file.is_relative_to(server.root) or not file.is_file():
                    self._plain(404, b"not found")
                    return
                size = file.stat().st_size
                start, end, code = 0, size - 1, 200
                rng = self.headers.get("Range", "")
                if rng:
                    m = RANGE_RE.match(rng)
                    if not m:
                        self._plain(416, b"only single byte ranges are served")
                        return
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                    if start >= size:
                        self._plain(416, b"range not satisfiable")
                        return
                    code = 206
                length = end - start + 1
                self.send_response(code)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(length))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                sent = 0
                if body:
                    if fault is not None and fault.kind == "slow":
                        time.sleep(fault.slow_s)
                    with file.open("rb") as f:
                        f.seek(start)
                        data = f.read(length)
                    if fault is not None and fault.kind == "truncate":
                        data = data[: max(1, len(data) // 2)]
                        self.close_connection = True
                    try:
                        self.wfile.write(data)
                        sent = len(data)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                server._count(self.command, self.path, rng, sent)

        return Handler


class MotoS3:
    """moto's standalone S3 server in its own process on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> MotoS3:
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{self.endpoint}/moto-api/", timeout=1).close()
                return self
            except OSError as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"moto S3 server did not start on {self.endpoint}") from exc
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def client(self, key_id: str, secret: str):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", aws_access_key_id=key_id,
                            aws_secret_access_key=secret, region_name="us-east-1")

    def upload(self, layout: dict[str, Path], key_id: str, secret: str) -> None:
        s3 = self.client(key_id, secret)
        for bucket in sorted({k.split("/", 1)[0] for k in layout}):
            s3.create_bucket(Bucket=bucket)
        for key, src in layout.items():
            bucket, name = key.split("/", 1)
            s3.upload_file(str(src), bucket, name)


@contextlib.contextmanager
def serving(root: Path) -> Iterator[RangeServer]:
    with RangeServer(root) as server:
        yield server
