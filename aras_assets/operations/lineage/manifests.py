"""The manifests lineage reads: for each kind of record, its id column, the columns read, where the
manifest of a partition lives and which asset writes it; and the filtered scan that reads them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from aras_assets import layout
from aras_assets.generation.manifest import SYNTHETIC_SCHEMA
from aras_assets.operations.lineage.ids import LineageError

PATCH_COLUMNS = ("patch_id", "s2_tile", "wc_tile", "row", "col", "x_off", "y_off", "width", "height",
                 "wc_x_off", "wc_y_off", "lon_min", "lat_min", "lon_max", "lat_max", "s2_uri", "wc_uri",
                 "image_path", "mask_path", "image_sha256", "mask_sha256", "normalization")
# Patch manifests written before the window in the WorldCover file's own pixels was recorded lack it.
PATCH_OPTIONAL = {"wc_file_x_off": pl.Int32, "wc_file_y_off": pl.Int32}
IMAGE_COLUMNS = tuple(SYNTHETIC_SCHEMA)
LABEL_COLUMNS = ("image_id", "mask_path", "mask_sha256", "model_name", "model_version")
CAPTION_COLUMNS = ("caption_id", "image_id", "origin", "mode", "caption_index", "backend", "model", "prompt_hash",
                   "seed", "text")

_FILE_COL = "_manifest_file"
_MAX_LISTED = 5

# Ids wanted from each partition's manifest: (origin, partition) -> ids.
Wanted = dict[tuple[str, str], set[str]]
Rows = dict[str, dict[str, Any]]  # id -> its manifest row


def asset_partition(asset: str, partition: str) -> str:
    return f"{asset}[{partition}]"


@dataclass(frozen=True)
class Kind:
    what: str  # how messages name a record of this kind
    key: str  # its id column
    columns: tuple[str, ...]  # the columns lineage reads
    product: str  # the asset <origin>_<product> writes the manifests
    manifest: Callable[[str, str], Path]  # (origin, partition) -> manifest, relative to the data root
    optional: Mapping[str, pl.DataType | type[pl.DataType]] = field(default_factory=dict)  # null where absent

    def asset(self, origin: str) -> str:
        return f"{origin}_{self.product}"

    def producer(self, origin: str, partition: str) -> str:
        """The asset partition that writes a manifest, for "materialize ... first" hints."""
        return asset_partition(self.asset(origin), partition)


def _label_manifest(origin: str, shard: str) -> Path:
    return layout.label_manifest(LABELS.asset(origin), shard)  # a labeler asset's folder bears its name


def _patch_manifest(_origin: str, tile: str) -> Path:
    return layout.patch_manifest(tile)


CAPTIONS = Kind("caption", "caption_id", CAPTION_COLUMNS, "captions", layout.captions_file)
IMAGES = Kind("image", "image_id", IMAGE_COLUMNS, "images", layout.synthetic_manifest)
LABELS = Kind("label", "image_id", LABEL_COLUMNS, "labels", _label_manifest)
PATCHES = Kind("patch", "patch_id", PATCH_COLUMNS, "patches", _patch_manifest, PATCH_OPTIONAL)


def raise_problems(problems: list[str]) -> None:
    """One LineageError naming the first few problems, if there are any."""
    if not problems:
        return
    if len(problems) == 1:
        raise LineageError(problems[0])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise LineageError(f"{len(problems)} lineage problems: " + "; ".join(problems[:_MAX_LISTED]) + more)


def schema_error(path: Path, kind: Kind, columns: Sequence[str]) -> LineageError | None:
    """What rules a manifest out from its footer alone: unreadable, or lacking a column read."""
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as err:  # garbage bytes, a truncated file, a folder
        error = LineageError(f"{kind.what} manifest {path} is unreadable (corrupt or not Parquet): {err}")
        error.__cause__ = err
        return error
    lacking = [c for c in columns if c not in schema]
    if lacking:
        return LineageError(f"{kind.what} manifest {path} lacks column(s) {', '.join(lacking)}")
    return None


def _unreadable(files: Sequence[Path], kind: Kind, exc: Exception) -> LineageError:
    """Name the manifest a failed multi-file scan tripped on (polars' message may not)."""
    for path in files:
        if error := schema_error(path, kind, kind.columns):
            return error
    for path in files:  # a valid footer over damaged pages: only reading the data tells
        try:
            pl.scan_parquet(path).select(kind.columns).collect()
        except Exception as err:
            return LineageError(f"{kind.what} manifest {path} is unreadable (corrupt data): {err}")
    return LineageError(f"cannot read {len(files)} {kind.what} manifest(s) (e.g. {files[0]}): {exc}")


def _by_optional_columns(files: list[Path], kind: Kind) -> list[tuple[bool, list[Path]]]:
    """The files that hold the kind's optional columns, and those that do not (read from footers)."""
    if not kind.optional:
        return [(True, files)]
    newer = [p for p in files if set(kind.optional) <= set(pl.read_parquet_schema(p))]
    older = [p for p in files if p not in newer]
    return [(present, group) for present, group in ((True, newer), (False, older)) if group]


def _select(files: list[Path], kind: Kind, optional_present: bool) -> pl.LazyFrame:
    frame = pl.scan_parquet(files, glob=False, extra_columns="ignore", include_file_paths=_FILE_COL)
    optional = [pl.col(c).cast(t) if optional_present else pl.lit(None, dtype=t).alias(c)
                for c, t in kind.optional.items()]
    return frame.select(*kind.columns, *optional, _FILE_COL)


def scan(root: Path, kind: Kind, wanted: Wanted) -> Rows:
    """Rows of `kind` for the ids wanted from each partition's manifest, keyed by id.
    A row only counts when it sits in the manifest its id points at."""
    if not wanted:
        return {}
    manifests = {key: kind.manifest(*key) for key in wanted}
    files = [root / rel for rel in sorted(manifests.values())]
    ids = sorted(set().union(*wanted.values()))
    try:
        frame = pl.concat([_select(group, kind, present) for present, group in _by_optional_columns(files, kind)],
                          how="vertical").filter(pl.col(kind.key).is_in(ids)).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _unreadable(files, kind, exc) from exc
    expected = {record_id: str(root / manifests[key]) for key, members in wanted.items() for record_id in members}
    rows: Rows = {}
    for row in frame.iter_rows(named=True):
        record_id = row[kind.key]
        source = row.pop(_FILE_COL)
        if expected.get(record_id) == source and record_id not in rows:
            row["manifest"] = str(Path(source).relative_to(root))
            rows[record_id] = row
    return rows
