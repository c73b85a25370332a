"""``neuroradfm cohort merge``: several imported manifests -> one multi-site manifest, duplicates removed.

A case is a duplicate when another dataset already holds the same scan: the same ``subject_id`` in two datasets,
or a BraTS 2021 case that another dataset names in its ``brats21_id`` column (UCSF-PDGM's metadata does; the
BraTS 2021 copy is dropped, the source dataset with its clinical table kept). Every dropped case is listed.
"""

from __future__ import annotations

import csv
from pathlib import Path

from neuroradfm.atomic import atomic_file
from neuroradfm.errors import InputError, SettingsError
from neuroradfm.io.manifest import csv_records, read_manifest
from neuroradfm.output_paths import check_destinations


def merge_manifests(manifests: list[str | Path], out: str | Path) -> tuple[Path, dict[str, str]]:
    """Write the merged manifest ``out`` (image paths absolute); returns it and the dropped cases (case -> why)."""
    if len(manifests) < 2:
        raise SettingsError("manifests", "give two manifests or more to merge")
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise SettingsError("--out", f"the manifest is a .csv file, got {out}")
    check_destinations(files={"--out": out})
    tables = []
    for manifest in map(Path, manifests):
        entries = read_manifest(manifest)  # every check of a manifest, with its line numbers
        header, records = csv_records(manifest)
        if "dataset" not in header:
            raise InputError(manifest, "has no dataset column: merge manifests written by `neuroradfm cohort import`")
        for entry, (_, row) in zip(entries, records):
            row.update({k: str(p) for k, p in entry.paths.items()})  # absolute, wherever the manifest was
        tables.append((manifest, header, [row for _, row in records]))
    brats21_elsewhere = {row["brats21_id"]: row["dataset"] for _, header, rows in tables if "brats21_id" in header
                         for row in rows if row.get("brats21_id")}
    owner_of: dict[str, str] = {}  # subject -> the dataset that keeps it
    columns: list[str] = []
    merged, dropped, ids = [], {}, set()
    for manifest, header, rows in tables:
        columns += [c for c in header if c not in columns]
        for row in rows:
            case, dataset, subject = row["case_id"], row["dataset"], row.get("subject_id") or row["case_id"]
            if dataset == "brats2021" and subject in brats21_elsewhere:
                dropped[f"{dataset}:{case}"] = (f"the same scan as the {brats21_elsewhere[subject]} case with "
                                                f"brats21_id {subject}")
                continue
            owner = owner_of.setdefault(subject, dataset)
            if owner != dataset:
                dropped[f"{dataset}:{case}"] = f"subject {subject} is already in {owner}"
                continue
            unique = case if case not in ids else f"{dataset}-{case}"
            if unique in ids:
                raise InputError(manifest, f"case id {case} appears twice, also as {unique}")
            ids.add(unique)
            merged.append({**row, "case_id": unique})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(merged)
    return out, dropped
