"""NeuroRADFMTrain's logic: a real training run out of process, the live loss curve (table + plot nodes)
from the metrics file, cancel, the bundle registry the NeuroRADFM module reads; and the self-supervised path:
pretrain then fit-heads as one job, cancel keeping the checkpoint, resume into a complete, predicting bundle."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it


from neuroradfm import cli  # noqa: E402
from neuroradfm.dro import MODES as core_dro_modes  # noqa: E402
from neuroradfm.metrics import MetricsLog  # noqa: E402
from neuroradfm.models.bundle import load_bundle  # noqa: E402
from neuroradfm.ssl import METHODS as core_ssl_methods  # noqa: E402
from NeuroRADFMLib.bundles import BundleRegistry, available_bundles, bundle_entry  # noqa: E402
from NeuroRADFMLib.training import (  # noqa: E402
    DRO_MODES,
    PRETRAIN_MISSING,
    PRETRAIN_SHARE,
    REPORT_MISSING,
    RESUME_BASELINE,
    SSL_METHODS,
    SSL_ONLY,
    TrainingError,
    TrainingJob,
    TrainingSettings,
    control_states,
    core_commands,
    loss_chart,
    method_description,
    pretrain_available,
    resolve_manifest,
    training_steps,
    update_loss_table,
)


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


def test_loss_table_runs_on_through_a_second_stage(scene, tmp_path):
    """Pretraining then fine-tuning: two stages whose steps each start at 1 make one curve, left to right."""
    path = tmp_path / "run.metrics.jsonl"
    log = MetricsLog(path)
    for step, loss in enumerate([0.66, 0.6, 0.55], 1):
        log(step, stage="pretrain", epoch=1, loss=loss)
    for step, loss in enumerate([0.7, 0.5], 1):
        log(step, stage="train", epoch=1, loss=loss)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "loss")
    assert update_loss_table(table, path) == 5
    assert column(table, "step") == [1, 2, 3, 4, 5] and column(table, "loss") == pytest.approx([0.66, 0.6, 0.55,
                                                                                                 0.7, 0.5])
    assert column(table, "stage") == ["pretrain"] * 3 + ["train"] * 2


def test_training_steps_for_the_supervised_stand_in(phantom_cohort, tmp_path):
    assert resolve_manifest(phantom_cohort.parent) == phantom_cohort
    with pytest.raises(TrainingError, match="has no manifest.csv"):
        resolve_manifest(tmp_path)
    with pytest.raises(TrainingError, match="not a manifest .csv file"):
        resolve_manifest(tmp_path / "missing.csv")

    settings = TrainingSettings(phantom_cohort.parent, tmp_path / "b", epochs=3, device="cpu", cache=tmp_path / "c",
                                tumour_weight=1.0)
    [step] = training_steps(settings)
    arguments = step.arguments
    assert arguments[:5] == ["train-baseline", "--manifest", str(phantom_cohort), "--out", str(tmp_path / "b")]
    assert arguments[arguments.index("--metrics") + 1] == str(tmp_path / "b.metrics.jsonl")
    assert arguments[arguments.index("--cache") + 1] == str(tmp_path / "c")
    assert arguments[arguments.index("--tumour-weight") + 1] == "1.0"
    assert arguments[arguments.index("--progress") + 1] == "json"
    assert (step.start, step.end) == (0.0, 1.0)
    cli._parser().parse_args(arguments)  # the core's own parser accepts it
    for wrong, message in [(dict(resume=True), "supervised stand-in .* cannot resume"),
                           (dict(dro=True), "Group-DRO applies to self-supervised"),
                           (dict(pretrain_options=("--arch", "resnet18")), "--arch resnet18: applies to self"),
                           (dict(fine_tune_epochs=3), "fine-tuning a pretrained encoder applies to self")]:
        with pytest.raises(TrainingError, match=message):
            training_steps(replace(settings, **wrong))


def test_training_steps_for_self_supervised_pretraining(phantom_cohort, tmp_path):
    assert set(SSL_METHODS) == set(core_ssl_methods)
    assert {m.removesuffix("-sampled") for m in DRO_MODES} == set(core_dro_modes) - {"erm"}
    commands = core_commands()
    assert {"predict", "train-baseline", "phantom", "pretrain", "fit-heads"} <= commands
    assert pretrain_available(commands) and not pretrain_available({"train-baseline", "pretrain"})
    out = tmp_path / "mine"
    settings = TrainingSettings(phantom_cohort, out, epochs=5, device="cpu", ssl_method="dino", dro=True,
                                dro_mode="worst-group", group_column="scanner", size=32, name="My model",
                                pretrain_options=("--arch", "resnet18", "--max-steps", "7"))
    pretrain, heads = training_steps(settings)
    a = pretrain.arguments
    assert a[:5] == ["pretrain", "--manifest", str(phantom_cohort), "--method", "dino"]
    option = {key: a[a.index(key) + 1] for key in ("--out", "--checkpoint", "--metrics", "--cache", "--dro-mode",
                                                    "--group-column", "--epochs", "--size", "--arch", "--max-steps")}
    assert option == {"--out": f"{out}.encoder", "--checkpoint": f"{out}.encoder.checkpoint.pt",
                      "--metrics": f"{out}.metrics.jsonl", "--cache": f"{out}.encoder.cache",
                      "--dro-mode": "worst-group", "--group-column": "scanner", "--epochs": "5", "--size": "32",
                      "--arch": "resnet18", "--max-steps": "7"}
    assert "--dro" in a and "--resume" not in a and a[-2:] == ["--progress", "json"]
    h = heads.arguments
    assert h[:3] == ["fit-heads", "--model", f"{out}.encoder"] and h[h.index("--out") + 1] == str(out)
    assert h[h.index("--cache") + 1] == f"{out}.encoder.cache" and h[h.index("--name") + 1] == "My model"
    assert (pretrain.start, pretrain.end, heads.start, heads.end) == (0.0, PRETRAIN_SHARE, PRETRAIN_SHARE, 1.0)
    for arguments in (a, h):
        cli._parser().parse_args(arguments)  # the core's own parser accepts both

    exponentiated = training_steps(replace(settings, dro_mode="exponentiated", cache=tmp_path / "c"))[0].arguments
    assert exponentiated[exponentiated.index("--dro-mode") + 1] == "exponentiated"
    assert "--dro-sampling" not in exponentiated
    sampled = training_steps(replace(settings, dro_mode="exponentiated-sampled", cache=tmp_path / "c"))[0].arguments
    assert sampled[sampled.index("--dro-mode") + 1] == "exponentiated" and "--dro-sampling" in sampled
    assert exponentiated[exponentiated.index("--cache") + 1] == str(tmp_path / "c")
    erm = training_steps(replace(settings, dro=False))[0].arguments
    assert not {"--dro", "--dro-mode", "--group-column"} & set(erm)

    with pytest.raises(TrainingError, match=rf"{out}.encoder.checkpoint.pt: no checkpoint to resume from"):
        training_steps(replace(settings, resume=True))
    Path(f"{out}.encoder.checkpoint.pt").write_bytes(b"")  # the core checks the content; the Lib that it is there
    assert "--resume" in training_steps(replace(settings, resume=True))[0].arguments
    for wrong, message in [(dict(ssl_method="simclr"), "SSL method 'simclr'"),
                           (dict(dro_mode="soft"), "Group-DRO mode 'soft'"),
                           (dict(group_column=" "), "needs a group column"),
                           (dict(tumour_weight=1.0), "supervised training only"),
                           (dict(pretrain_options=("--out", "x", "--resume")), "--out, --resume are set by")]:
        with pytest.raises(TrainingError, match=message):
            training_steps(replace(settings, **wrong))
    with pytest.raises(TrainingError, match=PRETRAIN_MISSING):
        training_steps(settings, commands={"train-baseline"})

    # fine-tuning instead of heads on the frozen encoder: train-baseline --init, the tumour weight allowed
    first, tune = training_steps(replace(settings, fine_tune_epochs=4, tumour_weight=0.5))
    assert first.arguments == a and tune.label == "fine-tuning"
    t = tune.arguments
    assert t[:5] == ["train-baseline", "--manifest", str(phantom_cohort), "--out", str(out)]
    option = {key: t[t.index(key) + 1] for key in ("--init", "--epochs", "--metrics", "--cache", "--tumour-weight",
                                                    "--name")}
    assert option == {"--init": f"{out}.encoder", "--epochs": "4", "--metrics": f"{out}.metrics.jsonl",
                      "--cache": f"{out}.encoder.cache", "--tumour-weight": "0.5", "--name": "My model"}
    assert "--size" not in t and "--arch" not in t  # the encoder bundle sets the architecture and the grid
    assert (tune.start, tune.end) == (PRETRAIN_SHARE, 1.0)
    cli._parser().parse_args(t)
    with pytest.raises(TrainingError, match="fine-tune epochs: -1"):
        training_steps(replace(settings, fine_tune_epochs=-1))


def test_control_states_follow_the_core_and_the_choices():
    states = control_states(pretrain=False, ssl=True, dro=True)
    assert {k for k, (enabled, _) in states.items() if enabled} == {"tumour_weight"}
    assert states["method"][1] == PRETRAIN_MISSING and states["report"] == (False, REPORT_MISSING)
    baseline = control_states(pretrain=True, ssl=False, dro=True)
    assert {k for k, (enabled, _) in baseline.items() if enabled} == {"ssl", "tumour_weight"}
    assert baseline["resume"] == (False, RESUME_BASELINE)
    ssl = control_states(pretrain=True, ssl=True, dro=False)
    assert {k for k, (enabled, _) in ssl.items() if enabled} == {"ssl", "method", "dro", "resume", "fine_tune"}
    assert "checkpoint" in ssl["resume"][1] and ssl["tumour_weight"][1]
    dro = control_states(pretrain=True, ssl=True, dro=True)
    assert {k for k, (enabled, _) in dro.items() if enabled} == {"ssl", "method", "dro", "dro_mode",
                                                                 "group_column", "resume", "fine_tune"}
    tuned = control_states(pretrain=True, ssl=True, dro=False, fine_tune=True)
    assert tuned["tumour_weight"] == (True, "") and tuned["fine_tune"][0]
    assert baseline["fine_tune"] == (False, SSL_ONLY)
    assert "fine-tuning" in method_description(True, True) and "frozen" in method_description(True, False)
    assert "stand-in" in method_description(False, True)


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
    assert load_bundle(listed[1].path).name == "trained-in-test"


def test_cancelled_training_leaves_no_bundle(phantom_cohort, tmp_path):
    out = tmp_path / "cancelled"
    job = TrainingJob(small_settings(phantom_cohort, out), python=sys.executable).start()
    deadline = time.monotonic() + 60
    while not job.poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    job.process.wait(timeout=60)  # cancel() does not block (the GUI); this waits for the core to unwind
    assert job.finished and job.returncode not in (None, 0)  # SIGTERM: the core exits with 143 after cleaning up
    with pytest.raises(TrainingError, match="cancelled"):
        job.bundle()
    assert not out.exists() and not list(tmp_path.glob(".cancelled.partial-*"))


TINY_PRETRAIN = ("--arch", "resnet10", "--crop", "32", "--batch-size", "4", "--max-steps", "3", "--no-n4",
                 "--workers", "0", "--hidden-dim", "32", "--proj-dim", "16", "--lr", "1e-3", "--checkpoint-every", "1")


def test_self_supervised_job_cancel_keeps_the_checkpoint_and_resume_completes_a_predicting_bundle(
        scene, phantom_cohort, tmp_path):
    out = tmp_path / "bundles" / "ssl"
    settings = TrainingSettings(phantom_cohort, out, epochs=1, device="cpu", ssl_method="byol", dro=True,
                                dro_mode="worst-group", size=32, spacing=4.0, widen=0.125, name="ssl-in-test",
                                pretrain_options=TINY_PRETRAIN)
    job = TrainingJob(settings, python=sys.executable).start()
    assert job.ssl and job.checkpoint == out.with_name("ssl.encoder.checkpoint.pt")
    deadline = time.monotonic() + 120
    while not job.checkpoint.is_file() and not job.finished and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.step_index == 0 and job.checkpoint.is_file()
    job.cancel()  # during the pretraining, after step 1's checkpoint
    job.process.wait(timeout=60)  # cancel() does not block (the GUI); this waits for the core to unwind
    assert job.finished and job.returncode not in (None, 0)
    with pytest.raises(TrainingError, match="cancelled"):
        job.bundle()
    assert "Resume" in job.cancel_summary() and str(job.checkpoint) in job.cancel_summary()
    assert not out.exists() and not job.paths.encoder.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder or temp file
    assert 1 <= torch.load(job.checkpoint, weights_only=True)["step"] < 3

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "loss")
    events, rows_seen = [], []

    def follow(job: TrainingJob, until) -> None:
        deadline = time.monotonic() + 240
        while not until(job) and time.monotonic() < deadline:
            events.extend(job.poll())
            rows_seen.append(update_loss_table(table, job.metrics_path))
            time.sleep(0.1)

    job = TrainingJob(replace(settings, resume=True), python=sys.executable).start()
    follow(job, lambda job: job.finished or job.step_index == 1)
    assert job.step_index == 1 and not job.finished  # the pretraining ended well: fit-heads runs now
    job.cancel()  # during fit-heads: no bundle, the complete encoder and the checkpoint stay
    job.process.wait(timeout=60)
    assert not out.exists() and load_bundle(job.paths.encoder).heads is None
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert torch.load(job.checkpoint, weights_only=True)["step"] == 3
    resumed_stages = {e.stage for e in events}
    assert {"resume", "pretrain", "pretrained", "fit-heads"} <= resumed_stages

    events.clear()
    rows_seen.clear()
    job = TrainingJob(replace(settings, resume=True), python=sys.executable).start()  # at the last step: heads only
    follow(job, lambda job: job.finished)
    events += job.poll()
    bundle = job.bundle()
    stages = [e.stage for e in events]
    assert {"resume", "pretrained", "fit-heads", "heads", "done"} <= set(stages) and "pretrain" not in stages
    progress = [e.progress for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    heads_start = stages.index("fit-heads")
    assert max(progress[:heads_start]) <= PRETRAIN_SHARE and min(progress[heads_start:]) >= PRETRAIN_SHARE
    assert update_loss_table(table, job.metrics_path) == 3 and column(table, "step") == [1, 2, 3]
    assert all(math.isfinite(v) for v in column(table, "loss")) and rows_seen == sorted(rows_seen)

    complete = load_bundle(bundle)
    assert complete.heads is not None and complete.heads.markers and complete.name == "ssl-in-test"
    training = complete.card["training"]
    assert training["method"] == "self-supervised byol" and training["dro"] == "worst-group"
    assert training["steps"] == 3 and training["heads"]["cases"] == 16
    entry = BundleRegistry(tmp_path / "settings").register(bundle)
    assert available_bundles(BundleRegistry(tmp_path / "settings"))[1] == entry
    assert load_bundle(job.paths.encoder).heads is None and job.checkpoint.is_file()
    with pytest.raises(ValueError, match="encoder-only bundle .*fit-heads"):  # never listed by NeuroRADFM
        BundleRegistry(tmp_path / "settings").register(job.paths.encoder)
    assert not job.paths.cache.exists()  # no cache was asked for: the job's own one is removed at the end
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]


def test_self_supervised_job_with_fine_tuning_completes_a_predicting_bundle(scene, phantom_cohort, tmp_path):
    out = tmp_path / "bundles" / "tuned"
    settings = TrainingSettings(phantom_cohort, out, epochs=1, device="cpu", ssl_method="byol", size=32,
                                spacing=4.0, widen=0.125, name="tuned-in-test", pretrain_options=TINY_PRETRAIN,
                                fine_tune_epochs=1, tumour_weight=0.5)
    job = TrainingJob(settings, python=sys.executable).start()
    events = job.wait(timeout=300)
    bundle = load_bundle(job.bundle())
    stages = [e.stage for e in events]
    assert {"pretrain", "pretrained", "fine-tune", "train", "done"} <= set(stages)
    assert stages.index("fine-tune") > stages.index("pretrained")
    assert bundle.heads is not None and bundle.heads.markers and bundle.name == "tuned-in-test"
    pretraining = bundle.card["training"]["pretraining"]  # the fine-tuned bundle names the encoder it began from
    assert pretraining["method"] == "self-supervised byol" and pretraining["steps"] == 3
    assert bundle.encoder.config.widen_factor == 0.125
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "loss")
    rows = update_loss_table(table, job.metrics_path)
    stage_column = column(table, "stage")
    assert rows > 3 and stage_column[:3] == ["pretrain"] * 3 and set(stage_column[3:]) == {"train"}
    assert column(table, "step") == list(range(1, rows + 1))


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
