"""Benchmark: our patch extraction against the ARAS400k release's method, same tiles, same run.

The baseline follows the release's script: one patch at a time, the S2 file opened once per
tile but read with a per-patch window, the WorldCover file reopened for every patch and read at
the patch's geographic bounds, remapping and classing through Python dict loops, the release's
filters in its order, per-patch-max 8-bit scaling and PIL PNGs, single-threaded.

Every measurement runs in a fresh subprocess (this script with the hidden --only flag), so the
peak RSS it reports belongs to that measurement alone and no run warms another's Python heap.

    .venv/bin/python bench/patches.py [--tile-px 2048] [--repeats 1]
    .venv/bin/python bench/patches.py --full-tile    # one and two 12000 px tiles, local and over HTTP

The last line printed is:
    patches speedup vs release method: X (ours A patches/s, baseline B patches/s, peak RSS M MiB)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from common import peak_rss_kib  # bench/common.py, beside this script
from PIL import Image
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from aras_assets.grid import s2_filename, wc_filename
from aras_assets.ids import PATCH_SIZE, patch_id
from aras_assets.landcover import PALETTE, label_lut
from aras_assets.sources.patches import PatchOptions, TileSource, extract_tile
from aras_assets.sources.sample_region import SAMPLE_TILES, wc_offset, write_sample_region

RESULT_MARK = "BENCH_RESULT "
DEFAULT_WORK_DIR = Path(__file__).resolve().parent / "out"  # git-ignored

# The release's tables, as its script spelled them.
RELEASE_REMAP = {90: 30, 100: 30, 95: 10, 70: 60}
RELEASE_CLASS_INDEX = {10: 0, 20: 1, 30: 2, 40: 3, 50: 4, 60: 5, 80: 6}
RELEASE_WATER_CODE = 80
RELEASE_WATER_MAX_SHARE = 0.9


@dataclass(frozen=True)
class Tile:
    name: str
    s2_path: Path
    wc_tile: str
    wc_path: Path


def sample_tiles(region: Path) -> list[Tile]:
    tiles = []
    for recipe in SAMPLE_TILES:
        wc_tile = wc_offset(recipe.tile)[0]
        tiles.append(Tile(recipe.tile, region / s2_filename(recipe.tile), wc_tile, region / wc_filename(wc_tile)))
    return tiles


# --- the two methods ----------------------------------------------------------------------
# Each returns (kept patch ids, {rejected patch id: reason}) for one tile.


def run_ours(tile: Tile, out_dir: Path, workers: int) -> tuple[list[str], dict[str, str]]:
    source = TileSource(tile.name, str(tile.s2_path), tile.wc_tile, str(tile.wc_path))
    result = extract_tile(source, PatchOptions(lut=label_lut(), workers=workers), out_dir, f"patches/{tile.name}")
    rejected = dict(zip(result.rejected["patch_id"].to_list(), result.rejected["reason"].to_list(), strict=True))
    return result.manifest["patch_id"].to_list(), rejected


def run_baseline(tile: Tile, out_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The release's method (see the module docstring); reasons are only recorded to compare."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    kept: list[str] = []
    rejected: dict[str, str] = {}
    with rasterio.open(tile.s2_path) as src:
        n_rows, n_cols = src.height // PATCH_SIZE, src.width // PATCH_SIZE
        for i in range(n_rows):
            for j in range(n_cols):
                window = Window(j * PATCH_SIZE, i * PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
                patch = src.read([1, 2, 3], window=window)
                patch_bounds = window_bounds(window, src.transform)
                # The release reopened the label file for every patch.
                with rasterio.open(tile.wc_path) as lab:
                    lw = from_bounds(*patch_bounds, transform=lab.transform)
                    label = lab.read(1, window=Window(round(lw.col_off), round(lw.row_off), PATCH_SIZE, PATCH_SIZE))
                for code, target in RELEASE_REMAP.items():
                    label[label == code] = target
                classes = np.zeros(label.shape, dtype=np.uint8)
                for code, index in RELEASE_CLASS_INDEX.items():
                    classes[label == code] = index
                pid = patch_id(tile.name, i, j)
                if np.all(patch == 0):
                    rejected[pid] = "all_zero_image"
                    continue
                if np.any(label == 0):
                    rejected[pid] = "nodata_label"
                    continue
                if np.sum(label == RELEASE_WATER_CODE) / label.size > RELEASE_WATER_MAX_SHARE:
                    rejected[pid] = "too_much_water"
                    continue
                image = (patch / patch.max() * 255).astype(np.uint8).transpose(1, 2, 0)
                Image.fromarray(image).save(out_dir / "images" / f"{pid}.png", format="PNG")
                Image.fromarray(PALETTE[classes]).save(out_dir / "masks" / f"{pid}.png", format="PNG")
                kept.append(pid)
    return kept, rejected


# --- child: one measurement in a fresh process ---------------------------------------------




def child(args: argparse.Namespace) -> None:
    import_kib = peak_rss_kib()  # interpreter and imports, before any raster is touched
    tiles = sample_tiles(args.region)[: args.tiles]
    workers = args.workers

    def run_all(out: Path) -> tuple[list[str], dict[str, str]]:
        kept: list[str] = []
        rejected: dict[str, str] = {}
        for tile in tiles:
            tile_out = out / tile.name
            k, r = run_ours(tile, tile_out, workers) if args.only == "ours" else run_baseline(tile, tile_out)
            kept += k
            rejected.update(r)
        return kept, rejected

    if args.warmup:
        # One tile first: page cache, GDAL drivers, PIL plugins and lazy imports are warm for both.
        saved = tiles
        tiles = tiles[:1]
        warm_out = args.out.with_name(args.out.name + "_warmup")
        shutil.rmtree(warm_out, ignore_errors=True)
        run_all(warm_out)
        tiles = saved
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    kept: list[str] = []
    rejected: dict[str, str] = {}
    for _ in range(args.repeats):
        shutil.rmtree(args.out, ignore_errors=True)  # no stale PNGs from an earlier run; not timed
        start, cpu_start = time.perf_counter(), time.process_time()
        kept, rejected = run_all(args.out)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)  # all threads: shows how many cores were used
    peak_kib = peak_rss_kib()
    print(RESULT_MARK + json.dumps({"method": args.only, "tiles": len(tiles), "seconds": seconds,
                                    "cpu_seconds": cpu_seconds,
                                    "kept": kept, "rejected": rejected, "peak_rss_kib": peak_kib,
                                    "import_rss_kib": import_kib}))


# --- parent: orchestration and checks -------------------------------------------------------


def measure(args: argparse.Namespace, method: str, tiles: int, out: Path, warmup: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", method, "--tiles", str(tiles),
           "--region", str(args.region), "--out", str(out), "--repeats", str(args.repeats if warmup else 1),
           "--workers", str(args.workers)]
    if warmup:
        cmd.append("--warmup")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{method} run on {tiles} tile(s) failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    return json.loads(lines[-1][len(RESULT_MARK):])


def check_same_work(ours: dict, base: dict, ours_out: Path, base_out: Path) -> int:
    """Both methods must keep and reject the same patches with the same pixels. Bytes differ:
    ours compresses at zlib level 1 (setting png_compress_level), the release at PIL's 6."""
    if sorted(ours["kept"]) != sorted(base["kept"]):
        only_ours = sorted(set(ours["kept"]) - set(base["kept"]))
        only_base = sorted(set(base["kept"]) - set(ours["kept"]))
        raise SystemExit(f"kept patches differ: only ours {only_ours[:5]}, only baseline {only_base[:5]}")
    if ours["rejected"] != base["rejected"]:
        raise SystemExit("rejected patches or reasons differ between ours and the baseline")
    # Every kept patch is compared (cheap at this size), masks and images both.
    for pid in ours["kept"]:
        tile = pid.rsplit("_", 2)[0]  # ids are <tile>_<row>_<col>, outputs go to <out>/<tile>/
        for kind in ("masks", "images"):
            with Image.open(ours_out / tile / kind / f"{pid}.png") as a, \
                    Image.open(base_out / tile / kind / f"{pid}.png") as b:
                same = a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
            if not same:
                raise SystemExit(f"{kind} PNG of {pid} pixels differ between ours and the baseline")
    return len(ours["kept"])


def parent(args: argparse.Namespace) -> None:
    work = args.work_dir
    args.region = work / f"region_{args.tile_px}px_seed{args.seed}"
    print(f"bench: sample region {args.tile_px}x{args.tile_px} px per tile in {args.region}", flush=True)
    start = time.perf_counter()
    write_sample_region(args.region, seed=args.seed, tile_px=args.tile_px,
                        progress=lambda msg: print(f"bench: {msg}", flush=True))
    print(f"bench: sample region ready in {time.perf_counter() - start:.1f}s", flush=True)
    tiles = sample_tiles(args.region)
    n_tiles = len(tiles)

    ours_out, base_out = work / "ours", work / "baseline"
    print(f"bench: timing ours, {n_tiles} tiles, workers={args.workers}, repeats={args.repeats} "
          f"(after a 1-tile warm-up)", flush=True)
    ours = measure(args, "ours", n_tiles, ours_out, warmup=True)
    print(f"bench: ours took {', '.join(f'{s:.2f}s' for s in ours['seconds'])}", flush=True)
    print(f"bench: timing baseline (release method), {n_tiles} tiles, single-threaded, repeats={args.repeats} "
          f"(after a 1-tile warm-up)", flush=True)
    base = measure(args, "baseline", n_tiles, base_out, warmup=True)
    print(f"bench: baseline took {', '.join(f'{s:.2f}s' for s in base['seconds'])}", flush=True)

    print("bench: checking both kept and rejected the same patches with identical PNG pixels", flush=True)
    kept = check_same_work(ours, base, ours_out, base_out)
    examined = kept + len(ours["rejected"])
    print(f"bench: same work: {examined} patches examined, {kept} kept, {len(ours['rejected'])} rejected; "
          f"all {kept} image and mask PNGs pixel-identical", flush=True)

    # Peak RSS without warm-up, so each figure is the extraction of exactly that many tiles.
    print("bench: peak RSS of ours on 1 tile and on all tiles (fresh processes, no warm-up)", flush=True)
    one = measure(args, "ours", 1, work / "ours_rss1", warmup=False)
    rss_1 = one["peak_rss_kib"] / 1024
    rss_n = measure(args, "ours", n_tiles, work / "ours_rssn", warmup=False)["peak_rss_kib"] / 1024

    # Best of the repeats: the least disturbed run of each method.
    best_ours, best_base = ours["seconds"].index(min(ours["seconds"])), base["seconds"].index(min(base["seconds"]))
    ours_rate = examined / ours["seconds"][best_ours]
    base_rate = examined / base["seconds"][best_base]
    ours_cpu, base_cpu = ours["cpu_seconds"][best_ours], base["cpu_seconds"][best_base]
    # CPU per patch and cores used tell a slow algorithm from a busy machine.
    print(f"CPU per patch: ours {ours_cpu / examined * 1000:.1f} ms, baseline {base_cpu / examined * 1000:.1f} ms; "
          f"cores used (CPU/wall): ours {ours_cpu / ours['seconds'][best_ours]:.2f}, "
          f"baseline {base_cpu / base['seconds'][best_base]:.2f}; load average {os.getloadavg()[0]:.2f}")
    print(f"rate = patches examined (kept + rejected) per second, best of {args.repeats} repeat(s); "
          f"{os.cpu_count()} CPU(s), ours with {args.workers} worker(s)")
    print(f"peak RSS ours: 1 tile {rss_1:.0f} MiB, {n_tiles} tiles {rss_n:.0f} MiB "
          f"(interpreter and imports alone {one['import_rss_kib'] / 1024:.0f} MiB; "
          f"baseline {n_tiles} tiles {base['peak_rss_kib'] / 1024:.0f} MiB incl. its warm-up)")
    print(f"patches speedup vs release method: {ours_rate / base_rate:.2f} "
          f"(ours {ours_rate:.1f} patches/s, baseline {base_rate:.1f} patches/s, peak RSS {rss_n:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile-px", type=int, default=2048, help="S2 tile size in pixels (2048 = 8x8 patches)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method; the best is used")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads for ours")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--full-tile", action="store_true",
                        help="a real-size 12000 px tile (2,116 patches): from the local file and through the loopback "
                             "HTTP server, patches/s, requests, bytes and peak RSS for 1 and 2 tiles (bench/remote.py)")
    # Hidden: what the parent passes to a measuring child.
    parser.add_argument("--only", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=int, default=len(SAMPLE_TILES), help=argparse.SUPPRESS)
    parser.add_argument("--region", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.full_tile:
        for tiles in (1, 2):
            subprocess.run([sys.executable, str(Path(__file__).resolve().with_name("remote.py")), "--tile-px", "12000",
                            "--tiles", str(tiles), "--no-warmup", "--workers", str(args.workers),
                            "--work-dir", str(args.work_dir)], check=True)
    elif args.only:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
