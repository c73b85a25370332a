"""``neuroradfm cohort check``: is a manifest fit to train on? Files, geometry, labels, subjects, survival.

Reads image headers (a truncated .nii.gz passes here and fails when the case loads), and the voxels of the
reference images (the T1ce; a case without one: its first of T1, FLAIR, T2) whose headers agree, to find one scan
under two names (``hashes=False`` skips that). A case lacking sequences is a warning: the trainers use it only with
``--sequence-dropout``.
Problems are errors (the manifest cannot be used as it is) or warnings (it can, but probably should not).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.cohort.duplicates import identical_scans, reference_image, sequence_names
from neuroradfm.errors import InputError
from neuroradfm.io import read_manifest
from neuroradfm.io.dicom import single_series
from neuroradfm.io.loader import missing_sequences
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.progress import Progress, null_progress

MAX_SURVIVAL_DAYS = 30 * 365.25


@dataclass
class CheckReport:
    cases: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    geometry: dict[str, Counter] = field(default_factory=dict)
    """site -> Counter of 'size / spacing / orientation' strings of the reference images (T1ce, else the first of
    T1, FLAIR, T2 the case has)."""
    labels: dict[str, dict[str, tuple[int, int, int]]] = field(default_factory=dict)
    """marker -> site -> (positive, negative, missing)."""
    missing_files: int = 0

    def exit_status(self, strict: bool = False) -> int:
        if self.errors or (strict and self.warnings):
            return 2
        return 1 if self.warnings else 0

    def text(self) -> str:
        lines = [f"{self.cases} cases"]
        for site, shapes in sorted(self.geometry.items()):
            lines.append(f"geometry, {site}: " + "; ".join(f"{shape} x{n}" for shape, n in shapes.most_common()))
        if self.labels:
            sites = sorted({s for per_site in self.labels.values() for s in per_site})
            lines.append("labels (positive/negative/missing): " + " | ".join(["marker", *sites]))
            for marker, per_site in self.labels.items():
                lines.append(" | ".join([marker, *("/".join(map(str, per_site.get(s, (0, 0, 0)))) for s in sites)]))
        lines += [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _orientation(direction: tuple[float, ...]) -> str:
    matrix = np.asarray(direction).reshape(3, 3)
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(matrix.ravel().tolist())


def _header(path: Path) -> str:
    reader = sitk.ImageFileReader()
    if path.is_dir():  # a DICOM series folder: its first slice's header and the slice count
        series = single_series(path)
        reader.SetFileName(series.files[0])
        reader.ReadImageInformation()
        cols, rows = reader.GetSize()[:2]
        spacing = "x".join(f"{s:g}" for s in reader.GetSpacing()[:2])
        return f"{cols}x{rows}x{len(series.files)} @ {spacing} mm in-plane {_orientation(reader.GetDirection())}"
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = "x".join(str(n) for n in reader.GetSize())
    spacing = "x".join(f"{s:g}" for s in reader.GetSpacing())
    return f"{size} @ {spacing} mm {_orientation(reader.GetDirection())}"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_manifest(path: str | Path, hashes: bool = True, progress: Progress = null_progress) -> CheckReport:
    """Every listed file present and readable, geometry per site, marker prevalence per site, subjects seen in
    several datasets or at several timepoints, survival values that cannot be right, cases lacking sequences; with
    ``hashes``, the same scan under two case ids (identical reference voxels: reads the images whose headers
    agree)."""
    entries = read_manifest(path)
    report = CheckReport(len(entries))
    readable: list[tuple[str, Path]] = []
    reference: dict[str, str] = {}
    subjects: dict[str, set[str]] = defaultdict(set)
    timepoints: dict[tuple[str, str], set[str]] = defaultdict(set)
    for entry in entries:
        site = entry.site or "(no site)"
        reference[entry.case_id] = reference_image(entry.paths)[0]
        for key, file in entry.paths.items():
            if not (file.is_file() or file.is_dir()):
                report.errors.append(f"{entry.case_id}: {key} file not found: {file}")
                report.missing_files += 1
                continue
            try:
                shape = _header(file)
            except (RuntimeError, InputError) as error:
                report.errors.append(f"{entry.case_id}: {key} file {file} is not a readable image "
                                     f"({str(error).strip().splitlines()[-1]})")
                continue
            if key == reference[entry.case_id]:
                readable.append((entry.case_id, file))
                report.geometry.setdefault(site, Counter())[shape] += 1
        subject = entry.clinical.get("subject_id")
        if subject is not None:
            subjects[str(subject)].add(str(entry.clinical.get("dataset") or "(no dataset)"))
            timepoints[(str(subject), str(entry.clinical.get("dataset")))].add(str(entry.clinical.get("timepoint")))
        days, event = _number(entry.clinical.get("os_days")), entry.clinical.get("os_event")
        if days is not None and days < 0:
            report.errors.append(f"{entry.case_id}: os_days is negative ({days:g})")
        elif days is not None and days > MAX_SURVIVAL_DAYS:
            report.errors.append(f"{entry.case_id}: os_days {days:g} is beyond 30 years")
        if event not in (None, 0, 1):
            report.errors.append(f"{entry.case_id}: os_event must be 0 (censored) or 1 (event), got {event!r}")
        elif event is not None and days is None:
            report.errors.append(f"{entry.case_id}: os_event {event} without os_days")
    if hashes:
        where = {e.case_id: f"{e.case_id} ({e.clinical.get('dataset') or e.site or 'no dataset'})" for e in entries}
        for group in identical_scans(readable, progress):
            report.warnings.append(f"cases {', '.join(where[c] for c in group)} hold identical "
                                   f"{sequence_names(reference[c] for c in group)} voxels: one scan under several "
                                   "names; keep one (`neuroradfm cohort merge` drops copies)")
    for subject, datasets in sorted(subjects.items()):
        if len(datasets) > 1:
            report.warnings.append(f"subject {subject} is in several datasets ({', '.join(sorted(datasets))}): "
                                   "keep one, or splits will leak")
    for (subject, dataset), seen in sorted(timepoints.items()):
        if len(seen) > 1:
            report.warnings.append(f"subject {subject} ({dataset}) has {len(seen)} timepoints "
                                   f"({', '.join(sorted(seen))}): follow-ups of one patient, grouped by subject_id")
    for marker in MARKER_KEYS:
        per_site: dict[str, list[int]] = {}
        for entry in entries:
            counts = per_site.setdefault(entry.site or "(no site)", [0, 0, 0])
            value = entry.clinical.get(marker)
            counts[0 if value == 1 else 1 if value == 0 else 2] += 1
        if any(c[0] + c[1] for c in per_site.values()):
            report.labels[marker] = {site: tuple(c) for site, c in per_site.items()}
    incomplete = [e for e in entries if missing_sequences(e.paths)]
    if incomplete:
        lacking = ", ".join(f"{k}: {n}" for k in SEQUENCES if (n := sum(k not in e.paths for e in incomplete)))
        report.warnings.append(f"{len(incomplete)} case(s) lack a sequence ({lacking}; e.g. "
                               f"{incomplete[0].case_id}): kept, the trainers use them only with --sequence-dropout")
    return report
