"""Partitions shared across stages."""

import dagster as dg

from aras_assets.settings import SEG_ARCHS, load_settings

S2_TILE_PARTITIONS = "s2_tile"
s2_tile_partitions = dg.DynamicPartitionsDefinition(name=S2_TILE_PARTITIONS)

ARCH_PARTITIONS = "arch"
arch_partitions = dg.StaticPartitionsDefinition(list(SEG_ARCHS))

GEN_SHARD_PARTITIONS = "gen_shard"


def gen_shard_keys(count: int) -> list[str]:
    return [f"{i:04d}" for i in range(count)]


# Static partitions are fixed when the definitions load: the profile's gen_shards
# (env ARAS_PROFILE, ARAS_GEN_SHARDS or the ARAS_SETTINGS file) sets how many there are.
gen_shard_partitions = dg.StaticPartitionsDefinition(gen_shard_keys(load_settings().gen_shards))
