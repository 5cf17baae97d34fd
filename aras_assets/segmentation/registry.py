"""MLflow bookkeeping of segmentation models: one run per training, the model logged in the
pytorch flavour with our checkpoint beside it, a registered version per training, and the
`champion` alias on the best version by validation macro F1 across architectures."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aras_assets.errors import BadInputError

MODEL_PREFIX = "aras-segmentation-"
CHAMPION = "champion"
CHECKPOINT_FILE = "checkpoint.pt"
SELECTION_METRIC = "val_f1"


def model_name(arch: str) -> str:
    return f"{MODEL_PREFIX}{arch}"


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str = ""
    score: float = math.nan

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


class NoModelError(BadInputError, LookupError):
    """No registered segmentation model where one was needed."""


def _use(tracking_uri: str) -> None:
    import mlflow

    # A local copy takes milliseconds; its progress bars would only clutter the logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def start_run(client: Any, experiment_id: str, run_id: str | None, run_name: str, tags: Mapping[str, str],
              params: Mapping[str, Any]) -> str:
    """Reopen `run_id` (a resumed training keeps its run) or create a new run."""
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            return run_id
        except Exception:  # the run is gone (another tracking store): start a new one
            pass
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, int | float)]
    client.log_batch(run_id, metrics=batch)


def log_image(client: Any, run_id: str, png: bytes, artifact_file: str, scratch: Path) -> None:
    path = scratch / Path(artifact_file).name
    path.write_bytes(png)
    client.log_artifact(run_id, str(path), str(Path(artifact_file).parent) if "/" in artifact_file else None)


def register_model(tracking_uri: str, run_id: str, model: torch.nn.Module, checkpoint: Path, arch: str,
                   score: float, tags: Mapping[str, str]) -> ModelVersionRef:
    """Register a segmentation network as a new version of aras-segmentation-<arch>, tagged
    with its validation score (the champion is chosen by it)."""
    return log_and_register(tracking_uri, run_id, model, checkpoint, model_name(arch),
                            {SELECTION_METRIC: f"{score:.6f}", **tags}, score=score)


def log_and_register(tracking_uri: str, run_id: str, model: torch.nn.Module, checkpoint: Path, name: str,
                     tags: Mapping[str, str], score: float = float("nan"),
                     requirements: tuple[str, ...] = ("torch", "segmentation-models-pytorch")) -> ModelVersionRef:
    """Log the network (pytorch flavour, loadable with mlflow.pytorch.load_model) with our
    checkpoint as an extra file, and register it as a new version of `name`."""
    import mlflow

    _use(tracking_uri)
    staged = checkpoint.parent / CHECKPOINT_FILE  # the file keeps one name inside every version
    staged.write_bytes(checkpoint.read_bytes())
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(model.cpu().eval(), name="model", serialization_format="pickle",
                                            extra_files=[str(staged)], registered_model_name=name,
                                            pip_requirements=list(requirements))
    finally:
        staged.unlink(missing_ok=True)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return ModelVersionRef(name, version, run_id, score)


def segmentation_versions(client: Any) -> list[ModelVersionRef]:
    """Every registered version of every architecture, with its validation score."""
    found = []
    for model in client.search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'"):
        for version in client.search_model_versions(f"name = '{model.name}'"):
            score = float(version.tags.get(SELECTION_METRIC, "nan"))
            found.append(ModelVersionRef(model.name, str(version.version), version.run_id or "", score))
    return found


def promote_champion(client: Any) -> ModelVersionRef:
    """Put `champion` on the version with the best validation macro F1 across architectures,
    and take it off every other model (an alias is per registered model)."""
    versions = [v for v in segmentation_versions(client) if not math.isnan(v.score)]
    if not versions:
        raise NoModelError("no segmentation model versions with a validation score are registered")
    best = max(versions, key=lambda v: (v.score, v.name, int(v.version)))
    for name in {v.name for v in versions} - {best.name}:
        try:
            client.delete_registered_model_alias(name, CHAMPION)
        except Exception:  # the alias was not set there
            pass
    client.set_registered_model_alias(best.name, CHAMPION, best.version)
    return best


def find_champion(client: Any) -> ModelVersionRef:
    for model in client.search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'"):
        if CHAMPION in (model.aliases or {}):
            version = client.get_model_version_by_alias(model.name, CHAMPION)
            return ModelVersionRef(model.name, str(version.version), version.run_id or "",
                                   float(version.tags.get(SELECTION_METRIC, "nan")))
    raise NoModelError("no segmentation model holds the 'champion' alias: materialize segmentation_model "
                       "for at least one architecture first")


def resolve_version(client: Any, reference: str) -> ModelVersionRef:
    """`champion`, `<arch>` (its newest version), `<arch or name>/<version>` or `<arch or name>@<alias>`."""
    if reference in ("", CHAMPION):
        return find_champion(client)
    name, _, version = reference.partition("/")
    alias = ""
    if "@" in name:
        name, alias = name.split("@", 1)
    if not name.startswith(MODEL_PREFIX):
        name = model_name(name)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version:
            mv = client.get_model_version(name, version)
        else:  # an architecture alone: its newest version
            mv = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    except Exception as exc:
        raise NoModelError(f"no registered model version {reference!r}; registered: {_registered(client)}") from exc
    return ModelVersionRef(name, str(mv.version), mv.run_id or "", float(mv.tags.get(SELECTION_METRIC, "nan")))


def _registered(client: Any) -> str:
    """The segmentation versions a reference may name, for an error message."""
    try:
        refs = segmentation_versions(client)
    except Exception:  # the message is a hint; the store may be the problem
        return "(the registry cannot be listed)"
    shown = ", ".join(f"{r.name.removeprefix(MODEL_PREFIX)}/{r.version}" for r in refs[:12])
    return (shown + (", ..." if len(refs) > 12 else "")) if refs else "none (materialize segmentation_model first)"


def download_checkpoint(tracking_uri: str, ref: ModelVersionRef, folder: Path) -> Path:
    """Our checkpoint file of a registered version (a copy for the local artifact store)."""
    import mlflow

    _use(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{ref.uri}/extra_files/{CHECKPOINT_FILE}",
                                                     dst_path=str(folder)))
    if not local.is_file():
        raise NoModelError(f"{ref} has no {CHECKPOINT_FILE} among its artifacts")
    return local
