"""Does a head's Grad-CAM point at the tumour? Checked where the truth is known (a segmentation).

A map "hits" when its peak voxel (on the model grid) lies inside the tumour (any label of the
seg: necrotic core, enhancing rim or edema); ``evaluate`` also lets the tumour grow by a few millimetres (a
model-grid cell) and reports the share of the map's mass that lies inside it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from neuroradfm.predict import Prediction


def peak_in_tumour(prediction: Prediction, seg: sitk.Image) -> dict[str, bool]:
    """Per head: is the map's peak inside the tumour? ``seg`` is on the reference (T1ce) grid."""
    tumour = prediction.preprocessed.to_model_grid(seg) > 0
    hits = {}
    for key, cam in prediction.cams.items():
        peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
        hits[key] = bool(cam[peak] > 0 and tumour[peak])
    return hits


def hit_fraction(per_case: list[dict[str, bool]]) -> dict[str, float]:
    """Fraction of cases whose peak hits the tumour, per head and over all heads ("all")."""
    keys = per_case[0].keys() if per_case else []
    fractions = {key: float(np.mean([case[key] for case in per_case])) for key in keys}
    fractions["all"] = float(np.mean([hit for case in per_case for hit in case.values()])) if per_case else 0.0
    return fractions


def tumour_ball(radius_voxels: float) -> np.ndarray | None:
    """A ball-shaped structuring element of ``radius_voxels`` (None below one voxel: no dilation)."""
    r = int(np.floor(radius_voxels))
    if r < 1:
        return None
    offsets = np.indices((2 * r + 1,) * 3) - r
    return (offsets ** 2).sum(axis=0) <= radius_voxels ** 2


def localisation(cam: np.ndarray, tumour: np.ndarray, brain: np.ndarray,
                 ball: np.ndarray | None = None) -> tuple[bool, float]:
    """(is the map's peak inside the brain on the dilated tumour, the share of the map's mass inside the brain
    that lies on the dilated tumour) for one rectified map on the model grid."""
    region = tumour if ball is None else binary_dilation(tumour, structure=ball)
    inside = np.where(brain, cam, 0.0)
    total = float(inside.sum())
    if total <= 0:
        return False, 0.0
    peak = np.unravel_index(int(np.argmax(inside)), inside.shape)
    return bool(region[peak]), float(inside[region].sum() / total)
