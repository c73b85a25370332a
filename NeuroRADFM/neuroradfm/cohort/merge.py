"""``neuroradfm cohort merge``: several imported manifests -> one multi-site manifest, duplicates removed.

A case is a duplicate when another dataset already holds its patient: the same ``subject_id`` or the same
``brats21_id`` (UCSF-PDGM's metadata names the BraTS 2021 copy of an exam; BraTS 2021 imported with the TCIA
mapping sheet names the source patient; the Kaggle MGMT cases are BraTS 2021 ids), or, with ``hashes``, a reference
image (the T1ce, else the first of T1, FLAIR, T2 the case has) with identical voxels. The source datasets are
merged first, so the BraTS copies are the ones dropped and the source with its clinical table is kept; otherwise the
first manifest given wins. Every dropped case is listed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from neuroradfm import SEQUENCES
from neuroradfm.atomic import atomic_file
from neuroradfm.cohort.duplicates import identical_scans, reference_image, sequence_names
from neuroradfm.cohort.importer import check_manifest_out, sidecar_path
from neuroradfm.errors import InputError, SettingsError
from neuroradfm.io.manifest import csv_records, read_manifest
from neuroradfm.output_paths import case_folders
from neuroradfm.progress import Progress, null_progress

REDISTRIBUTIONS = ("brats2021", "rsna-miccai-mgmt")
"""Datasets that re-distribute other collections' patients under BraTS ids: merged after the sources, in this
order (BraTS 2021's NIfTI are processed and segmented; the Kaggle DICOM are not)."""


def _rank(dataset: str) -> int:
    return REDISTRIBUTIONS.index(dataset) + 1 if dataset in REDISTRIBUTIONS else 0


def _drop_identical(merged: list[dict], dropped: dict[str, str], progress: Progress) -> list[dict]:
    """The rows left once every reference image with the voxels of a case kept from another dataset is dropped."""
    gone = set()
    references = [reference_image({k: Path(row[k]) for k in SEQUENCES if row.get(k)}) for row in merged]
    for group in identical_scans([(i, path) for i, (_, path) in enumerate(references)], progress):
        group.sort(key=lambda i: (_rank(merged[i]["dataset"]), i))  # a source's scan before its copies
        keep = merged[group[0]]
        for i in group[1:]:
            if merged[i]["dataset"] != keep["dataset"]:
                names = sequence_names((references[i][0], references[group[0]][0]))
                dropped[f"{merged[i]['dataset']}:{merged[i]['case_id']}"] = (
                    f"identical {names} voxels to the {keep['dataset']} case {keep['case_id']}")
                gone.add(i)
    return [row for i, row in enumerate(merged) if i not in gone]


def merge_manifests(manifests: list[str | Path], out: str | Path, hashes: bool = True,
                    progress: Progress = null_progress) -> tuple[Path, dict[str, str]]:
    """Write the merged manifest ``out`` (image paths absolute); returns it and the dropped cases (case -> why)."""
    if len(manifests) < 2:
        raise SettingsError("manifests", "give two manifests or more to merge")
    out = Path(out)
    check_manifest_out(out, "merge", {f"manifest {n}": Path(m) for n, m in enumerate(manifests, start=1)})
    tables = []
    for manifest in map(Path, manifests):
        entries = read_manifest(manifest)  # every check of a manifest, with its line numbers
        header, records = csv_records(manifest)
        if "dataset" not in header:
            raise InputError(manifest, "has no dataset column: merge manifests written by `neuroradfm cohort import`")
        for entry, (_, row) in zip(entries, records):
            row.update({k: str(p) for k, p in entry.paths.items()})  # absolute, wherever the manifest was
        datasets = {row["dataset"] for _, row in records}
        tables.append((manifest, header, [row for _, row in records], min(map(_rank, datasets), default=0)))
    tables.sort(key=lambda table: table[3])  # the source datasets first: they keep their patients
    where: dict[tuple[str, str], Path] = {}
    for manifest, _, rows, _ in tables:
        for row in rows:
            first = where.setdefault((row["dataset"], row["case_id"]), manifest)
            if first != manifest:
                raise InputError(manifest, f"{row['dataset']} case {row['case_id']} is in {first} and {manifest}: "
                                           "merge each import once")
    owner_of: dict[str, tuple[str, str]] = {}  # identity -> (dataset, case) that keeps it
    columns: list[str] = []
    kept, dropped, source = [], {}, {}
    for manifest, header, rows, _ in tables:
        columns += [c for c in header if c not in columns]
        for row in rows:
            case, dataset = row["case_id"], row["dataset"]
            identities = [row.get("subject_id") or case, *([row["brats21_id"]] if row.get("brats21_id") else [])]
            owners = [(name, owner_of[name]) for name in identities if owner_of.get(name, (dataset,))[0] != dataset]
            if owners:
                name, (owner, first) = owners[0]
                dropped[f"{dataset}:{case}"] = f"the patient {name} is already in {owner} (case {first})"
                continue
            for name in identities:
                owner_of.setdefault(name, (dataset, case))
            kept.append(row)
            source[id(row)] = manifest
    if hashes:
        kept = _drop_identical(kept, dropped, progress)
    merged, ids = [], set()
    for row in kept:
        case = row["case_id"]
        unique = case if case not in ids else f"{row['dataset']}-{case}"
        if unique in ids:
            raise InputError(source[id(row)], f"case id {case} appears twice, also as {unique}")
        ids.add(unique)
        merged.append({**row, "case_id": unique})
    case_folders([row["case_id"] for row in merged], source=out)  # the prefixed ids, too, give folders of their own
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"manifests": [str(Path(m).resolve()) for m in manifests], "voxel_hashes": hashes, "cases": len(merged),
              "dropped": dropped}
    with atomic_file(sidecar_path(out, "merge")) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    with atomic_file(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(merged)
    return out, dropped
