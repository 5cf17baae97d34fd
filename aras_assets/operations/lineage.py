"""Lineage audit: from a caption, image or patch id back to the generator, the source patch,
its S2 and WorldCover tiles, pixel windows, bounds and source URIs.

Every id names the partition that holds its record (DESIGN.md section 3), so a lookup reads
only the manifests of those partitions: one lazy, filtered Parquet scan per manifest kind,
never a whole manifest in memory.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from aras_assets.generation.manifest import SYNTHETIC_SCHEMA
from aras_assets.ids import parse_patch_id, parse_synthetic_id

if TYPE_CHECKING:
    from dagster import DagsterInstance

CAPTION_MODES = ("text", "vision", "hybrid")
REAL, UNCOND, COND = "real", "uncond", "cond"
SEG_MODEL_PREFIX = "aras-segmentation-"  # registry.MODEL_PREFIX, without importing torch for it

_CAPTION_RE = re.compile(rf"^(.+)_({'|'.join(CAPTION_MODES)})_(\d+)$")
_ID_EXAMPLES = "N36E027_012_034 (patch), uncond_0003_00012 or cond_N36E027_00012 (image), <image id>_text_0 (caption)"
_FILE_COL = "_manifest_file"
_MAX_LISTED = 5

PATCH_COLUMNS = ("patch_id", "s2_tile", "wc_tile", "row", "col", "x_off", "y_off", "width", "height",
                 "wc_x_off", "wc_y_off", "lon_min", "lat_min", "lon_max", "lat_max", "s2_uri", "wc_uri",
                 "image_path", "mask_path", "image_sha256", "mask_sha256", "normalization")
IMAGE_COLUMNS = tuple(SYNTHETIC_SCHEMA)
LABEL_COLUMNS = ("image_id", "mask_path", "mask_sha256", "model_name", "model_version")
CAPTION_COLUMNS = ("caption_id", "image_id", "origin", "mode", "caption_index", "backend", "model", "prompt_hash",
                   "seed", "text")


class LineageError(LookupError):
    """An id that is malformed or not on record, or a manifest that is missing or unreadable."""


@dataclass(frozen=True)
class ImageRef:
    """An image (a real patch or a synthetic image) and the partition holding its record."""

    image_id: str
    origin: str  # real | uncond | cond
    partition: str  # s2 tile for real and cond, gen shard for uncond


@dataclass(frozen=True)
class RecordRef:
    record_id: str
    kind: str  # caption | image | patch
    image: ImageRef
    mode: str | None = None
    caption_index: int | None = None


def parse_image_id(value: str) -> ImageRef:
    try:
        pid = parse_patch_id(value)
        return ImageRef(value, REAL, pid.tile)
    except ValueError:
        pass
    try:
        sid = parse_synthetic_id(value)
        return ImageRef(value, sid.origin, sid.shard)
    except ValueError:
        pass
    raise LineageError(f"{value!r} is not a caption, image or patch id (expected e.g. {_ID_EXAMPLES})")


def parse_record_id(value: str) -> RecordRef:
    """What kind of record an id names and where its record lives; LineageError if malformed."""
    value = value.strip()
    if m := _CAPTION_RE.match(value):
        try:
            image = parse_image_id(m.group(1))
        except LineageError:
            raise LineageError(f"{value!r} is not a caption id: {m.group(1)!r} is not an image id "
                               f"(expected e.g. {_ID_EXAMPLES})") from None
        return RecordRef(value, "caption", image, m.group(2), int(m.group(3)))
    image = parse_image_id(value)
    return RecordRef(value, "patch" if image.origin == REAL else "image", image)


# Where each kind of record lives, relative to the data root.
def patch_manifest(tile: str) -> Path:
    return Path("patches", tile, "manifest.parquet")


def image_manifest(origin: str, partition: str) -> Path:
    return Path("synthetic", origin, partition, "manifest.parquet")


def label_manifest(shard: str) -> Path:
    return Path("labels", "uncond_labels", shard, "manifest.parquet")


def caption_file(origin: str, partition: str) -> Path:
    return Path("captions", origin, partition, "captions.parquet")


def _asset_partition(asset: str, partition: str) -> str:
    return f"{asset}[{partition}]"


@dataclass(frozen=True)
class _Kind:
    what: str  # how messages name a record of this kind
    key: str
    columns: tuple[str, ...]


_CAPTIONS = _Kind("caption", "caption_id", CAPTION_COLUMNS)
_IMAGES = _Kind("image", "image_id", IMAGE_COLUMNS)
_LABELS = _Kind("label", "image_id", LABEL_COLUMNS)
_PATCHES = _Kind("patch", "patch_id", PATCH_COLUMNS)


def _raise(problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise LineageError(problems[0])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise LineageError(f"{len(problems)} lineage problems: " + "; ".join(problems[:_MAX_LISTED]) + more)


def _unreadable(files: Sequence[Path], kind: _Kind, exc: Exception) -> LineageError:
    """Name the manifest a failed multi-file scan tripped on (polars' message may not)."""
    for path in files:
        try:
            schema = pl.read_parquet_schema(path)
        except Exception as err:  # garbage bytes, a truncated file, a folder
            return LineageError(f"{kind.what} manifest {path} is unreadable (corrupt or not Parquet): {err}")
        lacking = [c for c in kind.columns if c not in schema]
        if lacking:
            return LineageError(f"{kind.what} manifest {path} lacks column(s) {', '.join(lacking)}")
    for path in files:  # a valid footer over damaged pages: only reading the data tells
        try:
            pl.scan_parquet(path).select(kind.columns).collect()
        except Exception as err:
            return LineageError(f"{kind.what} manifest {path} is unreadable (corrupt data): {err}")
    return LineageError(f"cannot read {len(files)} {kind.what} manifest(s) (e.g. {files[0]}): {exc}")


def _scan(root: Path, kind: _Kind, wanted: dict[Path, set[str]]) -> dict[str, dict[str, Any]]:
    """Rows of `kind` for the ids wanted from each manifest (relative path -> ids), keyed by id.
    A row only counts when it sits in the manifest its id points at."""
    if not wanted:
        return {}
    files = [root / rel for rel in sorted(wanted)]
    ids = sorted(set().union(*wanted.values()))
    try:
        frame = (pl.scan_parquet(files, glob=False, extra_columns="ignore", include_file_paths=_FILE_COL)
                 .select(*kind.columns, _FILE_COL)
                 .filter(pl.col(kind.key).is_in(ids))
                 .collect())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _unreadable(files, kind, exc) from exc
    expected = {record_id: str(root / rel) for rel, members in wanted.items() for record_id in members}
    rows: dict[str, dict[str, Any]] = {}
    for row in frame.iter_rows(named=True):
        record_id = row[kind.key]
        source = row.pop(_FILE_COL)
        if expected.get(record_id) == source and record_id not in rows:
            row["manifest"] = str(Path(source).relative_to(root))
            rows[record_id] = row
    return rows


def _producer(rel: Path) -> str:
    """The asset partition that writes a manifest, for "materialize ... first" hints."""
    parts = rel.parts
    if parts[0] == "patches":
        return _asset_partition("real_patches", parts[1])
    if parts[0] == "synthetic":
        return _asset_partition(f"{parts[1]}_images", parts[2])
    return _asset_partition(f"{parts[1]}_{parts[0]}", parts[2])


def _lookup(root: Path, kind: _Kind, wanted: dict[Path, set[str]], problems: list[str],
            via: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Rows of the wanted ids; a problem for every id whose manifest is missing or lacks it."""
    present = {}
    for rel, ids in wanted.items():
        if (root / rel).is_file():
            present[rel] = ids
        else:
            problems += [f"{kind.what} {record_id}{via.get(record_id, '')}: manifest {root / rel} does not exist "
                         f"(materialize {_producer(rel)} first)" for record_id in sorted(ids)]
    rows = _scan(root, kind, present)
    for rel, ids in present.items():
        problems += [f"{kind.what} {record_id}{via.get(record_id, '')} not found in {root / rel}"
                     for record_id in sorted(ids) if record_id not in rows]
    return rows


def _patch_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "patch_id": row["patch_id"], "s2_tile": row["s2_tile"], "wc_tile": row["wc_tile"],
        "row": row["row"], "col": row["col"],
        "window": {k: row[k] for k in ("x_off", "y_off", "width", "height")},
        "wc_window": {"x_off": row["wc_x_off"], "y_off": row["wc_y_off"], "width": row["width"], "height": row["height"]},
        "bounds": {k: row[k] for k in ("lon_min", "lat_min", "lon_max", "lat_max")},
        "s2_uri": row["s2_uri"], "wc_uri": row["wc_uri"],
        "image_path": row["image_path"], "mask_path": row["mask_path"],
        "image_sha256": row["image_sha256"], "mask_sha256": row["mask_sha256"],
        "normalization": row["normalization"], "manifest": row["manifest"],
    }


def _image_record(row: dict[str, Any]) -> dict[str, Any]:
    """The manifest row with the generator's name, version and MLflow run grouped."""
    generator = ("model_name", "model_version", "mlflow_run_id")
    out = {k: v for k, v in row.items() if k not in generator}
    out["generator"] = {k: row[k] for k in generator}
    return out


def _seg_model_run(root: Path, name: str | None, version: str | None, cache: dict[str, dict | None]) -> str | None:
    """The MLflow run of a labeler version, from its architecture's model record when that record
    is still this version (the record keeps only the latest training)."""
    if not name or not name.startswith(SEG_MODEL_PREFIX):
        return None
    arch = name[len(SEG_MODEL_PREFIX):]
    if arch not in cache:
        path = root / "models" / "segmentation" / arch / "model.json"
        try:
            cache[arch] = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            cache[arch] = None
    record = cache[arch]
    if record and str(record.get("model_version")) == str(version):
        return record.get("mlflow_run_id")
    return None


def _latest_runs(instance: DagsterInstance, labels: Iterable[tuple[str, str]], cache: dict[str, str | None]) -> dict:
    """Run id of the latest materialization of each asset partition (None when never materialized)."""
    import dagster as dg

    out = {}
    for asset, partition in labels:
        label = _asset_partition(asset, partition)
        if label not in cache:
            found = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1)
            cache[label] = found.records[0].run_id if found.records else None
        out[label] = cache[label]
    return out


def trace_many(root: Path, ids: Sequence[str], instance: DagsterInstance | None = None) -> list[dict[str, Any]]:
    """Lineage of each id, in the order given. Raises LineageError naming every malformed or unknown
    id (up to a few) and any missing or unreadable manifest."""
    root = Path(root)
    problems: list[str] = []
    refs: list[RecordRef | None] = []
    for value in ids:
        try:
            refs.append(parse_record_id(value))
        except LineageError as exc:
            problems.append(str(exc))
            refs.append(None)
    _raise(problems)
    parsed = [r for r in refs if r is not None]

    # Captions: one scan over the caption files the ids point at.
    wanted: dict[Path, set[str]] = defaultdict(set)
    for ref in parsed:
        if ref.kind == "caption":
            wanted[caption_file(ref.image.origin, ref.image.partition)].add(ref.record_id)
    captions = _lookup(root, _CAPTIONS, wanted, problems, {})
    _raise(problems)

    # The image each record leads to; "via" says which caption led there for messages.
    images: dict[str, ImageRef] = {}
    image_of: dict[str, str] = {}
    via: dict[str, str] = {}
    for ref in parsed:
        image = ref.image
        if ref.kind == "caption":
            named = captions[ref.record_id]["image_id"]
            if named != image.image_id:
                problems.append(f"caption {ref.record_id} names image {named!r}, not the {image.image_id} its id implies "
                                f"({root / captions[ref.record_id]['manifest']})")
                continue
            via.setdefault(image.image_id, f" (of caption {ref.record_id})")
        images[image.image_id] = image
        image_of[ref.record_id] = image.image_id
    _raise(problems)

    # Synthetic images, then the labeler's masks of unconditional ones (optional: not yet labelled is not an error).
    wanted = defaultdict(set)
    for image in images.values():
        if image.origin != REAL:
            wanted[image_manifest(image.origin, image.partition)].add(image.image_id)
    synthetic = _lookup(root, _IMAGES, wanted, problems, via)
    _raise(problems)
    wanted = defaultdict(set)
    for image in images.values():
        if image.origin == UNCOND:
            wanted[label_manifest(image.partition)].add(image.image_id)
    labels = _scan(root, _LABELS, {rel: ids for rel, ids in wanted.items() if (root / rel).is_file()})

    # Source patches: real images themselves, and the conditioning patch of conditional images.
    patch_of: dict[str, str] = {}
    for image in images.values():
        if image.origin == REAL:
            patch_of[image.image_id] = image.image_id
        elif image.origin == COND:
            cond_patch = synthetic[image.image_id]["conditioning_patch_id"]
            try:
                parse_patch_id(cond_patch or "")
            except ValueError:
                problems.append(f"image {image.image_id} has no valid conditioning patch id ({cond_patch!r}) in "
                                f"{root / image_manifest(COND, image.partition)}")
                continue
            patch_of[image.image_id] = cond_patch
            via.setdefault(cond_patch, f" (conditioning {image.image_id}{via.get(image.image_id, '')})")
    _raise(problems)
    wanted = defaultdict(set)
    for pid in set(patch_of.values()):
        wanted[patch_manifest(parse_patch_id(pid).tile)].add(pid)
    patches = _lookup(root, _PATCHES, wanted, problems, via)
    _raise(problems)

    seg_records: dict[str, dict | None] = {}
    run_cache: dict[str, str | None] = {}
    out = []
    for ref in parsed:
        image = images[image_of[ref.record_id]]
        caption = dict(captions[ref.record_id]) if ref.kind == "caption" else None
        synth = _image_record(dict(synthetic[image.image_id])) if image.origin != REAL else None
        label = dict(labels[image.image_id]) if image.image_id in labels else None
        if label is not None:
            label.pop("image_id")
            label["mlflow_run_id"] = _seg_model_run(root, label["model_name"], label["model_version"], seg_records)
        pid = patch_of.get(image.image_id)
        record: dict[str, Any] = {
            "id": ref.record_id, "kind": ref.kind, "origin": image.origin, "image_id": image.image_id,
            "caption": caption, "image": synth, "labels": label,
            "patch": _patch_record(patches[pid]) if pid else None,
        }
        if instance is not None:
            assets = []
            if caption is not None:
                assets += [(f"{image.origin}_captions", image.partition), (f"{image.origin}_compositions", image.partition)]
            if image.origin != REAL:
                assets.append((f"{image.origin}_images", image.partition))
            if label is not None:
                assets.append(("uncond_labels", image.partition))
            if pid:
                assets.append(("real_patches", parse_patch_id(pid).tile))
            record["dagster_runs"] = _latest_runs(instance, assets, run_cache)
        out.append(record)
    return out


def trace(root: Path, record_id: str, instance: DagsterInstance | None = None) -> dict[str, Any]:
    """Lineage of one caption, image or patch id (see trace_many)."""
    return trace_many(root, [record_id], instance)[0]


def format_trace(record: dict[str, Any]) -> str:
    """The chain as indented text, caption first, source tiles last."""
    lines: list[str] = []
    pad = ""
    caption, image, label, patch = record["caption"], record["image"], record["labels"], record["patch"]
    if caption is not None:
        lines += [f"caption {caption['caption_id']}  [{caption['origin']}, {caption['mode']} #{caption['caption_index']}]",
                  f"  text:       {caption['text']!r}",
                  f"  captioner:  {caption['backend']} / {caption['model']}, prompt {caption['prompt_hash']}, "
                  f"seed {caption['seed']}",
                  f"  manifest:   {caption['manifest']}"]
        pad = "  "
    if image is not None:
        gen = image["generator"]
        lines += [f"{pad}image {image['image_id']}  [{image['origin']}, shard {image['shard']}, #{image['index']}]",
                  f"{pad}  generator:  {gen['model_name']} v{gen['model_version']} (MLflow run {gen['mlflow_run_id']})",
                  f"{pad}  sampling:   seed {image['seed']}, truncation psi {image['truncation_psi']}, variant "
                  f"{image['variant']}, batch of {image['batch_size']} from index {image['batch_start']}",
                  f"{pad}  produced:   {image['device']}/{image['precision']}, {image['resolution']} px, "
                  f"generator code {image['generator_code']}, Dagster run {image['dagster_run_id']}",
                  f"{pad}  file:       {image['image_path']} (sha256 {image['content_sha256']})"]
        if image.get("mask_path"):
            lines.append(f"{pad}  mask:       {image['mask_path']}")
        if label is not None:
            run = f" (MLflow run {label['mlflow_run_id']})" if label["mlflow_run_id"] else ""
            lines.append(f"{pad}  mask:       {label['mask_path']} by labeler {label['model_name']} "
                         f"v{label['model_version']}{run}")
        elif image["origin"] == UNCOND:
            lines.append(f"{pad}  mask:       not labelled yet")
        lines.append(f"{pad}  manifest:   {image['manifest']}")
        pad += "  "
    if patch is not None:
        w, ww, b = patch["window"], patch["wc_window"], patch["bounds"]
        role = "  (conditioning mask)" if image is not None else ""
        lines += [f"{pad}patch {patch['patch_id']}  [row {patch['row']}, col {patch['col']}]{role}",
                  f"{pad}  S2 tile:    {patch['s2_tile']}  x {w['x_off']}, y {w['y_off']}, {w['width']}x{w['height']} px  "
                  f"{patch['s2_uri']}",
                  f"{pad}  WorldCover: {patch['wc_tile']}  x {ww['x_off']}, y {ww['y_off']}, "
                  f"{ww['width']}x{ww['height']} px  {patch['wc_uri']}",
                  f"{pad}  bounds:     lon {b['lon_min']:.6f}..{b['lon_max']:.6f}, lat {b['lat_min']:.6f}..{b['lat_max']:.6f}",
                  f"{pad}  files:      {patch['image_path']}, {patch['mask_path']} ({patch['normalization']})",
                  f"{pad}  manifest:   {patch['manifest']}"]
    if record.get("dagster_runs"):
        lines.append("Dagster runs:")
        lines += [f"  {label_}: {run or 'never materialized'}" for label_, run in record["dagster_runs"].items()]
    return "\n".join(lines)


# Completeness audit over the whole dataset (the caption_eval asset check).

def _glob(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _lazy(files: list[Path], kind: _Kind, columns: Sequence[str], schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    if not files:
        return pl.LazyFrame(schema=schema)
    for path in files:  # footers only: a corrupt file is named here, before the joins
        try:
            have = pl.read_parquet_schema(path)
        except Exception as err:
            raise LineageError(f"{kind.what} manifest {path} is unreadable (corrupt or not Parquet): {err}") from err
        lacking = [c for c in columns if c not in have]
        if lacking:
            raise LineageError(f"{kind.what} manifest {path} lacks column(s) {', '.join(lacking)}")
    return pl.scan_parquet(files, glob=False, extra_columns="ignore").select(columns).cast(schema)


def registered_versions(client: Any, names: Iterable[str]) -> dict[str, set[str]]:
    """Registered versions per model name, from an MlflowClient (or anything with search_model_versions)."""
    out = {}
    for name in names:
        escaped = name.replace("'", "\\'")
        out[name] = {str(v.version) for v in client.search_model_versions(f"name='{escaped}'")}
    return out


def broken_chains(root: Path, client: Any, examples: int = 5) -> dict[str, Any]:
    """Every caption must resolve to its image and, through a real patch (its own, or the conditioning
    mask of a conditional image), to a source tile with S2 and WorldCover URIs; unconditional images
    come from noise, so their chain ends at the generator. Every synthetic image must name a generator
    version registered in MLflow, and every labeler mask a registered segmentation version.

    Returns counts of what was checked and, per kind of break, its count and the first examples."""
    root = Path(root)
    s = pl.String
    patches = _lazy(_glob(root, "patches/*/manifest.parquet"), _PATCHES, ["patch_id", "s2_tile", "s2_uri", "wc_uri"],
                    {"patch_id": s, "s2_tile": s, "s2_uri": s, "wc_uri": s})
    synthetic = _lazy(_glob(root, "synthetic/*/*/manifest.parquet"), _IMAGES,
                      ["image_id", "origin", "model_name", "model_version", "conditioning_patch_id"],
                      {"image_id": s, "origin": s, "model_name": s, "model_version": s, "conditioning_patch_id": s})
    labels = _lazy(_glob(root, "labels/uncond_labels/*/manifest.parquet"), _LABELS,
                   ["image_id", "model_name", "model_version"], {"image_id": s, "model_name": s, "model_version": s})
    captions = _lazy(_glob(root, "captions/*/*/captions.parquet"), _CAPTIONS, ["caption_id", "image_id"],
                     {"caption_id": s, "image_id": s})

    sourced = patches.filter(pl.col("s2_tile").is_not_null() & pl.col("s2_uri").is_not_null()
                             & pl.col("wc_uri").is_not_null()).select(pl.col("patch_id").alias("source"),
                                                                       pl.lit(True).alias("has_tile"))
    known = pl.concat([
        patches.select(pl.col("patch_id").alias("image_id"), pl.lit(REAL).alias("image_origin"),
                       pl.col("patch_id").alias("source")),
        synthetic.select("image_id", pl.col("origin").alias("image_origin"),
                         pl.col("conditioning_patch_id").alias("source")),
    ]).unique("image_id", keep="first").join(sourced, on="source", how="left")
    chains = captions.join(known, on="image_id", how="left")
    caption_problems = (chains.with_columns(
        pl.when(pl.col("image_origin").is_null()).then(pl.lit("caption_without_image"))
        .when((pl.col("image_origin") != UNCOND) & pl.col("has_tile").is_null()).then(pl.lit("caption_without_tile"))
        .otherwise(None).alias("problem"))
        .filter(pl.col("problem").is_not_null())
        .select("problem", pl.format("{} (image {})", "caption_id", "image_id").alias("example"),
                pl.col("caption_id").alias("order")))

    models = pl.concat([synthetic.select("model_name", "model_version"), labels.select("model_name", "model_version")]) \
        .unique().collect()
    names = sorted(n for n in models["model_name"].drop_nulls().unique().to_list())
    versions = registered_versions(client, names) if names else {}
    registered = pl.DataFrame([(n, v) for n, vs in versions.items() for v in vs],
                              schema={"model_name": s, "model_version": s}, orient="row").lazy() \
        .with_columns(pl.lit(True).alias("registered"))

    def unregistered(frame: pl.LazyFrame, problem: str, what: str) -> pl.LazyFrame:
        return (frame.join(registered, on=["model_name", "model_version"], how="left", nulls_equal=False)
                .filter(pl.col("registered").is_null())
                .select(pl.lit(problem).alias("problem"),
                        pl.format("{} ({} {} v{})", "image_id", pl.lit(what), pl.col("model_name").fill_null("?"),
                                  pl.col("model_version").fill_null("?")).alias("example"),
                        pl.col("image_id").alias("order")))

    all_problems = pl.concat([caption_problems, unregistered(synthetic, "image_without_model", "generator"),
                              unregistered(labels, "mask_without_model", "labeler")])
    summary = (all_problems.sort("order").group_by("problem", maintain_order=True)
               .agg(pl.len().alias("count"), pl.col("example").head(examples).alias("examples"))
               .collect(engine="streaming"))
    counts = pl.collect_all([captions.select(pl.len()), synthetic.select(pl.len()), labels.select(pl.len())])
    broken = {kind: {"count": 0, "examples": []} for kind in
              ("caption_without_image", "caption_without_tile", "image_without_model", "mask_without_model")}
    for row in summary.iter_rows(named=True):
        broken[row["problem"]] = {"count": int(row["count"]), "examples": list(row["examples"])}
    return {"captions": int(counts[0].item()), "synthetic_images": int(counts[1].item()),
            "labelled_images": int(counts[2].item()), "broken": broken,
            "broken_total": sum(b["count"] for b in broken.values())}
