"""Running the whole pipeline in the project's Dagster instance, stage by stage, as the
`aras demo` and `aras run` commands do. Every run is recorded, so `dagster dev` on the same
instance shows the materializations."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dagster as dg
import polars as pl
from tqdm import tqdm

from aras_assets.instance import ensure_dagster_home
from aras_assets.partitions import S2_TILE_PARTITIONS, gen_shard_keys, gen_shard_partitions
from aras_assets.settings import load_settings
from aras_assets.sources.sample_region import SAMPLE_TILES, write_sample_region
from resources.storage import StorageResource


@dataclass
class PipelineSummary:
    dagster_home: str
    data_root: str
    run_ids: dict[str, str] = field(default_factory=dict)
    tiles: list[str] = field(default_factory=list)


def _run_config(profile: str, overrides: Mapping[str, str], quiet: bool) -> dict:
    config: dict = {"resources": {"settings": {"config": {"profile": profile, "overrides": dict(overrides)}}}}
    if quiet:
        config["loggers"] = {"console": {"config": {"log_level": "INFO"}}}  # step progress, no engine events
    return config


def run_pipeline(profile: str | None = None, overrides: Mapping[str, str] | None = None,
                 quiet: bool = True, say: Callable[[str], None] = print) -> PipelineSummary:
    """Materialize every stage: sample region (demo), catalog, patches, splits, segmentation
    models of `seg_archs` with their evaluation, labels and captions of the real patches, both
    GANs, the unconditional shards (labelled, captioned), the conditional images of every tile
    (captioned), FID, and the caption evaluation over all origins."""
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

    instance = dg.DagsterInstance.get()
    summary = PipelineSummary(str(home), str(storage.root_path))
    config = _run_config(settings.profile, overrides, quiet)

    def execute(job: str, partition_key: str | None = None) -> str:
        result = definitions.defs.resolve_job_def(job).execute_in_process(
            instance=instance, run_config=config, partition_key=partition_key, raise_on_error=False)
        if not result.success:
            failure = next((e for e in result.all_events if e.is_failure), None)
            message = failure.event_specific_data.error.message if failure and failure.event_specific_data \
                and getattr(failure.event_specific_data, "error", None) else "see the run in the Dagster UI"
            raise RuntimeError(f"{job}{f' [{partition_key}]' if partition_key else ''} failed "
                               f"(run {result.run_id}): {message.strip()}")
        return result.run_id

    say("tile_catalog ...")
    summary.run_ids["tile_catalog"] = execute("catalog_job")
    summary.tiles = pl.read_parquet(storage.path("catalog", "tiles.parquet"))["s2_tile"].to_list()
    unregistered = set(summary.tiles) - set(instance.get_dynamic_partitions(S2_TILE_PARTITIONS))
    if unregistered:
        raise RuntimeError(f"tile_catalog did not register partitions for {sorted(unregistered)}")
    for tile in tqdm(summary.tiles, desc="real_patches", unit="tile"):
        summary.run_ids[f"real_patches[{tile}]"] = execute("patches_job", tile)
    say("splits ...")
    summary.run_ids["splits"] = execute("splits_job")
    for arch in tqdm(settings.seg_archs, desc="segmentation_model + eval", unit="arch"):
        summary.run_ids[f"segmentation[{arch}]"] = execute("segmentation_job", arch)
    if settings.seg_archs:
        for tile in tqdm(summary.tiles, desc="real_patch_labels", unit="tile"):
            summary.run_ids[f"real_patch_labels[{tile}]"] = execute("labels_job", tile)
    for tile in tqdm(summary.tiles, desc="real_captions", unit="tile"):
        summary.run_ids[f"real_captions[{tile}]"] = execute("captions_job", tile)
    if settings.seg_archs:  # the GANs' FID and the synthetic labels need a segmentation model
        say("uncond_gan + cond_gan ...")
        summary.run_ids["gans"] = execute("gan_training_job")
        shards = [k for k in gen_shard_keys(settings.gen_shards) if k in gen_shard_partitions.get_partition_keys()]
        for shard in tqdm(shards, desc="uncond_images + labels + captions", unit="shard"):
            summary.run_ids[f"uncond_images[{shard}]"] = execute("uncond_generation_job", shard)
            summary.run_ids[f"uncond_captions[{shard}]"] = execute("uncond_captions_job", shard)
        for tile in tqdm(summary.tiles, desc="cond_images + captions", unit="tile"):
            summary.run_ids[f"cond_images[{tile}]"] = execute("cond_generation_job", tile)
            summary.run_ids[f"cond_captions[{tile}]"] = execute("cond_captions_job", tile)
        say("gan_fid ...")
        summary.run_ids["gan_fid"] = execute("fid_job")
    say("caption_eval ...")
    summary.run_ids["caption_eval"] = execute("caption_eval_job")
    return summary
