"""MU-Glioma-Post (TCIA, University of Missouri): post-treatment timepoints and the .xlsx clinical sheet, the one
public cohort with EGFR, ATRX, TP53, CDKN2A/B and TERT (DATASETS.md 4b; its codes are [T]: seen in third-party
code only, so a value outside them stops the import and a ``--map`` file says what it is)."""

from __future__ import annotations

import re
from pathlib import Path

from neuroradfm.cohort.clinical import Mapping, read_table
from neuroradfm.cohort.layouts import MAX_DEPTH, ImportedCase, LayoutResult, case_folders, named_images
from neuroradfm.errors import InputError

PATIENT = re.compile(r"PatientID_\d{4}")
TIMEPOINT = re.compile(r"Timepoint_(\d+)")
SEQUENCES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
SHEET = "MU Glioma Post"
MISSING = {"": None, "NA": None, "N/A": None, "unknown": None, "not tested": None, "not available": None}
CODED = {"0": 0, "1": 1, **MISSING}
"""Data-dictionary codes: 0 = negative (wild type, not amplified, intact), 1 = positive."""
MGMT = {**CODED, "2": None, "3": None, "4": None}
"""MGMT methylation: 0 unmethylated, 1 methylated, 2 indeterminate, 3 unable to determine, 4 unknown."""
MARKER_COLUMNS = {"idh1": "IDH1 mutation", "codel_1p19q": "1p/19q", "atrx": "ATRX mutation",
                  "tert": "TERT promoter mutation", "egfr": "EGFR amplification", "cdkn2ab": "CDKN2A/B deletion",
                  "tp53": "TP53 alteration"}
DEATH_COLUMN = "Number of days from Diagnosis to death (Days)"
MRI_DAY = re.compile(r"Number of Days from Diagnosis to .*MRI \(Timepoint_(\d+)\)", re.IGNORECASE)


def mu_clinical(table: Path, overrides: dict[str, dict] | None = None) -> tuple[Mapping, dict[str, dict]]:
    """Sheet ``MU Glioma Post``: one row per patient -> markers, age, sex and survival from diagnosis. A death has
    its day of death; a patient alive is censored at the last MRI day the sheet gives (the latest day known alive)."""
    mapping, records = read_table(table, "Patient_ID", ("MGMT methylation", "Overall Survival (Death)",
                                                        DEATH_COLUMN, *MARKER_COLUMNS.values()),
                                  sheet=SHEET if table.suffix.lower() != ".csv" else None, overrides=overrides)
    rows = {}
    for line, row in records:
        values = {ours: mapping.value(line, row, column, ours, CODED) for ours, column in MARKER_COLUMNS.items()}
        values["mgmt"] = mapping.value(line, row, "MGMT methylation", "mgmt", MGMT)
        event = mapping.value(line, row, "Overall Survival (Death)", "os_event", {"0": 0, "1": 1, "": None})
        days = None
        if event == 1:
            days = mapping.number(line, row, DEATH_COLUMN, "os_days (deaths)", tuple(MISSING))
        elif event == 0:
            scans = [mapping.number(line, row, column, "os_days (censored: last MRI day)", tuple(MISSING))
                     for column in row if MRI_DAY.fullmatch(column)]
            days = max((d for d in scans if d is not None), default=None)
        rows[row["Patient_ID"]] = {
            **values,
            "age": mapping.number(line, row, "Age at diagnosis", "age", tuple(MISSING))
            if "Age at diagnosis" in row else None,
            "sex": row.get("Sex at Birth") or None,
            "os_days": days, "os_event": event if days is not None else None}
    return mapping, rows


def mu_glioma_post(root: Path, clinical: Path | None = None,
                   overrides: dict[str, dict] | None = None) -> LayoutResult:
    patients = case_folders(root, PATIENT)
    if not patients:
        raise InputError(root, f"holds no PatientID_NNNN/ folder (MU-Glioma-Post) within {MAX_DEPTH} levels")
    mapping, table = mu_clinical(clinical, overrides) if clinical else (None, {})
    cases, skipped = [], {}
    for patient in patients:
        sessions = sorted((p for p in patient.iterdir() if p.is_dir() and TIMEPOINT.fullmatch(p.name)),
                          key=lambda p: int(TIMEPOINT.fullmatch(p.name).group(1)))
        first = True
        for session in sessions:
            stem = f"{patient.name}_{session.name}"
            paths = named_images(session, {k: f"{stem}_brain_{v}" for k, v in SEQUENCES.items()},
                                 f"{stem}_tumorMask", skipped)
            if paths is None:
                continue
            row = dict(table.get(patient.name, {})) if first else {}
            first = False
            timepoint = f"{int(TIMEPOINT.fullmatch(session.name).group(1)):03d}"
            cases.append(ImportedCase(stem, patient.name, timepoint, "mu-glioma-post", "mu-glioma-post", paths, row))
    conventions = {"seg_labels": {"1": "necrotic tumour core", "2": "infiltration and edema", "3": "enhancing",
                                  "4": "resection cavity"},
                   "sequences": {k: f"<PatientID>_<Timepoint>_brain_{v}.nii.gz" for k, v in SEQUENCES.items()},
                   "timepoints": "Timepoint_K -> K (post-treatment MRIs); the clinical row goes to the first "
                                 "timepoint on disk, later ones carry no labels",
                   "survival": "days from diagnosis; alive patients censored at their last MRI day"}
    if mapping is not None:
        conventions["clinical"] = {"table": mapping.table, "sheet": SHEET, "columns": mapping.used,
                                   "rows_without_images": sorted(set(table) - {c.subject_id for c in cases})}
    return LayoutResult(cases, skipped, conventions)
