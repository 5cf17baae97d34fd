"""Completeness audit over the whole dataset (the caption_eval asset check): every caption resolves
to its image and a source tile, every synthetic image and labeler mask to a registered model version."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from aras_assets import layout
from aras_assets.layout import REAL, UNCOND
from aras_assets.operations.lineage.manifests import CAPTIONS, IMAGES, LABELS, PATCHES, Kind, schema_error


def _glob(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _lazy(files: list[Path], kind: Kind, columns: Sequence[str], schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    if not files:
        return pl.LazyFrame(schema=schema)
    for path in files:  # footers only: a corrupt file is named here, before the joins
        if error := schema_error(path, kind, columns):
            raise error
    return pl.scan_parquet(files, glob=False, extra_columns="ignore").select(columns).cast(schema)


def registered_versions(client: Any, names: Iterable[str]) -> dict[str, set[str]]:
    """Registered versions per model name, from an MlflowClient (or anything with search_model_versions)."""
    out = {}
    for name in names:
        escaped = name.replace("'", "\\'")
        out[name] = {str(v.version) for v in client.search_model_versions(f"name='{escaped}'")}
    return out


_S = pl.String


@dataclass(frozen=True)
class _Manifests:
    """Every manifest of each kind, as one lazy frame of the columns the audit reads."""

    patches: pl.LazyFrame
    synthetic: pl.LazyFrame
    labels: pl.LazyFrame
    captions: pl.LazyFrame

    @classmethod
    def read(cls, root: Path) -> _Manifests:
        return cls(
            patches=_lazy(_glob(root, layout.PATCH_MANIFESTS), PATCHES, ["patch_id", "s2_tile", "s2_uri", "wc_uri"],
                          {"patch_id": _S, "s2_tile": _S, "s2_uri": _S, "wc_uri": _S}),
            synthetic=_lazy(_glob(root, layout.SYNTHETIC_MANIFESTS), IMAGES,
                            ["image_id", "origin", "model_name", "model_version", "conditioning_patch_id"],
                            {"image_id": _S, "origin": _S, "model_name": _S, "model_version": _S, "conditioning_patch_id": _S}),
            labels=_lazy(_glob(root, layout.label_manifests(LABELS.asset(UNCOND))), LABELS,
                         ["image_id", "model_name", "model_version"], {"image_id": _S, "model_name": _S, "model_version": _S}),
            captions=_lazy(_glob(root, layout.CAPTION_FILES), CAPTIONS, ["caption_id", "image_id"],
                           {"caption_id": _S, "image_id": _S}))


# Each kind of break as rows of (problem, example, order): the examples listed are the first by order.

def _caption_breaks(m: _Manifests) -> pl.LazyFrame:
    """Captions whose image is not on record, or whose image leads to no source tile (unconditional
    images excepted: they come from noise)."""
    sourced = m.patches.filter(pl.col("s2_tile").is_not_null() & pl.col("s2_uri").is_not_null()
                               & pl.col("wc_uri").is_not_null()).select(pl.col("patch_id").alias("source"),
                                                                         pl.lit(True).alias("has_tile"))
    known = pl.concat([
        m.patches.select(pl.col("patch_id").alias("image_id"), pl.lit(REAL).alias("image_origin"),
                         pl.col("patch_id").alias("source")),
        m.synthetic.select("image_id", pl.col("origin").alias("image_origin"),
                           pl.col("conditioning_patch_id").alias("source")),
    ]).unique("image_id", keep="first").join(sourced, on="source", how="left")
    chains = m.captions.join(known, on="image_id", how="left")
    return (chains.with_columns(
        pl.when(pl.col("image_origin").is_null()).then(pl.lit("caption_without_image"))
        .when((pl.col("image_origin") != UNCOND) & pl.col("has_tile").is_null()).then(pl.lit("caption_without_tile"))
        .otherwise(None).alias("problem"))
        .filter(pl.col("problem").is_not_null())
        .select("problem", pl.format("{} (image {})", "caption_id", "image_id").alias("example"),
                pl.col("caption_id").alias("order")))


def _registered(client: Any, m: _Manifests) -> pl.LazyFrame:
    """The registered (model_name, model_version) pairs among those the manifests name."""
    models = pl.concat([m.synthetic.select("model_name", "model_version"), m.labels.select("model_name", "model_version")]) \
        .unique().collect()
    names = sorted(n for n in models["model_name"].drop_nulls().unique().to_list())
    versions = registered_versions(client, names) if names else {}
    return pl.DataFrame([(n, v) for n, vs in versions.items() for v in vs],
                        schema={"model_name": _S, "model_version": _S}, orient="row").lazy() \
        .with_columns(pl.lit(True).alias("registered"))


def _unregistered(frame: pl.LazyFrame, registered: pl.LazyFrame, problem: str, what: str) -> pl.LazyFrame:
    """Images whose model version is not registered (a missing name or version counts as unregistered)."""
    return (frame.join(registered, on=["model_name", "model_version"], how="left", nulls_equal=False)
            .filter(pl.col("registered").is_null())
            .select(pl.lit(problem).alias("problem"),
                    pl.format("{} ({} {} v{})", "image_id", pl.lit(what), pl.col("model_name").fill_null("?"),
                              pl.col("model_version").fill_null("?")).alias("example"),
                    pl.col("image_id").alias("order")))


def broken_chains(root: Path, client: Any, examples: int = 5) -> dict[str, Any]:
    """Every caption must resolve to its image and, through a real patch (its own, or the conditioning
    mask of a conditional image), to a source tile with S2 and WorldCover URIs; unconditional images
    come from noise, so their chain ends at the generator. Every synthetic image must name a generator
    version registered in MLflow, and every labeler mask a registered segmentation version.

    Returns counts of what was checked and, per kind of break, its count and the first examples."""
    m = _Manifests.read(Path(root))
    caption_breaks = _caption_breaks(m)
    registered = _registered(client, m)
    generated = m.synthetic.filter(pl.col("model_name").fill_null("") != layout.IMPORTED)  # imported: no generator on record
    all_problems = pl.concat([caption_breaks, _unregistered(generated, registered, "image_without_model", "generator"),
                              _unregistered(m.labels, registered, "mask_without_model", "labeler")])
    summary = (all_problems.sort("order").group_by("problem", maintain_order=True)
               .agg(pl.len().alias("count"), pl.col("example").head(examples).alias("examples"))
               .collect(engine="streaming"))
    counts = pl.collect_all([m.captions.select(pl.len()), m.synthetic.select(pl.len()), m.labels.select(pl.len()),
                             m.synthetic.select((pl.col("model_name") == layout.IMPORTED).sum())])
    broken = {kind: {"count": 0, "examples": []} for kind in
              ("caption_without_image", "caption_without_tile", "image_without_model", "mask_without_model")}
    for row in summary.iter_rows(named=True):
        broken[row["problem"]] = {"count": int(row["count"]), "examples": list(row["examples"])}
    return {"captions": int(counts[0].item()), "synthetic_images": int(counts[1].item()),
            "labelled_images": int(counts[2].item()), "imported_synthetic_images": int(counts[3].item() or 0),
            "broken": broken,
            "broken_total": sum(b["count"] for b in broken.values())}
