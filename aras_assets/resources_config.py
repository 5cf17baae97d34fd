"""The resources every stage gets, configured from the environment (see README)."""

from __future__ import annotations

from aras_assets.settings import SettingsResource
from resources import MlflowResource, StorageResource, TorchDeviceResource


def default_resources() -> dict[str, object]:
    return {
        "settings": SettingsResource(),
        "storage": StorageResource(),
        "device": TorchDeviceResource(),
        "mlflow": MlflowResource(),
    }
