"""Rebuild one synthetic image byte for byte from its manifest row: the same registered
generator version, seeds of its whole batch, truncation psi, device and precision."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from aras_assets.generation.data import GenerationError
from aras_assets.generation.sampling import (
    Partition,
    generate_cond,
    generate_uncond,
    generator_code,
    png_bytes,
    read_parts,
    runtime_for,
)
from aras_assets.generation.training import COND, load_generator
from aras_assets.ids import parse_synthetic_id
from aras_assets.layout import MANIFEST
from aras_assets.mlflow_runs import ModelVersionRef, download_checkpoint
from aras_assets.segmentation.data import read_mask
from resources.storage import contained, read_parquet_checked


@dataclass(frozen=True)
class Regenerated:
    image_id: str
    data: bytes
    expected_sha256: str
    stored_path: Path
    recorded_code: str | None  # the generator code that made the image (None: not recorded)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def identical(self) -> bool:
        return self.sha256 == self.expected_sha256

    @property
    def current_code(self) -> str:
        return generator_code()

    @property
    def code_changed(self) -> bool:
        return self.recorded_code is not None and self.recorded_code != self.current_code


def manifest_row(root: Path, image_id: str) -> tuple[dict, pl.DataFrame]:
    """The image's row and the rows of the batch it was generated in (by index)."""
    try:
        ref = parse_synthetic_id(image_id)
    except ValueError as exc:
        raise GenerationError(str(exc)) from exc
    partition = Partition(root, f"synthetic/{ref.origin}/{ref.shard}")
    path = partition.folder / MANIFEST
    rows = read_parquet_checked(path) if path.exists() else read_parts(partition)
    if rows.is_empty():
        raise GenerationError(f"no manifest for {image_id}: {path} is missing; materialize "
                              f"{ref.origin}_images[{ref.shard}] first")
    row = rows.filter(pl.col("image_id") == image_id)
    if row.is_empty():
        raise GenerationError(f"{image_id} is not in {path}")
    record = row.row(0, named=True)
    batch = rows.filter(pl.col("batch_start") == record["batch_start"]).sort("index")
    if batch.height != record["batch_size"]:
        raise GenerationError(f"{path} holds {batch.height} of the {record['batch_size']} images of {image_id}'s batch; "
                              "its neighbours are needed to replay it")
    return record, batch


def regenerate(root: Path, tracking_uri: str, image_id: str) -> Regenerated:
    record, batch = manifest_row(root, image_id)
    # Checked before anything is fetched: no manifest row may make this read outside the root.
    stored = contained(root, record["image_path"], image_id)
    mask_files = [contained(root, p, f"{image_id}'s batch image {i}")
                  for i, p in batch.select("image_id", "mask_path").iter_rows()] if record["origin"] == COND else []
    ref = ModelVersionRef(record["model_name"], record["model_version"], record["mlflow_run_id"])
    runtime = runtime_for(record["device"], record["precision"])
    with tempfile.TemporaryDirectory() as scratch:
        try:
            checkpoint = download_checkpoint(tracking_uri, ref, Path(scratch))
        except Exception as exc:
            raise GenerationError(f"{ref} (which made {image_id}) cannot be fetched from {tracking_uri}: {exc}") from exc
        generator, _ = load_generator(checkpoint, record["origin"])
    generator = runtime.prepare(generator)
    seeds = batch["seed"].to_list()
    if record["origin"] == COND:
        masks = np.stack([read_mask(p) for p in mask_files])
        images = generate_cond(generator, masks, seeds, runtime)
    else:
        images = generate_uncond(generator, seeds, float(record["truncation_psi"]), runtime)
    position = batch["image_id"].to_list().index(image_id)
    return Regenerated(image_id, png_bytes(images[position]), record["content_sha256"], stored,
                       record.get("generator_code"))
