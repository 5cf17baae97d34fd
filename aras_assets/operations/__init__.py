"""Operating the platform: lineage audit, lineage checks, scheduled partial backfills."""
