"""Benchmark: lineage lookups (aras_assets/operations/lineage/) over manifests at the ARAS400k scale.

Builds, in the real layouts and sharded as the pipeline shards them:
- 100,000 real patches over 48 S2 tiles (N36E027..N41E034, about 2,083 per tile, row/col on the 46x46 grid),
  `patches/<tile>/manifest.parquet` with the full manifest schema;
- 300,000 synthetic images: 220 unconditional shards of 1,000 (`synthetic/uncond/<shard>/manifest.parquet`,
  with their labeler manifests under `labels/uncond_labels/<shard>/`) and 80,000 conditional images over
  the 48 tiles (`synthetic/cond/<tile>/manifest.parquet`), each conditioned on a real patch of its tile;
- 2,000,000 captions, five per image (text, vision, hybrid, text, vision) of the 400,000 images,
  `captions/{real|uncond|cond}/<partition>/captions.parquet`.

Then, in a fresh child process (so its peak memory is the lookups' own, not the builder's):
1. single lookups: trace() of --singles random caption ids one at a time (after 3 warm-up lookups
   of other ids). Target: p99 < 500 ms.
2. trace_many() of --batch random caption ids. Target: < 5 s.

    .venv/bin/python bench/lineage.py [--singles 200] [--batch 10000] [--work-dir DIR [--skip-build]]

Progress goes to stderr; the last lines printed are:
    peak RSS X MiB (Y MiB after imports) vs manifests Z MiB on disk, W MiB in memory
    lineage lookup: p50 A ms, p99 B ms; batch of 10k: C s
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from common import log, peak_rss_kib  # bench/common.py, beside this script

from aras_assets.generation.manifest import SYNTHETIC_SCHEMA

PATCHES = 100_000
TILES = [f"N{lat}E{lon:03d}" for lat in range(36, 42) for lon in range(27, 35)]  # 48 one-degree S2 tiles
GRID = 46  # 256-px patches per side of a 12000-px tile
UNCOND_SHARDS, SHARD_SIZE = 220, 1_000
COND_IMAGES = 80_000
CAPTIONS_PER_IMAGE = 5
SLOTS = [("text", 0), ("vision", 0), ("hybrid", 0), ("text", 1), ("vision", 1)]  # (mode, caption_index) per caption
DEG = 12_000
P99_TARGET_MS, BATCH_TARGET_S = 500.0, 5.0
CLASSES = ("tree", "shrub", "grass", "crop", "built_up", "barren", "water")
SUBJECTS = ["Cropland", "A patchwork of fields", "Dense forest", "Sparse shrubland", "A small town", "Barren hills",
            "Grassland", "Mixed farmland", "A river valley", "A lake shore", "Terraced slopes", "Open pasture"]
DETAILS = ["dominates the scene", "covers most of the image", "surrounds a cluster of buildings",
           "borders a winding river", "is interrupted by a road", "lies beside a lake", "fills the upper half",
           "mixes with scattered trees", "stretches to the southern edge", "is broken by bare patches"]
TAILS = ["with grass in the north", "and some water to the east", "with built-up areas in the centre",
         "and shrubs along the edges", "under a thin strip of forest", "with fragmented cropland nearby"]


def hex_digests(rng: np.random.Generator, n: int) -> list[str]:
    blob = rng.bytes(32 * n).hex()
    return [blob[i * 64:(i + 1) * 64] for i in range(n)]


def write_partitions(frame: pl.DataFrame, by: str, path_of: str, drop: bool = False) -> int:
    """One Parquet file per value of `by` (zstd with statistics, as the pipeline writes them);
    `drop` leaves out a column that only routed rows to their files."""
    count = 0
    for (key,), part in frame.partition_by(by, as_dict=True, maintain_order=True, include_key=not drop).items():
        path = Path(path_of.format(key=key))
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_parquet(path, compression="zstd", statistics=True)
        count += 1
    return count


def build_patches(root: Path, rng: np.random.Generator) -> pl.DataFrame:
    per_tile = np.full(len(TILES), PATCHES // len(TILES))
    per_tile[: PATCHES % len(TILES)] += 1
    tile_idx = np.repeat(np.arange(len(TILES)), per_tile)
    k = np.concatenate([np.arange(n) for n in per_tile])
    tiles = pl.Series(TILES)
    frame = pl.DataFrame({"s2_tile": tiles.gather(tile_idx), "row": (k // GRID).astype(np.int32),
                          "col": (k % GRID).astype(np.int32)})
    lat = pl.col("s2_tile").str.slice(1, 2).cast(pl.Int32)
    lon = pl.col("s2_tile").str.slice(4, 3).cast(pl.Int32)
    wc_lat, wc_lon = (lat // 3) * 3, (lon // 3) * 3
    wc_tile = pl.format("N{}E{}", wc_lat, wc_lon.cast(pl.String).str.zfill(3))
    pid = pl.format("{}_{}_{}", "s2_tile", pl.col("row").cast(pl.String).str.zfill(3), pl.col("col").cast(pl.String).str.zfill(3))
    x, y = pl.col("col") * 256, pl.col("row") * 256
    frame = frame.with_columns(pid.alias("patch_id"), wc_tile.alias("wc_tile"), x.alias("x_off"), y.alias("y_off"),
                               pl.lit(256, pl.Int32).alias("width"), pl.lit(256, pl.Int32).alias("height"),
                               ((lon - wc_lon) * DEG + x).alias("wc_x_off"), ((wc_lat + 3 - lat - 1) * DEG + y).alias("wc_y_off"),
                               (lon + x / DEG).alias("lon_min"), (lat + 1 - (y + 256) / DEG).alias("lat_min"),
                               (lon + (x + 256) / DEG).alias("lon_max"), (lat + 1 - y / DEG).alias("lat_max"))
    frame = frame.with_columns(
        pl.format("s3://esa-worldcover-s2/rgbnir/2021/N{}/ESA_WorldCover_10m_2021_v200_{}_S2RGBNIR.tif", lat, "s2_tile")
        .alias("s2_uri"),
        pl.format("s3://esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_{}_Map.tif", "wc_tile").alias("wc_uri"),
        pl.format("patches/{}/images/{}.png", "s2_tile", "patch_id").alias("image_path"),
        pl.format("patches/{}/masks/{}.png", "s2_tile", "patch_id").alias("mask_path"),
        pl.Series("image_sha256", hex_digests(rng, frame.height)), pl.Series("mask_sha256", hex_digests(rng, frame.height)),
        pl.lit("per_patch_max").alias("normalization"),
        *[pl.Series(f"px_{c}", rng.integers(0, 9363, frame.height, dtype=np.int32)) for c in CLASSES])
    columns = ["patch_id", "s2_tile", "wc_tile", "row", "col", "x_off", "y_off", "width", "height", "wc_x_off", "wc_y_off",
               "lon_min", "lat_min", "lon_max", "lat_max", "s2_uri", "wc_uri", "image_path", "mask_path", "image_sha256",
               "mask_sha256", "normalization", *[f"px_{c}" for c in CLASSES]]
    frame = frame.select(columns).with_columns(pl.col(c).cast(pl.Int32) for c in ("x_off", "y_off", "wc_x_off", "wc_y_off"))
    write_partitions(frame, "s2_tile", f"{root}/patches/{{key}}/manifest.parquet")
    return frame.select("patch_id", "s2_tile")


def build_synthetic(root: Path, patches: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    n_uncond = UNCOND_SHARDS * SHARD_SIZE
    shard = np.repeat(np.arange(UNCOND_SHARDS), SHARD_SIZE)
    uncond = pl.DataFrame({"shard": pl.Series(shard).cast(pl.String).str.zfill(4),
                           "index": np.tile(np.arange(SHARD_SIZE, dtype=np.int32), UNCOND_SHARDS)}) \
        .with_columns(pl.lit("uncond").alias("origin"), pl.lit(None, pl.String).alias("conditioning_patch_id"))
    # Conditional: the first images of each tile's patches, as many per tile as the total allows.
    per_tile = patches.group_by("s2_tile", maintain_order=True).len()
    take = np.full(per_tile.height, COND_IMAGES // per_tile.height)
    take[: COND_IMAGES % per_tile.height] += 1
    cond = pl.concat([patches.filter(pl.col("s2_tile") == t).head(int(n)).with_row_index("index")
                      for t, n in zip(per_tile["s2_tile"], take, strict=True)])
    cond = cond.select(pl.col("s2_tile").alias("shard"), pl.col("index").cast(pl.Int32), pl.lit("cond").alias("origin"),
                       pl.col("patch_id").alias("conditioning_patch_id"))
    frame = pl.concat([uncond.select(cond.columns), cond])
    n = frame.height
    image_id = pl.format("{}_{}_{}", "origin", "shard", pl.col("index").cast(pl.String).str.zfill(5))
    frame = frame.with_columns(image_id.alias("image_id")).with_columns(
        pl.Series("seed", rng.integers(0, 2**62, n)), pl.lit(0.7).alias("truncation_psi"),
        pl.format("aras-gan-{}", "origin").alias("model_name"),
        pl.when(pl.col("origin") == "uncond").then(pl.lit("4")).otherwise(pl.lit("2")).alias("model_version"),
        pl.format("{}{}", pl.lit("f3c1d2"), "origin").alias("mlflow_run_id"),
        pl.lit(0, pl.Int32).alias("variant"), (pl.col("index") // 64 * 64).cast(pl.Int32).alias("batch_start"),
        pl.lit(64, pl.Int32).alias("batch_size"), pl.lit("cuda").alias("device"), pl.lit("bf16").alias("precision"),
        pl.lit(256, pl.Int32).alias("resolution"),
        pl.format("synthetic/{}/{}/images/{}.png", "origin", "shard", "image_id").alias("image_path"),
        pl.when(pl.col("origin") == "cond").then(pl.format("patches/{}/masks/{}.png", "shard", "conditioning_patch_id"))
        .otherwise(None).alias("mask_path"),
        pl.Series("content_sha256", hex_digests(rng, n)),
        pl.format("9b8e7f6a-{}-{}", "origin", "shard").alias("dagster_run_id"),
        pl.lit("0123456789abcdef").alias("generator_code"))
    frame = frame.select(list(SYNTHETIC_SCHEMA))
    for origin in ("uncond", "cond"):
        write_partitions(frame.filter(pl.col("origin") == origin), "shard", f"{root}/synthetic/{origin}/{{key}}/manifest.parquet")
    labels = frame.head(n_uncond).select(
        "image_id", "image_path", pl.format("labels/uncond_labels/{}/masks/{}.png", "shard", "image_id").alias("mask_path"),
        pl.lit("aras-segmentation-segformer").alias("model_name"), pl.lit("3").alias("model_version"),
        pl.lit("segformer").alias("arch"), pl.lit("mit_b2").alias("encoder"), pl.lit(256, pl.Int32).alias("height"),
        pl.lit(256, pl.Int32).alias("width"), pl.Series("mask_sha256", hex_digests(rng, n_uncond)),
        *[pl.Series(f"px_{c}", rng.integers(0, 9363, n_uncond)) for c in CLASSES], "shard")
    write_partitions(labels, "shard", f"{root}/labels/uncond_labels/{{key}}/manifest.parquet", drop=True)
    record = root / "models" / "segmentation" / "segformer" / "model.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"model_name": "aras-segmentation-segformer", "model_version": "3",
                                  "mlflow_run_id": "5e6f7a8b9c", "encoder": "mit_b2"}))
    return frame.select("image_id", "origin", "shard")


def build_captions(root: Path, images: pl.DataFrame, rng: np.random.Generator) -> int:
    subjects, details, tails = pl.Series(SUBJECTS), pl.Series(DETAILS), pl.Series(TAILS)
    total = 0
    for origin in ("real", "uncond", "cond"):
        own = images.filter(pl.col("origin") == origin)
        n = own.height * CAPTIONS_PER_IMAGE
        slot = np.tile(np.arange(CAPTIONS_PER_IMAGE), own.height)
        modes = pl.Series([m for m, _ in SLOTS]).gather(slot)
        frame = pl.DataFrame({
            "image_id": own["image_id"].gather(np.repeat(np.arange(own.height), CAPTIONS_PER_IMAGE)),
            "partition": own["shard"].gather(np.repeat(np.arange(own.height), CAPTIONS_PER_IMAGE)),
            "mode": modes, "caption_index": pl.Series([k for _, k in SLOTS], dtype=pl.Int32).gather(slot)})
        text = pl.format("{} {} {}, about {}% {}.", subjects.gather(rng.integers(0, len(SUBJECTS), n)),
                         details.gather(rng.integers(0, len(DETAILS), n)), tails.gather(rng.integers(0, len(TAILS), n)),
                         pl.Series(rng.integers(5, 95, n)), pl.Series(CLASSES).gather(rng.integers(0, len(CLASSES), n)))
        frame = frame.with_columns(
            pl.format("{}_{}_{}", "image_id", "mode", "caption_index").alias("caption_id"),
            pl.lit(origin).alias("origin"), pl.lit("vllm").alias("backend"), pl.lit("Qwen2.5-VL-7B-Instruct").alias("model"),
            pl.format("p{}", "mode").alias("prompt_hash"),
            (pl.concat_str("image_id", "mode").hash(7) // 2).cast(pl.Int64).alias("seed"),
            text.alias("text"))
        frame = frame.select("caption_id", "image_id", "origin", "mode", "caption_index", "backend", "model", "prompt_hash",
                             "seed", "text", "partition")
        files = write_partitions(frame, "partition", f"{root}/captions/{origin}/{{key}}/captions.parquet", drop=True)
        total += frame.height
        log(f"captions/{origin}: {frame.height:,} captions in {files} files")
    return total


def build(root: Path, seed: int) -> list[str]:
    """Write every manifest under root; returns all image ids (real first)."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    patches = build_patches(root, rng)
    log(f"patches: {patches.height:,} over {patches['s2_tile'].n_unique()} tiles ({time.perf_counter() - start:.1f} s)")
    synthetic = build_synthetic(root, patches, rng)
    log(f"synthetic: {synthetic.height:,} images, labels of the unconditional ones ({time.perf_counter() - start:.1f} s)")
    images = pl.concat([patches.select(pl.col("patch_id").alias("image_id"), pl.lit("real").alias("origin"),
                                       pl.col("s2_tile").alias("shard")), synthetic])
    captions = build_captions(root, images, rng)
    log(f"captions: {captions:,} ({time.perf_counter() - start:.1f} s)")
    return images["image_id"].to_list()


def manifest_sizes(root: Path) -> tuple[int, int, int]:
    """Files, bytes on disk, and bytes the manifests take once read into memory (polars' estimate)."""
    files = list(root.rglob("*.parquet"))
    return len(files), sum(p.stat().st_size for p in files), sum(pl.read_parquet(p).estimated_size() for p in files)


def _measure(root: str, warmup: list[str], singles: list[str], batch: list[str], queue: multiprocessing.Queue) -> None:
    """Runs in a fresh interpreter: the lookups and this process's own peak memory."""
    from aras_assets.operations.lineage import trace, trace_many

    after_imports = peak_rss_kib()
    for record_id in warmup:
        trace(Path(root), record_id)
    times = []
    for record_id in singles:
        start = time.perf_counter()
        record = trace(Path(root), record_id)
        times.append(time.perf_counter() - start)
        assert record["id"] == record_id and (record["patch"] or record["image"])
    start = time.perf_counter()
    records = trace_many(Path(root), batch)
    batch_s = time.perf_counter() - start
    assert [r["id"] for r in records] == batch
    origins = {o: sum(r["origin"] == o for r in records) for o in ("real", "uncond", "cond")}
    queue.put({"times": times, "batch_s": batch_s, "after_imports_kib": after_imports, "peak_kib": peak_rss_kib(),
               "origins": origins})


def run(args: argparse.Namespace) -> None:
    scratch = None
    if args.work_dir is None:
        scratch = tempfile.mkdtemp(prefix="aras-lineage-bench-")
        root = Path(scratch)
    else:
        root = args.work_dir
    try:
        if args.skip_build:
            if not (root / "captions").is_dir():
                raise SystemExit(f"--skip-build: no manifests under {root}")
            frames = [pl.scan_parquet(root / "patches/*/manifest.parquet").select(pl.col("patch_id").alias("image_id")),
                      pl.scan_parquet(root / "synthetic/*/*/manifest.parquet").select("image_id")]
            image_ids = pl.concat(frames).collect()["image_id"].to_list()
        else:
            if root.exists() and scratch is None:
                shutil.rmtree(root)
            root.mkdir(parents=True, exist_ok=True)
            log(f"building manifests under {root}")
            image_ids = build(root, args.seed)
        files, size, in_memory = manifest_sizes(root)
        log(f"{len(image_ids):,} images, {files} manifest files: {size / 2**20:.1f} MiB on disk, "
            f"{in_memory / 2**20:.0f} MiB read into memory")

        rng = np.random.default_rng(args.seed + 1)

        def caption_ids(count: int) -> list[str]:
            picks = rng.integers(0, len(image_ids), count)
            slots = rng.integers(0, CAPTIONS_PER_IMAGE, count)
            return [f"{image_ids[i]}_{SLOTS[s][0]}_{SLOTS[s][1]}" for i, s in zip(picks, slots, strict=True)]

        warmup, singles, batch = caption_ids(3), caption_ids(args.singles), caption_ids(args.batch)
        log(f"timing {args.singles} single lookups and a batch of {args.batch:,} in a fresh process")
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_measure, args=(str(root), warmup, singles, batch, queue))
        child.start()
        result = queue.get()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"the lookup child failed with exit code {child.exitcode}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    ms = np.array(result["times"]) * 1000
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    log(f"single lookups: min {ms.min():.1f} ms, mean {ms.mean():.1f} ms, max {ms.max():.1f} ms; "
        f"p99 target < {P99_TARGET_MS:.0f} ms: {'met' if p99 < P99_TARGET_MS else 'MISSED'}")
    log(f"batch: {result['batch_s']:.2f} s for {args.batch:,} ids ({result['origins']}); "
        f"target < {BATCH_TARGET_S:.0f} s: {'met' if result['batch_s'] < BATCH_TARGET_S else 'MISSED'}")
    print(f"peak RSS {result['peak_kib'] / 1024:.0f} MiB ({result['after_imports_kib'] / 1024:.0f} MiB after imports) "
          f"vs manifests {size / 2**20:.0f} MiB on disk, {in_memory / 2**20:.0f} MiB in memory")
    print(f"lineage lookup: p50 {p50:.1f} ms, p99 {p99:.1f} ms; batch of {args.batch // 1000}k: {result['batch_s']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--singles", type=int, default=200, help="random caption ids looked up one at a time")
    parser.add_argument("--batch", type=int, default=10_000, help="random caption ids looked up in one trace_many")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="build here and keep it (default: a temporary folder, removed at the end)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the manifests already in --work-dir")
    args = parser.parse_args()
    if args.skip_build and args.work_dir is None:
        parser.error("--skip-build needs --work-dir")
    if args.singles < 1 or args.batch < 1:
        parser.error("--singles and --batch must be at least 1")
    run(args)


if __name__ == "__main__":
    main()
