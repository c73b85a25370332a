"""The overview figure: for each head, three orthogonal slices through its map's peak,
the map overlaid on the preprocessed T1ce (radiological convention: patient right, "R", on the left).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from neuroradfm.predict import Prediction


def _views(volume: np.ndarray, point: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a (K, J, I) model-grid array (i -> right, j -> anterior, k -> up)."""
    k, j, i = point
    return [np.fliplr(volume[k]), np.fliplr(volume[:, j, :]), np.fliplr(volume[:, :, i])]


def write_overview(path: Path, prediction: Prediction) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = prediction.preprocessed.mask
    lo, hi = np.percentile(prediction.preprocessed.channels[1][mask], [1, 99])
    background = np.where(mask, prediction.preprocessed.channels[1], lo)
    labels = {m.key: f"{m.label}: {m.call} (p={m.probability:.2f})" for m in prediction.markers}
    if prediction.survival is not None:
        s = prediction.survival
        labels["survival_risk"] = f"Survival: {s.risk_group} risk (score {s.risk_score:+.2f})"
    keys = list(prediction.cams)
    fig, axes = plt.subplots(len(keys), 3, figsize=(7.5, 2.4 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys):
        cam = prediction.cams[key]
        if cam.max() > 0:
            peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
        else:  # an all-zero map (nothing drove the call): show the brain's centre
            peak = tuple(int(v) for v in np.argwhere(mask).mean(axis=0))
        for ax, image, heat, view in zip(row, _views(background, peak), _views(cam, peak),
                                         ("axial", "coronal", "sagittal")):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.imshow(np.ma.masked_less(heat, 0.25), cmap="jet", vmin=0, vmax=1, alpha=0.45, origin="lower")
            ax.text(0.02, 0.96, view if view == "sagittal" else f"{view}  R", color="white", fontsize=6,
                    transform=ax.transAxes, va="top")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_title(labels.get(key, key), fontsize=8, loc="left")
    flag = "  OUT OF DISTRIBUTION" if prediction.ood_flag else ""
    use = textwrap.fill(str(prediction.bundle.get("intended_use", "")), 100)
    fig.suptitle(f"{prediction.case_id} — {prediction.bundle.get('name', '')}{flag}\n{use}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # room for the title's lines
    fig.savefig(path, dpi=90)
    plt.close(fig)
