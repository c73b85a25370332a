"""The Case: one patient's four co-acquired MRI sequences, whatever they were loaded from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from neuroradfm import SEQUENCES


@dataclass
class Case:
    """Four 3D images (``t1``, ``t1ce``, ``t2``, ``flair``) plus identity and clinical data.

    ``sources`` records where each sequence came from (a file path, or a DICOM series
    folder plus its SeriesDescription) so errors can name it.
    ``seg`` is a tumour label map when the source ships one (BraTS ``seg``), else None.
    """

    case_id: str
    t1: sitk.Image
    t1ce: sitk.Image
    t2: sitk.Image
    flair: sitk.Image
    site: str | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    inputs: list[Path] = field(default_factory=list)
    """The files (or DICOM series folders) the case was read from: an output never replaces a folder holding them."""
    seg: sitk.Image | None = None

    def image(self, sequence: str) -> sitk.Image:
        if sequence not in SEQUENCES:
            raise KeyError(f"unknown sequence {sequence!r}; expected one of {SEQUENCES}")
        return getattr(self, sequence)

    @property
    def images(self) -> dict[str, sitk.Image]:
        return {s: getattr(self, s) for s in SEQUENCES}

    def source(self, sequence: str) -> str:
        return self.sources.get(sequence, f"{self.case_id}:{sequence}")
