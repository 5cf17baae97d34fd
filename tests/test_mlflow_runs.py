"""MLflow helpers on a real local store: the champion alias goes to a generator's lowest FID."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from aras_assets.mlflow_runs import promote_lowest, register_version
from resources.tracking import MlflowResource


@dataclass
class Store:
    """A local MLflow store under a fresh data root, its experiment, and a checkpoint file to register."""

    mlflow: MlflowResource
    client: Any
    experiment: str
    checkpoint: Path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("ARAS_DATA_ROOT", str(tmp_path))
    mlflow = MlflowResource()
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, checkpoint)
    return Store(mlflow, mlflow.client(), mlflow.experiment_id(), checkpoint)


def test_generator_champion_is_the_version_with_the_lowest_fid(store: Store) -> None:
    mlflow, client, experiment, checkpoint = store.mlflow, store.client, store.experiment, store.checkpoint
    for fid in ("12.5", "9.25", "nan", "30.0"):
        run = client.create_run(experiment).info.run_id
        register_version(mlflow.resolved_tracking_uri, run, torch.nn.Linear(2, 2), checkpoint, "aras-gan-test",
                         {"aras.fid_encoder": fid}, ("torch",), description=f"fid {fid}",
                         model_description="a test generator")
    best = promote_lowest(client, "aras-gan-test", "aras.fid_encoder")
    assert best is not None and (best.version, best.score) == ("2", 9.25)
    assert str(client.get_model_version_by_alias("aras-gan-test", "champion").version) == "2"
    assert client.get_model_version("aras-gan-test", "4").description == "fid 30.0"
    assert client.get_registered_model("aras-gan-test").description == "a test generator"
    assert promote_lowest(client, "aras-gan-none", "aras.fid_encoder") is None


class RacingClient:
    """An MLflow client whose first alias write is preceded by another architecture's whole
    registration and promotion: the interleaving of two trainings that end at once."""

    def __init__(self, client, other: Callable[[], None]) -> None:
        self._client, self._other = client, other

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def set_registered_model_alias(self, *args, **kwargs):
        other, self._other = self._other, None
        if other is not None:
            other()
        return self._client.set_registered_model_alias(*args, **kwargs)


def test_two_architectures_promoting_at_once_leave_one_champion_on_the_best(store: Store) -> None:
    """Regression: pan read the versions, fpn registered a better one and promoted it, then pan
    wrote its stale pick; the alias stayed on pan (and on fpn too)."""
    from aras_assets.segmentation.registry import CHAMPION, find_champion, model_name, promote_champion, register_model

    mlflow, client, experiment, checkpoint = store.mlflow, store.client, store.experiment, store.checkpoint

    def train(arch: str, f1: float) -> None:
        run = client.create_run(experiment).info.run_id
        register_model(mlflow.resolved_tracking_uri, run, torch.nn.Conv2d(3, 7, 1), checkpoint, arch, f1, {})

    train("pan", 41.5)
    promote_champion(RacingClient(client, lambda: (train("fpn", 57.25), promote_champion(client))))
    holders = [name for name in (model_name("pan"), model_name("fpn"))
               if CHAMPION in client.get_registered_model(name).aliases]
    assert holders == [model_name("fpn")]
    assert str(find_champion(client)) == f"{model_name('fpn')}/1"


def open_store(root: str, start, results) -> None:
    import os

    os.environ["ARAS_DATA_ROOT"] = root
    start.wait(timeout=60)
    try:
        results.put(MlflowResource().experiment_id())
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_runs_that_start_at_once_on_a_new_data_root_share_one_store(tmp_path: Path) -> None:
    """Regression: two segmentation runs launched together on a fresh data root both created
    MLflow's sqlite store; one failed with "duplicate column name: step"."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=open_store, args=(str(tmp_path), start, results)) for _ in range(4)]
    for w in workers:
        w.start()
    found = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert len(set(found)) == 1 and found[0].isdigit(), found
