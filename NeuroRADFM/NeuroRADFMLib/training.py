"""The NeuroRADFMTrain module's job: train a bundle out of process, a live loss curve, register the result.

What the core can do today is wired: ``neuroradfm train-baseline`` (the supervised stand-in encoder +
probes + Cox). Self-supervised pretraining (BYOL / DINO / MAE / MoCo, Group-DRO over a group column)
is offered only when the core's command line has a ``pretrain`` command (``pretrain_available``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from NeuroRADFMLib.process import CoreProcess, ProgressEvent

SSL_METHODS = ("byol", "dino", "mae", "moco")
BASELINE_LABEL = "supervised stand-in encoder + probes + Cox"
PRETRAIN_MISSING = "arrives with self-supervised pretraining"
RESUME_MISSING = "needs resumable training in the core (train-baseline has no --resume)"
REPORT_MISSING = "needs an HTML evaluation report from the core (none is written yet)"
LOSS_CHART_NAME = "NeuroRADFM training loss"


class TrainingError(RuntimeError):
    """A training request that cannot run; the message names the file or option and the problem."""


def core_commands() -> set[str]:
    """The subcommands of the bundled core's command line (``predict``, ``train-baseline``, ...)."""
    from neuroradfm import cli

    return set(cli.commands())


def pretrain_available(commands: set[str] | None = None) -> bool:
    return "pretrain" in (core_commands() if commands is None else commands)


def resolve_manifest(path: str | Path) -> Path:
    """A cohort as a manifest CSV, or a folder holding manifest.csv (as ``neuroradfm phantom`` writes)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    if path.is_dir() and (path / "manifest.csv").is_file():
        return path / "manifest.csv"
    if path.is_dir():
        raise TrainingError(f"{path}: this folder has no manifest.csv (columns case_id, site, t1, t1ce, t2, flair)")
    raise TrainingError(f"{path}: not a manifest .csv file or a folder holding manifest.csv")


@dataclass
class TrainingSettings:
    cohort: Path
    out: Path
    epochs: int = 12
    device: str = "auto"
    cache: Path | None = None
    tumour_weight: float = 0.0
    name: str | None = None
    ssl_method: str | None = None
    dro: bool = False
    group_column: str = "site"
    size: int | None = None
    """Model grid voxels per side (the core's default when None); spacing in mm and width factor likewise."""
    spacing: float | None = None
    widen: float | None = None


def training_arguments(settings: TrainingSettings, metrics_path: Path,
                       commands: set[str] | None = None) -> list[str]:
    manifest = resolve_manifest(settings.cohort)
    if settings.epochs < 1:
        raise TrainingError(f"epochs: {settings.epochs} (at least 1)")
    if settings.ssl_method or settings.dro:
        if not pretrain_available(commands):
            raise TrainingError(f"self-supervised pretraining / Group-DRO: {PRETRAIN_MISSING} (not in this core yet)")
        if settings.ssl_method not in SSL_METHODS:
            raise TrainingError(f"SSL method {settings.ssl_method!r}: use one of {', '.join(SSL_METHODS)}")
        arguments = ["pretrain", "--manifest", manifest, "--method", settings.ssl_method, "--out", settings.out,
                     "--metrics", metrics_path, "--epochs", settings.epochs, "--device", settings.device]
        if settings.dro:
            arguments += ["--dro", "--group-column", settings.group_column]
        return [*map(str, arguments), "--progress", "json"]
    arguments = ["train-baseline", "--manifest", manifest, "--out", settings.out, "--epochs", settings.epochs,
                 "--device", settings.device, "--metrics", metrics_path, "--progress", "json"]
    if settings.cache is not None:
        arguments += ["--cache", settings.cache]
    if settings.tumour_weight:
        arguments += ["--tumour-weight", settings.tumour_weight]
    for option, value in (("--size", settings.size), ("--spacing", settings.spacing), ("--widen", settings.widen)):
        if value is not None:
            arguments += [option, value]
    arguments += ["--name", settings.name or Path(settings.out).name]
    return [str(a) for a in arguments]


class TrainingJob:
    """One training run; ``metrics_path`` grows one JSON line per step for the loss curve."""

    def __init__(self, settings: TrainingSettings, python: str | None = None,
                 commands: set[str] | None = None) -> None:
        self.settings = settings
        self.out = Path(settings.out).resolve()
        self.metrics_path = self.out.parent / f"{self.out.name}.metrics.jsonl"
        self.arguments = training_arguments(settings, self.metrics_path, commands)
        self.process = CoreProcess(self.arguments, python=python)

    def start(self) -> TrainingJob:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.metrics_path.unlink(missing_ok=True)  # a fresh curve for a fresh run
        self._staging_before = set(self._staging())
        self.process.start()
        return self

    def _staging(self) -> list[Path]:
        return list(self.out.parent.glob(f".{self.out.name}.partial-*"))

    def poll(self) -> list[ProgressEvent]:
        return self.process.poll()

    @property
    def finished(self) -> bool:
        return self.process.finished

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def cancel(self) -> None:
        """Stop the run and remove its half-written bundle folder (the core writes it under a staging name)."""
        self.process.cancel()
        for path in set(self._staging()) - self._staging_before:
            shutil.rmtree(path, ignore_errors=True)

    def bundle(self) -> Path:
        if self.process.cancelled:
            raise TrainingError("training was cancelled")
        if self.returncode != 0:
            raise TrainingError(f"training failed (exit status {self.returncode}): "
                                f"{self.process.error_message() or 'no message'}")
        if not (self.out / "card.json").is_file():
            raise TrainingError(f"{self.out}: training ended but wrote no bundle")
        return self.out


def update_loss_table(table, metrics_path: str | Path) -> int:
    """Fill ``table`` (step, epoch, loss) from a metrics JSON-lines file; returns the number of rows."""
    from neuroradfm.metrics import read_metrics
    from NeuroRADFMLib.results import fill_table

    path = Path(metrics_path)
    rows = read_metrics(path) if path.is_file() else []
    rows = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    fill_table(table, [{"step": r["step"], "epoch": r.get("epoch", float("nan")), "loss": r["loss"]} for r in rows],
               ("step", "epoch", "loss"), {"step", "epoch", "loss"})
    return len(rows)


def loss_chart(scene, table, name: str = LOSS_CHART_NAME):
    """A plot series (loss over step) and a chart node showing it, created once and reused."""
    series = scene.GetFirstNodeByName(f"{name} series")
    if series is None or not series.IsA("vtkMRMLPlotSeriesNode"):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} series")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("step")
    series.SetYColumnName("loss")
    series.SetPlotType(series.PlotTypeScatter)
    series.SetMarkerStyle(series.MarkerStyleNone)
    chart = scene.GetFirstNodeByName(name)
    if chart is None or not chart.IsA("vtkMRMLPlotChartNode"):
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    if chart.GetPlotSeriesNodeID() != series.GetID():
        chart.RemoveAllPlotSeriesNodeIDs()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Training loss")
    chart.SetXAxisTitle("step")
    chart.SetYAxisTitle("loss")
    return series, chart
