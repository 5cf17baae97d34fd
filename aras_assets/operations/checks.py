"""Asset checks about the whole dataset (lineage completeness)."""

import dagster as dg

from aras_assets.operations.lineage import LineageError, broken_chains
from resources import MlflowResource, StorageResource


@dg.asset_check(asset="caption_eval", name="lineage_complete", description=(
    "Every caption resolves to its image and a source tile (S2 and WorldCover URIs), every synthetic "
    "image to a registered generator version and every labeler mask to a registered segmentation version."))
def lineage_complete(storage: StorageResource, mlflow: MlflowResource) -> dg.AssetCheckResult:
    try:
        audit = broken_chains(storage.root_path, mlflow.client())
    except LineageError as exc:  # a missing column or corrupt manifest: the audit itself cannot finish
        return dg.AssetCheckResult(passed=False, description=str(exc), metadata={"error": str(exc)})
    broken = audit["broken"]
    metadata: dict[str, object] = {
        "captions": audit["captions"], "synthetic_images": audit["synthetic_images"],
        "labelled_images": audit["labelled_images"], "broken_chains": audit["broken_total"],
        **{f"{kind}_count": b["count"] for kind, b in broken.items()},
        "examples": dg.MetadataValue.json({kind: b["examples"] for kind, b in broken.items() if b["count"]}),
    }
    description = ("all chains complete" if not audit["broken_total"] else
                   "; ".join(f"{b['count']} {kind.replace('_', ' ')}" for kind, b in broken.items() if b["count"]))
    return dg.AssetCheckResult(passed=audit["broken_total"] == 0, description=description, metadata=metadata)


CHECKS: list = [lineage_complete]
