"""Benchmark: patch extraction through a loopback HTTP server against the local file, same tile,
same run.

A benchmark tile pair (S2 RGBNIR N38E029 and its WorldCover part, real grid, COG layout) is
written by a fast block-wise writer (`--tile-px 12000` is a real-size tile), served by the
Range-honouring server of tests/servers.py, and cut into patches twice in fresh processes: from
the local file and through http://127.0.0.1. The server counts requests and bytes; the bytes
needed are the compressed sizes of the full-resolution blocks the patch rows cover, from the
files' own TIFF block tables.

    .venv/bin/python bench/remote.py [--tile-px 2048] [--tiles 1] [--workers 0]

The last line printed is:
    remote read: X of local speed (A patches/s remote, B local, R requests, M MB read for N MB of tile)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from common import peak_rss_kib  # bench/common.py, beside this script
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import S2_KEY, WC_KEY, RangeServer

from aras_assets.grid import CRS, PIXEL_DEG, lat_band, s2_filename, wc_filename
from aras_assets.ids import PATCH_SIZE
from aras_assets.landcover import label_lut
from aras_assets.sources.patches import PatchOptions, TileSource, extract_tile
from aras_assets.sources.sample_region import COG_OPTIONS, REFLECTANCE, s2_origin, wc_offset

RESULT_MARK = "BENCH_RESULT "
DEFAULT_WORK_DIR = Path(__file__).resolve().parent / "out"  # git-ignored
BLOCK = 512
TILES = ("N38E029", "N38E028")


def write_bench_tiles(folder: Path, tile: str, px: int, seed: int = 0) -> tuple[Path, Path]:
    """An S2 file of `px` x `px` at the top-left of `tile` and a WorldCover file over the same
    ground, written block by block (memory holds one block): coarse class parcels, per-class
    reflectance with noise, so the files compress like real imagery, not like constants."""
    wc_tile = wc_offset(tile)[0]
    s2_path, wc_path = folder / s2_filename(tile), folder / wc_filename(wc_tile)
    if s2_path.exists() and wc_path.exists():
        return s2_path, wc_path
    codes_list = np.array(sorted(c for c in REFLECTANCE if c not in (70, 80, 95, 100)), dtype=np.uint8)
    means = np.array([REFLECTANCE[int(c)] for c in codes_list], dtype=np.float32)  # (classes, 4)
    west, north = s2_origin(tile)
    rng = np.random.default_rng(seed)
    parcels = rng.integers(0, len(codes_list), size=(px // 64 + 1, px // 64 + 1))
    base = {"width": px, "height": px, "crs": CRS, "transform": from_origin(west, north, PIXEL_DEG, PIXEL_DEG),
            "nodata": 0, "driver": "GTiff", "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate"}
    folder.mkdir(parents=True, exist_ok=True)
    tmp_s2, tmp_wc = folder / ".s2.src.tif", folder / ".wc.src.tif"
    with rasterio.open(tmp_s2, "w", count=4, dtype="uint16", **base) as s2, \
            rasterio.open(tmp_wc, "w", count=1, dtype="uint8", **base) as wc:
        for y in range(0, px, BLOCK):
            for x in range(0, px, BLOCK):
                h, w = min(BLOCK, px - y), min(BLOCK, px - x)
                yy, xx = np.mgrid[y:y + h, x:x + w]
                cls = parcels[yy // 64, xx // 64]
                noise = rng.normal(1.0, 0.03, size=(4, h, w)).astype(np.float32)
                refl = (means[cls].transpose(2, 0, 1) * noise).clip(1, 65535).astype(np.uint16)
                s2.write(refl, window=Window(x, y, w, h))
                wc.write(codes_list[cls][None], window=Window(x, y, w, h))
    for src, dst in ((tmp_s2, s2_path), (tmp_wc, wc_path)):
        rasterio.shutil.copy(src, dst, driver="COG", **COG_OPTIONS)
        src.unlink()
    return s2_path, wc_path


def needed_block_bytes(path: Path, rows: int, cols: int) -> int:
    """Compressed bytes of the full-resolution blocks covering `rows` x `cols` pixels."""
    total = 0
    with rasterio.open(path) as ds:
        bh, bw = ds.block_shapes[0]
        for by in range(-(-rows // bh)):
            for bx in range(-(-cols // bw)):
                total += int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1) or 0)
    return total


def child(args: argparse.Namespace) -> None:
    sources = json.loads(args.sources)
    start = time.perf_counter()
    examined = 0
    for i, (s2, wc_tile, wc) in enumerate(sources):
        result = extract_tile(TileSource(args.tile_names[i], s2, wc_tile, wc),
                              PatchOptions(label_lut(), workers=args.workers, remote_options=tuple(args.option)),
                              args.out / str(i), f"patches/{i}")
        examined += result.manifest.height + result.rejected.height
    seconds = time.perf_counter() - start
    print(RESULT_MARK + json.dumps({"seconds": seconds, "examined": examined, "peak_rss_kib": peak_rss_kib()}))


def measure(args: argparse.Namespace, sources: list[tuple[str, str, str]], out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--sources", json.dumps(sources),
           "--out", str(out), "--workers", str(args.workers), "--tile-names", *TILES[: len(sources)]]
    for key, value in args.option:
        cmd += ["--option", f"{key}={value}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"measurement failed with exit code {proc.returncode}")
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK)][-1][len(RESULT_MARK):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile-px", type=int, default=2048)
    parser.add_argument("--tiles", type=int, default=1, choices=(1, 2))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up extraction (the tiles were just "
                        "written, so they are in the page cache)")
    parser.add_argument("--option", action="append", default=[], type=lambda kv: tuple(kv.split("=", 1)),
                        help="a GDAL option for the remote read, KEY=VALUE (as the remote_options setting), repeatable")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sources", help=argparse.SUPPRESS)
    parser.add_argument("--tile-names", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    bucket = args.work_dir / f"remote_{args.tile_px}px"
    print(f"bench: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s); writing {args.tiles} "
          f"benchmark tile(s) of {args.tile_px} px; remote options {dict(args.option) or 'default'}", flush=True)
    t0 = time.perf_counter()
    local, remote_keys, tile_mb, needed = [], [], 0.0, 0
    for tile in TILES[: args.tiles]:
        s2_dir = bucket / "esa-worldcover-s2" / Path(S2_KEY.format(lat_band=lat_band(tile), tile=tile)).parent
        wc_tile = wc_offset(tile)[0]
        wc_dir = bucket / "esa-worldcover" / Path(WC_KEY.format(tile=wc_tile)).parent
        s2_path, wc_src = write_bench_tiles(s2_dir / f"_{tile}", tile, args.tile_px)
        s2_final, wc_final = s2_dir / s2_path.name, wc_dir / f"{tile}_{wc_src.name}"
        wc_dir.mkdir(parents=True, exist_ok=True)
        for src, dst in ((s2_path, s2_final), (wc_src, wc_final)):
            if not dst.exists():
                os.link(src, dst)
        local.append((str(s2_final), wc_tile, str(wc_final)))
        remote_keys.append((s2_final.relative_to(bucket).as_posix(), wc_tile, wc_final.relative_to(bucket).as_posix()))
        side = args.tile_px // PATCH_SIZE * PATCH_SIZE
        needed += needed_block_bytes(s2_final, side, side) + needed_block_bytes(wc_final, side, side)
        tile_mb += (s2_final.stat().st_size + wc_final.stat().st_size) / 1e6
    print(f"bench: tiles ready in {time.perf_counter() - t0:.1f}s ({tile_mb:.1f} MB)", flush=True)
    with RangeServer(bucket) as server:
        remote = [(f"{server.url}/{s2}", wc_tile, f"{server.url}/{wc}") for s2, wc_tile, wc in remote_keys]
        if not args.no_warmup:
            measure(args, local, args.work_dir / "remote_warm")  # page cache and imports warm for both
        loc = measure(args, local, args.work_dir / "remote_local")
        server.reset_stats()
        rem = measure(args, remote, args.work_dir / "remote_http")
        stats = server.stats
    local_rate, remote_rate = loc["examined"] / loc["seconds"], rem["examined"] / rem["seconds"]
    print(f"patches examined: {rem['examined']}; compressed blocks needed {needed / 1e6:.1f} MB, read "
          f"{stats.bytes_sent / 1e6:.1f} MB ({stats.bytes_sent / max(needed, 1):.2f}x), {stats.requests} requests "
          f"({stats.heads} HEAD); peak RSS local {loc['peak_rss_kib'] / 1024:.0f} MiB, remote "
          f"{rem['peak_rss_kib'] / 1024:.0f} MiB; load average {os.getloadavg()[0]:.2f}")
    print(f"remote read: {remote_rate / local_rate:.2f} of local speed ({remote_rate:.1f} patches/s remote, "
          f"{local_rate:.1f} local, {stats.requests} requests, {stats.bytes_sent / 1e6:.1f} MB read for "
          f"{tile_mb:.1f} MB of tile)")


if __name__ == "__main__":
    main()
