"""Judging captions: redundancy (how many are repeats) and caption-mask consistency (which
classes and percentages a caption names against the mask's composition)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from aras_assets.landcover import CLASS_NAMES

# ARAS400k paper Table 2: (unique captions, redundancy %, CLIPScore) per subset and (model, method).
PAPER_REDUNDANCY = {"overall": 12.85}
PAPER_TABLE2: dict[tuple[str, str, str], tuple[int, float, float]] = {
    ("all", "Qwen3-4B", "text"): (214_319, 46.45, 26.34), ("all", "Gemma3-4B", "vision"): (396_878, 0.84, 31.06),
    ("all", "Qwen3-VL-8B", "vision"): (359_997, 10.05, 31.79), ("all", "Gemma3-4B", "hybrid"): (398_339, 0.47, 30.26),
    ("all", "Qwen3-VL-8B", "hybrid"): (374_570, 6.41, 27.88),
    ("real", "Qwen3-4B", "text"): (71_899, 28.27, 26.48), ("real", "Gemma3-4B", "vision"): (99_981, 0.26, 30.60),
    ("real", "Qwen3-VL-8B", "vision"): (91_269, 8.95, 30.67), ("real", "Gemma3-4B", "hybrid"): (100_105, 0.13, 29.90),
    ("real", "Qwen3-VL-8B", "hybrid"): (97_814, 2.42, 27.87),
    ("synthetic", "Qwen3-4B", "text"): (159_138, 46.95, 26.29), ("synthetic", "Gemma3-4B", "vision"): (296_900, 1.03, 31.21),
    ("synthetic", "Qwen3-VL-8B", "vision"): (268_821, 10.39, 32.16),
    ("synthetic", "Gemma3-4B", "hybrid"): (298_556, 2.70, 30.38),
    ("synthetic", "Qwen3-VL-8B", "hybrid"): (280_731, 6.42, 27.88),
}
SUBSETS = ("all", "real", "synthetic")


def paper_mode_redundancy(subset: str, mode: str) -> float | None:
    """The paper's redundancy of one method in a subset, averaged over its models."""
    values = [red for (s, _, m), (_, red, _) in PAPER_TABLE2.items() if (s, m) == (subset, mode)]
    return sum(values) / len(values) if values else None


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


def redundancy_table(frame: pl.DataFrame, keys: Sequence[str] = ("origin", "mode")) -> pl.DataFrame:
    """Per `keys` (the first is the origin), then per origin, then overall: captions, unique,
    redundancy and its normalized variant (case, punctuation and spacing ignored), in percent.
    Levels above the keys say "all" in the columns they merge."""
    # Normalize once (not per level), and only rewrite whitespace that is not already one space.
    norm = (pl.col("text").str.to_lowercase().str.replace_all(r"[^\w%\s-]", "")
            .str.replace_all(r"[^\S ]|\s{2,}", " ").str.strip_chars())
    keys = list(keys)
    frame = frame.select(*keys, "text", norm.alias("norm"))
    aggs = [pl.len().alias("captions"), pl.col("text").n_unique().alias("unique"), pl.col("norm").n_unique().alias("unique_norm")]
    inner = keys[1:]
    parts = [frame.group_by(keys).agg(aggs),
             frame.group_by(keys[0]).agg(aggs).with_columns(pl.lit("all").alias(k) for k in inner),
             frame.select(aggs).with_columns(pl.lit("all").alias(k) for k in keys)]
    table = pl.concat([p.select(*keys, "captions", "unique", "unique_norm") for p in parts])
    return table.with_columns(
        (100 * (1 - pl.col("unique") / pl.col("captions"))).alias("redundancy_pct"),
        (100 * (1 - pl.col("unique_norm") / pl.col("captions"))).alias("redundancy_norm_pct"),
    ).sort(keys)


def table2(captions: pl.DataFrame, clipscores: Sequence[float] | None = None) -> pl.DataFrame:
    """The paper's Table 2 for our captions: one row per subset (all, real, synthetic) and
    (model, method) pair, in the paper's row order, with captions, unique captions, redundancy
    and mean CLIPScore (null when not computed) beside the paper's figures (null for a pair the
    paper does not have)."""
    frame = captions.select("origin", "model", "mode", "text").with_columns(
        pl.Series("clipscore", list(clipscores) if clipscores is not None else [None] * captions.height, dtype=pl.Float64),
        pl.when(pl.col("origin") == "real").then(pl.lit("real")).otherwise(pl.lit("synthetic")).alias("subset"))
    both = pl.concat([frame.with_columns(pl.lit("all").alias("subset")), frame])
    table = both.group_by("subset", "model", "mode").agg(
        pl.len().alias("captions"), pl.col("text").n_unique().alias("unique"), pl.col("clipscore").mean())
    table = table.with_columns((100 * (1 - pl.col("unique") / pl.col("captions"))).alias("redundancy_pct"))
    paper = pl.DataFrame([{"subset": s, "model": m, "mode": mode, "paper_unique": u, "paper_redundancy_pct": r,
                           "paper_clipscore": c} for (s, m, mode), (u, r, c) in PAPER_TABLE2.items()])
    paper_order = {(m, mode): k for k, (s, m, mode) in enumerate(PAPER_TABLE2) if s == "all"}
    order = pl.concat_str("model", pl.lit(":"), "mode").replace_strict(
        {f"{m}:{mode}": k for (m, mode), k in paper_order.items()}, default=len(paper_order), return_dtype=pl.Int64)
    return table.join(paper, on=["subset", "model", "mode"], how="left").sort(
        pl.col("subset").replace_strict({s: k for k, s in enumerate(SUBSETS)}, return_dtype=pl.Int64), order, "model", "mode",
    ).select("subset", "model", "mode", "captions", "unique", "paper_unique", "redundancy_pct", "paper_redundancy_pct",
             "clipscore", "paper_clipscore")


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
    joined = captions.select("caption_id", "image_id", "origin", "model", "mode", "text").join(
        compositions.select("image_id", *share_cols), on="image_id", how="left")
    rows = []
    for row in joined.iter_rows(named=True):
        if row[share_cols[0]] is None:
            rows.append({"caption_id": row["caption_id"], "origin": row["origin"], "model": row["model"],
                         "mode": row["mode"], "precision": None,
                         "recall": None, "percent_error": None, "contradictions": "image has no composition"})
            continue
        c = consistency(row["text"], [row[k] for k in share_cols])
        rows.append({"caption_id": row["caption_id"], "origin": row["origin"], "model": row["model"], "mode": row["mode"],
                     "precision": c.precision, "recall": c.recall, "percent_error": c.percent_error,
                     "contradictions": "; ".join(c.contradictions)})
    return pl.DataFrame(rows, schema={"caption_id": pl.String, "origin": pl.String, "model": pl.String, "mode": pl.String,
                                      "precision": pl.Float64, "recall": pl.Float64, "percent_error": pl.Float64,
                                      "contradictions": pl.String})
