"""Cohort manifests: one CSV row per case (case_id, site, four image paths, optional seg and clinical columns)."""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError, not_a_file
from neuroradfm.io.case import Case
from neuroradfm.io.loader import load_case
from neuroradfm.output_paths import case_folders

REQUIRED = ("case_id", "site", *SEQUENCES)
SUBJECT_COLUMN = "subject_id"


@dataclass
class CaseEntry:
    case_id: str
    site: str | None
    paths: dict[str, Path]
    clinical: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Case:
        return load_case(self.paths, case_id=self.case_id, site=self.site, clinical=self.clinical)

    @property
    def subject(self) -> str:
        """The patient (``subject_id``; the case id when the manifest has none): a subject's scans stay together
        in every split."""
        value = self.clinical.get(SUBJECT_COLUMN)
        return self.case_id if value is None or str(value).strip() == "" else str(value)


_MISSING = {"", "na", "n/a", "nan", "none", "null"}


_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _value(text: str) -> Any:
    """A clinical cell: None when empty, int or float when it is a number, else the text."""
    text = text.strip()
    if text.lower() in _MISSING:
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    return text


def _separator(header: str) -> str:
    """Comma, or the semicolon / tab that spreadsheet exports in some locales use."""
    return max((",", ";", "\t"), key=header.count)


def csv_records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and (line, row) records, ``line`` as an editor shows it (header = line 1; a quoted cell may
    span lines; blank lines are skipped, not counted away)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(path, f"not a readable CSV manifest (not UTF-8 text: {error.reason} at byte "
                               f"{error.start})") from None
    except OSError as error:
        raise InputError(path, f"manifest cannot be read ({error.strerror or error})") from None
    if not text.strip():
        raise InputError(path, "not a readable CSV manifest (the file is empty)")
    first_line = next(line for line in text.splitlines() if line.strip())
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_separator(first_line), skipinitialspace=True,
                        strict=True)
    header: list[str] | None = None
    records: list[tuple[int, dict[str, str]]] = []
    line = 1
    try:
        for cells in reader:
            first, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            cells = [cell.strip() for cell in cells]
            if header is None:
                header = cells
                repeated = sorted({c for c in header if header.count(c) > 1})
                if repeated or "" in header:
                    raise InputError(path, f"line {first}: header has "
                                           + (f"repeated column(s) {', '.join(repeated)}" if repeated
                                              else "an empty column name"))
                continue
            if len(cells) > len(header):
                raise InputError(path, f"line {first}: {len(cells)} cells for {len(header)} columns (a separator "
                                       "inside a cell needs quotes)")
            records.append((first, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
    except csv.Error as error:
        hint = f" (a quote opened on line {line} is never closed)" if "end of data" in str(error) else ""
        raise InputError(path, f"line {reader.line_num}: not a readable CSV manifest ({error}){hint}") from None
    return header or [], records


def control_characters(text: str) -> bool:
    """Line breaks, NULs and other control characters: never part of a case id, a site or a path we accept."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def read_manifest(path: str | Path, check_files: bool = False) -> list[CaseEntry]:
    """Entries of a manifest CSV; image paths are relative to the manifest's folder unless absolute.

    Required columns: case_id, site, t1, t1ce, t2, flair; optional seg; every other column is clinical data. An
    image path is a file or a folder holding one DICOM series; a case may leave some sequences empty (any
    non-empty subset: the bundle says which subsets it takes). Messages point at lines as an editor numbers them
    (header = line 1). Case ids must be unique, also once made into folder names (neuroradfm.output_paths).
    Missing image files surface when a case loads (one failing case does not stop a batch) unless ``check_files``
    asks to list them all now.
    """
    path = Path(path)
    if not path.is_file():
        problem = not_a_file(path)
        raise InputError(path, "manifest not found" if problem == "file not found" else f"manifest {problem}")
    header, records = csv_records(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(path, f"manifest lacks required column(s) {', '.join(missing)}; "
                               f"required: {', '.join(REQUIRED)} (found: {', '.join(header)})")
    if not records:
        raise InputError(path, "manifest has no cases")
    lines: dict[str, list[int]] = {}
    for line, row in records:
        lines.setdefault(row["case_id"], []).append(line)
    duplicated = [f"{case_id} (lines {', '.join(map(str, found))})" for case_id, found in lines.items()
                  if case_id and len(found) > 1]
    if duplicated:
        raise InputError(path, f"duplicated case_id(s): {'; '.join(duplicated)}")
    file_columns = [*SEQUENCES, *(["seg"] if "seg" in header else [])]
    entries, absent = [], []
    for line, row in records:
        if not row["case_id"] or not any(row[c] for c in SEQUENCES):
            raise InputError(path, f"line {line}: empty {'case_id' if not row['case_id'] else 'image paths'} "
                                   "(a case needs its case_id and at least one of the four image paths)")
        control = [c for c in ("case_id", "site", *file_columns) if control_characters(row[c])]
        if control:
            raise InputError(path, f"line {line}: control characters in {', '.join(control)}")
        try:
            paths = {c: path.parent / Path(row[c]).expanduser() for c in file_columns if row[c]}
        except RuntimeError as error:  # "~someone/..." for a user this machine does not know
            raise InputError(path, f"line {line}: a path cannot be expanded ({error})") from None
        absent += [f"{row['case_id']} {c}: {p}" for c, p in paths.items()
                   if check_files and not (p.is_file() or p.is_dir())]
        clinical = {k: _value(v) for k, v in row.items() if k not in REQUIRED and k != "seg"}
        entries.append(CaseEntry(row["case_id"], row["site"] or None, paths, clinical))
    case_folders([e.case_id for e in entries], {case_id: f"line {found[0]}" for case_id, found in lines.items()},
                 source=path)
    if absent:
        raise InputError(path, f"{len(absent)} image file(s) not found: " + "; ".join(absent))
    return entries


def read_clinical(path: str | Path) -> dict[str, dict[str, Any]]:
    """A clinical table (CSV with a ``case_id`` column and any others) as case id -> {column: value}, its cells read
    as a manifest's clinical cells are (empty -> None, numbers -> int/float, else text)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"clinical table {not_a_file(path)}")
    header, records = csv_records(path)
    if "case_id" not in header:
        raise InputError(path, f"clinical table lacks a case_id column (found: {', '.join(header)})")
    table: dict[str, dict[str, Any]] = {}
    for line, row in records:
        case_id = row["case_id"]
        if not case_id:
            raise InputError(path, f"line {line}: empty case_id")
        if case_id in table:
            raise InputError(path, f"line {line}: case_id {case_id!r} appears twice")
        table[case_id] = {k: _value(v) for k, v in row.items() if k != "case_id"}
    if not table:
        raise InputError(path, "clinical table has no rows")
    return table
