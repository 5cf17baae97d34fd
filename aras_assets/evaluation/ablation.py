"""The augmentation ablation (the paper's Tables 3 and 4) as plain functions: which images each
training set holds, and the tables and gain plot from the test-split confusion matrices of
the trained models.

Training sets, in the paper's proportions (its 80,182 real training patches beside 100k and
300k unconditional and 80k conditional images):
    real                the real training split
    uncond_1x           as many unconditional images as real training patches, alone
    uncond_3x           `uncond_multiple` times as many, alone
    real+uncond         real + `uncond_multiple` x unconditional
    real+cond           real + as many conditional images as real training patches (the
                        paper's 80k, one per training mask)
    real+uncond+cond    all three
Unconditional images carry their labeler masks (uncond_labels), conditional ones the mask
they were conditioned on. Fewer images than asked are used as they are, and said."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from aras_assets.errors import BadInputError
from aras_assets.evaluation.paper import MEAN, PAPER_TABLE3, PAPER_TABLE4, TRAIN_SET_NAMES, TRAIN_SETS
from aras_assets.landcover import CLASS_NAMES
from aras_assets.layout import COND, REAL, UNCOND
from aras_assets.segmentation.metrics import SegmentationScores

RECORD_COLUMNS = ("patch_id", "image_path", "mask_path", "origin")
# The asset each synthetic origin's images and masks come from: named when they are missing.
SOURCE_ASSET = {UNCOND: "uncond_labels", COND: "cond_images"}
TABLE3_HEADS = ("F1", "IoU", "Prec.", "Recall", "Acc.")
TABLE4_HEADS = ("Tree", "Shrub", "Grass", "Crop", "Build", "Barren", "Water")


class AblationError(BadInputError, ValueError):
    """A training set that cannot be built from what has been materialized."""


@dataclass(frozen=True)
class TrainSetPlan:
    real: bool
    uncond_per_real: int  # unconditional images per real training patch (0: none)
    cond: bool


def plan(train_set: str, uncond_multiple: int) -> TrainSetPlan:
    plans = {"real": TrainSetPlan(True, 0, False), "uncond_1x": TrainSetPlan(False, 1, False),
             "uncond_3x": TrainSetPlan(False, uncond_multiple, False),
             "real+uncond": TrainSetPlan(True, uncond_multiple, False), "real+cond": TrainSetPlan(True, 0, True),
             "real+uncond+cond": TrainSetPlan(True, uncond_multiple, True)}
    if train_set not in plans:
        raise AblationError(f"unknown training set {train_set!r} (one of {', '.join(TRAIN_SETS)})")
    return plans[train_set]


@dataclass(frozen=True)
class TrainSet:
    name: str
    records: pl.DataFrame  # RECORD_COLUMNS, paths relative to the data root
    counts: dict[str, int]  # images per origin
    shortfall: dict[str, int]  # images asked for but not there, per origin

    @property
    def version(self) -> str:
        """A digest of the images it holds: a new version retrains (and resets the checkpoint)."""
        digest = hashlib.sha256()
        for patch_id, image, mask, _ in self.records.iter_rows():
            digest.update(f"{patch_id}\t{image}\t{mask}\n".encode())
        return digest.hexdigest()[:16]

    def origin_versions(self) -> dict[str, str]:
        """A digest of each origin's images in the set: the data versions of its inputs."""
        out = {}
        for origin in self.counts:
            ids = self.records.filter(pl.col("origin") == origin)["patch_id"].to_list()
            out[origin] = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        return out


def compose(train_set: str, real: pl.DataFrame, synthetic: Mapping[str, pl.DataFrame], uncond_multiple: int) -> TrainSet:
    """The records of one training set. `real`: the real training split (patch_id, image_path,
    mask_path); `synthetic[origin]`: image_id, image_path, mask_path of every synthetic image
    of that origin, in a fixed order (the first ones are taken)."""
    p = plan(train_set, uncond_multiple)
    # one conditional image per real training patch: the paper's 80k beside its 80k training masks
    wanted = {REAL: real.height if p.real else 0, UNCOND: p.uncond_per_real * real.height,
              COND: real.height if p.cond else 0}
    frames, counts, shortfall = [], {}, {}
    for origin, want in wanted.items():
        if not want:
            continue
        if origin == REAL:
            frame = real.select("patch_id", "image_path", "mask_path")
        else:
            frame = synthetic.get(origin)
            if frame is None or frame.is_empty():
                raise AblationError(f"training set {train_set} needs {origin} images with masks: "
                                    f"materialize {SOURCE_ASSET[origin]} first")
            frame = frame.head(want).select(pl.col("image_id").alias("patch_id"), "image_path", "mask_path")
        counts[origin] = frame.height
        if frame.height < want:
            shortfall[origin] = want - frame.height
        frames.append(frame.with_columns(pl.lit(origin).alias("origin")))
    return TrainSet(train_set, pl.concat(frames).sort("patch_id"), counts, shortfall)


Results = Mapping[tuple[str, str], SegmentationScores]  # (train_set, arch) -> test scores


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def macro_row(s: SegmentationScores) -> tuple[float, ...]:
    return tuple(100 * v for v in (s.f1, s.iou, s.precision, s.recall, s.accuracy))


def class_row(s: SegmentationScores) -> tuple[float | None, ...]:
    return tuple(100 * f if present else None for f, present in zip(s.per_class_f1, s.present, strict=True))


def _mean(rows: Sequence[Sequence[float | None]]) -> tuple[float | None, ...]:
    columns = zip(*rows, strict=True)
    return tuple(float(np.mean(vals)) if (vals := [v for v in col if v is not None]) else None for col in columns)


@dataclass(frozen=True)
class TableRow:
    train_set: str
    model: str  # an architecture or "mean"
    ours: tuple[float | None, ...]
    paper: tuple[float, ...] | None

    @property
    def difference(self) -> tuple[float | None, ...] | None:
        if self.paper is None:
            return None
        return tuple(None if o is None else o - p for o, p in zip(self.ours, self.paper, strict=True))


def table_rows(results: Results, per_class: bool) -> list[TableRow]:
    """Ours beside the paper's, per training set (paper order) and architecture, with a mean row
    over the architectures run when there are several."""
    paper = PAPER_TABLE4 if per_class else PAPER_TABLE3
    pick = class_row if per_class else macro_row
    rows = []
    for train_set in TRAIN_SETS:
        archs = [a for (t, a) in results if t == train_set]
        values = [pick(results[(train_set, a)]) for a in archs]
        rows += [TableRow(train_set, a, v, paper[train_set].get(a)) for a, v in zip(archs, values, strict=True)]
        if len(archs) > 1:
            rows.append(TableRow(train_set, MEAN, _mean(values), paper[train_set][MEAN]))
    return rows


def table_markdown(rows: Sequence[TableRow], heads: Sequence[str]) -> str:
    lines = [_row(["Train set", "Model", "", *heads]), _row(["---"] * (3 + len(heads)))]
    for r in rows:
        name = TRAIN_SET_NAMES[r.train_set]
        lines.append(_row([name, r.model, "ours", *(_fmt(v) for v in r.ours)]))
        if r.paper is not None:
            lines.append(_row(["", "", "paper", *(_fmt(v) for v in r.paper)]))
            lines.append(_row(["", "", "difference", *(_fmt(v) for v in r.difference or ())]))
    return "\n".join(lines)


def class_frequency(results: Results) -> np.ndarray:
    """Each class's share of the real test pixels (every model sees the same test split)."""
    truth = np.asarray(next(iter(results.values())).support, np.float64)
    return truth / max(truth.sum(), 1.0)


def class_gains(results: Results) -> dict[str, tuple[float | None, ...]]:
    """Per-class F1 gain (points) of each other training set over `real`, averaged over the
    architectures both were trained with."""
    gains = {}
    for train_set in TRAIN_SETS:
        if train_set == "real":
            continue
        archs = [a for (t, a) in results if t == train_set and ("real", a) in results]
        pairs = [(results[(train_set, a)], results[("real", a)]) for a in archs]
        if pairs:
            diffs = [tuple(None if x is None or y is None else x - y for x, y in zip(class_row(s), class_row(r), strict=True))
                     for s, r in pairs]
            gains[train_set] = _mean(diffs)
    return gains


def gain_plot_png(gains: Mapping[str, Sequence[float | None]], frequency: np.ndarray) -> bytes:
    """Per-class F1 gain over real against the class's share of test pixels: the paper's claim
    is that the rare classes (left) gain most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    share = 100 * np.asarray(frequency)
    for train_set, values in gains.items():
        points = [(share[c], v) for c, v in enumerate(values) if v is not None and share[c] > 0]
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=TRAIN_SET_NAMES[train_set])
    for c, name in enumerate(CLASS_NAMES):
        if share[c] > 0:
            ax.annotate(name, (share[c], 0), textcoords="offset points", xytext=(0, -12), fontsize=7, ha="center")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("class share of real test pixels (%, log)")
    ax.set_ylabel("F1 gain over real (points)")
    ax.set_title("Per-class gain of each training set over real")
    if gains:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
