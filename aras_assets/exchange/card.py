"""The export's dataset card: a README with Hugging Face dataset-card front matter (license,
task categories, size category), filled from the run's numbers: counts per split and origin,
class shares, caption redundancy, FID and the lineage columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from aras_assets import layout
from aras_assets.exchange import release as rl
from aras_assets.exchange.export import PATCH_CSV_COLUMNS, SYNTH_CSV_COLUMNS

if TYPE_CHECKING:
    from aras_assets.exchange.export import ExportSummary

LICENSE = "cc-by-4.0"
TASKS = ("image-segmentation", "image-to-text", "text-to-image")


def size_category(n: int) -> str:
    """Hugging Face's size buckets."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def _table(rows: list[dict]) -> str:
    if not rows:
        return "none\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _redundancy(root: Path) -> list[dict]:
    """caption_eval's Table 2 (per model and method), else its redundancy per origin and mode."""
    path = next((p for p in (root / layout.CAPTION_TABLE2, root / layout.CAPTION_REDUNDANCY) if p.is_file()), None)
    if path is None:
        return []
    frame = pl.read_parquet(path)
    cols = [c for c in ("subset", "origin", "model", "mode", "captions", "unique", "redundancy_pct", "paper_redundancy_pct")
            if c in frame.columns]
    return [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in frame.select(cols).to_dicts()]


def _fid(root: Path) -> list[dict]:
    path = root / layout.FID_REPORT
    if not path.is_file():
        return []
    return [{"set": r.get("set"), "fid": round(float(r.get("fid", 0.0)), 4), "features": r.get("features"),
             "synthetic_images": r.get("synthetic_images"), "real_images": r.get("real_images")}
            for r in json.loads(path.read_text())]


def card_text(root: Path, summary: ExportSummary) -> str:
    total = sum(summary.counts.values())
    front = "\n".join([
        "---", f"license: {LICENSE}", "task_categories:", *[f"- {t}" for t in TASKS],
        "tags:", "- remote-sensing", "- sentinel-2", "- land-cover", "- synthetic", "- stac", "- croissant",
        "size_categories:", f"- {size_category(total)}", "pretty_name: ARAS synthetic-augmented land-cover dataset", "---"])
    splits = [{"folder": k, "images": v, "zip": rl.zip_name(k), "md5": summary.zips.get(rl.zip_name(k), "")}
              for k, v in summary.counts.items()]
    origins = [{"origin": k, "images": v} for k, v in summary.origins.items()]
    shares = [{"class": k, "share_pct": v} for k, v in summary.class_shares.items()]
    redundancy, fid = _redundancy(root), _fid(root)
    return f"""{front}

# ARAS synthetic-augmented land-cover dataset

256x256 Sentinel-2 RGB patches (WorldCover S2 RGBNIR composite 2021, bands 4, 3, 2) with 7-class
land-cover masks (ESA WorldCover 2021 v200, remapped as the ARAS400k release did), synthetic images
with their masks, and captions. The layout is the ARAS400k release's: `train.zip`, `val.zip`,
`test.zip` and `synth.zip` each hold `images/` and RGB `masks/` (`{{tile}}_{{row:03d}}_{{col:03d}}.png`
for real patches), `{rl.CLASS_CSV}` and `{rl.CAPTION_CSV}`. Check the zips with `md5sum -c {rl.MD5_SUMS}`
({rl.MD5_TABLE} holds the same table). `stac/` is a STAC Collection (one Item per real patch, also as
`stac/{rl.STAC_PARQUET}`); `{rl.CROISSANT}` is its Croissant description.

## Size

{total} images.

{_table(splits)}
{_table(origins)}
## Class shares (real masks, % of pixels)

{_table(shares)}
## Classes and mask colours

0 Tree (0,100,0), 1 Shrub (255,182,193), 2 Grass (154,205,50), 3 Crop (255,215,0), 4 Built-up (139,69,19),
5 Barren (211,211,211), 6 Water (0,0,255).

## Captions

{summary.captions} captions. Redundancy (1 - unique / total; not computed when caption_eval has not run):

{_table(redundancy)}
## Synthetic image quality (FID; not computed when gan_fid has not run)

{_table(fid)}
## Lineage

Every real patch's row in `{rl.PATCHES_CSV}` names its source: {", ".join(f"`{c}`" for c in PATCH_CSV_COLUMNS)}.
Synthetic images (`{rl.SYNTHETIC_CSV}`): {", ".join(f"`{c}`" for c in SYNTH_CSV_COLUMNS)}.
Captions (`{rl.CAPTIONS_CSV}`): caption id, image id, mode, index, captioner backend and model, prompt hash, seed, text.

## License

Derived from ESA WorldCover 2021 v200 and its Sentinel-2 composite (CC-BY 4.0, (c) ESA WorldCover
project / contains modified Copernicus Sentinel data processed by the ESA WorldCover consortium).
"""


def write_card(out: Path, root: Path, summary: ExportSummary) -> None:
    (out / rl.CARD).write_text(card_text(root, summary))
