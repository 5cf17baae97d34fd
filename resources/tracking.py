"""MLflow tracking: a resource around MlflowClient with a local sqlite store by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from resources.storage import default_data_root


class MlflowResource(dg.ConfigurableResource):
    """Tracking store `tracking_uri` (default sqlite file under the data root) and artifacts
    under `artifact_root`, so `mlflow ui --backend-store-uri <same uri>` shows everything."""

    tracking_uri: str = ""
    artifact_root: str = ""
    experiment: str = "aras"

    def _folder(self) -> Path:
        return Path(default_data_root()).resolve() / "mlflow"

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    @property
    def resolved_artifact_root(self) -> str:
        return self.artifact_root or (self._folder() / "artifacts").as_uri()

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.resolved_tracking_uri, registry_uri=self.resolved_tracking_uri)

    def experiment_id(self, name: str | None = None) -> str:
        """The experiment's id, creating it with the configured artifact root if missing."""
        client = self.client()
        name = name or self.experiment
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(name, artifact_location=self.resolved_artifact_root)

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.resolved_tracking_uri}"
