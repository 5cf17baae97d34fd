"""The data layout: every path and file name under the data root, the image origins and the
caption modes. Paths here are relative to the data root (manifests store them that way);
`StorageResource.path(layout.x(...))` makes them absolute. Nothing else spells a file name.

    catalog/tiles.parquet                          tile_catalog
    patches/<tile>/{images,masks}/, manifest.parquet, rejected.parquet     real_patches
    splits/splits.parquet                          splits
    models/segmentation/<arch>/model.json, ...     segmentation_model
    models/gan/<kind>/model.json, ...              uncond_gan, cond_gan
    labels/<asset>/<partition>/masks/, manifest.parquet   real_patch_labels, uncond_labels
    synthetic/<origin>/<partition>/{images,masks,parts}/, manifest.parquet  uncond_images, cond_images
    compositions/<origin>/<partition>.parquet      <origin>_compositions
    captions/<origin>/<partition>/parts/, captions.parquet                  <origin>_captions
    eval/segmentation/<arch>/metrics.json, eval/segmentation/tables.md      segmentation_eval
    eval/generation/fid.json                       gan_fid
    eval/captions/{redundancy,consistency}.parquet caption_eval
    eval/projection/{points.parquet,silhouettes.json,*.png}   feature_projection
    models/ablation/<arch>/<train_set>/, eval/ablation/<train_set>/<arch>/metrics.json   ablation
    eval/ablation/{tables.md,gain.png}             ablation_tables
    report/{report.md,report.html,figures/}        report
    mlflow/                                        the default MLflow store
    sample_region/                                 `aras sample-region`
    release/{train,val,test,synth}/..., index.parquet   `aras import` (the `release` tile source)
    export/                                        dataset_export (`aras export DIR` writes anywhere)
"""

from __future__ import annotations

from pathlib import Path

# Image origins: real patches, unconditional and conditional synthetic images.
REAL, UNCOND, COND = "real", "uncond", "cond"
ORIGINS = (REAL, UNCOND, COND)
SYNTHETIC_ORIGINS = (UNCOND, COND)
# Caption modes, in the order the release runs them.
TEXT, VISION, HYBRID = "text", "vision", "hybrid"
CAPTION_MODES = (TEXT, VISION, HYBRID)

# File and folder names.
MANIFEST = "manifest.parquet"
REJECTED = "rejected.parquet"
CAPTIONS = "captions.parquet"
PARTS = "parts"  # one part per finished batch of a resumable partition
IMAGES, MASKS = "images", "masks"
MODEL_RECORD = "model.json"
SAMPLE_REGION = "sample_region"
MLFLOW = "mlflow"

# A release folder taken in by `aras import` (tile_source = "release") and the dataset export.
RELEASE_SOURCE = "release"
RELEASE = Path("release")
RELEASE_INDEX = RELEASE / "index.parquet"
EXPORT = Path("export")
# The generator (and normalization) named by records taken in from a release: no run, no seed.
IMPORTED = "imported"

CATALOG = Path("catalog", "tiles.parquet")
CATALOG_MAP = Path("catalog", "tiles.png")
SPLITS = Path("splits", "splits.parquet")
SPLITS_MAP = Path("splits", "splits.png")
SEGMENTATION_TABLES = Path("eval", "segmentation", "tables.md")
FID_REPORT = Path("eval", "generation", "fid.json")
CAPTION_EVAL = Path("eval", "captions")
CAPTION_TABLE2 = CAPTION_EVAL / "table2.parquet"  # the paper's Table 2 for our captions
CAPTION_REDUNDANCY = CAPTION_EVAL / "redundancy.parquet"
CAPTION_CONSISTENCY = CAPTION_EVAL / "consistency.parquet"
PROJECTION = Path("eval", "projection")
PROJECTION_POINTS = PROJECTION / "points.parquet"
PROJECTION_SILHOUETTES = PROJECTION / "silhouettes.json"
ABLATION_TABLES = Path("eval", "ablation", "tables.md")
ABLATION_GAIN_PLOT = Path("eval", "ablation", "gain.png")
ABLATION_METRICS = "eval/ablation/*/*/metrics.json"  # glob: every trained (train set, arch) pair
REPORT = Path("report")
REPORT_MARKDOWN = REPORT / "report.md"
REPORT_HTML = REPORT / "report.html"


def patches_dir(tile: str) -> Path:
    return Path("patches", tile)


def patch_manifest(tile: str) -> Path:
    return patches_dir(tile) / MANIFEST


def rejected_patches(tile: str) -> Path:
    return patches_dir(tile) / REJECTED


def seg_model_dir(arch: str) -> Path:
    return Path("models", "segmentation", arch)


def gan_model_dir(kind: str) -> Path:
    return Path("models", "gan", kind)


def seg_eval_dir(arch: str) -> Path:
    return Path("eval", "segmentation", arch)


def ablation_model_dir(train_set: str, arch: str) -> Path:
    return Path("models", "ablation", arch, train_set)


def ablation_metrics(train_set: str, arch: str) -> Path:
    return Path("eval", "ablation", train_set, arch, "metrics.json")


def labels_dir(asset: str, partition: str) -> Path:
    return Path("labels", asset, partition)


def label_manifest(asset: str, partition: str) -> Path:
    return labels_dir(asset, partition) / MANIFEST


def synthetic_dir(origin: str, partition: str) -> Path:
    return Path("synthetic", origin, partition)


def synthetic_manifest(origin: str, partition: str) -> Path:
    return synthetic_dir(origin, partition) / MANIFEST


def compositions_file(origin: str, partition: str) -> Path:
    return Path("compositions", origin, f"{partition}.parquet")


def captions_dir(origin: str, partition: str) -> Path:
    return Path("captions", origin, partition)


def captions_file(origin: str, partition: str) -> Path:
    return captions_dir(origin, partition) / CAPTIONS


# Glob patterns (relative to the data root) over every partition of a kind.
PATCH_MANIFESTS = f"patches/*/{MANIFEST}"
SYNTHETIC_MANIFESTS = f"synthetic/*/*/{MANIFEST}"
COMPOSITION_FILES = "compositions/*/*.parquet"
CAPTION_FILES = f"captions/*/*/{CAPTIONS}"


def synthetic_manifests(origin: str) -> str:
    return f"synthetic/{origin}/*/{MANIFEST}"


def label_manifests(asset: str) -> str:
    return f"labels/{asset}/*/{MANIFEST}"
