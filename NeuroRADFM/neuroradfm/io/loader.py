"""The one case loader: explicit files, a BraTS folder (2021 or 2023+ naming) or a DICOM study."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError, not_a_file
from neuroradfm.io.case import Case
from neuroradfm.io.dicom import assign_series, find_series, read_series
from neuroradfm.io.images import image_stem, is_image_file, overlap_fraction, read_image

# BraTS 2021: <id>_t1, _t1ce, _t2, _flair, _seg;  BraTS 2023+: <id>-t1n, -t1c, -t2w, -t2f, -seg
BRATS_SUFFIXES = {
    "t1": ("_t1", "-t1n"), "t1ce": ("_t1ce", "-t1c"), "t2": ("_t2", "-t2w"), "flair": ("_flair", "-t2f"),
    "seg": ("_seg", "-seg"),
}
MIN_OVERLAP = 0.5


def find_brats_files(folder: Path) -> dict[str, Path]:
    """Sequence -> file in a BraTS case folder; missing or duplicated sequences are errors."""
    images = [p for p in sorted(folder.iterdir()) if is_image_file(p)]
    found: dict[str, list[Path]] = {key: [] for key in BRATS_SUFFIXES}
    for path in images:
        stem = image_stem(path).lower()
        for key, suffixes in BRATS_SUFFIXES.items():
            if any(stem.endswith(s) for s in suffixes):
                found[key].append(path)
    names = ", ".join(p.name for p in images) or "no image files"
    duplicated = {k: v for k, v in found.items() if len(v) > 1}
    if duplicated:
        detail = "; ".join(f"{k}: {', '.join(p.name for p in v)}" for k, v in duplicated.items())
        raise InputError(folder, f"more than one file for a sequence ({detail})")
    missing = [k for k in SEQUENCES if not found[k]]
    if missing:
        raise InputError(folder, f"missing sequence(s) {', '.join(missing)} (BraTS naming *_t1/_t1ce/_t2/_flair or "
                                 f"*-t1n/-t1c/-t2w/-t2f); found: {names}")
    return {k: v[0] for k, v in found.items() if v}


def _check_extents(images: dict[str, sitk.Image], sources: dict[str, str]) -> None:
    reference = images["t1ce"]
    for key, image in images.items():
        if key == "t1ce":
            continue
        fraction = overlap_fraction(image, reference)
        if fraction < MIN_OVERLAP:
            raise InputError(sources[key], f"mismatched physical extent: its field of view overlaps the T1ce's "
                                           f"({sources['t1ce']}) by only {fraction:.0%}; are both from the same "
                                           "patient and study?")


def read_sequence(path: Path) -> sitk.Image:
    """An image file, or a folder that holds exactly one DICOM series."""
    if not path.is_dir():
        return read_image(path)
    series = [s for s in find_series(path) if not s.excluded]
    if len(series) != 1:
        found = "; ".join(s.summary() for s in series) or "no DICOM series"
        raise InputError(path, f"a sequence folder must hold exactly one DICOM series, found {found}")
    return read_series(series[0])


def _refuse_repeats(where: Path | None, chosen: Mapping[str, str], what: str) -> None:
    """One file or DICOM series given for two sequences (or as the segmentation) is a mistake, not a case."""
    keys: dict[str, list[str]] = {}
    for key, source in chosen.items():
        keys.setdefault(source, []).append(key)
    repeated = [f"{' and '.join(k)}: {source}" for source, k in keys.items() if len(k) > 1]
    if repeated:
        raise InputError(where, f"the same {what} is given for several sequences ({'; '.join(repeated)}); each "
                                "sequence needs its own image")


def explicit_case_id(paths: Mapping[str, str | Path]) -> str:
    """The case id of explicitly given files: the T1ce's file name without its sequence tag."""
    return re.sub(r"[-_]?(t1ce|t1c|t1gd)$", "", image_stem(Path(paths["t1ce"])), flags=re.I) or "case"


def load_case(source: str | Path | Mapping[str, str | Path], *, case_id: str | None = None, site: str | None = None,
              clinical: Mapping[str, Any] | None = None, sequences: Mapping[str, str] | None = None) -> Case:
    """Load one patient's four sequences from explicit files, a BraTS folder or a DICOM study.

    ``source``: a mapping t1/t1ce/t2/flair (optional seg) -> image file or a folder holding that sequence's one
    DICOM series (the Kaggle RSNA-MICCAI packaging: one folder per sequence), a BraTS case folder
    (2021 ``*_t1ce.nii.gz`` or 2023+ ``*-t1c.nii.gz`` naming) or a DICOM study folder (any nesting).
    ``sequences`` overrides the DICOM assignment: sequence -> SeriesInstanceUID (or its last
    digits as listed in errors) or exact SeriesDescription. Every problem is an InputError.
    """
    images: dict[str, sitk.Image] = {}
    sources: dict[str, str] = {}
    inputs: list[Path] = []
    if isinstance(source, Mapping):
        paths = {str(k).lower(): Path(v) for k, v in source.items() if v is not None and str(v) != ""}
        extra = set(paths) - set(SEQUENCES) - {"seg"}
        missing = [k for k in SEQUENCES if k not in paths]
        if extra or missing:
            raise InputError(None, f"explicit files need exactly {', '.join(SEQUENCES)} (and optional seg); "
                                   f"missing {missing}, unexpected {sorted(extra)}")
        absent = {k: (p, problem) for k, p in paths.items() if not p.is_dir() and (problem := not_a_file(p))}
        if len(absent) == 1:
            raise InputError(*next(iter(absent.values())))
        if absent and all(problem == "file not found" for _, problem in absent.values()):
            raise InputError(None, f"{len(absent)} image files not found: "
                                   + "; ".join(f"{k}: {p}" for k, (p, _) in absent.items()))
        if absent:
            raise InputError(None, f"{len(absent)} image files cannot be read: "
                                   + "; ".join(f"{k}: {p} {problem}" for k, (p, problem) in absent.items()))
        if sequences:
            raise InputError(None, "a sequences override applies to DICOM studies only; the files already say "
                                   "which sequence each one is")
        default_id = explicit_case_id(paths)
    else:
        folder = Path(source)
        if not folder.exists():
            raise InputError(folder, "case folder not found")
        if not folder.is_dir():
            raise InputError(folder, "expected a case folder (BraTS or DICOM), or give the four files explicitly")
        default_id = folder.name
        if any(is_image_file(p) for p in folder.iterdir()):
            if sequences:
                raise InputError(folder, "a sequences override applies to DICOM studies only; for image files "
                                         "give the four files explicitly")
            paths = find_brats_files(folder)
        else:
            series = find_series(folder)
            if not series:
                raise InputError(folder, "holds neither BraTS-named image files (*_t1ce.nii.gz, *-t1c.nii.gz, ...) "
                                         "nor a DICOM series")
            assigned = assign_series(folder, series, sequences)
            _refuse_repeats(folder, {key: chosen.uid for key, chosen in assigned.items()}, "series")
            for key, chosen in assigned.items():
                sources[key] = f"{chosen.folder} ('{chosen.label}')"
                images[key] = read_series(chosen)
            inputs = [chosen.folder for chosen in assigned.values()]
            paths = {}
    inputs += paths.values()
    _refuse_repeats(None, {key: str(path.resolve()) for key, path in paths.items()}, "file")
    for key, path in paths.items():
        images[key] = read_sequence(path)
        sources[key] = str(path)
    _check_extents({k: images[k] for k in SEQUENCES}, sources)
    seg = images.pop("seg", None)
    if seg is not None and overlap_fraction(seg, images["t1ce"]) < MIN_OVERLAP:
        raise InputError(sources["seg"], "mismatched physical extent: the segmentation does not cover the T1ce's "
                                         f"field of view ({sources['t1ce']})")
    return Case(case_id=case_id or default_id, t1=images["t1"], t1ce=images["t1ce"], t2=images["t2"],
                flair=images["flair"], site=site, clinical=dict(clinical or {}), sources=sources, seg=seg,
                inputs=inputs)
