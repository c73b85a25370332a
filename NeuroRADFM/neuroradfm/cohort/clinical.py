"""Clinical tables of the public cohorts -> our columns, value by value, every mapping written down.

A value outside a mapping is an error naming the file, the line and the column, never a silent None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from neuroradfm.errors import InputError
from neuroradfm.io.manifest import csv_records


@dataclass
class Mapping:
    """What became of each source column and value (the sidecar's ``clinical`` record)."""

    table: str
    used: dict[str, dict] = field(default_factory=dict)

    def value(self, line: int, row: dict[str, str], column: str, ours: str,
              values: dict[str, int | None]) -> int | None:
        """``row[column]`` mapped through ``values`` (matched without case or surrounding space)."""
        text = row.get(column, "").strip()
        lookup = {k.lower(): v for k, v in values.items()}
        if text.lower() not in lookup:
            raise InputError(self.table, f"line {line}, column {column!r}: value {text!r} is not one of "
                                         f"{', '.join(repr(k) for k in values)}")
        self.used.setdefault(ours, {"source": column, "values": dict(values)})
        return lookup[text.lower()]

    def named_mutation(self, line: int, row: dict[str, str], column: str, ours: str, wildtype: str,
                       mutant: re.Pattern, missing: dict[str, None]) -> int | None:
        """A marker written as its wild-type word (-> 0) or as the name of a mutation (``mutant`` -> 1), as the
        cohorts write IDH ("IDH1 p.R132H", "R132H mut"); anything else must be one of ``missing``."""
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
        text = row.get(column, "").strip()
        if text.lower() in {m.lower() for m in missing}:
            return None
        try:
            number = float(text)
        except ValueError:
            raise InputError(self.table, f"line {line}, column {column!r}: {text!r} is not a number") from None
        self.used.setdefault(ours, {"source": column, "values": "number"})
        return number


def read_table(path: Path, key: str, required: tuple[str, ...]) -> tuple[Mapping, list[tuple[int, dict[str, str]]]]:
    """The rows of a clinical CSV (header whitespace stripped), refused when ``key`` or a required column is missing."""
    if not path.is_file():
        raise InputError(path, "clinical table not found" if not path.exists() else "clinical table is not a file")
    header, records = csv_records(path)
    records = [(line, {k.strip(): v for k, v in row.items()}) for line, row in records]
    header = [h.strip() for h in header]
    missing = [c for c in (key, *required) if c not in header]
    if missing:
        raise InputError(path, f"clinical table lacks column(s) {', '.join(map(repr, missing))} "
                               f"(found: {', '.join(header)})")
    return Mapping(str(path)), records
