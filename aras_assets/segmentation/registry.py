"""Segmentation models in the MLflow registry: one registered model per architecture
(aras-segmentation-<arch>), each training a new version tagged with its validation macro F1,
the `champion` alias on the best version across architectures, and how a label names a
version. The run lifecycle, logging and registration themselves are in aras_assets.mlflow_runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from aras_assets.mlflow_runs import ModelVersionRef, NoModelError, move_alias, register_version

MODEL_PREFIX = "aras-segmentation-"
CHAMPION = "champion"
SELECTION_METRIC = "val_f1_pct"  # a version tag: the validation macro F1 in percent, as every report
REQUIREMENTS = ("torch", "segmentation-models-pytorch")


def model_name(arch: str) -> str:
    return f"{MODEL_PREFIX}{arch}"


def register_model(tracking_uri: str, run_id: str, model: torch.nn.Module, checkpoint: Path, arch: str,
                   score: float, tags: Mapping[str, str], description: str = "", input_example: Any = None) -> ModelVersionRef:
    """Register a segmentation network as a new version of aras-segmentation-<arch>, tagged
    with its validation score (the champion is chosen by it); `input_example` gives the model
    its signature (a float32 batch of normalized RGB patches in, class logits out)."""
    return register_version(tracking_uri, run_id, model, checkpoint, model_name(arch),
                            {SELECTION_METRIC: f"{score:.6f}", **tags}, REQUIREMENTS, score=score,
                            description=description, input_example=input_example,
                            model_description=f"{arch} segmentation of the 7 ARAS land-cover classes (tree, shrub, grass, "
                                              "crop, built-up, barren, water) from 256x256 RGB patches normalized as the "
                                              "patches are; the output is one logit map per class.")


def segmentation_versions(client: Any) -> list[ModelVersionRef]:
    """Every registered version of every architecture, with its validation score."""
    found = []
    for model in client.search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'"):
        for version in client.search_model_versions(f"name = '{model.name}'"):
            score = float(version.tags.get(SELECTION_METRIC, "nan"))
            found.append(ModelVersionRef(model.name, str(version.version), version.run_id or "", score))
    return found


def promote_champion(client: Any, rounds: int = 8) -> ModelVersionRef:
    """Put `champion` on the version with the best validation macro F1 across architectures,
    and take it off every other model (an alias is per registered model).

    Architectures that train at once register and promote at once: a promoter that read the
    versions before another registered a better one would leave the alias on a stale pick. So
    after moving the alias each promoter reads the versions again and moves it again while the
    best changed; the last promoter to finish has seen every version registered before it."""
    moved: ModelVersionRef | None = None
    for _ in range(rounds):
        versions = [v for v in segmentation_versions(client) if not math.isnan(v.score)]
        if not versions:
            raise NoModelError("no segmentation model versions with a validation score are registered")
        best = max(versions, key=lambda v: (v.score, v.name, int(v.version)))
        if moved is not None and (best.name, best.version) == (moved.name, moved.version):
            return moved
        moved = move_alias(client, CHAMPION, best, {v.name for v in versions})
    assert moved is not None
    return moved


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

