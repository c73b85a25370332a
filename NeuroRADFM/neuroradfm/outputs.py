"""Everything a prediction writes, on the reference sequence's original grid.

Per head (each marker, plus the survival risk): a heat map (float 0..1, in steps of 1/255) and a quantised
label map; one color table in Slicer's .ctbl format for the label maps; one .seg.nrrd with
each head's hot region as a segment; predictions as JSON and CSV; an overview PNG.
A case's folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicerio

from neuroradfm.atomic import atomic_folder
from neuroradfm.errors import OutputError, itk_reason
from neuroradfm.predict import SURVIVAL_HEAD, Prediction

LEVELS = (0.25, 0.5, 0.75)
"""Label map levels: 1 = map >= 0.25 of its peak, 2 = >= 0.5, 3 = >= 0.75."""
LEVEL_COLORS = ((0, "background", (0, 0, 0, 0)), (1, "low", (255, 255, 0, 255)),
                (2, "moderate", (255, 128, 0, 255)), (3, "high", (220, 0, 0, 255)))
HOT_LEVEL = 0.5
"""A head's contour segment is where its map is >= HOT_LEVEL of its peak."""
COLOR_TABLE = "heatmap_levels.ctbl"
SEGMENTATION = "contours.seg.nrrd"
RESULT_MARKER = "predictions.json"
"""Every complete case result holds it: only such a folder (or an empty one) is replaced by a new result."""
RESULT_FILES = (RESULT_MARKER, "predictions.csv", "heatmap_*.nrrd", "labels_*.nrrd", COLOR_TABLE, SEGMENTATION,
                "overview.png")
"""Everything a case result holds; a folder holding anything else is not replaced."""


def quantise(heatmap: np.ndarray) -> np.ndarray:
    return np.digitize(heatmap, LEVELS).astype(np.uint8)


HEAT_STEPS = 255
"""Heat maps are written in steps of 1/255 of the map's peak (still float 0..1): a difference of at most 1/510 that no
display shows, and files that compress to a third (bench/RESULTS.md, *Performance*)."""


def steps_of_255(heat: sitk.Image) -> sitk.Image:
    """``heat`` (0..1) rounded to the nearest multiple of 1/HEAT_STEPS, on the same grid."""
    array = np.round(sitk.GetArrayViewFromImage(heat) * HEAT_STEPS) / HEAT_STEPS
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(heat)
    return out


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_image(image: sitk.Image, path: Path) -> None:
    """SimpleITK's writer reports a full disk or a refused file as a RuntimeError: make it an OutputError."""
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:
        reason = itk_reason(error)
        if shutil.disk_usage(path.parent).free < 1 << 20:
            reason = f"no space left on the device; {reason}"
        raise OutputError(path, f"could not be written ({reason})") from None


def write_color_table(path: Path) -> None:
    lines = ["# Color table file " + path.name, f"# {len(LEVEL_COLORS)} values"]
    lines += [f"{index} {name} {r} {g} {b} {a}" for index, name, (r, g, b, a) in LEVEL_COLORS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _segment_colors(n: int) -> list[tuple[float, float, float]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [tuple(float(c) for c in cmap(i % 20)[:3]) for i in range(n)]


def write_segmentation(path: Path, masks: dict[str, np.ndarray], reference: sitk.Image) -> None:
    """One segment per head, each in its own layer because hot regions of different heads overlap."""
    keys = list(masks)
    voxels = np.stack([masks[k].transpose(2, 1, 0).astype(np.uint8) for k in keys])  # (layer, I, J, K)
    segments = [{"id": key, "name": key, "labelValue": 1, "layer": layer, "color": color}
                for layer, (key, color) in enumerate(zip(keys, _segment_colors(len(keys))))]
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": ijk_to_lps(reference),
                                            "encoding": "gzip", "segments": segments})


def _auc(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _write_tables(folder: Path, prediction: Prediction) -> None:
    """predictions.json and predictions.csv; every CSV row names the sequences used and the card's held-out figure
    for them, so that rows gathered into a cohort table (neuroradfm.batch) still say what each call rests on."""
    summary = prediction.summary()
    (folder / RESULT_MARKER).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    sequences = summary["sequences"]
    used = ["+".join(sequences["used"]), "+".join(sequences["missing"])]
    note = sequences["reliability"]["note"]
    with open(folder / "predictions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "output", "label", "probability", "threshold", "call",
                         "risk_score", "risk_group", "ood_distance", "ood_flag",
                         "sequences", "missing_sequences", "subset_auc", "reliability"])
        ood = ["" if prediction.ood_distance is None else f"{prediction.ood_distance:.4f}", int(prediction.ood_flag)]
        for m in prediction.markers:
            writer.writerow([prediction.case_id, m.key, m.label, f"{m.probability:.4f}", f"{m.threshold:.4f}",
                             m.call, "", "", *ood, *used, _auc(m.subset_auc), note])
        if prediction.survival is not None:
            s = prediction.survival
            writer.writerow([prediction.case_id, SURVIVAL_HEAD, "Overall survival (Cox)", "", f"{s.median_risk:.4f}",
                             f"{s.risk_group} risk", f"{s.risk_score:.4f}", s.risk_group, *ood, *used, "", note])


def write_outputs(prediction: Prediction, out_dir: str | Path, overview: bool = True,
                  inputs: Sequence[str | Path] = ()) -> Path:
    """Write all outputs of one case to ``out_dir``, which replaces an earlier result there as a whole (only an
    earlier result or an empty folder, and never one holding any of ``inputs``: see neuroradfm.atomic)."""
    out_dir = Path(out_dir)
    with atomic_folder(out_dir, RESULT_FILES, inputs) as staging:
        reference = prediction.preprocessed.reference
        hot: dict[str, np.ndarray] = {}
        for key, cam in prediction.cams.items():
            heat = steps_of_255(prediction.preprocessed.to_reference(cam.astype(np.float32)))
            write_image(heat, staging / f"heatmap_{key}.nrrd")
            levels = quantise(sitk.GetArrayViewFromImage(heat))  # the levels of the map as written
            label = sitk.GetImageFromArray(levels)
            label.CopyInformation(heat)
            write_image(label, staging / f"labels_{key}.nrrd")
            hot[key] = levels >= np.digitize(HOT_LEVEL, LEVELS)
        write_color_table(staging / COLOR_TABLE)
        write_segmentation(staging / SEGMENTATION, hot, reference)
        _write_tables(staging, prediction)
        if overview:
            from neuroradfm.overview import write_overview

            write_overview(staging / "overview.png", prediction)
    return out_dir
