"""The MNI152 2009a symmetric templates that ship inside nilearn: real anatomy, offline.

The T1 template is brain-only (no skull); the brain mask is T1 > 0 with holes filled.
Tissue maps are stored as uint8 0..255 and returned here as probabilities 0..1.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import SimpleITK as sitk

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def template_path(name: str) -> Path:
    import nilearn

    if name not in _FILES:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(_FILES)}")
    return Path(nilearn.__file__).parent / "datasets" / "data" / _FILES[name]


@lru_cache(maxsize=4)
def _load(name: str) -> sitk.Image:
    image = sitk.Cast(sitk.ReadImage(str(template_path(name))), sitk.sitkFloat32)
    return image if name == "t1" else image / 255.0


def load_template(name: str) -> sitk.Image:
    """``t1`` (intensity), ``gm`` or ``wm`` (probability 0..1) as float32, 1 mm, 197x233x189."""
    return sitk.Image(_load(name))


@lru_cache(maxsize=1)
def _brain_mask() -> sitk.Image:
    mask = sitk.BinaryThreshold(_load("t1"), lowerThreshold=1e-3, upperThreshold=1e9, insideValue=1, outsideValue=0)
    return sitk.BinaryFillhole(mask)


def load_brain_mask() -> sitk.Image:
    """uint8 brain mask of the template (T1 > 0, holes filled)."""
    return sitk.Image(_brain_mask())
