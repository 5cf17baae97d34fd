"""Captioning a partition of images: n captions per image per mode from the offline captioner
or a model backend, written batch by batch so a crash loses at most one batch and a re-run
captions only the images not yet done."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from aras_assets.captions.composition import SHARE_COLUMNS, Composition
from aras_assets.captions.offline import offline_captions
from aras_assets.captions.prompts import PromptTemplate
from aras_assets.errors import BadInputError
from aras_assets.layout import CAPTION_MODES, CAPTIONS
from aras_assets.parts import PartsWriter
from aras_assets.segmentation.data import verified_image_bytes
from resources.captioner import ChatRequest, SamplingConfig
from resources.storage import resumable_folder

CAPTION_SCHEMA = {
    "caption_id": pl.String, "image_id": pl.String, "origin": pl.String, "mode": pl.String,
    "caption_index": pl.Int32, "backend": pl.String, "model": pl.String, "prompt_hash": pl.String,
    "seed": pl.Int64, "text": pl.String,
}


class CaptionError(BadInputError, ValueError):
    """Images that cannot be captioned (no composition) or captions that cannot be used."""


@dataclass(frozen=True)
class CaptionJob:
    """What to caption with: modes and their templates, backend, sampling."""

    modes: tuple[str, ...]
    templates: dict[str, PromptTemplate]
    backend: str  # "offline", "openai" or "vllm"
    model: str
    client: Any  # None for offline; else has caption(requests, sampling, seeds) -> list[list[str]]
    sampling: SamplingConfig  # n, seed and max_tokens; the sampling of a mode not in mode_sampling
    mode_sampling: dict[str, SamplingConfig] = field(default_factory=dict)

    def sampling_for(self, mode: str) -> SamplingConfig:
        return self.mode_sampling.get(mode, self.sampling)


def caption_seed(base: int, image_id: str, mode: str) -> int:
    """Per image and mode, independent of batch boundaries and of which images were done before."""
    digest = hashlib.blake2b(f"{base}:{image_id}:{mode}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


def caption_id(image_id: str, mode: str, index: int) -> str:
    return f"{image_id}_{mode}_{index}"


def caption_batch(images: pl.DataFrame, origin: str, job: CaptionJob) -> pl.DataFrame:
    """Captions of one batch: rows image_id, image_path, pct_*, layout_json in; caption rows out."""
    rows = []
    n = job.sampling.n
    for mode in job.modes:
        template = job.templates[mode]
        seeds = [caption_seed(job.sampling.seed, i, mode) for i in images["image_id"]]
        if job.client is None:
            texts = [offline_captions(Composition.from_row(tuple(r[c] for c in SHARE_COLUMNS), r["layout_json"]), mode, s, n)
                     for r, s in zip(images.iter_rows(named=True), seeds, strict=True)]
        else:
            requests = [ChatRequest(template.render([r[c] for c in SHARE_COLUMNS]), template.system,
                                    verified_image_bytes(Path(r["image_path"])) if template.uses_image else None)
                        for r in images.iter_rows(named=True)]
            texts = job.client.caption(requests, job.sampling_for(mode), seeds)
        for image_id, seed, captions in zip(images["image_id"], seeds, texts, strict=True):
            if len(captions) != n or any(not t.strip() for t in captions):
                raise CaptionError(f"{image_id} ({mode}): expected {n} non-empty captions, got {len(captions)}")
            rows += [{"caption_id": caption_id(image_id, mode, k), "image_id": image_id, "origin": origin, "mode": mode,
                      "caption_index": k, "backend": job.backend, "model": job.model, "prompt_hash": template.hash,
                      "seed": seed, "text": text.strip()} for k, text in enumerate(captions)]
    return pl.DataFrame(rows, schema=CAPTION_SCHEMA)


def caption_partition(images: pl.DataFrame, origin: str, job: CaptionJob, folder: Path, batch_size: int = 64,
                      progress: Callable[[int, int], None] | None = None) -> tuple[pl.DataFrame, int]:
    """Caption the images not yet in `folder/parts`, one atomically written part per batch, then
    write `folder/captions.parquet` with every caption of the partition in image order.
    Returns the captions and how many images were captioned now (the rest were done before)."""
    missing = images.filter(pl.col(SHARE_COLUMNS[0]).is_null())["image_id"].to_list()
    if missing:
        raise CaptionError(f"{len(missing)} images have no composition (e.g. {missing[0]}); materialize the compositions first")
    with resumable_folder(folder):  # one writer per partition; dead runs' temporary files go
        parts = PartsWriter(folder, CAPTION_SCHEMA)
        done = parts.done("image_id")
        todo = images.filter(~pl.col("image_id").is_in(sorted(done)))
        for begin in range(0, todo.height, batch_size):
            batch = todo.slice(begin, batch_size)
            parts.write(caption_batch(batch, origin, job), f"part-{uuid.uuid4().hex}")
            if progress is not None:
                progress(len(done) + begin + batch.height, images.height)
        # an image's captions by mode in the release's order, then by index
        mode_rank = pl.col("mode").replace_strict({m: k for k, m in enumerate(CAPTION_MODES)}, default=9)
        captions = parts.combine(images["image_id"], "image_id", folder / CAPTIONS, unique="caption_id",
                                 then_by=[mode_rank, "caption_index"])
    return captions, todo.height
