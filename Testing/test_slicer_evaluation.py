"""NeuroRADFMTrain's evaluation: the ``neuroradfm evaluate`` command line it builds, the job that runs it out of
process (a real core process: its error, its cancel), whether a report is there to open, and the results table
made from ``metrics.json`` on a real MRML scene."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

from neuroradfm import cli  # noqa: E402
from neuroradfm.demo import demo_bundle_path  # noqa: E402
from NeuroRADFMLib.evaluation import (  # noqa: E402
    SPLITS,
    TABLE_COLUMNS,
    TABLE_NAME,
    EvaluationError,
    EvaluationJob,
    EvaluationSettings,
    evaluation_command,
    evaluation_folder,
    evaluation_states,
    evaluation_table,
    report_button_state,
    report_path,
    report_url,
)
from NeuroRADFMLib.training import REPORT_MISSING, control_states  # noqa: E402

HAS_EVALUATE = "evaluate" in cli.commands()

MANIFEST = "case_id,site,t1,t1ce,t2,flair,mgmt\nc1,site-A,a.nii.gz,b.nii.gz,c.nii.gz,d.nii.gz,1\n"


def cohort_folder(tmp_path: Path) -> Path:
    """A folder holding manifest.csv, as ``neuroradfm phantom`` or ``cohort import`` writes it."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / "manifest.csv").write_text(MANIFEST)
    return folder


def option(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


def test_evaluation_command(tmp_path):
    cohort = cohort_folder(tmp_path)
    settings = EvaluationSettings(cohort, [tmp_path / "erm", tmp_path / "dro"], tmp_path / "eval", split="kfold",
                                  folds=3, seed=7, device="cpu", cache=tmp_path / "cache")
    arguments = evaluation_command(settings)
    assert arguments[:5] == ["-m", "neuroradfm", "evaluate", "--manifest", str(cohort / "manifest.csv")]
    model = arguments.index("--model")
    assert arguments[model + 1:model + 4] == [str(tmp_path / "erm"), str(tmp_path / "dro"), "--out"]
    assert {name: option(arguments, name) for name in ("--out", "--split", "--folds", "--seed", "--device",
                                                        "--cache")} == {
        "--out": str(tmp_path / "eval"), "--split": "kfold", "--folds": "3", "--seed": "7", "--device": "cpu",
        "--cache": str(tmp_path / "cache")}
    assert arguments[-2:] == ["--progress", "json"]

    site = evaluation_command(replace(settings, split="site", cache=None, options=("--bootstrap", "50")))
    assert option(site, "--split") == "site" and "--folds" not in site and "--cache" not in site
    assert "--split-column" not in site and site[-4:] == ["--bootstrap", "50", "--progress", "json"]
    column = evaluation_command(replace(settings, split="column", split_column=" fold "))
    assert option(column, "--split-column") == "fold" and "--folds" not in column
    manifest = cohort / "manifest.csv"
    assert option(evaluation_command(replace(settings, cohort=manifest)), "--manifest") == str(manifest)

    for wrong, message in [(dict(cohort=tmp_path / "none"), "not a manifest .csv file or a folder"),
                           (dict(cohort=tmp_path), "has no manifest.csv"),
                           (dict(bundles=[]), "at least one model bundle"),
                           (dict(bundles=[tmp_path / "erm", tmp_path / "x" / ".." / "erm"]), "the same bundle twice"),
                           (dict(split="random"), "split 'random': use one of kfold, site, column"),
                           (dict(folds=1), "folds: 1"),
                           (dict(split="column"), "a column split needs the name of its manifest column"),
                           (dict(options=("--out=x", "--seed", "1")), "--out, --seed are set by")]:
        with pytest.raises(EvaluationError, match=message):
            evaluation_command(replace(settings, **wrong))
    with pytest.raises(EvaluationError, match="has no manifest.csv"):  # checked before any process starts
        EvaluationJob(replace(settings, cohort=tmp_path))
    assert set(SPLITS) == {"kfold", "site", "column"}


@pytest.mark.skipif(not HAS_EVALUATE, reason="the core has no evaluate command yet")
def test_the_core_parser_accepts_the_evaluation_command(tmp_path):
    settings = EvaluationSettings(cohort_folder(tmp_path), [tmp_path / "a", tmp_path / "b"], tmp_path / "eval",
                                  folds=3, cache=tmp_path / "cache")
    for split in ("kfold", "site", "column"):
        arguments = evaluation_command(replace(settings, split=split, split_column="fold",
                                               options=("--bootstrap", "50")))
        parsed = cli._parser().parse_args(arguments[2:])
        assert (parsed.command, parsed.split, parsed.seed, parsed.bootstrap) == ("evaluate", split, 0, 50)
        assert parsed.model == [tmp_path / "a", tmp_path / "b"] and parsed.out == tmp_path / "eval"
        assert parsed.split_column == ("fold" if split == "column" else None)
        if split == "kfold":
            assert parsed.folds == 3


def test_evaluation_folder():
    assert evaluation_folder("/out", ["/b/erm", ""]) == Path("/out/evaluation-erm")
    assert evaluation_folder("/out", ["/b/erm", "/c/dro"]) == Path("/out/evaluation-erm-vs-dro")


def write_report(out: Path, metrics: str | None) -> Path:
    report = out / "report" / "report.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<html><body>report</body></html>")
    if metrics is not None:
        (report.parent / "metrics.json").write_text(metrics)
    return report


def test_report_path_and_button_state(tmp_path):
    assert report_path(tmp_path / "none") is None
    assert report_button_state(None) == (False, REPORT_MISSING)
    assert control_states(pretrain=True, ssl=False, dro=False)["report"] == (False, REPORT_MISSING)

    report = write_report(tmp_path / "no metrics", None)
    assert report_path(tmp_path / "no metrics") is None  # a report without its metrics.json is not trusted
    write_report(tmp_path / "broken", '{"format": "neuroradfm-evaluation", "results": {')  # being written
    assert report_path(tmp_path / "broken") is None
    write_report(tmp_path / "list", "[1, 2]")
    assert report_path(tmp_path / "list") is None

    out = tmp_path / "my evaluation"
    report = write_report(out, json.dumps({"format": "neuroradfm-evaluation", "results": {}}))
    assert report_path(out) == report
    enabled, tip = report_button_state(report_path(out))
    assert enabled and str(report) in tip
    assert control_states(pretrain=True, ssl=False, dro=False, report=report)["report"] == (enabled, tip)
    url = report_url(report)
    assert url.startswith("file:///") and url.endswith("/my%20evaluation/report/report.html")
    (out / "report" / "report.html").unlink()  # metrics without the page: nothing to open
    assert report_path(out) is None


def test_evaluation_states():
    states = evaluation_states("", "/out", ["/b/erm", ""], "kfold")
    assert states["evaluate"][0] is False and "cohort" in states["evaluate"][1]
    assert evaluation_states("/c", "", ["/b/erm", ""], "kfold")["evaluate"][0] is False
    assert evaluation_states("/c", "/out", ["", ""], "kfold")["evaluate"] == (
        False, "train a bundle, or choose one to evaluate")
    enabled, tip = evaluation_states("/c", "/out", ["/b/erm", "/b/dro"], "kfold")["evaluate"]
    assert enabled and "erm" in tip and "compared with dro" in tip
    assert evaluation_states("/c", "/out", ["/b/erm", ""], "kfold", training=True)["evaluate"][0] is False
    assert evaluation_states("/c", "/out", ["/b/erm", ""], "kfold", evaluating=True)["evaluate"] == (
        True, "cancel the evaluation")
    assert evaluation_states("/c", "/out", ["/b/erm", ""], "kfold")["folds"] == (True, "")
    site = evaluation_states("/c", "/out", ["/b/erm", ""], "site")
    assert not site["folds"][0] and "k-fold" in site["folds"][1]
    assert site["split_column"] == (False, "applies to the column split")
    column = evaluation_states("/c", "/out", ["/b/erm", ""], "column")
    assert column["split_column"] == (True, "") and not column["folds"][0]


def pooled(auc, ci, bacc, n):
    return {"status": "ok", "n": n, "n_pos": n // 2, "n_neg": n - n // 2, "auc": auc, "auc_ci": ci,
            "balanced_accuracy": bacc}


METRICS = {
    "format": "neuroradfm-evaluation", "format_version": 1,
    "results": {
        "erm": {
            "markers": {  # not in MARKER_KEYS order: the table is
                "idh1": {"status": "not evaluable", "reason": "idh1: 1 positive / 9 negative"},
                "mgmt": {"status": "ok", "pooled": pooled(0.81, [0.72, 0.89], 0.74, 90), "sites": {},
                         "folds_not_evaluable": ["fold 3: 1 positive / 17 negative in training"]},
            },
            "survival": {"status": "ok", "subgroup": "idh1 == 0 (IDH-wildtype)", "n": 60, "events": 45,
                         "pooled": {"c_index": 0.66, "c_index_ci": [0.6, 0.71]}},
        },
        "dro": {
            "markers": {"mgmt": {"status": "ok", "pooled": pooled(0.5, [None, None], 0.5, 10),
                                 "folds_not_evaluable": []}},
            "survival": {"status": "not evaluable", "reason": "no os_days / os_event columns in the manifest",
                         "subgroup": "all cases"},
        },
    },
}


def table_rows(table) -> list[dict]:
    vtk_table = table.GetTable()
    names = [vtk_table.GetColumnName(i) for i in range(vtk_table.GetNumberOfColumns())]
    return [{name: vtk_table.GetColumnByName(name).GetValue(r) for name in names}
            for r in range(vtk_table.GetNumberOfRows())]


def test_evaluation_table(scene, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(METRICS))
    table = evaluation_table(scene, path)
    assert table.IsA("vtkMRMLTableNode") and table.GetName() == TABLE_NAME
    vtk_table = table.GetTable()
    assert [vtk_table.GetColumnName(i) for i in range(vtk_table.GetNumberOfColumns())] == list(TABLE_COLUMNS)
    assert vtk_table.GetColumnByName("AUC / c-index").GetClassName() == "vtkDoubleArray"
    assert vtk_table.GetColumnByName("95% CI").GetClassName() == "vtkStringArray"
    rows = table_rows(table)
    assert [(r["bundle"], r["target"]) for r in rows] == [
        ("erm", "MGMT promoter"), ("erm", "IDH1"), ("erm", "overall survival (idh1 == 0 (IDH-wildtype))"),
        ("dro", "MGMT promoter"), ("dro", "overall survival (all cases)")]
    mgmt, idh1, survival, dro_mgmt, dro_survival = rows
    assert (mgmt["AUC / c-index"], mgmt["95% CI"], mgmt["balanced accuracy"], mgmt["n"]) == (
        pytest.approx(0.81), "0.720-0.890", pytest.approx(0.74), 90)
    assert mgmt["status"] == "ok; fold 3: 1 positive / 17 negative in training"
    assert idh1["status"] == "not evaluable: idh1: 1 positive / 9 negative"
    assert math.isnan(idh1["AUC / c-index"]) and math.isnan(idh1["n"]) and idh1["95% CI"] == ""
    assert (survival["AUC / c-index"], survival["95% CI"], survival["n"], survival["status"]) == (
        pytest.approx(0.66), "0.600-0.710", 60, "ok")
    assert math.isnan(survival["balanced accuracy"])  # not a classification
    assert dro_mgmt["95% CI"] == "not estimable" and dro_mgmt["status"] == "ok"
    assert dro_survival["status"] == "not evaluable: no os_days / os_event columns in the manifest"

    rerun = json.loads(json.dumps(METRICS))
    del rerun["results"]["dro"]
    rerun["results"]["erm"]["markers"]["mgmt"]["pooled"]["auc"] = 0.9
    path.write_text(json.dumps(rerun))
    assert evaluation_table(scene, path) is table  # the same node, its rows replaced
    assert len(table_rows(table)) == 3 and table_rows(table)[0]["AUC / c-index"] == pytest.approx(0.9)
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    other = evaluation_table(scene, path, name="second evaluation")
    assert other is not table and scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 2

    path.write_text('{"results": {"erm": ')
    with pytest.raises(EvaluationError, match=f"{path}: not a readable evaluation metrics.json"):
        evaluation_table(scene, path)
    path.write_text('{"format": "neuroradfm-evaluation"}')
    with pytest.raises(EvaluationError, match="no results"):
        evaluation_table(scene, path)


def settings_for_job(tmp_path: Path) -> EvaluationSettings:
    return EvaluationSettings(cohort_folder(tmp_path), [demo_bundle_path()], tmp_path / "eval", device="cpu")


@pytest.mark.skipif(not HAS_EVALUATE, reason="the core has no evaluate command yet")
def test_evaluation_job_reports_the_core_error(tmp_path):
    """A manifest gone between the request and the run: the core itself says so (exit 2), naming the file."""
    settings = settings_for_job(tmp_path)
    job = EvaluationJob(settings, python=sys.executable)
    assert job.arguments == evaluation_command(settings)
    assert not job.finished and job.poll() == [] and job.returncode is None
    manifest = settings.cohort / "manifest.csv"
    manifest.unlink()
    job.start()
    assert job.process.command == [sys.executable, *job.arguments]
    job.wait(timeout=300)
    assert job.finished and job.returncode == 2
    with pytest.raises(EvaluationError, match="exit status 2") as error:
        job.report()
    assert f"error: {manifest}: manifest not found" in str(error.value)  # the core's message, not a usage text
    assert report_path(settings.out) is None


def test_evaluation_job_cancel(tmp_path):
    job = EvaluationJob(settings_for_job(tmp_path), python=sys.executable).start()
    assert job.out.is_dir()
    job.cancel()  # at once: the core is still starting
    assert job.finished and job.cancelled and job.returncode not in (None, 0)
    with pytest.raises(EvaluationError, match="cancelled"):
        job.report()
    summary = job.cancel_summary()
    assert summary.startswith("Evaluation cancelled") and str(tmp_path / "eval" / "cache") in summary
    assert report_path(job.out) is None


@pytest.mark.skipif(not HAS_EVALUATE, reason="the core has no evaluate command yet")
def test_a_real_evaluation_fills_the_table(scene, phantom_cohort, tiny_bundle, tmp_path):
    """The core's own metrics.json (not a hand-written one) makes the table: one row per marker and survival."""
    settings = EvaluationSettings(phantom_cohort, [tiny_bundle], tmp_path / "eval", split="kfold", folds=2,
                                  device="cpu", options=("--bootstrap", "20", "--efficiency-seeds", "0"))
    job = EvaluationJob(settings, python=sys.executable).start()
    events = job.wait(timeout=600)
    report = job.report()
    assert report == tmp_path / "eval" / "report" / "report.html" and report_path(settings.out) == report
    assert events and events[-1].progress == 1.0
    metrics = json.loads((report.parent / "metrics.json").read_text())
    table = evaluation_table(scene, report.parent / "metrics.json")
    rows = table_rows(table)
    [label] = metrics["results"]
    markers = metrics["results"][label]["markers"]
    assert len(rows) == len(markers) + 1 and {r["bundle"] for r in rows} == {label}
    assert rows[-1]["target"].startswith("overall survival")
    for row in rows:
        assert row["status"] == "ok" or row["status"].startswith(("ok; ", "not evaluable: "))
        if row["status"].startswith("ok"):
            assert 0.0 <= row["AUC / c-index"] <= 1.0 and row["n"] > 0
