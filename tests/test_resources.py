"""Storage, device and MLflow resources."""

import polars as pl
import pytest

from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.storage import StorageError, atomic_write_bytes, staged_directory


def test_storage_root_from_config_or_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ARAS_DATA_ROOT", str(tmp_path / "env"))
    assert StorageResource().root_path == (tmp_path / "env").resolve()
    assert StorageResource(root=str(tmp_path / "cfg")).path("a", "b") == (tmp_path / "cfg" / "a" / "b").resolve()
    assert StorageResource().resolve("/abs/x").as_posix() == "/abs/x"


def test_atomic_writes_leave_no_temp_files(tmp_path):
    target = tmp_path / "f.bin"
    storage = StorageResource(root=str(tmp_path))
    atomic_write_bytes(target, b"one")
    storage.write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    storage.write_parquet(pl.DataFrame({"a": [1, 2]}), tmp_path / "m" / "x.parquet")
    assert storage.scan_parquet("m/*.parquet").collect()["a"].to_list() == [1, 2]


def test_staged_directory_swaps_whole_or_not_at_all(tmp_path):
    final = tmp_path / "part"
    with staged_directory(final) as stage:
        (stage / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError), staged_directory(final) as stage:
        (stage / "a").write_text("2")
        raise RuntimeError("crash halfway")
    assert (final / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part"]


def test_unwritable_folder_is_named(tmp_path):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(StorageError, match="blocked"):
        StorageResource(root=str(tmp_path)).writable_dir("blocked")


def test_device_resource_on_cpu():
    import torch

    dev = TorchDeviceResource(device="cpu", precision="bf16")
    assert dev.torch_device().type == "cpu"
    model = dev.prepare(torch.nn.Conv2d(3, 4, 3))
    with dev.autocast():
        out = model(dev.to_device(torch.ones(1, 3, 8, 8)))
    assert out.dtype == torch.float32  # no autocast off CUDA
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            TorchDeviceResource(device="cuda").torch_device()


def test_mlflow_resource_records_runs_in_a_local_store(tmp_path):
    res = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "art").as_uri(),
                         experiment="test")
    client = res.client()
    exp = res.experiment_id()
    assert res.experiment_id() == exp
    # The MLflow UI opens it on the training runs table.
    assert res.client().get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "arch", "unet")
    client.log_metric(run.info.run_id, "f1", 0.5)
    client.set_terminated(run.info.run_id)
    again = res.client().get_run(run.info.run_id)
    assert again.data.params["arch"] == "unet" and again.data.metrics["f1"] == 0.5
    assert again.info.artifact_uri.startswith((tmp_path / "art").as_uri())
    assert "mlflow.db" in res.ui_command() and res.ui_command().endswith("--host 127.0.0.1 --port 5000")


def test_experiment_of_an_older_version_gets_its_kind_and_a_chosen_kind_stays(tmp_path):
    res = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "art").as_uri(),
                         experiment="old")
    client = res.client()
    old = client.create_experiment("old", artifact_location=res.resolved_artifact_root)  # no kind, as before
    assert res.experiment_id() == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(old, "mlflow.experimentKind", "finetuning")  # the user's choice
    res.experiment_id()
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "finetuning"
