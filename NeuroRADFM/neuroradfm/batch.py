"""Predict one case or a whole cohort into an output folder.

Before any case is read: the bundle can predict, the device exists, every case id gives its own safe folder
name (neuroradfm.output_paths) and the output folder takes files. Each case then goes to OUT/<folder>/,
written whole or not at all, replacing only an earlier result (neuroradfm.atomic). Any exception in one case
is recorded and the others go on. For several cases OUT/predictions.csv gathers every case's rows,
OUT/failures.csv every failure (kind and message), and OUT/run.json says which run, bundle and device made
them (and whether it was interrupted); tables an earlier run left that this run does not write are removed, so
the folder describes one run.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import neuroradfm
from neuroradfm.atomic import atomic_file, clean_stale
from neuroradfm.errors import SettingsError, describe_failure
from neuroradfm.io.case import Case
from neuroradfm.models.bundle import Bundle
from neuroradfm.models.encoder import resolve_device
from neuroradfm.output_paths import (
    COHORT_FILES,
    ERRORS_LOG,
    FAILURES_TABLE,
    PREDICTIONS_TABLE,
    RUN_FILE,
    case_folders,
    check_destinations,
    inside,
    prepare_output_folder,
    remove_created,
    safe_folder_name,
)
from neuroradfm.outputs import write_outputs
from neuroradfm.predict import Prediction, predict_case
from neuroradfm.progress import Progress, null_progress, sub_progress


@dataclass
class BatchResult:
    outputs: dict[str, Path] = field(default_factory=dict)
    """case id -> its result folder."""
    predictions: dict[str, Prediction] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    """case id -> message."""
    failure_kinds: dict[str, str] = field(default_factory=dict)
    """case id -> one of neuroradfm.errors.FAILURE_KINDS."""
    run: dict[str, Any] = field(default_factory=dict)
    """What OUT/run.json says of this run (written for several cases)."""
    log: Path | None = None
    """OUT/neuroradfm-errors.log when a case failed with an internal error."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _log_internal(out_dir: Path, case_id: str, error: BaseException) -> Path | None:
    """Append the traceback to OUT/neuroradfm-errors.log; None when even that cannot be written."""
    log = out_dir / ERRORS_LOG
    try:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"--- {_now()} case {case_id!r}, neuroradfm {neuroradfm.__version__}\n")
            handle.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    except OSError:
        return None
    return log


def predict_cases(cases: Sequence[tuple[str, Callable[[], Case]]], bundle: Bundle, out_dir: str | Path,
                  device: str = "auto", progress: Progress = null_progress, overview: bool = True,
                  keep_predictions: bool = False, cam_layer: str | None = None,
                  command: Sequence[str] | None = None, allow_missing: bool = False) -> BatchResult:
    """``cases`` are (case_id, loader) pairs, so that loading errors are isolated per case too; the case id
    names the result folder. ``cam_layer`` and ``allow_missing`` as in ``predict_case``; ``command`` is recorded in
    run.json.

    Problems that would fail every case (an encoder-only bundle, a device that is not there, unusable or
    colliding case ids, an output folder that is a file or not writable) raise before anything is written."""
    bundle.require_heads()
    resolved = resolve_device(device)
    folders = case_folders([case_id for case_id, _ in cases])
    out_dir = Path(os.path.abspath(out_dir))  # "new/deeper/.." is "new": no folder is made only to be left
    created = prepare_output_folder(out_dir)
    if len(cases) > 1:
        try:
            _check_cohort_files(out_dir)
        except SettingsError:
            remove_created(created)
            raise
    clean_stale(out_dir)
    result = BatchResult(run={"run_id": uuid.uuid4().hex, "started": _now(), "neuroradfm": neuroradfm.__version__,
                              "command": None if command is None else list(command),
                              "bundle": {"name": bundle.name, "path": str(bundle.path),
                                         "content_hash": bundle.card.get("content_hash")},
                              "device": str(resolved), "cam_layer": cam_layer})
    try:
        _run_cases(cases, bundle, out_dir, folders, str(resolved), progress, overview, keep_predictions, cam_layer,
                   result, allow_missing)
    except BaseException:  # Ctrl-C or a cancel: the tables say which cases were done, and that the run stopped
        if len(cases) > 1:
            result.run.update(interrupted=True)
            try:
                _finish(out_dir, cases, folders, result)
            except Exception:  # noqa: BLE001 - the interruption is what the user must see
                pass
        elif not result.outputs and result.log is None:
            remove_created(created)
        raise
    if len(cases) > 1:
        _finish(out_dir, cases, folders, result)
    elif not result.outputs and result.log is None:
        remove_created(created)  # a failed single case leaves no empty folder behind
    return result


def _check_cohort_files(out_dir: Path) -> None:
    """The batch's tables will replace (or remove) those of an earlier run: only tables an earlier run's run.json
    names are ours to replace; a user's own predictions.csv or failures.csv there is refused before any case."""
    check_destinations(files={f"--out ({name})": out_dir / name for name in COHORT_FILES})
    run_file = out_dir / RUN_FILE
    listed: set[str] = set()
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
            listed = {name for name, digest in run["tables"].items() if digest}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise SettingsError("--out", f"{run_file} is not a run.json of neuroradfm; not overwritten: move it or "
                                         "choose another output folder") from None
    for name in (PREDICTIONS_TABLE, FAILURES_TABLE):
        if os.path.lexists(out_dir / name) and name not in listed:
            raise SettingsError("--out", f"{out_dir / name} was not written by a neuroradfm run (no run.json there "
                                         "names it); not overwritten: move it or choose another output folder")


def _finish(out_dir: Path, cases: Sequence[tuple[str, Callable[[], Case]]], folders: dict[str, str],
            result: BatchResult) -> None:
    result.run.update(finished=_now(), cases=len(cases), succeeded=len(result.outputs), failed=len(result.failures),
                      folders={case_id: folders[case_id] for case_id, _ in cases})
    _write_tables(out_dir, result)


def _run_cases(cases: Sequence[tuple[str, Callable[[], Case]]], bundle: Bundle, out_dir: Path, folders: dict[str, str],
               device: str, progress: Progress, overview: bool, keep_predictions: bool, cam_layer: str | None,
               result: BatchResult, allow_missing: bool = False) -> None:
    for index, (case_id, load) in enumerate(cases):
        part = sub_progress(progress, index / len(cases), (index + 1) / len(cases))
        try:
            folder = inside(out_dir, out_dir / folders[case_id])
            case = load()
            prediction = predict_case(case, bundle, device=device, progress=part, cam_layer=cam_layer,
                                      allow_missing=allow_missing)
            result.outputs[case_id] = write_outputs(prediction, folder, overview=overview,
                                                    inputs=case.inputs)
        except Exception as error:  # noqa: BLE001 - one case's failure of any kind must not stop the others
            kind, message = describe_failure(error)
            if kind == "internal":
                result.log = _log_internal(out_dir, case_id, error) or result.log
                message += f" (traceback in {result.log or 'no log: it could not be written'})"
            result.failures[case_id], result.failure_kinds[case_id] = message, kind
            part("failed", 1.0, f"{case_id}: {message}")
            continue
        if keep_predictions:
            result.predictions[case_id] = prediction


def _csv_text(rows: list[list[str]]) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue()


def _write_text(path: Path, text: str) -> str:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_tables(out_dir: Path, result: BatchResult) -> None:
    """The run's tables; run.json goes first (removed) and last (written), naming the tables and their hashes."""
    (out_dir / RUN_FILE).unlink(missing_ok=True)
    tables: dict[str, str | None] = {}
    rows: list[list[str]] = []
    for case_dir in result.outputs.values():
        with open(case_dir / PREDICTIONS_TABLE, newline="", encoding="utf-8") as handle:
            case_rows = list(csv.reader(handle))
        rows.extend(case_rows if not rows else case_rows[1:])
    failures = [["case_id", "kind", "error"],
                *([case_id, result.failure_kinds[case_id], error] for case_id, error in result.failures.items())]
    for name, table in ((PREDICTIONS_TABLE, rows), (FAILURES_TABLE, failures if result.failures else [])):
        if table:
            tables[name] = _write_text(out_dir / name, _csv_text(table))
        else:
            (out_dir / name).unlink(missing_ok=True)
            tables[name] = None
    result.run["tables"] = tables
    _write_text(out_dir / RUN_FILE, json.dumps(result.run, indent=1) + "\n")


def result_folder(out_dir: str | Path, case_id: str) -> Path:
    """Where ``predict_cases`` puts the result of ``case_id`` (for readers such as the Slicer module)."""
    return Path(out_dir) / safe_folder_name(case_id)
