"""One backfill worker of the concurrent Postgres test, in a process of its own. It is a module
of its own so the worker processes import only what a partition run needs (the forkserver
imports it once; every worker is forked from there, never from pytest, whose polars and GDAL
threads would leave locks held in a forked child)."""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import dagster as dg

from aras_assets.settings import SettingsResource
from aras_assets.sources.assets import ASSETS, real_patches
from resources import StorageResource


def backfill_one(home: str, tile: str, tiles: list[str], data_root: str, tile_source: str, start: Barrier,
                 results: Queue) -> None:
    """Register the partitions, as every run of the catalog does, then materialize `tile` once
    the catalog is written and all workers are ready; put (tile, run id, success) on `results`."""
    resources = {"settings": SettingsResource(profile="demo", overrides={"tile_source": tile_source}),
                 "storage": StorageResource(root=data_root)}
    with dg.DagsterInstance.from_config(home) as instance:
        start.wait(timeout=120)
        instance.add_dynamic_partitions("s2_tile", [t for t in tiles if not instance.has_dynamic_partition("s2_tile", t)])
        result = dg.materialize(ASSETS, selection=[real_patches], resources=resources, instance=instance,
                                partition_key=tile, raise_on_error=False)
        results.put((tile, result.run_id, result.success))
