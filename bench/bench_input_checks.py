"""What the input checks of issue 12 cost: ``read_image`` (header checks, a streamed NaN/completeness pass for NIfTI)
against SimpleITK's bare ``ReadImage``, and the per-sequence checks before preprocessing (geometry, size, the
contrast inside the head) against one N4 run (the first correction they now precede), side by side in one run.

Run: .venv/bin/python bench/bench_input_checks.py [--size 240 240 155] [--repeats 7]
Prints one Markdown table (medians of the repeats, and the ratios) for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroradfm.io import read_image
from neuroradfm.preprocess import steps
from neuroradfm.preprocess.pipeline import _check_sequence


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def head_image(size: tuple[int, int, int]) -> sitk.Image:
    """A BraTS-sized float32 volume: an ellipsoid 'head' of textured intensities on a zero background."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in size[::-1]], indexing="ij"))
    inside = (grid ** 2).sum(axis=0) < 0.8
    array = np.where(inside, 300 + 50 * rng.standard_normal(inside.shape), 0).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    image = head_image(tuple(args.size))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".nii.gz", ".nii", ".nrrd"):
            path = Path(folder) / f"case{suffix}"
            sitk.WriteImage(image, str(path), useCompression=suffix == ".nrrd")
            bare = median_seconds(lambda: sitk.ReadImage(str(path)), args.repeats)  # noqa: B023
            checked = median_seconds(lambda: read_image(path), args.repeats)  # noqa: B023
            rows.append((f"read {suffix} ({path.stat().st_size / 1e6:.1f} MB)", "sitk.ReadImage", bare, checked))
    mask = steps.foreground_mask(image)
    n4 = median_seconds(lambda: steps.n4_correct(image, mask), max(1, args.repeats // 3))
    checks = median_seconds(lambda: _check_sequence(image, "bench"), args.repeats)
    rows.append(("checks before preprocessing, per sequence", "one N4 correction", n4, checks))
    print(f"| step ({' x '.join(map(str, args.size))} float32) | baseline | baseline s | with checks s | ratio |")
    print("|---|---|---|---|---|")
    for step, baseline, base_s, checked_s in rows:
        print(f"| {step} | {baseline} | {base_s:.3f} | {checked_s:.3f} | {checked_s / base_s:.2f} |")


if __name__ == "__main__":
    main()
