"""Reproducible generation: every image's inputs come from its own seed, images are written
batch by batch with one manifest part per batch (a crash loses at most one batch; a re-run
writes only the missing images), and any image can be rebuilt byte for byte by replaying the
batch it was made in (same generator version, device and precision)."""

from __future__ import annotations

import hashlib
import importlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from aras_assets.generation.data import GenerationError, to_uint8
from aras_assets.generation.manifest import SYNTHETIC_SCHEMA
from aras_assets.generation.spade import SpadeGenerator
from aras_assets.generation.stylegan import StyleGenerator
from aras_assets.ids import synthetic_id
from aras_assets.layout import MANIFEST
from aras_assets.parts import PartsWriter
from resources.device import TorchRuntime
from resources.storage import atomic_write_bytes, resumable_folder

PNG_LEVEL = 1  # fixed, not a setting: replaying an image must give the same bytes
# The modules whose source decides an image's pixels and bytes once its model, seeds, batch,
# device and precision are fixed; their digest goes into every manifest row.
PIXEL_MODULES = ("aras_assets.generation.layers", "aras_assets.generation.stylegan", "aras_assets.generation.spade",
                 "aras_assets.generation.data", "aras_assets.generation.sampling", "resources.device")


@cache
def generator_code() -> str:
    """16 hex digits of SHA-256 over PIXEL_MODULES' source files."""
    digest = hashlib.sha256()
    for name in PIXEL_MODULES:
        digest.update(Path(importlib.import_module(name).__file__ or name).read_bytes())
    return digest.hexdigest()[:16]


def image_seed(base_seed: int, origin: str, shard: str, index: int) -> int:
    """A 63-bit seed from the base seed, the image origin, its shard and index: stable across
    runs, machines and shard sizes, and unrelated between neighbouring images."""
    digest = hashlib.sha256(f"{base_seed}/{origin}/{shard}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


@cache
def input_pool() -> ThreadPoolExecutor:
    """Threads that draw the images' inputs of a batch side by side (ATen releases the GIL)."""
    return ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="inputs")


def uncond_inputs(generator: StyleGenerator, seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """z and per-layer noise of each image, drawn in a fixed order from its own seed (CPU RNG,
    so an image's inputs do not depend on the device). Each image has its own generator, so a
    batch's images are drawn in parallel: at 256 px the noise is 175k numbers per image, which
    one core draws more slowly than a GPU renders the image."""
    shapes = generator.synthesis.noise_shapes()

    def draw(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rng = torch.Generator().manual_seed(int(seed))
        return torch.randn(generator.config.z_dim, generator=rng), [torch.randn(shape, generator=rng) for shape in shapes]

    drawn = list(input_pool().map(draw, seeds)) if len(seeds) > 1 else [draw(seed) for seed in seeds]
    return torch.stack([z for z, _ in drawn]), [torch.stack([noise[k] for _, noise in drawn]) for k in range(len(shapes))]


def cond_inputs(generator: SpadeGenerator, seeds: Sequence[int]) -> torch.Tensor:
    return torch.stack([torch.randn(generator.config.z_dim, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds])


def generate_uncond(generator: StyleGenerator, seeds: Sequence[int], psi: float, runtime: TorchRuntime) -> np.ndarray:
    """uint8 [B, H, W, 3] images of the seeds, one forward pass."""
    z, noise = uncond_inputs(generator, seeds)
    device = runtime.torch_device
    with torch.inference_mode(), runtime.autocast():
        images = generator(z.to(device), psi, [n.to(device) for n in noise])
    return to_uint8(images)


def generate_cond(generator: SpadeGenerator, masks: np.ndarray, seeds: Sequence[int], runtime: TorchRuntime) -> np.ndarray:
    """uint8 [B, H, W, 3] images for class-index masks [B, H, W] at the generator's resolution."""
    classes = generator.config.classes
    if masks.size and (masks.min() < 0 or masks.max() >= classes):
        bad = int(masks.min()) if masks.min() < 0 else int(masks.max())
        raise GenerationError(f"conditioning mask holds class {bad}; the generator knows classes 0..{classes - 1}")
    size = generator.config.resolution
    if masks.shape[1:] != (size, size):
        raise GenerationError(f"conditioning masks are {masks.shape[1:]}, the generator makes {size}x{size} images")
    z = cond_inputs(generator, seeds)
    device = runtime.torch_device
    with torch.inference_mode(), runtime.autocast():
        images = generator(torch.from_numpy(masks.astype(np.int64)).to(device), z.to(device))
    return to_uint8(images)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def precision_name(runtime: TorchRuntime) -> str:
    return "fp32" if runtime.autocast_dtype is None else str(runtime.autocast_dtype).removeprefix("torch.")


def runtime_for(device: str, precision: str) -> TorchRuntime:
    """The runtime a manifest row was generated with (for byte-identical replay)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"the image was generated on {device}; replaying it byte for byte needs that device")
    return TorchRuntime(device, None if precision == "fp32" else getattr(torch, precision))


# A renderer turns the plan rows of one batch into uint8 images.
Renderer = Callable[[pl.DataFrame], np.ndarray]


@dataclass(frozen=True)
class Partition:
    """A partition's folder, `relative` to the data `root` (manifest paths are relative too)."""

    root: Path
    relative: str

    @property
    def folder(self) -> Path:
        return self.root / self.relative

    @property
    def parts(self) -> PartsWriter:
        return PartsWriter(self.folder, SYNTHETIC_SCHEMA)


def part_name(batch_start: int) -> str:
    """A batch's part is named by its first index, so the part of a stale batch can be removed."""
    return f"batch-{batch_start:05d}"


def read_parts(partition: Partition) -> pl.DataFrame:
    """Every image the partition's parts hold, once each."""
    return partition.parts.read("image_id")


def done_parts(partition: Partition, current: dict[str, object]) -> pl.DataFrame:
    """Rows already written by this generator setup; parts of another model version, psi,
    device or precision are dropped so their images are made again."""
    frame = read_parts(partition)
    keep = pl.lit(True)
    for key, value in current.items():
        keep = keep & (pl.col(key) == value)
    for begin in frame.filter(~keep)["batch_start"].unique().to_list():
        partition.parts.remove(part_name(begin))
    return frame.filter(keep)


def write_png(path: Path, image: np.ndarray) -> str:
    """Encode and atomically write one image; its SHA-256 for the manifest."""
    data = png_bytes(image)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


# PNG encoding threads: Pillow's encoder releases the GIL, and at 256 px one image takes about
# as long on one core as a GPU takes to make ten, so a few encoders keep up with the generator.
PNG_WORKERS = min(4, os.cpu_count() or 1)


def generate_partition(plan: pl.DataFrame, render: Renderer, partition: Partition, batch_size: int,
                       progress: Callable[[int, int], None] | None = None,
                       workers: int = PNG_WORKERS) -> tuple[pl.DataFrame, int]:
    """Generate the plan's images not yet done, batch by batch: images first (atomic writes),
    then the batch's manifest part. Returns the whole partition's manifest (in plan order) and
    how many images were made now. `plan` holds every SYNTHETIC_SCHEMA column except
    batch_start, batch_size and content_sha256.

    A batch's PNGs are encoded and written by `workers` threads while the next batch renders;
    its part is written once they are all on disk, also when a later batch fails."""
    with resumable_folder(partition.folder):  # one writer per partition; dead runs' temporary files go
        return _generate(plan, render, partition, batch_size, progress, workers)


def _generate(plan: pl.DataFrame, render: Renderer, partition: Partition, batch_size: int,
              progress: Callable[[int, int], None] | None, workers: int) -> tuple[pl.DataFrame, int]:
    fixed = {k: plan[k][0] for k in ("model_version", "truncation_psi", "device", "precision")} if plan.height else {}
    done = done_parts(partition, fixed)
    todo = plan.filter(~pl.col("image_id").is_in(done["image_id"].implode()))

    def finish(rows: pl.DataFrame, writes: list[Future[str]], made: int) -> None:
        hashes = [write.result() for write in writes]
        start = int(rows["index"][0])
        part = rows.with_columns(pl.lit(start, pl.Int32).alias("batch_start"),
                                 pl.lit(rows.height, pl.Int32).alias("batch_size"),
                                 pl.Series("content_sha256", hashes, pl.String)).select(list(SYNTHETIC_SCHEMA))
        partition.parts.write(part, part_name(start))
        if progress is not None:
            progress(done.height + made, plan.height)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="png") as pool:
        pending = None  # the batch whose PNGs are being written
        try:
            for begin in range(0, todo.height, batch_size):
                rows = todo.slice(begin, batch_size)
                images = render(rows)
                if pending is not None:
                    previous, pending = pending, None
                    finish(*previous)
                writes = [pool.submit(write_png, partition.root / path, image)
                          for path, image in zip(rows["image_path"], images, strict=True)]
                pending = (rows, writes, begin + rows.height)
        finally:
            if pending is not None:  # finished work stays even when a later batch failed
                finish(*pending)
    manifest = partition.parts.combine(plan["image_id"], "image_id", partition.folder / MANIFEST)
    return manifest, todo.height


@dataclass(frozen=True)
class GeneratorRun:
    """Who generates: the registered version and how it runs, copied into every manifest row."""

    model_name: str
    model_version: str
    mlflow_run_id: str
    device: str
    precision: str
    resolution: int
    dagster_run_id: str
    generator_code: str = field(default_factory=generator_code)


def _plan(rows: list[dict], run: GeneratorRun) -> pl.DataFrame:
    common = {"model_name": run.model_name, "model_version": run.model_version, "mlflow_run_id": run.mlflow_run_id,
              "device": run.device, "precision": run.precision, "resolution": run.resolution,
              "dagster_run_id": run.dagster_run_id, "generator_code": run.generator_code}
    schema = {k: v for k, v in SYNTHETIC_SCHEMA.items() if k not in ("batch_start", "batch_size", "content_sha256")}
    return pl.DataFrame([{**row, **common} for row in rows], schema={**schema, "source_mask_path": pl.String})


def uncond_plan(shard: str, count: int, base_seed: int, psi: float, run: GeneratorRun) -> pl.DataFrame:
    """The shard's images: ids, seeds and where they go."""
    rows = []
    for index in range(count):
        image_id = synthetic_id("uncond", shard, index)
        rows.append({"image_id": image_id, "origin": "uncond", "shard": shard, "index": index,
                     "seed": image_seed(base_seed, "uncond", shard, index), "truncation_psi": psi,
                     "conditioning_patch_id": None, "variant": 0,
                     "image_path": f"synthetic/uncond/{shard}/images/{image_id}.png", "mask_path": None,
                     "source_mask_path": None})
    return _plan(rows, run)


def cond_plan(tile: str, patches: pl.DataFrame, per_mask: int, base_seed: int, run: GeneratorRun) -> pl.DataFrame:
    """`per_mask` images for each conditioning patch (columns patch_id, mask_path) of a tile;
    each image's label is its conditioning mask at the generator's resolution."""
    rows = []
    for p, (patch_id, source_mask) in enumerate(patches.select("patch_id", "mask_path").iter_rows()):
        for variant in range(per_mask):
            index = p * per_mask + variant
            image_id = synthetic_id("cond", tile, index)
            rows.append({"image_id": image_id, "origin": "cond", "shard": tile, "index": index,
                         "seed": image_seed(base_seed, "cond", tile, index), "truncation_psi": 1.0,
                         "conditioning_patch_id": patch_id, "variant": variant,
                         "image_path": f"synthetic/cond/{tile}/images/{image_id}.png",
                         "mask_path": f"synthetic/cond/{tile}/masks/{image_id}.png", "source_mask_path": source_mask})
    return _plan(rows, run)
