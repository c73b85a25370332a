"""DICOM studies: find every series with SimpleITK/GDCM and assign the four sequences.

Assignment uses neuroradfm.io.sequence_names on SeriesDescription (then ProtocolName) and the
ContrastBolusAgent tag. An explicit override (sequence -> SeriesInstanceUID or description)
wins. Ambiguity and gaps are errors that list every series found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError
from neuroradfm.io.sequence_names import classify_series

TAGS = {"description": "0008|103e", "protocol": "0018|1030", "contrast": "0018|0010", "uid": "0020|000e"}


@dataclass
class DicomSeries:
    uid: str
    folder: Path
    files: list[str]
    description: str
    protocol: str
    contrast_agent: str

    @property
    def sequence(self) -> str | None:
        for name in (self.description, self.protocol):
            found = classify_series(name, self.contrast_agent)
            if found:
                return found
        return None

    def summary(self) -> str:
        return f"{self.uid[-12:]} '{self.description or self.protocol}' ({len(self.files)} files) in {self.folder}"


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def find_series(study: Path) -> list[DicomSeries]:
    """Every DICOM series under ``study`` (any nesting)."""
    found: list[DicomSeries] = []
    folders = [study, *sorted(p for p in study.rglob("*") if p.is_dir())]
    for folder in folders:
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.LoadPrivateTagsOff()
            try:
                reader.ReadImageInformation()
            except RuntimeError as error:
                raise InputError(files[0], f"unreadable DICOM file ({str(error).strip().splitlines()[-1]})") from None
            found.append(DicomSeries(uid, folder, files, _tag(reader, TAGS["description"]),
                                     _tag(reader, TAGS["protocol"]), _tag(reader, TAGS["contrast"])))
    return found


def is_dicom_study(folder: Path) -> bool:
    return any(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)) for p in [folder, *folder.rglob("*")] if p.is_dir())


def assign_series(study: Path, series: list[DicomSeries],
                  override: Mapping[str, str] | None = None) -> dict[str, DicomSeries]:
    override = {k.lower(): v for k, v in (override or {}).items()}
    unknown = set(override) - set(SEQUENCES)
    if unknown:
        raise InputError(study, f"override names unknown sequences {sorted(unknown)}; use {', '.join(SEQUENCES)}")
    chosen: dict[str, DicomSeries] = {}
    problems: list[str] = []
    for sequence in SEQUENCES:
        if sequence in override:
            key = override[sequence].strip().lower()
            matches = [s for s in series if s.uid.lower() == key or s.description.lower() == key]
        else:
            matches = [s for s in series if s.sequence == sequence]
        if len(matches) == 1:
            chosen[sequence] = matches[0]
        elif not matches:
            problems.append(f"no series for {sequence}")
        else:
            problems.append(f"{len(matches)} candidate series for {sequence}: "
                            + "; ".join(s.summary() for s in matches))
    if problems:
        listing = "\n  ".join(f"{s.summary()} -> {s.sequence or 'not used'}" for s in series) or "(no DICOM series)"
        raise InputError(study, "cannot assign the DICOM series to T1/T1ce/T2/FLAIR: " + "; ".join(problems)
                         + f".\nSeries found:\n  {listing}\nPass an explicit override, e.g. "
                         "sequences={'t1ce': '<SeriesInstanceUID or SeriesDescription>'}.")
    return chosen


def read_series(series: DicomSeries) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series.files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(series.folder, f"series '{series.description}' is unreadable "
                                        f"({str(error).strip().splitlines()[-1]})") from None
