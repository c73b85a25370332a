"""The NeuroRADFMTrain module's job: train a bundle out of process, a live loss curve, register the result.

Two ways to a bundle the NeuroRADFM module can select:

- self-supervised (the foundation-model path): ``neuroradfm pretrain`` (BYOL / DINO / MAE / MoCo, optional
  Group-DRO over a group column) writes an encoder-only bundle to ``<out>.encoder`` and a checkpoint
  ``<out>.encoder.checkpoint.pt``; then ``neuroradfm fit-heads`` fits probes, Cox and OOD on its frozen
  embeddings into ``<out>``, or, with ``fine_tune_epochs``, ``neuroradfm train-baseline --init`` fine-tunes
  the pretrained encoder with the markers (what gave the better probes in bench/RESULTS.md). One
  ``TrainingJob`` runs both processes; only the complete bundle counts, and ``resume`` continues the
  pretraining from the checkpoint a cancelled or interrupted run kept.
- the supervised stand-in: ``neuroradfm train-baseline`` (encoder + probes + Cox in one process, no resume).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from NeuroRADFMLib.process import CoreProcess, ProgressEvent, remove_new, wait_for

if TYPE_CHECKING:
    from NeuroRADFMLib.cohorts import CohortCheck

SSL_METHODS = ("byol", "dino", "mae", "moco")
DRO_MODES = {"exponentiated": "exponentiated weights (Sagawa et al.)",
             "exponentiated-sampled": "exponentiated, cases drawn from q",
             "worst-group": "worst group only"}
"""Group-DRO choices and their labels: a mode of ``neuroradfm pretrain --dro-mode``; ``-sampled`` adds
``--dro-sampling`` (each step's cases drawn in proportion to q instead of weighted by it)."""
BASELINE_LABEL = "supervised stand-in encoder + probes + Cox (not the self-supervised foundation model)"
SSL_LABEL = "self-supervised pretraining of the encoder, then probes + Cox + OOD fitted on its frozen embeddings"
FINE_TUNE_LABEL = ("self-supervised pretraining of the encoder, then fine-tuning it with the markers "
                   "(probes + Cox + OOD on the fine-tuned encoder)")
PRETRAIN_MISSING = "arrives with self-supervised pretraining"
RESUME_BASELINE = ("the supervised stand-in (train-baseline) cannot resume; "
                   "only self-supervised pretraining continues from a checkpoint")
RESUME_TIP = "continue the cancelled or interrupted pretraining of this bundle from its checkpoint ({})"
SSL_ONLY = "applies to self-supervised pretraining (tick Self-supervised)"
BASELINE_ONLY = "applies to supervised training only (the stand-in, or fine-tuning after pretraining)"
REPORT_MISSING = "no evaluation report yet: Evaluate a bundle to write one (<output folder>/evaluation-*/report)"
LOSS_CHART_NAME = "NeuroRADFM training loss"
PRETRAIN_SHARE = 0.85
"""Fraction of the progress bar the pretraining takes; fitting the heads (or fine-tuning) takes the rest."""
CONTROLLED_OPTIONS = frozenset({"--manifest", "--method", "--out", "--metrics", "--checkpoint", "--resume",
                                "--cache", "--progress", "--device", "--epochs", "--dro", "--dro-mode",
                                "--group-column", "--dro-sampling", "--name", "--size", "--spacing", "--widen"})
"""Options the job sets itself; ``pretrain_options`` may not repeat them."""


class TrainingError(RuntimeError):
    """A training request that cannot run; the message names the file or option and the problem."""


def core_commands() -> set[str]:
    """The subcommands of the bundled core's command line (``predict``, ``train-baseline``, ...)."""
    from neuroradfm import cli

    return set(cli.commands())


def pretrain_available(commands: set[str] | None = None) -> bool:
    """True when the core can pretrain and complete a bundle (``pretrain`` and ``fit-heads``)."""
    return {"pretrain", "fit-heads"} <= (core_commands() if commands is None else commands)


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
    """None: the supervised stand-in; else one of SSL_METHODS (pretrain, then fit-heads or fine-tuning)."""
    dro: bool = False
    dro_mode: str = "exponentiated"
    group_column: str = "site"
    resume: bool = False
    """Self-supervised only: continue from ``<out>.encoder.checkpoint.pt``."""
    size: int | None = None
    """Model grid voxels per side (the core's default when None); spacing in mm and width factor likewise."""
    spacing: float | None = None
    widen: float | None = None
    pretrain_options: tuple[str, ...] = ()
    """Further ``neuroradfm pretrain`` options passed as given (e.g. ``--arch resnet18 --crop 64 --max-steps 500``)."""
    fine_tune_epochs: int = 0
    """Self-supervised only: 0 fits the heads on the frozen encoder (``fit-heads``); N > 0 fine-tunes the
    pretrained encoder with the markers for N epochs (``train-baseline --init``; ``tumour_weight`` applies)."""
    cohort_check: CohortCheck | None = None
    """The cohort check of this manifest (NeuroRADFMLib.cohorts): training is refused while it has errors, or when
    it is of another manifest or the manifest changed since. None: not checked here (the console, the tests)."""


@dataclass(frozen=True)
class TrainingPaths:
    """Where a run writes: the bundle, and for the self-supervised path its encoder, checkpoint and cache."""

    out: Path
    encoder: Path
    checkpoint: Path
    metrics: Path
    cache: Path | None
    implicit_cache: bool
    """The cache is the job's own (no cache was asked for): removed once the bundle is complete."""


def training_paths(settings: TrainingSettings) -> TrainingPaths:
    out = Path(settings.out).resolve()
    encoder = out.with_name(out.name + ".encoder")
    implicit = settings.cache is None and bool(settings.ssl_method)
    cache = encoder.with_name(encoder.name + ".cache") if implicit else settings.cache
    return TrainingPaths(out, encoder, encoder.with_name(encoder.name + ".checkpoint.pt"),
                         out.with_name(out.name + ".metrics.jsonl"), None if cache is None else Path(cache), implicit)


@dataclass(frozen=True)
class TrainingStep:
    """One process of a training job and the part of the progress bar (start..end) it fills."""

    label: str
    arguments: list[str]
    start: float
    end: float


def _grid_options(settings: TrainingSettings) -> list:
    options = []
    for option, value in (("--size", settings.size), ("--spacing", settings.spacing), ("--widen", settings.widen)):
        if value is not None:
            options += [option, value]
    return options


def training_steps(settings: TrainingSettings, commands: set[str] | None = None) -> list[TrainingStep]:
    """The core command lines of a run, checked first so that a bad request fails before any process starts."""
    manifest = resolve_manifest(settings.cohort)
    if settings.cohort_check is not None:
        settings.cohort_check.require_trainable(manifest)
    paths = training_paths(settings)
    if settings.epochs < 1:
        raise TrainingError(f"epochs: {settings.epochs} (at least 1)")
    if not settings.ssl_method:
        if settings.dro:
            raise TrainingError(f"Group-DRO {SSL_ONLY}; the supervised stand-in has none")
        if settings.resume:
            raise TrainingError(f"resume: {RESUME_BASELINE}")
        if settings.pretrain_options:
            raise TrainingError(f"pretrain options {' '.join(settings.pretrain_options)}: {SSL_ONLY}")
        if settings.fine_tune_epochs:
            raise TrainingError(f"fine-tuning a pretrained encoder {SSL_ONLY}")
        arguments = [*_supervised(settings, manifest, paths, settings.epochs), *_grid_options(settings),
                     "--name", settings.name or paths.out.name]
        return [TrainingStep("supervised training", [str(a) for a in arguments], 0.0, 1.0)]

    if not pretrain_available(commands):
        raise TrainingError(f"self-supervised pretraining / Group-DRO: {PRETRAIN_MISSING} (not in this core yet)")
    if settings.ssl_method not in SSL_METHODS:
        raise TrainingError(f"SSL method {settings.ssl_method!r}: use one of {', '.join(SSL_METHODS)}")
    if settings.fine_tune_epochs < 0:
        raise TrainingError(f"fine-tune epochs: {settings.fine_tune_epochs} (0: heads on the frozen encoder)")
    if settings.tumour_weight and not settings.fine_tune_epochs:
        raise TrainingError(f"tumour weight {settings.tumour_weight}: {BASELINE_ONLY}")
    if settings.dro and settings.dro_mode not in DRO_MODES:
        raise TrainingError(f"Group-DRO mode {settings.dro_mode!r}: use one of {', '.join(DRO_MODES)}")
    if settings.dro and not settings.group_column.strip():
        raise TrainingError("Group-DRO needs a group column (a manifest column such as site)")
    controlled = sorted(CONTROLLED_OPTIONS & {o.split("=")[0] for o in settings.pretrain_options})
    if controlled:
        raise TrainingError(f"pretrain options: {', '.join(controlled)} are set by the training settings")
    if settings.resume and not paths.checkpoint.is_file():
        raise TrainingError(f"{paths.checkpoint}: no checkpoint to resume from (a cancelled or interrupted "
                            "self-supervised run of this bundle leaves it there); start without Resume")
    name = settings.name or paths.out.name
    pretrain = ["pretrain", "--manifest", manifest, "--method", settings.ssl_method, "--out", paths.encoder,
                "--checkpoint", paths.checkpoint, "--metrics", paths.metrics, "--cache", paths.cache,
                "--epochs", settings.epochs, "--device", settings.device, *_grid_options(settings),
                "--name", f"{name}-encoder"]
    if settings.dro:
        mode = settings.dro_mode.removesuffix("-sampled")
        pretrain += ["--dro", "--dro-mode", mode, "--group-column", settings.group_column.strip()]
        if mode != settings.dro_mode:
            pretrain.append("--dro-sampling")
    if settings.resume:
        pretrain.append("--resume")
    pretrain += [*settings.pretrain_options, "--progress", "json"]
    if settings.fine_tune_epochs:  # the encoder bundle sets the architecture and the grid
        label = "fine-tuning"
        second = [*_supervised(settings, manifest, paths, settings.fine_tune_epochs), "--init", paths.encoder,
                  "--name", name]
    else:
        label = "fitting heads"
        second = ["fit-heads", "--model", paths.encoder, "--manifest", manifest, "--out", paths.out,
                  "--cache", paths.cache, "--device", settings.device, "--name", name, "--progress", "json"]
    return [TrainingStep("self-supervised pretraining", [str(a) for a in pretrain], 0.0, PRETRAIN_SHARE),
            TrainingStep(label, [str(a) for a in second], PRETRAIN_SHARE, 1.0)]


def _supervised(settings: TrainingSettings, manifest: Path, paths: TrainingPaths, epochs: int) -> list:
    """``train-baseline`` with the options the stand-in and the fine-tuning share."""
    arguments = ["train-baseline", "--manifest", manifest, "--out", paths.out, "--epochs", epochs,
                 "--device", settings.device, "--metrics", paths.metrics, "--progress", "json"]
    if paths.cache is not None:
        arguments += ["--cache", paths.cache]
    if settings.tumour_weight:
        arguments += ["--tumour-weight", settings.tumour_weight]
    return arguments


def control_states(pretrain: bool, ssl: bool, dro: bool, fine_tune: bool = False,
                   report: Path | None = None) -> dict[str, tuple[bool, str]]:
    """(enabled, tooltip) of each training control, so that the widget only applies them.

    ``pretrain``: the core can pretrain; ``ssl`` / ``dro``: the Self-supervised / Group-DRO boxes are ticked;
    ``fine_tune``: fine-tune epochs > 0; ``report``: the evaluation report to open (NeuroRADFMLib.evaluation's
    ``report_path``), None while there is none.
    """
    from NeuroRADFMLib.evaluation import report_button_state

    on = pretrain and ssl
    ssl_tip = PRETRAIN_MISSING if not pretrain else "" if ssl else SSL_ONLY
    supervised = not on or fine_tune
    return {
        "ssl": (pretrain, "" if pretrain else PRETRAIN_MISSING),
        "method": (on, ssl_tip),
        "dro": (on, ssl_tip),
        "dro_mode": (on and dro, ssl_tip or ("" if dro else "tick Group-DRO")),
        "group_column": (on and dro, ssl_tip or ("" if dro else "tick Group-DRO")),
        "resume": (on, RESUME_TIP.format("<output folder>/<bundle name>.encoder.checkpoint.pt") if on
                   else PRETRAIN_MISSING if not pretrain else RESUME_BASELINE),
        "fine_tune": (on, ssl_tip),
        "tumour_weight": (supervised, "" if supervised else BASELINE_ONLY),
        "report": report_button_state(report),
    }


def method_description(ssl: bool, fine_tune: bool = False) -> str:
    """What Start training will train, said plainly (the stand-in is not the foundation model)."""
    if not ssl:
        return f"Trains: {BASELINE_LABEL}."
    return f"Trains: {FINE_TUNE_LABEL if fine_tune else SSL_LABEL}."


class TrainingJob:
    """One training run of one or two core processes (pretrain, then fit-heads or fine-tuning), polled like one.

    ``poll()`` drives it: it returns progress events on the job's 0..1 scale and starts the next process
    when one ends well, so call it until ``finished``. ``metrics_path`` grows one JSON line per step.
    """

    def __init__(self, settings: TrainingSettings, python: str | None = None,
                 commands: set[str] | None = None) -> None:
        self.settings = settings
        self.paths = training_paths(settings)
        self.out = self.paths.out
        self.metrics_path = self.paths.metrics
        self.steps = training_steps(settings, commands)
        self.python = python
        self.process: CoreProcess | None = None
        self.step_index = 0
        self.cancelled = False
        self._failure: str | None = None
        self._staging_before: set[Path] = set()

    @property
    def ssl(self) -> bool:
        return len(self.steps) > 1

    @property
    def checkpoint(self) -> Path | None:
        """The pretraining checkpoint that Resume continues from (None for the supervised stand-in)."""
        return self.paths.checkpoint if self.ssl else None

    def start(self) -> TrainingJob:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if not self.settings.resume:
            self.metrics_path.unlink(missing_ok=True)  # a fresh curve for a fresh run; a resume keeps its steps
        self._staging_before = set(self._staging())
        self._launch(0)
        return self

    def _launch(self, index: int) -> None:
        self.step_index = index
        self.process = CoreProcess(self.steps[index].arguments, python=self.python).start()

    def _staging(self) -> list[Path]:
        """Half-written outputs of the core: staging folders of the bundles, temporary checkpoint/metrics files."""
        patterns = [(self.out.parent, f".{self.out.name}.partial-*"),
                    (self.paths.encoder.parent, f".{self.paths.encoder.name}.partial-*"),
                    (self.paths.checkpoint.parent, f".{self.paths.checkpoint.name}.*"),
                    (self.metrics_path.parent, f".{self.metrics_path.name}.*")]
        if self.paths.cache is not None:
            patterns.append((self.paths.cache, ".*"))
        return [p for folder, pattern in patterns if folder.is_dir() for p in folder.glob(pattern)]

    @property
    def step(self) -> TrainingStep:
        return self.steps[self.step_index]

    def poll(self) -> list[ProgressEvent]:
        """Progress since the last call (never blocks); starts the second process once the pretraining ended
        well."""
        if self.process is None:
            return []
        step, last = self.step, self.step_index == len(self.steps) - 1
        events = []
        for event in self.process.poll():
            stage = "pretrained" if event.stage == "done" and not last else event.stage
            events.append(ProgressEvent(stage, step.start + (step.end - step.start) * event.progress, event.message))
        if (not last and not self.cancelled and self._failure is None and self.process.finished
                and self.process.returncode == 0):
            problem = self._encoder_problem()
            if problem:
                self._failure = problem
            else:
                self._launch(self.step_index + 1)
                tuning = self.settings.fine_tune_epochs > 0
                events.append(ProgressEvent("fine-tune" if tuning else "fit-heads", self.step.start,
                                            "fine-tuning the pretrained encoder with the markers" if tuning else
                                            "fitting probes, Cox and OOD on the frozen encoder"))
        return events

    def _encoder_problem(self) -> str | None:
        try:
            card = json.loads((self.paths.encoder / "card.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return f"{self.paths.encoder}: pretraining ended but wrote no encoder bundle ({error})"
        return None if isinstance(card, dict) else f"{self.paths.encoder}: card.json is not a bundle card"

    @property
    def finished(self) -> bool:
        """True once the last process ended, or one failed, or the job was cancelled (or never started)."""
        if self.process is None:
            return self.cancelled
        if self.cancelled or self._failure is not None:
            return True
        if not self.process.finished:
            return False
        return self.process.returncode != 0 or self.step_index == len(self.steps) - 1

    @property
    def returncode(self) -> int | None:
        """The exit status of the current (after the end: the last) process; None while it runs."""
        return None if self.process is None else self.process.returncode

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> list[ProgressEvent]:
        """Poll until finished (console and tests); returns every event. Cancels on timeout."""
        return wait_for(self, "training", timeout, interval)

    def cancel(self) -> None:
        """Stop the running process and remove half-written outputs; the checkpoint stays so Resume works."""
        self.cancelled = True

        def clean() -> None:
            remove_new(self._staging(), self._staging_before)

        clean()  # now, and again once the process tree is gone (a killed core cannot clean up after itself)
        if self.process is not None:
            self.process.cancel(then=clean)

    def cancel_summary(self) -> str:
        """What a cancel left behind, for the status line."""
        text = "Cancelled; no bundle was written."
        if self.checkpoint is not None and self.checkpoint.is_file():
            text += f" The checkpoint {self.checkpoint} is kept: tick Resume and start again to continue."
        return text

    def bundle(self) -> Path:
        """The complete, predicting bundle; a TrainingError says why there is none."""
        if self.cancelled:
            raise TrainingError("training was cancelled")
        if self._failure is not None:
            raise TrainingError(self._failure)
        if not self.finished:
            raise TrainingError("training is still running")
        if self.returncode != 0:
            raise TrainingError(f"{self.step.label} failed (exit status {self.returncode}): "
                                f"{self.process.error_message() or 'no message'}")
        try:
            card = json.loads((self.out / "card.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise TrainingError(f"{self.out}: training ended but wrote no bundle") from None
        if card.get("heads") is None:
            raise TrainingError(f"{self.out}: an encoder-only bundle (no heads) cannot predict; not registered")
        if self.paths.implicit_cache and self.paths.cache is not None:
            shutil.rmtree(self.paths.cache, ignore_errors=True)  # no cache was asked for; no resume needs it now
        return self.out


def update_loss_table(table, metrics_path: str | Path) -> int:
    """Fill ``table`` (step, stage, epoch, loss) from a metrics JSON-lines file; returns the number of rows.

    A job of two training processes (pretraining, then fine-tuning) writes two stages whose steps each start at
    1: the table's steps run on through the second stage, so that the curve is one line from left to right."""
    from neuroradfm.metrics import read_metrics
    from NeuroRADFMLib.results import fill_table

    path = Path(metrics_path)
    rows = read_metrics(path) if path.is_file() else []
    table_rows, offset, last = [], 0, None
    for r in rows:
        if not isinstance(r.get("loss"), (int, float)):
            continue
        stage = r.get("stage", "")
        if last is not None and stage != last["stage"]:
            offset = last["step"]
        table_rows.append({"step": offset + r["step"], "stage": stage,
                           "epoch": r.get("epoch", float("nan")), "loss": r["loss"]})
        last = table_rows[-1]
    fill_table(table, table_rows, ("step", "stage", "epoch", "loss"), {"step", "epoch", "loss"})
    return len(table_rows)


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
