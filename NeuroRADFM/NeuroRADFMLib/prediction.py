"""The NeuroRADFM module's job: the selected volume nodes (any non-empty subset of the four) -> temporary NRRD
files -> ``neuroradfm predict`` out of process -> result nodes on the reference's grid (T1ce, else the first of
T1, FLAIR, T2 selected).

The scene is only touched by ``load_results`` after the process succeeded; cancelling or a failure leaves
it as it was, and the temporary folder is removed in every case.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from neuroradfm import SEQUENCES
from neuroradfm.io.case import reference_key
from neuroradfm.output_paths import safe_folder_name
from NeuroRADFMLib.process import CoreProcess, ProgressEvent
from NeuroRADFMLib.results import CaseResults, load_results
from NeuroRADFMLib.scene_io import SceneIOError, write_volume


class PredictionError(RuntimeError):
    """The core failed; the message is the core's own (naming the file and the problem)."""


def case_id_for(node) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", node.GetName() or "").strip("._-")
    return text or "case"


def check_inputs(volumes: dict) -> str:
    """The reference sequence (the core writes every map on its grid: the first selected of T1ce, T1, FLAIR,
    T2); a selector may stay empty, but not all four, and one volume cannot stand for two sequences."""
    selected = [s for s in SEQUENCES if volumes.get(s) is not None]
    if not selected:
        raise SceneIOError("select a volume for at least one of T1, T1CE, T2, FLAIR")
    ids = [volumes[s].GetID() for s in selected]
    if len(set(ids)) < len(ids):
        repeated = {volumes[s].GetName() for s in selected if ids.count(volumes[s].GetID()) > 1}
        raise SceneIOError(f"volume {', '.join(sorted(repeated))!s} is selected for more than one sequence")
    return reference_key(tuple(selected))


class PredictionJob:
    """Run the model on the selected volume nodes; poll from a timer (``poll``) or block (``run``)."""

    def __init__(self, volumes: dict, bundle: str | Path, device: str = "auto", python: str | None = None,
                 work_dir: str | Path | None = None, overview: bool = False) -> None:
        self.volumes = {s: volumes[s] for s in SEQUENCES if volumes.get(s) is not None}
        self.reference = self.volumes[check_inputs(volumes)]
        self.bundle = Path(bundle)
        self.device = device
        self.case_id = case_id_for(self.reference)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="NeuroRADFM-", dir=None if work_dir is None else str(work_dir)))
        self.out_dir = self.temp_dir / "results"
        try:
            files = {s: write_volume(node, self.temp_dir / "inputs" / f"{s}.nrrd") for s, node in self.volumes.items()}
        except Exception:
            self._remove_temp()
            raise
        arguments = ["predict", *[a for s in files for a in (f"--{s}", files[s])], "--case-id", self.case_id,
                     "--model", self.bundle, "--out", self.out_dir, "--device", device, "--progress", "json"]
        if not overview:
            arguments.append("--no-overview")
        self.process = CoreProcess(arguments, python=python, temp_dir=self.temp_dir)

    def start(self) -> PredictionJob:
        try:
            self.process.start()
        except OSError as error:
            self._remove_temp()
            raise PredictionError(f"could not start {self.process.command[0]}: {error}") from error
        return self

    def poll(self) -> list[ProgressEvent]:
        return self.process.poll()

    @property
    def finished(self) -> bool:
        return self.process.finished

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def cancel(self) -> None:
        self.process.cancel()

    def load_results(self, scene, name: str | None = None) -> CaseResults:
        """After success: the results as nodes (on the reference's grid); the temporary folder is removed."""
        try:
            if self.process.cancelled:
                raise PredictionError("the prediction was cancelled")
            if self.returncode != 0:
                raise PredictionError(f"prediction failed (exit status {self.returncode}): "
                                      f"{self.process.error_message() or 'no message'}")
            return load_results(scene, self.out_dir / safe_folder_name(self.case_id), self.reference,
                                name=name or self.reference.GetName())
        finally:
            self._remove_temp()

    def run(self, scene, timeout: float | None = None,
            on_events: Callable[[list[ProgressEvent]], None] | None = None) -> CaseResults:
        """Start, wait and load (console, self-tests)."""
        self.start()
        self.process.wait(timeout=timeout, on_events=on_events)
        return self.load_results(scene)

    def _remove_temp(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
