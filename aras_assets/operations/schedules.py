"""Schedules that backfill missing partitions a slice at a time, and the new-tile sensor."""

SCHEDULES: list = []
SENSORS: list = []
