"""The model grid: an isotropic box in MNI152 template space, centred on the template brain."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from neuroradfm.io.images import physical_box
from neuroradfm.preprocess.settings import PreprocessSettings
from neuroradfm.template import load_brain_mask, load_template

TEMPLATE_BOX_TOLERANCE_MM = 3.0


@lru_cache(maxsize=1)
def _brain_centre() -> tuple[float, float, float]:
    stats = sitk.LabelShapeStatisticsImageFilter()
    mask = load_brain_mask()
    stats.Execute(mask)
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    first = np.array(mask.TransformContinuousIndexToPhysicalPoint([x0 - 0.5, y0 - 0.5, z0 - 0.5]))
    last = np.array(mask.TransformContinuousIndexToPhysicalPoint([x0 + sx - 0.5, y0 + sy - 0.5, z0 + sz - 0.5]))
    return tuple(float(v) for v in (first + last) / 2)


def model_grid(settings: PreprocessSettings) -> sitk.Image:
    """An empty float32 image carrying the model grid's geometry (template direction)."""
    template = load_template("t1")
    direction = np.asarray(template.GetDirection()).reshape(3, 3)
    spacing = np.full(3, settings.spacing_mm)
    size = np.asarray(settings.size)
    centre = np.asarray(_brain_centre())
    origin = centre - direction @ (spacing * (size - 1) / 2)
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def in_template_space(image: sitk.Image) -> bool:
    """Already on the template's box and axes (e.g. the phantom's BraTS-style output)?"""
    template = load_template("t1")
    if not np.allclose(image.GetDirection(), template.GetDirection(), atol=1e-3):
        return False
    (lo, hi), (t_lo, t_hi) = physical_box(image), physical_box(template)
    return bool(np.abs(lo - t_lo).max() <= TEMPLATE_BOX_TOLERANCE_MM and np.abs(hi - t_hi).max()
                <= TEMPLATE_BOX_TOLERANCE_MM)
