"""Generation assets (being built)."""

ASSETS: list = []
JOBS: list = []
