"""Asset checks about the whole dataset (lineage completeness)."""

CHECKS: list = []
