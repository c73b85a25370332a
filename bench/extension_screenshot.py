"""The extension's screenshot (EXTENSION_SCREENSHOTURLS): a rendering of the NeuroRADFM module's outputs.

Run: .venv/bin/python bench/extension_screenshot.py [--demo-dir DIR] [--out Resources/Screenshots/...png]

Runs ``neuroradfm demo --out DIR`` (the README quick start; reused when DIR already holds its results), then draws,
for a few outputs, the Grad-CAM heatmap (the module's ``heatmap_<key>.nrrd``, on the T1ce's grid, read as fractions
0..1 of its peak with ``neuroradfm.map_files.read_heatmap``) over axial and coronal T1ce slices through the tumour,
with the module's contour (map >= 0.5, its ``contours`` segmentation) and the phantom's ground-truth tumour label.
It is a matplotlib rendering of the files the module loads into Slicer, NOT a screenshot of the Slicer window: the
figure says so. Not part of the extension (nothing here is installed).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "Resources" / "Screenshots" / "NeuroRADFM-outputs-rendering.png"
DEFAULT_KEYS = ("tert", "mgmt", "survival_risk")
TITLE = ("Rendering of the NeuroRADFM module's outputs (not a screenshot of the Slicer window): Grad-CAM maps on the "
         "synthetic demo phantom's T1ce\nDemo model trained on synthetic phantoms: NOT FOR CLINICAL USE")


def run_demo(folder: Path) -> Path:
    """The demo's case-results folder (``neuroradfm demo --out folder``, run unless its results are there)."""
    results = sorted((folder / "results").glob("*/predictions.json"))
    if not results:
        subprocess.run([sys.executable, "-m", "neuroradfm", "demo", "--out", str(folder), "--device", "cpu"],
                       check=True)
        results = sorted((folder / "results").glob("*/predictions.json"))
    return results[0].parent


def output_titles(predictions: dict) -> dict[str, str]:
    titles = {m["key"]: f"{m['label']}: {m['call']} (p = {m['probability']:.2f})" for m in predictions["markers"]}
    survival = predictions.get("survival")
    if survival:
        group, score = survival["risk_group"], survival["risk_score"]
        titles["survival_risk"] = f"Overall survival: {group} risk (score {score:+.2f})"
    return titles


def render(demo: Path, results: Path, keys: tuple[str, ...], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from PIL import Image

    case_id = results.name
    case = demo / "case" / case_id
    t1ce_image = sitk.ReadImage(str(case / f"{case_id}-t1c.nii.gz"))
    t1ce = sitk.GetArrayFromImage(t1ce_image).astype(np.float32)  # (k, j, i); LPS: i -> left, j -> posterior, k -> up
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{case_id}-seg.nii.gz"))) > 0
    from neuroradfm.map_files import read_heatmap  # 8-bit levels in the file -> fractions 0..1 of the map's peak

    heatmaps = {key: sitk.GetArrayFromImage(read_heatmap(results / f"heatmap_{key}.nrrd")) for key in keys}
    for key, heat in heatmaps.items():
        assert heat.shape == t1ce.shape, f"heatmap_{key}: not on the T1ce's grid"
    titles = output_titles(json.loads((results / "predictions.json").read_text()))
    sx, _, sz = t1ce_image.GetSpacing()
    k, j, _ = (int(round(v)) for v in np.argwhere(label).mean(axis=0))
    lo, hi = np.percentile(t1ce[t1ce > 0], [1, 99.5])
    # radiological convention (patient right on the left): i increases towards the patient's left, so no flip
    views = [("axial", lambda a: a[k], "upper", 1.0), ("coronal", lambda a: a[:, j, :], "lower", sz / sx)]
    fig, axes = plt.subplots(len(views), len(keys), figsize=(3.6 * len(keys), 3.6 * len(views) + 0.9),
                             squeeze=False, facecolor="black")
    for column, key in enumerate(keys):
        for row, (view, cut, origin, aspect) in enumerate(views):
            ax = axes[row][column]
            heat = cut(heatmaps[key])
            ax.imshow(cut(t1ce), cmap="gray", vmin=lo, vmax=hi, origin=origin, aspect=aspect)
            ax.imshow(np.ma.masked_less(heat, 0.2), cmap="jet", vmin=0, vmax=1, alpha=0.5, origin=origin,
                      aspect=aspect)
            ax.contour(heat >= 0.5, levels=[0.5], colors="white", linewidths=1.0)
            ax.contour(cut(label), levels=[0.5], colors="cyan", linewidths=1.0, linestyles="dashed")
            ax.text(0.02, 0.97, f"{view}   R", color="white", fontsize=8, transform=ax.transAxes, va="top")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
        axes[0][column].set_title(titles.get(key, key), color="white", fontsize=9)
    fig.suptitle(TITLE, color="white", fontsize=9)
    fig.text(0.5, 0.01, "colour: Grad-CAM map (0-1)   white: module contour (map >= 0.5)   "
             "cyan dashed: phantom tumour label (ground truth)", color="white", fontsize=8, ha="center")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, facecolor="black")
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, help="folder of a `neuroradfm demo --out` run (default: a temporary "
                                                      "folder, the demo run there)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--outputs", default=",".join(DEFAULT_KEYS), help="comma-separated output keys")
    args = parser.parse_args(argv)
    keys = tuple(k.strip() for k in args.outputs.split(",") if k.strip())
    if args.demo_dir is not None:
        out = render(args.demo_dir, run_demo(args.demo_dir), keys, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="neuroradfm-demo-") as folder:
            out = render(Path(folder), run_demo(Path(folder)), keys, args.out)
    print(f"{out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
