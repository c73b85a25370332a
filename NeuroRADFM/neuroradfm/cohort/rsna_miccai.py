"""The RSNA-MICCAI Brain Tumor Radiogenomic Classification download (Kaggle; BraTS 2021 Task 2): one DICOM folder
per sequence, ``train/NNNNN/{FLAIR,T1w,T1wCE,T2w}/Image-K.dcm``, and ``train_labels.csv`` (BraTS21ID, MGMT_value).
The manifest points at the sequence folders (the case loader reads a folder holding one series)."""

from __future__ import annotations

import re
from pathlib import Path

from neuroradfm.cohort.clinical import Mapping, read_table
from neuroradfm.cohort.layouts import MAX_DEPTH, ImportedCase, LayoutResult, case_folders
from neuroradfm.errors import InputError

CASE = re.compile(r"\d{5}")
SEQUENCES = {"t1": "T1w", "t1ce": "T1wCE", "t2": "T2w", "flair": "FLAIR"}
PROBLEMATIC = {"00109", "00123", "00709"}
"""Cases the competition's hosts reported as broken (TorchIO's loader leaves them out)."""
DATASET = "rsna-miccai-mgmt"


def rsna_labels(table: Path, overrides: dict[str, dict] | None = None) -> tuple[Mapping, dict[str, dict]]:
    mapping, records = read_table(table, "BraTS21ID", ("MGMT_value",), overrides=overrides)
    rows = {}
    for line, row in records:
        if not row["BraTS21ID"].isdigit():
            raise InputError(table, f"line {line}, column 'BraTS21ID': {row['BraTS21ID']!r} is not a number")
        rows[f"{int(row['BraTS21ID']):05d}"] = {
            "mgmt": mapping.value(line, row, "MGMT_value", "mgmt", {"0": 0, "1": 1})}
    return mapping, rows


def rsna_miccai_mgmt(root: Path, clinical: Path | None = None,
                     overrides: dict[str, dict] | None = None) -> LayoutResult:
    folders = [f for f in case_folders(root, CASE) if any((f / name).is_dir() for name in SEQUENCES.values())]
    if not folders:
        raise InputError(root, f"holds no NNNNN/ case folder with FLAIR/, T1w/, T1wCE/, T2w/ DICOM folders within "
                               f"{MAX_DEPTH} levels (the Kaggle train/ or test/ folder)")
    mapping, table = rsna_labels(clinical, overrides) if clinical else (None, {})
    cases, skipped = [], {}
    for folder in folders:
        if folder.name in PROBLEMATIC:
            skipped[str(folder)] = "reported broken by the competition's hosts"
            continue
        paths = {k: folder / v for k, v in SEQUENCES.items()
                 if (folder / v).is_dir() and any(c.is_file() for c in (folder / v).iterdir())}
        if not paths:  # an absent or empty sequence folder is a missing sequence; the importer lists those
            skipped[str(folder)] = (f"no sequence found (no {', '.join(f'{v}/' for v in SEQUENCES.values())} "
                                    "folder holding DICOM files)")
            continue
        brats_id = f"BraTS2021_{folder.name}"
        row = {"brats21_id": brats_id, "kaggle_split": folder.parent.name, **table.get(folder.name, {})}
        cases.append(ImportedCase(f"rsna-{folder.name}", brats_id, "000", DATASET, DATASET, paths, row))
    conventions = {"seg_labels": {},
                   "sequences": {k: f"<id>/{v}/ (one DICOM series)" for k, v in SEQUENCES.items()},
                   "subject_id": "BraTS2021_<id>: the BraTS 2021 case of the same patient (merge drops the copy)",
                   "excluded": sorted(PROBLEMATIC)}
    if mapping is not None:
        conventions["clinical"] = {"table": mapping.table, "columns": mapping.used,
                                   "rows_without_images": sorted(set(table) - {c.subject_id[-5:] for c in cases})}
    return LayoutResult(cases, skipped, conventions)
