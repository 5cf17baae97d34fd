"""Tracing: from a caption, image or patch id back to the generator, the source patch, its S2 and
WorldCover tiles, pixel windows, bounds and source URIs.

Every id names the partition that holds its record, so a lookup reads only the manifests of those
partitions: one lazy, filtered Parquet scan per manifest kind, never a whole manifest in memory.
trace_many follows the chains of all its ids one link at a time (captions, images, labels, patches)
and stops at the first link with a problem, naming every id it affects."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from aras_assets import layout
from aras_assets.ids import parse_patch_id
from aras_assets.layout import COND, REAL, UNCOND
from aras_assets.operations.lineage.ids import ImageRef, LineageError, RecordRef, parse_record_id
from aras_assets.operations.lineage.manifests import (
    CAPTIONS,
    IMAGES,
    LABELS,
    PATCHES,
    Kind,
    Rows,
    Wanted,
    asset_partition,
    raise_problems,
    scan,
)

if TYPE_CHECKING:
    from dagster import DagsterInstance

SEG_MODEL_PREFIX = "aras-segmentation-"  # registry.MODEL_PREFIX, without importing torch for it


def _lookup(root: Path, kind: Kind, wanted: Wanted, via: dict[str, str]) -> Rows:
    """Rows of the wanted ids; LineageError naming every id whose manifest is missing or lacks it.
    `via` says, per id, which record led to it."""
    problems: list[str] = []
    present: Wanted = {}
    for (origin, partition), ids in wanted.items():
        path = root / kind.manifest(origin, partition)
        if path.is_file():
            present[origin, partition] = ids
        else:
            problems += [f"{kind.what} {record_id}{via.get(record_id, '')}: manifest {path} does not exist "
                         f"(materialize {kind.producer(origin, partition)} first)" for record_id in sorted(ids)]
    rows = scan(root, kind, present)
    for key, ids in present.items():
        problems += [f"{kind.what} {record_id}{via.get(record_id, '')} not found in {root / kind.manifest(*key)}"
                     for record_id in sorted(ids) if record_id not in rows]
    raise_problems(problems)
    return rows


# The steps of trace_many, in chain order.

def _parse_all(ids: Sequence[str]) -> list[RecordRef]:
    """The record each id names; one LineageError for all malformed ids."""
    problems: list[str] = []
    refs = []
    for value in ids:
        try:
            refs.append(parse_record_id(value))
        except LineageError as exc:
            problems.append(str(exc))
    raise_problems(problems)
    return refs


def _find_captions(root: Path, refs: Iterable[RecordRef]) -> Rows:
    wanted: Wanted = defaultdict(set)
    for ref in refs:
        if ref.kind == "caption":
            wanted[ref.image.origin, ref.image.partition].add(ref.record_id)
    return _lookup(root, CAPTIONS, wanted, {})


def _check_caption_images(root: Path, refs: Iterable[RecordRef], captions: Rows) -> None:
    """A caption's row must name the image its id implies, or the chain would follow the wrong image."""
    problems = []
    for ref in refs:
        if ref.kind != "caption":
            continue
        named, image_id = captions[ref.record_id]["image_id"], ref.image.image_id
        if named != image_id:
            problems.append(f"caption {ref.record_id} names image {named!r}, not the {image_id} its id implies "
                            f"({root / captions[ref.record_id]['manifest']})")
    raise_problems(problems)


def _captions_leading_to(refs: Iterable[RecordRef]) -> dict[str, str]:
    """For messages about an image: the first caption that led to it."""
    via: dict[str, str] = {}
    for ref in refs:
        if ref.kind == "caption":
            via.setdefault(ref.image.image_id, f" (of caption {ref.record_id})")
    return via


def _find_synthetic(root: Path, images: Iterable[ImageRef], via: dict[str, str]) -> Rows:
    wanted: Wanted = defaultdict(set)
    for image in images:
        if image.origin != REAL:
            wanted[image.origin, image.partition].add(image.image_id)
    return _lookup(root, IMAGES, wanted, via)


def _find_labels(root: Path, images: Iterable[ImageRef]) -> Rows:
    """The labeler's masks of unconditional images, where labelled (not yet labelled is not an error)."""
    wanted: Wanted = defaultdict(set)
    for image in images:
        if image.origin == UNCOND:
            wanted[image.origin, image.partition].add(image.image_id)
    return scan(root, LABELS, {key: ids for key, ids in wanted.items() if (root / LABELS.manifest(*key)).is_file()})


def _source_patches(root: Path, images: Iterable[ImageRef], synthetic: Rows, via: dict[str, str]) -> dict[str, str]:
    """Image id -> its source patch: a real image's own, a conditional image's conditioning patch
    (noted in `via` for messages about that patch). Unconditional images have none."""
    problems = []
    patch_of: dict[str, str] = {}
    for image in images:
        if image.origin == REAL:
            patch_of[image.image_id] = image.image_id
        elif image.origin == COND:
            cond_patch = synthetic[image.image_id]["conditioning_patch_id"]
            try:
                parse_patch_id(cond_patch or "")
            except ValueError:
                problems.append(f"image {image.image_id} has no valid conditioning patch id ({cond_patch!r}) in "
                                f"{root / IMAGES.manifest(COND, image.partition)}")
                continue
            patch_of[image.image_id] = cond_patch
            via.setdefault(cond_patch, f" (conditioning {image.image_id}{via.get(image.image_id, '')})")
    raise_problems(problems)
    return patch_of


def _find_patches(root: Path, patch_ids: Iterable[str], via: dict[str, str]) -> Rows:
    """Patch rows, from the manifest of the S2 tile each patch id names. A patch that was cut
    and dropped is named with the reason its tile's rejected list gives, not as unknown."""
    wanted: Wanted = defaultdict(set)
    for pid in patch_ids:
        wanted[REAL, parse_patch_id(pid).tile].add(pid)
    _explain_rejected(root, wanted, via)
    return _lookup(root, PATCHES, wanted, via)


def _explain_rejected(root: Path, wanted: Wanted, via: dict[str, str]) -> None:
    problems = []
    for (_, tile), ids in wanted.items():
        path = root / layout.rejected_patches(tile)
        if not path.is_file():
            continue
        rejected = pl.scan_parquet(path).filter(pl.col("patch_id").is_in(sorted(ids))).collect()
        problems += [f"patch {pid}{via.get(pid, '')} was left out when tile {tile} was cut: {reason} "
                     f"(see {path})" for pid, reason in rejected.select("patch_id", "reason").iter_rows()]
    raise_problems(problems)


@dataclass(frozen=True)
class _Found:
    """What the lookups found: manifest rows by id, and each image's source patch."""

    captions: Rows
    synthetic: Rows
    labels: Rows
    patches: Rows
    patch_of: dict[str, str]


# Building a traced record from the rows found.

def _patch_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "patch_id": row["patch_id"], "s2_tile": row["s2_tile"], "wc_tile": row["wc_tile"],
        "row": row["row"], "col": row["col"],
        "window": {k: row[k] for k in ("x_off", "y_off", "width", "height")},
        "wc_window": {"x_off": row["wc_x_off"], "y_off": row["wc_y_off"], "width": row["width"], "height": row["height"]},
        # where reading wc_uri finds the mask (None in manifests written before it was recorded)
        "wc_file_window": None if row["wc_file_x_off"] is None else {
            "x_off": row["wc_file_x_off"], "y_off": row["wc_file_y_off"], "width": row["width"], "height": row["height"]},
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
        path = root / layout.seg_model_dir(arch) / layout.MODEL_RECORD
        try:
            cache[arch] = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            cache[arch] = None
    record = cache[arch]
    if record and str(record.get("model_version")) == str(version):
        return record.get("mlflow_run_id")
    return None


def _label_record(root: Path, row: dict[str, Any] | None, seg_records: dict[str, dict | None]) -> dict[str, Any] | None:
    if row is None:
        return None
    label = dict(row)
    label.pop("image_id")
    label["mlflow_run_id"] = _seg_model_run(root, label["model_name"], label["model_version"], seg_records)
    return label


def _record(root: Path, ref: RecordRef, found: _Found, seg_records: dict[str, dict | None]) -> dict[str, Any]:
    image = ref.image
    pid = found.patch_of.get(image.image_id)
    return {
        "id": ref.record_id, "kind": ref.kind, "origin": image.origin, "image_id": image.image_id,
        "caption": dict(found.captions[ref.record_id]) if ref.kind == "caption" else None,
        "image": _image_record(dict(found.synthetic[image.image_id])) if image.origin != REAL else None,
        "labels": _label_record(root, found.labels.get(image.image_id), seg_records),
        "patch": _patch_record(found.patches[pid]) if pid else None,
    }


def _chain_assets(image: ImageRef, record: dict[str, Any]) -> list[tuple[str, str]]:
    """The (asset, partition) pairs a traced record passes through, caption first."""
    assets = []
    if record["caption"] is not None:
        assets += [(CAPTIONS.asset(image.origin), image.partition), (f"{image.origin}_compositions", image.partition)]
    if image.origin != REAL:
        assets.append((IMAGES.asset(image.origin), image.partition))
    if record["labels"] is not None:
        assets.append((LABELS.asset(UNCOND), image.partition))
    if record["patch"] is not None:
        assets.append((PATCHES.asset(REAL), parse_patch_id(record["patch"]["patch_id"]).tile))
    return assets


def _latest_runs(instance: DagsterInstance, labels: Iterable[tuple[str, str]], cache: dict[str, str | None]) -> dict:
    """Run id of the latest materialization of each asset partition (None when never materialized)."""
    import dagster as dg

    out = {}
    for asset, partition in labels:
        label = asset_partition(asset, partition)
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
    refs = _parse_all(ids)
    captions = _find_captions(root, refs)
    _check_caption_images(root, refs, captions)
    images = {ref.image.image_id: ref.image for ref in refs}
    via = _captions_leading_to(refs)
    synthetic = _find_synthetic(root, images.values(), via)
    labels = _find_labels(root, images.values())
    patch_of = _source_patches(root, images.values(), synthetic, via)
    patches = _find_patches(root, set(patch_of.values()), via)
    found = _Found(captions, synthetic, labels, patches, patch_of)

    seg_records: dict[str, dict | None] = {}  # model records read once per batch
    run_cache: dict[str, str | None] = {}
    out = []
    for ref in refs:
        record = _record(root, ref, found, seg_records)
        if instance is not None:
            record["dagster_runs"] = _latest_runs(instance, _chain_assets(ref.image, record), run_cache)
        out.append(record)
    return out


def trace_each(root: Path, ids: Sequence[str], instance: DagsterInstance | None = None) -> list[dict[str, Any] | LineageError]:
    """Like trace_many, but one bad id costs only itself: each id gets its record or the error that
    names it. A failing batch is halved until the bad ids stand alone, so one typo among 10,000
    ids costs about two extra lookups per halving, not 10,000 single lookups."""
    try:
        return list(trace_many(root, ids, instance))
    except LineageError as exc:
        if len(ids) == 1:
            return [exc]
    half = len(ids) // 2
    return trace_each(root, ids[:half], instance) + trace_each(root, ids[half:], instance)


def trace(root: Path, record_id: str, instance: DagsterInstance | None = None) -> dict[str, Any]:
    """Lineage of one caption, image or patch id (see trace_many)."""
    return trace_many(root, [record_id], instance)[0]
