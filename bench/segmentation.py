"""Benchmark: our segmentation evaluation against the ARAS400k release's method, same model, same images.

The baseline follows the release's evaluation: a DataLoader of batch size 1, fp32, contiguous
tensors, model.eval() under torch.no_grad(), the argmax of every image and every truth mask
kept in Python lists, concatenated and flattened at the end, then scikit-learn's f1, jaccard,
precision, recall (macro, zero_division=0) and accuracy on the flat arrays. Ours is
training.evaluate as segmentation_eval runs it for the reported scores: batches of 16,
channels_last, fp32, one confusion matrix accumulated batch by batch.
Both use one randomly initialised model (the demo profile's, by default) with the same weights
and the same 256x256 test images, cut from the embedded sample region; both time loading,
inference and metrics together, after an untimed warm-up pass.

Every measurement runs in a fresh subprocess (this script with the hidden --only flag), so the
peak RSS it reports belongs to that method alone. Both methods run at --images N (the speed)
and at 2N (the memory: ours stays flat, the baseline grows with the predictions it keeps).
The bench also checks our metrics against scikit-learn's on the same predictions (to 1e-9),
times a few training steps on the CPU and, where CUDA is present, compares a bf16
channels_last training step at batch 64 with an fp32 contiguous one at batch 24.

    .venv/bin/python bench/segmentation.py [--images 96] [--arch fpn] [--encoder tu-mobilenetv3_small_050]

The last line printed is:
    segmentation eval speedup vs release method: X (ours A img/s, baseline B img/s, peak RSS ours M MiB vs baseline N MiB)
with the speeds at N images and the peak RSS at 2N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from common import cpu_name, log, peak_rss_kib  # bench/common.py, beside this script
from region import even_picks, region_crops  # bench/region.py

from aras_assets.ids import PATCH_SIZE
from aras_assets.landcover import mask_to_rgb
from aras_assets.segmentation.data import PatchDataset, make_loader
from aras_assets.segmentation.metrics import ConfusionMatrix, scores_from_confusion
from aras_assets.segmentation.models import ModelSpec, build_model
from aras_assets.segmentation.training import evaluate, make_loss, train_epoch
from aras_assets.sources.patches import encode_png, to_8bit
from aras_assets.sources.sample_region import write_sample_region
from resources.device import TorchDeviceResource, TorchRuntime, cpu_has_native_bf16

RESULT_MARK = "BENCH_RESULT "
DEFAULT_WORK_DIR = Path(__file__).resolve().parent / "out" / "segmentation"  # git-ignored
CROP_STRIDE = 32  # overlapping crops, so a small sample region gives a few hundred distinct images
WARMUP_IMAGES = 16
SCORE_KEYS = ("f1", "iou", "precision", "recall", "accuracy")






# --- inputs: test images cut from the sample region ------------------------------------------


def write_test_images(region: Path, out: Path, count: int) -> None:
    """`count` 256x256 image/mask PNG pairs and out/records.parquet (patch_id, image_path, mask_path).

    Crops on a 32-pixel grid of every sample tile, those with nodata labels left out, picked
    evenly; the even picks come first, so the first count/2 records are an even spread too."""
    crops = region_crops(region, CROP_STRIDE)
    picks = even_picks(len(crops), count, "lower --images or raise --tile-px")
    picks = np.concatenate([picks[0::2], picks[1::2]])
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in picks:
        tile, y, x, rgb, classes = crops[k]
        pid = f"{tile}_y{y:04d}_x{x:04d}"
        (out / "images" / f"{pid}.png").write_bytes(encode_png(to_8bit(rgb), 1))
        (out / "masks" / f"{pid}.png").write_bytes(encode_png(mask_to_rgb(classes), 1))
        rows.append({"patch_id": pid, "image_path": f"images/{pid}.png", "mask_path": f"masks/{pid}.png"})
    pl.DataFrame(rows).write_parquet(out / "records.parquet")


def test_set(data: Path, count: int, augment: bool = False) -> PatchDataset:
    return PatchDataset(data, pl.read_parquet(data / "records.parquet").head(count), augment=augment)


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    model = build_model(ModelSpec(args.arch, args.encoder))
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    return model


# --- time split: wrappers that clock the loader and the network inside either method -------


def timed_batches(loader: Iterable, clock: dict[str, float]) -> Iterator:
    batches = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            clock["loading"] += time.perf_counter() - start
            return
        clock["loading"] += time.perf_counter() - start
        yield batch


def timed_forward(forward: Callable, clock: dict[str, float]) -> Callable:
    def call(image: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = forward(image)
        clock["network"] += time.perf_counter() - start
        return out

    return call


# --- the two methods ------------------------------------------------------------------------
# Each returns its scores (fractions) and fills `clock` with loading and network seconds.


def run_baseline(model: torch.nn.Module, dataset: torch.utils.data.Dataset, clock: dict[str, float],
                 keep: list | None = None) -> dict[str, float]:
    """The release's evaluation (see the module docstring). `keep` receives the flat arrays."""
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False)
    forward = timed_forward(model, clock)
    model.eval()
    preds: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    with torch.no_grad():
        for image, mask in timed_batches(loader, clock):
            logits = forward(image)
            preds.append(logits.argmax(1).cpu().numpy())
            truths.append(mask.cpu().numpy())
    y_pred = np.concatenate(preds).flatten()
    y_true = np.concatenate(truths).flatten()
    scores = {
        "f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "iou": jaccard_score(y_true, y_pred, average="macro", zero_division=0),
        "precision": precision_score(y_true, y_pred, average="macro", zero_division=0),
        "recall": recall_score(y_true, y_pred, average="macro", zero_division=0),
        "accuracy": accuracy_score(y_true, y_pred),
    }
    if keep is not None:
        keep[:] = [y_true, y_pred]
    return {k: float(v) for k, v in scores.items()}


def run_ours(forward: Callable, dataset: torch.utils.data.Dataset, runtime: TorchRuntime,
             clock: dict[str, float]) -> tuple[dict[str, float], np.ndarray]:
    loader = make_loader(dataset, batch_size=16)
    matrix, _ = evaluate(timed_forward(forward, clock), timed_batches(loader, clock), runtime)  # type: ignore[arg-type]
    scores = matrix.scores()
    return {k: getattr(scores, k) for k in SCORE_KEYS}, matrix.counts


# --- children: one measurement in a fresh process -------------------------------------------


def eval_child(args: argparse.Namespace) -> dict[str, Any]:
    import_kib = peak_rss_kib()
    dataset = test_set(args.data, args.count)
    # Warm-up on a full first batch and on the last, shorter one if any: every batch shape the
    # timed pass meets has its kernels built (oneDNN builds them per shape) before the clock runs.
    warm = [torch.utils.data.Subset(dataset, range(size))
            for size in sorted({min(WARMUP_IMAGES, len(dataset)), len(dataset) % WARMUP_IMAGES} - {0})]
    model = load_model(args)
    kept: list = []
    if args.only == "ours":
        # The runtime segmentation_eval uses; evaluate() keeps the forward pass in fp32 (reported scores).
        runtime = TorchDeviceResource(device="cpu").runtime(inference=True)
        model = runtime.prepare(model).eval()
        forward = runtime.compiled(model)

        def once(data: torch.utils.data.Dataset, clock: dict[str, float]) -> dict[str, float]:
            return run_ours(forward, data, runtime, clock)[0]
        setup = {"autocast": "None", "channels_last": runtime.channels_last}
    else:
        def once(data: torch.utils.data.Dataset, clock: dict[str, float]) -> dict[str, float]:
            return run_baseline(model, data, clock, kept)
        setup = {"autocast": "None", "channels_last": False}

    for subset in warm if args.warmup else []:
        once(subset, {"loading": 0.0, "network": 0.0})
    runs = []
    scores: dict[str, float] = {}
    for _ in range(args.repeats):
        kept.clear()
        clock = {"loading": 0.0, "network": 0.0}
        start, cpu_start = time.perf_counter(), time.process_time()
        scores = once(dataset, clock)
        runs.append({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start, **clock})
    result = {"method": args.only, "images": len(dataset), "runs": runs, "scores": scores,
              "peak_rss_kib": peak_rss_kib(), "import_rss_kib": import_kib, **setup}
    if args.check and args.only == "baseline":
        result["check"] = check_against_sklearn(args, kept, scores, dataset)
    return result


def check_against_sklearn(args: argparse.Namespace, kept: list, sk_scores: dict[str, float],
                          dataset: torch.utils.data.Dataset) -> dict[str, Any]:
    """Our metrics on the baseline's own kept predictions must equal scikit-learn's to 1e-9;
    then our evaluate in fp32 (channels_last, batch 16) is compared pixel count by pixel count."""
    y_true, y_pred = kept
    matrix = ConfusionMatrix()
    matrix.update(y_true, y_pred)
    same_preds = scores_from_confusion(matrix.counts)
    for key in SCORE_KEYS:
        ours, theirs = getattr(same_preds, key), sk_scores[key]
        assert abs(ours - theirs) <= 1e-9, f"{key}: ConfusionMatrix {ours!r} vs scikit-learn {theirs!r}"
    runtime = TorchRuntime("cpu", None, True)
    model = runtime.prepare(load_model(args)).eval()
    fp32_scores, fp32_counts = run_ours(model, dataset, runtime, {"loading": 0.0, "network": 0.0})
    moved = int(np.abs(fp32_counts - matrix.counts).sum()) // 2  # a changed pixel leaves one cell, enters another
    return {"pixels": int(matrix.total), "fp32_pixels_moved": moved,
            "fp32_max_diff": max(abs(fp32_scores[k] - sk_scores[k]) for k in SCORE_KEYS)}


def train_child(args: argparse.Namespace) -> dict[str, Any]:
    """A few training steps on the CPU (the training runtime: fp32, channels_last) and, with
    CUDA, our bf16 batch-64 step against an fp32 contiguous batch-24 one."""
    torch.manual_seed(args.seed)
    base = test_set(args.data, args.count, augment=True)
    dataset = torch.utils.data.Subset(base, [i % len(base) for i in range(args.train_steps * args.train_batch)])
    runtime = TorchDeviceResource(device="cpu").runtime()
    model = runtime.prepare(load_model(args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = make_loss()
    warm = make_loader(torch.utils.data.Subset(dataset, range(args.train_batch)), args.train_batch)
    train_epoch(model, model, warm, loss_fn, optimizer, runtime, 1.0)
    loader = make_loader(dataset, args.train_batch, shuffle=True, drop_last=True)
    _, seen, seconds = train_epoch(model, model, loader, loss_fn, optimizer, runtime, 1.0)
    result: dict[str, Any] = {"cpu_images": seen, "cpu_seconds": seconds, "autocast": str(runtime.autocast_dtype),
                              "channels_last": runtime.channels_last}
    if torch.cuda.is_available():
        result["cuda"] = cuda_training(args, base)
    return result


def cuda_training(args: argparse.Namespace, dataset: PatchDataset) -> dict[str, Any]:
    """Training steps on device-resident batches, so the GPU's speed is measured, not PNG decoding."""
    loss_fn = make_loss()
    pool = [dataset[i % len(dataset)] for i in range(64)]
    image = torch.stack([p[0] for p in pool]).cuda()
    mask = torch.stack([p[1] for p in pool]).cuda()

    def rate(runtime: TorchRuntime, batch: int, steps: int) -> float:
        model = runtime.prepare(load_model(args))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        batches = [(image[:batch], mask[:batch])] * steps
        train_epoch(model, model, batches[:3], loss_fn, optimizer, runtime, 1.0)  # type: ignore[arg-type]
        torch.cuda.synchronize()
        _, seen, seconds = train_epoch(model, model, batches, loss_fn, optimizer, runtime, 1.0)  # type: ignore[arg-type]
        torch.cuda.synchronize()
        return seen / seconds

    ours = rate(TorchRuntime("cuda", torch.bfloat16, True), 64, args.cuda_steps)
    base = rate(TorchRuntime("cuda", None, False), 24, args.cuda_steps)
    return {"device": torch.cuda.get_device_name(0), "ours_img_s": ours, "base_img_s": base}


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    result = train_child(args) if args.only == "train" else eval_child(args)
    print(RESULT_MARK + json.dumps(result), flush=True)


# --- parent: orchestration and report -------------------------------------------------------


def measure(args: argparse.Namespace, method: str, count: int, warmup: bool = True, check: bool = False,
            repeats: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", method, "--count", str(count),
           "--data", str(args.data), "--weights", str(args.weights), "--arch", args.arch, "--encoder", args.encoder,
           "--repeats", str(repeats), "--threads", str(args.threads), "--seed", str(args.seed),
           "--train-steps", str(args.train_steps), "--train-batch", str(args.train_batch),
           "--cuda-steps", str(args.cuda_steps)]
    cmd += ["--warmup"] if warmup else []
    cmd += ["--check"] if check else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{method} run on {count} image(s) failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    return json.loads(lines[-1][len(RESULT_MARK):])


def best(result: dict[str, Any]) -> dict[str, float]:
    return min(result["runs"], key=lambda run: run["seconds"])


def split_text(run: dict[str, float]) -> str:
    other = run["seconds"] - run["loading"] - run["network"]
    return (f"loading {run['loading']:.2f}s, network {run['network']:.2f}s, "
            f"argmax+metrics+rest {other:.2f}s; cores used {run['cpu_seconds'] / run['seconds']:.2f}")


def parent(args: argparse.Namespace) -> None:
    n, n2 = args.images, 2 * args.images
    work = args.work_dir
    region = work / f"region_{args.tile_px}px_seed{args.seed}"
    start = time.perf_counter()
    write_sample_region(region, seed=args.seed, tile_px=args.tile_px, progress=log)
    args.data = work / f"images_{args.tile_px}px_seed{args.seed}_{n2}"
    write_test_images(region, args.data, n2)
    log(f"{n2} test images ready in {args.data} after {time.perf_counter() - start:.1f}s")
    spec = ModelSpec(args.arch, args.encoder)
    torch.manual_seed(args.seed)
    model = build_model(spec)
    params = sum(p.numel() for p in model.parameters())
    args.weights = work / f"weights_{args.arch}_{args.encoder}_seed{args.seed}.pt"
    torch.save(model.state_dict(), args.weights)
    del model

    log(f"timing ours and the baseline on {n} images (best of {args.repeats}), then both on {n2} images")
    ours = measure(args, "ours", n, repeats=args.repeats)
    base = measure(args, "baseline", n, check=True, repeats=args.repeats)
    ours2 = measure(args, "ours", n2)
    base2 = measure(args, "baseline", n2)
    log(f"timing {args.train_steps} training steps of batch {args.train_batch}")
    train = measure(args, "train", n2, warmup=False)

    native = cpu_has_native_bf16()
    print(f"device: cpu ({cpu_name()}), {os.cpu_count()} CPU(s), torch threads {args.threads}; "
          f"CPU bf16 native (AMX / AVX512-BF16): {'yes' if native else 'no'}; "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; torch {torch.__version__}")
    print(f"model: {args.arch} / {args.encoder}, {params / 1e6:.2f} M parameters, random init (seed {args.seed}), "
          f"same weights for both; {n} test images of {PATCH_SIZE}x{PATCH_SIZE} (and {n2} for memory), "
          f"crops of the sample region ({args.tile_px} px tiles)")
    print(f"ours: training.evaluate, batch 16, channels_last={ours['channels_last']}, autocast {ours['autocast']}, "
          "one confusion matrix")
    print("baseline (release): batch 1, fp32, contiguous, no_grad, predictions and masks kept, scikit-learn metrics")
    rates = {}
    for name, res, res2 in (("ours", ours, ours2), ("baseline", base, base2)):
        run, run2 = best(res), best(res2)
        rates[name] = n / run["seconds"]
        print(f"{name}: {n} images in {run['seconds']:.2f}s = {rates[name]:.1f} img/s "
              f"({split_text(run)}); {n2} images: {n2 / run2['seconds']:.1f} img/s")
    rss = {name: (res["peak_rss_kib"] / 1024, res2["peak_rss_kib"] / 1024)
           for name, res, res2 in (("ours", ours, ours2), ("baseline", base, base2))}
    for name in ("ours", "baseline"):
        a, b = rss[name]
        print(f"peak RSS {name}: {n} images {a:.0f} MiB, {n2} images {b:.0f} MiB ({b - a:+.0f} MiB for {n2 - n} more)")
    print(f"(interpreter and imports alone: {ours['import_rss_kib'] / 1024:.0f} MiB before any image)")

    check = base["check"]
    df1 = abs(ours["scores"]["f1"] - base["scores"]["f1"])
    dacc = abs(ours["scores"]["accuracy"] - base["scores"]["accuracy"])
    print(f"macro F1: ours {ours['scores']['f1']:.6f}, baseline {base['scores']['f1']:.6f} (|diff| {df1:.2e}); "
          f"pixel accuracy: ours {ours['scores']['accuracy']:.6f}, baseline {base['scores']['accuracy']:.6f} "
          f"(|diff| {dacc:.2e})")
    if df1 > 0.01:
        print(f"WARNING: macro F1 of ours and the baseline differ by {df1:.4f} (> 0.01): "
              f"{ours['autocast']} autocast changes the predictions more than expected")
    print(f"check: ConfusionMatrix on the baseline's {check['pixels']} kept pixels equals scikit-learn "
          f"({', '.join(SCORE_KEYS)}) to 1e-9; ours in fp32 moves {check['fp32_pixels_moved']} pixel(s) "
          f"(largest score difference {check['fp32_max_diff']:.1e})")
    print(f"training throughput: {train['cpu_images'] / train['cpu_seconds']:.1f} img/s "
          f"(cpu, fp32, batch {args.train_batch})")
    if "cuda" in train:
        cuda = train["cuda"]
        print(f"training step speedup vs fp32 batch-24: {cuda['ours_img_s'] / cuda['base_img_s']:.2f} "
              f"(ours bf16 channels_last batch 64 {cuda['ours_img_s']:.1f} img/s, "
              f"fp32 contiguous batch 24 {cuda['base_img_s']:.1f} img/s, {cuda['device']})")
    else:
        print("training step comparison on the GPU skipped: no CUDA device is present")
    print(f"segmentation eval speedup vs release method: {rates['ours'] / rates['baseline']:.2f} "
          f"(ours {rates['ours']:.1f} img/s, baseline {rates['baseline']:.1f} img/s, "
          f"peak RSS ours {rss['ours'][1]:.0f} MiB vs baseline {rss['baseline'][1]:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96, help="test images timed (memory is also measured at twice)")
    parser.add_argument("--arch", default="fpn")
    parser.add_argument("--encoder", default="tu-mobilenetv3_small_050")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method at --images; the best is used")
    parser.add_argument("--tile-px", type=int, default=1024, help="sample region tile size in pixels")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both")
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--cuda-steps", type=int, default=20, help="timed training steps per method on CUDA")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    # Hidden: what the parent passes to a measuring child.
    parser.add_argument("--only", choices=("ours", "baseline", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be at least 1")
    if args.only:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
