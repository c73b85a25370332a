"""The cases of an evaluation: who they are (case, subject, site) and what is known of them (markers, continuous
expression values, survival, the survival subgroup), as aligned arrays; read from the manifest's clinical columns.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from neuroradfm.errors import SettingsError
from neuroradfm.io import CaseEntry
from neuroradfm.markers import MARKER_KEYS

Folds = list[tuple[np.ndarray, np.ndarray]]
"""Outer splits: (train indices, test indices) into the cases; test sets are disjoint."""


@dataclass
class EvalData:
    case_ids: list[str]
    subjects: list[str]
    """The subject of each case (one patient scanned at several timepoints); the case id when the manifest has no
    subject column."""
    sites: list[str]
    labels: dict[str, np.ndarray]
    """Marker key -> (N,) 0/1, NaN where unknown; only the markers whose column is in the manifest."""
    continuous: dict[str, np.ndarray]
    """Continuous targets (``ki67_index``, ``tp53_expression``) -> (N,) floats, NaN where unknown."""
    os_days: np.ndarray | None
    os_event: np.ndarray | None
    subgroup: np.ndarray
    """(N,) bool: the cases the survival analysis uses."""
    subgroup_label: str

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: Sequence[int]) -> EvalData:
        """The cases at ``index``, in that order."""
        index = np.asarray(index, int)

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        return EvalData([self.case_ids[i] for i in index], [self.subjects[i] for i in index],
                        [self.sites[i] for i in index], {k: v[index] for k, v in self.labels.items()},
                        {k: v[index] for k, v in self.continuous.items()}, pick(self.os_days), pick(self.os_event),
                        self.subgroup[index], self.subgroup_label)


CONTINUOUS = {"ki67_index": ("ki67_high", 20.0), "tp53_expression": ("tp53_expr_high", 10.0)}
"""Continuous columns (percent of stained nuclei) -> the marker binarised from them and its default cut-off."""
MISSPELLING_CUTOFF = 0.75


def _close_names(name: str, columns: Sequence[str]) -> list[str]:
    lowered = {c.lower().replace("-", "_").replace(" ", "_"): c for c in columns}
    found = difflib.get_close_matches(name, list(lowered), n=3, cutoff=MISSPELLING_CUTOFF)
    return [lowered[f] for f in found if lowered[f] != name]


def _values(cells: Sequence[Any], ids: Sequence[str]) -> str:
    """The distinct values found, with how many cases hold each and the first case ids: what a message shows."""
    counts = Counter(repr(c) if isinstance(c, str) else str(c) for c in cells)
    first = {}
    for cell, case_id in zip(cells, ids):
        first.setdefault(repr(cell) if isinstance(cell, str) else str(cell), case_id)
    return ", ".join(f"{value} ({n} case{'s' if n > 1 else ''}, e.g. {first[value]})"
                     for value, n in counts.most_common(5))


def _number(cell: Any) -> float:
    if cell is None:
        return float("nan")
    if isinstance(cell, bool):
        raise ValueError(cell)
    return float(cell)


def binary_column(name: str, cells: Sequence[Any], ids: Sequence[str]) -> tuple[np.ndarray, str | None]:
    """(N,) 0/1 with NaN for empty cells, or NaNs and why not: a value other than 0/1 is never guessed at ("pos",
    "unknown", 2): the column is reported with the values found."""
    out, bad, bad_ids = np.full(len(cells), np.nan), [], []
    for i, cell in enumerate(cells):
        try:
            value = _number(cell)
        except (TypeError, ValueError):
            value = -1.0
        if value in (0.0, 1.0) or np.isnan(value):
            out[i] = value
        else:
            bad.append(cell)
            bad_ids.append(ids[i])
    if bad:
        return np.full(len(cells), np.nan), (f"column {name!r} must hold 0 or 1 (empty when unknown); found "
                                             f"{_values(bad, bad_ids)}")
    return out, None


def number_column(name: str, cells: Sequence[Any], ids: Sequence[str], minimum: float | None = None,
                  what: str = "numbers") -> tuple[np.ndarray, str | None]:
    """(N,) floats with NaN for empty cells, or NaNs and why not (text, or below ``minimum``)."""
    out, bad, bad_ids = np.full(len(cells), np.nan), [], []
    for i, cell in enumerate(cells):
        try:
            value = _number(cell)
        except (TypeError, ValueError):
            value = float("nan")
            bad.append(cell)
            bad_ids.append(ids[i])
            continue
        if not np.isnan(value) and (not np.isfinite(value) or (minimum is not None and value < minimum)):
            bad.append(cell)
            bad_ids.append(ids[i])
        out[i] = value
    if bad:
        return np.full(len(cells), np.nan), f"column {name!r} must hold {what}; found {_values(bad, bad_ids)}"
    return out, None



def _default_subgroup(columns: dict[str, list[Any]], ids: list[str],
                      labels: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """IDH-wildtype glioblastoma when the columns say it (the paper's survival cohort), else every case."""
    n = len(ids)
    if "idh1" not in labels:
        return np.ones(n, bool), "all cases (no idh1 column)"
    mask, label = labels["idh1"] == 0, "IDH-wildtype (idh1 == 0)"
    for name in ("subtype", "histology", "diagnosis"):
        if name in columns:
            text = [str(c).lower() if c is not None else "" for c in columns[name]]
            mask &= np.array([("glioblastoma" in t) or t == "gbm" for t in text])
            label = f"IDH-wildtype glioblastoma (idh1 == 0 and {name} says glioblastoma)"
            break
    else:
        if "grade" in columns:
            grade = [str(c).strip().lower() for c in columns["grade"]]
            mask &= np.array([g in ("4", "iv", "4.0", "who 4", "grade 4") for g in grade])
            label = "IDH-wildtype glioblastoma (idh1 == 0 and grade 4)"
    return mask, label


def _query_subgroup(expression: str, columns: dict[str, list[Any]], n: int) -> np.ndarray:
    """``--subgroup`` as a pandas query over the manifest's clinical columns; a mistake names the option."""
    frame = pd.DataFrame({name: pd.Series(values, dtype=object).infer_objects() for name, values in columns.items()},
                         index=range(n))
    try:
        selected = frame.query(expression, engine="python")
    except Exception as error:  # noqa: BLE001 - any parse or name error is the user's expression
        raise SettingsError("--subgroup", f"cannot apply {expression!r} to the manifest's columns "
                                          f"({type(error).__name__}: {error}); columns: "
                                          f"{', '.join(sorted(columns))}") from None
    mask = np.zeros(n, bool)
    mask[selected.index.to_numpy(int)] = True
    return mask


def eval_data(entries: Sequence[CaseEntry], *, subgroup: str | None = None,
              cutoffs: dict[str, float] | None = None) -> tuple[EvalData, dict[str, str], list[str]]:
    """The evaluation's cases from manifest entries (clinical columns already merged in).

    Returns the data, the targets that cannot be evaluated at all with why (a marker column holding values other
    than 0/1, survival days that are negative or text, an event column that is not 0/1) and notes for the report
    (absent or misspelled columns, markers derived from continuous values). ``subgroup``: None for the default
    survival subgroup, "all" for every case, else a pandas query expression over the clinical columns.
    """
    ids = [e.case_id for e in entries]
    names = sorted({k for e in entries for k in e.clinical})
    columns = {name: [e.clinical.get(name) for e in entries] for name in names}
    cutoffs = {**{k: v[1] for k, v in CONTINUOUS.items()}, **(cutoffs or {})}
    problems: dict[str, str] = {}
    notes: list[str] = []
    continuous: dict[str, np.ndarray] = {}
    for name in CONTINUOUS:
        if name in columns:
            values, problem = number_column(name, columns[name], ids, minimum=0.0, what="non-negative numbers")
            if problem:
                problems[name] = problem
                continue
            continuous[name] = values
    labels: dict[str, np.ndarray] = {}
    for key in MARKER_KEYS:
        source = next((c for c, (m, _) in CONTINUOUS.items() if m == key and c in continuous), None)
        if source is not None:
            values = continuous[source]
            labels[key] = np.where(np.isnan(values), np.nan, (values >= cutoffs[source]).astype(float))
            notes.append(f"{key}: {source} >= {cutoffs[source]:g} (binarised from the continuous column"
                         + (f"; the {key} column is not used" if key in columns else "") + ")")
            continue
        if key not in columns:
            close = _close_names(key, names)
            if close:
                problems[key] = (f"no column {key!r} in the manifest; similar: {', '.join(close)} (rename it to "
                                 f"{key!r} to evaluate it)")
            continue
        values, problem = binary_column(key, columns[key], ids)
        if problem:
            problems[key] = problem
        else:
            labels[key] = values
    absent = [k for k in MARKER_KEYS if k not in labels and k not in problems]
    if absent:
        notes.append(f"markers without a column in the manifest (not evaluated): {', '.join(absent)}")
    os_days = os_event = None
    if "os_days" in columns or "os_event" in columns:
        days, day_problem = number_column("os_days", columns.get("os_days", [None] * len(ids)), ids, minimum=0.0,
                                          what="non-negative numbers of days")
        events, event_problem = binary_column("os_event", columns.get("os_event", [None] * len(ids)), ids)
        missing = [c for c in ("os_days", "os_event") if c not in columns]
        if missing:
            problems["survival"] = f"the manifest has no {missing[0]!r} column (survival needs os_days and os_event)"
        elif day_problem or event_problem:
            problems["survival"] = "; ".join(p for p in (day_problem, event_problem) if p)
        else:
            os_days, os_event = days, events
    else:
        close = _close_names("os_days", names) + _close_names("os_event", names)
        if close:
            problems["survival"] = f"no os_days/os_event columns; similar: {', '.join(close)}"
    if subgroup is None:
        mask, label = _default_subgroup(columns, ids, labels)
    elif subgroup.strip().lower() == "all":
        mask, label = np.ones(len(ids), bool), "all cases"
    else:
        mask, label = _query_subgroup(subgroup, columns, len(ids)), subgroup
    data = EvalData(ids, [e.subject for e in entries], [str(e.site) for e in entries], labels, continuous, os_days,
                    os_event, mask, label)
    return data, problems, notes
