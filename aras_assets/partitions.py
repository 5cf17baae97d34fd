"""Partitions shared across stages."""

import dagster as dg

S2_TILE_PARTITIONS = "s2_tile"
s2_tile_partitions = dg.DynamicPartitionsDefinition(name=S2_TILE_PARTITIONS)
