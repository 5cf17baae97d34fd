"""The resources every stage gets, configured from the environment (see README)."""

from __future__ import annotations

from aras_assets.settings import SettingsResource
from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.captioner import CaptionerResource
from resources.clip import ClipResource


def default_resources() -> dict[str, object]:
    return {
        "settings": SettingsResource(),
        "storage": StorageResource(),
        "device": TorchDeviceResource(),
        "mlflow": MlflowResource(),
        "captioner": CaptionerResource(),
        "clip": ClipResource(),
    }
