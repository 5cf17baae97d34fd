"""Train/val/test splits, deterministic from a seed and stable as the dataset grows.

Blocked (default): contiguous blocks of `block` x `block` patches of one tile share a split,
which limits spatial leakage between training and test. Random: every patch on its own.
Each block's split comes from a hash of the seed and the block id, so adding tiles never
moves the patches already assigned."""

from __future__ import annotations

import hashlib

import polars as pl

from aras_assets.errors import BadInputError

SPLITS = ("train", "val", "test")


def unit_hash(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(patches: pl.DataFrame, method: str = "blocked", fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  block: int = 8, seed: int = 42) -> pl.DataFrame:
    """patch_id, s2_tile, row, col in; patch_id, s2_tile, block_id, split out (sorted by patch_id)."""
    if patches.is_empty():
        raise BadInputError("no patches to split: materialize real_patches for at least one tile first")
    if patches["patch_id"].n_unique() != patches.height:
        raise BadInputError("patch ids are not unique; cannot split")
    if method == "blocked":
        block_id = pl.format("{}_b{}_{}", "s2_tile", (pl.col("row") // block).cast(pl.String),
                             (pl.col("col") // block).cast(pl.String))
    elif method == "random":
        block_id = pl.col("patch_id")
    else:
        raise BadInputError(f"unknown split method {method!r}")
    frame = patches.select("patch_id", "s2_tile", "row", "col").with_columns(block_id.alias("block_id"))
    blocks = frame.group_by("block_id").len().sort("block_id")
    u = [unit_hash(seed, b) for b in blocks["block_id"].to_list()]
    cut1, cut2 = fractions[0], fractions[0] + fractions[1]
    split = ["train" if x < cut1 else "val" if x < cut2 else "test" for x in u]
    split = _fill_empty(split, u, fractions, (cut1, cut2))
    blocks = blocks.with_columns(pl.Series("split", split, dtype=pl.String))
    return (frame.join(blocks.select("block_id", "split"), on="block_id")
            .select("patch_id", "s2_tile", "block_id", "split").sort("patch_id"))


def _fill_empty(split: list[str], u: list[float], fractions: tuple[float, float, float],
                cuts: tuple[float, float]) -> list[str]:
    """With few blocks a wanted split can come out empty; give it the block whose hash lies
    nearest its interval, taken from a split that has blocks to spare."""
    split = list(split)
    bounds = {"train": (0.0, cuts[0]), "val": (cuts[0], cuts[1]), "test": (cuts[1], 1.0)}
    for name, frac in zip(SPLITS, fractions, strict=True):
        if frac <= 0 or name in split or len(split) < sum(f > 0 for f in fractions):
            continue
        lo, hi = bounds[name]
        donors = [i for i, s in enumerate(split) if split.count(s) > 1]
        if donors:
            best = min(donors, key=lambda i: max(lo - u[i], u[i] - hi, 0.0))
            split[best] = name
    return split


def splits_version(splits: pl.DataFrame) -> str:
    """A content hash of patch -> split: the data version models trained on these splits record."""
    digest = hashlib.blake2b(digest_size=12)
    for pid, split in splits.select("patch_id", "split").sort("patch_id").iter_rows():
        digest.update(f"{pid}={split};".encode())
    return digest.hexdigest()
