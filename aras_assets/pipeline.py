"""Running the whole pipeline in the project's Dagster instance, stage by stage, as the
`aras demo` and `aras run` commands do. The stages and their order come from the asset graph
(`aras_assets.graph`); each stage runs once, or over the partitions of its dimension: the
catalog's tiles and the `gen_shards` in runs of up to PARTITIONS_PER_RUN partitions
(aras_assets/ranged.py), the `seg_archs` and the ablation's pairs one run each. Every run is recorded, so `dagster dev` on
the same instance shows the materializations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dagster as dg
import polars as pl
from tqdm import tqdm

from aras_assets import layout
from aras_assets.instance import ensure_dagster_home
from aras_assets.launcher import LauncherError, launcher
from aras_assets.partitions import (
    ABLATION_PARTITIONS,
    ARCH_PARTITIONS,
    GEN_SHARD_PARTITIONS,
    S2_TILE_PARTITIONS,
    ablation_key,
    gen_shard_keys,
    register_gen_shards,
)
from aras_assets.ranged import partition_ranges, range_tags
from aras_assets.runs import RUNNER_TAG, clean_dead_runs, fail_own_runs, runner_id, stop_on_signals
from aras_assets.settings import Settings, load_settings
from aras_assets.sources.sample_region import SAMPLE_TILES, write_sample_region
from resources.storage import StorageResource


@dataclass
class PipelineSummary:
    dagster_home: str
    data_root: str
    run_ids: dict[str, str] = field(default_factory=dict)
    tiles: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # job -> why it did not run


class StageFailed(RuntimeError):
    """A stage's run failed; the message names the job, the partition, the run and the cause."""


def _run_config(profile: str, overrides: Mapping[str, str], quiet: bool) -> dict:
    config: dict = {"resources": {"settings": {"config": {"profile": profile, "overrides": dict(overrides)}}}}
    if quiet:
        config["loggers"] = {"console": {"config": {"log_level": "INFO"}}}  # step progress, no engine events
    return config


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failure = next((e for e in result.all_events if e.is_failure), None)
    error = getattr(failure.event_specific_data, "error", None) if failure and failure.event_specific_data else None
    return error.message.strip() if error else "see the run in the Dagster UI"


def partition_keys(dimension: str | None, settings: Settings, tiles: list[str]) -> list[str | None]:
    """What one stage runs over: once (unpartitioned), or each key of its dimension."""
    if dimension is None:
        return [None]
    return {S2_TILE_PARTITIONS: list(tiles), ARCH_PARTITIONS: list(settings.seg_archs),
            GEN_SHARD_PARTITIONS: gen_shard_keys(settings.gen_shards),
            ABLATION_PARTITIONS: [ablation_key(t, a) for t in settings.ablation_train_sets
                                  for a in settings.ablation_archs]}[dimension]


PROFILE_TAG, COMMAND_TAG = "aras/profile", "aras/command"


def run_pipeline(profile: str | None = None, overrides: Mapping[str, str] | None = None,
                 quiet: bool = True, say: Callable[[str], None] = print, command: str = "aras run",
                 in_process: bool = False) -> PipelineSummary:
    """Materialize every stage of the graph in order. A stage with nothing to run (no
    `seg_archs`, say) is skipped, and so is every stage that reads from a skipped one.
    Runs are launched against the code location (aras_assets/launcher.py), so the UI lists them
    under their jobs and can re-execute them; `in_process` runs them in this process instead."""
    home = ensure_dagster_home()
    overrides = dict(overrides or {})
    profile = overrides.pop("profile", profile)
    settings = load_settings(profile, overrides)
    storage = StorageResource()
    if settings.tile_source == "sample_region":
        folder = storage.resolve(settings.tile_source)
        say(f"sample region -> {folder}")
        write_sample_region(folder, settings.sample_seed, settings.sample_tile_px, SAMPLE_TILES, progress=say)

    import definitions  # the same Definitions `dagster dev` serves
    from aras_assets.graph import ASSETS, upstream

    instance = dg.DagsterInstance.get()
    cleaned = clean_dead_runs(instance)
    if cleaned:
        say(f"marked {len(cleaned)} runs failed whose aras process is gone: {', '.join(cleaned)}")
    summary = PipelineSummary(str(home), str(storage.root_path))
    config = _run_config(settings.profile, overrides, quiet)
    register_gen_shards(instance, settings.gen_shards)  # shards of this run's settings, before any shard stage
    deps = upstream(ASSETS)
    skipped_keys: set[dg.AssetKey] = set()

    tags = {PROFILE_TAG: settings.profile, COMMAND_TAG: command}
    current: list[str] = []  # the launched run in progress

    def execute_here(job: str, runs_of: list[list[str | None]]) -> list[str]:
        run_ids = []
        for keys in tqdm(runs_of, desc=job, unit="run", disable=len(runs_of) < 2):
            one = keys[0] if len(keys) == 1 else None
            result = definitions.defs.resolve_job_def(job).execute_in_process(
                instance=instance, run_config=config, partition_key=one, raise_on_error=False,
                tags={**tags, RUNNER_TAG: runner_id(), **(range_tags(keys) if len(keys) > 1 else {})})
            if received:
                raise KeyboardInterrupt
            if not result.success:
                raise StageFailed(f"{job}{_where(keys)} failed (run {result.run_id}): {_failure_message(result)}")
            run_ids.append(result.run_id)
        return run_ids

    def execute_launched(job: str, runs_of: list[list[str | None]]) -> list[str]:
        # every run of the stage at once: the run queue and the gpu pool decide how many run together
        run_ids = [runs.submit(job, config, {**tags, **range_tags(keys)}) for keys in runs_of]
        current[:] = run_ids
        ended = {run_id: runs.wait(run_id) for run_id in tqdm(run_ids, desc=job, unit="run", disable=len(run_ids) < 2)}
        current.clear()
        for keys, run_id in zip(runs_of, run_ids, strict=True):
            if ended[run_id].status != dg.DagsterRunStatus.SUCCESS:
                raise StageFailed(f"{job}{_where(keys)} failed (run {run_id}): {runs.failure(run_id)}")
        return run_ids

    with stop_on_signals() as received, contextlib.ExitStack() as stack:
        try:
            if not in_process:
                say("starting dagster dev to launch the runs (the UI lists them under their jobs) ...")
                runs = stack.enter_context(launcher(home, instance))
                say(f"launching runs through {runs.url}")
            _run_stages(execute_here if in_process else execute_launched, say, settings, summary, instance, storage,
                        deps, skipped_keys)
        except KeyboardInterrupt:
            why = f"interrupted by {received[0] if received else 'SIGINT'}"
            for run_id in current:
                runs.terminate(run_id)
            failed = fail_own_runs(instance, why)  # whatever Dagster did not record as ended
            raise StageFailed(f"aras run {why}; its run is marked failed{': ' + ', '.join(failed) if failed else ''}") \
                from None
        except LauncherError as exc:
            raise StageFailed(f"could not launch runs: {exc} (or run with --in-process)") from None
    return summary


def _where(keys: list[str | None]) -> str:
    if keys == [None]:
        return ""
    return f" [{keys[0]}]" if len(keys) == 1 else f" [{keys[0]}...{keys[-1]}, {len(keys)} partitions]"


def _run_stages(execute: Callable[[str, list[list[str | None]]], list[str]], say: Callable[[str], None], settings: Settings,
                summary: PipelineSummary, instance: dg.DagsterInstance, storage: StorageResource,
                deps: Mapping[dg.AssetKey, set[dg.AssetKey]], skipped_keys: set[dg.AssetKey]) -> None:
    from aras_assets.graph import STAGE_JOBS

    for job, (stage, _) in STAGE_JOBS.items():
        blocked = sorted({d.to_user_string() for k in stage.keys for d in deps[k] if d in skipped_keys})
        keys = partition_keys(stage.dimension, settings, summary.tiles)
        if blocked or not keys:
            summary.skipped[job] = f"reads skipped {', '.join(blocked)}" if blocked else f"no {stage.dimension} to run"
            skipped_keys |= set(stage.keys)
            say(f"{job}: skipped ({summary.skipped[job]})")
            continue
        say(f"{', '.join(k.to_user_string() for k in stage.keys)} ...")
        runs_of = [[key] for key in keys]
        if stage.per_run > 1 and stage.dimension in (S2_TILE_PARTITIONS, GEN_SHARD_PARTITIONS):
            runs_of = partition_ranges(instance.get_dynamic_partitions(stage.dimension), keys, stage.per_run)
        for run_keys, run_id in zip(runs_of, execute(job, runs_of), strict=True):
            for key in run_keys:
                summary.run_ids[job if key is None else f"{job}[{key}]"] = run_id
        if dg.AssetKey("tile_catalog") in stage.keys:
            summary.tiles = _catalogued_tiles(instance, storage)


def _catalogued_tiles(instance: dg.DagsterInstance, storage: StorageResource) -> list[str]:
    tiles = pl.read_parquet(storage.path(layout.CATALOG))["s2_tile"].to_list()
    unregistered = set(tiles) - set(instance.get_dynamic_partitions(S2_TILE_PARTITIONS))
    if unregistered:
        raise StageFailed(f"tile_catalog did not register partitions for {sorted(unregistered)}")
    return tiles
