"""Lineage audit: trace a caption, image or patch id back through its image and source patch to the
generator, the S2 and WorldCover tiles, pixel windows, bounds and source URIs; and check that every
chain in the dataset is complete.

    ids        what an id names and which partition holds its record
    manifests  the kinds of manifest read, where each lives, the filtered scan
    trace      trace / trace_many / trace_each
    format     format_trace, the chain as text
    audit      broken_chains, registered_versions
"""

from aras_assets.operations.lineage.audit import broken_chains, registered_versions
from aras_assets.operations.lineage.format import format_trace
from aras_assets.operations.lineage.ids import ImageRef, LineageError, RecordRef, parse_image_id, parse_record_id
from aras_assets.operations.lineage.trace import trace, trace_each, trace_many

__all__ = ["ImageRef", "LineageError", "RecordRef", "broken_chains", "format_trace", "parse_image_id", "parse_record_id",
           "registered_versions", "trace", "trace_each", "trace_many"]
