"""Does a head's Grad-CAM point at the tumour? Checked on phantom cases, whose truth is known.

A map "hits" when its peak voxel (on the model grid) lies inside the tumour (any label of the
seg: necrotic core, enhancing rim or edema).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

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
