"""Cohort manifests: one CSV row per case (case_id, site, four image paths, optional seg and clinical columns)."""

from __future__ import annotations

import math
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
    site: str
    paths: dict[str, Path]
    clinical: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Case:
        return load_case(self.paths, case_id=self.case_id, site=self.site, clinical=self.clinical)


def _value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalar -> Python
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_manifest(path: str | Path, check_files: bool = False) -> list[CaseEntry]:
    """Entries of a manifest; paths are relative to the manifest's folder unless absolute."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    try:
        table = pd.read_csv(path, dtype={"case_id": str, "site": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(path, f"not a readable CSV manifest ({error})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(path, f"manifest lacks required column(s) {', '.join(missing)}; "
                               f"required: {', '.join(REQUIRED)}")
    if table.empty:
        raise InputError(path, "manifest has no cases")
    duplicated = sorted(set(table["case_id"][table["case_id"].duplicated()]))
    if duplicated:
        raise InputError(path, f"duplicated case_id(s): {', '.join(duplicated)}")
    file_columns = [*SEQUENCES, *(["seg"] if "seg" in table.columns else [])]
    entries, absent = [], []
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        if pd.isna(row["case_id"]) or any(pd.isna(row[c]) for c in SEQUENCES):
            raise InputError(path, f"row {row_number}: case_id and the four image paths are required")
        paths = {c: (path.parent / str(row[c])) for c in file_columns if not pd.isna(row[c])}
        absent += [f"{row['case_id']}: {p}" for p in paths.values() if check_files and not p.is_file()]
        clinical = {k: _value(v) for k, v in row.items() if k not in REQUIRED and k != "seg"}
        entries.append(CaseEntry(str(row["case_id"]), None if pd.isna(row["site"]) else str(row["site"]),
                                 paths, clinical))
    if absent:
        raise InputError(path, f"{len(absent)} image file(s) not found: " + "; ".join(absent))
    return entries
