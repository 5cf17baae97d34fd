"""Profiles and settings: one profile (`demo`, `paper`) picks every stage's sizes and models;
any single value can be overridden by a settings file, an environment variable or the CLI.

Precedence, lowest first: profile defaults, the TOML file named by ARAS_SETTINGS
(a `[settings]` table), environment variables `ARAS_<NAME>` (upper case), explicit overrides
(`aras --set name=value`, or the `settings` resource's `overrides` in the Dagster launchpad)."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from aras_assets.cron import parse_cron
from aras_assets.grid import Footprint
from aras_assets.landcover import DEFAULT_REMAP, validate_remap

S2_BUCKET_TEMPLATE = "s3://esa-worldcover-s2/rgbnir/2021/{lat_band}/ESA_WorldCover_10m_2021_v200_{tile}_S2RGBNIR.tif"
WC_BUCKET_TEMPLATE = "s3://esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_{tile}_Map.tif"


SEG_ARCHS = ("unet", "unetplusplus", "pan", "deeplabv3plus", "segformer", "fpn")
# Small encoders keep the demo on a CPU in minutes.
DEMO_ENCODERS = {arch: "tu-mobilenetv3_small_050" for arch in SEG_ARCHS} | {"segformer": "mit_b0"}
# The paper does not name its encoders: smp's default ResNet-34, and MiT-B2 for Segformer.
PAPER_ENCODERS = {arch: "resnet34" for arch in SEG_ARCHS} | {"segformer": "mit_b2"}


@dataclass(frozen=True)
class Settings:
    profile: str = "demo"
    # Sources: where tiles come from and which area to take.
    bbox: tuple[float, float, float, float] = (27.9, 35.9, 31.2, 39.1)  # west, south, east, north
    tile_source: str = "sample_region"  # a folder (relative paths sit under the data root) or "templates"
    s2_uri_template: str = S2_BUCKET_TEMPLATE
    wc_uri_template: str = WC_BUCKET_TEMPLATE
    # Sample region written by `aras sample-region`.
    sample_seed: int = 7
    sample_tile_px: int = 1600
    # Patches.
    remap: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_REMAP))
    normalization: str = "per_patch_max"  # or "stretch"
    stretch_max: int = 3000  # reflectance x 10000 that maps to 255 with "stretch"
    water_max_share: float = 0.9
    # zlib level of the PNGs: lossless at every level; 1 encodes ~4x faster than PIL's default 6
    # for files ~15% larger, and encoding dominates patch extraction.
    png_compress_level: int = 1
    workers: int = 0  # threads for patch extraction; 0 = one per core
    # Splits.
    split_method: str = "blocked"  # or "random"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_block: int = 2  # patches per side of a spatial block
    split_seed: int = 42
    # Segmentation: which architectures `aras demo|run` trains (all six are partitions of the
    # asset), the encoder of each, and the training recipe (the paper profile is the release's;
    # the demo adds cross-entropy and smaller batches so tiny models learn from ~100 patches).
    seg_archs: tuple[str, ...] = ("pan", "fpn")
    seg_encoders: dict[str, str] = field(default_factory=lambda: dict(DEMO_ENCODERS))
    seg_encoder_weights: str = ""  # folder of local `<encoder>.pth` files; empty = random init, nothing downloaded
    seg_epochs: int = 12
    seg_batch_size: int = 4
    seg_eval_batch_size: int = 16
    seg_lr: float = 2e-3
    seg_weight_decay: float = 1e-2
    seg_grad_clip: float = 1.0
    seg_ce_weight: float = 1.0  # x cross-entropy added to the Dice loss (0 = Dice only, as the release)
    seg_lr_factor: float = 0.5
    seg_lr_patience: int = 2
    seg_patience: int = 5  # early stopping, epochs without a better validation macro F1
    seg_augment: bool = True
    seg_seed: int = 0
    seg_loader_workers: int = 0  # DataLoader worker processes; 0 reads in the training process
    label_batch_size: int = 16
    label_model: str = "champion"  # who labels images: champion, <arch>, <arch>/<version> or <arch>@<alias>
    # Captions: modes, captions per image (the release: 5), sampling of model backends, and
    # prompt templates replacing the release's (keys text, text_system, vision, hybrid).
    caption_modes: tuple[str, ...] = ("text", "vision", "hybrid")
    captions_per_image: int = 5
    caption_seed: int = 0
    caption_batch_size: int = 64
    caption_temperature: float = 0.8
    caption_top_p: float = 0.95
    caption_max_tokens: int = 100
    caption_prompts: dict[str, str] = field(default_factory=dict)
    # Generation, unconditional style-based GAN (gan_*): size, widths and the training recipe.
    # Widths: channels at resolution r = min(gan_channel_base // r, gan_channel_max).
    gan_resolution: int = 32
    gan_z_dim: int = 64
    gan_w_dim: int = 64
    gan_mapping_layers: int = 2
    gan_channel_base: int = 1024
    gan_channel_max: int = 64
    gan_steps: int = 400
    gan_batch_size: int = 8
    gan_lr: float = 2.5e-3
    gan_r1_gamma: float = 0.2
    gan_r1_interval: int = 16  # lazy R1: the penalty every this many discriminator steps
    gan_style_mixing: float = 0.9
    gan_ema_kimg: float = 0.5  # half-life of the generator's moving average, thousands of images
    gan_augment: tuple[str, ...] = ("color", "translation", "cutout")  # DiffAugment policy; () = off
    gan_checkpoint_every: int = 100  # steps
    gan_fid_every: int = 200  # steps; 0 = only at the end
    gan_seed: int = 0
    # Conditional SPADE generator with a U-Net discriminator (cond_*).
    cond_z_dim: int = 16
    cond_channels: int = 16  # narrowest generator layer; the widest is up to 8x this
    cond_hidden: int = 32  # width of the mask embedding inside each SPADE layer
    cond_steps: int = 300
    cond_batch_size: int = 8
    cond_lr_g: float = 1e-4
    cond_lr_d: float = 4e-4
    cond_cutmix_prob: float = 0.5
    cond_consistency_weight: float = 1.0
    cond_vgg_weights: str = ""  # local torchvision VGG-19 state dict; empty = no perceptual loss
    cond_vgg_weight: float = 10.0
    cond_images_per_mask: int = 2  # k synthetic images per training patch of a tile
    # Sharded generation and FID.
    gen_shards: int = 4  # gen_shard partitions 0000..; registered by the generation stage, never removed
    gen_shard_size: int = 16  # images per shard
    gen_batch_size: int = 16
    gen_seed: int = 0
    gen_truncation_psi: float = 1.0
    fid_images: int = 512  # real and synthetic images per FID estimate (at most)
    fid_inception_weights: str = ""  # local torchvision Inception-v3 state dict; empty = encoder-space FID only
    # Operating: scheduled partial backfills and the new-tile sensor.
    backfill_cron: str = "*/15 * * * *"  # UTC; read at each tick (the schedules tick every minute)
    backfill_max_partitions: int = 4  # partitions one schedule tick may request
    backfill_assets: tuple[str, ...] = ("real_patches", "uncond_images", "real_captions")
    # How long a step keeps retrying a transient failure (endpoint down, network read) with
    # exponential backoff before it fails; 0 = fail at once.
    retry_window_s: float = 120.0

    @property
    def bbox_footprint(self) -> Footprint:
        return Footprint(*self.bbox)

    def effective_workers(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


PROFILES: dict[str, dict[str, Any]] = {
    "demo": {},
    "paper": {
        # The paper does not publish its area; Turkey and its coasts is our default.
        "bbox": (26.0, 36.0, 45.0, 42.0),
        "tile_source": "templates",
        "sample_tile_px": 12000,
        "split_block": 8,
        "seg_archs": SEG_ARCHS,
        "seg_encoders": PAPER_ENCODERS,
        "seg_epochs": 100,
        "seg_batch_size": 24,
        "seg_lr": 1e-3,
        "seg_ce_weight": 0.0,
        "seg_eval_batch_size": 64,
        "seg_loader_workers": 8,
        "label_batch_size": 64,
        # StyleGAN2 configuration at 256 px (the release trained StyleGAN2 in the StyleGAN3 code base).
        "gan_resolution": 256,
        "gan_z_dim": 512,
        "gan_w_dim": 512,
        "gan_mapping_layers": 8,
        "gan_channel_base": 16384,
        "gan_channel_max": 512,
        "gan_steps": 780_000,
        "gan_batch_size": 32,
        "gan_r1_gamma": 1.0,
        "gan_ema_kimg": 10.0,
        "gan_checkpoint_every": 5000,
        "gan_fid_every": 50_000,
        "cond_z_dim": 256,
        "cond_channels": 64,
        "cond_hidden": 128,
        "cond_steps": 200_000,
        "cond_batch_size": 16,
        "cond_images_per_mask": 1,  # the release: 80k conditional images from 80k training masks
        "gen_shards": 300,
        "gen_shard_size": 1000,  # 300 x 1000 = the release's 300k unconditional images
        "gen_batch_size": 64,
        "fid_images": 10_000,
    },
}

FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    """Turn an override (often a string from env or CLI) into the field's type."""
    if name not in FIELDS:
        raise ValueError(f"unknown setting {name!r}; known settings: {', '.join(sorted(FIELDS))}")
    default = getattr(Settings(), name)
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"setting {name}: {value!r} is not valid JSON for a {type(default).__name__}") from exc
    if isinstance(default, tuple):
        if isinstance(default[0], str):  # a list of names, any length
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ValueError(f"setting {name}: expected a list of names, got {value!r}")
            return tuple(str(v) for v in value)
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ValueError(f"setting {name}: expected {len(default)} values, got {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(default, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"setting {name}: expected a mapping, got {value!r}")
        kind = type(next(iter(default.values()))) if default else str
        return {kind(k): kind(v) for k, v in value.items()}
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


def load_settings(profile: str | None = None, overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    profile = profile or env.get("ARAS_PROFILE") or "demo"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    values: dict[str, Any] = dict(PROFILES[profile])
    if env.get("ARAS_SETTINGS"):
        with open(env["ARAS_SETTINGS"], "rb") as fh:
            values.update(tomllib.load(fh).get("settings", {}))
    for name in FIELDS:
        if name != "profile" and f"ARAS_{name.upper()}" in env:
            values[name] = env[f"ARAS_{name.upper()}"]
    values.update(overrides or {})
    values.pop("profile", None)
    coerced = {k: _coerce(k, v) for k, v in values.items()}
    if "seg_encoders" in coerced:  # a partial mapping changes only the architectures it names
        coerced["seg_encoders"] = {**PROFILES[profile].get("seg_encoders", DEMO_ENCODERS), **coerced["seg_encoders"]}
    settings = Settings(profile=profile, **coerced)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    w, so, e, n = s.bbox
    if not (w < e and so < n and -180 <= w and e <= 180 and -90 <= so and n <= 90):
        raise ValueError(f"bbox {s.bbox} must be (west, south, east, north) in degrees with west < east, south < north")
    if s.normalization not in ("per_patch_max", "stretch"):
        raise ValueError(f"normalization {s.normalization!r} must be 'per_patch_max' or 'stretch'")
    if s.split_method not in ("blocked", "random"):
        raise ValueError(f"split_method {s.split_method!r} must be 'blocked' or 'random'")
    if abs(sum(s.split_fractions) - 1.0) > 1e-6 or min(s.split_fractions) < 0:
        raise ValueError(f"split_fractions {s.split_fractions} must be three non-negative numbers summing to 1")
    if not 0 <= s.png_compress_level <= 9:
        raise ValueError(f"png_compress_level {s.png_compress_level} must be 0..9")
    if not 0 < s.water_max_share <= 1:
        raise ValueError(f"water_max_share {s.water_max_share} must be in (0, 1]")
    validate_remap(s.remap)
    unknown = sorted(set(s.seg_archs) - set(SEG_ARCHS))
    if unknown:
        raise ValueError(f"seg_archs {unknown} unknown; architectures are {', '.join(SEG_ARCHS)}")
    missing = sorted(set(SEG_ARCHS) - set(s.seg_encoders))
    if missing:
        raise ValueError(f"seg_encoders names no encoder for {missing}")
    if s.gan_resolution < 8 or s.gan_resolution & (s.gan_resolution - 1):
        raise ValueError(f"gan_resolution {s.gan_resolution} must be a power of two, at least 8")
    bad_aug = sorted(set(s.gan_augment) - {"color", "translation", "cutout"})
    if bad_aug:
        raise ValueError(f"gan_augment {bad_aug} unknown; choose from color, translation, cutout")
    if s.gen_shards < 1 or s.gen_shard_size < 1:
        raise ValueError("gen_shards and gen_shard_size must be at least 1")
    bad_modes = sorted(set(s.caption_modes) - {"text", "vision", "hybrid"})
    if bad_modes or not s.caption_modes:
        raise ValueError(f"caption_modes {list(s.caption_modes)} must be some of text, vision, hybrid")
    if min(s.captions_per_image, s.caption_batch_size, s.caption_max_tokens) < 1:
        raise ValueError("captions_per_image, caption_batch_size and caption_max_tokens must be at least 1")
    if min(s.seg_epochs, s.seg_batch_size, s.seg_eval_batch_size, s.label_batch_size) < 1:
        raise ValueError("seg_epochs and the batch sizes must be at least 1")
    parse_cron(s.backfill_cron)  # raises, naming the bad field
    if s.backfill_max_partitions < 1:
        raise ValueError(f"backfill_max_partitions {s.backfill_max_partitions} must be at least 1")


class SettingsResource(dg.ConfigurableResource):
    """The active profile and overrides, as a resource so the launchpad can change them per run."""

    profile: str = ""
    overrides: dict[str, str] = {}  # noqa: RUF012 (pydantic copies defaults)

    def get(self) -> Settings:
        return load_settings(self.profile or None, self.overrides)
