"""Dagster resources that wrap infrastructure: storage, the torch device, MLflow, the captioner
backends and CLIP."""

from resources.captioner import CaptionerResource
from resources.clip import ClipResource
from resources.device import TorchDeviceResource
from resources.storage import StorageResource, default_data_root
from resources.tracking import MlflowResource

__all__ = ["CaptionerResource", "ClipResource", "MlflowResource", "StorageResource", "TorchDeviceResource", "default_data_root"]
