"""Predict one case or a whole cohort into an output folder.

Each case goes to OUT/<case_id>/ (written whole or not at all). For several cases, a failing
case is recorded and the others go on; OUT/predictions.csv gathers every case's rows and
OUT/failures.csv every failure.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neuroradfm.atomic import atomic_file
from neuroradfm.errors import NeuroRADFMError
from neuroradfm.io.case import Case
from neuroradfm.models.bundle import Bundle
from neuroradfm.outputs import write_outputs
from neuroradfm.predict import Prediction, predict_case
from neuroradfm.progress import Progress, null_progress, sub_progress


@dataclass
class BatchResult:
    outputs: dict[str, Path] = field(default_factory=dict)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def predict_cases(cases: Sequence[tuple[str, Callable[[], Case]]], bundle: Bundle, out_dir: str | Path,
                  device: str = "auto", progress: Progress = null_progress, overview: bool = True,
                  keep_predictions: bool = False, cam_layer: str | None = None) -> BatchResult:
    """``cases`` are (case_id, loader) pairs, so that loading errors are isolated per case too;
    ``cam_layer`` as in ``predict_case``."""
    bundle.require_heads()  # a bundle that cannot predict fails once, before any case
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = BatchResult()
    for index, (case_id, load) in enumerate(cases):
        part = sub_progress(progress, index / len(cases), (index + 1) / len(cases))
        try:
            case = load()
            prediction = predict_case(case, bundle, device=device, progress=part, cam_layer=cam_layer)
            result.outputs[case.case_id] = write_outputs(prediction, out_dir / case.case_id, overview=overview)
        except NeuroRADFMError as error:
            result.failures[case_id] = str(error)
            part("failed", 1.0, f"{case_id}: {error}")
            continue
        if keep_predictions:
            result.predictions[case.case_id] = prediction
    if len(cases) > 1:
        _gather_tables(out_dir, result)
    return result


def _atomic_csv(path: Path, rows: list[list[str]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def _gather_tables(out_dir: Path, result: BatchResult) -> None:
    rows: list[list[str]] = []
    for case_dir in result.outputs.values():
        with open(case_dir / "predictions.csv", newline="") as handle:
            case_rows = list(csv.reader(handle))
        rows.extend(case_rows if not rows else case_rows[1:])
    if rows:
        _atomic_csv(out_dir / "predictions.csv", rows)
    if result.failures:
        _atomic_csv(out_dir / "failures.csv", [["case_id", "error"], *map(list, result.failures.items())])
