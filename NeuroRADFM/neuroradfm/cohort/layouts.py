"""Finding the cases of a downloaded cohort: one function per layout, each returning ImportedCase rows.

A layout knows its folder and file naming, how a case id splits into subject and timepoint, where the site
comes from, and its segmentation label convention (recorded in the sidecar, never assumed elsewhere).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from neuroradfm import SEQUENCES
from neuroradfm.cohort.clinical import Mapping, read_table
from neuroradfm.errors import InputError
from neuroradfm.io.images import is_image_file
from neuroradfm.io.loader import find_brats_files

# TCIA's BraTS 2021 package puts each case under the collection it came from: that collection is the site.
BRATS2021_SOURCES = ("UPENN-GBM", "UCSF-PDGM", "TCGA-GBM", "TCGA-LGG", "CPTAC-GBM", "IvyGAP", "ACRIN-FMISO-Brain",
                     "new-not-previously-in-TCIA")
BRATS2021_CASE = re.compile(r"BraTS2021_(\d{5})")
BRATS2023_CASE = re.compile(r"BraTS-([A-Z]+(?:-[A-Z]+)?)-(\d{5})-(\d{3})")
SEG_LABELS = {
    "brats2021": {"1": "necrotic / non-enhancing core", "2": "edema", "4": "enhancing"},
    "brats2023": {"1": "necrotic / non-enhancing core", "2": "edema", "3": "enhancing",
                  "4": "resection cavity (2024 post-treatment)"},
}
MAX_DEPTH = 4
"""Case folders are looked for this many levels below the root (TCIA packagings nest them two or three deep)."""


@dataclass
class ImportedCase:
    case_id: str
    subject_id: str
    timepoint: str
    site: str
    dataset: str
    paths: dict[str, Path]
    clinical: dict[str, object] = field(default_factory=dict)


@dataclass
class LayoutResult:
    cases: list[ImportedCase]
    skipped: dict[str, str]
    """Case folders that could not be used: folder -> why (listed, not fatal)."""
    conventions: dict


def case_folders(root: Path, pattern: re.Pattern) -> list[Path]:
    """Folders under ``root`` whose whole name matches ``pattern`` (sorted, symbolic links not followed)."""
    found = []
    root_depth = len(root.parts)
    for folder, subfolders, _ in os.walk(root):
        here = Path(folder)
        if len(here.parts) - root_depth >= MAX_DEPTH:
            subfolders[:] = []
        matching = [name for name in subfolders if pattern.fullmatch(name)]
        found += [here / name for name in matching]
        subfolders[:] = sorted(name for name in subfolders if name not in matching)
    return sorted(found, key=lambda p: p.name)


def brats(root: Path, layout: str) -> LayoutResult:
    """BraTS 2021 (``BraTS2021_NNNNN``; TCIA's source level gives the site) or 2023+ (``BraTS-TASK-NNNNN-TTT``:
    subject NNNNN, timepoint TTT) case folders anywhere under ``root``."""
    pattern = BRATS2021_CASE if layout == "brats2021" else BRATS2023_CASE
    folders = case_folders(root, pattern)
    if not folders:
        example = "BraTS2021_00000/" if layout == "brats2021" else "BraTS-GLI-00000-000/"
        raise InputError(root, f"holds no {layout} case folder (like {example}) within {MAX_DEPTH} levels")
    cases, skipped = [], {}
    for folder in folders:
        try:
            paths = find_brats_files(folder)
        except InputError as error:
            skipped[str(folder)] = error.problem
            continue
        if layout == "brats2021":
            subject, timepoint = folder.name, "000"
            source = folder.parent.name
            site = source if source in BRATS2021_SOURCES else "brats2021"
        else:
            match = pattern.fullmatch(folder.name)
            subject, timepoint = f"BraTS-{match.group(1)}-{match.group(2)}", match.group(3)
            site = f"brats-{match.group(1).lower()}"
        cases.append(ImportedCase(folder.name, subject, timepoint, site, layout, paths))
    return LayoutResult(cases, skipped, {"seg_labels": SEG_LABELS[layout],
                                         "sequences": {s: f"{s} of the BraTS naming" for s in SEQUENCES}})


# UPENN-GBM (TCIA, NIfTI package): images_structural/<ID>/<ID>_{T1,T1GD,T2,FLAIR}.nii.gz; ID UPENN-GBM-NNNNN_11
# (pre-operative baseline) or _21 (follow-up); expert segmentations in images_segm/, automated ones in
# automated_segm/ (baselines only).
UPENN_CASE = re.compile(r"(UPENN-GBM-\d{5})_(\d{2})")
UPENN_SEQUENCES = {"t1": "T1", "t1ce": "T1GD", "t2": "T2", "flair": "FLAIR"}
UPENN_MISSING = {"": None, "Not Available": None, "Not Applicable": None, "Indeterminate": None, "NOS/NEC": None}
UPENN_IDH1 = {"Wildtype": 0, "Mutated": 1, **UPENN_MISSING}
UPENN_MGMT = {"Methylated": 1, "Unmethylated": 0, **UPENN_MISSING}
UPENN_STATUS = {"Deceased": 1, "Alive": 0, "Lost to Follow-up": 0, "Deceased - uncertain date of death": None,
                "": None, "Not Available": None}
"""Survival_Status -> os_event; the time is Survival_from_surgery_days_UPDATED for a death, Survival_Censor for
the censored, none for a death of uncertain date (that case gets no survival at all)."""


def _image(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.nii.gz", folder / f"{stem}.nii"):
        if candidate.is_file() and is_image_file(candidate):
            return candidate
    return None


def _find_folder(root: Path, name: str) -> Path | None:
    if root.name == name:
        return root
    for folder, subfolders, _ in os.walk(root):
        if name in subfolders:
            return Path(folder) / name
        if len(Path(folder).parts) - len(root.parts) >= MAX_DEPTH:
            subfolders[:] = []
        subfolders.sort()
    return None


def upenn_clinical(table: Path) -> tuple[Mapping, dict[str, dict]]:
    """``UPENN-GBM_clinical_info_v2.1.csv``: one row per scan ID -> markers, age, sex and survival."""
    mapping, records = read_table(table, "ID", ("IDH1", "MGMT", "Survival_Status", "Survival_Censor",
                                                "Survival_from_surgery_days_UPDATED"))
    rows = {}
    for line, row in records:
        event = mapping.value(line, row, "Survival_Status", "os_event", UPENN_STATUS)
        days = None
        if event == 1:
            days = mapping.number(line, row, "Survival_from_surgery_days_UPDATED", "os_days (deaths)")
        elif event == 0:
            days = mapping.number(line, row, "Survival_Censor", "os_days (censored)")
        if days is None:
            event = None  # an event without a time cannot be used
        rows[row["ID"].strip()] = {
            "idh1": mapping.value(line, row, "IDH1", "idh1", UPENN_IDH1),
            "mgmt": mapping.value(line, row, "MGMT", "mgmt", UPENN_MGMT),
            "age": mapping.number(line, row, "Age_at_scan_years", "age", ("", "Not Available")),
            "sex": row.get("Gender", "").strip() or None,
            "os_days": days, "os_event": event}
    return mapping, rows


def upenn_gbm(root: Path, clinical: Path | None = None) -> LayoutResult:
    structural = _find_folder(root, "images_structural")
    if structural is None:
        raise InputError(root, "holds no images_structural/ folder (the UPENN-GBM NIfTI package's skull-stripped "
                               f"images) within {MAX_DEPTH} levels")
    package = structural.parent
    mapping, table = upenn_clinical(clinical) if clinical else (None, {})
    cases, skipped = [], {}
    for folder in case_folders(structural, UPENN_CASE):
        scan = folder.name
        paths = {key: _image(folder, f"{scan}_{name}") for key, name in UPENN_SEQUENCES.items()}
        missing = [key for key, path in paths.items() if path is None]
        if missing:
            skipped[str(folder)] = f"missing sequence(s) {', '.join(missing)}"
            continue
        expert = _image(package / "images_segm", f"{scan}_segm")
        automated = _image(package / "automated_segm", f"{scan}_automated_approx_segm")
        seg = expert or automated
        if seg is not None:
            paths["seg"] = seg
        match = UPENN_CASE.fullmatch(scan)
        row = dict(table.get(scan, {}))
        row["seg_source"] = "expert" if expert else "automated" if automated else None
        cases.append(ImportedCase(scan, match.group(1), match.group(2), "upenn-gbm", "upenn-gbm", paths, row))
    conventions = {"seg_labels": SEG_LABELS["brats2021"],
                   "sequences": {k: f"<ID>_{v}.nii.gz in images_structural/" for k, v in UPENN_SEQUENCES.items()},
                   "timepoints": {"11": "pre-operative baseline", "21": "follow-up"}}
    if mapping is not None:
        conventions["clinical"] = {"table": mapping.table, "columns": mapping.used,
                                   "rows_without_images": sorted(set(table) - {c.case_id for c in cases})}
    return LayoutResult(cases, skipped, conventions)
