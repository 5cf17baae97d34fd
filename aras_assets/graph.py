"""The asset graph, declared once: every stage's assets and checks, and the jobs derived from
them. A stage (a job) is one group's assets that share a partitions definition, so adding an
asset to a group puts it in its job, in the UI, in the backfill schedules and in the order
`aras run` follows, with no second registration.

Groups are the pipeline's steps: catalog, patches, splits, segmentation, labels, generation,
captions, evaluation, ablation, report, exchange. They are chosen so stages depend on each other without cycles (a group
holding assets that both feed and follow another partitioning, like tile_catalog and splits
around real_patches, would loop; `stages` says so)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from aras_assets.captions.assets import ASSETS as CAPTION_ASSETS
from aras_assets.evaluation.assets import ASSETS as EVALUATION_ASSETS
from aras_assets.exchange.assets import ASSETS as EXCHANGE_ASSETS
from aras_assets.generation.assets import ASSETS as GENERATION_ASSETS
from aras_assets.operations.checks import CHECKS
from aras_assets.segmentation.assets import ASSETS as SEGMENTATION_ASSETS
from aras_assets.sources.assets import ASSETS as SOURCE_ASSETS
from aras_assets.sources.assets import EXTERNAL

ASSETS: list[dg.AssetsDefinition] = [*SOURCE_ASSETS, *SEGMENTATION_ASSETS, *GENERATION_ASSETS, *CAPTION_ASSETS,
                                     *EVALUATION_ASSETS, *EXCHANGE_ASSETS]
ASSET_CHECKS = CHECKS
EXTERNAL_ASSETS: list[dg.AssetSpec] = EXTERNAL  # the S2 and WorldCover tiles: inputs, never materialized here


@dataclass(frozen=True)
class Stage:
    """Assets of one group with one partitions definition (None: unpartitioned), in graph order."""

    group: str
    partitions_def: dg.PartitionsDefinition | None
    keys: tuple[dg.AssetKey, ...]
    # Partitions one run may take: the least of its assets' backfill policies (1 without one).
    per_run: int = 1

    @property
    def dimension(self) -> str | None:
        """The partition dimension's name (s2_tile, arch, gen_shard), None when unpartitioned."""
        pdef = self.partitions_def
        if pdef is None:
            return None
        return getattr(pdef, "name", None) or _static_name(pdef)


def _static_name(pdef: dg.PartitionsDefinition) -> str:
    from aras_assets.partitions import ABLATION_PARTITIONS, ARCH_PARTITIONS, ablation_partitions, arch_partitions

    if pdef == arch_partitions:
        return ARCH_PARTITIONS
    if pdef == ablation_partitions:
        return ABLATION_PARTITIONS
    raise ValueError(f"partitions {pdef} have no name in aras_assets.partitions")


def _specs(assets: list[dg.AssetsDefinition]) -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for a in assets for spec in a.specs}


def upstream(assets: list[dg.AssetsDefinition]) -> dict[dg.AssetKey, set[dg.AssetKey]]:
    """Each asset's upstream assets within the graph."""
    specs = _specs(assets)
    return {key: {d.asset_key for d in spec.deps if d.asset_key in specs} for key, spec in specs.items()}


def topological_order(assets: list[dg.AssetsDefinition]) -> list[dg.AssetKey]:
    """Assets upstream first; ties keep the declaration order (sources, segmentation, ...)."""
    deps = upstream(assets)
    order: list[dg.AssetKey] = []
    done: set[dg.AssetKey] = set()
    while len(order) < len(deps):
        ready = [k for k in deps if k not in done and deps[k] <= done]
        if not ready:
            raise ValueError(f"the asset graph has a cycle among {sorted(k.to_user_string() for k in deps if k not in done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order


def _per_run(assets: list[dg.AssetsDefinition], keys: list[dg.AssetKey]) -> int:
    limits = []
    for a in assets:
        if set(a.keys) & set(keys):
            policy = a.backfill_policy
            limits.append(1 if policy is None else policy.max_partitions_per_run or 1_000_000)
    return min(limits, default=1)


def stages(assets: list[dg.AssetsDefinition] | None = None) -> list[Stage]:
    """The stages in an order that runs every stage after the ones it reads."""
    assets = ASSETS if assets is None else assets
    specs = _specs(assets)
    deps = upstream(assets)
    members: dict[tuple, list[dg.AssetKey]] = {}
    for key in topological_order(assets):
        spec = specs[key]
        members.setdefault((spec.group_name, spec.partitions_def), []).append(key)
    stage_of = {k: sk for sk, keys in members.items() for k in keys}
    stage_deps = {sk: {stage_of[d] for k in keys for d in deps[k]} - {sk} for sk, keys in members.items()}
    ordered: list[Stage] = []
    placed: set[tuple] = set()
    while len(ordered) < len(members):
        ready = [sk for sk in members if sk not in placed and stage_deps[sk] <= placed]
        if not ready:
            raise ValueError("groups loop through each other's partitions: "
                             + ", ".join(f"{g}/{p}" for g, p in members if (g, p) not in placed))
        group, pdef = ready[0]
        ordered.append(Stage(group, pdef, tuple(members[ready[0]]), _per_run(assets, members[ready[0]])))
        placed.add(ready[0])
    return ordered


def job_name(stage: Stage, all_stages: list[Stage]) -> str:
    """`<group>_job`, or `<group>_<dimension>_job` for a partitioned stage of a group that spans
    several partitionings."""
    shared = sum(1 for s in all_stages if s.group == stage.group) > 1
    return f"{stage.group}_{stage.dimension}_job" if shared and stage.dimension else f"{stage.group}_job"


def stage_jobs(assets: list[dg.AssetsDefinition] | None = None) -> dict[str, tuple[Stage, dg.UnresolvedAssetJobDefinition]]:
    """One job per stage, by name, in stage order."""
    found = stages(assets)
    jobs = {}
    for stage in found:
        name = job_name(stage, found)
        selection = dg.AssetSelection.assets(*stage.keys)
        what = ", ".join(k.to_user_string() for k in stage.keys)
        per = f" for one {stage.dimension} partition" if stage.dimension else ""
        jobs[name] = (stage, dg.define_asset_job(name, selection=selection, partitions_def=stage.partitions_def,
                                                 description=f"The {stage.group} stage{per}: {what}."))
    return jobs


STAGE_JOBS = stage_jobs()
JOBS = [job for _, job in STAGE_JOBS.values()]
