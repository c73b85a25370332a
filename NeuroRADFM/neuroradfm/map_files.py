"""How a heat map file (``heatmap_<key>.nrrd``) stores its map, and how to read it back.

A map is shown as a fraction (0..1) of its peak. The file holds 8-bit levels, level = round(255 x fraction), with
the scale in the NRRD header, because 256 steps are what Slicer's heat colour table shows: nothing a display shows
is lost (a level is at most 1/510 off the map) and the file is half the size of float steps of 1/255 (1.1 against
2.1 MiB on a 197 x 233 x 189 case). The header says how to get back (key:=value lines, readable in a text editor)::

    fraction of the peak = level x NeuroRADFM.fraction_per_level     (1/255)
    Grad-CAM value       = fraction x NeuroRADFM.peak_value          (the map's peak, in the head's own units)

No torch, no Slicer here: the writer (neuroradfm.outputs), Slicer's loader (NeuroRADFMLib.results) and scripts
share it. A file written before 8-bit maps (float32 0..1, no header key) is read as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

HEAT_STEPS = 255
"""Levels of a heat map above 0: level 255 is the map's peak."""
SCALE_KEY = "NeuroRADFM.fraction_per_level"
"""NRRD header key: fraction of the map's peak (0..1) per level, 1/255."""
PEAK_KEY = "NeuroRADFM.peak_value"
"""NRRD header key: the map's peak (level 255) in the head's own Grad-CAM units (predictions.json cam.peak_values)."""
MEANING_KEY = "NeuroRADFM.meaning"
MEANING = (f"uint8 level of the Grad-CAM map: fraction of the map's peak (0..1) = level x {SCALE_KEY}; "
           f"Grad-CAM value = fraction x {PEAK_KEY}")


def tag(levels: sitk.Image, peak: float | None) -> sitk.Image:
    """Put the scale (and the raw peak, when known) into the header of a uint8 level image; returns it."""
    levels.SetMetaData(SCALE_KEY, repr(1.0 / HEAT_STEPS))
    if peak is not None:
        levels.SetMetaData(PEAK_KEY, repr(float(peak)))
    levels.SetMetaData(MEANING_KEY, MEANING)
    return levels


def fraction_per_level(path: str | Path) -> float | None:
    """The scale a heat map file's header gives (reads the header only); None for a float map written without it."""
    import nrrd

    value = nrrd.read_header(str(path)).get(SCALE_KEY)
    return None if value is None else float(value)


def read_heatmap(path: str | Path) -> sitk.Image:
    """A heat map file as float32 fractions (0..1) of the map's peak, on its grid, whichever way it was written."""
    image = sitk.ReadImage(str(path))
    if not image.HasMetaDataKey(SCALE_KEY):
        return sitk.Cast(image, sitk.sitkFloat32)
    fractions = sitk.GetArrayViewFromImage(image) * np.float32(float(image.GetMetaData(SCALE_KEY)))
    out = sitk.GetImageFromArray(fractions.astype(np.float32, copy=False))
    out.CopyInformation(image)
    return out
