"""Schedules that backfill missing or stale partitions a slice at a time, and the new-tile sensor.

Each partitioned asset named in the `backfill_assets` setting gets a schedule (`<asset>_backfill`,
cron `backfill_cron`, stopped until turned on) that requests at most `backfill_max_partitions`
partitions per tick: missing ones first, then those Dagster reports stale (new code version or
new upstream data). A run key names the asset, the partition and the version the run brings it
to, so no tick repeats work already requested by an earlier tick or in flight. A name that matches
no asset gets a schedule whose ticks skip and say so; an unpartitioned asset fails the load.

The `new_tile_sensor` watches the `tile_source` folder: tiles that are not yet `s2_tile`
partitions are added, the tile catalog is rebuilt when it lacks them, and `real_patches` is
requested once per new tile."""

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import dagster as dg
import polars as pl

# Dagster has no public per-partition stale status (stale_assets_only works per asset, not per
# partition), so the resolver the UI uses is taken from its internals; dagster is pinned.
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from dagster._core.storage.tags import RUN_KEY_TAG
from dagster._time import get_current_datetime

from aras_assets import layout
from aras_assets.errors import BadInputError
from aras_assets.graph import ASSETS, STAGE_JOBS
from aras_assets.partitions import S2_TILE_PARTITIONS
from aras_assets.settings import Settings, SettingsResource, load_settings
from aras_assets.sources.catalog import build_catalog
from resources.storage import StorageResource

catalog_job = STAGE_JOBS["catalog_job"][1]
patches_job = STAGE_JOBS["patches_job"][1]
MISSING = "missing"
STALE = "stale"
REASON_TAG = "aras/backfill_reason"


# --- which partitions a backfill tick requests (plain, no Dagster) ---------------------------------


@dataclass(frozen=True)
class BackfillPick:
    partition: str
    reason: str  # MISSING or STALE
    run_key: str


def backfill_run_key(asset: str, partition: str, code_version: str | None, token: str) -> str:
    """`<asset>:<partition>:<code version>:<missing | hash of what made it stale>`."""
    return f"{asset}:{partition}:{code_version or 'none'}:{token}"


def pick_backfill_partitions(asset: str, partitions: Sequence[str], materialized: Collection[str],
                             in_progress: Collection[str], stale_token: Callable[[str], str | None],
                             code_version: str | None, requested_keys: Collection[str], limit: int) -> list[BackfillPick]:
    """At most `limit` partitions to request: missing ones in partition order, then stale ones.

    A partition being materialized now is left alone, and so is one whose run key was already
    requested (its run is queued, running, or failed for this same version: asking again would
    only repeat it). `stale_token(p)` is None for a fresh partition, else a token that changes
    whenever the partition goes stale for a new reason; it is called lazily, only while the
    slice is not full, because each call reads the event log."""
    if limit < 1:
        return []
    picks: list[BackfillPick] = []
    candidates = [p for p in partitions if p not in in_progress]
    for p in candidates:
        if p in materialized:
            continue
        key = backfill_run_key(asset, p, code_version, MISSING)
        if key not in requested_keys:
            picks.append(BackfillPick(p, MISSING, key))
            if len(picks) == limit:
                return picks
    for p in candidates:
        if p not in materialized:
            continue
        token = stale_token(p)
        if token is None:
            continue
        key = backfill_run_key(asset, p, code_version, token)
        if key not in requested_keys:
            picks.append(BackfillPick(p, STALE, key))
            if len(picks) == limit:
                break
    return picks


# --- the schedule factory -------------------------------------------------------------------------


def _stale_token(resolver: CachingStaleStatusResolver, key: dg.AssetKey, partition: str) -> str | None:
    """None when Dagster says the partition is fresh; else a hash of its current data version
    and of each stale cause with the current data version of the dependency behind it."""
    if resolver.get_status(key, partition) != StaleStatus.STALE:
        return None
    parts = [resolver.get_current_data_version(key, partition).value or ""]
    for cause in resolver.get_stale_causes(key, partition):
        dep = cause.dependency
        dep_version = resolver.get_current_data_version(dep.asset_key, dep.partition_key).value if dep else ""
        parts.append(f"{cause.category.name}|{cause.reason}|{dep}|{dep_version}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _requested_run_keys(instance: dg.DagsterInstance, asset: str) -> set[str]:
    """Every run key of this asset's backfill runs ever launched (one query, distinct values)."""
    keys: set[str] = set()
    for _tag, values in instance.get_run_tags(tag_keys=[RUN_KEY_TAG], value_prefix=f"{asset}:"):
        keys |= values
    return keys


def schedule_name_for(key: dg.AssetKey) -> str:
    return f"{'__'.join(key.path)}_backfill"


def backfill_schedule(key: dg.AssetKey, partitions_def: dg.PartitionsDefinition, cron: str, limit: int,
                      default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
                      ) -> dg.ScheduleDefinition:
    """A schedule requesting at most `limit` missing or stale partitions of one asset per tick."""
    name = schedule_name_for(key)
    asset = key.to_user_string()
    job = dg.define_asset_job(f"{name}_job", selection=dg.AssetSelection.assets(key), partitions_def=partitions_def,
                              description=f"Backfill slices of {asset} (launched by the {name} schedule).")

    @dg.schedule(name=name, cron_schedule=cron, job=job, default_status=default_status,
                 description=f"Each tick requests up to {limit} missing or stale partitions of {asset}.")
    def _backfill(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        instance = context.instance
        partitions = list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
        if not partitions:
            return dg.SkipReason(f"{asset} has no partitions yet")
        asset_graph = context.repository_def.asset_graph
        status = instance.get_status_by_partition(key, partitions, partitions_def) or {}
        in_progress = {p for p, s in status.items() if s == AssetPartitionStatus.IN_PROGRESS}
        materialized = set(instance.get_materialized_partitions(key))
        view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                              instance=instance, asset_graph=asset_graph)
        resolver = CachingStaleStatusResolver(instance, asset_graph, view)
        picks = pick_backfill_partitions(asset, partitions, materialized, in_progress,
                                         lambda p: _stale_token(resolver, key, p), asset_graph.get(key).code_version,
                                         _requested_run_keys(instance, asset), limit)
        if not picks:
            return dg.SkipReason(f"{asset}: nothing to request ({len(materialized)} of {len(partitions)} partitions "
                                 f"materialized, {len(in_progress)} in progress; the rest fresh or already requested)")
        context.log.info(f"{asset}: requesting {[(p.partition, p.reason) for p in picks]}")
        return [dg.RunRequest(run_key=p.run_key, partition_key=p.partition, tags={REASON_TAG: p.reason})
                for p in picks]

    return _backfill


def unknown_asset_schedule(name: str, cron: str, partitioned: Iterable[str]) -> dg.ScheduleDefinition:
    """The schedule for a backfill_assets name that matches no asset: every tick skips and says why.
    (Not a load error: the definitions, the UI and every other schedule keep working.)"""
    key = dg.AssetKey.from_user_string(name)
    sched_name = schedule_name_for(key)
    reason = (f"setting backfill_assets names {name!r}, which matches no asset in these definitions; "
              f"partitioned assets: {', '.join(sorted(partitioned))}")
    job = dg.define_asset_job(f"{sched_name}_job", selection=dg.AssetSelection.assets(),
                              description=f"Empty: {reason}.")

    @dg.schedule(name=sched_name, cron_schedule=cron, job=job, default_status=dg.DefaultScheduleStatus.STOPPED,
                 description=reason)
    def _skip(context: dg.ScheduleEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason(reason)

    return _skip


def backfill_schedules(names: Iterable[str], assets: Iterable[dg.AssetsDefinition], cron: str,
                       limit: int) -> list[dg.ScheduleDefinition]:
    """One schedule per asset name. An unpartitioned asset has no partitions to backfill and fails the
    definitions load; a name that matches no asset gets a schedule whose ticks skip, saying so."""
    partitioned: dict[str, tuple[dg.AssetKey, dg.PartitionsDefinition]] = {}
    unpartitioned: set[str] = set()
    for assets_def in assets:
        for key in assets_def.keys:
            pdef = assets_def.specs_by_key[key].partitions_def
            if pdef is None:
                unpartitioned.add(key.to_user_string())
            else:
                partitioned[key.to_user_string()] = (key, pdef)
    names = list(dict.fromkeys(names))
    flat = [n for n in names if n in unpartitioned]
    if flat:
        raise ValueError(f"setting backfill_assets names {flat}, which are not partitioned: nothing to backfill; "
                         f"partitioned assets: {', '.join(sorted(partitioned))}")
    return [backfill_schedule(*partitioned[n], cron, limit) if n in partitioned
            else unknown_asset_schedule(n, cron, partitioned) for n in names]


# --- the new-tile sensor ------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePlan:
    add: list[str]  # tiles to register as s2_tile partitions
    ready: list[str]  # new tiles the catalog lists: request real_patches
    waiting: list[str]  # new tiles the catalog lacks yet: rebuild the catalog first; kept in the cursor


def plan_new_tiles(folder_tiles: Collection[str], registered: Collection[str], catalog_tiles: Collection[str],
                   pending: Collection[str]) -> TilePlan:
    """New tiles (in the folder, not yet partitions) are added once; each new tile's patches are
    requested as soon as the catalog lists it (real_patches reads the tile's row there).
    `pending` are new tiles of earlier ticks still waiting for the catalog. Tiles registered some
    other way (tile_catalog itself) are not new here: the backfill schedule covers their patches."""
    folder = set(folder_tiles)
    add = sorted(folder - set(registered))
    new = (set(pending) | set(add)) & folder  # a tile removed from the folder is dropped
    ready = sorted(new & set(catalog_tiles))
    return TilePlan(add=add, ready=ready, waiting=sorted(new - set(ready)))


def folder_tiles(s: Settings, storage: StorageResource) -> list[str]:
    """S2 tiles of the tile source folder inside the bounding box, as tile_catalog would list them."""
    catalog = build_catalog(s.bbox_footprint, s.tile_source, storage.resolve(s.tile_source), s.s2_uri_template,
                            s.wc_uri_template)
    return catalog["s2_tile"].to_list()


def catalog_tiles(storage: StorageResource) -> set[str]:
    path = storage.path(layout.CATALOG)
    return set(pl.read_parquet(path, columns=["s2_tile"])["s2_tile"]) if path.exists() else set()


def read_cursor(cursor: str | None) -> list[str]:
    return list(json.loads(cursor).get("pending", [])) if cursor else []


@dg.sensor(name="new_tile_sensor", jobs=[catalog_job, patches_job], minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Adds s2_tile partitions for new tiles in the tile source folder and cuts their patches.")
def new_tile_sensor(context: dg.SensorEvaluationContext, settings: SettingsResource,
                    storage: StorageResource) -> dg.SensorResult | dg.SkipReason:
    s = settings.get()
    if s.tile_source == "templates":
        return dg.SkipReason("tile_source is 'templates': there is no folder to watch")
    try:
        tiles = folder_tiles(s, storage)
    except (BadInputError, OSError) as exc:  # e.g. a file still being copied: try again next tick
        return dg.SkipReason(f"cannot list tiles in {storage.resolve(s.tile_source)}: {exc}")
    registered = context.instance.get_dynamic_partitions(S2_TILE_PARTITIONS)
    plan = plan_new_tiles(tiles, registered, catalog_tiles(storage), read_cursor(context.cursor))
    runs = [dg.RunRequest(job_name=patches_job.name, partition_key=t, run_key=f"new-tile:real_patches:{t}")
            for t in plan.ready]
    if plan.waiting:
        # Keyed by the folder's tile set: one catalog rebuild per change of the folder.
        digest = hashlib.sha256(",".join(sorted(tiles)).encode()).hexdigest()[:12]
        runs.append(dg.RunRequest(job_name=catalog_job.name, run_key=f"new-tile:tile_catalog:{digest}"))
    cursor = json.dumps({"pending": plan.waiting})
    if not plan.add and not runs:
        context.update_cursor(cursor)
        return dg.SkipReason(f"no new tiles among the {len(tiles)} in the folder")
    context.log.info(f"new tiles {plan.add}; patches requested for {plan.ready}; waiting for the catalog: {plan.waiting}")
    adds = [dg.AddDynamicPartitionsRequest(S2_TILE_PARTITIONS, plan.add)] if plan.add else []
    return dg.SensorResult(run_requests=runs, cursor=cursor, dynamic_partitions_requests=adds)


def schedules_from_settings(s: Settings | None = None,
                            assets: Iterable[dg.AssetsDefinition] | None = None) -> list[dg.ScheduleDefinition]:
    s = s or load_settings()
    return backfill_schedules(s.backfill_assets, ASSETS if assets is None else assets, s.backfill_cron,
                              s.backfill_max_partitions)


SCHEDULES: list[dg.ScheduleDefinition] = schedules_from_settings()
SENSORS: list[dg.SensorDefinition] = [new_tile_sensor]
