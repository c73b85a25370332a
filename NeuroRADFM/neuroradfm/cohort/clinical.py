"""Clinical tables of the public cohorts -> our columns, value by value, every mapping written down.

A value outside a mapping is an error naming the file, the line and the column, never a silent None. A user's
``--map`` file (``overrides``) can point one of our columns at another source column or give it other values:
datasets change their coding between releases, and the fix belongs in a file the user can read, not in our code.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from neuroradfm.errors import InputError
from neuroradfm.io.manifest import csv_records

SPREADSHEETS = (".xlsx", ".xlsm")


@dataclass
class Mapping:
    """What became of each source column and value (the sidecar's ``clinical`` record)."""

    table: str
    used: dict[str, dict] = field(default_factory=dict)
    overrides: dict[str, dict] = field(default_factory=dict)
    """Our column -> {"source": their column, "values": {their value: 0/1/null}} from a ``--map`` file."""
    line_word: str = "line"
    """How the table's own viewer numbers its rows: "line" (a CSV in an editor) or "row" (a spreadsheet)."""

    def _source(self, column: str, ours: str) -> str:
        return self.overrides.get(ours, {}).get("source", column)

    def value(self, line: int, row: dict[str, str], column: str, ours: str,
              values: dict[str, int | None]) -> int | None:
        """``row[column]`` mapped through ``values`` (matched without case or surrounding space)."""
        column, values = self._source(column, ours), self.overrides.get(ours, {}).get("values", values)
        text = row.get(column, "").strip()
        lookup = {k.strip().lower(): v for k, v in values.items()}
        if text.lower() not in lookup:
            raise InputError(self.table, f"{self.line_word} {line}, column {column!r}: value {text!r} is not one of "
                                         f"{', '.join(repr(k) for k in values)} (a --map file can map it to {ours})")
        self.used.setdefault(ours, {"source": column, "values": dict(values)})
        return lookup[text.lower()]

    def named_mutation(self, line: int, row: dict[str, str], column: str, ours: str, wildtype: str,
                       mutant: re.Pattern, missing: dict[str, None]) -> int | None:
        """A marker written as its wild-type word (-> 0) or as the name of a mutation (``mutant`` -> 1), as the
        cohorts write IDH ("IDH1 p.R132H", "R132H mut"); anything else must be one of ``missing``."""
        if "values" in self.overrides.get(ours, {}):
            return self.value(line, row, column, ours, {})
        column = self._source(column, ours)
        self.used[ours] = {"source": column, "values": {wildtype: 0, f"text matching /{mutant.pattern}/": 1,
                                                        **missing}}
        text = row.get(column, "").strip()
        if text.lower() == wildtype.lower():
            return 0
        if mutant.search(text):
            return 1
        return self.value(line, row, column, ours, {wildtype: 0, **missing})

    def number(self, line: int, row: dict[str, str], column: str, ours: str,
               missing: tuple[str, ...] = ("",)) -> float | None:
        column = self._source(column, ours)
        text = row.get(column, "").strip()
        if text.lower() in {m.lower() for m in missing}:
            return None
        try:
            number = float(text)
        except ValueError:
            raise InputError(self.table, f"{self.line_word} {line}, column {column!r}: {text!r} is not a number") \
                from None
        self.used.setdefault(ours, {"source": column, "values": "number"})
        return number


def _cell(value: object) -> str:
    """A spreadsheet cell as the text a CSV export would hold (1.0 -> "1", a date -> ISO, empty -> "")."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value).strip()


def spreadsheet_records(path: Path, sheet: str | None = None) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and (row number, row) records of one sheet (the first unless named), as ``csv_records`` gives
    them for a CSV: row numbers as the spreadsheet shows them, empty rows skipped."""
    import openpyxl  # only the layouts whose tables are spreadsheets need it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise InputError(path, f"not a readable .xlsx spreadsheet ({str(error).strip() or type(error).__name__})") \
            from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise InputError(path, f"has no sheet {sheet!r} (sheets: {', '.join(book.sheetnames)})")
        rows = book[sheet] if sheet is not None else book.worksheets[0]
        header: list[str] | None = None
        records = []
        for number, cells in enumerate(rows.iter_rows(values_only=True), start=1):
            texts = [_cell(c) for c in cells]
            if not any(texts):
                continue
            if header is None:
                while texts and not texts[-1]:
                    texts.pop()
                header = texts
                repeated = sorted({c for c in header if c and header.count(c) > 1})
                if repeated:
                    raise InputError(path, f"row {number}: header has repeated column(s) {', '.join(repeated)}")
                continue
            records.append((number, {h: t for h, t in zip(header, texts) if h}))
    finally:
        book.close()
    return [h for h in header or [] if h], records


def read_table(path: Path, key: str, required: tuple[str, ...], sheet: str | None = None,
               overrides: dict[str, dict] | None = None) -> tuple[Mapping, list[tuple[int, dict[str, str]]]]:
    """The rows of a clinical CSV or spreadsheet (header whitespace stripped: exports leave trailing spaces),
    refused when ``key``, a required column or an override's source column is missing, or a key is repeated."""
    if not path.is_file():
        raise InputError(path, "clinical table not found" if not path.exists() else "clinical table is not a file")
    if path.suffix.lower() == ".xls":
        raise InputError(path, "an old-format .xls workbook: save it as .xlsx (or export the sheet as .csv)")
    spreadsheet = path.suffix.lower() in SPREADSHEETS
    header, records = spreadsheet_records(path, sheet) if spreadsheet else csv_records(path)
    word = "row" if spreadsheet else "line"
    records = [(line, {k.strip(): v.strip() for k, v in row.items()}) for line, row in records]
    header = [h.strip() for h in header]
    overrides = overrides or {}
    sources = [o["source"] for o in overrides.values() if "source" in o]
    missing = [c for c in dict.fromkeys((key, *required, *sources)) if c not in header]
    if missing:
        raise InputError(path, f"clinical table lacks column(s) {', '.join(map(repr, missing))} "
                               f"(found: {', '.join(header)})")
    lines: dict[str, list[int]] = {}
    for line, row in records:
        lines.setdefault(row.get(key, ""), []).append(line)
    if "" in lines:
        raise InputError(path, f"{word} {lines[''][0]}: empty {key!r} (every row needs its id)")
    repeated = {k: v for k, v in lines.items() if len(v) > 1}
    if repeated:
        raise InputError(path, f"column {key!r} repeats id(s) " + "; ".join(
            f"{k} ({word}s {', '.join(map(str, v))})" for k, v in list(repeated.items())[:5]))
    return Mapping(str(path), overrides=overrides, line_word=word), records
