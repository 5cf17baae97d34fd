"""A captioning partition small enough to kill at random points: 24 images and a slow,
deterministic backend (imported by the crash test's worker processes, so it stays light)."""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from aras_assets.captions.captioning import CaptionJob, CaptionPair
from aras_assets.captions.composition import SHARE_COLUMNS, compute_composition
from aras_assets.captions.prompts import prompt_templates
from resources.captioner import SamplingConfig


def composition_rows(count: int) -> pl.DataFrame:
    """Images with compositions (no files): what caption_partition reads."""
    rows = []
    for i in range(count):
        mask = np.full((32, 32), i % 7, dtype=np.uint8)
        mask[:8] = (i + 3) % 7
        c = compute_composition(mask)
        rows.append({"image_id": f"img_{i:02d}", "image_path": "unused.png",
                     **dict(zip(SHARE_COLUMNS, c.percents, strict=True)), "layout_json": c.to_json()})
    return pl.DataFrame(rows)


def caption_images() -> pl.DataFrame:
    return composition_rows(24)


class SlowClient:
    """A deterministic model backend that takes a while per batch, so kills land mid-partition."""

    def caption(self, requests, sampling, seeds):
        time.sleep(0.05)
        return [[f"{r.user[:30]} #{s} v{k}" for k in range(sampling.n)] for r, s in zip(requests, seeds, strict=True)]


def text_job(client, n: int, seed: int = 1, model: str = "test-model") -> CaptionJob:
    """A one-pair plan (text x `model` through an openai-style client)."""
    pair = CaptionPair("text", model, "openai", model, SamplingConfig(n=n, seed=seed))
    return CaptionJob((pair,), prompt_templates(), lambda _pair: client)


def slow_job() -> CaptionJob:
    return text_job(SlowClient(), n=3)
