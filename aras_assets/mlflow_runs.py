"""MLflow runs of the training stages and what they leave behind: one run per training (a
resumed training reopens its run), ended FINISHED on success and FAILED on any exception; the
tags every run and version carries; metrics and images logged to it; the network registered
as a new model version with our checkpoint beside it; and an alias moved onto one version.

Stage-specific choices (model names, which version deserves an alias) stay with the stages;
this module knows only MLflow. The client is an `mlflow.MlflowClient` (the MLflow resource
hands one out)."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aras_assets.errors import BadInputError

if TYPE_CHECKING:  # only the annotations need torch; readers of runs should not pay for it
    import torch

CHECKPOINT_FILE = "checkpoint.pt"  # our checkpoint's name inside every registered version
PROJECT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def source_commit() -> str:
    """The commit of the code that trains, when it runs from a git checkout; "unknown" otherwise."""
    try:
        found = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, text=True,
                               timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = found.stdout.strip()
    return commit if found.returncode == 0 and len(commit) == 40 else "unknown"


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
    """No registered model (or none with our checkpoint) where one was needed."""


@dataclass(frozen=True)
class RunOrigin:
    """What produced a run: the Dagster run and asset (and partition, if any) and the content
    version of the splits it trained on. Its tags go on the run and on the registered version;
    keyword arguments add stage-specific `aras.<key>` tags."""

    dagster_run_id: str
    asset_key: str
    splits_version: str
    partition: str | None = None

    def run_tags(self, **aras: str) -> dict[str, str]:
        tags = {"dagster.run_id": self.dagster_run_id, "dagster.asset_key": self.asset_key}
        if self.partition is not None:
            tags["dagster.partition"] = self.partition
        return {**tags, "aras.splits_version": self.splits_version, "mlflow.source.git.commit": source_commit(),
                **{f"aras.{k}": v for k, v in aras.items()}}

    def version_tags(self, **aras: str) -> dict[str, str]:
        return {"dagster.run_id": self.dagster_run_id, "aras.splits_version": self.splits_version,
                "aras.source_commit": source_commit(), **{f"aras.{k}": v for k, v in aras.items()}}


def use_store(tracking_uri: str) -> None:
    """Point the fluent mlflow API (model logging, artifact download) at our store."""
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


@contextmanager
def tracked_run(client: Any, experiment_id: str, resume_run_id: str | None, name: str, tags: Mapping[str, str],
                params: Mapping[str, Any]) -> Iterator[str]:
    """The run's id, for the block that trains and registers; the run ends FINISHED when the
    block does, FAILED when anything escapes it (an interrupt too, so no run stays RUNNING)."""
    run_id = start_run(client, experiment_id, resume_run_id, name, tags, params)
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, float | None], step: int | None = None) -> None:
    """Numbers only: a None or NaN (an absent class has no score) is left out rather than logged as 0."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, int | float) and math.isfinite(v)]
    client.log_batch(run_id, metrics=batch)


def log_image(client: Any, run_id: str, png: bytes, artifact_file: str, scratch: Path) -> None:
    path = scratch / Path(artifact_file).name
    path.write_bytes(png)
    client.log_artifact(run_id, str(path), str(Path(artifact_file).parent) if "/" in artifact_file else None)


def log_dataset(client: Any, run_id: str, name: str, digest: str, source: Path, context: str = "training") -> None:
    """Record a dataset the run read (MLflow's run inputs): its name, content digest and where it lies."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest[:36], source_type="local", source=json.dumps({"uri": source.as_uri()}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])


def register_version(tracking_uri: str, run_id: str, model: torch.nn.Module, checkpoint: Path, name: str,
                     tags: Mapping[str, str], requirements: tuple[str, ...], score: float = math.nan,
                     description: str = "", model_description: str = "", input_example: Any = None) -> ModelVersionRef:
    """Log the network (pytorch flavour, loadable with mlflow.pytorch.load_model) with our
    checkpoint as an extra file, register it as a new version of `name` and tag the version.
    An `input_example` (a numpy batch) is stored with the model and gives it its signature;
    `description` describes the version, `model_description` the registered model."""
    import mlflow

    use_store(tracking_uri)
    staged = checkpoint.parent / CHECKPOINT_FILE  # the file keeps one name inside every version
    staged.write_bytes(checkpoint.read_bytes())
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(model.cpu().eval(), name="model", serialization_format="pickle",
                                            extra_files=[str(staged)], registered_model_name=name,
                                            pip_requirements=list(requirements), input_example=input_example)
    finally:
        staged.unlink(missing_ok=True)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if description:
        client.update_model_version(name, version, description=description)
    if model_description:
        client.update_registered_model(name, description=model_description)
    return ModelVersionRef(name, version, run_id, score)


def move_alias(client: Any, alias: str, to: ModelVersionRef, others: Iterable[str]) -> ModelVersionRef:
    """Put `alias` on `to` and take it off the registered models `others` (an alias is per
    registered model, so one that names the best of several models must leave the rest). Set
    first, then taken off: a reader in between finds the alias twice, never nowhere."""
    client.set_registered_model_alias(to.name, alias, to.version)
    for name in set(others) - {to.name}:
        try:
            client.delete_registered_model_alias(name, alias)
        except Exception:  # the alias was not set there
            pass
    return to


def promote_lowest(client: Any, name: str, tag: str, alias: str = "champion") -> ModelVersionRef | None:
    """Put `alias` on the version of `name` with the lowest number in its `tag` (a generator's
    FID: lower is better), as segmentation's champion goes to the best score. None when no
    version has a finite value there."""
    scored = []
    for version in client.search_model_versions(filter_string=f"name = '{name}'"):
        try:
            value = float(version.tags.get(tag, "nan"))
        except ValueError:
            continue
        if math.isfinite(value):
            scored.append(ModelVersionRef(name, str(version.version), version.run_id or "", value))
    if not scored:
        return None
    best = min(scored, key=lambda v: (v.score, -int(v.version)))  # ties go to the newer version
    return move_alias(client, alias, best, ())


def download_checkpoint(tracking_uri: str, ref: ModelVersionRef, folder: Path) -> Path:
    """Our checkpoint file of a registered version (a copy for the local artifact store)."""
    import mlflow

    use_store(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{ref.uri}/extra_files/{CHECKPOINT_FILE}",
                                                     dst_path=str(folder)))
    if not local.is_file():
        raise NoModelError(f"{ref} has no {CHECKPOINT_FILE} among its artifacts")
    return local
