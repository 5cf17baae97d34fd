"""The synthetic-image manifest: its columns and file names. Kept free of torch so the lineage
audit and other readers can use it cheaply."""

import polars as pl

SYNTHETIC_SCHEMA = {
    "image_id": pl.String, "origin": pl.String, "shard": pl.String, "index": pl.Int32, "seed": pl.Int64,
    "truncation_psi": pl.Float64, "model_name": pl.String, "model_version": pl.String, "mlflow_run_id": pl.String,
    "conditioning_patch_id": pl.String, "variant": pl.Int32, "batch_start": pl.Int32, "batch_size": pl.Int32,
    "device": pl.String, "precision": pl.String, "resolution": pl.Int32, "image_path": pl.String,
    "mask_path": pl.String, "content_sha256": pl.String, "dagster_run_id": pl.String,
    # digest of the code that computes the pixels (sampling.generator_code): a byte-identical
    # replay needs the same model, seeds, batch, device, precision and this code
    "generator_code": pl.String,
}
