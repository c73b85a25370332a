"""``neuroradfm cohort import``: a downloaded cohort -> the manifest the trainers, ``predict`` and ``evaluate`` read,
plus a sidecar JSON that writes down where every row and value came from."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from neuroradfm import SEQUENCES
from neuroradfm.atomic import atomic_file
from neuroradfm.cohort.folder import generic_folder, read_map
from neuroradfm.cohort.layouts import ImportedCase, LayoutResult, brats, lumiere, ucsf_pdgm, upenn_gbm
from neuroradfm.cohort.mu_glioma_post import mu_glioma_post
from neuroradfm.cohort.rsna_miccai import rsna_miccai_mgmt
from neuroradfm.errors import InputError, SettingsError
from neuroradfm.io.loader import missing_sequences
from neuroradfm.io.manifest import control_characters
from neuroradfm.output_paths import case_folders, check_destinations

Layout = Callable[[Path, "Path | None", dict], LayoutResult]
"""(root, clinical table or None, the --map file's content) -> the cases found."""
LAYOUTS: dict[str, Layout] = {
    "brats2021": lambda root, clinical, spec: brats(root, "brats2021", clinical, spec.get("columns")),
    "brats2023": lambda root, clinical, spec: brats(root, "brats2023"),
    "upenn-gbm": lambda root, clinical, spec: upenn_gbm(root, clinical, spec.get("columns")),
    "ucsf-pdgm": lambda root, clinical, spec: ucsf_pdgm(root, clinical, spec.get("columns")),
    "mu-glioma-post": lambda root, clinical, spec: mu_glioma_post(root, clinical, spec.get("columns")),
    "lumiere": lambda root, clinical, spec: lumiere(root, clinical, spec.get("columns")),
    "rsna-miccai-mgmt": lambda root, clinical, spec: rsna_miccai_mgmt(root, clinical, spec.get("columns")),
    "folder": generic_folder,
}
CLINICAL_TABLES = {"brats2021": "BraTS2021_MappingToTCIA.xlsx", "upenn-gbm": "UPENN-GBM_clinical_info_v2.1.csv",
                   "ucsf-pdgm": "UCSF-PDGM-metadata_v5.csv",
                   "mu-glioma-post": "MU-Glioma-Post_ClinicalData-July2025.xlsx",
                   "lumiere": "LUMIERE-Demographics_Pathology.csv", "rsna-miccai-mgmt": "train_labels.csv",
                   "folder": "your table (.csv or .xlsx) with a --map file, or one with our column names"}
COLUMNS = ("case_id", "subject_id", "timepoint", "site", "dataset", *SEQUENCES, "seg")


def sidecar_path(manifest: Path, kind: str = "import") -> Path:
    """``<stem>.import.json`` (written by import) or ``<stem>.merge.json`` (by merge) beside the manifest."""
    return manifest.with_name(f"{manifest.stem}.{kind}.json")


def check_manifest_out(out: Path, kind: str, inputs: dict[str, Path | None]) -> None:
    """Before any work: ``out`` is a .csv that replaces no input of the run and no file of the user's (an existing
    manifest is replaced only when its ``kind`` sidecar says this command wrote it)."""
    if out.suffix.lower() != ".csv":
        raise SettingsError("--out", f"the manifest is a .csv file, got {out}")
    check_destinations(files={"--out": out})
    for what, path in inputs.items():
        if path is not None and path.exists() and any(p.exists() and p.samefile(path)
                                                      for p in (out, sidecar_path(out, kind))):
            raise SettingsError("--out", f"{out} would replace an input of this run ({what} {path}); choose "
                                         "another file")
    if out.exists() and not sidecar_path(out, kind).is_file():
        raise SettingsError("--out", f"{out} exists and is not a manifest written by `neuroradfm cohort {kind}` "
                                     f"(no {sidecar_path(out, kind).name} beside it); not replaced")


def _folder_of(case: ImportedCase) -> Path:
    """The folder of the case's first present sequence (a case may lack any of them, T1 included)."""
    return next(case.paths[k] for k in SEQUENCES if k in case.paths).parent


def incomplete_cases(cases: list[ImportedCase]) -> dict[str, list[str]]:
    """Case id -> the sequences it lacks, for the cases that lack some (kept: the trainers use them only with
    ``--sequence-dropout``)."""
    return {c.case_id: missing_sequences(c.paths) for c in cases if missing_sequences(c.paths)}


def import_cohort(layout: str, root: str | Path, out: str | Path, clinical: str | Path | None = None,
                  mapping: str | Path | None = None) -> Path:
    """Find the cases of ``layout`` under ``root`` and write the manifest ``out`` (image paths absolute) and its
    sidecar; returns ``out``. ``clinical``: the layout's clinical table (CLINICAL_TABLES); ``mapping``: a JSON map
    file (cohort.folder.read_map) naming the table's columns and values for the folder layout, or overriding a
    public layout's. A case with some of the four sequences is kept, its missing ones left empty and listed in the
    sidecar's ``incomplete``; a folder with none is ``skipped``. Nothing is written when the root holds no case of
    the layout or a value cannot be mapped."""
    if layout not in LAYOUTS:
        raise SettingsError("--layout", f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if clinical is not None and layout not in CLINICAL_TABLES:
        raise SettingsError("--clinical", f"the {layout} layout has no clinical table mapping; layouts with one: "
                                          + ", ".join(f"{k} ({v})" for k, v in CLINICAL_TABLES.items()))
    if mapping is not None and clinical is None:
        raise SettingsError("--map", "a map file describes a clinical table: give the table with --clinical")
    spec = read_map(Path(mapping), public_layout=layout != "folder") if mapping is not None else {}
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise InputError(root, "cohort root is not a folder" if root.exists() else "cohort root not found")
    check_manifest_out(out, "import", {"--clinical": None if clinical is None else Path(clinical),
                                       "--map": None if mapping is None else Path(mapping)})
    result = LAYOUTS[layout](root.resolve(), None if clinical is None else Path(clinical), spec)
    if not result.cases:
        raise InputError(root, f"no usable {layout} case: " + "; ".join(f"{Path(k).name}: {v}"
                                                                         for k, v in result.skipped.items()))
    clinical_columns = sorted({k for case in result.cases for k in case.clinical})
    rows = [{"case_id": c.case_id, "subject_id": c.subject_id, "timepoint": c.timepoint, "site": c.site,
             "dataset": c.dataset, **{k: str(c.paths[k]) if k in c.paths else "" for k in (*SEQUENCES, "seg")},
             **{k: "" if c.clinical.get(k) is None else c.clinical[k] for k in clinical_columns}}
            for c in result.cases]
    seen: dict[str, Path] = {}
    for case in result.cases:
        if case.case_id in seen:
            raise InputError(root, f"case {case.case_id} is there twice: {seen[case.case_id]} and "
                                   f"{_folder_of(case)}; keep one packaging of the cohort under the root")
        seen[case.case_id] = _folder_of(case)
    unusable = [f"{c.case_id!r} ({_folder_of(c)})" for c in result.cases
                if any(map(control_characters, (c.case_id, c.site, *map(str, c.paths.values()))))]
    if unusable:
        raise InputError(root, "control characters (a line break, a tab...) in the id, site or file names of "
                               f"case(s) {', '.join(unusable)}: rename those folders or files")
    case_folders([c.case_id for c in result.cases], {c.case_id: str(_folder_of(c)) for c in result.cases},
                 source=root)  # ids the readers accept: each gives its own output folder
    if mapping is not None:
        result.conventions["map_file"] = str(Path(mapping).resolve())
    incomplete = incomplete_cases(result.cases)
    lacking = {k: n for k in SEQUENCES if (n := sum(k in missing for missing in incomplete.values()))}
    record = {"layout": layout, "root": str(root.resolve()), "cases": len(rows), "skipped": result.skipped,
              "incomplete_cases": len(incomplete), "cases_lacking": lacking, "incomplete": incomplete,
              **result.conventions}
    out.parent.mkdir(parents=True, exist_ok=True)  # every check passed: now the files
    with atomic_file(sidecar_path(out)) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    with atomic_file(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:  # the manifest last
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, *clinical_columns])
        writer.writeheader()
        writer.writerows(rows)
    return out
