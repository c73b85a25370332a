"""The NeuroRADFMTrain module's evaluation: ``neuroradfm evaluate`` out of process, its report, a results table.

The core writes ``<out>/report/report.html`` with ``metrics.json`` beside it (the report and its CSV tables are
made from that file alone); this module starts and polls the run, says whether a report is there to open, and
turns ``metrics.json`` into one table node (one row per bundle and marker, plus overall survival) so that the
numbers are in the scene, not only in the browser.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from NeuroRADFMLib.process import CoreProcess, ProcessJob
from NeuroRADFMLib.training import REPORT_MISSING, TrainingError, resolve_manifest

SPLITS = {"kfold": "k-fold cross-validation (stratified by site, grouped by subject)",
          "site": "leave one site out",
          "column": "a split column of the manifest (train / test, or fold names)"}
"""``neuroradfm evaluate --split`` choices and their labels."""
REPORT_FOLDER = "report"
REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
TABLE_NAME = "NeuroRADFM evaluation"
TABLE_COLUMNS = ("bundle", "target", "AUC / c-index", "95% CI", "balanced accuracy", "n", "status")
NUMERIC_COLUMNS = {"AUC / c-index", "balanced accuracy", "n"}
REPORT_TIP = "open the evaluation report {} (in Slicer's web view, else the system browser)"
EVALUATE_TIP = "evaluate {} on the cohort: probes, Cox, site invariance{}; writes an HTML report"
CONTROLLED_OPTIONS = frozenset({"--manifest", "--model", "--out", "--split", "--folds", "--split-column", "--seed",
                                "--cache", "--device", "--progress"})
"""Options the settings set themselves; ``EvaluationSettings.options`` may not repeat them."""


class EvaluationError(RuntimeError):
    """An evaluation that cannot run or did not end well; the message names the file or option and the problem."""


@dataclass
class EvaluationSettings:
    cohort: Path
    """A manifest CSV, or a folder holding manifest.csv."""
    bundles: list[Path]
    """One bundle, or several to compare (the first is the reference of the comparison)."""
    out: Path
    split: str = "kfold"
    folds: int = 5
    """Folds of the k-fold split."""
    split_column: str = ""
    """The manifest column of the column split."""
    seed: int = 0
    device: str = "auto"
    cache: Path | None = None
    """None: the core's own (``<out>/cache``)."""
    options: tuple[str, ...] = field(default=())
    """Further ``neuroradfm evaluate`` options passed as given (e.g. ``--bootstrap 200``, ``--subgroup all``)."""


def evaluation_command(settings: EvaluationSettings) -> list[str]:
    """The arguments after the python executable (``-m neuroradfm evaluate ...``), checked first so that a bad
    request fails before any process starts."""
    try:
        manifest = resolve_manifest(settings.cohort)
    except TrainingError as error:
        raise EvaluationError(str(error)) from None
    bundles = [Path(b) for b in settings.bundles if str(b).strip()]
    if not bundles:
        raise EvaluationError("choose at least one model bundle to evaluate")
    if len({b.resolve() for b in bundles}) < len(bundles):
        raise EvaluationError(f"the same bundle twice: {', '.join(map(str, bundles))}")
    if settings.split not in SPLITS:
        raise EvaluationError(f"split {settings.split!r}: use one of {', '.join(SPLITS)}")
    if settings.split == "kfold" and settings.folds < 2:
        raise EvaluationError(f"folds: {settings.folds} (at least 2)")
    if settings.split == "column" and not settings.split_column.strip():
        raise EvaluationError("a column split needs the name of its manifest column (train / test or fold names)")
    controlled = sorted(CONTROLLED_OPTIONS & {o.split("=")[0] for o in settings.options})
    if controlled:
        raise EvaluationError(f"options: {', '.join(controlled)} are set by the evaluation settings")
    arguments = ["-m", "neuroradfm", "evaluate", "--manifest", manifest, "--model", *bundles,
                 "--out", Path(settings.out), "--split", settings.split, "--seed", settings.seed,
                 "--device", settings.device]
    if settings.split == "kfold":
        arguments += ["--folds", settings.folds]
    elif settings.split == "column":
        arguments += ["--split-column", settings.split_column.strip()]
    if settings.cache is not None:
        arguments += ["--cache", settings.cache]
    arguments += [*settings.options, "--progress", "json"]
    return [str(a) for a in arguments]


def evaluation_folder(output_folder: str | Path, bundles: list[str | Path]) -> Path:
    """Where the widget evaluates ``bundles``: one folder per bundle set, beside the bundles it trains."""
    names = [Path(b).name for b in bundles if str(b).strip()]
    return Path(output_folder) / ("evaluation-" + "-vs-".join(names or ["none"]))


def report_path(out: str | Path) -> Path | None:
    """``<out>/report/report.html`` when it is there and ``metrics.json`` beside it parses, else None."""
    report = Path(out) / REPORT_FOLDER / REPORT_FILE
    try:
        metrics = json.loads((report.parent / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if report.is_file() and isinstance(metrics, dict) else None


def report_button_state(path: str | Path | None) -> tuple[bool, str]:
    """(enabled, tooltip) of the report button: why it is disabled, or what it opens."""
    if path is None:
        return False, REPORT_MISSING
    return True, REPORT_TIP.format(path)


def evaluation_states(cohort: str, output: str, bundles: list[str], split: str, training: bool = False,
                      evaluating: bool = False) -> dict[str, tuple[bool, str]]:
    """(enabled, tooltip) of the Evaluate button, the folds box and the split column field, for the widget.

    Evaluate needs a cohort, an output folder and a bundle, and no training running; while an evaluation runs it
    is the Cancel button."""
    chosen = [b for b in bundles if b.strip()]
    split_states = {"folds": (split == "kfold", "" if split == "kfold" else f"applies to {SPLITS['kfold']}"),
                    "split_column": (split == "column", "" if split == "column" else "applies to the column split")}
    if evaluating:
        return {"evaluate": (True, "cancel the evaluation"), **split_states}
    if training:
        evaluate = (False, "training is running: evaluate its bundle when it is done")
    elif not cohort.strip() or not output.strip():
        evaluate = (False, "choose a cohort (manifest CSV or folder) and an output folder first")
    elif not chosen:
        evaluate = (False, "train a bundle, or choose one to evaluate")
    else:
        compared = f", compared with {Path(chosen[1]).name}" if len(chosen) > 1 else ""
        evaluate = (True, EVALUATE_TIP.format(Path(chosen[0]).name, compared))
    return {"evaluate": evaluate, **split_states}


def report_url(path: str | Path) -> str:
    """A file:// URL of the report, for the web view or the system browser."""
    return Path(path).resolve().as_uri()


class EvaluationJob(ProcessJob):
    """One ``neuroradfm evaluate`` process, polled like a TrainingJob (start / poll / finished / cancel / wait)."""

    what = "evaluation"

    def __init__(self, settings: EvaluationSettings, python: str | None = None) -> None:
        self.settings = settings
        self.arguments = evaluation_command(settings)
        self.out = Path(settings.out).resolve()
        self.python = python
        self.process: CoreProcess | None = None
        self.cancelled = False

    def start(self) -> EvaluationJob:
        self.out.mkdir(parents=True, exist_ok=True)
        self.process = CoreProcess(self.arguments[2:], python=self.python).start()  # CoreProcess adds -m neuroradfm
        return self

    def cancel(self) -> None:
        """Stop the process; the core keeps its embedding cache (``<out>/cache``) so that a rerun resumes."""
        super().cancel()

    def cancel_summary(self) -> str:
        return (f"Evaluation cancelled; no new report was written. The embeddings computed so far stay in "
                f"{self.settings.cache or self.out / 'cache'}: evaluating again resumes from them.")

    def report(self) -> Path:
        """The report written by this run; an EvaluationError says why there is none."""
        if self.cancelled:
            raise EvaluationError("evaluation was cancelled")
        if not self.finished:
            raise EvaluationError("evaluation is still running")
        if self.returncode != 0:
            raise EvaluationError(f"evaluation failed (exit status {self.returncode}): "
                                  f"{self.process.error_message() or 'no message'}")
        path = report_path(self.out)
        if path is None:
            raise EvaluationError(f"{self.out}: evaluation ended but wrote no readable "
                                  f"{REPORT_FOLDER}/{REPORT_FILE} with {METRICS_FILE}")
        return path


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _interval(values: Any) -> str:
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        return ""
    if any(not isinstance(v, (int, float)) for v in values):
        return "not estimable"
    return f"{values[0]:.3f}-{values[1]:.3f}"


def _status(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "not evaluable: not in metrics.json"
    if entry.get("status") != "ok":
        return f"not evaluable: {entry.get('reason') or 'no reason given'}"
    return "ok"


def evaluation_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (bundle, marker) and one for overall survival per bundle, from a ``metrics.json`` dict."""
    from neuroradfm.markers import MARKER_KEYS, marker

    rows = []
    for label, result in metrics.get("results", {}).items():
        markers = result.get("markers", {})
        for key in sorted(markers, key=lambda k: MARKER_KEYS.index(k) if k in MARKER_KEYS else len(MARKER_KEYS)):
            entry = markers[key]
            pooled = entry.get("pooled") if isinstance(entry, dict) else None
            status = _status(entry)
            if status == "ok":
                status = _status(pooled)
            row = {"bundle": label, "target": marker(key).label if key in MARKER_KEYS else key, "status": status}
            if status == "ok":
                skipped = entry.get("folds_not_evaluable") or []
                if skipped:
                    row["status"] = "ok; " + "; ".join(map(str, skipped))
                row.update({"AUC / c-index": _number(pooled.get("auc")), "95% CI": _interval(pooled.get("auc_ci")),
                            "balanced accuracy": _number(pooled.get("balanced_accuracy")),
                            "n": _number(pooled.get("n"))})
            rows.append(row)
        survival = result.get("survival")
        status = _status(survival)
        row = {"bundle": label, "target": "overall survival", "status": status}
        if isinstance(survival, dict) and survival.get("subgroup"):
            row["target"] += f" ({survival['subgroup']})"
        if status == "ok":
            pooled = survival.get("pooled") or {}
            row.update({"AUC / c-index": _number(pooled.get("c_index")), "95% CI": _interval(pooled.get("c_index_ci")),
                        "n": _number(survival.get("n"))})
        rows.append(row)
    return rows


def read_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{path}: not a readable evaluation metrics.json ({error})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), dict):
        raise EvaluationError(f"{path}: not an evaluation metrics.json (no results)")
    return metrics


def evaluation_table(scene, metrics_path: str | Path, name: str = TABLE_NAME):
    """A table node ``name`` with the evaluation's results; a rerun replaces its rows (one node per name)."""
    from NeuroRADFMLib.results import fill_table

    rows = evaluation_rows(read_metrics(metrics_path))
    table = scene.GetFirstNodeByName(name)
    if table is None or not table.IsA("vtkMRMLTableNode"):
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    fill_table(table, rows, TABLE_COLUMNS, NUMERIC_COLUMNS)
    return table
