"""Predict one case or a whole cohort into an output folder.

Before any case is read: the bundle can predict, the device exists, every case id gives its own safe folder
name (neuroradfm.output_paths) and the output folder takes files. Each case then goes to OUT/<folder>/,
written whole or not at all, replacing only an earlier result (neuroradfm.atomic). Any exception in one case
is recorded and the others go on. For several cases OUT/predictions.csv gathers every case's rows,
OUT/failures.csv every failure (kind and message), and OUT/run.json says which run, bundle and device made
them (and whether it was interrupted); tables an earlier run left that this run does not write are removed, so
the folder describes one run.

Three ways through a cohort, one result: ``workers=0`` one case after another in this process; ``workers=N``
loading and preprocessing in N worker processes overlapped with the model here and the writing in a thread
(neuroradfm.cohort_pipeline); under torchrun (``shard``) each rank its share of the cases (neuroradfm.sharding),
rank 0 merging the tables. ``resume`` keeps a case whose folder already holds a complete result of the same bundle
and settings (``finished_result``) and only gathers its rows.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import pickle
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import neuroradfm
from neuroradfm.atomic import atomic_file, clean_stale
from neuroradfm.cohort_pipeline import CohortProgress, Failure, Job, Outcome, run_overlapped
from neuroradfm.errors import NeuroRADFMError, SettingsError
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
from neuroradfm.outputs import OVERVIEW, RESULT_MARKER, check_maps, map_files_written, write_outputs
from neuroradfm.predict import Prediction, inference_settings, predict_case
from neuroradfm.progress import Progress, null_progress

if TYPE_CHECKING:
    from neuroradfm.sharding import Shard


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


def _log_internal(out_dir: Path, case_id: str, trace: str) -> Path | None:
    """Append the traceback to OUT/neuroradfm-errors.log; None when even that cannot be written."""
    log = out_dir / ERRORS_LOG
    try:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"--- {_now()} case {case_id!r}, neuroradfm {neuroradfm.__version__}\n")
            handle.write(trace)
    except OSError:
        return None
    return log


def _record_failure(out_dir: Path, result: BatchResult, case_id: str, failure: Failure) -> str:
    """The case's failure into ``result`` (an internal error's traceback into the log); returns the message."""
    message = failure.message
    if failure.kind == "internal":
        result.log = _log_internal(out_dir, case_id, failure.trace or "") or result.log
        message += f" (traceback in {result.log or 'no log: it could not be written'})"
    result.failures[case_id], result.failure_kinds[case_id] = message, failure.kind
    return message


def predict_cases(cases: Sequence[tuple[str, Callable[[], Case]]], bundle: Bundle, out_dir: str | Path,
                  device: str = "auto", progress: Progress = null_progress, overview: bool = True,
                  keep_predictions: bool = False, cam_layer: str | None = None,
                  command: Sequence[str] | None = None, allow_missing: bool = False,
                  maps: str = "all", workers: int = 0, resume: bool = False,
                  shard: Shard | None = None, precision: str = "auto", batch_size: int = 1) -> BatchResult:
    """``cases`` are (case_id, loader) pairs, so that loading errors are isolated per case too; the case id
    names the result folder. ``cam_layer``, ``allow_missing`` and ``precision`` as in ``predict_case``; ``maps`` as in
    ``write_outputs`` (all, labels or none); ``command`` is recorded in run.json.

    ``workers``: 0 runs the cases one after another in this process; N > 0 prepares the next cases in N worker
    processes while this one runs the model and a thread writes (neuroradfm.cohort_pipeline). The loaders must then
    pickle (a manifest entry's ``load``, a ``functools.partial`` of a module function); when one does not, the cases
    run one after another. A script that calls this with workers must guard its own code with ``if __name__ ==
    "__main__":`` (spawned workers import the main script); not from inside Slicer's application process, whose
    executable is not a Python (``PythonSlicer -m neuroradfm predict`` is).
    ``batch_size``: with workers, up to that many cases already prepared go through one forward pass together (on a
    GPU; neuroradfm.cohort_pipeline.run_overlapped); the numbers and maps are each case's alone to 1e-5.
    ``resume``: a case whose folder holds a complete result of this bundle and these settings is not computed again
    (``finished_result``); its rows still go into the tables and run.json lists it under ``skipped``.
    ``shard``: this rank's place under torchrun (neuroradfm.sharding.start_shard): rank 0 checks the folder, every
    rank predicts its share, rank 0 writes the merged tables; every rank returns the merged result.

    Problems that would fail every case (an encoder-only bundle, a device that is not there, unusable or
    colliding case ids, an output folder that is a file or not writable) raise before anything is written."""
    bundle.require_heads()
    check_maps(maps)
    resolved = resolve_device(device)
    ran_in = inference_settings(str(resolved), precision).precision
    if workers < 0:
        raise SettingsError("--workers", f"{workers}: give 0 (no worker processes) or a positive number")
    if batch_size < 1:
        raise SettingsError("--batch-size", f"{batch_size}: give 1 (one case per forward pass) or more")
    folders = case_folders([case_id for case_id, _ in cases])
    out_dir = Path(os.path.abspath(out_dir))  # "new/deeper/.." is "new": no folder is made only to be left
    cohort = len(cases) > 1 or shard is not None
    settings = {"cam_layer": cam_layer, "allow_missing": allow_missing, "maps": maps, "overview": overview,
                "precision": ran_in}
    result = BatchResult(run={"run_id": uuid.uuid4().hex, "started": _now(), "neuroradfm": neuroradfm.__version__,
                              "command": None if command is None else list(command),
                              "bundle": {"name": bundle.name, "path": str(bundle.path),
                                         "content_hash": bundle.card.get("content_hash")},
                              "device": str(resolved), **settings, "resume": resume})
    if shard is not None:
        result.run.update(ranks=shard.world_size, run_id=shard.broadcast(result.run["run_id"]))
    created: list[Path] = []
    if shard is None or shard.is_main:
        try:
            created = _prepare_out(out_dir, cohort)
            skipped = [case_id for case_id, _ in cases
                       if resume and finished_result(out_dir / folders[case_id], case_id, bundle, **settings)]
        except Exception as error:
            if shard is not None:  # the other ranks stop with the same error
                shard.broadcast(error if isinstance(error, NeuroRADFMError) else SettingsError("--out", str(error)))
            raise
        if shard is not None:
            _write_tables(out_dir, BatchResult(run={**result.run, "finished": None}))  # an earlier run's go
            shard.broadcast(skipped)
    else:
        skipped = shard.broadcast()
        if isinstance(skipped, BaseException):
            raise skipped
    result.run["skipped"] = skipped
    done = set(skipped)
    result.outputs.update((case_id, out_dir / folders[case_id]) for case_id in skipped)
    todo = [(case_id, load) for case_id, load in cases if case_id not in done]
    if shard is not None:
        todo = shard.share(todo)
    if skipped:
        progress("resume", 0.0, f"{len(skipped)} of {len(cases)} cases finished earlier with this bundle and these "
                                "settings: kept")
    try:
        _run_cases(todo, bundle, out_dir, folders, str(resolved), CohortProgress(progress, len(todo)), overview,
                   keep_predictions, cam_layer, result, allow_missing, maps, workers, precision, batch_size)
    except BaseException:  # Ctrl-C or a cancel: the tables say which cases were done, and that the run stopped
        if cohort and shard is None:
            result.run.update(interrupted=True)
            try:
                _finish(out_dir, cases, folders, result)
            except Exception:  # noqa: BLE001 - the interruption is what the user must see
                pass
        elif not cohort and not result.outputs and result.log is None:
            remove_created(created)
        raise  # under torchrun the other ranks are stopped too: their finished folders stay, for --resume
    if shard is not None:
        result = _merged(shard, result)
        if shard.is_main:
            _finish(out_dir, cases, folders, result)
    elif cohort:
        _finish(out_dir, cases, folders, result)
    elif not result.outputs and result.log is None:
        remove_created(created)  # a failed single case leaves no empty folder behind
    return result


def _prepare_out(out_dir: Path, cohort: bool) -> list[Path]:
    """The output folder made (the folders created returned) and checked, stale staging of killed runs removed."""
    created = prepare_output_folder(out_dir)
    if cohort:
        try:
            _check_cohort_files(out_dir)
        except SettingsError:
            remove_created(created)
            raise
    clean_stale(out_dir)
    return created


def finished_result(folder: Path, case_id: str, bundle: Bundle, cam_layer: str | None = None,
                    allow_missing: bool = False, maps: str = "all", overview: bool = True,
                    precision: str = "float32") -> bool:
    """Whether ``folder`` holds a complete result (neuroradfm.atomic puts only whole ones in place) of ``case_id`` that
    this run would write again: made by the same bundle (its content hash), at the same Grad-CAM layer and encoder
    precision (``Inference.precision``), with the same maps and overview, and without a sequence left out when
    ``allow_missing`` is off (with it on, a case whose sequences were all usable comes out the same). The inputs are
    trusted not to have changed."""
    try:
        if folder.is_symlink() or not folder.is_dir():  # a link may lead out of the output folder: not ours
            return False
        summary = json.loads((folder / RESULT_MARKER).read_text(encoding="utf-8"))
        written = summary.get("maps") or {"written": "all"}  # results from before --maps hold every map
        same = (summary["case_id"] == case_id and bundle.card.get("content_hash") is not None
                and summary["model"]["content_hash"] == bundle.card["content_hash"]
                and summary["cam"]["layer"] == (cam_layer or bundle.require_heads().cam_layer)
                and written["written"] == maps
                and summary.get("inference", {}).get("precision", "float32") == precision
                and (allow_missing or not any(step.endswith(" left out") for step in summary["preprocessing"])))
        files = [RESULT_MARKER, PREDICTIONS_TABLE, *map_files_written(list(summary["cam"]["peak_values"]), maps)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return (same and all((folder / name).is_file() for name in files)
            and (folder / OVERVIEW).is_file() == overview)


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
    order = {case_id: index for index, (case_id, _) in enumerate(cases)}
    for table in (result.outputs, result.failures, result.failure_kinds, result.predictions):
        ordered = sorted(table.items(), key=lambda item: order[item[0]])  # workers and ranks finish in any order
        table.clear()
        table.update(ordered)
    result.run.update(finished=_now(), cases=len(cases), succeeded=len(result.outputs), failed=len(result.failures),
                      folders={case_id: folders[case_id] for case_id, _ in cases})
    _write_tables(out_dir, result)


def _merged(shard: Shard, result: BatchResult) -> BatchResult:
    """Every rank's results gathered into one (on every rank; this rank keeps its own predictions)."""
    mine = {"outputs": {case_id: str(folder) for case_id, folder in result.outputs.items()},
            "failures": result.failures, "kinds": result.failure_kinds, "device": result.run["device"],
            "workers": result.run.get("workers", 0), "log": None if result.log is None else str(result.log)}
    merged = BatchResult(predictions=result.predictions, run=dict(result.run))
    parts = shard.gather(mine)
    for part in parts:
        merged.outputs.update((case_id, Path(folder)) for case_id, folder in part["outputs"].items())
        merged.failures.update(part["failures"])
        merged.failure_kinds.update(part["kinds"])
        merged.log = merged.log or (None if part["log"] is None else Path(part["log"]))
    merged.run.update(devices=[part["device"] for part in parts], workers=[part["workers"] for part in parts])
    return merged


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - any reason (a lambda, a local function, an open file) means no
        return False
    return True


def _run_cases(cases: Sequence[tuple[str, Callable[[], Case]]], bundle: Bundle, out_dir: Path, folders: dict[str, str],
               device: str, progress: CohortProgress, overview: bool, keep_predictions: bool, cam_layer: str | None,
               result: BatchResult, allow_missing: bool = False, maps: str = "all", workers: int = 0,
               precision: str = "auto", batch_size: int = 1) -> None:
    """Each case into ``result``: in worker processes overlapped with the model and the writing when ``workers``
    and the loaders allow it (neuroradfm.cohort_pipeline), else one after another here."""

    def record(outcome: Outcome) -> None:
        case_id = outcome.job.case_id
        if outcome.failure is not None:
            _record_failure(out_dir, result, case_id, outcome.failure)
            return
        result.outputs[case_id] = outcome.folder
        if keep_predictions and outcome.prediction is not None:
            result.predictions[case_id] = outcome.prediction

    workers = min(workers, len(cases))
    if workers > 0 and len(cases) > 1 and all(_pickles(load) for _, load in cases):
        result.run.update(workers=workers, batch_size=batch_size)

        def write(prediction: Prediction, folder: Path, inputs: Sequence[str]) -> Path:
            return write_outputs(prediction, inside(out_dir, folder), overview=overview, inputs=inputs, maps=maps)

        jobs = [Job(index, case_id, load, out_dir / folders[case_id]) for index, (case_id, load) in enumerate(cases)]
        run_overlapped(jobs, bundle, device, progress, workers, cam_layer, allow_missing, write, record, precision,
                       batch_size)
        return
    result.run["workers"] = 0
    for index, (case_id, load) in enumerate(cases):
        part = progress.case(index)
        job = Job(index, case_id, load, out_dir / folders[case_id])
        try:
            folder = inside(out_dir, job.folder)
            case = load()
            prediction = predict_case(case, bundle, device=device, progress=part, cam_layer=cam_layer,
                                      allow_missing=allow_missing, precision=precision)
            record(Outcome(job, folder=write_outputs(prediction, folder, overview=overview, inputs=case.inputs,
                                                     maps=maps), prediction=prediction))
        except Exception as error:  # noqa: BLE001 - one case's failure of any kind must not stop the others
            record(Outcome(job, failure=Failure.of(error)))
            part("failed", 1.0, f"{case_id}: {result.failures[case_id]}")


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
