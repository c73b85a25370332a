"""Batch processing from Slicer's Python console: every case of a folder or manifest, one results table.

Runs the core in this process (``neuroradfm.batch.predict_cases``: a failing case is recorded and the
others go on) and adds one table node with a row per case and output to the scene::

    from NeuroRADFMLib.batch import process_cohort
    cohort = process_cohort("/data/cohort/manifest.csv", out_dir="/data/results", device="cuda:0")
    cohort.table         # vtkMRMLTableNode: case_id, Output, Label, Probability, ..., Error
    cohort.failures      # {case_id: error message}
    cohort.outputs       # {case_id: folder with heatmaps, label maps, contours.seg.nrrd, predictions}

For one case with its maps in the scene use ``NeuroRADFMLib.prediction.PredictionJob`` (or the module).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from NeuroRADFMLib.results import NUMERIC_COLUMNS, PREDICTIONS_FILE, TABLE_COLUMNS, fill_table, table_rows
from NeuroRADFMLib.sequences import RESULT_ATTRIBUTE

COHORT_COLUMNS = ("case_id", *TABLE_COLUMNS, "Error")


@dataclass
class CohortResults:
    out_dir: Path
    table: Any
    outputs: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def cohort_cases(source: str | Path) -> list[tuple[str, Callable]]:
    """(case_id, loader) pairs from a manifest CSV, a folder holding manifest.csv, or a folder of case folders
    (each a BraTS-named folder or a DICOM study)."""
    from neuroradfm.errors import InputError
    from neuroradfm.io import load_case, read_manifest

    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return [(entry.case_id, entry.load) for entry in read_manifest(source)]
    if source.is_dir():
        if (source / "manifest.csv").is_file():
            return [(entry.case_id, entry.load) for entry in read_manifest(source / "manifest.csv")]
        folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        if folders:
            return [(p.name, lambda p=p: load_case(p)) for p in folders]
        raise InputError(source, "no manifest.csv and no case folders in this folder")
    raise InputError(source, "not a manifest .csv file or a folder")


def process_cohort(source: str | Path, bundle: str | Path | None = None, out_dir: str | Path | None = None,
                   device: str = "auto", scene=None, progress=None, overview: bool = False,
                   table_name: str = "NeuroRADFM cohort results") -> CohortResults:
    """Predict every case of ``source`` with ``bundle`` (default: the demo bundle) into ``out_dir``
    (OUT/<case_id>/ per case, OUT/predictions.csv and OUT/failures.csv as the CLI writes them), and add
    one table node with every case's rows to ``scene`` (default: ``slicer.mrmlScene``)."""
    from neuroradfm.batch import predict_cases
    from neuroradfm.demo import demo_bundle_path
    from neuroradfm.models.bundle import load_bundle
    from neuroradfm.progress import null_progress

    if out_dir is None:
        raise ValueError("out_dir: give a folder for the results")
    if scene is None:
        import slicer

        scene = slicer.mrmlScene
    cases = cohort_cases(source)
    loaded = load_bundle(bundle or demo_bundle_path())
    result = predict_cases(cases, loaded, out_dir, device=device, progress=progress or null_progress,
                           overview=overview)
    rows = []
    for case_id, folder in result.outputs.items():
        summary = json.loads((Path(folder) / PREDICTIONS_FILE).read_text(encoding="utf-8"))
        rows += [{"case_id": case_id, **row, "Error": ""} for row in table_rows(summary)]
    rows += [{"case_id": case_id, "Error": error} for case_id, error in result.failures.items()]
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(table_name))
    table.SetAttribute(RESULT_ATTRIBUTE, "1")
    table.SetAttribute("NeuroRADFM.outputFolder", str(Path(out_dir).resolve()))
    fill_table(table, rows, COHORT_COLUMNS, NUMERIC_COLUMNS)
    return CohortResults(Path(out_dir), table, dict(result.outputs), dict(result.failures))
