"""What people look at: the confusion matrix as a picture, predictions beside the truth,
and tables shaped like the paper's Tables 3 (macro) and 4 (per-class F1) with the paper's
real-data figures beside ours."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from aras_assets.landcover import CLASS_NAMES, mask_to_rgb
from aras_assets.segmentation.metrics import SegmentationScores

# ARAS400k paper, models trained on real data: Table 3 (F1, IoU, precision, recall, accuracy)
# and Table 4 (F1 of tree, shrub, grass, crop, built-up, barren, water).
PAPER_TABLE3 = {
    "unet": (76.37, 64.49, 77.05, 75.86, 85.17),
    "unetplusplus": (76.38, 64.36, 76.50, 76.39, 84.85),
    "pan": (76.20, 64.10, 75.29, 77.60, 84.62),
    "deeplabv3plus": (76.02, 63.91, 75.59, 76.77, 84.37),
    "segformer": (77.09, 65.26, 78.10, 76.33, 85.66),
    "fpn": (76.85, 64.92, 77.07, 76.76, 85.17),
}
PAPER_TABLE4 = {
    "unet": (90.92, 45.86, 84.25, 86.82, 73.86, 58.98, 93.88),
    "unetplusplus": (90.88, 45.50, 83.95, 86.30, 74.11, 60.97, 92.93),
    "pan": (90.31, 46.88, 84.05, 86.38, 71.50, 60.58, 93.69),
    "deeplabv3plus": (90.42, 46.22, 83.56, 86.24, 72.21, 59.92, 93.58),
    "segformer": (91.08, 48.80, 85.07, 87.16, 73.05, 60.25, 94.20),
    "fpn": (90.40, 47.67, 84.48, 87.12, 73.02, 61.21, 94.05),
}
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
