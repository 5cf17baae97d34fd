"""Partitions shared across stages."""

import dagster as dg

from aras_assets.settings import SEG_ARCHS

S2_TILE_PARTITIONS = "s2_tile"
s2_tile_partitions = dg.DynamicPartitionsDefinition(name=S2_TILE_PARTITIONS)

ARCH_PARTITIONS = "arch"
arch_partitions = dg.StaticPartitionsDefinition(list(SEG_ARCHS))
