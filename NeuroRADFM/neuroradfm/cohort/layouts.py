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


# BraTS2021_MappingToTCIA.xlsx (TCIA): one row per BraTS 2021 id with its source collection, institution and the
# patient's id in that collection (UPENN-GBM: the scan id; UCSF-PDGM: the bare number), and the Task 2 MGMT value.
MAPPING_ID, MAPPING_COLLECTION = "BraTS2021 ID", "Data Collection (as on TCIA+additional)"
MAPPING_SITE, MAPPING_PATIENT, MAPPING_MGMT = "Site ID", "PatientID on TCIA Radiology Portal", "MGMT value"
NOT_IN_TCIA = {"", "none", "new-not-previously-in-tcia"}


def _source_subject(collection: str, patient: str) -> str | None:
    """The patient as the source dataset's own import names it, so that ``cohort merge`` sees the same subject."""
    if patient.lower() in NOT_IN_TCIA:
        return None
    if collection.startswith("UPENN-GBM") and UPENN_CASE.fullmatch(patient):
        return UPENN_CASE.fullmatch(patient).group(1)
    if collection.startswith("UCSF-PDGM") and patient.isdigit():
        return f"UCSF-PDGM-{int(patient):04d}"
    if collection.startswith("TCGA"):
        return patient  # the TCGA barcode: one patient in TCGA-GBM and TCGA-LGG is one subject
    return f"{collection}:{patient}"


def brats_mapping(table: Path, overrides: dict[str, dict] | None = None) -> tuple[Mapping, dict[str, dict]]:
    """BraTS2021_MappingToTCIA.xlsx -> per BraTS 2021 id: institution (site), source patient (subject), MGMT."""
    mapping, records = read_table(table, MAPPING_ID, (MAPPING_COLLECTION, MAPPING_SITE, MAPPING_PATIENT,
                                                      MAPPING_MGMT), overrides=overrides)
    rows = {}
    for line, row in records:
        number = re.fullmatch(r"(?:BraTS2021_)?(\d{1,5})", row[MAPPING_ID])
        if number is None:
            raise InputError(table, f"{mapping.line_word} {line}, column {MAPPING_ID!r}: {row[MAPPING_ID]!r} is not "
                                    "a BraTS 2021 id")
        site = mapping.number(line, row, MAPPING_SITE, "site (institution)", ("", "NA"))
        collection = row[MAPPING_COLLECTION]
        rows[f"BraTS2021_{int(number.group(1)):05d}"] = {
            "mgmt": mapping.value(line, row, MAPPING_MGMT, "mgmt", {"0": 0, "1": 1, "": None, "NA": None}),
            "site": None if site is None else f"brats21-site-{site:g}",
            "subject_id": _source_subject(collection, row[MAPPING_PATIENT]),
            "tcia_collection": collection or None, "tcia_patient_id": row[MAPPING_PATIENT] or None}
    return mapping, rows


def brats(root: Path, layout: str, clinical: Path | None = None,
          overrides: dict[str, dict] | None = None) -> LayoutResult:
    """BraTS 2021 (``BraTS2021_NNNNN``; the TCIA mapping sheet or TCIA's source level gives the site) or 2023+
    (``BraTS-TASK-NNNNN-TTT``: subject NNNNN, timepoint TTT) case folders anywhere under ``root``."""
    pattern = BRATS2021_CASE if layout == "brats2021" else BRATS2023_CASE
    mapping, table = brats_mapping(clinical, overrides) if clinical else (None, {})
    folders = case_folders(root, pattern)
    if not folders:
        example = "BraTS2021_00000/" if layout == "brats2021" else "BraTS-GLI-00000-000/"
        raise InputError(root, f"holds no {layout} case folder (like {example}) within {MAX_DEPTH} levels")
    cases, skipped = [], {}
    for folder in folders:
        try:
            paths = find_brats_files(folder)
        except InputError as error:  # no sequence at all, or one twice
            skipped[str(folder)] = error.problem
            continue
        row: dict[str, object] = {}
        if layout == "brats2021":
            source = folder.parent.name
            row = {"brats21_id": folder.name, **table.get(folder.name, {})}
            subject, timepoint = row.pop("subject_id", None) or folder.name, "000"
            site = row.pop("site", None) or (source if source in BRATS2021_SOURCES else "brats2021")
        else:
            match = pattern.fullmatch(folder.name)
            subject, timepoint = f"BraTS-{match.group(1)}-{match.group(2)}", match.group(3)
            site = f"brats-{match.group(1).lower()}"
        cases.append(ImportedCase(folder.name, subject, timepoint, site, layout, paths, row))
    conventions = {"seg_labels": SEG_LABELS[layout], "sequences": {s: f"{s} of the BraTS naming" for s in SEQUENCES}}
    if mapping is not None:
        conventions["clinical"] = {"table": mapping.table, "columns": mapping.used,
                                   "subject_id": "the source collection's patient (UPENN-GBM-NNNNN, "
                                                 "UCSF-PDGM-NNNN, the TCGA barcode, collection:id), else the case",
                                   "rows_without_images": sorted(set(table) - {c.case_id for c in cases})}
    return LayoutResult(cases, skipped, conventions)


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


def named_images(folder: Path, stems: dict[str, str], seg: str | None, skipped: dict[str, str]
                 ) -> dict[str, Path] | None:
    """The sequences named ``stems`` that ``folder`` holds (any non-empty subset: the importer lists the missing
    ones) and the segmentation ``seg`` when it is there; None, the folder listed in ``skipped``, when it holds none."""
    found = {key: _image(folder, stem) for key, stem in stems.items()}
    paths = {key: path for key, path in found.items() if path is not None}
    if not paths:
        skipped[str(folder)] = f"no sequence found (none of {', '.join(stems.values())} as .nii.gz or .nii)"
        return None
    mask = _image(folder, seg) if seg else None
    return {**paths, **({"seg": mask} if mask else {})}


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


UPENN_V2_SURVIVAL = ("Survival_Status", "Survival_Censor", "Survival_from_surgery_days_UPDATED")
UPENN_V1_SURVIVAL = "Survival_from_surgery_days"
"""v1.x tables: days without a status column; which times are deaths is not stated, so no event is invented."""


def upenn_clinical(table: Path, overrides: dict[str, dict] | None = None) -> tuple[Mapping, dict[str, dict]]:
    """``UPENN-GBM_clinical_info_v2.1.csv`` (or v1.x): one row per scan ID -> markers, age, sex and survival."""
    mapping, records = read_table(table, "ID", ("IDH1", "MGMT"), overrides=overrides)
    header = set(records[0][1]) if records else set()
    version2 = set(UPENN_V2_SURVIVAL) <= header
    if not version2 and UPENN_V1_SURVIVAL not in header:
        raise InputError(table, f"clinical table lacks the survival columns of v2.1 ({', '.join(UPENN_V2_SURVIVAL)}) "
                                f"and of v1.x ({UPENN_V1_SURVIVAL})")
    rows = {}
    for line, row in records:
        if not version2:
            days = mapping.number(line, row, UPENN_V1_SURVIVAL, "os_days (v1.x: no status column, os_event empty)",
                                  ("", "Not Available"))
            event = None
        else:
            event = mapping.value(line, row, "Survival_Status", "os_event", UPENN_STATUS)
            days = None
        if event == 1:
            days = mapping.number(line, row, "Survival_from_surgery_days_UPDATED", "os_days (deaths)")
        elif event == 0:
            days = mapping.number(line, row, "Survival_Censor", "os_days (censored)")
        if days is None:
            event = None  # an event without a time cannot be used
        rows[row["ID"]] = {
            "idh1": mapping.value(line, row, "IDH1", "idh1", UPENN_IDH1),
            "mgmt": mapping.value(line, row, "MGMT", "mgmt", UPENN_MGMT),
            "age": mapping.number(line, row, "Age_at_scan_years", "age", ("", "Not Available")),
            "sex": row.get("Gender", "").strip() or None,
            "os_days": days, "os_event": event}
    return mapping, rows


def upenn_gbm(root: Path, clinical: Path | None = None, overrides: dict[str, dict] | None = None) -> LayoutResult:
    structural = _find_folder(root, "images_structural")
    if structural is None:
        raise InputError(root, "holds no images_structural/ folder (the UPENN-GBM NIfTI package's skull-stripped "
                               f"images) within {MAX_DEPTH} levels")
    package = structural.parent
    mapping, table = upenn_clinical(clinical, overrides) if clinical else (None, {})
    cases, skipped = [], {}
    for folder in case_folders(structural, UPENN_CASE):
        scan = folder.name
        paths = named_images(folder, {k: f"{scan}_{v}" for k, v in UPENN_SEQUENCES.items()}, None, skipped)
        if paths is None:
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


# UCSF-PDGM (TCIA v5): UCSF-PDGM-NNNN_nifti/UCSF-PDGM-NNNN_{T1,T1c,T2,FLAIR,tumor_segmentation}.nii.gz (4-digit id;
# follow-ups UCSF-PDGM-NNNN_FUxxxd); the metadata CSV writes the id with 3 digits (UCSF-PDGM-004).
UCSF_CASE = re.compile(r"(UCSF-PDGM-(\d{3,4}))(?:_(FU\d+d))?_nifti")
UCSF_SEQUENCES = {"t1": "T1", "t1ce": "T1c", "t2": "T2", "flair": "FLAIR"}
UCSF_MISSING = {"": None, "unknown": None, "indeterminate": None, "NA": None}
UCSF_MGMT = {"positive": 1, "negative": 0, **UCSF_MISSING}
UCSF_CODELETION = {"intact": 0, "co-deletion": 1, "relative co-deletion": None, **UCSF_MISSING}
"""A relative co-deletion is not a co-deletion call: missing, not positive."""
UCSF_EVENT = {"1": 1, "0": 0, "": None}
UCSF_IDH_MUTANT = re.compile(r"mutat|mutant|r132|r172|idh[12]", re.IGNORECASE)


def _ucsf_number(case_id: str) -> int:
    return int(re.search(r"\d+$", case_id.strip()).group())


def ucsf_clinical(table: Path, overrides: dict[str, dict] | None = None) -> tuple[Mapping, dict[int, dict]]:
    """``UCSF-PDGM-metadata_v5.csv``: one row per exam -> markers, age, sex, survival (keyed by the id's number)."""
    mapping, records = read_table(table, "ID", ("IDH", "MGMT status", "1p/19q", "OS", "1-dead 0-alive"),
                                  overrides=overrides)
    rows = {}
    for line, row in records:
        idh = mapping.named_mutation(line, row, "IDH", "idh1", "wildtype", UCSF_IDH_MUTANT, UCSF_MISSING)
        days = mapping.number(line, row, "OS", "os_days", ("", "NA", "unknown"))
        event = mapping.value(line, row, "1-dead 0-alive", "os_event", UCSF_EVENT)
        rows[_ucsf_number(row["ID"])] = {
            "idh1": idh, "mgmt": mapping.value(line, row, "MGMT status", "mgmt", UCSF_MGMT),
            "codel_1p19q": mapping.value(line, row, "1p/19q", "codel_1p19q", UCSF_CODELETION),
            "age": mapping.number(line, row, "Age at MRI", "age", ("", "NA")) if "Age at MRI" in row else None,
            "sex": row.get("Sex", "").strip() or None,
            "os_days": days if event is not None else None, "os_event": event if days is not None else None,
            "brats21_id": row.get("BraTS21 ID", "").strip() or None}
    return mapping, rows


def ucsf_pdgm(root: Path, clinical: Path | None = None, overrides: dict[str, dict] | None = None) -> LayoutResult:
    folders = case_folders(root, UCSF_CASE)
    if not folders:
        raise InputError(root, f"holds no UCSF-PDGM-NNNN_nifti/ case folder within {MAX_DEPTH} levels")
    mapping, table = ucsf_clinical(clinical, overrides) if clinical else (None, {})
    cases, skipped = [], {}
    for folder in folders:
        match = UCSF_CASE.fullmatch(folder.name)
        exam = folder.name[: -len("_nifti")]
        paths = named_images(folder, {k: f"{exam}_{v}" for k, v in UCSF_SEQUENCES.items()},
                             f"{exam}_tumor_segmentation", skipped)
        if paths is None:
            continue
        subject = f"UCSF-PDGM-{int(match.group(2)):04d}"
        row = dict(table.get(int(match.group(2)), {})) if match.group(3) is None else {}
        cases.append(ImportedCase(exam, subject, match.group(3) or "000", "ucsf-pdgm", "ucsf-pdgm", paths, row))
    cases.sort(key=lambda c: (c.subject_id, c.timepoint != "000", c.timepoint))  # each baseline before its follow-ups
    conventions = {"seg_labels": SEG_LABELS["brats2021"],
                   "sequences": {k: f"<ID>_{v}.nii.gz" for k, v in UCSF_SEQUENCES.items()},
                   "timepoints": {"000": "the exam of the metadata row", "FUxxxd": "follow-up (no clinical row)"}}
    if mapping is not None:
        conventions["clinical"] = {"table": mapping.table, "columns": mapping.used,
                                   "rows_without_images": sorted(f"UCSF-PDGM-{n:04d}" for n in
                                                                 set(table) - {_ucsf_number(c.subject_id)
                                                                               for c in cases})}
    return LayoutResult(cases, skipped, conventions)


# LUMIERE (figshare): Imaging/Patient-NNN/week-WWW[-k]/ with T1, CT1 (post-contrast), T2, FLAIR in native space;
# HD-GLIO-AUTO-segmentation/registered/ holds the same four skull-stripped and registered plus segmentation.nii.gz
# (1 non-enhancing T2/FLAIR abnormality, 2 enhancing): used unless the week folder holds more sequences, so images
# and mask share one space.
LUMIERE_SESSION = re.compile(r"week-(\d{3})(?:-(\d+))?")
LUMIERE_SEQUENCES = {"t1": "T1", "t1ce": "CT1", "t2": "T2", "flair": "FLAIR"}
LUMIERE_MISSING = {"": None, "na": None}
LUMIERE_MGMT = {"methylated": 1, "not methylated": 0, **LUMIERE_MISSING}
LUMIERE_IDH_MUTANT = re.compile(r"mut", re.IGNORECASE)
DAYS_PER_WEEK = 7


def lumiere_clinical(table: Path, overrides: dict[str, dict] | None = None) -> tuple[Mapping, dict[str, dict]]:
    """``LUMIERE-Demographics_Pathology.csv``: survival in WEEKS (x 7 -> days); no censoring column is known, so
    ``os_event`` stays empty (a Cox model cannot use these times until it is known who died)."""
    mapping, records = read_table(table, "Patient", ("Survival time (weeks)", "IDH (WT: wild type)",
                                                     "MGMT qualitative"), overrides=overrides)
    rows = {}
    for line, row in records:
        idh = mapping.named_mutation(line, row, "IDH (WT: wild type)", "idh1", "WT", LUMIERE_IDH_MUTANT,
                                     LUMIERE_MISSING)
        weeks = mapping.number(line, row, "Survival time (weeks)", "os_days (weeks x 7)", ("", "na"))
        rows[row["Patient"].strip()] = {
            "idh1": idh, "mgmt": mapping.value(line, row, "MGMT qualitative", "mgmt", LUMIERE_MGMT),
            "age": (mapping.number(line, row, "Age at surgery (years)", "age", ("", "na"))
                    if "Age at surgery (years)" in row else None),
            "sex": row.get("Sex", "").strip() or None,
            "os_days": None if weeks is None else weeks * DAYS_PER_WEEK, "os_event": None}
    return mapping, rows


def _sequence_count(paths: dict[str, Path] | None) -> int:
    return len(set(paths or {}) & set(SEQUENCES))


def _lumiere_images(session: Path, registered: Path, skipped: dict[str, str]) -> dict[str, Path] | None:
    """The registered set (skull-stripped, one space with its segmentation) unless the native week folder holds
    more sequences; None, the session listed in ``skipped``, when neither holds any."""
    chosen = named_images(registered, {k: f"{v}_r2s_bet_reg" for k, v in LUMIERE_SEQUENCES.items()},
                          "segmentation", {})
    native = named_images(session, LUMIERE_SEQUENCES, None, {})
    if _sequence_count(native) > _sequence_count(chosen):
        chosen = native
    if chosen is None:
        skipped[str(session)] = (f"no sequence found (none of {', '.join(LUMIERE_SEQUENCES.values())} in the week "
                                 "folder or its HD-GLIO-AUTO-segmentation/registered/)")
    return chosen


def lumiere(root: Path, clinical: Path | None = None, overrides: dict[str, dict] | None = None) -> LayoutResult:
    patients = case_folders(root, re.compile(r"Patient-\d{3}"))
    if not patients:
        raise InputError(root, f"holds no Patient-NNN/ folder (LUMIERE Imaging) within {MAX_DEPTH} levels")
    mapping, table = lumiere_clinical(clinical, overrides) if clinical else (None, {})
    cases, skipped = [], {}
    for patient in patients:
        for session in sorted(p for p in patient.iterdir() if p.is_dir() and LUMIERE_SESSION.fullmatch(p.name)):
            registered = session / "HD-GLIO-AUTO-segmentation" / "registered"
            paths = _lumiere_images(session, registered, skipped)
            if paths is None:
                continue
            row = dict(table.get(patient.name, {}))
            cases.append(ImportedCase(f"{patient.name}_{session.name}", patient.name, session.name, "lumiere",
                                      "lumiere", paths, row))
    conventions = {"seg_labels": {"1": "non-enhancing T2/FLAIR abnormality (HD-GLIO)", "2": "enhancing (HD-GLIO)"},
                   "sequences": {k: f"{v}: HD-GLIO-AUTO-segmentation/registered/{v}_r2s_bet_reg (with segmentation) "
                                    f"unless the week folder holds more sequences, then {v}.nii.gz there (native "
                                    "space)"
                                 for k, v in LUMIERE_SEQUENCES.items()},
                   "timepoints": "week-WWW[-k]: weeks since the pre-operative study; -k: several studies that week",
                   "survival": "weeks x 7 = days; no censoring column: os_event empty"}
    if mapping is not None:
        conventions["clinical"] = {"table": mapping.table, "columns": mapping.used,
                                   "rows_without_images": sorted(set(table) - {c.subject_id for c in cases})}
    return LayoutResult(cases, skipped, conventions)
