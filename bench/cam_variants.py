"""Where do a bundle's Grad-CAM maps peak? Plain vs cohort-referenced maps, trilinear vs cubic upsampling,
on the held-out split of the cohort the bundle was trained on (cached model-grid cases with tumour masks).

Run: .venv/bin/python bench/cam_variants.py --bundle Resources/demo-bundle \
         --manifest build/phantom-train/manifest.csv --cache build/cache
Prints, per variant, the fraction of maps (cases x heads) whose peak lies inside the tumour (any label) and
the median distance of the peak to the tumour; the "oracle" row is the perfect map at the last block's
resolution (each cell's tumour fraction), the best any last-block map can do.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from neuroradfm.cam import linear_cams, upsample
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.train.baseline import _split
from neuroradfm.train.cohort import prepare_cohort


def cubic(cells: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Cubic B-spline upsampling, cell-centred like trilinear with align_corners=False."""
    factor = np.array(shape) / np.array(cells.shape)
    return ndimage.affine_transform(cells, 1 / factor, offset=0.5 / factor - 0.5, output_shape=shape, order=3,
                                    mode="nearest")


def trilinear(cells: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return upsample(torch.from_numpy(np.ascontiguousarray(cells))[None, None].float(), shape)[0, 0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache", required=True)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    heads, settings = bundle.require_heads(), bundle.card["training"]["settings"]
    cohort = prepare_cohort(read_manifest(args.manifest), bundle.preprocessing, cache_dir=args.cache)
    held_out = cohort.subset(_split(cohort, settings["probe_fraction"], settings["seed"])[1])
    w, b = heads.marker_weights()
    cox_w, cox_b = heads.cox_weights()
    thresholds = np.array([m.threshold for m in heads.markers])
    weights = torch.as_tensor(np.vstack([w, cox_w[None]]), dtype=torch.float32)
    reference = torch.as_tensor(heads.cam_reference) if heads.cam_reference is not None else None
    hits: dict[str, list[bool]] = {}
    distances: dict[str, list[float]] = {}
    for index in range(len(held_out.case_ids)):
        x = torch.from_numpy(held_out.inputs[index:index + 1].astype(np.float32))
        with torch.no_grad():
            features, z = bundle.encoder(x)
        embedding = z[0].double().numpy()
        positive = 1 / (1 + np.exp(-(w @ embedding + b))) >= thresholds
        high = cox_w @ embedding + cox_b > heads.cox.median_risk
        signs = torch.as_tensor(np.append(np.where(positive, 1.0, -1.0), 1.0 if high else -1.0), dtype=torch.float32)
        mask = np.abs(held_out.inputs[index].astype(np.float32)).sum(0) > 0
        tumour = held_out.tumour[index] > 0
        to_tumour = ndimage.distance_transform_edt(~tumour) * bundle.preprocessing.spacing_mm
        maps = {"plain": linear_cams(features, weights * signs[:, None])[0].numpy()}
        if reference is not None:
            maps["referenced"] = linear_cams(features, weights * signs[:, None], reference)[0].numpy()
        occupancy = torch.nn.functional.adaptive_avg_pool3d(torch.from_numpy(tumour[None, None].astype(np.float32)),
                                                            features.shape[2:])[0].numpy()
        maps["oracle"] = occupancy
        for name, cells in maps.items():
            for interpolate in (trilinear, cubic):
                key = f"{name}, {interpolate.__name__}"
                for head in cells:
                    volume = np.where(mask, interpolate(head, mask.shape), -np.inf)
                    peak = np.unravel_index(int(np.argmax(volume)), volume.shape)
                    hits.setdefault(key, []).append(bool(tumour[peak] and volume[peak] > 0))
                    distances.setdefault(key, []).append(float(to_tumour[peak]))
    print(f"{bundle.name}: {len(held_out.case_ids)} held-out cases of {args.manifest}\n")
    print("| maps, upsampling | peak inside the tumour | median peak-to-tumour distance (mm) |")
    print("|---|---|---|")
    for key in hits:
        print(f"| {key} | {np.mean(hits[key]):.0%} | {np.median(distances[key]):.0f} |")


if __name__ == "__main__":
    main()
