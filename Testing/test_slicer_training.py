"""NeuroRADFMTrain's logic: a real training run out of process, the live loss curve (table + plot nodes)
from the metrics file, cancel, the bundle registry the NeuroRADFM module reads, and the disabled SSL path."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

import slicer  # noqa: E402

from neuroradfm.metrics import MetricsLog  # noqa: E402
from NeuroRADFMLib.bundles import BundleRegistry, available_bundles, bundle_entry  # noqa: E402
from NeuroRADFMLib.training import (  # noqa: E402
    PRETRAIN_MISSING,
    TrainingError,
    TrainingJob,
    TrainingSettings,
    core_commands,
    loss_chart,
    pretrain_available,
    resolve_manifest,
    training_arguments,
    update_loss_table,
)


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)


def column(table, name: str) -> list[float]:
    array = table.GetTable().GetColumnByName(name)
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


def test_loss_table_and_chart_follow_a_growing_metrics_file(scene, tmp_path):
    path = tmp_path / "run.metrics.jsonl"
    log = MetricsLog(path)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "loss")
    assert update_loss_table(table, path) == 0  # not written yet: an empty curve, no error
    for step, loss in enumerate([0.9, 0.7, 0.65], 1):
        log(step, stage="train", epoch=1, loss=loss, lr=1e-3)
    log(4, stage="train", epoch=2, loss=float("nan"), lr=1e-3)  # written as null: not a point
    with path.open("a") as handle:
        handle.write('{"step": 5, "stage": "train", "lo')  # the line being written right now
    assert update_loss_table(table, path) == 3
    assert column(table, "step") == [1, 2, 3] and column(table, "loss") == pytest.approx([0.9, 0.7, 0.65])
    assert table.GetTable().GetColumnByName("loss").GetClassName() == "vtkDoubleArray"

    series, chart = loss_chart(scene, table)
    assert series.IsA("vtkMRMLPlotSeriesNode") and chart.IsA("vtkMRMLPlotChartNode")
    assert series.GetTableNodeID() == table.GetID()
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("step", "loss")
    assert chart.GetPlotSeriesNodeID() == series.GetID()
    assert loss_chart(scene, table) == (series, chart)  # reused, not duplicated
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1

    with path.open("a") as handle:
        handle.write('ss": 0.5, "epoch": 2}\n')  # the line completed
    assert update_loss_table(table, path) == 4 and column(table, "loss")[-1] == pytest.approx(0.5)


def test_training_arguments_and_the_disabled_ssl_path(phantom_cohort, tmp_path):
    assert resolve_manifest(phantom_cohort.parent) == phantom_cohort
    with pytest.raises(TrainingError, match="has no manifest.csv"):
        resolve_manifest(tmp_path)
    with pytest.raises(TrainingError, match="not a manifest .csv file"):
        resolve_manifest(tmp_path / "missing.csv")

    settings = TrainingSettings(phantom_cohort.parent, tmp_path / "b", epochs=3, device="cpu", cache=tmp_path / "c",
                                tumour_weight=1.0)
    arguments = training_arguments(settings, tmp_path / "m.jsonl")
    assert arguments[:5] == ["train-baseline", "--manifest", str(phantom_cohort), "--out", str(tmp_path / "b")]
    assert arguments[arguments.index("--metrics") + 1] == str(tmp_path / "m.jsonl")
    assert arguments[arguments.index("--cache") + 1] == str(tmp_path / "c")
    assert arguments[arguments.index("--tumour-weight") + 1] == "1.0"
    assert arguments[arguments.index("--progress") + 1] == "json"

    commands = core_commands()
    assert {"predict", "train-baseline", "phantom"} <= commands
    assert pretrain_available(commands) == ("pretrain" in commands)
    ssl = TrainingSettings(phantom_cohort, tmp_path / "b", ssl_method="dino", dro=True)
    if "pretrain" not in commands:  # today: refused, never faked
        with pytest.raises(TrainingError, match=PRETRAIN_MISSING):
            training_arguments(ssl, tmp_path / "m.jsonl")
    arguments = training_arguments(ssl, tmp_path / "m.jsonl", commands={"pretrain", "train-baseline"})
    assert arguments[:5] == ["pretrain", "--manifest", str(phantom_cohort), "--method", "dino"]
    assert arguments[arguments.index("--group-column") + 1] == "site" and "--dro" in arguments


def small_settings(manifest: Path, out: Path) -> TrainingSettings:
    return TrainingSettings(manifest, out, epochs=2, device="cpu", size=32, spacing=6.0, widen=0.125,
                            name="trained-in-test")


def test_a_real_training_run_registers_a_bundle(scene, phantom_cohort, tmp_path):
    job = TrainingJob(small_settings(phantom_cohort, tmp_path / "bundles" / "mine"), python=sys.executable).start()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "loss")
    stages, rows_seen = set(), []
    while not job.finished:
        stages |= {e.stage for e in job.poll()}
        rows_seen.append(update_loss_table(table, job.metrics_path))
        time.sleep(0.2)
    stages |= {e.stage for e in job.poll()}
    bundle = job.bundle()
    assert {"train", "heads", "done"} <= stages
    rows = update_loss_table(table, job.metrics_path)
    assert rows >= 2 and all(math.isfinite(v) for v in column(table, "loss"))
    assert rows_seen == sorted(rows_seen)

    registry = BundleRegistry(tmp_path / "settings")
    entry = registry.register(bundle)
    assert entry.name == "trained-in-test" and entry.path == bundle.resolve()
    listed = available_bundles(registry)
    assert listed[0].name == "neuroradfm-demo"  # the demo bundle stays the default
    assert listed[1] == entry
    from neuroradfm.models.bundle import load_bundle

    assert load_bundle(listed[1].path).name == "trained-in-test"


def test_cancelled_training_leaves_no_bundle(phantom_cohort, tmp_path):
    out = tmp_path / "cancelled"
    job = TrainingJob(small_settings(phantom_cohort, out), python=sys.executable).start()
    deadline = time.monotonic() + 60
    while not job.poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    assert job.returncode is not None and job.returncode < 0
    with pytest.raises(TrainingError, match="cancelled"):
        job.bundle()
    assert not out.exists() and not list(tmp_path.glob(".cancelled.partial-*"))


def test_bundle_registry(tiny_bundle, tmp_path):
    registry = BundleRegistry(tmp_path)
    assert registry.entries() == []
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    registry.register(tiny_bundle)
    registry.register(copy)
    registry.register(tiny_bundle)  # registered again: moves to the top, not duplicated
    assert [e.path for e in registry.entries()] == [tiny_bundle.resolve(), copy.resolve()]
    shutil.rmtree(copy)  # a deleted bundle disappears from the list
    assert [e.path for e in registry.entries()] == [tiny_bundle.resolve()]
    stored = json.loads(registry.file.read_text())["bundles"]
    assert len(stored) == 2  # kept on file: it comes back if the folder is restored
    with pytest.raises(ValueError, match=rf"{tmp_path}: not a NeuroRADFM model bundle"):
        bundle_entry(tmp_path)
    registry.unregister(tiny_bundle)
    assert registry.entries() == []
