"""Captioning a partition of images: n captions per image for each (method, model) pair of the
caption plan, from the offline captioner or a model backend, written batch by batch so a crash
loses at most one batch and a re-run captions only what is not yet done for the same pair and
configuration."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
    "caption_id": pl.String, "image_id": pl.String, "origin": pl.String, "mode": pl.String, "model": pl.String,
    "caption_index": pl.Int32, "backend": pl.String, "served_model": pl.String, "prompt_hash": pl.String,
    "sampling": pl.String, "seed": pl.Int64, "text": pl.String,
}
OFFLINE_MODEL = "aras-offline"  # what offline captions record as their served model


class CaptionError(BadInputError, ValueError):
    """Images that cannot be captioned (no composition) or captions that cannot be used."""


@dataclass(frozen=True)
class CaptionPair:
    """One (method, model) pair of the caption plan, as a row of the paper's Table 2: its method
    (mode), the model's name, the backend that runs it, what that backend serves or loads, and
    the sampling (n captions per image)."""

    mode: str
    model: str
    backend: str  # "offline", "openai" or "vllm"
    served_model: str
    sampling: SamplingConfig
    endpoint: str = ""  # the openai backend's server for this model; blank: the captioner resource's

    @property
    def name(self) -> str:
        return f"{self.mode}:{self.model}"

    @property
    def slug(self) -> str:
        """The model in caption ids: lower case, runs of other characters as one '-' ("qwen3-vl-8b")."""
        return re.sub(r"[^a-z0-9.]+", "-", self.model.lower()).strip("-")

    @property
    def sampling_text(self) -> str:
        return json.dumps(self.sampling.options(), sort_keys=True)


@dataclass(frozen=True)
class CaptionJob:
    """What to caption with: the plan's pairs, the prompt template of each method, and a client
    per pair (None for offline; else has caption(requests, sampling, seeds) -> list[list[str]])."""

    pairs: tuple[CaptionPair, ...]
    templates: dict[str, PromptTemplate]
    client_for: Callable[[CaptionPair], Any] = lambda pair: None

    def done_key(self, pair: CaptionPair) -> pl.Expr:
        """Rows a finished part holds for this pair under this configuration: the same pair,
        backend, served model, prompt and sampling; anything else is captioned again."""
        return ((pl.col("mode") == pair.mode) & (pl.col("model") == pair.model) & (pl.col("backend") == pair.backend)
                & (pl.col("served_model") == pair.served_model) & (pl.col("prompt_hash") == self.templates[pair.mode].hash)
                & (pl.col("sampling") == pair.sampling_text))


def caption_seed(base: int, image_id: str, pair: str) -> int:
    """Per image and pair, independent of batch boundaries and of which images were done before."""
    digest = hashlib.blake2b(f"{base}:{image_id}:{pair}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


def caption_id(image_id: str, mode: str, model_slug: str, index: int) -> str:
    return f"{image_id}_{mode}_{model_slug}_{index}"


def caption_batch(images: pl.DataFrame, origin: str, pair: CaptionPair, template: PromptTemplate, client: Any) -> pl.DataFrame:
    """One pair's captions of one batch: rows image_id, image_path, pct_*, layout_json in; caption rows out."""
    n = pair.sampling.n
    seeds = [caption_seed(pair.sampling.seed, i, pair.name) for i in images["image_id"]]
    if client is None:
        texts = [offline_captions(Composition.from_row(tuple(r[c] for c in SHARE_COLUMNS), r["layout_json"]), pair.mode, s, n)
                 for r, s in zip(images.iter_rows(named=True), seeds, strict=True)]
    else:
        requests = [ChatRequest(template.render([r[c] for c in SHARE_COLUMNS]), template.system,
                                verified_image_bytes(Path(r["image_path"])) if template.uses_image else None)
                    for r in images.iter_rows(named=True)]
        texts = client.caption(requests, pair.sampling, seeds)
    rows = []
    for image_id, seed, captions in zip(images["image_id"], seeds, texts, strict=True):
        if len(captions) != n or any(not t.strip() for t in captions):
            raise CaptionError(f"{image_id} ({pair.name}): expected {n} non-empty captions, got {len(captions)}")
        rows += [{"caption_id": caption_id(image_id, pair.mode, pair.slug, k), "image_id": image_id, "origin": origin,
                  "mode": pair.mode, "model": pair.model, "caption_index": k, "backend": pair.backend,
                  "served_model": pair.served_model, "prompt_hash": template.hash, "sampling": pair.sampling_text,
                  "seed": seed, "text": text.strip()} for k, text in enumerate(captions)]
    return pl.DataFrame(rows, schema=CAPTION_SCHEMA)


def caption_partition(images: pl.DataFrame, origin: str, job: CaptionJob, folder: Path, batch_size: int = 64,
                      progress: Callable[[int, int], None] | None = None) -> tuple[pl.DataFrame, int]:
    """For each pair, caption the images `folder/parts` does not hold for that pair and
    configuration, one atomically written part per batch, then write `folder/captions.parquet`
    with the plan's captions of the partition in image order (parts of another configuration
    stay on disk but are not part of it). Returns the captions and how many images were
    captioned now by at least one pair."""
    missing = images.filter(pl.col(SHARE_COLUMNS[0]).is_null())["image_id"].to_list()
    if missing:
        raise CaptionError(f"{len(missing)} images have no composition (e.g. {missing[0]}); materialize the compositions first")
    with resumable_folder(folder):  # one writer per partition; dead runs' temporary files go
        parts = PartsWriter(folder, CAPTION_SCHEMA)
        captioned: set[str] = set()
        for position, pair in enumerate(job.pairs):  # pair by pair: one model loaded at a time
            done = parts.done("image_id", job.done_key(pair))
            todo = images.filter(~pl.col("image_id").is_in(sorted(done)))
            client = job.client_for(pair) if todo.height else None
            for begin in range(0, todo.height, batch_size):
                batch = todo.slice(begin, batch_size)
                parts.write(caption_batch(batch, origin, pair, job.templates[pair.mode], client), f"part-{uuid.uuid4().hex}")
                if progress is not None:
                    progress(position * images.height + len(done) + begin + batch.height, len(job.pairs) * images.height)
            captioned.update(todo["image_id"].to_list())
        # an image's captions in plan order (the release's modes first), then by index
        rank = {(p.mode, p.model): k for k, p in enumerate(sorted(job.pairs, key=lambda p: CAPTION_MODES.index(p.mode)))}
        pair_rank = pl.concat_str("mode", pl.lit(":"), "model").replace_strict(
            {f"{m}:{model}": k for (m, model), k in rank.items()}, default=len(rank), return_dtype=pl.Int64)
        current = pl.any_horizontal([job.done_key(p) for p in job.pairs])
        captions = parts.combine(images["image_id"], "image_id", folder / CAPTIONS, unique="caption_id",
                                 then_by=[pair_rank, "caption_index"], where=current)
    return captions, len(captioned)
