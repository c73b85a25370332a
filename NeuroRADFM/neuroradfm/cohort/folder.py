"""``--layout folder``: any tree of case folders the case loader reads (BraTS-named files, or a DICOM study whose
series lie in folders of their own), with the user's clinical table and a ``--map`` file naming which of its
columns and values are ours. The same map file, given with a public layout, overrides that layout's mapping."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from neuroradfm.cohort.clinical import Mapping, read_table
from neuroradfm.cohort.layouts import ImportedCase, LayoutResult
from neuroradfm.errors import InputError
from neuroradfm.io.dicom import assign_series, find_series
from neuroradfm.io.images import is_image_file
from neuroradfm.io.loader import find_brats_files
from neuroradfm.markers import MARKER_KEYS

CODED = ("os_event", *MARKER_KEYS)
NUMBERS = ("os_days", "age")
TEXTS = ("site", "subject_id", "timepoint", "sex")
UNITS = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}
DEFAULT_VALUES = {"0": 0, "1": 1, "": None, "NA": None}
MISSING_NUMBERS = ("", "NA", "N/A", "unknown")


def read_map(path: Path, public_layout: bool = False) -> dict:
    """``{"key": their case-id column, "columns": {our column: {"source": their column, "values": {their value:
    0, 1 or null}, "unit": "days"|"weeks"|"months"|"years"}}}``, checked entry by entry."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "map file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"not a readable JSON map file ({error})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("columns", {}), dict) or set(spec) - {"key", "columns"}:
        raise InputError(path, 'a map file is {"key": "<their case id column>", "columns": {"<ours>": {...}}}')
    if public_layout and "key" in spec:
        raise InputError(path, '"key" is fixed by a public layout; give "columns" only')
    allowed = (*CODED, *NUMBERS, *TEXTS) if not public_layout else (*CODED, *NUMBERS)
    for ours, entry in spec.get("columns", {}).items():
        where = f'"columns" -> {ours!r}'
        if ours not in allowed:
            raise InputError(path, f"{where}: not one of our columns ({', '.join(allowed)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or \
                set(entry) - {"source", "values", "unit"}:
            raise InputError(path, f'{where}: expected {{"source": "<their column>", "values": {{...}}}}')
        values = entry.get("values")
        if values is not None and (ours not in CODED or not isinstance(values, dict)
                                   or any(v not in (0, 1, None) or isinstance(v, bool) for v in values.values())):
            raise InputError(path, f'{where}: "values" maps their values to 0, 1 or null, for '
                                   f"{', '.join(CODED)} only")
        if "unit" in entry and (ours != "os_days" or entry["unit"] not in UNITS or public_layout):
            raise InputError(path, f'{where}: "unit" is for os_days in the folder layout: {", ".join(UNITS)}')
    return spec


def _case_paths(folder: Path) -> dict[str, Path]:
    """BraTS-named image files, or the series of a DICOM study, each in a folder holding only it (any non-empty
    subset of the four sequences: the importer lists the missing ones)."""
    if any(is_image_file(p) for p in folder.iterdir()):
        return find_brats_files(folder)
    series = [s for s in find_series(folder) if not s.excluded]
    if not series:
        raise InputError(folder, "holds neither BraTS-named image files nor a DICOM series")
    assigned = assign_series(folder, series)
    per_folder = Counter(s.folder for s in series)
    shared = [f"{k}: {s.folder}" for k, s in assigned.items() if per_folder[s.folder] > 1]
    if shared:
        raise InputError(folder, "a manifest names each sequence by its folder, and these series share a folder "
                                 f"with others ({'; '.join(shared)}): give each series its own folder")
    return {k: s.folder for k, s in assigned.items()}


def folder_clinical(table: Path, spec: dict) -> tuple[Mapping, dict[str, dict]]:
    key = spec.get("key", "case_id")
    columns = dict(spec.get("columns", {}))
    mapping, records = read_table(table, key, tuple(e["source"] for e in columns.values()))
    if not columns:  # no map: the table already speaks our column names
        header = set(records[0][1]) if records else set()
        columns = {ours: {"source": ours} for ours in (*CODED, *NUMBERS, *TEXTS) if ours in header}
        if not columns:
            raise InputError(table, f"has none of our columns ({', '.join((*CODED, *NUMBERS, *TEXTS))}): give a "
                                    "--map file that names which of its columns are which")
    rows = {}
    for line, row in records:
        values: dict[str, object] = {}
        for ours, entry in columns.items():
            source = entry["source"]
            if ours in CODED:
                values[ours] = mapping.value(line, row, source, ours, entry.get("values", DEFAULT_VALUES))
            elif ours in NUMBERS:
                number = mapping.number(line, row, source, ours, MISSING_NUMBERS)
                unit = entry.get("unit", "days") if ours == "os_days" else None
                values[ours] = None if number is None else number * (UNITS[unit] if unit else 1.0)
                mapping.used[ours] = {"source": source, "values": "number", **({"unit": unit} if unit else {})}
            else:
                values[ours] = row.get(source) or None
                mapping.used[ours] = {"source": source, "values": "text"}
        if values.get("os_event") is not None and values.get("os_days") is None:
            values["os_event"] = None  # an event without a time cannot be used
        rows[row[key]] = values
    return mapping, rows


def generic_folder(root: Path, clinical: Path | None = None, spec: dict | None = None) -> LayoutResult:
    """Every folder directly under ``root`` is one case, named after its folder."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(root, "holds no case folder (the folder layout reads ROOT/<case>/)")
    mapping, table = folder_clinical(clinical, spec or {}) if clinical else (None, {})
    cases, skipped = [], {}
    for folder in folders:
        try:
            paths = _case_paths(folder)
        except InputError as error:
            skipped[str(folder)] = error.problem.splitlines()[0]
            continue
        row = dict(table.get(folder.name, {}))
        site = row.pop("site", None) or root.name
        subject = row.pop("subject_id", None) or folder.name
        timepoint = row.pop("timepoint", None) or "000"
        cases.append(ImportedCase(folder.name, str(subject), str(timepoint), str(site), root.name, paths, row))
    conventions = {"seg_labels": "as the files hold them (the folder layout does not know them)",
                   "sequences": "BraTS naming (*_t1/_t1ce/_t2/_flair[_seg], *-t1n/-t1c/-t2w/-t2f[-seg]) or a "
                                "DICOM study's series, assigned by their descriptions",
                   "dataset": f"the root folder's name ({root.name})"}
    if mapping is not None:
        conventions["clinical"] = {"table": mapping.table, "key": (spec or {}).get("key", "case_id"),
                                   "columns": mapping.used,
                                   "rows_without_images": sorted(set(table) - {c.case_id for c in cases})}
    return LayoutResult(cases, skipped, conventions)
