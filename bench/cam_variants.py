"""Where do a bundle's Grad-CAM maps peak? Plain vs cohort-referenced maps at each encoder stage, on the
held-out split of the cohort the bundle was trained on (cached model-grid cases with tumour masks).

Run: .venv/bin/python bench/cam_variants.py --bundle Resources/demo-bundle \
         --manifest build/phantom-train/manifest.csv --cache build/cache
Prints, per variant, the fraction of maps (cases x heads, the map of each predicted call) whose peak lies
inside the tumour (any label) and the median distance of the peak to the tumour; "oracle" is the perfect
map at a stage's resolution (each cell's tumour fraction), the best any map at that stage can do. The
reference of each stage is the mean activation over the heads' cases, as ``train-baseline`` computes it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from neuroradfm import CAM_LAYERS
from neuroradfm.cam import cams_at, encode_for_cam, upsample
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.train.baseline import _split, embed
from neuroradfm.train.cohort import prepare_cohort


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
    encoder = bundle.encoder.eval()
    references = {layer: torch.as_tensor(embed(encoder, held_out.inputs, torch.device("cpu"), cam_layer=layer)[1])
                  for layer in CAM_LAYERS}
    w, b = heads.marker_weights()
    cox_w, cox_b = heads.cox_weights()
    thresholds = np.array([m.threshold for m in heads.markers])
    weights = torch.as_tensor(np.vstack([w, cox_w[None]]), dtype=torch.float32)
    hits: dict[str, list[bool]] = {}
    distances: dict[str, list[float]] = {}
    for index in range(len(held_out.case_ids)):
        x = torch.from_numpy(held_out.inputs[index:index + 1].astype(np.float32))
        mask = np.abs(held_out.inputs[index].astype(np.float32)).sum(0) > 0
        tumour = held_out.tumour[index] > 0
        to_tumour = ndimage.distance_transform_edt(~tumour) * bundle.preprocessing.spacing_mm
        signs = None
        for layer in CAM_LAYERS:
            maps = {}
            for name, reference in (("plain", None), ("referenced", references[layer])):
                activation, z = encode_for_cam(encoder, x, layer)
                if signs is None:  # the predicted calls, as in prediction
                    embedding = z[0].detach().double().numpy()
                    positive = 1 / (1 + np.exp(-(w @ embedding + b))) >= thresholds
                    high = cox_w @ embedding + cox_b > heads.cox.median_risk
                    signs = torch.as_tensor(np.append(np.where(positive, 1.0, -1.0), 1.0 if high else -1.0),
                                            dtype=torch.float32)
                maps[name] = cams_at(layer, activation, z, weights * signs[:, None], reference)
            occupancy = torch.nn.functional.adaptive_avg_pool3d(
                torch.from_numpy(tumour[None, None].astype(np.float32)), activation.shape[2:])
            maps["oracle"] = occupancy.expand(1, len(weights), *occupancy.shape[2:])
            for name, cells in maps.items():
                key = f"{layer}, {name}" + (" (this bundle)" if name == "referenced" and layer == heads.cam_layer
                                            else "")
                with torch.no_grad():
                    volumes = upsample(cells.float(), mask.shape)[0].numpy()
                for volume in volumes:
                    volume = np.where(mask, volume, -np.inf)
                    peak = np.unravel_index(int(np.argmax(volume)), volume.shape)
                    hits.setdefault(key, []).append(bool(tumour[peak] and volume[peak] > 0))
                    distances.setdefault(key, []).append(float(to_tumour[peak]))
    print(f"{bundle.name}: {len(held_out.case_ids)} held-out cases of {args.manifest}\n")
    print("| stage, maps | peak inside the tumour | median peak-to-tumour distance (mm) |")
    print("|---|---|---|")
    for key in hits:
        print(f"| {key} | {np.mean(hits[key]):.0%} | {np.median(distances[key]):.0f} |")


if __name__ == "__main__":
    main()
