"""The same scan under two names: BraTS 2021 re-distributes UPENN-GBM, UCSF-PDGM and TCGA scans under its own ids.
Without a mapping sheet, identical voxels are the evidence: a SHA-256 of the reference image's pixel type, size and
values (not of the file, whose bytes change with every recompression). The reference is the T1ce, else the case's
first of T1, FLAIR, T2 (a copy lacks the same sequences as its source). Only images whose headers already agree are
read."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import SimpleITK as sitk

from neuroradfm import SEQUENCE_LABELS, SEQUENCES
from neuroradfm.errors import InputError
from neuroradfm.io.case import REFERENCE_ORDER, reference_key
from neuroradfm.io.dicom import single_series
from neuroradfm.io.loader import read_sequence
from neuroradfm.progress import Progress, null_progress

NAMES = SEQUENCE_LABELS


def reference_image(paths: Mapping[str, Path]) -> tuple[str, Path]:
    """(sequence, image) compared for copies: the T1ce, else the first of T1, FLAIR, T2 the case has."""
    key = reference_key(tuple(k for k in paths if k in SEQUENCES))
    return key, paths[key]


def sequence_names(sequences: Iterable[str]) -> str:
    """The references of a group as messages name them: T1ce, or T1ce/T1 when its cases' references differ."""
    present = set(sequences)
    return "/".join(NAMES[k] for k in REFERENCE_ORDER if k in present)


def header_key(path: Path) -> tuple:
    """Size, spacing and pixel type from the header alone (a DICOM folder: its first file's and its slice count)."""
    reader = sitk.ImageFileReader()
    if path.is_dir():
        series = single_series(path)
        reader.SetFileName(series.files[0])
        reader.ReadImageInformation()
        return (*reader.GetSize()[:2], len(series.files), *(round(s, 4) for s in reader.GetSpacing()[:2]),
                reader.GetPixelIDValue(), "dicom")
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return (*reader.GetSize(), *(round(s, 4) for s in reader.GetSpacing()), reader.GetPixelIDValue())


def voxel_digest(path: Path) -> str:
    image = read_sequence(path)
    digest = hashlib.sha256(f"{image.GetPixelIDTypeAsString()} {image.GetSize()}".encode())
    digest.update(sitk.GetArrayViewFromImage(image).tobytes())
    return digest.hexdigest()


def identical_scans(images: Sequence[tuple[Hashable, Path]],
                    progress: Progress = null_progress) -> list[list[Hashable]]:
    """Groups (two or more) of the keys whose images hold identical voxels; unreadable images are left out (the
    file checks report them)."""
    by_header: dict[tuple, list[tuple[Hashable, Path]]] = defaultdict(list)
    for key, path in images:
        try:
            by_header[header_key(path)].append((key, path))
        except (RuntimeError, InputError, OSError):
            continue
    candidates = [item for group in by_header.values() if len(group) > 1 for item in group]
    by_digest: dict[str, list[Hashable]] = defaultdict(list)
    for done, (key, path) in enumerate(candidates, start=1):
        try:
            by_digest[voxel_digest(path)].append(key)
        except (RuntimeError, InputError, OSError):
            pass
        progress("comparing scans", done / len(candidates), f"{done}/{len(candidates)} images read")
    return [keys for keys in by_digest.values() if len(keys) > 1]
