"""Partitions shared across stages. None is fixed by settings when the definitions load:
s2_tile partitions are registered by tile_catalog, gen_shard partitions by the generation
stage (uncond_gan, the backfill schedule and `aras run`) from the run's `gen_shards`."""

from __future__ import annotations

import dagster as dg

from aras_assets.evaluation.paper import TRAIN_SETS
from aras_assets.settings import SEG_ARCHS

S2_TILE_PARTITIONS = "s2_tile"
s2_tile_partitions = dg.DynamicPartitionsDefinition(name=S2_TILE_PARTITIONS)

ARCH_PARTITIONS = "arch"
arch_partitions = dg.StaticPartitionsDefinition(list(SEG_ARCHS))

# The ablation: one partition per (architecture, training set) pair; `aras run` trains the
# pairs of ablation_archs x ablation_train_sets, the UI can launch any.
ABLATION_PARTITIONS = "arch_train_set"
ablation_partitions = dg.MultiPartitionsDefinition({
    "arch": dg.StaticPartitionsDefinition(list(SEG_ARCHS)), "train_set": dg.StaticPartitionsDefinition(list(TRAIN_SETS))})


def ablation_key(train_set: str, arch: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"arch": arch, "train_set": train_set})


GEN_SHARD_PARTITIONS = "gen_shard"
gen_shard_partitions = dg.DynamicPartitionsDefinition(name=GEN_SHARD_PARTITIONS)


def gen_shard_keys(count: int) -> list[str]:
    return [f"{i:04d}" for i in range(count)]


def register_gen_shards(instance: dg.DagsterInstance, count: int) -> list[str]:
    """Make shards 0000..count-1 partitions of gen_shard; returns the ones that were new.
    Lowering `gen_shards` later removes nothing: shards already made stay visible."""
    have = set(instance.get_dynamic_partitions(GEN_SHARD_PARTITIONS))
    new = [k for k in gen_shard_keys(count) if k not in have]
    if new:
        instance.add_dynamic_partitions(GEN_SHARD_PARTITIONS, new)
    return new
