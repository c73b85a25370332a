"""Between-case variety of the phantom: fixed anatomy (generator 1) against each case's own brain.

Generates the same cases twice (``--anatomy fixed`` and the default varied anatomy), preprocesses each with the
demo bundle's settings (2 mm, 96^3, N4, the T1 channel z-scored inside the brain mask) and reports the mean
pairwise Pearson correlation of the preprocessed T1 over the model grid, and over the voxels that are normal
brain in both cases of a pair (no tumour label): with one template brain the cases differ only in tumour, site
and noise. Writes docs/phantom-cases.png (several cases side by side) with ``--figure``.

  PYTHONPATH=NeuroRADFM python bench/phantom_variety.py --n 20 --work /tmp/variety --figure docs/phantom-cases.png
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from neuroradfm import SEQUENCES
from neuroradfm.io import read_manifest
from neuroradfm.phantom import PhantomOptions, draw_case, generate_cohort
from neuroradfm.preprocess import PreprocessSettings, preprocess_case

T1 = SEQUENCES.index("t1")


def preprocessed_t1(manifest: Path, settings: PreprocessSettings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, normal = [], []
    for entry in read_manifest(manifest):
        case = entry.load()
        prepared = preprocess_case(case, settings)
        images.append(prepared.channels[T1].ravel())
        normal.append((prepared.mask & (prepared.to_model_grid(case.seg) == 0)).ravel())
    return images, normal


def mean_pairwise(images: list[np.ndarray], normal: list[np.ndarray]) -> dict:
    whole, healthy = [], []
    for a, b in itertools.combinations(range(len(images)), 2):
        whole.append(np.corrcoef(images[a], images[b])[0, 1])
        both = normal[a] & normal[b]
        healthy.append(np.corrcoef(images[a][both], images[b][both])[0, 1])
    return {"pairs": len(whole), "model_grid": round(float(np.mean(whole)), 4),
            "model_grid_sd": round(float(np.std(whole)), 4), "normal_brain": round(float(np.mean(healthy)), 4),
            "normal_brain_sd": round(float(np.std(healthy)), 4)}


def figure(path: Path, seed: int) -> None:
    """Cases side by side: the template brain, then each case's own brain, an 85-year-old, and the optional
    lesion types; the axial slice through each tumour's centre, T1ce above FLAIR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    panels = [("fixed anatomy", draw_case(0, seed, spacing=1.5, options=PhantomOptions(anatomy="fixed")))]
    panels += [(f"case {i}", draw_case(i, seed, spacing=1.5)) for i in range(4)]
    panels.append(("--age 85", draw_case(1, seed, spacing=1.5, options=PhantomOptions(age=85.0))))
    panels.append(("multifocal, cavity", draw_case(6, seed, spacing=1.5,
                                                   options=PhantomOptions(multifocal=1.0, resection_cavity=1.0))))
    fig, axes = plt.subplots(2, len(panels), figsize=(2.1 * len(panels), 4.9))
    for (title, case), column in zip(panels, axes.T):
        centre = [case.row["tumour_x"], case.row["tumour_y"], case.row["tumour_z"]]
        k = case.seg.TransformPhysicalPointToIndex(centre)[2]
        for ax, sequence in zip(column, ("t1ce", "flair")):
            image = sitk.GetArrayViewFromImage(case.images[sequence])[k]
            ax.imshow(image[::-1, ::-1], cmap="gray", vmin=0, vmax=np.percentile(image[image > 0], 99.5))
            ax.set_xticks([])
            ax.set_yticks([])
        shift = case.row.get("midline_shift_mm")
        column[0].set_title(f"{title}\nage {case.row['age']:.0f}" + ("" if shift is None else f", shift {shift} mm"),
                            fontsize=8)
    axes[0, 0].set_ylabel("T1ce", fontsize=8)
    axes[1, 0].set_ylabel("FLAIR", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    settings = PreprocessSettings(spacing_mm=2.0, size=(96, 96, 96))
    results = {}
    for mode in ("fixed", "varied"):
        manifest = generate_cohort(args.work / mode, n=args.n, sites=4, seed=args.seed, spacing=2.0,
                                   options=PhantomOptions(anatomy=mode))
        results[mode] = mean_pairwise(*preprocessed_t1(manifest, settings))
        print(mode, json.dumps(results[mode]), flush=True)
    if args.figure:
        figure(args.figure, args.seed)
    (args.work / "variety.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
