"""Profiles and settings: one profile (`demo`, `paper`) picks every stage's sizes and models;
any single value can be overridden by a settings file, an environment variable or the CLI.

Precedence, lowest first: profile defaults, the TOML file named by ARAS_SETTINGS
(a `[settings]` table), environment variables `ARAS_<NAME>` (upper case), explicit overrides
(`aras --set name=value`, or the `settings` resource's `overrides` in the Dagster launchpad).

Every value is checked before any stage runs: its exact type (a bool is not a number, 1.9 is
not a whole number; text from the environment or the CLI is read as JSON for non-text
settings) and the rule declared with its field (bounds, allowed names, a last check). A
refusal is a `SettingsError` whose one line names the setting, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from aras_assets.captions.prompts import PERCENT_FORMATS
from aras_assets.cron import parse_cron
from aras_assets.errors import BadInputError
from aras_assets.evaluation.paper import TRAIN_SETS
from aras_assets.grid import Footprint
from aras_assets.landcover import DEFAULT_REMAP, validate_remap
from aras_assets.sources.remote import REMOTE_OPTION_NAMES

S2_BUCKET_TEMPLATE = "s3://esa-worldcover-s2/rgbnir/2021/{lat_band}/ESA_WorldCover_10m_2021_v200_{tile}_S2RGBNIR.tif"
WC_BUCKET_TEMPLATE = "s3://esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_{tile}_Map.tif"


CAPTION_MODES = ("text", "vision", "hybrid")
CAPTION_BACKENDS = ("offline", "openai", "vllm")
# The paper's Table 2: five (method, model) pairs, one caption each per image, and the models
# the release ran for them.
PAPER_CAPTION_PLAN = ("text:Qwen3-4B", "vision:Gemma3-4B", "vision:Qwen3-VL-8B", "hybrid:Gemma3-4B", "hybrid:Qwen3-VL-8B")
PAPER_CAPTION_MODELS = {"Qwen3-4B": "Qwen/Qwen3-4B-Instruct-2507", "Gemma3-4B": "google/gemma-3-4b-it",
                        "Qwen3-VL-8B": "Qwen/Qwen3-VL-8B-Instruct"}
SEG_ARCHS = ("unet", "unetplusplus", "pan", "deeplabv3plus", "segformer", "fpn")
# Small encoders keep the demo on a CPU in minutes.
DEMO_ENCODERS = {arch: "tu-mobilenetv3_small_050" for arch in SEG_ARCHS} | {"segformer": "mit_b0"}
# The paper names no encoders; the release's script trains Segformer on efficientnet-b7, and
# smp's default ResNet-34 stands in for the other five.
PAPER_ENCODERS = {arch: "resnet34" for arch in SEG_ARCHS} | {"segformer": "efficientnet-b7"}


class SettingsError(BadInputError, ValueError):
    """A setting that cannot be used. A `BadInputError`, so a step fails once without retries;
    a `ValueError`, so callers that catch bad values keep catching it."""


@dataclass(frozen=True)
class Rule:
    """What one setting allows beyond its type: bounds (ge/gt/le/lt), the names it may use (a
    string's value, a list's items or a mapping's keys), non-empty, and a last `check` that
    returns what is wrong (or None), with `says`, what that check wants, in words, continuing
    the type's description (": west, south, ...", " that is a power of two")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    check: Callable[[Any], str | None] | None = None
    says: str = ""

    def bounds(self) -> str:
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return ""

    def problem(self, value: Any) -> str | None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)):
                return "is out of range"
        if self.nonempty and not value:
            return "is empty"
        if self.choices:
            names = [value] if isinstance(value, str) else list(value)  # a list's items or a mapping's keys
            unknown = [n for n in names if n not in self.choices]
            if unknown:
                return "is unknown" if isinstance(value, str) else f"names {', '.join(map(repr, unknown))}, not known"
        return self.check(value) if self.check else None


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else repr(x)


def limits(*, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: Iterable[str] = (), nonempty: bool = False,
           check: Callable[[Any], str | None] | None = None, says: str = "") -> dict[str, Rule]:
    """A field's metadata holding its `Rule` (for fields that need `field(default_factory=...)`)."""
    return {"rule": Rule(ge, gt, le, lt, tuple(choices), nonempty, check, says)}


def rule(default: Any, **kw: Any) -> Any:
    """A settings field with its `Rule` (keywords of `limits`), so a value's limits sit next to its default."""
    return field(default=default, metadata=limits(**kw))


def _bbox_problem(box: tuple[float, ...]) -> str | None:
    w, s, e, n = box
    ok = w < e and s < n and -180 <= w and e <= 180 and -90 <= s and n <= 90
    return None if ok else "is not a box"


def _fractions_problem(fractions: tuple[float, ...]) -> str | None:
    return None if abs(sum(fractions) - 1.0) <= 1e-6 and min(fractions) >= 0 else "does not split 1"


def _remap_problem(remap: dict[int, int]) -> str | None:
    try:
        validate_remap(remap)
    except ValueError as exc:
        return f"is refused: {exc}"
    return None


def _encoders_problem(encoders: dict[str, str]) -> str | None:
    missing = sorted(set(SEG_ARCHS) - set(encoders))
    return f"names no encoder for {', '.join(missing)}" if missing else None


def _per_mode_range(low: float, high: float) -> Callable[[dict[str, float]], str | None]:
    """A check that a per-method (or per-pair) mapping has known keys and values in [low, high]."""
    def problem(values: dict[str, float]) -> str | None:
        unknown = [k for k in values if k.split(":", 1)[0] not in CAPTION_MODES]
        if unknown:
            return f"names {', '.join(map(repr, unknown))}, not a method or method:Model"
        return None if all(low <= v <= high for v in values.values()) else "is out of range"
    return problem


def _plan_problem(plan: tuple[str, ...]) -> str | None:
    wrong = [p for p in plan if p.count(":") != 1 or p.split(":")[0] not in CAPTION_MODES or not p.split(":")[1].strip()]
    if wrong:
        return f"has {', '.join(map(repr, wrong))}, not method:Model"
    repeated = sorted({p for p in plan if plan.count(p) > 1})
    return f"repeats {', '.join(map(repr, repeated))}" if repeated else None


def _backends_problem(backends: dict[str, str]) -> str | None:
    wrong = [f"{k}={v}" for k, v in backends.items() if v not in CAPTION_BACKENDS]
    return f"has {', '.join(wrong)}, not a backend" if wrong else None


def _endpoints_problem(endpoints: dict[str, str]) -> str | None:
    wrong = [f"{k}={v}" for k, v in endpoints.items() if urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname]
    return f"has {', '.join(wrong)}, not an http(s) URL" if wrong else None


def _power_of_two_problem(n: int) -> str | None:
    return None if n & (n - 1) == 0 else "is not a power of two"


def cron_problem(text: str) -> str | None:
    """What is wrong with a 5-field cron expression (the schedules' own parser says), or None."""
    try:
        parse_cron(text)
    except ValueError as exc:  # the setting's message names the expression already
        return str(exc).removeprefix(f"cron {text!r}: ").removeprefix(f"cron {text!r} ")
    return None


CRON_SAYS = (" of 5 cron fields: minute hour day-of-month month day-of-week, "
             "each a comma list of *, n, a-b, */n or a-b/n")


@dataclass(frozen=True)
class Settings:
    profile: str = "demo"
    # Sources: where tiles come from and which area to take.
    bbox: tuple[float, float, float, float] = rule((27.9, 35.9, 31.2, 39.1), check=_bbox_problem,  # west, south, east, north
                                                   says=": west, south, east, north in degrees; west < east, south < north")
    tile_source: str = "sample_region"  # a folder (relative paths sit under the data root), "templates" or "release"
    s2_uri_template: str = S2_BUCKET_TEMPLATE
    wc_uri_template: str = WC_BUCKET_TEMPLATE
    # GDAL options for remote tiles (endpoint, AWS_HTTPS, virtual hosting, timeouts; see
    # sources/remote.py). Credentials are never settings: AWS_ACCESS_KEY_ID ... in the environment.
    remote_options: dict[str, str] = field(default_factory=dict, metadata=limits(
        choices=REMOTE_OPTION_NAMES, says=": GDAL options for remote tiles (credentials only from the environment)"))
    remote_probe_workers: int = rule(16, ge=1, le=256)  # concurrent header requests of the catalog
    # Sample region written by `aras sample-region`.
    sample_seed: int = rule(7, ge=0)
    sample_tile_px: int = rule(1600, ge=512)  # the sample landscapes need 512 px a side
    # Patches.
    remap: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_REMAP), metadata=limits(
        check=_remap_problem, says=": WorldCover codes to kept class codes, every code given a class"))
    normalization: str = rule("per_patch_max", choices=("per_patch_max", "stretch"))
    stretch_max: int = rule(3000, ge=1)  # reflectance x 10000 that maps to 255 with "stretch"
    water_max_share: float = rule(0.9, gt=0, le=1)
    # zlib level of the PNGs: lossless at every level; 1 encodes ~4x faster than PIL's default 6
    # for files ~15% larger, and encoding dominates patch extraction.
    png_compress_level: int = rule(1, ge=0, le=9)
    workers: int = rule(0, ge=0)  # threads for patch extraction; 0 = one per core
    # Splits.
    split_method: str = rule("blocked", choices=("blocked", "random"))
    split_fractions: tuple[float, float, float] = rule((0.8, 0.1, 0.1), check=_fractions_problem,
                                                       says=": train, validation and test shares >= 0 summing to 1")
    split_block: int = rule(2, ge=1)  # patches per side of a spatial block
    split_seed: int = rule(42, ge=0)
    # Segmentation: which architectures `aras demo|run` trains (all six are partitions of the
    # asset), the encoder of each, and the training recipe (the paper profile is the release's;
    # the demo adds cross-entropy and smaller batches so tiny models learn from ~100 patches).
    seg_archs: tuple[str, ...] = rule(("pan", "fpn"), choices=SEG_ARCHS)
    seg_encoders: dict[str, str] = field(default_factory=lambda: dict(DEMO_ENCODERS),
                                           metadata=limits(choices=SEG_ARCHS, check=_encoders_problem))
    seg_encoder_weights: str = ""  # folder of local `<encoder>.pth` files; empty = random init, nothing downloaded
    seg_epochs: int = rule(8, ge=1)
    seg_batch_size: int = rule(4, ge=1)
    seg_eval_batch_size: int = rule(16, ge=1)
    seg_lr: float = rule(2e-3, gt=0)
    seg_weight_decay: float = rule(1e-2, ge=0)
    seg_grad_clip: float = rule(1.0, ge=0)  # 0 = no clipping
    seg_ce_weight: float = rule(1.0, ge=0)  # x cross-entropy added to the Dice loss (0 = Dice only, as the release)
    seg_lr_factor: float = rule(0.5, gt=0, lt=1)  # ReduceLROnPlateau refuses 1 and more
    seg_lr_patience: int = rule(2, ge=0)
    seg_patience: int = rule(5, ge=1)  # early stopping, epochs without a better validation macro F1
    seg_augment: bool = True
    seg_seed: int = rule(0, ge=0)
    seg_loader_workers: int = rule(0, ge=0)  # DataLoader worker processes; 0 reads in the training process
    label_batch_size: int = rule(16, ge=1)
    label_model: str = "champion"  # who labels images: champion, <arch>, <arch>/<version> or <arch>@<alias>
    # Captions: the plan of (method, model) pairs as the paper's Table 2, each "method:Model";
    # caption_modes keeps the pairs of the methods it names. Each pair writes captions_per_image
    # captions per image. caption_models: what each model name's backend serves or loads;
    # caption_backends: a model name's backend (offline, openai, vllm; default: the captioner
    # resource's). Sampling per method or per pair, and prompt templates replacing the release's
    # (keys text, text_system, vision, hybrid).
    caption_plan: tuple[str, ...] = rule(PAPER_CAPTION_PLAN, nonempty=True, check=_plan_problem,
                                         says=' of "method:Model" pairs, method one of text, vision, hybrid')
    caption_models: dict[str, str] = field(default_factory=lambda: dict(PAPER_CAPTION_MODELS),
                                           metadata=limits(nonempty=True))
    caption_backends: dict[str, str] = field(default_factory=dict, metadata=limits(
        check=_backends_problem, says=" with values offline, openai or vllm"))
    # caption_endpoints: the OpenAI-compatible server (base URL) of a model name whose backend is
    # openai, one server per model as vLLM serves them; a model left out uses the captioner
    # resource's endpoint.
    caption_endpoints: dict[str, str] = field(default_factory=dict, metadata=limits(
        check=_endpoints_problem, says=" of model name to http(s)://HOST:PORT/v1"))
    caption_modes: tuple[str, ...] = rule(CAPTION_MODES, choices=CAPTION_MODES, nonempty=True)
    captions_per_image: int = rule(1, ge=1)
    caption_seed: int = rule(0, ge=0)
    caption_batch_size: int = rule(64, ge=1)
    # Sampling per method (or per pair, keyed "method:Model"), as the release: Text temperature
    # 0.7 / top_p 0.8, Hybrid greedy (temperature 0), Vision the model's own defaults. A method
    # absent from a mapping sends nothing for it (model default).
    caption_temperature: dict[str, float] = field(default_factory=lambda: {"text": 0.7, "hybrid": 0.0}, metadata=limits(
        check=_per_mode_range(0, 2), says=" with values in [0, 2], keyed by method or method:Model"))
    caption_top_p: dict[str, float] = field(default_factory=lambda: {"text": 0.8}, metadata=limits(
        check=_per_mode_range(1e-6, 1), says=" with values in (0, 1], keyed by method or method:Model"))
    caption_max_tokens: int = rule(100, ge=1)  # the release: at most 100 new tokens
    # Percentages in {class_info}: "release" = Python's round to 2 places (8.2%); "two_decimals" = 8.20%.
    caption_percent_format: str = rule("release", choices=PERCENT_FORMATS)
    caption_prompts: dict[str, str] = field(default_factory=dict,
                                              metadata=limits(choices=("text", "text_system", "vision", "hybrid")))
    # Generation, unconditional style-based GAN (gan_*): size, widths and the training recipe.
    # Widths: channels at resolution r = min(gan_channel_base // r, gan_channel_max).
    gan_resolution: int = rule(32, ge=8, check=_power_of_two_problem, says=" that is a power of two")
    gan_z_dim: int = rule(64, ge=1)
    gan_w_dim: int = rule(64, ge=1)
    gan_mapping_layers: int = rule(2, ge=1)
    gan_channel_base: int = rule(1024, ge=1)
    gan_channel_max: int = rule(64, ge=1)
    gan_steps: int = rule(400, ge=1)
    gan_batch_size: int = rule(8, ge=1)  # images per optimizer step (StyleGAN's --batch)
    gan_accumulate: int = rule(1, ge=1)  # micro-batches per step, so a large batch fits in memory
    gan_mirror: bool = False  # double the unconditional GAN's training set with x-flips (StyleGAN's --mirror=1)
    gan_lr: float = rule(2.5e-3, gt=0)
    gan_r1_gamma: float = rule(0.2, ge=0)  # 0 = no R1 penalty
    gan_r1_interval: int = rule(16, ge=1)  # lazy R1: the penalty every this many discriminator steps
    gan_style_mixing: float = rule(0.9, ge=0, le=1)  # probability
    gan_ema_kimg: float = rule(0.5, ge=0)  # half-life of the generator's moving average, thousands of images; 0 = none
    gan_augment: tuple[str, ...] = rule(("color", "translation", "cutout"),  # DiffAugment policy; () = off
                                        choices=("color", "translation", "cutout"))
    # Adaptive augmentation (ADA's controller over the DiffAugment ops): the probability follows
    # E[sign(D(real))] toward this target (StyleGAN's 0.6); 0 = the ops on every image.
    gan_ada_target: float = rule(0.0, ge=0, lt=1)
    gan_ada_kimg: float = rule(500.0, gt=0)  # thousands of images for the probability to go from 0 to 1
    gan_checkpoint_every: int = rule(100, ge=1)  # steps
    gan_fid_every: int = rule(200, ge=0)  # steps; 0 = only at the end
    gan_seed: int = rule(0, ge=0)
    # Conditional SPADE generator with a U-Net discriminator (cond_*).
    cond_z_dim: int = rule(16, ge=1)
    cond_channels: int = rule(16, ge=1)  # narrowest generator layer; the widest is up to 8x this
    cond_hidden: int = rule(32, ge=1)  # width of the mask embedding inside each SPADE layer
    cond_steps: int = rule(300, ge=1)
    cond_batch_size: int = rule(8, ge=1)
    cond_lr_g: float = rule(1e-4, gt=0)
    cond_lr_d: float = rule(4e-4, gt=0)
    cond_cutmix_prob: float = rule(0.5, ge=0, le=1)
    cond_consistency_weight: float = rule(1.0, ge=0)
    cond_vgg_weights: str = ""  # local torchvision VGG-19 state dict; empty = no perceptual loss
    cond_vgg_weight: float = rule(10.0, ge=0)
    cond_images_per_mask: int = rule(2, ge=1)  # k synthetic images per training patch of a tile
    # Sharded generation and FID.
    # gen_shard partitions 0000..; registered by the generation stage, never removed (four digits: at most 10000)
    gen_shards: int = rule(4, ge=1, le=10_000)
    gen_shard_size: int = rule(16, ge=1)  # images per shard
    gen_batch_size: int = rule(16, ge=1)
    gen_seed: int = rule(0, ge=0)
    gen_truncation_psi: float = rule(1.0, ge=0, le=1)  # 0 = the mean w, 1 = no truncation
    fid_images: int = rule(512, ge=2)  # real and synthetic images per FID estimate (at most); a covariance needs 2
    fid_inception_weights: str = ""  # local torchvision Inception-v3 state dict; empty = encoder-space FID only
    # Evaluation: the feature projection (the paper's Figure 4) and the augmentation ablation (its
    # Tables 3 and 4). An ablation partition is one (train set, architecture) pair; `aras run`
    # trains the pairs of these two lists, the UI can materialize any.
    projection_images: int = rule(300, ge=2)  # images per set (real, uncond, cond) at most, drawn with projection_seed
    projection_seed: int = rule(0, ge=0)
    projection_pca: int = rule(50, ge=0)  # principal components t-SNE and UMAP start from; 0 = the scaled features
    silhouette_sample: int = rule(2000, ge=4)  # points a silhouette is scored on at most (its cost grows with the square)
    ablation_train_sets: tuple[str, ...] = rule(("real", "real+uncond", "real+cond"), choices=TRAIN_SETS)
    ablation_archs: tuple[str, ...] = rule(("pan",), choices=SEG_ARCHS)
    ablation_epochs: int = rule(2, ge=1)  # the segmentation recipe with this many epochs
    ablation_uncond_multiple: int = rule(3, ge=1)  # uncond images per real training patch in uncond_3x and real+uncond
    # Operating: scheduled partial backfills and the new-tile sensor.
    backfill_cron: str = rule("*/15 * * * *", check=cron_problem, says=CRON_SAYS)  # UTC; read at each tick
    backfill_max_partitions: int = rule(4, ge=1)  # partitions one schedule tick may request
    backfill_assets: tuple[str, ...] = ("real_patches", "uncond_images", "real_captions")
    # How long a step keeps retrying a transient failure (endpoint down, network read) with
    # exponential backoff before it fails; 0 = fail at once.
    retry_window_s: float = rule(120.0, ge=0, le=3600)

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
        # The release: --batch=256 --gamma=0.01 --mirror=1 --aug=ada --kimg 5000 --cbase 16384 (for
        # --aug=ada, ADA's controller over the DiffAugment ops). 5,000 kimg / 256 images a step = 19,532 steps.
        "gan_steps": 19_532,
        "gan_batch_size": 256,
        "gan_accumulate": 8,  # 8 passes of 32 images, the batch this profile ran in one pass before
        "gan_mirror": True,
        "gan_r1_gamma": 0.01,
        "gan_ada_target": 0.6,  # --aug=ada: its controller, over the DiffAugment ops (not ADA's 18 transforms)
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
        "projection_images": 2000,
        "silhouette_sample": 5000,
        "ablation_train_sets": TRAIN_SETS,  # every training set of Tables 3 and 4, with every architecture
        "ablation_archs": SEG_ARCHS,
        "ablation_epochs": 100,
    },
}

FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
TYPES: dict[str, Any] = typing.get_type_hints(Settings)
RULES: dict[str, Rule] = {name: f.metadata.get("rule", Rule()) for name, f in FIELDS.items()}


def _kind(tp: Any, choices: tuple[str, ...] = (), nonempty: bool = False) -> str:
    """A type in words ("a whole number", "a list of 4 numbers")."""
    names = f"names from {', '.join(choices)}" if choices else "names"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if args[-1] is Ellipsis:
            return f"a {'non-empty ' if nonempty else ''}list of {names if args[0] is str else _kind(args[0])}"
        return f"a list of {len(args)} {'numbers' if args[0] is float else 'values'}"
    if origin is dict:
        keys = f"from {', '.join(choices)}" if choices else f"of {_kind(args[0]).removeprefix('a ')}s"
        return f"a mapping {keys} to {_kind(args[1]).removeprefix('a ')}s"
    if tp is str and choices:
        return f"one of {', '.join(choices)}"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}[tp]


def allowed(name: str) -> str:
    """What a setting accepts, in words: its type, then its rule."""
    r = RULES[name]
    kind = _kind(TYPES[name], r.choices, r.nonempty)
    bounds = r.bounds()
    return f"{kind} {bounds}{r.says}" if bounds else f"{kind}{r.says}"


class _Wrong(Exception):
    """What is wrong with a value, in words ("is not an integer"); the caller adds which setting."""


def _scalar(tp: Any, value: Any) -> Any:
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise _Wrong("is not a boolean" if tp is bool else "is not a string")
    noun = "an integer" if tp is int else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):  # True is an int to Python, not to us
        raise _Wrong(f"is not {noun}")
    if isinstance(value, float) and not math.isfinite(value):  # json.loads reads NaN and Infinity
        raise _Wrong("is not a finite number")
    if tp is float:
        return float(value)
    if isinstance(value, float):  # 2.0 (or 2e3) is a whole number; 1.9 is not
        if not value.is_integer():
            raise _Wrong(f"is not {noun}")
        return int(value)
    return value


def _item(tp: Any, value: Any) -> Any:
    try:
        return _scalar(tp, value)
    except _Wrong as wrong:
        raise _Wrong(f"has {value!r}, which {wrong}") from None


def _key(tp: Any, key: Any) -> Any:
    if tp is int and isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key):  # JSON and TOML keys are strings
        return int(key)
    return _item(tp, key)


def _typed(tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise _Wrong("is not a list")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise _Wrong(f"has {len(value)} values, not {len(args)}")
        return tuple(_item(args[0], v) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Wrong("is not a mapping")
        return {_key(args[0], k): _item(args[1], v) for k, v in value.items()}
    return _scalar(tp, value)


def _coerce(name: str, value: Any) -> tuple[Any, str]:
    """Turn an override into the field's exact type; text for a non-text setting (from the
    environment, the CLI or the launchpad) is read as JSON first. Returns the value and how to
    show it in a refusal: as typed (true, not 'true')."""
    if name not in FIELDS:
        raise SettingsError(f"unknown setting {name!r} (given {value!r}); known settings: {', '.join(sorted(FIELDS))}")
    tp = TYPES[name]
    shown = repr(value)
    if isinstance(value, str) and tp is not str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise SettingsError(f"setting {name}: {value!r} is not valid JSON ({allowed(name)})") from None
        shown, value = (value if value.isprintable() else repr(value)), parsed
    try:
        return _typed(tp, value), shown
    except _Wrong as wrong:
        raise SettingsError(f"setting {name}: {shown} {wrong} ({allowed(name)})") from None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh).get("settings", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise SettingsError(f"setting ARAS_SETTINGS: {path!r} cannot be read: {reason} "
                            "(a TOML file with a [settings] table)") from None
    if not isinstance(table, dict):
        raise SettingsError(f"setting ARAS_SETTINGS: {path!r} has no [settings] table (a TOML file with a [settings] table)")
    return table


def _layers(profile: str | None, overrides: Mapping[str, Any] | None,
            environ: Mapping[str, str] | None) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The profile in effect, the values given (lowest precedence first: profile, settings file,
    environment, overrides) and where each came from."""
    env = os.environ if environ is None else environ
    profile = profile or env.get("ARAS_PROFILE") or "demo"
    if profile not in PROFILES:
        raise SettingsError(f"setting profile: {profile!r} is an unknown profile (one of {', '.join(PROFILES)})")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(layer: Mapping[str, Any], where: Callable[[str], str]) -> None:
        for name, value in layer.items():
            values[name], sources[name] = value, where(name)

    put(PROFILES[profile], lambda _: f"profile {profile}")
    if env.get("ARAS_SETTINGS"):
        put(_read_toml(env["ARAS_SETTINGS"]), lambda _: f"file {env['ARAS_SETTINGS']}")
    put({name: env[f"ARAS_{name.upper()}"] for name in FIELDS if name != "profile" and f"ARAS_{name.upper()}" in env},
        lambda name: f"environment ARAS_{name.upper()}")
    put(overrides or {}, lambda _: "override")
    values.pop("profile", None)
    sources.pop("profile", None)
    return profile, values, sources


def setting_sources(profile: str | None = None, overrides: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each setting's value comes from: "default", "profile paper", "file <path>",
    "environment ARAS_<NAME>" or "override" (`--set`, or the launchpad's overrides)."""
    _, _, sources = _layers(profile, overrides, environ)
    env = os.environ if environ is None else environ
    chosen_by = "given" if profile else "environment ARAS_PROFILE" if env.get("ARAS_PROFILE") else "default"
    return {"profile": chosen_by} | {name: sources.get(name, "default") for name in FIELDS if name != "profile"}


def load_settings(profile: str | None = None, overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    profile, values, _ = _layers(profile, overrides, environ)
    coerced, shown = {}, {}
    for name, value in values.items():
        coerced[name], shown[name] = _coerce(name, value)
    if "seg_encoders" in coerced:  # a partial mapping changes only the architectures it names
        coerced["seg_encoders"] = {**PROFILES[profile].get("seg_encoders", DEMO_ENCODERS), **coerced["seg_encoders"]}
    settings = Settings(profile=profile, **coerced)
    _validate(settings, shown)
    return settings


def _validate(s: Settings, shown: Mapping[str, str] | None = None) -> None:
    """Each field's rule, on the merged values (defaults included); `shown`: values as given."""
    for name, r in RULES.items():
        value = getattr(s, name)
        problem = r.problem(value)
        if problem:
            raise SettingsError(f"setting {name}: {(shown or {}).get(name, repr(value))} {problem} ({allowed(name)})")
    unknown = sorted(set(s.caption_endpoints) - set(s.caption_models))
    if unknown:
        raise SettingsError(f"setting caption_endpoints: {', '.join(map(repr, unknown))} not in caption_models "
                            f"({', '.join(s.caption_models)})")
    unknown = [p for p in s.caption_plan if p.split(":", 1)[1] not in s.caption_models]
    if unknown:
        raise SettingsError(f"setting caption_plan: {', '.join(map(repr, unknown))} names a model not in caption_models "
                            f"({', '.join(s.caption_models)}); add it there with what its backend serves")
    if not any(p.split(":", 1)[0] in s.caption_modes for p in s.caption_plan):
        raise SettingsError(f"setting caption_modes: {list(s.caption_modes)} keeps no pair of caption_plan "
                            f"{list(s.caption_plan)}")

class SettingsResource(dg.ConfigurableResource):
    """The active profile and overrides, as a resource so the launchpad can change them per run."""

    profile: str = ""
    overrides: dict[str, str] = {}  # noqa: RUF012 (pydantic copies defaults)

    def get(self) -> Settings:
        return load_settings(self.profile or None, self.overrides)
