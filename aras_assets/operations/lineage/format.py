"""Text output of a traced chain: caption, then image, then source patch and tiles, indented."""

from __future__ import annotations

from typing import Any

from aras_assets.layout import UNCOND


def _in_file(patch: dict[str, Any]) -> str:
    """The window in the WorldCover file's own pixels, where the file is a crop of its tile."""
    fw, ww = patch.get("wc_file_window"), patch["wc_window"]
    if fw is None or (fw["x_off"], fw["y_off"]) == (ww["x_off"], ww["y_off"]):
        return ""
    return f"  (in that file: x {fw['x_off']}, y {fw['y_off']})"


def format_trace(record: dict[str, Any]) -> str:
    """The chain as indented text, caption first, source tiles last."""
    lines: list[str] = []
    pad = ""
    caption, image, label, patch = record["caption"], record["image"], record["labels"], record["patch"]
    if caption is not None:
        lines += [f"caption {caption['caption_id']}  [{caption['origin']}, {caption['mode']} #{caption['caption_index']}]",
                  f"  text:       {caption['text']!r}",
                  f"  captioner:  {caption['backend']} / {caption['model']}, prompt {caption['prompt_hash']}, "
                  f"seed {caption['seed']}",
                  f"  manifest:   {caption['manifest']}"]
        pad = "  "
    if image is not None:
        gen = image["generator"]
        lines.append(f"{pad}image {image['image_id']}  [{image['origin']}, shard {image['shard']}, #{image['index']}]")
        if image["seed"] is None:  # taken in from a release folder: no generator run, no seed on record
            lines.append(f"{pad}  generator:  none on record: imported from a release ({gen['model_name']}); no seed, "
                         "so it cannot be regenerated")
        else:
            lines += [f"{pad}  generator:  {gen['model_name']} v{gen['model_version']} (MLflow run {gen['mlflow_run_id']})",
                      f"{pad}  sampling:   seed {image['seed']}, truncation psi {image['truncation_psi']}, variant "
                      f"{image['variant']}, batch of {image['batch_size']} from index {image['batch_start']}",
                      f"{pad}  produced:   {image['device']}/{image['precision']}, {image['resolution']} px, "
                      f"generator code {image['generator_code']}, Dagster run {image['dagster_run_id']}"]
        lines.append(f"{pad}  file:       {image['image_path']} (sha256 {image['content_sha256']})")
        if image.get("mask_path"):
            lines.append(f"{pad}  mask:       {image['mask_path']}")
        if label is not None:
            run = f" (MLflow run {label['mlflow_run_id']})" if label["mlflow_run_id"] else ""
            lines.append(f"{pad}  mask:       {label['mask_path']} by labeler {label['model_name']} "
                         f"v{label['model_version']}{run}")
        elif image["origin"] == UNCOND and not image.get("mask_path"):
            lines.append(f"{pad}  mask:       not labelled yet")
        lines.append(f"{pad}  manifest:   {image['manifest']}")
        pad += "  "
    if patch is not None:
        w, ww, b = patch["window"], patch["wc_window"], patch["bounds"]
        role = "  (conditioning mask)" if image is not None else ""
        lines += [f"{pad}patch {patch['patch_id']}  [row {patch['row']}, col {patch['col']}]{role}",
                  f"{pad}  S2 tile:    {patch['s2_tile']}  x {w['x_off']}, y {w['y_off']}, {w['width']}x{w['height']} px  "
                  f"{patch['s2_uri']}",
                  f"{pad}  WorldCover: {patch['wc_tile']}  x {ww['x_off']}, y {ww['y_off']}, "
                  f"{ww['width']}x{ww['height']} px  {patch['wc_uri']}{_in_file(patch)}",
                  f"{pad}  bounds:     lon {b['lon_min']:.6f}..{b['lon_max']:.6f}, lat {b['lat_min']:.6f}..{b['lat_max']:.6f}",
                  f"{pad}  files:      {patch['image_path']}, {patch['mask_path']} ({patch['normalization']})",
                  f"{pad}  manifest:   {patch['manifest']}"]
    if record.get("dagster_runs"):
        lines.append("Dagster runs:")
        lines += [f"  {label_}: {run or 'never materialized'}" for label_, run in record["dagster_runs"].items()]
    return "\n".join(lines)
