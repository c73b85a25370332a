"""The Case: one patient's co-acquired MRI sequences (any non-empty subset of four), whatever they were loaded
from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from neuroradfm import SEQUENCES

REFERENCE_ORDER = ("t1ce", "t1", "flair", "t2")
"""Which sequence's grid the outputs go back onto: the first of these the case has."""


def reference_key(available: tuple[str, ...] | list[str], first: str = "t1ce") -> str:
    """``first`` when the case has it, else the first of REFERENCE_ORDER that it has."""
    for key in (first, *REFERENCE_ORDER):
        if key in available:
            return key
    raise ValueError("a case needs at least one of " + ", ".join(SEQUENCES))


@dataclass
class Case:
    """Up to four 3D images (``t1``, ``t1ce``, ``t2``, ``flair``; any non-empty subset, the others None) plus
    identity and clinical data.

    ``sources`` records where each sequence came from (a file path, or a DICOM series
    folder plus its SeriesDescription) so errors can name it.
    ``seg`` is a tumour label map when the source ships one (BraTS ``seg``), else None.
    """

    case_id: str
    t1: sitk.Image | None = None
    t1ce: sitk.Image | None = None
    t2: sitk.Image | None = None
    flair: sitk.Image | None = None
    site: str | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    inputs: list[Path] = field(default_factory=list)
    """The files (or DICOM series folders) the case was read from: an output never replaces a folder holding them."""
    seg: sitk.Image | None = None

    @property
    def available(self) -> tuple[str, ...]:
        """The sequences the case has, in SEQUENCES order."""
        return tuple(s for s in SEQUENCES if getattr(self, s) is not None)

    def image(self, sequence: str) -> sitk.Image:
        if sequence not in SEQUENCES:
            raise KeyError(f"unknown sequence {sequence!r}; expected one of {SEQUENCES}")
        image = getattr(self, sequence)
        if image is None:
            raise KeyError(f"case {self.case_id} has no {sequence} (it has {', '.join(self.available)})")
        return image

    @property
    def images(self) -> dict[str, sitk.Image]:
        return {s: getattr(self, s) for s in self.available}

    def source(self, sequence: str) -> str:
        return self.sources.get(sequence, f"{self.case_id}:{sequence}")
