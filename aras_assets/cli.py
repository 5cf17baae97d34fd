"""The `aras` command: what a person types."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aras_assets import layout
from aras_assets.instance import default_dagster_home, ensure_dagster_home


def _overrides(pairs: list[str]) -> dict[str, str]:
    from aras_assets.settings import SettingsError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SettingsError(f"--set expects name=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_run(args: argparse.Namespace, profile: str | None) -> int:
    from aras_assets.pipeline import StageFailed, run_pipeline

    try:
        summary = run_pipeline(profile, _overrides(args.set), quiet=not args.verbose, command=f"aras {args.command}",
                               in_process=args.in_process)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from resources.tracking import MlflowResource

    root = Path(summary.data_root)
    archs = [key[len("segmentation_job["):-1] for key in summary.run_ids if key.startswith("segmentation_job[")]
    print(f"\nDone: {len(summary.tiles)} tiles -> patches and splits; segmentation: {', '.join(archs) or 'none'}.")
    print(f"  data:        {root}")
    print(f"  patches:     {root / 'patches'}/<tile>/{{images,masks,manifest.parquet}}")
    print(f"  splits:      {root / 'splits' / 'splits.parquet'}")
    if archs:
        tables = root / "eval" / "segmentation" / "tables.md"
        print(f"  models:      {root / 'models' / 'segmentation'}/<arch>/best.pt (registered as aras-segmentation-<arch>)")
        print(f"  test scores: {tables}")
        print(f"  labels:      {root / 'labels' / 'real_patch_labels'}/<tile>/{{masks,manifest.parquet}}")
        if tables.exists():
            print("\n" + tables.read_text())
    fid = root / "eval" / "generation" / "fid.json"
    if fid.exists():
        import json

        print(f"  synthetic:   {root / 'synthetic'}/{{uncond/<shard>,cond/<tile>}}/{{images,manifest.parquet}} "
              "(aras regenerate <image_id> rebuilds one)")
        for row in json.loads(fid.read_text()):
            paper = row["paper_fid (Inception)"]
            beside = f"; paper {paper:g}" if paper is not None else "; not on the paper's Inception scale"
            print(f"  FID {row['set']:>6}: {row['fid']:.4f} in {row['features']} features "
                  f"({row['synthetic_images']} vs {row['real_images']} images{beside})")
    table2 = root / layout.CAPTION_TABLE2
    if table2.exists():
        import polars as pl

        print(f"  captions:    {root / 'captions'}/<origin>/<partition>/captions.parquet")
        table = pl.read_parquet(table2).select("subset", "model", "mode", "captions", "unique", "redundancy_pct",
                                                "paper_redundancy_pct")
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
            print(f"  captions per (model, method), the paper's Table 2 beside (%):\n"
                  f"{table.with_columns(pl.col('redundancy_pct').round(2))}")
    ablation_tables = root / layout.ABLATION_TABLES
    if ablation_tables.exists():
        print(f"  ablation:    {ablation_tables} (Tables 3 and 4 per training set, the paper's beside)")
    if (root / layout.PROJECTION_POINTS).exists():
        print(f"  projection:  {root / layout.PROJECTION}/{{tsne,umap}}.png, points.parquet, silhouettes.json")
    if (root / layout.REPORT_HTML).exists():
        print(f"  report:      {root / layout.REPORT_HTML} (and report.md beside its figures)")
    export = root / "export"
    if (export / "README.md").exists():
        print(f"  export:      {export}/{{train,val,test,synth}}.zip, MD5.md, stac/, croissant.json, README.md "
              "(the release layout; `aras import` takes it in)")
    print(f"  Dagster UI:  aras ui   (or: DAGSTER_HOME={summary.dagster_home} dagster dev)")
    print(f"  MLflow UI:   {MlflowResource().ui_command()}")
    return 0


def cmd_sample_region(args: argparse.Namespace) -> int:
    from aras_assets.settings import SettingsError, load_settings
    from aras_assets.sources.sample_region import write_sample_region
    from resources.storage import StorageResource

    try:
        settings = load_settings(overrides=_overrides(args.set))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else StorageResource().resolve("sample_region")
    seed = settings.sample_seed if args.seed is None else args.seed
    tile_px = settings.sample_tile_px if args.tile_px is None else args.tile_px
    paths = write_sample_region(out, seed, tile_px, progress=print)
    for p in paths:
        print(p)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting with where its value comes from, then the places in effect: the data root,
    the tiles read, the Dagster instance and the MLflow store."""
    from aras_assets import deploy
    from aras_assets.settings import load_settings, setting_sources
    from resources import MlflowResource
    from resources.storage import StorageResource

    deployment = deploy.current()
    overrides = _overrides(args.set)
    settings = load_settings(args.profile, overrides)
    sources = setting_sources(args.profile, overrides)
    for f in dataclasses.fields(settings):
        print(f"{f.name:24s} {getattr(settings, f.name)!r}  [{sources[f.name].replace('override', '--set')}]")
    root = StorageResource().root_path
    root_from = "environment ARAS_DATA_ROOT" if os.environ.get("ARAS_DATA_ROOT") else "default ./data"
    print(f"\n{'data root':24s} {root}  [{root_from}]")
    if settings.tile_source == "templates":
        print(f"{'S2 tiles':24s} {settings.s2_uri_template}\n{'WorldCover tiles':24s} {settings.wc_uri_template}")
    else:
        print(f"{'tiles':24s} {root / settings.tile_source}/")
    deploy_from = f"environment {deploy.DEPLOY_ENV}" if os.environ.get(deploy.DEPLOY_ENV) else "default"
    print(f"{'deployment':24s} {deployment}  [{deploy_from}]")
    config = deploy.instance_config(deployment).relative_to(deploy.PROJECT_ROOT)
    print(f"{'Dagster instance':24s} {default_dagster_home()}  [{config}]")
    print(f"{'MLflow tracking':24s} {deploy.redacted(MlflowResource().resolved_tracking_uri)}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """Label a folder or Parquet manifest of images with a registered segmentation model."""
    import tempfile

    from tqdm import tqdm

    from aras_assets import layout
    from aras_assets.mlflow_runs import download_checkpoint
    from aras_assets.segmentation.labeler import Labeler, label_images, shard_images
    from aras_assets.segmentation.models import load_model
    from aras_assets.segmentation.registry import resolve_version
    from resources import MlflowResource, TorchDeviceResource
    from resources.storage import write_parquet_atomic

    tracking = MlflowResource(tracking_uri=args.tracking_uri or "")
    out = Path(args.out)
    source = Path(args.source)
    rasters = geotiffs(source)
    images = None if rasters else shard_images(source)
    ref = resolve_version(tracking.client(), args.model)
    with tempfile.TemporaryDirectory() as scratch:
        model, spec, _ = load_model(download_checkpoint(tracking.resolved_tracking_uri, ref, Path(scratch)))
    if rasters:
        return label_rasters(model, rasters, out, str(ref), args.overlap)
    bar = tqdm(total=images.height, desc=f"labelling with {ref}", unit="img")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    rows = label_images(Labeler(model, spec, ref.name, ref.version), images, out / layout.MASKS, layout.MASKS,
                        TorchDeviceResource().runtime(inference=True), args.batch_size, progress=progress)
    bar.close()
    write_parquet_atomic(rows, out / layout.MANIFEST)
    print(f"{rows.height} masks by {ref} -> {out / layout.MASKS}; manifest {out / layout.MANIFEST}")
    return 0


def geotiffs(source: Path) -> list[Path]:
    """The GeoTIFFs to label: the file itself, or a folder's .tif files when it has no other images."""
    from aras_assets.segmentation.geotiff_labels import is_geotiff

    if source.is_file():
        return [source] if is_geotiff(source) else []
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.is_file())
        tifs = [p for p in found if is_geotiff(p)]
        return tifs if tifs and len(tifs) == len([p for p in found if p.suffix.lower() != ".parquet"]) else []
    return []


def label_rasters(model: Any, rasters: list[Path], out: Path, ref: str, overlap: int) -> int:
    """Each S2 GeoTIFF (a crop or a whole tile, read window by window) to a mask GeoTIFF with its
    CRS, transform and the class colour table, a PNG beside it for crops, and a manifest."""
    import polars as pl
    import rasterio
    from tqdm import tqdm

    from aras_assets.landcover import CLASS_NAMES, mask_to_rgb
    from aras_assets.segmentation.geotiff_labels import label_geotiff
    from aras_assets.sources.patches import encode_png
    from resources import TorchDeviceResource
    from resources.storage import atomic_write_bytes, write_parquet_atomic

    runtime = TorchDeviceResource().runtime(inference=True)
    model = runtime.prepare(model).eval()
    folder = out / layout.MASKS
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in rasters:
        mask_tif = folder / f"{path.stem}.tif"
        with tqdm(desc=f"{path.name} with {ref}", unit="window") as bar:
            counts = label_geotiff(model, path, mask_tif, runtime, overlap=overlap,
                                   progress=lambda done, total: (setattr(bar, "total", total), bar.update(done - bar.n)))
        with rasterio.open(mask_tif) as ds:
            small = ds.width * ds.height <= 2048 * 2048
            if small:  # the PNG a crop's users expect beside it; a whole tile stays a GeoTIFF
                atomic_write_bytes(folder / f"{path.stem}.png", encode_png(mask_to_rgb(ds.read(1)), 1))
        rows.append({"image_id": path.stem, "image_path": str(path), "mask_tif": f"{layout.MASKS}/{mask_tif.name}",
                     "mask_path": f"{layout.MASKS}/{path.stem}.png" if small else None, "model": ref,
                     **{f"px_{name}": int(n) for name, n in zip(CLASS_NAMES, counts, strict=True)}})
    write_parquet_atomic(pl.DataFrame(rows), out / layout.MANIFEST)
    print(f"{len(rows)} georeferenced masks by {ref} -> {folder}; manifest {out / layout.MANIFEST}")
    return 0


def writable_output(path: str) -> Path:
    """An output file the user named: its folder must exist and be writable, checked before any work."""
    from aras_assets.errors import BadInputError

    out = Path(path)
    if not out.parent.is_dir():
        raise BadInputError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")
    if not os.access(out.parent, os.W_OK) or out.is_dir():
        raise BadInputError(f"--out {out}: cannot write there; choose another path")
    return out


def cmd_regenerate(args: argparse.Namespace) -> int:
    """Rebuild a synthetic image from its manifest row and check it is byte-identical."""
    from aras_assets.generation.regenerate import regenerate
    from resources import MlflowResource, StorageResource
    from resources.storage import atomic_write_bytes

    out = writable_output(args.out) if args.out else None
    tracking = MlflowResource(tracking_uri=args.tracking_uri or "")
    result = regenerate(StorageResource().root_path, tracking.resolved_tracking_uri, args.image_id)
    if out is not None:
        atomic_write_bytes(out, result.data)
    verdict = "byte-identical to" if result.identical else "DIFFERENT from"
    print(f"{result.image_id}: sha256 {result.sha256}, {verdict} the recorded image {result.stored_path} "
          f"(recorded sha256 {result.expected_sha256})" + (f"; written to {out}" if out else ""))
    if not result.identical and result.code_changed:
        print(f"the image was made by generator code {result.recorded_code}; this installation runs "
              f"{result.current_code}, and a byte-identical replay needs the same code")
    return 0 if result.identical else 1


def read_ids(args: argparse.Namespace) -> list[str]:
    from aras_assets.errors import BadInputError

    ids = list(args.ids)
    if args.file:
        try:
            text = Path(args.file).read_text()
        except OSError as exc:
            raise BadInputError(f"cannot read id file {args.file}: {exc.strerror or exc}") from exc
        ids += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise BadInputError("no ids given (pass ids or --file FILE)")
    return ids


def cmd_lineage(args: argparse.Namespace) -> int:
    """Trace captions, images or patches back to their generator, source patch, tiles and URIs.
    Good ids are printed; each bad id gets its own error line (exit 1 if any)."""
    import contextlib
    import json

    from aras_assets.operations.lineage import LineageError, format_trace, trace_each
    from resources.storage import StorageResource

    ids = read_ids(args)
    with contextlib.ExitStack() as stack:
        instance = None
        home = default_dagster_home()
        if not args.no_runs and (home / "dagster.yaml").exists():
            import dagster as dg

            instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        results = trace_each(StorageResource().root_path, ids, instance)
    records = [r for r in results if not isinstance(r, LineageError)]
    if records:
        if args.json:
            print(json.dumps(records[0] if len(ids) == 1 else records, indent=2))
        else:
            print("\n\n".join(format_trace(r) for r in records))
    errors = [r for r in results if isinstance(r, LineageError)]
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_export(args: argparse.Namespace) -> int:
    """The data root in the ARAS400k release layout with MD5 table, STAC, Croissant and card."""
    from aras_assets.exchange.export import export_dataset
    from resources.storage import StorageResource

    summary = export_dataset(StorageResource().root_path, Path(args.dir), overwrite=args.overwrite, say=print)
    print(f"{summary.folder}: {', '.join(f'{k} {v}' for k, v in summary.counts.items())} images, {summary.captions} "
          f"captions, {summary.stac_items} STAC items; check with: cd {summary.folder} && md5sum -c md5sums.txt")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """A release folder (zipped or not) -> patches, splits, synthetic images and captions in the data root."""
    from aras_assets.exchange.importer import import_release
    from aras_assets.settings import load_settings
    from resources.storage import StorageResource

    settings = load_settings(overrides=_overrides(args.set))
    found = import_release(Path(args.dir), StorageResource().root_path, settings.s2_uri_template,
                           settings.wc_uri_template, say=print)
    ensure_dagster_home()
    import dagster as dg

    from aras_assets.partitions import S2_TILE_PARTITIONS

    with dg.DagsterInstance.get() as instance:
        new = [t for t in found.tiles if not instance.has_dynamic_partition(S2_TILE_PARTITIONS, t)]
        instance.add_dynamic_partitions(S2_TILE_PARTITIONS, new)
    print(f"registered {len(new)} new s2_tile partitions; run the later stages on it with "
          "`aras run --set tile_source=release` (or materialize them in the UI with that setting)")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    home = ensure_dagster_home()
    print(f"Dagster UI on http://{args.host}:{args.port} with DAGSTER_HOME={home}")
    # The interpreter running `aras` has dagster installed, whether or not its bin/ is on PATH.
    os.execv(sys.executable, [sys.executable, "-m", "dagster", "dev", "-m", "definitions",
                              "-h", args.host, "-p", str(args.port)])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aras", description="ARAS synthetic-augmented remote-sensing data platform")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_set(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="override one setting (repeatable); see `aras settings`")
        return p

    demo = with_set(sub.add_parser("demo", help="run every stage on the embedded sample region"))
    demo.add_argument("-v", "--verbose", action="store_true", help="show Dagster's step logs")
    in_process_help = ("run every run in this process instead of launching it through dagster dev "
                       "(faster to start; the UI then lists the runs but cannot re-execute them as their jobs)")
    demo.add_argument("--in-process", action="store_true", help=in_process_help)
    run = with_set(sub.add_parser("run", help="run every stage with a profile"))
    run.add_argument("--profile", default=None, help="demo or paper (default: ARAS_PROFILE or demo)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("--in-process", action="store_true", help=in_process_help)
    sample = with_set(sub.add_parser("sample-region", help="write the sample region's GeoTIFFs"))
    sample.add_argument("--out", help="folder (default: <data root>/sample_region)")
    sample.add_argument("--seed", type=int)
    sample.add_argument("--tile-px", type=int, help="pixels per side of each S2 file")
    settings = with_set(sub.add_parser("settings", help="print the resolved settings"))
    settings.add_argument("--profile", default=None)
    label = sub.add_parser("label", help="label images or S2 GeoTIFFs with a registered model")
    label.add_argument("source", help="folder of images, Parquet manifest with image_path (and image_id), or a "
                                      "4-band uint16 S2 GeoTIFF (or a folder of them: georeferenced mask GeoTIFFs)")
    label.add_argument("--out", required=True, help="folder for masks/ and manifest.parquet")
    label.add_argument("--model", default="champion", help="champion, <arch>, <arch>/<version> or <arch>@<alias>")
    label.add_argument("--batch-size", type=int, default=16)
    label.add_argument("--overlap", type=int, default=32,
                       help="GeoTIFF inputs: pixels shared by neighbouring 256-px windows (a whole tile is labelled "
                            "window by window; each window keeps its centre)")
    label.add_argument("--tracking-uri", default=None, help="MLflow store (default: the project's)")
    lineage = sub.add_parser(
        "lineage", help="trace caption, image or patch ids to their generator, patch, tiles and URIs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples (ids of the demo):\n  aras lineage N38E029_001_002_text_qwen3-4b_0\n"
               "  aras lineage N38E029_001_002 uncond_0000_00003 cond_N38E029_00000\n"
               "  aras lineage --file ids.txt --json")
    lineage.add_argument("ids", nargs="*", metavar="ID", help="caption, image or patch id")
    lineage.add_argument("--file", help="file of ids, one per line")
    lineage.add_argument("--json", action="store_true", help="JSON: one object, or a list for several ids")
    lineage.add_argument("--no-runs", action="store_true", help="skip the Dagster run ids (no instance lookup)")
    regen = sub.add_parser("regenerate", help="rebuild a synthetic image from its seed and check it byte for byte")
    regen.add_argument("image_id", help="e.g. uncond_0000_00003 or cond_N38E029_00000 (ids of the demo)")
    regen.add_argument("--out", help="also write the rebuilt PNG here")
    regen.add_argument("--tracking-uri", help="MLflow tracking URI (default: the project's store)")
    export = sub.add_parser("export", help="write the dataset in the ARAS400k release layout (zips, MD5, STAC, Croissant, card)")
    export.add_argument("dir", help="an empty or new folder")
    export.add_argument("--overwrite", action="store_true", help="replace a folder that is not empty")
    imp = with_set(sub.add_parser("import", help="take in a folder in the ARAS400k release layout (zipped or unzipped)"))
    imp.add_argument("dir", help="folder holding train/val/test/synth folders or zips (and an MD5 table)")
    ui = sub.add_parser("ui", help="start the Dagster UI on the project's instance")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)

    args = parser.parse_args(argv)  # a usage mistake exits 2 here, as argparse does
    # MLflow's INFO lines (creating its tables ...) are noise beside our own output.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    commands = {"demo": lambda a: cmd_run(a, "demo"), "run": lambda a: cmd_run(a, a.profile),
                "sample-region": cmd_sample_region, "settings": cmd_settings, "label": cmd_label,
                "lineage": cmd_lineage, "regenerate": cmd_regenerate, "ui": cmd_ui,
                "export": cmd_export, "import": cmd_import}
    return run_command(commands[args.command], args)


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A user's mistake is one `error:` line and exit 1, never a traceback; a closed pipe
    (`aras lineage ... | head`) ends quietly. Anything else is a bug and keeps its traceback."""
    from aras_assets.errors import BadInputError

    try:
        code = command(args)
        sys.stdout.flush()
        return code
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Python would flush stdout again at exit and fail the same way: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
