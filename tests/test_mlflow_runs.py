"""MLflow helpers on a real local store: the champion alias goes to a generator's lowest FID."""

from __future__ import annotations

from pathlib import Path

import torch

from aras_assets.mlflow_runs import promote_lowest, register_version
from resources.tracking import MlflowResource


def test_generator_champion_is_the_version_with_the_lowest_fid(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ARAS_DATA_ROOT", str(tmp_path))
    mlflow = MlflowResource()
    client = mlflow.client()
    experiment = mlflow.experiment_id()
    checkpoint = tmp_path / "g.pt"
    torch.save({"w": torch.zeros(1)}, checkpoint)
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
