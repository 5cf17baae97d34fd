"""Judging captions: redundancy (how many are repeats) and caption-mask consistency (which
classes and percentages a caption names against the mask's composition)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from aras_assets.landcover import CLASS_NAMES

# ARAS400k paper Table 2 (captions, unique, redundancy %) for its subsets, beside ours.
PAPER_REDUNDANCY = {"overall": 12.85}
PAPER_TABLE2 = {
    ("real", "text"): 28.27, ("real", "vision"): (0.26 + 8.95) / 2, ("real", "hybrid"): (0.13 + 2.42) / 2,
    ("synthetic", "text"): 46.95, ("synthetic", "vision"): (1.03 + 10.39) / 2, ("synthetic", "hybrid"): (2.70 + 6.42) / 2,
}

# Words that name each class in a caption (the offline captioner's nouns are among them).
CLASS_WORDS = {
    "tree": ("forest", "forests", "tree", "trees", "woodland", "wooded", "woods"),
    "shrub": ("shrub", "shrubs", "shrubland", "scrub", "bush", "bushes", "bushland"),
    "grass": ("grass", "grassland", "grasslands", "meadow", "meadows", "pasture", "pastures"),
    "crop": ("crop", "crops", "cropland", "farmland", "fields", "agricultural", "farms", "cultivated"),
    "built-up": ("built-up", "buildings", "settlement", "settlements", "urban", "town", "village", "houses", "city"),
    "barren": ("barren", "bare", "rock", "rocky", "desert", "sand"),
    "water": ("water", "river", "lake", "sea", "reservoir", "stream", "pond"),
}
WORD_CLASS = {w: c for c, words in CLASS_WORDS.items() for w in words}
WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)?|\d+(?:\.\d+)?%")
PRESENT_MIN = 0.5  # percent: a class with less is absent as far as a caption is concerned
MAJOR_MIN = 10.0  # percent: classes a caption should mention for full recall
PERCENT_TOLERANCE = 5.0  # percentage points before a stated share contradicts the mask


def redundancy(captions: pl.Series | Sequence[str]) -> float:
    """1 - unique / total over exact strings."""
    series = captions if isinstance(captions, pl.Series) else pl.Series(list(captions), dtype=pl.String)
    return 1.0 - series.n_unique() / len(series) if len(series) else 0.0


def redundancy_table(frame: pl.DataFrame) -> pl.DataFrame:
    """Per origin and mode, then per origin, then overall: captions, unique, redundancy and its
    normalized variant (case, punctuation and spacing ignored), in percent."""
    # Normalize once (not per level), and only rewrite whitespace that is not already one space.
    norm = (pl.col("text").str.to_lowercase().str.replace_all(r"[^\w%\s-]", "")
            .str.replace_all(r"[^\S ]|\s{2,}", " ").str.strip_chars())
    frame = frame.select("origin", "mode", "text", norm.alias("norm"))
    aggs = [pl.len().alias("captions"), pl.col("text").n_unique().alias("unique"), pl.col("norm").n_unique().alias("unique_norm")]
    parts = [frame.group_by("origin", "mode").agg(aggs),
             frame.group_by("origin").agg(aggs).with_columns(pl.lit("all").alias("mode")),
             frame.select(aggs).with_columns(pl.lit("all").alias("origin"), pl.lit("all").alias("mode"))]
    table = pl.concat([p.select("origin", "mode", "captions", "unique", "unique_norm") for p in parts])
    return table.with_columns(
        (100 * (1 - pl.col("unique") / pl.col("captions"))).alias("redundancy_pct"),
        (100 * (1 - pl.col("unique_norm") / pl.col("captions"))).alias("redundancy_norm_pct"),
    ).sort("origin", "mode")


@dataclass(frozen=True)
class Consistency:
    mentioned: tuple[str, ...]
    precision: float  # mentioned classes present in the mask
    recall: float  # major classes (>= 10%) mentioned
    percent_error: float | None  # mean |stated - true| over stated percentages
    contradictions: tuple[str, ...]


MALFORMED = re.compile(r",\s*,|,\s*\.|\s[,.]|\s{2,}|^\s|\s$")  # doubled or stray punctuation, stray spaces


def malformed(texts: pl.Series) -> pl.Series:
    """True where a caption's punctuation or spacing is broken ("shrubs,, with", "land ,", "a  b")."""
    return texts.str.contains(MALFORMED.pattern) | (texts.str.strip_chars() == "")


def mentions(text: str) -> tuple[list[str], list[tuple[str, float]]]:
    """Classes named in a caption, and (class, percent) for percentages right after a class word."""
    named: list[str] = []
    stated: list[tuple[str, float]] = []
    last: str | None = None
    since = 0
    for token in WORD_RE.findall(text.lower()):
        if token.endswith("%"):
            if last is not None and since <= 4:
                stated.append((last, float(token[:-1])))
                last = None
            continue
        since += 1
        cls = WORD_CLASS.get(token)
        if cls is not None:
            if cls not in named:
                named.append(cls)
            last, since = cls, 0
    return named, stated


def consistency(text: str, percents: Sequence[float]) -> Consistency:
    truth = dict(zip(CLASS_NAMES, percents, strict=True))
    named, stated = mentions(text)
    present = [c for c in named if truth[c] >= PRESENT_MIN]
    major = [c for c, p in truth.items() if p >= MAJOR_MIN]
    problems = [f"names {c} ({truth[c]:.2f}% in the mask)" for c in named if truth[c] < PRESENT_MIN]
    errors = [abs(p - truth[c]) for c, p in stated]
    problems += [f"says {c} {p:g}% (mask {truth[c]:.2f}%)" for c, p in stated if abs(p - truth[c]) > PERCENT_TOLERANCE]
    return Consistency(
        tuple(named), len(present) / len(named) if named else 1.0,
        sum(c in named for c in major) / len(major) if major else 1.0,
        sum(errors) / len(errors) if errors else None, tuple(problems))


def consistency_frame(captions: pl.DataFrame, compositions: pl.DataFrame) -> pl.DataFrame:
    """caption rows joined to their image's composition -> one consistency row per caption."""
    share_cols = [f"pct_{n}" for n in CLASS_NAMES]
    joined = captions.select("caption_id", "image_id", "origin", "mode", "text").join(
        compositions.select("image_id", *share_cols), on="image_id", how="left")
    rows = []
    for row in joined.iter_rows(named=True):
        if row[share_cols[0]] is None:
            rows.append({"caption_id": row["caption_id"], "origin": row["origin"], "mode": row["mode"], "precision": None,
                         "recall": None, "percent_error": None, "contradictions": "image has no composition"})
            continue
        c = consistency(row["text"], [row[k] for k in share_cols])
        rows.append({"caption_id": row["caption_id"], "origin": row["origin"], "mode": row["mode"],
                     "precision": c.precision, "recall": c.recall, "percent_error": c.percent_error,
                     "contradictions": "; ".join(c.contradictions)})
    return pl.DataFrame(rows, schema={"caption_id": pl.String, "origin": pl.String, "mode": pl.String,
                                      "precision": pl.Float64, "recall": pl.Float64, "percent_error": pl.Float64,
                                      "contradictions": pl.String})
