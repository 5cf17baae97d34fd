"""Benchmark: the caption stage on realistic masks: the offline captioner, CLIPScore and redundancy at scale.

Inputs are 256x256 crops of the embedded sample region (1024 px tiles, seed 7): class-index masks
(0..6, WorldCover through label_lut and the release's remap) and their 8-bit RGB images as PNGs.

1. compositions/s of compute_composition, then offline_captions (n=5) in the text, vision and
   hybrid modes, timed in a child process pinned to one CPU. Target: >= 1000 captions/s on one core.
2. CLIPScore (clip_scores, batch 64) of --images PNG files x 5 offline captions each, with a tiny
   open_clip model of random weights registered from a local config (nothing is downloaded).
3. --captions offline captions (default 2,000,000: pseudo-images cycling over the masks, one seed per
   image and mode as the pipeline derives it, ~1/3 "real" and ~2/3 "synthetic", generated on all
   CPUs), in a polars frame (origin, mode, text); redundancy_table (per origin and mode, per origin,
   overall; exact and normalized) and redundancy of the text column alone are timed. Target for
   redundancy_table: T < 5 s.

    .venv/bin/python bench/captions.py [--captions 2000000] [--images 200] [--work-dir bench/out/captions]

Progress goes to stderr; the last line printed is:
    redundancy over 2M captions: T s
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from common import log, peak_rss_kib  # bench/common.py, beside this script
from region import even_picks, region_crops  # bench/region.py

from aras_assets.captions.captioning import caption_seed
from aras_assets.captions.composition import Composition, compute_composition
from aras_assets.captions.evaluation import PAPER_REDUNDANCY, paper_mode_redundancy, redundancy, redundancy_table
from aras_assets.captions.offline import offline_captions
from aras_assets.ids import PATCH_SIZE
from aras_assets.layout import CAPTION_MODES
from aras_assets.sources.patches import encode_png, to_8bit
from aras_assets.sources.sample_region import write_sample_region

DEFAULT_WORK_DIR = Path(__file__).resolve().parent / "out" / "captions"  # git-ignored
TILE_PX = 1024
CROP_STRIDE = 64  # overlapping crops: about 560 distinct masks from the 4 sample tiles
N_PER_IMAGE = 5
CAPTIONER_TARGET = 1000.0  # captions/s on one core
REDUNDANCY_TARGET = 5.0  # seconds for redundancy_table over 2M captions
SINGLE_CORE_CAPTIONS = 60_000  # captions per mode in the one-core timing (~1 s each)
GENERATION_CHUNK = 4_000  # pseudo-images per task of the generation pool
TINY_CLIP = "aras-bench-tiny-clip"
TINY_CLIP_CONFIG = {"embed_dim": 32,
                    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}






# --- inputs: masks and images cut from the sample region -------------------------------------


def cut_crops(region: Path, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """`count` (crop id, (3, H, W) uint16 RGB, (H, W) uint8 class mask) crops without nodata, picked evenly
    from a CROP_STRIDE grid over every sample tile."""
    crops = region_crops(region, CROP_STRIDE)
    return [(f"{tile}_y{y:04d}_x{x:04d}", rgb, classes) for tile, y, x, rgb, classes in
            (crops[k] for k in even_picks(len(crops), count, "lower --images or --masks"))]


# --- 1. the offline captioner on one core -----------------------------------------------------


def _captioner_child(compositions: list[Composition], cpu: int, rounds: int, queue: multiprocessing.Queue) -> None:
    os.sched_setaffinity(0, {cpu})
    result: dict[str, dict[str, float]] = {}
    for composition in compositions[:50]:  # warm-up: caches, branch predictors, the allocator
        offline_captions(composition, "hybrid", 0, N_PER_IMAGE)
    for mode in CAPTION_MODES:
        made = calls = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for seed in range(rounds):
            for composition in compositions:
                made += len(offline_captions(composition, mode, seed, N_PER_IMAGE))
                calls += 1
        result[mode] = {"captions": made, "calls": calls, "seconds": time.perf_counter() - start,
                        "cpu_seconds": time.process_time() - cpu_start}
    queue.put(result)


def time_captioner(compositions: list[Composition]) -> tuple[int, dict[str, dict[str, float]]]:
    """offline_captions per mode in a forked child pinned to one CPU (the first this process may use)."""
    cpu = min(os.sched_getaffinity(0))
    rounds = max(1, math.ceil(SINGLE_CORE_CAPTIONS / (N_PER_IMAGE * len(compositions))))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_captioner_child, args=(compositions, cpu, rounds, queue))
    child.start()
    result = queue.get()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"the captioner timing child failed with exit code {child.exitcode}")
    return cpu, result


# --- 3. many captions, then redundancy ------------------------------------------------------------

_GEN_COMPOSITIONS: list[Composition] = []  # set before the pool forks; the workers read it


def _generate(first_last: tuple[int, int]) -> tuple[list[str], list[str], list[str]]:
    """Captions of pseudo-images first..last-1: image k has composition k mod len, origin real for k mod 3 == 0,
    and in every mode N_PER_IMAGE captions seeded as the pipeline seeds them."""
    texts: list[str] = []
    modes: list[str] = []
    origins: list[str] = []
    comps = _GEN_COMPOSITIONS
    for k in range(*first_last):
        origin = "real" if k % 3 == 0 else "synthetic"
        image_id = f"bench{k:08d}"
        composition = comps[k % len(comps)]
        for mode in CAPTION_MODES:
            out = offline_captions(composition, mode, caption_seed(0, image_id, mode), N_PER_IMAGE)
            texts += out
            modes += [mode] * len(out)
            origins += [origin] * len(out)
    return texts, modes, origins


def generate_frame(compositions: list[Composition], total: int, per_image: float,
                   workers: int) -> tuple[pl.DataFrame, int]:
    """`total` caption rows (origin, mode, text) from a fork pool; returns the frame and the images used."""
    global _GEN_COMPOSITIONS
    _GEN_COMPOSITIONS = compositions
    images = math.ceil(total / per_image * 1.02) + GENERATION_CHUNK  # a margin: some scenes give fewer than 5
    chunks = [(a, min(a + GENERATION_CHUNK, images)) for a in range(0, images, GENERATION_CHUNK)]
    parts: list[pl.DataFrame] = []
    made = used = 0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for (_, last), (texts, modes, origins) in zip(chunks, pool.imap(_generate, chunks), strict=False):
            parts.append(pl.DataFrame({"origin": origins, "mode": modes, "text": texts}))
            made += len(texts)
            used = last
            if made >= total:
                pool.terminate()  # the rest of the margin is not needed
                break
    if made < total:
        raise SystemExit(f"generated only {made} captions of the {total} asked for")
    return pl.concat(parts).head(total), used


def time_redundancy(frame: pl.DataFrame, repeats: int) -> dict[str, object]:
    times, cpu_times, table = [], [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        table = redundancy_table(frame)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)  # all polars threads: CPU/wall shows the cores it got
    start = time.perf_counter()
    overall = redundancy(frame["text"])
    exact_s = time.perf_counter() - start
    # Where redundancy_table's time goes. It builds the normalized text inside each of its three group
    # levels (origin and mode, origin, overall), so the normalizing steps below run three times in it.
    text = pl.col("text")
    exact_aggs = [pl.len(), text.n_unique()]
    parts: dict[str, float] = {}
    for name, run in (
        ("lowercase", lambda: frame.select(text.str.to_lowercase())),
        (r"remove [^\w%\s-]", lambda: frame.select(text.str.replace_all(r"[^\w%\s-]", ""))),
        (r"one space for other whitespace", lambda: frame.select(text.str.replace_all(r"[^\S ]|\s{2,}", " "))),
        ("strip", lambda: frame.select(text.str.strip_chars())),
        ("exact n_unique at the 3 levels", lambda: (frame.group_by("origin", "mode").agg(exact_aggs),
                                                    frame.group_by("origin").agg(exact_aggs), frame.select(exact_aggs))),
    ):
        start = time.perf_counter()
        run()
        parts[name] = time.perf_counter() - start
    return {"times": times, "cpu_times": cpu_times, "table": table, "exact": overall, "exact_s": exact_s, "parts": parts}


# --- 2. CLIPScore with a tiny local model ------------------------------------------------------------


def time_clipscore(work: Path, image_paths: list[Path], captions: list[str], index: list[int],
                   seed: int) -> dict[str, object]:
    import open_clip
    import open_clip.factory
    import torch

    from aras_assets.captions.clipscore import clip_scores
    from resources.clip import load_clip

    def no_download(*args: object, **kwargs: object) -> None:
        raise RuntimeError("open_clip tried to download weights; this benchmark runs on local files only")

    open_clip.factory.download_pretrained = no_download
    open_clip.factory.download_pretrained_from_hf = no_download
    configs = work / "clip" / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(configs)
    torch.manual_seed(seed)
    weights = work / "clip" / f"{TINY_CLIP}_seed{seed}.pt"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that a model built with pretrained=None is random: it is meant to be
    try:
        torch.save(open_clip.create_model(TINY_CLIP, pretrained=None).state_dict(), weights)
    finally:
        root.setLevel(level)
    clip = load_clip(TINY_CLIP, weights)
    params = sum(p.numel() for p in clip.model.parameters())
    warm = [i for i in index if i < 8]
    clip_scores(clip, image_paths[:8], captions[:len(warm)], warm, batch_size=64)  # warm-up: kernels, tokenizer
    start, cpu_start = time.perf_counter(), time.process_time()
    scores = clip_scores(clip, image_paths, captions, index, batch_size=64)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "params": params, "threads": torch.get_num_threads(),
            "mean": float(scores.mean()), "torch": torch.__version__}


# --- orchestration and report -------------------------------------------------------------------


def timed(label: str, fn: Callable[[], object]) -> tuple[object, float]:
    log(f"{label} ...")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    log(f"{label}: {seconds:.2f}s")
    return out, seconds


def run(args: argparse.Namespace) -> None:
    wall_start = time.perf_counter()
    work: Path = args.work_dir
    region = work / f"region_{TILE_PX}px_seed{args.seed}"
    write_sample_region(region, seed=args.seed, tile_px=TILE_PX, progress=log)
    n_masks = max(args.masks, args.images)
    crops = cut_crops(region, n_masks)
    masks = [mask for _, _, mask in crops]
    log(f"{len(masks)} masks of {PATCH_SIZE}x{PATCH_SIZE} cut from {region}")

    start = time.perf_counter()
    compositions = [compute_composition(mask) for mask in masks]
    comp_s = time.perf_counter() - start
    classes_per_mask = np.mean([len(c.layouts) for c in compositions])

    log(f"timing the offline captioner on one CPU, {len(CAPTION_MODES)} modes, ~{SINGLE_CORE_CAPTIONS} captions each")
    cpu, single = time_captioner(compositions)
    made = sum(r["captions"] for r in single.values())
    single_s = sum(r["seconds"] for r in single.values())
    single_cpu_s = sum(r["cpu_seconds"] for r in single.values())
    per_call = made / sum(r["calls"] for r in single.values())

    workers = len(os.sched_getaffinity(0))
    log(f"generating {args.captions} captions with {workers} worker process(es) ...")
    start = time.perf_counter()
    frame, images_used = generate_frame(compositions, args.captions, per_call * len(CAPTION_MODES), workers)
    gen_s = time.perf_counter() - start
    log(f"generated in {gen_s:.1f}s; timing redundancy_table x{args.repeats}, redundancy, and redundancy_table's parts")
    rss_before_kib = peak_rss_kib()
    red = time_redundancy(frame, args.repeats)
    rss_kib = peak_rss_kib()
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    origin_counts = dict(frame.group_by("origin").len().iter_rows())
    frame_mib = frame.estimated_size("mb")
    del frame

    image_dir = work / f"images_{TILE_PX}px_seed{args.seed}_{args.images}"
    image_dir.mkdir(parents=True, exist_ok=True)
    image_paths: list[Path] = []
    captions: list[str] = []
    index: list[int] = []
    for k, (cid, rgb, _) in enumerate(crops[:args.images]):
        path = image_dir / f"{cid}.png"
        if not path.exists():
            path.write_bytes(encode_png(to_8bit(rgb), 1))
        image_paths.append(path)
        mode = CAPTION_MODES[k % len(CAPTION_MODES)]
        texts = offline_captions(compositions[k], mode, caption_seed(0, cid, mode), N_PER_IMAGE)
        captions += texts
        index += [k] * len(texts)
    clip, _ = timed(f"CLIPScore of {len(image_paths)} images x {len(captions)} captions (tiny model)",
                    lambda: time_clipscore(work, image_paths, captions, index, args.seed))
    assert isinstance(clip, dict)

    # --- report ---
    print(f"machine: {os.cpu_count()} CPU(s), {workers} usable; load average {os.getloadavg()[0]:.2f}; "
          f"polars {pl.__version__}, torch {clip['torch']}")
    print(f"inputs: {len(masks)} masks of {PATCH_SIZE}x{PATCH_SIZE} cut from the sample region ({TILE_PX} px tiles, "
          f"seed {args.seed}, stride {CROP_STRIDE}); {classes_per_mask:.1f} classes per mask on average")
    print(f"compositions: {len(masks) / comp_s:.0f} masks/s ({comp_s / len(masks) * 1000:.2f} ms each)")
    for mode, r in single.items():
        print(f"offline captioner {mode}: {r['captions'] / r['seconds']:.0f} captions/s "
              f"({r['captions']} captions, {r['captions'] / r['calls']:.2f} per call of n={N_PER_IMAGE})")
    rate = made / single_s
    print(f"offline captioner: {rate:.0f} captions/s on one core (CPU {cpu}, all modes; "
          f"CPU/wall {single_cpu_s / single_s:.2f}; target >= {CAPTIONER_TARGET:.0f}: "
          f"{'met' if rate >= CAPTIONER_TARGET else 'MISSED'})")
    n_clip_images = len(image_paths)
    print(f"CLIPScore (tiny model): {n_clip_images / clip['seconds']:.1f} images/s, "
          f"{len(captions) / clip['seconds']:.1f} captions/s ({n_clip_images} PNG files, {len(captions)} captions, "
          f"batch 64, {clip['params'] / 1e6:.2f} M parameters, random weights, {clip['threads']} torch threads, "
          f"CPU/wall {clip['cpu_seconds'] / clip['seconds']:.2f}; mean score {clip['mean']:.1f})")
    print(f"generation: {args.captions} captions in {gen_s:.1f}s = {args.captions / gen_s:.0f} captions/s "
          f"with {workers} process(es) ({images_used} pseudo-images over {len(compositions)} masks, "
          f"origins {origin_counts}, frame {frame_mib:.0f} MB)")
    table = red["table"]
    assert isinstance(table, pl.DataFrame)
    print("redundancy found (exact / normalized, % of captions repeated; the paper's Table 2 beside):")
    for row in table.iter_rows(named=True):
        key = (row["origin"], row["mode"])
        subset = key[0] if key[0] in ("all", "real") else "synthetic"
        paper = PAPER_REDUNDANCY["overall"] if key == ("all", "all") else paper_mode_redundancy(subset, key[1])
        paper_text = f"; paper {paper:.2f}%" if paper is not None else ""
        print(f"  {row['origin']:>9} {row['mode']:>6}: {row['redundancy_pct']:6.2f}% / {row['redundancy_norm_pct']:6.2f}% "
              f"({row['captions']} captions, {row['unique']} unique{paper_text})")
    overall = table.filter((pl.col("origin") == "all") & (pl.col("mode") == "all")).row(0, named=True)
    by_mode = {m: [r["redundancy_pct"] for r in table.iter_rows(named=True) if r["mode"] == m] for m in CAPTION_MODES}
    print(f"redundancy overall {overall['redundancy_pct']:.2f}% (normalized {overall['redundancy_norm_pct']:.2f}%); "
          + ", ".join(f"{m} {min(v):.2f}-{max(v):.2f}%" for m, v in by_mode.items())
          + f" (real-synthetic range); redundancy(text) alone {100 * red['exact']:.2f}%")
    times = red["times"]
    assert isinstance(times, list)
    parts = red["parts"]
    assert isinstance(parts, dict)
    cpu_times = red["cpu_times"]
    assert isinstance(cpu_times, list)
    print(f"redundancy(text) alone: {red['exact_s']:.2f}s; redundancy_table runs: "
          + ", ".join(f"{t:.2f}s (CPU/wall {c / t:.2f})" for t, c in zip(times, cpu_times, strict=True))
          + " (the first is the headline)")
    print("redundancy_table steps, each timed alone on the text column: "
          + "; ".join(f"{k} {v:.2f}s" for k, v in parts.items()) + " (normalizing runs once, counting at each of the 3 levels)")
    print(f"peak RSS: {rss_kib / 1024:.0f} MiB in the main process ({rss_before_kib / 1024:.0f} MiB before "
          f"redundancy_table), largest child {children_kib / 1024:.0f} MiB; total run {time.perf_counter() - wall_start:.0f}s")
    t = times[0]
    print(f"redundancy_table target < {REDUNDANCY_TARGET:.0f} s: {'met' if t < REDUNDANCY_TARGET else 'MISSED'}")
    print(f"redundancy over {args.captions / 1e6:g}M captions: {t:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=2_000_000, help="captions generated for the redundancy timing")
    parser.add_argument("--images", type=int, default=200, help="PNG images scored by CLIPScore, 5 captions each")
    parser.add_argument("--masks", type=int, default=400, help="masks cut from the sample region (at least --images)")
    parser.add_argument("--repeats", type=int, default=2, help="redundancy_table runs; the first is the headline")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args()
    if min(args.captions, args.images, args.masks, args.repeats) < 1:
        parser.error("--captions, --images, --masks and --repeats must be at least 1")
    run(args)


if __name__ == "__main__":
    main()
