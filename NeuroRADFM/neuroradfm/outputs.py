"""Everything a prediction writes, on the reference sequence's original grid.

Per head (each marker, plus the survival risk): a heat map (8-bit levels of the map's peak, the scale in the NRRD
header: neuroradfm.map_files) and a quantised label map; one color table in Slicer's .ctbl format for the label maps;
one .seg.nrrd with each head's hot region as a segment; predictions as JSON and CSV; an overview PNG. ``maps``
chooses which maps: ``all``, ``labels`` (no heat maps) or ``none`` (the tables and the overview only), for cohorts
that want only the numbers. A case's folder is written under a temporary name and renamed when complete; its files
are written by a few threads at once (SimpleITK and zlib release the GIL while they resample and compress, so the
overview's drawing runs beside them).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
import slicerio

from neuroradfm import map_files
from neuroradfm.atomic import atomic_folder
from neuroradfm.errors import OutputError, SettingsError, itk_reason
from neuroradfm.map_files import HEAT_STEPS

if TYPE_CHECKING:
    from neuroradfm.predict import Prediction

LEVELS = (0.25, 0.5, 0.75)
"""Label map levels: 1 = map >= 0.25 of its peak, 2 = >= 0.5, 3 = >= 0.75."""
LEVEL_COLORS = ((0, "background", (0, 0, 0, 0)), (1, "low", (255, 255, 0, 255)),
                (2, "moderate", (255, 128, 0, 255)), (3, "high", (220, 0, 0, 255)))
HOT_LEVEL = 0.5
"""A head's contour segment is where its map is >= HOT_LEVEL of its peak."""
COLOR_TABLE = "heatmap_levels.ctbl"
SEGMENTATION = "contours.seg.nrrd"
OVERVIEW = "overview.png"
RESULT_MARKER = "predictions.json"
"""Every complete case result holds it: only such a folder (or an empty one) is replaced by a new result."""
RESULT_FILES = (RESULT_MARKER, "predictions.csv", "heatmap_*.nrrd", "labels_*.nrrd", COLOR_TABLE, SEGMENTATION,
                OVERVIEW)
"""Everything a case result holds; a folder holding anything else is not replaced."""
MAPS = ("all", "labels", "none")
"""``maps`` of write_outputs (``--maps``): all = heat maps, label maps, color table and contours; labels = all but
the heat maps; none = no maps (the tables, and the overview unless it is switched off)."""
COMPRESSION_LEVEL = 6
"""zlib level of every .nrrd: on a 197 x 233 x 189 case an 8-bit heat map is 1.19 MiB at level 1, 1.08 at 6 and 1.07
at 9, which takes three times as long as 6; the contours 0.65 MiB at 1, 0.20 at 6."""
WRITERS = 3
"""Threads that write one case's files: the overview's drawing (Python) beside two resampling and compressing."""


def quantise(heatmap: np.ndarray) -> np.ndarray:
    """Label levels (0..3) of a map given as fractions 0..1 of its peak."""
    return np.digitize(heatmap, LEVELS).astype(np.uint8)


LABEL_OF_LEVEL = quantise(np.arange(HEAT_STEPS + 1) / HEAT_STEPS)
"""The label level of each 8-bit heat map level: labels are ``quantise`` of the map as written, by table look-up."""


def heat_levels(prediction: Prediction, key: str) -> sitk.Image:
    """Head ``key``'s map on the reference grid as uint8 levels, round(255 x fraction of the peak), scale in the header.

    The map is resampled once, scaled by 255 and offset by half a level, so that the cast to uint8 (which truncates)
    rounds: the level is at most half a step (1/510) off the map carried in float."""
    fractions = np.clip(prediction.cams[key], 0.0, 1.0).astype(np.float32)  # 0..1 already; never past 255 below
    scaled = fractions * np.float32(HEAT_STEPS) + np.float32(0.5)
    levels = sitk.Cast(prediction.preprocessed.to_reference(scaled), sitk.sitkUInt8)
    return map_files.tag(levels, prediction.cam_scales.get(key))


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_image(image: sitk.Image, path: Path) -> None:
    """SimpleITK's writer reports a full disk or a refused file as a RuntimeError: make it an OutputError."""
    try:
        sitk.WriteImage(image, str(path), useCompression=True, compressionLevel=COMPRESSION_LEVEL)
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
    stacked = np.empty((*reference.GetSize()[::-1], len(keys)), np.uint8)  # (K, J, I, layer) in C order is
    for layer, key in enumerate(keys):  # (layer, I, J, K) in Fortran order, the file's: written without a copy
        stacked[..., layer] = masks[key]
    voxels = stacked.transpose(3, 2, 1, 0)  # (layer, I, J, K)
    segments = [{"id": key, "name": key, "labelValue": 1, "layer": layer, "color": color}
                for layer, (key, color) in enumerate(zip(keys, _segment_colors(len(keys))))]
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": ijk_to_lps(reference),
                                            "encoding": "gzip", "segments": segments},
                                compression_level=COMPRESSION_LEVEL)


def _write_head(prediction: Prediction, key: str, folder: Path, heat: bool) -> np.ndarray:
    """Head ``key``'s heat map (when ``heat``) and label map; returns its hot region (map >= HOT_LEVEL)."""
    levels = heat_levels(prediction, key)
    if heat:
        write_image(levels, folder / f"heatmap_{key}.nrrd")
    labels = sitk.GetImageFromArray(LABEL_OF_LEVEL[sitk.GetArrayViewFromImage(levels)])
    labels.CopyInformation(levels)
    write_image(labels, folder / f"labels_{key}.nrrd")
    return sitk.GetArrayViewFromImage(labels) >= np.digitize(HOT_LEVEL, LEVELS)


def map_files_written(keys: Sequence[str], maps: str) -> list[str]:
    """The map files a result written with ``maps`` holds, in the order they are listed in predictions.json."""
    heat = [f"heatmap_{key}.nrrd" for key in keys] if maps == "all" else []
    labels = [f"labels_{key}.nrrd" for key in keys] if maps in ("all", "labels") else []
    return heat + labels + ([COLOR_TABLE, SEGMENTATION] if labels else [])


def _auc(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _write_tables(folder: Path, prediction: Prediction, maps: str = "all") -> None:
    """predictions.json and predictions.csv; every CSV row names the sequences used and the card's held-out figure
    for them, so that rows gathered into a cohort table (neuroradfm.batch) still say what each call rests on.
    predictions.json also says which map files the folder holds (``maps``) and how a heat map's levels read."""
    from neuroradfm.predict import SURVIVAL_HEAD

    summary = prediction.summary()
    summary["maps"] = {"written": maps, "files": map_files_written(list(prediction.cams), maps),
                       "heatmap_values": map_files.MEANING if maps == "all" else None}
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


def check_maps(maps: str) -> str:
    """``maps`` if it is one of MAPS, else a SettingsError naming ``--maps``."""
    if maps not in MAPS:
        raise SettingsError("--maps", f"{maps!r} is not one of {', '.join(MAPS)}")
    return maps


def write_outputs(prediction: Prediction, out_dir: str | Path, overview: bool = True,
                  inputs: Sequence[str | Path] = (), maps: str = "all") -> Path:
    """Write all outputs of one case to ``out_dir``, which replaces an earlier result there as a whole (only an
    earlier result or an empty folder, and never one holding any of ``inputs``: see neuroradfm.atomic).

    ``maps``: which maps (MAPS): ``all``; ``labels``, the label maps, color table and contours but no heat maps;
    ``none``, no maps. The files are written by WRITERS threads; the first failure (heads in their order, then the
    contours, then the overview) is raised once the running writers have stopped, and nothing is kept."""
    check_maps(maps)
    out_dir = Path(out_dir)
    with atomic_folder(out_dir, RESULT_FILES, inputs) as staging:
        _write_tables(staging, prediction, maps)
        with ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="neuroradfm-outputs") as pool:
            jobs: list[Future] = []  # Ctrl-C at any point: those not started are cancelled, the pool waits for the rest
            try:
                if overview:
                    from neuroradfm.overview import write_overview

                    jobs.append(pool.submit(write_overview, staging / OVERVIEW, prediction))
                heads = {}
                for key in prediction.cams if maps != "none" else ():
                    heads[key] = pool.submit(_write_head, prediction, key, staging, maps == "all")
                    jobs.append(heads[key])
                hot = {key: job.result() for key, job in heads.items()}
                if heads:
                    write_color_table(staging / COLOR_TABLE)
                    write_segmentation(staging / SEGMENTATION, hot, prediction.preprocessed.reference)
                for job in jobs:
                    job.result()
            except BaseException:
                for job in jobs:
                    job.cancel()
                raise
    return out_dir
