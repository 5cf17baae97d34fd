"""Partition-heavy assets (one partition per S2 tile or generation shard) materialize several
partitions in one run. They carry a backfill policy, so a backfill of 2,000 tiles launches
runs of up to PARTITIONS_PER_RUN tiles each instead of 2,000 runs, and `aras run` runs each
stage over ranges of its partitions the same way. A run of a range does its partitions in turn
and writes each one's files atomically as a run of one partition does, so a failure keeps the
partitions finished before it and a re-run finishes the rest.

Dagster records a materialization per partition of the range, all with the run's metadata
(totals and a table by partition). Checks stay per partition: each partition's evaluation is
logged with its partition, and the run's own check result sums them up."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from aras_assets.launcher import partition_tags
from aras_assets.previews import markdown_table

# Definition-time: the policy is part of each asset's definition, not of a run's settings.
PARTITIONS_PER_RUN = int(os.environ.get("ARAS_PARTITIONS_PER_RUN", "16"))
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN)

# Tags of a run over a partition range (Dagster writes them on backfill runs; it exports no names).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass
class PartitionResult:
    """What one partition of a run gives: its metadata and its check results by check name."""

    metadata: dict[str, Any]
    checks: dict[str, tuple[bool, dict[str, Any]]] = field(default_factory=dict)


def over_partitions(context: dg.AssetExecutionContext, one: Callable[[str], PartitionResult]) -> dg.MaterializeResult:
    """Run `one` for every partition of the run, in order; the asset's result."""
    keys = list(context.partition_keys)
    results: dict[str, PartitionResult] = {}
    for n, key in enumerate(keys, 1):
        results[key] = one(key)
        if len(keys) > 1:
            context.log.info(f"{context.asset_key.to_user_string()}: {key} done ({n}/{len(keys)} partitions)")
    if len(keys) == 1:
        only = results[keys[0]]
        return dg.MaterializeResult(metadata=only.metadata, check_results=[
            dg.AssetCheckResult(check_name=name, passed=passed, metadata=meta) for name, (passed, meta) in only.checks.items()])
    for key, result in results.items():
        for name, (passed, meta) in result.checks.items():
            context.log_event(dg.AssetCheckEvaluation(asset_key=context.asset_key, check_name=name, passed=passed,
                                                      metadata=meta, partition=key))
    names = list(next(iter(results.values())).checks)
    summary = [dg.AssetCheckResult(check_name=name, passed=all(r.checks[name][0] for r in results.values()), metadata={
        "partitions": len(results),
        "failed_partitions": ", ".join(k for k, r in results.items() if not r.checks[name][0]) or "none"})
        for name in names]
    return dg.MaterializeResult(metadata=combined_metadata({k: r.metadata for k, r in results.items()}),
                                check_results=summary)


def _scalar(value: Any) -> Any:
    """A plain int, float or str of a metadata value; None for anything richer (tables, images)."""
    if isinstance(value, dg.MetadataValue):
        if not isinstance(value, (dg.IntMetadataValue, dg.FloatMetadataValue, dg.TextMetadataValue)):
            return None
        value = value.value
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None


def combined_metadata(by_partition: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One metadata for a run over several partitions: integer counts summed, values every
    partition shares kept, the rest (previews) from the first partition, and every scalar in a
    table by partition."""
    first = next(iter(by_partition.values()))
    rows = [{"partition": key, **{name: v for name, v in meta.items() if _scalar(v) is not None}}
            for key, meta in by_partition.items()]
    out: dict[str, Any] = {}
    for name, value in first.items():
        values = [meta.get(name) for meta in by_partition.values()]
        scalars = [_scalar(v) for v in values]
        if all(isinstance(v, int) for v in scalars):
            out[name] = sum(scalars)
        elif all(v == values[0] for v in values) or _scalar(value) is None:
            out[name] = value
    return {**out, "partitions": len(by_partition),
            "by_partition": dg.MetadataValue.md(markdown_table([{k: _scalar(v) for k, v in r.items()} for r in rows]))}


def partition_ranges(ordered: Sequence[str], wanted: Sequence[str], per_run: int = PARTITIONS_PER_RUN) -> list[list[str]]:
    """`wanted` cut into runs of at most `per_run` keys, each contiguous in `ordered` (the
    partitions definition's order, which a range follows), in that order."""
    wanted_set = set(wanted)
    missing = wanted_set - set(ordered)
    if missing:
        raise ValueError(f"not partitions: {sorted(missing)}")
    runs: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        if key in wanted_set and len(current) < per_run:
            current.append(key)
            continue
        if current:
            runs.append(current)
        current = [key] if key in wanted_set else []
    if current:
        runs.append(current)
    return runs


def range_tags(keys: Sequence[str | None]) -> dict[str, str]:
    """The tags of a run over `keys` (contiguous): a single partition's tags for one key, none
    for an unpartitioned run ([None])."""
    if len(keys) == 1:
        return partition_tags(keys[0])
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
