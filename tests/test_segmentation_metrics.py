"""Segmentation metrics against scikit-learn, and hand-worked known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from aras_assets.segmentation.metrics import ConfusionMatrix, scores_from_confusion


def sklearn_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    kw = {"average": "macro", "zero_division": 0}
    return {
        "f1": f1_score(truth, pred, **kw), "iou": jaccard_score(truth, pred, **kw),
        "precision": precision_score(truth, pred, **kw), "recall": recall_score(truth, pred, **kw),
        "accuracy": accuracy_score(truth, pred),
    }


def ours(truth: np.ndarray, pred: np.ndarray, batches: int = 1) -> dict[str, float]:
    matrix = ConfusionMatrix(7)
    for t, p in zip(np.array_split(truth, batches), np.array_split(pred, batches), strict=True):
        matrix.update(torch.from_numpy(t), torch.from_numpy(p))
    s = matrix.scores()
    return {"f1": s.f1, "iou": s.iou, "precision": s.precision, "recall": s.recall, "accuracy": s.accuracy}


CASES = {
    "random": lambda rng: (rng.integers(0, 7, 5000), rng.integers(0, 7, 5000)),
    "mostly right": lambda rng: (t := rng.integers(0, 7, 5000), np.where(rng.random(5000) < 0.8, t, rng.integers(0, 7, 5000))),
    # class 6 in neither truth nor prediction, class 5 only in the prediction
    "absent and prediction-only classes": lambda rng: (rng.integers(0, 5, 3000),
                                                       np.where(rng.random(3000) < 0.3, 5, rng.integers(0, 5, 3000))),
    "one class everywhere": lambda rng: (np.full(100, 2), np.full(100, 2)),
    "all wrong": lambda rng: (np.zeros(50, dtype=np.int64), np.ones(50, dtype=np.int64)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batches", [1, 7])
def test_scores_equal_sklearn(case: str, batches: int) -> None:
    truth, pred = CASES[case](np.random.default_rng(3))
    expected, got = sklearn_scores(truth, pred), ours(truth, pred, batches)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_per_class_scores_equal_sklearn() -> None:
    truth, pred = CASES["absent and prediction-only classes"](np.random.default_rng(5))
    matrix = ConfusionMatrix(7)
    matrix.update(truth, pred)
    s = matrix.scores()
    labels = list(range(7))
    np.testing.assert_allclose(s.per_class_f1, f1_score(truth, pred, labels=labels, average=None, zero_division=0))
    np.testing.assert_allclose(s.per_class_iou, jaccard_score(truth, pred, labels=labels, average=None, zero_division=0))
    assert s.present == (True, True, True, True, True, True, False)
    assert s.per_class_f1[5] == 0.0  # predicted but never true


def test_known_answer_by_hand() -> None:
    # truth 0 0 1 1, prediction 0 1 1 1: class 0 tp1 fn1, class 1 tp2 fp1
    s = scores_from_confusion(np.array([[1, 1], [0, 2]]))
    assert s.accuracy == pytest.approx(0.75)
    assert s.per_class_f1 == pytest.approx((2 / 3, 4 / 5))
    assert s.per_class_iou == pytest.approx((1 / 2, 2 / 3))
    assert s.precision == pytest.approx((1 + 2 / 3) / 2)
    assert s.recall == pytest.approx((1 / 2 + 1) / 2)


def test_ignore_index_and_bad_classes() -> None:
    matrix = ConfusionMatrix(7)
    matrix.update(torch.tensor([0, 255, 3]), torch.tensor([0, 4, 3]))
    assert matrix.total == 2 and matrix.scores().accuracy == 1.0
    with pytest.raises(ValueError, match="class indices"):
        matrix.update(torch.tensor([7]), torch.tensor([0]))
    with pytest.raises(ValueError, match="pixels"):
        matrix.update(torch.tensor([1, 2]), torch.tensor([1]))


def test_memory_is_the_matrix_only() -> None:
    matrix = ConfusionMatrix(7)
    for _ in range(20):
        matrix.update(torch.randint(0, 7, (4, 64, 64)), torch.randint(0, 7, (4, 64, 64)))
    assert matrix.counts.shape == (7, 7) and matrix.total == 20 * 4 * 64 * 64


def test_reported_evaluation_is_fp32_and_equals_sklearn(monkeypatch) -> None:
    """`evaluate` scores in fp32 even on a bf16 runtime (bf16 is for labelling): test metrics equal
    scikit-learn's on the fp32 predictions of a small split; an absent class is None, not 0."""
    from aras_assets import mlflow_runs
    from aras_assets.segmentation.training import evaluate, predict
    from resources.device import TorchRuntime

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 7, 1).eval()
    with torch.no_grad():
        model.bias[6] = -1e4  # water is never predicted, and absent from the truth below
    images = torch.randn(6, 3, 16, 16)
    truth = torch.randint(0, 6, (6, 16, 16))
    loader = [(images[:4], truth[:4]), (images[4:], truth[4:])]
    calls: list[bool] = []
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: calls.append(True) or torch.amp.autocast(*a, **k))
    bf16 = TorchRuntime("cpu", torch.bfloat16)
    matrix, _ = evaluate(model, loader, bf16)
    assert not calls  # no autocast for the reported scores
    with torch.no_grad():
        pred = model(images).argmax(1)
    expected = sklearn_scores(truth.numpy().ravel(), pred.numpy().ravel())
    s = matrix.scores()
    assert {"f1": s.f1, "iou": s.iou, "precision": s.precision, "recall": s.recall, "accuracy": s.accuracy} == \
        pytest.approx(expected, abs=1e-12)
    scores = s.as_dict("test_")
    assert scores["test_f1_water"] is None and scores["test_iou_water"] is None and scores["test_f1_tree"] is not None
    with torch.no_grad():
        predict(model, images, bf16)  # labelling keeps the runtime's autocast
    assert calls

    class Client:
        def log_batch(self, run_id, metrics):
            self.logged = {m.key: m.value for m in metrics}

    client = Client()
    mlflow_runs.log_metrics(client, "run", {**scores, "nan": float("nan")})
    assert "test_f1_water" not in client.logged and "nan" not in client.logged and "test_f1" in client.logged


def test_scores_are_reported_in_percent_with_two_decimals_and_absent_classes_stay_null() -> None:
    from aras_assets.segmentation.metrics import as_percent

    got = as_percent({"val_f1": 0.672549, "test_iou_water": None, "epoch/val_accuracy": 0.5, "train_loss": 0.123456,
                      "epoch": 3, "lr": 0.001, "train_images_per_s": 12.5})
    assert got == {"val_f1": 67.25, "test_iou_water": None, "epoch/val_accuracy": 50.0, "train_loss": 0.123456,
                   "epoch": 3, "lr": 0.001, "train_images_per_s": 12.5}
