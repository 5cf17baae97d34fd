"""MLflow tracking: a resource around MlflowClient with a local sqlite store by default, or the
deployment's (PostgreSQL under ARAS_DEPLOY=postgres or k8s, aras_assets/deploy.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from resources.storage import default_data_root

# MLflow's UI opens an experiment on the view its kind names: ours holds training runs, so it opens
# on the runs table (not on GenAI traces, nor on a prompt asking for the kind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: "custom_model_development",
    "mlflow.note.content": ("ARAS training runs: one per segmentation architecture and per GAN materialization, "
                            "tagged with the Dagster run, asset and partition and the splits' data version."),
}


SQLITE_PREFIX = "sqlite:///"
_READY: set[Path] = set()  # sqlite stores this process has opened


def _sqlite_store_ready(uri: str, db: Path) -> None:
    """MLflow creates and migrates a sqlite store when a process first opens it. Runs that start
    at once on a new data root would all do it, and all but one fail ("duplicate column name"):
    the first opening in each process happens here, one process at a time."""
    if db in _READY:
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f"{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # the tracking store's tables
        client.search_registered_models(max_results=1)  # the registry's
    _READY.add(db)


class MlflowResource(dg.ConfigurableResource):
    """Tracking store `tracking_uri` (default: the deployment's, else a sqlite file under the data root) and artifacts
    under `artifact_root`, so `mlflow ui --backend-store-uri <same uri>` shows everything."""

    tracking_uri: str = ""
    artifact_root: str = ""
    experiment: str = "aras"
    ui_url: str = "http://127.0.0.1:5000"  # where `mlflow ui` serves: the base of the run and model links in metadata

    def _folder(self) -> Path:
        return Path(default_data_root()).resolve() / "mlflow"

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        from aras_assets import deploy

        deployed = deploy.mlflow_tracking_uri()
        if deployed:
            return deployed
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    @property
    def resolved_artifact_root(self) -> str:
        return self.artifact_root or (self._folder() / "artifacts").as_uri()

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        uri = self.resolved_tracking_uri
        if uri.startswith(SQLITE_PREFIX):
            _sqlite_store_ready(uri, Path(uri.removeprefix(SQLITE_PREFIX)))
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def experiment_id(self, name: str | None = None) -> str:
        """The experiment's id, creating it with the configured artifact root if missing."""
        client = self.client()
        name = name or self.experiment
        found = client.get_experiment_by_name(name)
        if found is None:
            from mlflow.exceptions import MlflowException

            try:
                return client.create_experiment(name, artifact_location=self.resolved_artifact_root, tags=EXPERIMENT_TAGS)
            except MlflowException:  # another run made it at the same moment
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older version: a kind set by hand stays
            for key, value in EXPERIMENT_TAGS.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id

    def ui_command(self) -> str:
        from urllib.parse import urlsplit

        from aras_assets import deploy

        where = urlsplit(self.ui_url)
        # a deployment's store URL holds its password: the command names the variable instead
        store = f'"${deploy.MLFLOW_URI_ENV}"' if not self.tracking_uri and deploy.mlflow_tracking_uri() else \
            self.resolved_tracking_uri
        return (f"mlflow ui --backend-store-uri {store} --host {where.hostname or '127.0.0.1'} "
                f"--port {where.port or 5000}")

    def run_url(self, run_id: str) -> dg.MetadataValue:
        """A link to the run's page in the MLflow UI."""
        experiment = self.client().get_run(run_id).info.experiment_id
        return dg.MetadataValue.url(f"{self.ui_url.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}")

    def model_version_url(self, name: str, version: str) -> dg.MetadataValue:
        """A link to a registered model version's page in the MLflow UI."""
        return dg.MetadataValue.url(f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}")
