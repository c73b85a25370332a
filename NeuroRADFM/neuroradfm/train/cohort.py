"""A cohort in memory: every case of a manifest preprocessed onto the model grid.

Batch rule: a case that fails (for any reason) is reported and left out; the others go on.
Preprocessing (N4, registration, deepbet) dominates training time on CPU, so a cache folder keeps
each case's model-grid arrays as .npy files, keyed by the preprocessing settings and the files'
path, size and modification time: a changed file or setting is preprocessed again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuroradfm import SEQUENCES
from neuroradfm.atomic import atomic_file
from neuroradfm.errors import InputError, describe_failure
from neuroradfm.hashing import file_sha256
from neuroradfm.io import CaseEntry
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.preprocess import PreprocessSettings, preprocess_case
from neuroradfm.progress import Progress, null_progress
from neuroradfm.subsets import Subset


def file_hash(path: Path) -> str:
    """A manifest's content hash for the card's provenance, so a rerun can tell it was given the same cohort."""
    return "sha256:" + file_sha256(path)


def describe_failures(failures: dict[str, str], shown: int = 3) -> str:
    """``", K failed to load: id: reason; ..."`` (the first ``shown`` of them), or "" when none failed."""
    if not failures:
        return ""
    listed = "; ".join(f"{case_id}: {reason}" for case_id, reason in list(failures.items())[:shown])
    more = f"; and {len(failures) - shown} more" if len(failures) > shown else ""
    return f", {len(failures)} failed to load: {listed}{more}"


def require_cases(manifest: str | Path, needed: int, given: int, failures: dict[str, str], task: str,
                  why: str) -> None:
    """Refuse a cohort with fewer than ``needed`` usable cases, before training fails on it somewhere deep inside.

    ``given``: the manifest's cases; ``failures``: those that failed to load (none yet when checked before
    preprocessing, so the same check runs again after it); ``task`` and ``why`` say what needs the cases.
    """
    if given - len(failures) < needed:
        raise InputError(manifest, f"{task} needs at least {needed} usable cases ({given} given"
                                   f"{describe_failures(failures)}): {why}")


@dataclass
class PreparedCohort:
    case_ids: list[str]
    sites: list[str]
    inputs: np.ndarray
    """(N, 4, K, J, I) float16 model inputs."""
    labels: np.ndarray
    """(N, M) marker labels in MARKER_KEYS order, NaN where unknown."""
    os_days: np.ndarray
    os_event: np.ndarray
    tumour: np.ndarray | None = None
    """(N, K, J, I) uint8 tumour masks on the model grid when every case has a seg, else None."""
    failures: dict[str, str] = field(default_factory=dict)
    subjects: list[str] = field(default_factory=list)
    """The patient of each case (CaseEntry.subject): the case id when the manifest has no subject_id."""

    def subset(self, index: np.ndarray) -> PreparedCohort:
        return PreparedCohort([self.case_ids[i] for i in index], [self.sites[i] for i in index], self.inputs[index],
                              self.labels[index], self.os_days[index], self.os_event[index],
                              None if self.tumour is None else self.tumour[index], dict(self.failures),
                              [self.subjects[i] for i in index] if self.subjects else [])


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _cache_stem(entry: CaseEntry, settings: PreprocessSettings, cache_dir: Path) -> Path | None:
    """``cache_dir/<case_id>-<key>``; None when a file cannot be stat-ed (the load will say why)."""
    digest = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode())
    try:
        for key, path in sorted(entry.paths.items()):
            stat = path.stat()
            digest.update(f"{key}={path.resolve()}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    except OSError:
        return None
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry.case_id)
    return cache_dir / f"{safe_id}-{digest.hexdigest()[:16]}"


def _prepare_case(entry: CaseEntry, settings: PreprocessSettings,
                  cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(4, K, J, I) float16 channels and the (K, J, I) uint8 tumour mask (None without a seg)."""
    stem = None if cache_dir is None else _cache_stem(entry, settings, cache_dir)
    channels_file = None if stem is None else stem.with_name(stem.name + ".channels.npy")
    tumour_file = None if stem is None else stem.with_name(stem.name + ".tumour.npy")
    if channels_file is not None and channels_file.is_file():
        tumour = np.load(tumour_file) if tumour_file.is_file() else None
        return np.load(channels_file), tumour
    case = entry.load()
    prepared = preprocess_case(case, settings)
    channels = prepared.channels.astype(np.float16)
    tumour = None if case.seg is None else (prepared.to_model_grid(case.seg) > 0).astype(np.uint8)
    if channels_file is not None:
        channels_file.parent.mkdir(parents=True, exist_ok=True)
        if tumour is not None:  # the tumour first: channels present means the entry is complete
            with atomic_file(tumour_file) as tmp:
                np.save(tmp, tumour)
        with atomic_file(channels_file) as tmp:
            np.save(tmp, channels)
    return channels, tumour


@dataclass
class CachedCohort:
    """Cases preprocessed into the cache folder, read lazily: ``channels(i)`` memory-maps one case's
    (4, K, J, I) float16 array, so a loader's workers share the page cache and nothing is held per process."""

    entries: list[CaseEntry]
    channels_files: list[Path]
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def case_ids(self) -> list[str]:
        return [e.case_id for e in self.entries]

    def channels(self, index: int) -> np.ndarray:
        return np.load(self.channels_files[index], mmap_mode="r")


def unusable(entry: CaseEntry, subsets: Sequence[Subset] | None) -> str | None:
    """Why a training whose encoder is trained for ``subsets`` (None: any) leaves ``entry`` out, or None."""
    have = tuple(s for s in SEQUENCES if s in entry.paths)
    if subsets is None or have in subsets:
        return None
    return (f"lacks {', '.join(s for s in SEQUENCES if s not in have)}: the encoder is trained for all four sequences "
            "only (train it with --sequence-dropout to use such cases)")


def cache_cohort(entries: list[CaseEntry], settings: PreprocessSettings, cache_dir: str | Path,
                 progress: Progress = null_progress, subsets: Sequence[Subset] | None = None) -> CachedCohort:
    """Every case preprocessed into ``cache_dir`` (the same files ``prepare_cohort`` reads and writes;
    cases already there are not touched), nothing kept in memory. A failing case, or one whose sequences are not
    among ``subsets``, is left out and reported."""
    cache = Path(cache_dir)
    kept, files, failures = [], [], {}
    for index, entry in enumerate(entries):
        progress("preprocess", index / len(entries), entry.case_id)
        if reason := unusable(entry, subsets):
            failures[entry.case_id] = reason
            continue
        stem = _cache_stem(entry, settings, cache)
        channels_file = None if stem is None else stem.with_name(stem.name + ".channels.npy")
        if channels_file is None or not channels_file.is_file():
            try:
                _prepare_case(entry, settings, cache)
            except Exception as error:  # noqa: BLE001 - any failure of one case leaves it out, the others go on
                failures[entry.case_id] = describe_failure(error)[1]
                progress("preprocess", (index + 1) / len(entries), f"{entry.case_id} FAILED: {failures[entry.case_id]}")
                continue
            stem = _cache_stem(entry, settings, cache)
            channels_file = None if stem is None else stem.with_name(stem.name + ".channels.npy")
            if channels_file is None or not channels_file.is_file():
                failures[entry.case_id] = "its files changed while it was being preprocessed"
                continue
        kept.append(entry)
        files.append(channels_file)
    progress("preprocess", 1.0, f"{len(kept)} cases ready, {len(failures)} failed")
    if not kept:
        raise InputError(None, "no case of the cohort could be prepared: " + "; ".join(failures.values()))
    return CachedCohort(kept, files, failures)


def prepare_cohort(entries: list[CaseEntry], settings: PreprocessSettings,
                   progress: Progress = null_progress, cache_dir: str | Path | None = None,
                   subsets: Sequence[Subset] | None = None) -> PreparedCohort:
    """Every case on the model grid; ``cache_dir`` keeps (and reuses) each case's arrays. Cases whose sequences
    are not among ``subsets`` are left out, as failures."""
    cache = None if cache_dir is None else Path(cache_dir)
    ids, sites, inputs, labels, days, events, tumours, failures, subjects = [], [], [], [], [], [], [], {}, []
    for index, entry in enumerate(entries):
        progress("preprocess", index / len(entries), entry.case_id)
        if reason := unusable(entry, subsets):
            failures[entry.case_id] = reason
            continue
        try:
            channels, tumour = _prepare_case(entry, settings, cache)
        except Exception as error:  # noqa: BLE001 - any failure of one case leaves it out, the others go on
            failures[entry.case_id] = describe_failure(error)[1]
            progress("preprocess", (index + 1) / len(entries), f"{entry.case_id} FAILED: {failures[entry.case_id]}")
            continue
        ids.append(entry.case_id)
        subjects.append(entry.subject)
        sites.append(str(entry.site))
        inputs.append(channels)
        tumours.append(tumour)
        labels.append([_number(entry.clinical.get(key)) for key in MARKER_KEYS])
        days.append(_number(entry.clinical.get("os_days")))
        events.append(_number(entry.clinical.get("os_event")))
    progress("preprocess", 1.0, f"{len(ids)} cases ready, {len(failures)} failed")
    if not ids:
        raise InputError(None, "no case of the cohort could be prepared: " + "; ".join(failures.values()))
    tumour = None if any(t is None for t in tumours) else np.stack(tumours)
    return PreparedCohort(ids, sites, np.stack(inputs), np.asarray(labels, np.float64),
                          np.asarray(days), np.asarray(events), tumour, failures, subjects)
