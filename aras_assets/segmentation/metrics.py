"""Segmentation metrics from one confusion matrix accumulated batch by batch (docs/architecture.md
section 6): memory stays at classes x classes however many pixels are scored.

Macro averages run over the classes present in truth or prediction, as scikit-learn does
with its default `labels`; a class with a zero denominator scores 0 (scikit-learn's
`zero_division` default, without the warning)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aras_assets.landcover import CLASS_NAMES, NODATA_INDEX, NUM_CLASSES


class ConfusionMatrix:
    """counts[t, p] = pixels of true class t predicted as p; pixels labelled `ignore_index` are skipped."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = NODATA_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, truth: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> None:
        truth_t = torch.as_tensor(truth).reshape(-1).long()
        pred_t = torch.as_tensor(pred).reshape(-1).long().to(truth_t.device)
        if truth_t.shape != pred_t.shape:
            raise ValueError(f"truth has {truth_t.numel()} pixels, prediction {pred_t.numel()}")
        keep = truth_t != self.ignore_index
        if not bool(keep.all()):
            truth_t, pred_t = truth_t[keep], pred_t[keep]
        n = self.num_classes
        bad = (truth_t < 0) | (truth_t >= n) | (pred_t < 0) | (pred_t >= n)
        if bool(bad.any()):
            raise ValueError(f"class indices must lie in 0..{n - 1} (or {self.ignore_index} to ignore)")
        counts = torch.bincount(truth_t * n + pred_t, minlength=n * n)
        self.counts += counts.reshape(n, n).cpu().numpy()

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.counts)


@dataclass(frozen=True)
class SegmentationScores:
    """Fractions in [0, 1]; reports multiply by 100 as the paper's tables do."""

    f1: float
    iou: float
    precision: float
    recall: float
    accuracy: float
    per_class_f1: tuple[float, ...]
    per_class_iou: tuple[float, ...]
    per_class_precision: tuple[float, ...]
    per_class_recall: tuple[float, ...]
    present: tuple[bool, ...]  # class seen in truth or prediction
    support: tuple[int, ...]  # true pixels per class

    def as_dict(self, prefix: str = "") -> dict[str, float | None]:
        """Flat numbers for MLflow: macro scores, then per-class F1 and IoU by class name; None for a
        class absent from truth and prediction (no score, not a score of 0)."""
        out: dict[str, float | None] = {f"{prefix}{k}": getattr(self, k) for k in ("f1", "iou", "precision", "recall",
                                                                                    "accuracy")}
        for name, f1, iou, present in zip(CLASS_NAMES, self.per_class_f1, self.per_class_iou, self.present, strict=False):
            out[f"{prefix}f1_{name}"] = f1 if present else None
            out[f"{prefix}iou_{name}"] = iou if present else None
        return out


SCORE_NAMES = ("f1", "iou", "precision", "recall", "accuracy")


def as_percent(values: dict[str, float | None]) -> dict[str, float | None]:
    """Scores (keys naming a score, e.g. val_f1, test_iou_water) as percent with two decimals,
    the one unit every report uses; None (a class absent from truth and prediction) stays None;
    anything else (epoch, losses, learning rate) as it is."""
    def is_score(key: str) -> bool:
        return any(part in SCORE_NAMES for part in key.replace("/", "_").split("_"))
    return {k: (None if v is None else round(100 * v, 2)) if is_score(k) else v for k, v in values.items()}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def scores_from_confusion(counts: np.ndarray) -> SegmentationScores:
    counts = counts.astype(np.float64)
    tp = np.diag(counts)
    true_total = counts.sum(axis=1)
    pred_total = counts.sum(axis=0)
    fp, fn = pred_total - tp, true_total - tp
    precision, recall = _ratio(tp, pred_total), _ratio(tp, true_total)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    iou = _ratio(tp, tp + fp + fn)
    present = (true_total + pred_total) > 0

    def macro(values: np.ndarray) -> float:
        return float(values[present].mean()) if present.any() else 0.0

    total = counts.sum()
    return SegmentationScores(
        f1=macro(f1), iou=macro(iou), precision=macro(precision), recall=macro(recall),
        accuracy=float(tp.sum() / total) if total else 0.0,
        per_class_f1=tuple(map(float, f1)), per_class_iou=tuple(map(float, iou)),
        per_class_precision=tuple(map(float, precision)), per_class_recall=tuple(map(float, recall)),
        present=tuple(map(bool, present)), support=tuple(int(v) for v in true_total),
    )
