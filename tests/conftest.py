"""Shared fixtures: a small sample region (written once per session) and per-test data roots."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from aras_assets.settings import SettingsResource
from aras_assets.sources.sample_region import write_sample_region
from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.captioner import CaptionerResource
from resources.clip import ClipResource

# 1024 px per S2 file: 4x4 patches per tile, enough for every filter to fire.
TEST_TILE_PX = 1024
TEST_SEED = 7


@pytest.fixture(scope="session")
def sample_region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sample_region")
    write_sample_region(folder, seed=TEST_SEED, tile_px=TEST_TILE_PX)
    return folder


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("ARAS_DATA_ROOT", str(root))
    return root


def make_resources(data_root: Path, tile_source: Path, **overrides: str) -> dict[str, object]:
    return {
        "settings": SettingsResource(profile="demo", overrides={"tile_source": str(tile_source), **overrides}),
        "storage": StorageResource(root=str(data_root)),
        "device": TorchDeviceResource(device="cpu"),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{data_root / 'mlflow.db'}",
                                 artifact_root=(data_root / "mlruns").as_uri()),
        "captioner": CaptionerResource(),
        "clip": ClipResource(),
    }


@pytest.fixture
def resources(data_root: Path, sample_region: Path) -> dict[str, object]:
    return make_resources(data_root, sample_region)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst
