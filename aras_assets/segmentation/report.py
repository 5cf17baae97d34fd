"""What people look at: the confusion matrix as a picture, predictions beside the truth,
and tables shaped like the paper's Tables 3 (macro) and 4 (per-class F1) with the paper's
real-data figures beside ours."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from aras_assets.evaluation.paper import MEAN
from aras_assets.evaluation.paper import PAPER_TABLE3 as PAPER_ABLATION_TABLE3
from aras_assets.evaluation.paper import PAPER_TABLE4 as PAPER_ABLATION_TABLE4
from aras_assets.landcover import CLASS_NAMES, mask_to_rgb
from aras_assets.segmentation.metrics import SegmentationScores

# The paper's real-data rows of Table 3 (F1, IoU, precision, recall, accuracy) and Table 4 (F1 of
# tree, shrub, grass, crop, built-up, barren, water), per architecture.
PAPER_TABLE3 = {arch: row for arch, row in PAPER_ABLATION_TABLE3["real"].items() if arch != MEAN}
PAPER_TABLE4 = {arch: row for arch, row in PAPER_ABLATION_TABLE4["real"].items() if arch != MEAN}
PAPER_NAMES = {"unet": "Unet", "unetplusplus": "Unet++", "pan": "PAN", "deeplabv3plus": "DeepLab",
               "segformer": "Segformer", "fpn": "FPN"}
TABLE4_HEADS = ("Tree", "Shrub", "Grass", "Crop", "Build", "Barren", "Water")


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def table3_markdown(results: Mapping[str, SegmentationScores]) -> str:
    """Macro scores per architecture, ours (test split) then the paper's real-data row."""
    lines = [_row(["Model", "", "F1", "IoU", "Prec.", "Recall", "Acc."]), _row(["---"] * 7)]
    for arch, s in results.items():
        lines.append(_row([PAPER_NAMES[arch], "ours", *(_pct(v) for v in (s.f1, s.iou, s.precision, s.recall,
                                                                            s.accuracy))]))
        lines.append(_row(["", "paper", *(f"{v:.2f}" for v in PAPER_TABLE3[arch])]))
    return "\n".join(lines)


def table4_markdown(results: Mapping[str, SegmentationScores]) -> str:
    """Per-class F1 per architecture, ours then the paper's; '-' where a class never occurs."""
    lines = [_row(["Model", "", *TABLE4_HEADS]), _row(["---"] * (2 + len(TABLE4_HEADS)))]
    for arch, s in results.items():
        ours = [_pct(f) if present else "-" for f, present in zip(s.per_class_f1, s.present, strict=True)]
        lines.append(_row([PAPER_NAMES[arch], "ours", *ours]))
        lines.append(_row(["", "paper", *(f"{v:.2f}" for v in PAPER_TABLE4[arch])]))
    return "\n".join(lines)


def confusion_png(counts: np.ndarray, title: str = "confusion matrix") -> bytes:
    """Row-normalised confusion matrix (recall per true class) with the pixel counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(share):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def prediction_grid(images: Sequence[np.ndarray], truths: Sequence[np.ndarray | None], preds: Sequence[np.ndarray],
                    thumb: int = 96) -> bytes:
    """One row per sample: image, true mask (blank when unknown), predicted mask."""
    rows = len(images)
    canvas = Image.new("RGB", (3 * thumb + 4, rows * (thumb + 2)), (255, 255, 255))
    for r, (image, truth, pred) in enumerate(zip(images, truths, preds, strict=True)):
        tiles = [image, mask_to_rgb(truth) if truth is not None else np.full_like(image, 255), mask_to_rgb(pred)]
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile).resize((thumb, thumb), Image.NEAREST), (c * (thumb + 2), r * (thumb + 2)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
