"""The one case loader: explicit files, a BraTS folder (2021 or 2023+ naming) or a DICOM study."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError, not_a_file
from neuroradfm.io.case import Case, reference_key
from neuroradfm.io.dicom import assign_series, find_series, read_series, single_series
from neuroradfm.io.images import image_stem, is_image_file, overlap_fraction, read_image

# BraTS 2021: <id>_t1, _t1ce, _t2, _flair, _seg;  BraTS 2023+: <id>-t1n, -t1c, -t2w, -t2f, -seg
BRATS_SUFFIXES = {
    "t1": ("_t1", "-t1n"), "t1ce": ("_t1ce", "-t1c"), "t2": ("_t2", "-t2w"), "flair": ("_flair", "-t2f"),
    "seg": ("_seg", "-seg"),
}
MIN_OVERLAP = 0.5


def find_brats_files(folder: Path) -> dict[str, Path]:
    """Sequence -> file in a BraTS case folder (those it has: any non-empty subset); a duplicated sequence or no
    sequence at all is an error."""
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
    if not any(found[k] for k in SEQUENCES):
        raise InputError(folder, f"no sequence found (BraTS naming *_t1/_t1ce/_t2/_flair or *-t1n/-t1c/-t2w/-t2f); "
                                 f"found: {names}")
    return {k: v[0] for k, v in found.items() if v}


def missing_sequences(paths: Mapping[str, object]) -> list[str]:
    """The sequences a case folder or file set lacks (a case may have any non-empty subset)."""
    return [k for k in SEQUENCES if k not in paths]


def _check_extents(images: dict[str, sitk.Image], sources: dict[str, str]) -> str:
    """The reference sequence (reference_key); every other one must cover most of its field of view."""
    ref = reference_key(tuple(images))
    for key, image in images.items():
        if key == ref:
            continue
        fraction = overlap_fraction(image, images[ref])
        if fraction < MIN_OVERLAP:
            raise InputError(sources[key], f"mismatched physical extent: its field of view overlaps the "
                                           f"{ref.upper()}'s ({sources[ref]}) by only {fraction:.0%}; are both from "
                                           "the same patient and study?")
    return ref


def read_sequence(path: Path) -> sitk.Image:
    """An image file, or a folder that holds exactly one DICOM series."""
    if not path.is_dir():
        return read_image(path)
    return read_series(single_series(path))


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
    """The case id of explicitly given files: the reference's (T1ce's) file name without its sequence tag."""
    stem = image_stem(Path(paths[reference_key(tuple(k for k in SEQUENCES if paths.get(k)))]))
    return re.sub(r"[-_]?(t1ce|t1c|t1gd|t1n|t1|t2w|t2f|t2|flair)$", "", stem, flags=re.I) or "case"


def load_case(source: str | Path | Mapping[str, str | Path], *, case_id: str | None = None, site: str | None = None,
              clinical: Mapping[str, Any] | None = None, sequences: Mapping[str, str] | None = None) -> Case:
    """Load one patient's sequences (any non-empty subset of the four) from explicit files, a BraTS folder or a
    DICOM study.

    ``source``: a mapping t1/t1ce/t2/flair (any of them; optional seg) -> image file or a folder holding that
    sequence's one DICOM series (the Kaggle RSNA-MICCAI packaging: one folder per sequence), a BraTS case folder
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
        if extra or not set(paths) & set(SEQUENCES):
            raise InputError(None, f"explicit files are any of {', '.join(SEQUENCES)} (at least one) and an optional "
                                   f"seg; {'unexpected ' + str(sorted(extra)) if extra else 'no sequence given'}")
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
    seg = images.pop("seg", None)
    ref = _check_extents(images, sources)
    if seg is not None and overlap_fraction(seg, images[ref]) < MIN_OVERLAP:
        raise InputError(sources["seg"], f"mismatched physical extent: the segmentation does not cover the "
                                         f"{ref.upper()}'s field of view ({sources[ref]})")
    return Case(case_id=case_id or default_id, **images, site=site, clinical=dict(clinical or {}),
                sources=sources, seg=seg, inputs=inputs)
