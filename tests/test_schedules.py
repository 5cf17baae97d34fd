"""Partial-backfill schedules and the new-tile sensor: the plain decision functions (cron included),
and the schedules/sensor evaluated against a temporary instance, with toy assets or with the real ones
materialized on the sample region."""

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from aras_assets.cron import parse_cron
from aras_assets.graph import ASSETS as ALL_ASSETS
from aras_assets.grid import s2_filename
from aras_assets.operations.schedules import (
    MISSING,
    RUN_KEY_TAG,
    STALE,
    backfill_run_key,
    backfill_schedules,
    new_tile_sensor,
    pick_backfill_partitions,
    plan_new_tiles,
)
from aras_assets.partitions import s2_tile_partitions
from aras_assets.settings import SettingsResource
from aras_assets.sources.assets import ASSETS as SOURCE_ASSETS
from aras_assets.sources.assets import real_patches, tile_catalog
from tests.conftest import make_resources

TILES = ["N36E030", "N36E031", "N38E028", "N38E029"]
ON_TICK = datetime(2025, 1, 6, 12, 30, tzinfo=UTC)  # a Monday; matches the default backfill_cron */15


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


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_cron_known_answers():
    quarter = parse_cron("*/15 * * * *")
    assert quarter.matches(utc(2025, 1, 6, 0, 15)) and not quarter.matches(utc(2025, 1, 6, 0, 16))
    assert quarter.next_after(utc(2025, 1, 6, 0, 16)) == utc(2025, 1, 6, 0, 30)
    assert quarter.next_after(utc(2025, 1, 6, 23, 45)) == utc(2025, 1, 7, 0, 0)  # strictly after

    office = parse_cron("0 9-17/4 * * 1-5")  # 9, 13, 17 on weekdays
    assert office.hours == {9, 13, 17} and office.weekdays == {1, 2, 3, 4, 5}
    assert office.matches(utc(2025, 1, 6, 13, 0)) and not office.matches(utc(2025, 1, 4, 13, 0))  # Monday; Saturday
    assert office.next_after(utc(2025, 1, 10, 17, 0)) == utc(2025, 1, 13, 9, 0)  # Friday evening -> Monday

    assert parse_cron("5,10,20-22 * * * *").minutes == {5, 10, 20, 21, 22}
    assert parse_cron("10/20 * * * *").minutes == {10, 30, 50}  # a/n runs to the end of the field
    assert parse_cron("0 0 * * 7").weekdays == parse_cron("0 0 * * sun").weekdays == {0}
    assert parse_cron("@daily") == parse_cron("0 0 * * *").__class__(**{**parse_cron("0 0 * * *").__dict__,
                                                                          "expression": "@daily"})
    assert parse_cron("0 0 1 jan-mar *").months == {1, 2, 3}

    # Both day fields restricted: either matches; one starting with * : both must.
    either = parse_cron("0 0 1,15 * 0")
    assert either.matches(utc(2025, 1, 5)) and either.matches(utc(2025, 1, 15)) and not either.matches(utc(2025, 1, 14))
    both = parse_cron("0 0 */2 * 1")  # odd days that are Mondays
    assert both.matches(utc(2025, 1, 13)) and not both.matches(utc(2025, 1, 6)) and not both.matches(utc(2025, 1, 15))

    assert parse_cron("30 2 29 2 *").next_after(utc(2025, 3, 1)) == utc(2028, 2, 29, 2, 30)


@pytest.mark.parametrize(("expression", "message"), [
    ("60 * * * *", "minute 60 is outside 0-59"),
    ("* * * *", "must have 5 fields"),
    ("*/0 * * * *", "step '0'"),
    ("5-1 * * * *", "runs backwards"),
    ("x * * * *", "minute 'x' is not a number"),
    ("0 0 * 13 *", "month 13"),
    ("0 0 30 2 *", "names no date"),
])
def test_cron_refuses(expression: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_cron(expression)


# --- schedules against an instance -----------------------------------------------------------


def schedule_named(name: str, assets: list[object] = ALL_ASSETS) -> dg.ScheduleDefinition:
    return {s.name: s for s in backfill_schedules(assets)}[name]


def with_settings(resources: dict[str, object], **overrides: str) -> dict[str, object]:
    base = resources["settings"]
    assert isinstance(base, SettingsResource)
    return {**resources, "settings": SettingsResource(profile=base.profile, overrides={**base.overrides, **overrides})}


def repo(schedule: dg.ScheduleDefinition, resources: dict[str, object],
         assets: list[object] = ALL_ASSETS) -> dg.RepositoryDefinition:
    return dg.Definitions(assets=assets, schedules=[schedule], resources=resources).get_repository_def()


def tick(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance, resources: dict[str, object],
         when: datetime = ON_TICK, assets: list[object] = ALL_ASSETS) -> Any:  # ScheduleExecutionData: not exported
    # The repository resolves the partition of each request against the schedule's job.
    with dg.build_schedule_context(instance=instance, resources=resources, scheduled_execution_time=when,
                                   repository_def=repo(schedule, resources, assets)) as context:
        return schedule.evaluate_tick(context)


def requested(result: Any) -> list[tuple[str, str]]:
    assert result.skip_message is None, result.skip_message
    return [(r.partition_key, r.tags["aras/backfill_reason"]) for r in result.run_requests]


def materialize(selection, resources, instance, partition_key=None, tags=None, assets=None):
    result = dg.materialize(assets or SOURCE_ASSETS, selection=selection, resources=resources, instance=instance,
                            partition_key=partition_key, tags=tags)
    assert result.success
    return result


def test_one_stopped_schedule_per_partitioned_asset():
    schedules = backfill_schedules(ALL_ASSETS)
    names = {s.name for s in schedules}
    assert {"real_patches_backfill", "uncond_images_backfill", "real_captions_backfill"} <= names
    assert "splits_backfill" not in names and "tile_catalog_backfill" not in names  # unpartitioned
    assert all(s.cron_schedule == "* * * * *" and s.execution_timezone == "UTC" for s in schedules)
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in schedules)


def test_tick_follows_the_settings(resources, instance):
    """Nothing is fixed when the definitions load: each tick reads backfill_assets and backfill_cron."""
    schedule = schedule_named("real_patches_backfill")
    off_list = tick(schedule, instance, with_settings(resources, backfill_assets='["real_captions"]'))
    assert off_list.skip_message == "real_patches is not in backfill_assets (real_captions)"

    off_minute = tick(schedule, instance, resources, when=utc(2025, 1, 6, 12, 31))
    assert off_minute.skip_message == ("2025-01-06 12:31 UTC does not match backfill_cron '*/15 * * * *'; "
                                       "next at 2025-01-06 12:45 UTC")
    hourly = with_settings(resources, backfill_cron="0 * * * *")
    assert "next at 2025-01-06 13:00 UTC" in tick(schedule, instance, hourly).skip_message
    # On the minute: no tile partitions yet, so nothing to backfill.
    assert tick(schedule, instance, hourly, when=utc(2025, 1, 6, 13, 0)).skip_message == "real_patches has no partitions yet"


def test_unknown_or_unpartitioned_backfill_asset_fails_every_tick(resources, instance):
    bad = with_settings(resources, backfill_assets='["real_patches", "real_pathces", "splits"]')
    for name in ("real_patches_backfill", "uncond_images_backfill"):
        with pytest.raises(dg.DagsterUserCodeExecutionError) as caught:
            tick(schedule_named(name), instance, bad)
        message = str(caught.value.__cause__)
        assert message.startswith("setting backfill_assets names 'real_pathces' (no such asset), 'splits' (not partitioned)")
        assert "real_patches" in message.split(": ", 1)[1]  # lists the partitioned assets


@pytest.fixture
def catalogued(resources, instance):
    materialize([tile_catalog], resources, instance)
    assert sorted(instance.get_dynamic_partitions("s2_tile")) == TILES
    return instance


def test_tick_requests_only_missing_partitions_at_most_k(resources, catalogued):
    instance = catalogued
    schedule = schedule_named("real_patches_backfill")
    resources = with_settings(resources, backfill_max_partitions="2")
    materialize([real_patches], resources, instance, "N36E031")

    first = tick(schedule, instance, resources).run_requests
    assert [r.partition_key for r in first] == ["N36E030", "N38E028"]  # N36E031 is there already
    assert len({r.run_key for r in first}) == 2
    assert all(r.run_key == f"real_patches:{r.partition_key}:1:missing" for r in first)

    # N36E030's run ran; N38E028's has not started yet: neither is asked again.
    materialize([real_patches], resources, instance, "N36E030", tags={RUN_KEY_TAG: first[0].run_key})
    job = repo(schedule, resources).get_job(f"{schedule.name}_job")
    instance.create_run_for_job(job, tags={RUN_KEY_TAG: first[1].run_key, "dagster/partition": "N38E028"},
                                status=dg.DagsterRunStatus.NOT_STARTED)
    second = tick(schedule, instance, resources).run_requests
    assert [r.partition_key for r in second] == ["N38E029"]
    assert {r.run_key for r in second}.isdisjoint(r.run_key for r in first)

    materialize([real_patches], resources, instance, "N38E028")
    materialize([real_patches], resources, instance, "N38E029")
    result = tick(schedule, instance, resources)
    assert not result.run_requests and "nothing to request" in result.skip_message


def test_limit_comes_from_the_settings(resources, catalogued):
    schedule = schedule_named("real_patches_backfill")
    assert len(tick(schedule, catalogued, resources).run_requests) == 4  # the demo profile's 4
    one = tick(schedule, catalogued, with_settings(resources, backfill_max_partitions="1")).run_requests
    assert [r.partition_key for r in one] == ["N36E030"]


def test_stale_partition_is_requested(resources, catalogued):
    """A partition materialized by an older code version of the asset is stale."""
    instance = catalogued

    @dg.asset(name="real_patches", partitions_def=s2_tile_partitions, code_version="0", deps=[tile_catalog],
              group_name="sources")
    def real_patches_v0() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    materialize([real_patches_v0], resources, instance, "N38E028", assets=[tile_catalog, real_patches_v0])
    for tile in ("N36E030", "N36E031", "N38E029"):
        materialize([real_patches], resources, instance, tile)
    schedule = schedule_named("real_patches_backfill")

    requests = tick(schedule, instance, resources).run_requests
    assert [(r.partition_key, r.tags["aras/backfill_reason"]) for r in requests] == [("N38E028", STALE)]
    assert requests[0].run_key.startswith("real_patches:N38E028:1:") and not requests[0].run_key.endswith(MISSING)

    materialize([real_patches], resources, instance, "N38E028", tags={RUN_KEY_TAG: requests[0].run_key})
    assert "nothing to request" in tick(schedule, instance, resources).skip_message

    # The definitions move on to code version 2: every partition is stale, each with its own key.
    @dg.asset(name="real_patches", partitions_def=s2_tile_partitions, code_version="2", deps=[tile_catalog],
              group_name="sources")
    def real_patches_v2() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    bumped_assets = [tile_catalog, real_patches_v2]
    bumped = schedule_named("real_patches_backfill", bumped_assets)
    only = with_settings(resources, backfill_assets='["real_patches"]')  # the others are not in these definitions
    requests = tick(bumped, instance, only, assets=bumped_assets).run_requests
    assert [(r.partition_key, r.tags["aras/backfill_reason"]) for r in requests] == [(t, STALE) for t in TILES]
    assert all(r.run_key.startswith(f"real_patches:{r.partition_key}:2:") for r in requests)


def test_new_gen_shards_are_requested_after_gen_shards_grows(resources, instance):
    schedule = schedule_named("uncond_images_backfill")
    two = with_settings(resources, gen_shards="2", backfill_assets='["uncond_images"]')
    first = tick(schedule, instance, two).run_requests
    assert [r.partition_key for r in first] == ["0000", "0001"]  # registered by the tick itself
    job = repo(schedule, resources).get_job(f"{schedule.name}_job")
    for r in first:  # the daemon launches them; they are queued
        instance.create_run_for_job(job, tags={**r.tags, RUN_KEY_TAG: r.run_key, "dagster/partition": r.partition_key},
                                    status=dg.DagsterRunStatus.NOT_STARTED)

    five = with_settings(two, gen_shards="5")
    later = tick(schedule, instance, five, when=utc(2025, 1, 6, 12, 45)).run_requests
    assert [r.partition_key for r in later] == ["0002", "0003", "0004"]
    assert sorted(instance.get_dynamic_partitions("gen_shard")) == ["0000", "0001", "0002", "0003", "0004"]


# --- staleness from the tags of materializations, on toy assets -----------------------------------


LETTERS = dg.StaticPartitionsDefinition(["a", "b", "c"])
PAIR = dg.StaticPartitionsDefinition(["x", "y"])


def toy_assets(root: str = "1", up: str = "1", down: str = "1") -> list[dg.AssetsDefinition]:
    """root (unpartitioned) and up (a, b, c) feed down (a, b, c, same partition of up); agg (x, y)
    reads every partition of up. The arguments are code versions."""

    @dg.asset(name="root", code_version=root)
    def root_asset() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    @dg.asset(name="up", code_version=up, partitions_def=LETTERS)
    def up_asset() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    @dg.asset(name="down", code_version=down, partitions_def=LETTERS, deps=[root_asset, up_asset])
    def down_asset() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    @dg.asset(name="agg", code_version="1", partitions_def=PAIR,
              deps=[dg.AssetDep(up_asset, partition_mapping=dg.AllPartitionMapping())])
    def agg_asset() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    return [root_asset, up_asset, down_asset, agg_asset]


def toy_materialize(instance: dg.DagsterInstance, assets: list[dg.AssetsDefinition], name: str,
                    partitions: list[str | None]) -> None:
    for partition in partitions:
        selected = [a for a in assets if a.key.to_user_string() == name]
        assert dg.materialize(assets, selection=selected, instance=instance, partition_key=partition).success


def toy_ticks(instance: dg.DagsterInstance, assets: list[dg.AssetsDefinition]) -> dict[str, object]:
    settings = {"settings": SettingsResource(overrides={"backfill_assets": '["up", "down", "agg"]',
                                                        "backfill_cron": "* * * * *", "backfill_max_partitions": "10"})}
    out: dict[str, object] = {}
    for schedule in backfill_schedules(assets):
        result = tick(schedule, instance, settings, assets=assets)
        out[schedule.name.removesuffix("_backfill")] = result.skip_message or requested(result)
    return out


def test_stale_from_code_and_upstream_data_versions(instance):
    assets = toy_assets()
    toy_materialize(instance, assets, "root", [None])
    toy_materialize(instance, assets, "up", ["a", "b", "c"])
    toy_materialize(instance, assets, "down", ["a", "b", "c"])
    toy_materialize(instance, assets, "agg", ["x", "y"])
    # Fresh everywhere: the input versions Dagster recorded (one partition, all partitions, unpartitioned)
    # are the ones recomputed now.
    assert all("nothing to request" in str(v) for v in toy_ticks(instance, assets).values()), toy_ticks(instance, assets)

    # up[b] is remade by new code: its data version changes, so down[b] and both agg partitions are stale.
    toy_materialize(instance, toy_assets(up="2"), "up", ["b"])
    ticks = toy_ticks(instance, assets)
    assert ticks["up"] == [("b", STALE)]  # the definitions still say code version 1
    assert ticks["down"] == [("b", STALE)] and ticks["agg"] == [("x", STALE), ("y", STALE)]

    # The unpartitioned root changes: every partition of down is stale.
    toy_materialize(instance, toy_assets(root="2"), "root", [None])
    assert toy_ticks(instance, assets)["down"] == [("a", STALE), ("b", STALE), ("c", STALE)]

    # Rematerialized from what the upstreams hold now: fresh again.
    toy_materialize(instance, assets, "down", ["a", "b", "c"])
    assert "nothing to request" in toy_ticks(instance, assets)["down"]
    # New code for down alone: stale by code version.
    assert toy_ticks(instance, toy_assets(down="2"))["down"] == [("a", STALE), ("b", STALE), ("c", STALE)]


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
