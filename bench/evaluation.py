"""Benchmark: the feature projection's two costs, feature extraction and the projection itself.

Feature extraction: the demo profile's segmentation model (random weights, its encoder's last
stage average-pooled, as feature_projection runs it) over the same 32-px images brought to
256 px, batched (32 at a time, as the asset does) against one image at a time (the baseline);
images/s of each and the ratio.

Projection: standardized features of three Gaussian sets (real, uncond, cond; 512 dimensions,
the paper profile's ResNet-34 encoder width), reduced to 50 principal components (the
projection_pca setting), through `projection.umap_2d` at 10k and 50k points, and t-SNE at 10k
points (Barnes-Hut grows too slowly past that for a benchmark run). Each size runs in a fresh
subprocess (this script with --only), so its peak RSS is its own; an untimed warm-up on 600
points first lets numba compile umap (its time is printed too), as in a worker that projects
more than once. Target: UMAP of 50k points in under 120 s with a peak
under 4 GiB on 2 cores.

    .venv/bin/python bench/evaluation.py [--images 256] [--dims 512]

The last line printed is:
    projection of 50k points: T s (features A img/s)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_features(points: int, dims: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    sizes = {"real": points // 2, "uncond": points // 3}
    sizes["cond"] = points - sum(sizes.values())
    centres = {name: rng.normal(0, 0.5, dims) for name in sizes}
    features = np.concatenate([rng.normal(centres[n], 1.0, (k, dims)) for n, k in sizes.items()]).astype(np.float32)
    return features, [n for n, k in sizes.items() for _ in range(k)]


def only(method: str, points: int, dims: int, pca: int) -> None:
    """One measurement in this process: seconds and peak RSS, as JSON on the last line."""
    from aras_assets.evaluation.projection import principal_components, silhouettes, standardize, tsne_2d, umap_2d

    project = umap_2d if method == "umap" else tsne_2d
    start = time.perf_counter()
    project(standardize(synthetic_features(600, 50, seed=1)[0]), seed=0)  # untimed: numba compiles umap here
    warm_up = time.perf_counter() - start
    features, labels = synthetic_features(points, dims)
    start = time.perf_counter()
    coords = project(principal_components(standardize(features), pca, seed=0), seed=0)
    score = silhouettes(coords, labels, sample=2000, seed=0)["overall"]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "silhouette": score, "warm_up": warm_up}))


def measure(method: str, points: int, dims: int, pca: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--only", method, "--points", str(points), "--dims", str(dims),
                           "--pca", str(pca)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def feature_speed(images: int) -> tuple[float, float]:
    """images/s batched (32) and one at a time, same model and images."""
    import torch

    from aras_assets.evaluation.features import FEATURE_SIZE
    from aras_assets.generation.fid import encoder_feature_fn, imagenet_input
    from aras_assets.segmentation.models import ModelSpec, build_model
    from aras_assets.settings import DEMO_ENCODERS

    torch.manual_seed(0)
    fn = encoder_feature_fn(build_model(ModelSpec("pan", DEMO_ENCODERS["pan"]), None).eval())
    batch = np.random.default_rng(0).integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    device = torch.device("cpu")

    def run(size: int) -> float:
        with torch.inference_mode():
            fn(imagenet_input(batch[:size], FEATURE_SIZE, device))  # warm-up
            start = time.perf_counter()
            for begin in range(0, images, size):
                fn(imagenet_input(batch[begin:begin + size], FEATURE_SIZE, device))
            return images / (time.perf_counter() - start)

    return run(32), run(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--only", choices=("umap", "tsne"))
    parser.add_argument("--points", type=int, default=0)
    parser.add_argument("--pca", type=int, default=50, help="principal components first (the projection_pca setting)")
    args = parser.parse_args()
    if args.only:
        only(args.only, args.points, args.dims, args.pca)
        return
    batched, single = feature_speed(args.images)
    print(f"features: batched {batched:.1f} img/s, one at a time {single:.1f} img/s: {batched / single:.2f}x")
    results = {}
    for method, points in (("umap", 10_000), ("tsne", 10_000), ("umap", 50_000)):
        results[(method, points)] = r = measure(method, points, args.dims, args.pca)
        print(f"{method} of {points:,} points x {args.dims} dims (PCA {args.pca}): {r['seconds']:.1f} s, "
              f"peak RSS {r['peak_mib']:.0f} MiB, silhouette {r['silhouette']:.3f} (untimed warm-up {r['warm_up']:.1f} s)")
    big = results[("umap", 50_000)]
    small = results[("umap", 10_000)]
    print(f"UMAP 50k / 10k time: {big['seconds'] / small['seconds']:.2f}x for 5x the points; target < 120 s and < 4096 MiB: "
          f"{'met' if big['seconds'] < 120 and big['peak_mib'] < 4096 else 'NOT met'}")
    print(f"projection of 50k points: {big['seconds']:.1f} s (features {batched:.1f} img/s)")


if __name__ == "__main__":
    main()
