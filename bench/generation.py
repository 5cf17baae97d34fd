"""Benchmark: batched GAN generation against one image at a time, same generators, same seeds.

Both generators are built at the configured size (aras_assets.settings.load_settings(), so the
demo profile unless ARAS_PROFILE / ARAS_SETTINGS / ARAS_* say otherwise; networks from
generation.configs.style_config and spade_config), randomly initialised with a fixed seed: the
speed of a forward pass does not depend on what the weights learned. Every image has its own
seed (sampling.image_seed), the conditional one also its own class map, so batching changes
how many images one forward pass makes, never which images are made: the bench checks that the
batched and the one-at-a-time images agree (within one grey level in fp32, a few in bf16: the
kernels, so the roundings, change with the batch shape).

Ours is what the generation assets do: sampling.generate_uncond / generate_cond on batches of
`gen_batch_size` images (and of 64, the paper profile's batch). The baseline calls the same
functions with one seed (and one mask) per call. Both run on the CPU through plain fp32
(TorchRuntime("cpu")), fp32 channels_last and, on CPUs with native bf16 (AMX / AVX512-BF16),
bf16 autocast with channels_last, each on its own line. The headline is the runtime the
generation assets use on this CPU (TorchDeviceResource.runtime(inference=True): bf16 autocast
with channels_last where the CPU has native bf16, else fp32 channels_last), since that is the
speed a user generating shards gets. Every setting is warmed up on each batch shape it meets
before the clock runs, the methods are interleaved --repeats times and the best time of each
is kept (the machine may be shared). PNG encoding (sampling.png_bytes, the bytes written to
disk) is timed per image on its own, and whole unconditional shards are written to a temporary
folder through sampling.generate_partition with one PNG writer and with PNG_WORKERS writers
overlapping the next batch's rendering (what the uncond_images asset does).

With CUDA present it also times training of both GANs through StyleGanTrainer / SpadeTrainer
(the assets' recipes from generation.configs, bf16 autocast, channels_last, device-resident
batches: the GPU's speed, not PNG decoding) in thousands of images per hour, and bf16
generation at batch 64.

    .venv/bin/python bench/generation.py [--images 256] [--threads N] [--repeats 3]

The last line printed is:
    generation speedup vs one-at-a-time: X (uncond A img/s vs B img/s, cond C img/s vs D img/s, batch N, RUNTIME)
with A, C batched and B, D one at a time (the assets' CPU runtime, batch N = gen_batch_size) and
X the smaller of the two speedups A / B and C / D (the weaker generator decides, not an average).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from common import cpu_name, log  # bench/common.py, beside this script

from aras_assets.generation.configs import cond_recipe, spade_config, style_config, uncond_recipe
from aras_assets.generation.sampling import (
    PNG_LEVEL,
    PNG_WORKERS,
    GeneratorRun,
    Partition,
    generate_cond,
    generate_partition,
    generate_uncond,
    image_seed,
    png_bytes,
    precision_name,
    uncond_plan,
)
from aras_assets.generation.spade import SpadeGenerator
from aras_assets.generation.stylegan import StyleGenerator
from aras_assets.generation.training import SpadeTrainer, StyleGanTrainer
from aras_assets.settings import Settings, load_settings
from resources.device import TorchDeviceResource, TorchRuntime, cpu_has_native_bf16

LARGE_BATCH = 64  # the paper profile's gen_batch_size
# Largest difference in grey levels allowed between an image made in a batch and alone.
FP32_TOLERANCE = 1
BF16_TOLERANCE = 8  # bf16 keeps 8 significant bits: a few levels move with the kernel choice
SHARD = "bench"
CUDA_BF16 = TorchRuntime("cuda", torch.bfloat16, True)  # what the assets use on a GPU

# A method: generate the images of seeds[begin:end] (and their masks) in one call.
Generate = Callable[[int, int], np.ndarray]


def class_maps(count: int, size: int, classes: int, seed: int) -> np.ndarray:
    """[count, size, size] class indices: a background class and a few rectangles of others,
    each image its own (a land-cover-like layout; the content does not change the speed)."""
    rng = np.random.default_rng(seed)
    masks = np.empty((count, size, size), np.int64)
    for k in range(count):
        masks[k] = rng.integers(0, classes)
        for _ in range(4):
            y0, x0 = rng.integers(0, size - 1, 2)
            h, w = rng.integers(1, size // 2 + 1, 2)
            masks[k, y0:y0 + h, x0:x0 + w] = rng.integers(0, classes)
    return masks


def bench_inputs(G_cond: SpadeGenerator, count: int, seed: int) -> tuple[list[int], list[int], np.ndarray]:
    """Seeds of `count` unconditional and conditional images, and the conditional ones' masks."""
    seeds = [image_seed(seed, "uncond", SHARD, k) for k in range(count)]
    cond_seeds = [image_seed(seed, "cond", SHARD, k) for k in range(count)]
    return seeds, cond_seeds, class_maps(count, G_cond.config.resolution, G_cond.config.classes, seed)


def parameters(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def run_batched(generate: Generate, count: int, batch: int) -> np.ndarray:
    return np.concatenate([generate(begin, min(begin + batch, count)) for begin in range(0, count, batch)])


def warm_up(generate: Generate, count: int, batch: int) -> None:
    """One call per batch shape the timed pass meets (oneDNN builds its kernels per shape)."""
    generate(0, min(batch, count))
    if count > batch and count % batch:
        generate(0, count % batch)


def timed(generate: Generate, count: int, batch: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    images = run_batched(generate, count, batch)
    return time.perf_counter() - start, images


def compare(name: str, methods: dict[str, tuple[Generate, int]], count: int, repeats: int,
            tolerance: int) -> tuple[dict[str, float], int]:
    """img/s of each method (best of `repeats`, methods interleaved), and the largest difference
    in grey levels between the batched and the one-at-a-time images (at most `tolerance`)."""
    for label, (generate, batch) in methods.items():
        log(f"{name}: warming up {label}")
        warm_up(generate, count, batch)
    best = dict.fromkeys(methods, float("inf"))
    images: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        for label, (generate, batch) in methods.items():
            seconds, images[label] = timed(generate, count, batch)
            best[label] = min(best[label], seconds)
            log(f"{name} run {repeat + 1}/{repeats}: {label} {count} images in {seconds:.2f}s")
    reference = images["one-at-a-time"].astype(np.int16)
    worst = 0
    for label, made in images.items():
        diff = int(np.abs(made.astype(np.int16) - reference).max())
        if diff > tolerance:
            raise SystemExit(f"{name}: {label} images differ from the one-at-a-time ones by {diff} grey levels "
                             f"(more than {tolerance}): batching changed which images are made")
        worst = max(worst, diff)
    return {label: count / seconds for label, seconds in best.items()}, worst


def uncond_methods(G: StyleGenerator, seeds: list[int], runtime: TorchRuntime,
                   batches: list[int]) -> dict[str, tuple[Generate, int]]:
    def generate(begin: int, end: int) -> np.ndarray:
        return generate_uncond(G, seeds[begin:end], 1.0, runtime)

    return {**{f"batch {b}": (generate, b) for b in batches}, "one-at-a-time": (generate, 1)}


def cond_methods(G: SpadeGenerator, masks: np.ndarray, seeds: list[int], runtime: TorchRuntime,
                 batches: list[int]) -> dict[str, tuple[Generate, int]]:
    def generate(begin: int, end: int) -> np.ndarray:
        return generate_cond(G, masks[begin:end], seeds[begin:end], runtime)

    return {**{f"batch {b}": (generate, b) for b in batches}, "one-at-a-time": (generate, 1)}


def rates_text(rates: dict[str, float]) -> str:
    one = rates["one-at-a-time"]
    return ", ".join(f"{label} {rate:.1f} img/s" + ("" if label == "one-at-a-time" else f" (x{rate / one:.2f})")
                     for label, rate in rates.items())


def png_ms_per_image(images: np.ndarray, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            png_bytes(image)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(images)


def shard_rate(G: StyleGenerator, runtime: TorchRuntime, count: int, batch: int, workers: int, repeats: int) -> float:
    """img/s of a whole unconditional shard to disk (sampling.generate_partition: render, PNG
    encoding by `workers` threads, atomic writes, manifest parts), best of `repeats` fresh shards."""
    G = runtime.prepare(copy.deepcopy(G))
    run = GeneratorRun("bench", "1", "-", runtime.device, precision_name(runtime), G.config.resolution, "-")

    def render(rows: pl.DataFrame) -> np.ndarray:
        return generate_uncond(G, rows["seed"].to_list(), 1.0, runtime)

    best = float("inf")
    with tempfile.TemporaryDirectory() as scratch:
        generate_partition(uncond_plan("warm-up", batch, 0, 1.0, run), render, Partition(Path(scratch), "warm-up"),
                           batch, workers=workers)
        for repeat in range(repeats):
            plan = uncond_plan(SHARD, count, 0, 1.0, run)
            start = time.perf_counter()
            generate_partition(plan, render, Partition(Path(scratch), f"{workers}-{repeat}"), batch, workers=workers)
            best = min(best, time.perf_counter() - start)
    return count / best


def shard_text(G: StyleGenerator, runtime: TorchRuntime, label: str, count: int, batch: int, repeats: int) -> str:
    one, many = (shard_rate(G, runtime, count, batch, w, repeats) for w in (1, PNG_WORKERS))
    return (f"uncond shard to disk ({label}, batch {batch}: render, PNG, manifest): 1 PNG writer {one:.1f} img/s, "
            f"{PNG_WORKERS} writers overlapping the next batch {many:.1f} img/s (x{many / one:.2f})")


# --- CUDA: training throughput and bf16 generation ------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cuda_training(s: Settings, steps: int, runtime: TorchRuntime = CUDA_BF16) -> dict[str, float]:
    """kimg/hour of both trainers, bf16 autocast and channels_last, batches already on the GPU."""
    device = runtime.device
    size = s.gan_resolution
    out = {}
    style = StyleGanTrainer(style_config(s), uncond_recipe(s), runtime)
    real = torch.rand(s.gan_batch_size, 3, size, size, device=device) * 2 - 1
    spade = SpadeTrainer(spade_config(s), cond_recipe(s, perceptual=False), runtime)
    cond_real = torch.rand(s.cond_batch_size, 3, size, size, device=device) * 2 - 1
    cond_masks = torch.from_numpy(class_maps(s.cond_batch_size, size, spade.model_config.classes, 1)).to(device)
    for name, trainer, images, masks in (("uncond", style, real, None), ("cond", spade, cond_real, cond_masks)):
        log(f"{device}: training the {name} GAN, warm-up then {steps} timed steps")
        for _ in range(max(3, s.gan_r1_interval + 1)):  # every path once, the lazy R1 pass included
            trainer.train_step(images, masks)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(images, masks)
        synchronize(device)
        out[name] = steps * images.shape[0] / (time.perf_counter() - start) * 3600 / 1000
    return out


def cuda_generation(G_uncond: StyleGenerator, G_cond: SpadeGenerator, count: int, seed: int, repeats: int,
                    runtime: TorchRuntime = CUDA_BF16) -> dict[str, dict[str, float]]:
    """bf16 generation of `count` images per generator (their own seeds and masks) at batch 64."""
    Gu, Gc = runtime.prepare(copy.deepcopy(G_uncond)), runtime.prepare(copy.deepcopy(G_cond))
    seeds, cond_seeds, masks = bench_inputs(G_cond, count, seed)
    out = {}
    for name, methods in (("uncond", uncond_methods(Gu, seeds, runtime, [LARGE_BATCH])),
                          ("cond", cond_methods(Gc, masks, cond_seeds, runtime, [LARGE_BATCH]))):
        out[name], _ = compare(f"{runtime.device} {name}", methods, count, repeats, BF16_TOLERANCE)
    return out


# --- report ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per method and generator")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method, interleaved; the best is kept")
    parser.add_argument("--seed", type=int, default=0, help="weights and base seed of the images")
    parser.add_argument("--cuda-steps", type=int, default=64, help="timed training steps per GAN on CUDA")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--images, --repeats and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    s = load_settings()
    n, batch = args.images, s.gen_batch_size
    batches = sorted({batch, LARGE_BATCH})
    torch.manual_seed(args.seed)
    G_uncond = StyleGenerator(style_config(s)).eval().requires_grad_(False)
    G_cond = SpadeGenerator(spade_config(s)).eval().requires_grad_(False)
    seeds, cond_seeds, masks = bench_inputs(G_cond, n, args.seed)

    # The CPU runtimes: plain fp32, and the assets' own inference runtime (the headline)
    # (TorchDeviceResource.runtime(inference=True)): fp32 channels_last, or bf16 autocast with
    # channels_last where the CPU has native bf16.
    native = cpu_has_native_bf16()
    runtimes = {"fp32": TorchRuntime("cpu"), "fp32 channels_last": TorchRuntime("cpu", None, True)}
    if native:
        runtimes["bf16 autocast, channels_last"] = TorchRuntime("cpu", torch.bfloat16, True)
    assets_runtime = TorchDeviceResource(device="cpu").runtime(inference=True)
    assets_label = next((label for label, runtime in runtimes.items() if runtime == assets_runtime), "assets' runtime")
    runtimes.setdefault(assets_label, assets_runtime)
    log(f"{n} images per method, batches {batches} and one at a time, {args.threads} thread(s), "
        f"runtimes: {', '.join(runtimes)}")
    results: dict[str, dict[str, dict[str, float]]] = {}
    diffs: dict[str, int] = {}
    for label, runtime in runtimes.items():
        Gu, Gc = runtime.prepare(copy.deepcopy(G_uncond)), runtime.prepare(copy.deepcopy(G_cond))  # same weights
        tolerance = FP32_TOLERANCE if runtime.autocast_dtype is None else BF16_TOLERANCE
        methods = {"uncond": uncond_methods(Gu, seeds, runtime, batches),
                   "cond": cond_methods(Gc, masks, cond_seeds, runtime, batches)}
        results[label] = {}
        for kind, kind_methods in methods.items():
            results[label][kind], diff = compare(f"{kind} {label}", kind_methods, n, args.repeats, tolerance)
            diffs[label] = max(diffs.get(label, 0), diff)
    sample = run_batched(uncond_methods(G_uncond, seeds, runtimes["fp32"], [batch])[f"batch {batch}"][0], min(n, 64), batch)
    png_ms = png_ms_per_image(sample, args.repeats)
    log("writing shards to disk")
    shards = [shard_text(G_uncond, assets_runtime, f"{assets_label}, cpu", n, batch, args.repeats)]

    cuda = torch.cuda.is_available()
    train: dict[str, float] = {}
    gpu_gen: dict[str, dict[str, float]] = {}
    if cuda:
        train = cuda_training(s, args.cuda_steps)
        gpu_n = max(n, 4 * LARGE_BATCH)  # enough batches of 64 to time
        gpu_gen = cuda_generation(G_uncond, G_cond, gpu_n, args.seed, args.repeats)
        shards.append(shard_text(G_uncond, CUDA_BF16, "bf16 autocast, channels_last, cuda", gpu_n, LARGE_BATCH,
                                 args.repeats))

    sc, cc = G_uncond.config, G_cond.config
    print(f"device: cpu ({cpu_name()}), {os.cpu_count()} CPU(s), torch threads {args.threads}; "
          f"CPU bf16 native (AMX / AVX512-BF16): {'yes' if native else 'no'}; "
          f"CUDA: {torch.cuda.get_device_name(0) if cuda else 'none'}; torch {torch.__version__}")
    print(f"uncond: StyleGAN2 generator {sc.resolution}x{sc.resolution}, z/w {sc.z_dim}/{sc.w_dim}, "
          f"{sc.mapping_layers} mapping layers, channels <= {sc.channel_max}, {parameters(G_uncond):.2f} M parameters; "
          f"cond: SPADE generator {cc.resolution}x{cc.resolution}, z {cc.z_dim}, channels {cc.channels}..{cc.width(4)}, "
          f"{parameters(G_cond):.2f} M parameters; random init (seed {args.seed}), {n} seeds per method "
          f"(profile {s.profile}, gen_batch_size {batch})")
    for label, by_kind in results.items():
        for kind, rates in by_kind.items():
            note = " [the generation assets' runtime on this CPU]" if label == assets_label else ""
            print(f"{kind} {label} (cpu){note}: {rates_text(rates)}")
    if not native:
        print("bf16 on the CPU skipped: no native bf16 (AMX / AVX512-BF16), the assets generate in fp32 here")
    for label in dict.fromkeys(["fp32", assets_label]):
        for kind, rates in results[label].items():
            one_ms, batch_ms = 1000 / rates["one-at-a-time"], 1000 / rates[f"batch {batch}"]
            print(f"{kind} {label} time per image: {one_ms:.2f} ms one at a time = {batch_ms:.2f} ms of batched work "
                  f"+ {one_ms - batch_ms:.2f} ms per-call overhead that batching saves")
    print("check: batched and one-at-a-time images of the same seeds differ by at most "
          + ", ".join(f"{diff} grey level(s) in {label}" for label, diff in diffs.items())
          + f" (allowed: fp32 {FP32_TOLERANCE}, bf16 {BF16_TOLERANCE}; the kernels, so the roundings, change with "
          "the batch shape, which is why the manifest records each image's batch for a byte-exact replay)")
    print(f"PNG encoding (sampling.png_bytes, level {PNG_LEVEL}): {png_ms:.3f} ms per {sc.resolution}x{sc.resolution} "
          f"image = {1000 / png_ms:.0f} img/s on one core")
    for line in shards:
        print(line)
    if cuda:
        print(f"cuda training (bf16 autocast, channels_last): uncond {train['uncond']:.1f} kimg/h "
              f"(batch {s.gan_batch_size}), cond {train['cond']:.1f} kimg/h (batch {s.cond_batch_size})")
        for kind, rates in gpu_gen.items():
            print(f"cuda {kind} generation, bf16 autocast, channels_last: {rates_text(rates)}")
    else:
        print("CUDA training and generation skipped: no CUDA device is present")
    # X is the smaller of the two speedups at gen_batch_size in the assets' runtime (not the
    # combined throughput ratio): both generators must gain from batching, the weaker one decides.
    uncond, cond = results[assets_label]["uncond"], results[assets_label]["cond"]
    key = f"batch {batch}"
    speedup = min(uncond[key] / uncond["one-at-a-time"], cond[key] / cond["one-at-a-time"])
    print(f"generation speedup vs one-at-a-time: {speedup:.2f} "
          f"(uncond {uncond[key]:.1f} img/s vs {uncond['one-at-a-time']:.1f} img/s, "
          f"cond {cond[key]:.1f} img/s vs {cond['one-at-a-time']:.1f} img/s, batch {batch}, {assets_label} on the CPU)")

if __name__ == "__main__":
    main()
