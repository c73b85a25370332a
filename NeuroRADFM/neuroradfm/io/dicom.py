"""DICOM studies: find every series with SimpleITK/GDCM and assign the four sequences.

Assignment uses neuroradfm.io.sequence_names on SeriesDescription (then ProtocolName) and the
ContrastBolusAgent tag; derived secondary images (reformats, maps) and non-MR objects are not
used. An explicit override (sequence -> SeriesInstanceUID, its short form, or SeriesDescription)
wins. Ambiguity and gaps are errors that list every series found.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError, itk_reason
from neuroradfm.io.images import check_image, check_voxel_count
from neuroradfm.io.sequence_names import classify_series, names_a_non_input

TAGS = {"description": "0008|103e", "protocol": "0018|1030", "contrast": "0018|0010", "uid": "0020|000e",
        "image_type": "0008|0008", "modality": "0008|0060", "position": "0020|0032", "orientation": "0020|0037"}
SHORT_UID = 12
"""Error listings show the last SHORT_UID characters of a SeriesInstanceUID; overrides accept them."""
SLICE_GAP_TOLERANCE = 0.1
"""Largest relative deviation of a slice gap from the median before the series counts as uneven."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between two slices' direction cosines (ImageOrientationPatient) within one series."""


@dataclass
class DicomSeries:
    uid: str
    folder: Path
    files: list[str]
    description: str
    protocol: str
    contrast_agent: str
    image_type: str = ""
    modality: str = "MR"
    slice_size: tuple[int, ...] = ()
    """Columns and rows of the first slice, as its header says (the series is checked before it is allocated)."""

    @property
    def excluded(self) -> str:
        """Why the series can never be an input ("" when it can)."""
        if self.modality and self.modality.upper() != "MR":
            return f"modality {self.modality}"
        parts = [p.strip().upper() for p in self.image_type.split("\\")]
        if parts[0] == "DERIVED" and "SECONDARY" in parts[1:2]:
            return "derived secondary image"
        return ""

    @property
    def sequence(self) -> str | None:
        names = (self.description, self.protocol)
        if self.excluded or any(names_a_non_input(n) for n in names):  # "t1_mpr_iso_MPR_Tra" from "t1_mpr_iso"
            return None
        for name in names:
            found = classify_series(name, self.contrast_agent)
            if found:
                return found
        return None

    @property
    def short_uid(self) -> str:
        return "..." + self.uid[-SHORT_UID:].lstrip(".")

    @property
    def label(self) -> str:
        return self.description or self.protocol or "(no description)"

    def summary(self) -> str:
        return f"{self.short_uid} '{self.label}' ({len(self.files)} slices) in {self.folder}"

    def matches(self, key: str) -> bool:
        """Override key: the full SeriesInstanceUID, its ending (short form) or the exact description."""
        key = key.strip().lower()
        ending = key.lstrip(". ")
        return bool(key) and (key == self.uid.lower() or (len(ending) >= 4 and self.uid.lower().endswith(ending))
                              or key in (self.description.lower(), self.protocol.lower()))


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _read_header(uid: str, folder: Path, files: list[str]) -> DicomSeries:
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(files[0], f"unreadable DICOM file ({itk_reason(error)})") from None
    return DicomSeries(uid, folder, files, *(_tag(reader, TAGS[k]) for k in
                                             ("description", "protocol", "contrast", "image_type", "modality")),
                       slice_size=tuple(reader.GetSize()[:2]))


def find_series(study: Path) -> list[DicomSeries]:
    """Every DICOM series under ``study`` (any nesting), one header read per series.

    GDCM lists series per folder; a series split over several folders (some exports cap files per
    folder) is gathered again with a recursive, position-sorted file listing of their common folder.
    """
    per_uid: dict[str, list[tuple[Path, list[str]]]] = {}
    folders = [study, *sorted(p for p in study.rglob("*") if p.is_dir())]
    for folder in (f for f in folders if any(p.is_file() for p in f.iterdir())):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            if files:
                per_uid.setdefault(uid, []).append((folder, files))
    found = []
    for uid, parts in per_uid.items():
        folder, files = parts[0]
        if len(parts) > 1:
            folder = Path(os.path.commonpath([str(f) for f, _ in parts]))
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid, recursive=True))
        found.append(_read_header(uid, folder, files))
    return found


def single_series(folder: Path) -> DicomSeries:
    """The one usable series of a sequence folder (a manifest may name one per sequence); an error otherwise."""
    series = [s for s in find_series(folder) if not s.excluded]
    if len(series) != 1:
        found = "; ".join(s.summary() for s in series) or "no DICOM series"
        raise InputError(folder, f"a sequence folder must hold exactly one DICOM series, found {found}")
    return series[0]


def _listing(series: list[DicomSeries], chosen: Mapping[str, DicomSeries]) -> str:
    assigned = {id(s): k for k, s in chosen.items()}
    lines = []
    for s in series:
        if id(s) in assigned:
            role = assigned[id(s)]
        elif s.sequence:
            role = f"{s.sequence} candidate, not assigned"
        else:
            role = "not used" + (f" ({s.excluded})" if s.excluded else "")
        lines.append(f"{s.summary()} -> {role}")
    return "\n  ".join(lines) or "(no DICOM series)"


def assign_series(study: Path, series: list[DicomSeries],
                  override: Mapping[str, str] | None = None) -> dict[str, DicomSeries]:
    """Sequence -> series for the sequences the study has (any non-empty subset): overrides first, then one
    automatic candidate per remaining sequence; several candidates for one sequence are an error."""
    override = {k.lower(): v for k, v in (override or {}).items() if v}
    unknown = set(override) - set(SEQUENCES)
    if unknown:
        raise InputError(study, f"override names unknown sequences {sorted(unknown)}; use {', '.join(SEQUENCES)}")
    chosen: dict[str, DicomSeries] = {}
    problems: list[str] = []
    for sequence, key in override.items():
        matches = [s for s in series if s.matches(key)]
        if len(matches) == 1:
            chosen[sequence] = matches[0]
        else:
            problems.append(f"override {sequence}={key!r} matches {len(matches)} series"
                            + (" (give the full SeriesInstanceUID)" if matches else ""))
    taken = {id(s) for s in chosen.values()}
    for sequence in SEQUENCES:
        if sequence in override:
            continue
        matches = [s for s in series if s.sequence == sequence and id(s) not in taken]
        if len(matches) == 1:
            chosen[sequence] = matches[0]
        elif matches:
            problems.append(f"{len(matches)} candidate series for {sequence}: "
                            + "; ".join(f"'{s.label}' ({s.short_uid})" for s in matches))
    if not chosen and not problems:
        problems.append("no series is a T1, T1ce, T2 or FLAIR")
    if problems:
        raise InputError(study, "cannot assign the DICOM series to T1/T1ce/T2/FLAIR: " + "; ".join(problems)
                         + f".\nSeries found:\n  {_listing(series, chosen)}\nPass an explicit override, e.g. "
                         "sequences={'t1ce': '<SeriesInstanceUID, its last digits, or SeriesDescription>'}.")
    return chosen


def _check_slice_spacing(series: DicomSeries, reader: sitk.ImageSeriesReader, image: sitk.Image) -> None:
    """Missing slices, or several echoes / time points in one series, show up as uneven slice gaps."""
    if image.GetDimension() != 3 or len(series.files) < 3 or image.GetSize()[2] != len(series.files):
        return
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    try:
        positions = [[float(v) for v in reader.GetMetaData(i, TAGS["position"]).split("\\")]
                     for i in range(len(series.files))]
    except (RuntimeError, ValueError):
        return  # no per-slice positions to check against
    gaps = np.diff(np.asarray(positions) @ normal)
    typical = float(np.median(np.abs(gaps)))
    if typical == 0 or np.abs(np.abs(gaps) - typical).max() > SLICE_GAP_TOLERANCE * typical:
        raise InputError(series.folder, f"series '{series.label}' has uneven slice positions (gaps from "
                                        f"{np.abs(gaps).min():.3g} to {np.abs(gaps).max():.3g} mm): missing slices, "
                                        "or several echoes / time points in one series")


def _check_orientations(series: DicomSeries, reader: sitk.ImageSeriesReader) -> None:
    """One series must be one stack of parallel slices: SimpleITK takes the first slice's orientation for all."""
    groups: list[tuple[np.ndarray, str, int]] = []
    for index in range(len(series.files)):
        if not reader.HasMetaDataKey(index, TAGS["orientation"]):
            continue
        text = reader.GetMetaData(index, TAGS["orientation"]).strip()
        try:
            cosines = np.asarray([float(v) for v in text.split("\\")])
        except ValueError:
            raise InputError(series.folder, f"series '{series.label}': slice {series.files[index]} has an unreadable "
                                            f"ImageOrientationPatient (0020|0037) '{text}'") from None
        if cosines.shape != (6,) or not np.isfinite(cosines).all():
            raise InputError(series.folder, f"series '{series.label}': slice {series.files[index]} has an invalid "
                                            f"ImageOrientationPatient (0020|0037) '{text}'")
        for number, (known, label, count) in enumerate(groups):
            if np.abs(known - cosines).max() <= ORIENTATION_TOLERANCE:
                groups[number] = (known, label, count + 1)
                break
        else:
            groups.append((cosines, text, 1))
    if len(groups) > 1:
        found = "; ".join(f"{label} in {count} slice{'s' if count > 1 else ''}" for _, label, count in groups)
        raise InputError(series.folder, f"series '{series.label}' mixes {len(groups)} slice orientations "
                                        f"(ImageOrientationPatient 0020|0037): {found}. One series must be one stack "
                                        "of parallel slices; export each orientation as its own series")


def read_series(series: DicomSeries) -> sitk.Image:
    """The series as one 3D image, checked like any image file (check_image) plus slice orientations and gaps."""
    if series.slice_size:  # a header claiming huge slices is refused before the series is allocated
        check_voxel_count(f"{series.folder} ('{series.label}')", (*series.slice_size, len(series.files)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series.files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(series.folder, f"series '{series.label}' is unreadable ({itk_reason(error)})") from None
    _check_orientations(series, reader)
    _check_slice_spacing(series, reader, image)
    return check_image(image, f"{series.folder} ('{series.label}')")
