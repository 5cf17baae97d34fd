"""An unconditional generation partition small enough to kill at random points: 24 images of a
tiny seeded generator, rendered slowly (imported by the crash test's worker processes, so it
stays light)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from aras_assets.generation.sampling import GeneratorRun, Partition, generate_partition, generate_uncond, uncond_plan
from aras_assets.generation.stylegan import StyleGanConfig, StyleGenerator
from resources.device import TorchRuntime

RES = 16
IMAGES = 24
BATCH = 4


def slow_renderer() -> Callable[[pl.DataFrame], np.ndarray]:
    torch.manual_seed(0)  # the same weights in every process: the same bytes
    torch.set_num_threads(1)
    generator = StyleGenerator(StyleGanConfig(resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128,
                                              channel_max=16)).eval()

    def render(rows: pl.DataFrame) -> np.ndarray:
        time.sleep(0.05)  # long enough that kills land between and inside batches
        return generate_uncond(generator, rows["seed"].to_list(), float(rows["truncation_psi"][0]), TorchRuntime("cpu"))

    return render


def generate_shard(root: Path) -> tuple[pl.DataFrame, int]:
    run = GeneratorRun("aras-gan-uncond", "1", "run-abc", "cpu", "fp32", RES, "dagster-run-1", generator_code="c0de")
    plan = uncond_plan("0000", IMAGES, 0, 1.0, run)
    return generate_partition(plan, slow_renderer(), Partition(root, "synthetic/uncond/0000"), BATCH, workers=2)
