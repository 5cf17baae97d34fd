"""Resumable partitions: one Parquet part per finished batch under `<folder>/parts/`, each
written atomically, so a crash loses at most the batch in flight; a re-run asks which keys are
done and makes only the rest; at the end the parts are combined into one file in a given
order, each row once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from aras_assets.layout import PARTS
from resources.storage import read_parquet_checked, write_parquet_atomic

ORDER = "_parts_order"  # a scratch column while combining; no schema has it


class PartsWriter:
    """The parts of one partition, in `folder/parts`; every part has the columns of `schema`
    (a part written before a column existed reads it as null)."""

    def __init__(self, folder: Path, schema: Mapping[str, pl.DataType | type[pl.DataType]]) -> None:
        self.folder = folder
        self.schema = dict(schema)

    @property
    def parts_dir(self) -> Path:
        return self.folder / PARTS

    def path(self, name: str) -> Path:
        return self.parts_dir / f"{name}.parquet"

    def files(self) -> list[Path]:
        # sorted, so "first" among duplicated rows means the same part on every read
        return sorted(self.parts_dir.glob("*.parquet"))

    def read(self, unique: str | None = None) -> pl.DataFrame:
        """Every row of every part (one row per value of `unique` when given)."""
        files = self.files()
        if not files:
            return pl.DataFrame(schema=self.schema)
        frame = pl.concat([read_parquet_checked(p) for p in files], how="diagonal_relaxed")
        frame = frame.match_to_schema(self.schema, missing_columns="insert")
        return frame.unique(unique, keep="first") if unique else frame

    def done(self, key_column: str, where: pl.Expr | None = None) -> set[str]:
        """The keys some part already holds (in rows matching `where`, when given)."""
        frame = self.read()
        if where is not None:
            frame = frame.filter(where)
        return set(frame[key_column].unique().to_list())

    def write(self, frame: pl.DataFrame, name: str) -> Path:
        """One finished batch as part `name` (readers never see half a part)."""
        path = self.path(name)
        write_parquet_atomic(frame, path)
        return path

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def combine(self, order: Sequence[str] | pl.Series, key_column: str, out_file: Path, unique: str | None = None,
                then_by: Sequence[str | pl.Expr] = (), where: pl.Expr | None = None) -> pl.DataFrame:
        """The parts' rows whose `key_column` is in `order` (and that match `where`), sorted by
        its position there (then by `then_by`), one row per `unique` value (default: per key),
        written to `out_file`."""
        frame = self.read()
        if where is not None:
            frame = frame.filter(where)
        frame = frame.unique(unique or key_column, keep="first")
        rank = pl.DataFrame({key_column: pl.Series(list(order), dtype=frame.schema[key_column])}).with_row_index(ORDER)
        combined = frame.join(rank, on=key_column, how="inner").sort([ORDER, *then_by]).drop(ORDER)
        write_parquet_atomic(combined, out_file)
        return combined
