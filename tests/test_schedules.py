"""Partial-backfill schedules and the new-tile sensor: the plain decision functions, and the
schedule/sensor evaluated against a temporary instance with assets materialized on the sample region."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG

from aras_assets.captions.assets import ASSETS as CAPTION_ASSETS
from aras_assets.grid import s2_filename
from aras_assets.operations.schedules import (
    MISSING,
    STALE,
    backfill_run_key,
    backfill_schedule,
    backfill_schedules,
    new_tile_sensor,
    pick_backfill_partitions,
    plan_new_tiles,
)
from aras_assets.partitions import s2_tile_partitions
from aras_assets.sources.assets import ASSETS as SOURCE_ASSETS
from aras_assets.sources.assets import real_patches, tile_catalog
from tests.conftest import make_resources

TILES = ["N36E030", "N36E031", "N38E028", "N38E029"]
REAL_PATCHES = dg.AssetKey("real_patches")


# --- plain functions --------------------------------------------------------------------------


def test_pick_missing_first_at_most_k_and_skips_requested_or_running():
    parts = [f"p{i}" for i in range(8)]
    calls: list[str] = []

    def stale(p: str) -> str | None:
        calls.append(p)
        return "t1" if p == "p6" else None

    picks = pick_backfill_partitions("a", parts, materialized={"p0", "p5", "p6", "p7"}, in_progress={"p1"},
                                     stale_token=stale, code_version="3", requested_keys=set(), limit=2)
    assert [(p.partition, p.reason) for p in picks] == [("p2", MISSING), ("p3", MISSING)]
    assert calls == []  # the slice was full before any stale check
    assert len({p.run_key for p in picks}) == 2 and picks[0].run_key == "a:p2:3:missing"

    requested = {backfill_run_key("a", "p2", "3", MISSING), backfill_run_key("a", "p3", "3", MISSING)}
    picks = pick_backfill_partitions("a", parts, {"p0", "p5", "p6", "p7"}, {"p1"}, stale, "3", requested, 4)
    assert [(p.partition, p.reason) for p in picks] == [("p4", MISSING), ("p6", STALE)]
    assert picks[1].run_key == "a:p6:3:t1"
    # The same stale version asked before is not asked again; a new one is.
    assert pick_backfill_partitions("a", ["p6"], {"p6"}, set(), stale, "3", {"a:p6:3:t1"}, 4) == []
    assert pick_backfill_partitions("a", ["p6"], {"p6"}, set(), lambda p: "t2", "3", {"a:p6:3:t1"}, 4)[0].run_key \
        == "a:p6:3:t2"
    assert pick_backfill_partitions("a", parts, set(), set(), stale, "3", set(), 0) == []


def test_plan_new_tiles():
    plan = plan_new_tiles(["A", "B"], registered=[], catalog_tiles=[], pending=[])
    assert (plan.add, plan.ready, plan.waiting) == (["A", "B"], [], ["A", "B"])
    plan = plan_new_tiles(["A", "B"], registered=["A", "B"], catalog_tiles=["A", "B"], pending=["A", "B"])
    assert (plan.add, plan.ready, plan.waiting) == ([], ["A", "B"], [])
    plan = plan_new_tiles(["A", "B", "C"], registered=["A", "B"], catalog_tiles=["A", "B"], pending=[])
    assert (plan.add, plan.ready, plan.waiting) == (["C"], [], ["C"])
    plan = plan_new_tiles(["A"], registered=["A", "B"], catalog_tiles=["A", "B"], pending=["B"])  # B left the folder
    assert (plan.add, plan.ready, plan.waiting) == ([], [], [])


# --- schedules against an instance -----------------------------------------------------------


def repo(*schedules: dg.ScheduleDefinition, resources: dict[str, object]) -> dg.RepositoryDefinition:
    return dg.Definitions(assets=[*SOURCE_ASSETS, *CAPTION_ASSETS], schedules=list(schedules),
                          resources=resources).get_repository_def()


def tick(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance, repository: dg.RepositoryDefinition):
    with dg.build_schedule_context(instance=instance, repository_def=repository) as context:
        return schedule.evaluate_tick(context)


def materialize(selection, resources, instance, partition_key=None, tags=None, assets=None):
    result = dg.materialize(assets or SOURCE_ASSETS, selection=selection, resources=resources, instance=instance,
                            partition_key=partition_key, tags=tags)
    assert result.success
    return result


@pytest.fixture
def catalogued(resources, instance):
    materialize([tile_catalog], resources, instance)
    assert sorted(instance.get_dynamic_partitions("s2_tile")) == TILES
    return instance


def test_tick_requests_only_missing_partitions_at_most_k(resources, catalogued):
    instance = catalogued
    schedule = backfill_schedule(REAL_PATCHES, s2_tile_partitions, "*/15 * * * *", limit=2)
    repository = repo(schedule, resources=resources)
    materialize([real_patches], resources, instance, "N36E031")

    first = tick(schedule, instance, repository).run_requests
    assert [r.partition_key for r in first] == ["N36E030", "N38E028"]  # N36E031 is there already
    assert len({r.run_key for r in first}) == 2
    assert all(r.run_key == f"real_patches:{r.partition_key}:1:missing" for r in first)

    # N36E030's run ran; N38E028's has not started yet: neither is asked again.
    materialize([real_patches], resources, instance, "N36E030", tags={RUN_KEY_TAG: first[0].run_key})
    job = repository.get_job(f"{schedule.name}_job")
    instance.create_run_for_job(job, tags={RUN_KEY_TAG: first[1].run_key, "dagster/partition": "N38E028"},
                                status=dg.DagsterRunStatus.NOT_STARTED)
    second = tick(schedule, instance, repository).run_requests
    assert [r.partition_key for r in second] == ["N38E029"]
    assert {r.run_key for r in second}.isdisjoint(r.run_key for r in first)

    materialize([real_patches], resources, instance, "N38E028")
    materialize([real_patches], resources, instance, "N38E029")
    result = tick(schedule, instance, repository)
    assert not result.run_requests and "nothing to request" in result.skip_message


def test_stale_partition_is_requested(resources, catalogued):
    """A partition materialized by an older code version of the asset is stale in Dagster's eyes."""
    instance = catalogued

    @dg.asset(name="real_patches", partitions_def=s2_tile_partitions, code_version="0", deps=[tile_catalog],
              group_name="sources")
    def real_patches_v0() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    materialize([real_patches_v0], resources, instance, "N38E028", assets=[tile_catalog, real_patches_v0])
    for tile in ("N36E030", "N36E031", "N38E029"):
        materialize([real_patches], resources, instance, tile)
    schedule = backfill_schedule(REAL_PATCHES, s2_tile_partitions, "*/15 * * * *", limit=4)
    repository = repo(schedule, resources=resources)

    requests = tick(schedule, instance, repository).run_requests
    assert [(r.partition_key, r.tags["aras/backfill_reason"]) for r in requests] == [("N38E028", STALE)]
    assert requests[0].run_key.startswith("real_patches:N38E028:1:") and not requests[0].run_key.endswith(MISSING)

    materialize([real_patches], resources, instance, "N38E028", tags={RUN_KEY_TAG: requests[0].run_key})
    assert tick(schedule, instance, repository).skip_message


def test_schedules_from_settings_names(resources, instance):
    assets = [*SOURCE_ASSETS, *CAPTION_ASSETS]
    schedules = backfill_schedules(["real_patches", "real_captions"], assets, "0 * * * *", 3)
    assert [s.name for s in schedules] == ["real_patches_backfill", "real_captions_backfill"]
    assert all(s.cron_schedule == "0 * * * *" for s in schedules)

    # A name matching no asset loads, and each tick says why it does nothing.
    (unknown,) = backfill_schedules(["real_pathces"], assets, "0 * * * *", 3)
    result = tick(unknown, instance, repo(unknown, resources=resources))
    assert not result.run_requests
    assert "'real_pathces', which matches no asset" in result.skip_message and "real_patches" in result.skip_message

    with pytest.raises(ValueError, match=r"\['splits'\], which are not partitioned"):
        backfill_schedules(["splits"], assets, "0 * * * *", 3)


# --- the new-tile sensor ----------------------------------------------------------------------


def copy_tiles(source: Path, dest: Path, tiles: list[str]) -> None:
    dest.mkdir(exist_ok=True)
    for path in source.glob("*_Map.tif"):  # the WorldCover files cover every tile
        if not (dest / path.name).exists():
            shutil.copyfile(path, dest / path.name)
    for tile in tiles:
        shutil.copyfile(source / s2_filename(tile), dest / s2_filename(tile))


@dataclass
class Tick:
    run_requests: list[dg.RunRequest]
    dynamic_partitions_requests: list[dg.AddDynamicPartitionsRequest]
    cursor: str | None
    skip_message: str | None


def sense(instance: dg.DagsterInstance, resources: dict[str, object], cursor: str | None) -> Tick:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        out = new_tile_sensor(context)
        if isinstance(out, dg.SkipReason):
            return Tick([], [], context.cursor, out.skip_message)
    for request in out.dynamic_partitions_requests:  # what the sensor daemon does with them
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return Tick(list(out.run_requests), list(out.dynamic_partitions_requests), out.cursor, None)


def test_sensor_adds_new_tiles_once(tmp_path, data_root, sample_region, instance):
    folder = tmp_path / "incoming"
    copy_tiles(sample_region, folder, ["N36E030", "N36E031"])
    resources = make_resources(data_root, folder)

    first = sense(instance, resources, None)
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["N36E030", "N36E031"]]
    # The catalog does not list the tiles yet (real_patches reads its row there): rebuild it first.
    assert [(r.job_name, r.partition_key) for r in first.run_requests] == [("catalog_job", None)]

    materialize([tile_catalog], resources, instance)
    second = sense(instance, resources, first.cursor)
    assert not second.dynamic_partitions_requests
    assert [(r.job_name, r.partition_key, r.run_key) for r in second.run_requests] == [
        ("patches_job", t, f"new-tile:real_patches:{t}") for t in ("N36E030", "N36E031")]

    third = sense(instance, resources, second.cursor)
    assert not third.run_requests and not third.dynamic_partitions_requests and "no new tiles" in third.skip_message

    copy_tiles(sample_region, folder, ["N38E028", "N38E029"])
    fourth = sense(instance, resources, third.cursor)
    assert [list(r.partition_keys) for r in fourth.dynamic_partitions_requests] == [["N38E028", "N38E029"]]
    assert [r.job_name for r in fourth.run_requests] == ["catalog_job"]
    assert fourth.run_requests[0].run_key != first.run_requests[0].run_key
    materialize([tile_catalog], resources, instance)
    fifth = sense(instance, resources, fourth.cursor)
    assert not fifth.dynamic_partitions_requests
    assert [r.partition_key for r in fifth.run_requests] == ["N38E028", "N38E029"]
    assert sorted(instance.get_dynamic_partitions("s2_tile")) == TILES


def test_sensor_skips_without_a_folder(data_root, instance, tmp_path):
    result = sense(instance, make_resources(data_root, tmp_path / "nowhere"), None)
    assert not result.run_requests and "cannot list tiles" in result.skip_message
    templates = make_resources(data_root, Path("templates"))
    assert "no folder to watch" in sense(instance, templates, None).skip_message
