"""Generation and GAN training on CUDA, the way the assets run there (bf16 autocast, channels_last):
byte-identical replay in a new process, agreement with the CPU, finite training losses with the
eager lazy-R1 pass, and checkpoint resume continuing the GPU's random draws.

Skipped without a CUDA device (CI has none). Where one is present:
    CUBLAS_WORKSPACE_CONFIG=:4096:8 pytest tests/test_generation_cuda.py
(add --noconftest where the GIS stack the other tests' fixtures need is not installed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from aras_assets.generation.sampling import generate_cond, generate_uncond, image_seed, png_bytes
from aras_assets.generation.spade import SpadeConfig, SpadeGenerator
from aras_assets.generation.stylegan import StyleGanConfig, StyleGenerator
from aras_assets.generation.training import (
    CondTrainConfig,
    GanTrainConfig,
    SpadeTrainer,
    StyleGanTrainer,
    fit,
    plan_resume,
)
from resources.device import TorchRuntime
from tests.test_generation import class_maps  # random land-cover-like class maps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = TorchRuntime("cuda", torch.bfloat16, True)
CPU = TorchRuntime("cpu")
RES = 32
STYLE = StyleGanConfig(resolution=RES, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32)
SPADE = SpadeConfig(resolution=RES, z_dim=8, channels=8, hidden=16)
COUNT = 16
ROOT = Path(__file__).resolve().parents[1]


def generated(runtime: TorchRuntime) -> dict[str, np.ndarray]:
    """One batch of each generator (weights from seed 0) on `runtime`, uint8 images."""
    torch.manual_seed(0)
    style = runtime.prepare(StyleGenerator(STYLE).eval().requires_grad_(False))
    spade = runtime.prepare(SpadeGenerator(SPADE).eval().requires_grad_(False))
    seeds = [image_seed(0, "uncond", "cuda", k) for k in range(COUNT)]
    return {"uncond": generate_uncond(style, seeds, 0.7, runtime),
            "cond": generate_cond(spade, class_maps(COUNT, RES), seeds, runtime)}


def png_hashes() -> dict[str, list[str]]:
    return {kind: [hashlib.sha256(png_bytes(image)).hexdigest() for image in images]
            for kind, images in generated(CUDA).items()}


def test_cuda_bf16_generation_is_byte_identical_in_a_new_process() -> None:
    here = png_hashes()
    script = "import json; from tests.test_generation_cuda import png_hashes; print(json.dumps(png_hashes()))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here
    assert all(len(set(hashes)) == COUNT for hashes in here.values())  # every seed its own image


def test_cuda_bf16_images_match_the_cpu_fp32_ones() -> None:
    """Same weights and seeds (the noise is drawn on the CPU either way): the images differ only
    by bf16 rounding."""
    gpu, cpu = generated(CUDA), generated(CPU)
    for kind in gpu:
        diff = np.abs(gpu[kind].astype(np.int16) - cpu[kind].astype(np.int16))
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 12, (kind, diff.mean(), diff.max())


def test_cuda_bf16_training_steps_are_finite_with_lazy_r1() -> None:
    real = torch.rand(8, 3, RES, RES, device="cuda") * 2 - 1
    masks = torch.from_numpy(class_maps(8, RES)).cuda()
    style = StyleGanTrainer(STYLE, GanTrainConfig(batch_size=8, r1_interval=2), CUDA)
    records = [style.train_step(real) for _ in range(4)]
    spade = SpadeTrainer(SPADE, CondTrainConfig(batch_size=8, cutmix_prob=1.0), CUDA)
    records += [spade.train_step(real, masks) for _ in range(3)]
    assert all(np.isfinite(value) for record in records for value in record.values()), records
    assert records[3]["r1"] > 0  # the penalty ran (eager double backward under autocast)
    assert next(style.G.parameters()).device.type == "cuda"


def same_batch_forever() -> Iterator:
    images = torch.rand(8, 3, RES, RES, generator=torch.Generator().manual_seed(3)) * 2 - 1
    while True:
        yield images, None


def test_cuda_resume_continues_the_gpu_random_draws(tmp_path: Path) -> None:
    """Interrupted at step 4 and resumed from last.pt = trained straight to step 8: the latents
    are drawn on the GPU, so the checkpoint must carry the CUDA generator's state."""
    recipe = GanTrainConfig(steps=8, batch_size=8, r1_interval=2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        straight = StyleGanTrainer(STYLE, recipe, CUDA)
        fit(straight, same_batch_forever(), 8, tmp_path / "straight", "v1", checkpoint_every=100, fid_every=0,
            log=lambda _: None)
        first = StyleGanTrainer(STYLE, recipe, CUDA)
        fit(first, same_batch_forever(), 4, tmp_path / "split", "v1", checkpoint_every=100, fid_every=0,
            log=lambda _: None)
        torch.cuda.manual_seed_all(12345)  # a different GPU state: only the checkpoint can restore it
        second = StyleGanTrainer(STYLE, recipe, CUDA)
        resume = plan_resume(tmp_path / "split", second, "v1", log=lambda _: None)
        assert resume is not None and resume["cuda_rng"] is not None
        fit(second, same_batch_forever(), 8, tmp_path / "split", "v1", checkpoint_every=100, fid_every=0,
            resume=resume, log=lambda _: None)
    finally:
        torch.use_deterministic_algorithms(False)
    for (name, a), b in zip(straight.G_ema.state_dict().items(), second.G_ema.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)
