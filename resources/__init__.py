"""Dagster resources that wrap infrastructure: storage, the torch device, MLflow."""

from resources.device import TorchDeviceResource
from resources.storage import StorageResource, default_data_root
from resources.tracking import MlflowResource

__all__ = ["MlflowResource", "StorageResource", "TorchDeviceResource", "default_data_root"]
