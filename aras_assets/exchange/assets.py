"""The dataset_export asset: the data root in the release layout under `export/`. Thin wiring."""

import dagster as dg

from aras_assets import layout
from aras_assets.errors import step_errors
from aras_assets.exchange.export import export_dataset
from aras_assets.settings import SettingsResource
from resources.storage import StorageResource


@dg.asset(group_name="exchange", code_version="1", kinds={"zip", "json"}, deps=["splits", "caption_eval", "gan_fid"])
def dataset_export(context: dg.AssetExecutionContext, settings: SettingsResource,
                   storage: StorageResource) -> dg.MaterializeResult:
    """The dataset in the ARAS400k release layout (train/val/test/synth zips, MD5 table), with a
    STAC Collection, Croissant metadata and a dataset card, in `export/` (`aras export DIR` writes
    the same anywhere). Deterministic: the same data gives the same bytes."""
    s = settings.get()
    with step_errors(context, s.retry_window_s):
        out = storage.path(layout.EXPORT)
        summary = export_dataset(storage.root_path, out, overwrite=True, say=context.log.info)
    return dg.MaterializeResult(metadata={
        **{f"images_{k}": v for k, v in summary.counts.items()},
        "captions": summary.captions, "stac_items": summary.stac_items,
        "md5": dg.MetadataValue.json(summary.zips), "class_shares_pct": dg.MetadataValue.json(summary.class_shares),
        "path": dg.MetadataValue.path(str(out)),
    })


ASSETS = [dataset_export]
