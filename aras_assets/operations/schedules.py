"""Schedules that backfill missing or stale partitions a slice at a time, and the new-tile sensor.

`backfill_schedules(assets)` makes one schedule per partitioned asset (`<asset>_backfill`, stopped
until turned on in the UI). The schedules tick every minute and read the settings at each tick, so a
changed profile, `--set` or launchpad value counts from the next tick. A tick does nothing unless its
asset is named in `backfill_assets` and its minute (UTC) matches `backfill_cron`; then it requests at
most `backfill_max_partitions` partitions: missing ones first, then stale ones. A partition is stale
when its last materialization was made by another code version of the asset, or from other data of
an upstream asset than that upstream holds now; both are read from the code-version and input
data-version tags Dagster writes on every materialization. A run key names the asset, the partition
and the version the run brings it to, so no tick repeats work already requested or in flight. A
`backfill_assets` name that is no partitioned asset fails every tick, naming it. Schedules of
gen_shard assets first register the shards that `gen_shards` asks for, so raising it is enough.

The `new_tile_sensor` watches the `tile_source` folder: tiles that are not yet `s2_tile`
partitions are added, the tile catalog is rebuilt when it lacks them, and `real_patches` is
requested once per new tile."""

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from aras_assets import layout
from aras_assets.cron import parse_cron
from aras_assets.errors import BadInputError
from aras_assets.graph import STAGE_JOBS
from aras_assets.partitions import GEN_SHARD_PARTITIONS, S2_TILE_PARTITIONS, register_gen_shards
from aras_assets.settings import Settings, SettingsResource
from aras_assets.sources.catalog import build_catalog
from resources.storage import StorageResource

catalog_job = STAGE_JOBS["catalog_job"][1]
patches_job = STAGE_JOBS["patches_job"][1]

MISSING = "missing"
STALE = "stale"
REASON_TAG = "aras/backfill_reason"
# Tags Dagster writes on runs and materializations; it exports no public names for them.
RUN_KEY_TAG = "dagster/run_key"
PARTITION_TAG = "dagster/partition"
CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version/"  # followed by the upstream asset key
# The input data version Dagster records for an upstream that was never materialized.
INITIAL_DATA_VERSION = "INITIAL"
# Dagster records a partitioned input as a hash of the data versions of the upstream partitions
# it maps to, unless it maps to this many or more: then as the upstream's latest data version.
PARTITION_HASH_LIMIT = 100
# A compiled schedule's cron cannot follow a setting, so the schedules tick every minute and each
# tick checks its minute against `backfill_cron`.
TICK_CRON = "* * * * *"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


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
    slice is not full."""
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


def check_backfill_assets(names: Iterable[str], partitioned: Collection[str], unpartitioned: Collection[str]) -> None:
    """Refuse a `backfill_assets` name that is no partitioned asset: a typo must not pass unnoticed."""
    bad = [f"{n!r} ({'not partitioned' if n in unpartitioned else 'no such asset'})" for n in names
           if n not in partitioned]
    if bad:
        raise ValueError(f"setting backfill_assets names {', '.join(bad)}; only partitioned assets can be backfilled: "
                         f"{', '.join(sorted(partitioned))}")


def cron_skip_reason(cron: str, when: datetime) -> str | None:
    """None when the minute of `when` matches `cron`; else why the tick waits and until when."""
    parsed = parse_cron(cron)
    if parsed.matches(when):
        return None
    following = parsed.next_after(when)
    upcoming = f"next at {following:%Y-%m-%d %H:%M} UTC" if following else "no date ever matches it"
    return f"{when:%Y-%m-%d %H:%M} UTC does not match backfill_cron {cron!r}; {upcoming}"


# --- staleness from the tags of materializations ----------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    key: dg.AssetKey
    partitions_def: dg.PartitionsDefinition | None
    mapping: dg.PartitionMapping  # downstream partition -> upstream partitions


@dataclass(frozen=True)
class BackfillTarget:
    """A partitioned asset, with what decides whether one of its partitions is stale."""

    key: dg.AssetKey
    partitions_def: dg.PartitionsDefinition
    code_version: str | None
    upstreams: tuple[Upstream, ...]

    @property
    def name(self) -> str:
        return self.key.to_user_string()


@dataclass
class Materializations:
    """The tags of the latest materializations the tick needs, each asset read at most once per tick."""

    instance: dg.DagsterInstance
    _by_partition: dict[dg.AssetKey, dict[str, Mapping[str, str]]] = field(default_factory=dict, init=False)
    _latest: dict[dg.AssetKey, Mapping[str, str] | None] = field(default_factory=dict, init=False)
    _mapped: dict[tuple[dg.AssetKey, str | None], list[str]] = field(default_factory=dict, init=False)

    def by_partition(self, key: dg.AssetKey) -> dict[str, Mapping[str, str]]:
        """Partition -> tags of its latest materialization, for every materialized partition."""
        if key not in self._by_partition:
            ids = self.instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)).records if ids else []
            self._by_partition[key] = {r.partition_key: dict(r.asset_materialization.tags or {}) for r in records
                                       if r.partition_key is not None and r.asset_materialization is not None}
        return self._by_partition[key]

    def latest(self, key: dg.AssetKey) -> Mapping[str, str] | None:
        """Tags of the asset's latest materialization of any partition; None if it has none."""
        if key not in self._latest:
            entry = self.instance.get_latest_materialization_event(key)
            self._latest[key] = None if entry is None else dict(entry.tags or {})
        return self._latest[key]

    def mapped(self, upstream: Upstream, downstream: dg.PartitionsDefinition, partition: str) -> list[str]:
        # An all-partitions mapping gives the same answer for every downstream partition: ask once.
        cache_key = (upstream.key, None if isinstance(upstream.mapping, dg.AllPartitionMapping) else partition)
        if cache_key not in self._mapped:
            assert upstream.partitions_def is not None
            result = upstream.mapping.get_upstream_mapped_partitions_result_for_partitions(
                downstream.subset_with_partition_keys([partition]), downstream, upstream.partitions_def,
                dynamic_partitions_store=self.instance)
            self._mapped[cache_key] = sorted(result.partitions_subset.get_partition_keys())
        return self._mapped[cache_key]

    def input_data_version(self, upstream: Upstream, downstream: dg.PartitionsDefinition, partition: str) -> str:
        """The input data version Dagster would record for `upstream` if `partition` were materialized now
        (the same rules Dagster applies when it writes the input data-version tag)."""
        latest = self.latest(upstream.key)
        if latest is None:
            return INITIAL_DATA_VERSION
        if upstream.partitions_def is not None:
            keys = self.mapped(upstream, downstream, partition)
            if len(keys) < PARTITION_HASH_LIMIT:
                tags = self.by_partition(upstream.key)
                versions = [tags[k][DATA_VERSION_TAG] for k in keys if DATA_VERSION_TAG in tags.get(k, {})]
                return hashlib.sha256("".join(versions).encode()).hexdigest()
        return latest.get(DATA_VERSION_TAG) or INITIAL_DATA_VERSION


def stale_causes(target: BackfillTarget, partition: str, mats: Materializations) -> list[str]:
    """Why the partition's latest materialization is out of date; empty when it is fresh."""
    tags = mats.by_partition(target.key).get(partition, {})
    if CODE_VERSION_TAG not in tags:
        return []  # not made by a Dagster step (reported, or older than data versions): nothing to compare
    causes = []
    if target.code_version is not None and tags[CODE_VERSION_TAG] != target.code_version:
        causes.append(f"code version {tags[CODE_VERSION_TAG]} -> {target.code_version}")
    recorded = {k.removeprefix(INPUT_DATA_VERSION_TAG): v for k, v in tags.items() if k.startswith(INPUT_DATA_VERSION_TAG)}
    for upstream in target.upstreams:
        name = upstream.key.to_user_string()
        current = mats.input_data_version(upstream, target.partitions_def, partition)
        if name not in recorded:
            causes.append(f"new dependency {name} at {current}")
        elif recorded[name] != current:
            causes.append(f"{name} data {recorded[name]} -> {current}")
    causes += [f"dependency {name} removed" for name in sorted(set(recorded) - {u.key.to_user_string()
                                                                                for u in target.upstreams})]
    return causes


def stale_token(target: BackfillTarget, partition: str, mats: Materializations) -> str | None:
    """None for a fresh partition; else a hash of its data version and its stale causes (with the
    current versions in them), so the token changes whenever it goes stale for a new reason."""
    causes = stale_causes(target, partition, mats)
    if not causes:
        return None
    version = mats.by_partition(target.key)[partition].get(DATA_VERSION_TAG, "")
    return hashlib.sha256("\n".join([version, *causes]).encode()).hexdigest()[:12]


def in_flight_partitions(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Sequence[str]) -> set[str]:
    """Partitions of the asset that a queued or running run targets. A run of a whole job (no asset
    selection) counts too: which assets the job holds is not public, and waiting a tick costs little."""
    records = instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT, tags={PARTITION_TAG: list(partitions)}))
    return {r.dagster_run.tags[PARTITION_TAG] for r in records
            if r.dagster_run.asset_selection is None or key in r.dagster_run.asset_selection}


def requested_run_keys(instance: dg.DagsterInstance, asset: str) -> set[str]:
    """Every run key of this asset's backfill runs ever launched (one query, distinct values)."""
    keys: set[str] = set()
    for _tag, values in instance.get_run_tags(tag_keys=[RUN_KEY_TAG], value_prefix=f"{asset}:"):
        keys |= values
    return keys


# --- the schedules ----------------------------------------------------------------------------------


def partition_mapping(assets_def: dg.AssetsDefinition, dep: dg.AssetDep) -> dg.PartitionMapping:
    # `is None`, not `or`: AllPartitionMapping is an empty named tuple, hence falsy.
    for mapping in (dep.partition_mapping, assets_def.get_partition_mapping(dep.asset_key)):
        if mapping is not None:
            return mapping
    # None given: identity, Dagster's default between two partitioned assets that are neither
    # time-windowed nor multi-dimensional (none here are).
    return dg.IdentityPartitionMapping()


def backfill_targets(assets: Iterable[object]) -> tuple[list[BackfillTarget], list[str]]:
    """The partitioned assets among `assets`, and the names of the unpartitioned ones."""
    defs = [a for a in assets if isinstance(a, dg.AssetsDefinition)]
    partitions_defs = {key: spec.partitions_def for a in defs for key, spec in a.specs_by_key.items()}
    targets: list[BackfillTarget] = []
    unpartitioned: list[str] = []
    for assets_def in defs:
        for key, spec in assets_def.specs_by_key.items():
            if spec.partitions_def is None:
                unpartitioned.append(key.to_user_string())
                continue
            upstreams = tuple(Upstream(dep.asset_key, partitions_defs.get(dep.asset_key), partition_mapping(assets_def, dep))
                              for dep in spec.deps)
            targets.append(BackfillTarget(key, spec.partitions_def, spec.code_version, upstreams))
    return targets, unpartitioned


def is_gen_shard(partitions_def: dg.PartitionsDefinition) -> bool:
    return isinstance(partitions_def, dg.DynamicPartitionsDefinition) and partitions_def.name == GEN_SHARD_PARTITIONS


def backfill_tick(context: dg.ScheduleEvaluationContext, target: BackfillTarget,
                  s: Settings) -> list[dg.RunRequest] | dg.SkipReason:
    """The run requests of one tick that the settings let through."""
    instance, asset = context.instance, target.name
    if is_gen_shard(target.partitions_def):
        register_gen_shards(instance, s.gen_shards)  # a raised gen_shards brings its new shards in now
    partitions = list(target.partitions_def.get_partition_keys(dynamic_partitions_store=instance))
    if not partitions:
        return dg.SkipReason(f"{asset} has no partitions yet")
    mats = Materializations(instance)
    materialized = set(mats.by_partition(target.key))
    in_progress = in_flight_partitions(instance, target.key, partitions)
    picks = pick_backfill_partitions(asset, partitions, materialized, in_progress,
                                     lambda p: stale_token(target, p, mats), target.code_version,
                                     requested_run_keys(instance, asset), s.backfill_max_partitions)
    if not picks:
        return dg.SkipReason(f"{asset}: nothing to request ({len(materialized & set(partitions))} of {len(partitions)} "
                             f"partitions materialized, {len(in_progress)} in progress; the rest fresh or already "
                             f"requested; at most {s.backfill_max_partitions} per tick)")
    context.log.info(f"{asset}: requesting {[(p.partition, p.reason) for p in picks]}")
    return [dg.RunRequest(run_key=p.run_key, partition_key=p.partition, tags={REASON_TAG: p.reason}) for p in picks]


def schedule_name_for(key: dg.AssetKey) -> str:
    return f"{'__'.join(key.path)}_backfill"


def backfill_schedule(target: BackfillTarget, partitioned: Collection[str],
                      unpartitioned: Collection[str]) -> dg.ScheduleDefinition:
    """The schedule of one partitioned asset; `partitioned` and `unpartitioned` name every asset of
    the definitions, to check `backfill_assets` against."""
    name, asset = schedule_name_for(target.key), target.name
    job = dg.define_asset_job(f"{name}_job", selection=dg.AssetSelection.assets(target.key),
                              partitions_def=target.partitions_def,
                              description=f"Backfill slices of {asset} (launched by the {name} schedule).")

    @dg.schedule(name=name, cron_schedule=TICK_CRON, execution_timezone="UTC", job=job,
                 default_status=dg.DefaultScheduleStatus.STOPPED,
                 description=f"When {asset} is in backfill_assets, each minute matching backfill_cron requests up to "
                             f"backfill_max_partitions missing or stale partitions of it.")
    def _backfill(context: dg.ScheduleEvaluationContext, settings: SettingsResource) -> list[dg.RunRequest] | dg.SkipReason:
        s = settings.get()
        check_backfill_assets(s.backfill_assets, partitioned, unpartitioned)
        when = (context.scheduled_execution_time or datetime.now(UTC)).astimezone(UTC)
        waiting = cron_skip_reason(s.backfill_cron, when)  # parsed first: a bad cron fails every tick
        if asset not in s.backfill_assets:
            return dg.SkipReason(f"{asset} is not in backfill_assets ({', '.join(s.backfill_assets) or 'none'})")
        if waiting:
            return dg.SkipReason(waiting)
        return backfill_tick(context, target, s)

    return _backfill


def backfill_schedules(assets: Iterable[object]) -> list[dg.ScheduleDefinition]:
    """One backfill schedule per partitioned asset among `assets` (pass all assets of the definitions:
    the names in `backfill_assets` are checked against them)."""
    assets = list(assets)
    targets, unpartitioned = backfill_targets(assets)
    partitioned = [t.name for t in targets]
    return [backfill_schedule(t, partitioned, unpartitioned) for t in targets]


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


SENSORS: list[dg.SensorDefinition] = [new_tile_sensor]
