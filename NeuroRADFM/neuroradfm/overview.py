"""The overview figure: for each head, three orthogonal slices through its map's peak,
the map overlaid on the preprocessed T1ce (radiological convention: patient right, "R", on the left).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from neuroradfm import SEQUENCES, subsets
from neuroradfm.io.case import reference_key
from neuroradfm.predict import Prediction

TITLE_WIDTH = 100
"""Characters per title line at the figure's width and font size."""
DPI = 90


def _views(volume: np.ndarray, point: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a (K, J, I) model-grid array (i -> right, j -> anterior, k -> up)."""
    k, j, i = point
    return [np.fliplr(volume[k]), np.fliplr(volume[:, j, :]), np.fliplr(volume[:, :, i])]


def sequences_line(sequences: dict) -> str:
    """The sequences a prediction used and the card's held-out figure for them (``Prediction.sequences()``):
    "Sequences: T1ce + FLAIR (no T1, T2) — held-out mean marker AUC 0.71 (all four: 0.78) over 120 cases"."""
    reliability = sequences["reliability"]
    note = reliability["note"].removeprefix(reliability["label"] + ": ")
    return f"Sequences: {subsets.describe(sequences['used'])} — {note}"


def title(prediction: Prediction) -> str:
    """The figure's title: case, bundle, OOD flag; the sequences used and their reliability; the intended use."""
    flag = "  OUT OF DISTRIBUTION" if prediction.ood_flag else ""
    lines = [f"{prediction.case_id} — {prediction.bundle.get('name', '')}{flag}",
             *textwrap.wrap(sequences_line(prediction.sequences()), TITLE_WIDTH),
             *textwrap.wrap(str(prediction.bundle.get("intended_use", "")), TITLE_WIDTH)]
    return "\n".join(lines)


def write_overview(path: Path, prediction: Prediction) -> None:
    """The figure as an RGB PNG. Drawn on its own figure and canvas, without pyplot's global state, so that it can
    run in a thread beside other writers (neuroradfm.outputs) and beside another case's overview."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    mask = prediction.preprocessed.mask
    shown = prediction.preprocessed.channels[SEQUENCES.index(reference_key(prediction.preprocessed.available))]
    lo, hi = np.percentile(shown[mask], [1, 99])  # T1ce, else the reference: a missing sequence is all zeros
    background = np.where(mask, shown, lo)
    labels = {m.key: f"{m.label}: {m.call} (p={m.probability:.2f})" for m in prediction.markers}
    if prediction.survival is not None:
        s = prediction.survival
        labels["survival_risk"] = f"Survival: {s.risk_group} risk (score {s.risk_score:+.2f})"
    keys = list(prediction.cams)
    fig = Figure(figsize=(7.5, 2.4 * len(keys)), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 3, squeeze=False)
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
    text = title(prediction)
    fig.suptitle(text, fontsize=8)
    room = 0.2 + 0.15 * (text.count("\n") + 1)  # inches for the title's lines at 8 pt
    fig.tight_layout(rect=(0, 0, 1, 1 - room / fig.get_figheight()))
    canvas.draw()
    # the figure is opaque: RGB holds every pixel as drawn, in 10 % fewer bytes than matplotlib's RGBA PNG
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(path, format="PNG", compress_level=6,
                                                                   dpi=(DPI, DPI))
