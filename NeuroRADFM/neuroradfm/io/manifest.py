"""Cohort manifests: one CSV row per case (case_id, site, four image paths, optional seg and clinical columns)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError
from neuroradfm.io.case import Case
from neuroradfm.io.loader import load_case

REQUIRED = ("case_id", "site", *SEQUENCES)


@dataclass
class CaseEntry:
    case_id: str
    site: str | None
    paths: dict[str, Path]
    clinical: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Case:
        return load_case(self.paths, case_id=self.case_id, site=self.site, clinical=self.clinical)


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


def _separator(path: Path) -> str:
    """Comma, or the semicolon / tab that spreadsheet exports in some locales use."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline()
    return max((",", ";", "\t"), key=header.count)


def read_manifest(path: str | Path, check_files: bool = False) -> list[CaseEntry]:
    """Entries of a manifest CSV; image paths are relative to the manifest's folder unless absolute.

    Required columns: case_id, site, t1, t1ce, t2, flair; optional seg; every other column is
    clinical data. Missing image files surface when a case loads (one failing case does not stop a
    batch) unless ``check_files`` asks to list them all now.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    try:
        table = pd.read_csv(path, sep=_separator(path), dtype=str, keep_default_na=False, encoding="utf-8-sig",
                            skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(path, f"not a readable CSV manifest ({error})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(path, f"manifest lacks required column(s) {', '.join(missing)}; "
                               f"required: {', '.join(REQUIRED)} (found: {', '.join(table.columns)})")
    table = table.apply(lambda column: column.str.strip())
    if table.empty:
        raise InputError(path, "manifest has no cases")
    duplicated = sorted(set(table["case_id"][table["case_id"].duplicated() & (table["case_id"] != "")]))
    if duplicated:
        raise InputError(path, f"duplicated case_id(s): {', '.join(duplicated)}")
    file_columns = [*SEQUENCES, *(["seg"] if "seg" in table.columns else [])]
    entries, absent = [], []
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        empty = [c for c in ("case_id", *SEQUENCES) if not row[c]]
        if empty:
            raise InputError(path, f"row {row_number}: empty {', '.join(empty)} (case_id and the four image paths "
                                   "are required)")
        paths = {c: path.parent / Path(row[c]).expanduser() for c in file_columns if row[c]}
        absent += [f"{row['case_id']} {c}: {p}" for c, p in paths.items() if check_files and not p.is_file()]
        clinical = {k: _value(v) for k, v in row.items() if k not in REQUIRED and k != "seg"}
        entries.append(CaseEntry(row["case_id"], row["site"] or None, paths, clinical))
    if absent:
        raise InputError(path, f"{len(absent)} image file(s) not found: " + "; ".join(absent))
    return entries
