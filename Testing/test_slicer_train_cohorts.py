"""NeuroRADFMTrain's cohort selector (NeuroRADFMLib.cohorts): a downloaded dataset folder + layout imported into the
output folder and checked, the check as table rows and a real table node, its status; training refused while the
check has errors; the same import and check out of process, as the widget runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

from neuroradfm.cohort.importer import CLINICAL_TABLES, LAYOUTS  # noqa: E402
from NeuroRADFMLib.cohorts import (  # noqa: E402
    CHECK_COLUMNS,
    CHECK_TABLE_NAME,
    MANIFEST_SOURCE,
    CohortCheckJob,
    CohortError,
    check_button_text,
    check_rows,
    check_table,
    cohort_source,
    cohort_states,
    import_and_check,
    imported_manifest_path,
    report_from_json,
    report_to_json,
    run_check,
    source_choices,
)
from NeuroRADFMLib.training import TrainingError, TrainingJob, TrainingSettings, training_steps  # noqa: E402

SEQUENCE_SUFFIXES = ("t1", "t1ce", "t2", "flair", "seg")
GEOMETRY = "8x8x8 @ 1x1x1 mm LPS"


def brats2021_case(root: Path, case_id: str = "BraTS2021_00001") -> Path:
    """A BraTS 2021 case folder as the challenge zip has it: <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, 8^3 voxels
    (each case its own values: identical scans under two ids are a check warning)."""
    folder = root / case_id
    folder.mkdir(parents=True)
    value = int(case_id.rsplit("_", 1)[-1])
    for index, suffix in enumerate(SEQUENCE_SUFFIXES):
        image = sitk.GetImageFromArray(np.full((8, 8, 8), value * 10 + index, np.int16))
        sitk.WriteImage(image, str(folder / f"{case_id}_{suffix}.nii.gz"))
    return folder


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def column(table, name: str) -> list[str]:
    array = table.GetTable().GetColumnByName(name)
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


@pytest.fixture
def download(tmp_path) -> Path:
    root = tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData"
    brats2021_case(root)
    brats2021_case(root, "BraTS2021_00002")
    return root


def test_the_selector_offers_a_manifest_and_every_layout_of_the_core():
    choices = source_choices()
    assert choices[0][0] == MANIFEST_SOURCE and [data for data, _ in choices[1:]] == list(LAYOUTS)
    assert check_button_text(MANIFEST_SOURCE) == "Check cohort"
    for layout in LAYOUTS:
        states = cohort_states(layout)
        assert states["clinical"][0] == (layout in CLINICAL_TABLES)
        if layout in CLINICAL_TABLES:
            assert CLINICAL_TABLES[layout] in states["clinical"][1]
        assert states["check"][0] and check_button_text(layout) == "Import and check"
        assert states["check"][1].endswith("then check it: files, geometry and labels per site, subjects, survival")
        assert imported_manifest_path("/out", layout) == Path("/out") / f"{layout}-manifest.csv"
    assert cohort_states(MANIFEST_SOURCE)["clinical"][0] is False
    assert cohort_states("brats2021", "check")["check"] == (True, "cancel the cohort check")
    assert cohort_states("upenn-gbm", "train")["check"][0] is False
    assert cohort_states("upenn-gbm", "train")["clinical"][0] is False


def test_import_and_check_writes_only_in_the_output_folder_and_gives_site_geometry_and_status(download, tmp_path,
                                                                                               scene):
    out = tmp_path / "my output"
    before = files_under(tmp_path)
    manifest, report = import_and_check(download, "brats2021", None, out)
    assert manifest == out.resolve() / "brats2021-manifest.csv" and manifest.is_file()
    written = files_under(tmp_path) - before
    assert written == {manifest, manifest.with_name("brats2021-manifest.import.json")}
    assert all(out.resolve() in p.resolve().parents for p in written)
    assert files_under(download) == {p for p in before if download in p.parents}  # the download is untouched

    rows = check_rows(report)
    assert rows[0] == {"section": "status", "site": "all", "item": "clean", "cases": 2,
                       "value": "2 cases, 0 errors, 0 warnings"}
    assert {"section": "geometry", "site": "brats2021", "item": GEOMETRY, "cases": 2, "value": "2 cases"} in rows
    assert not [r for r in rows if r["section"] in ("error", "warning", "labels")]

    table = check_table(scene, report)
    assert table.GetName() == CHECK_TABLE_NAME and table.GetLocked()
    assert [table.GetTable().GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(CHECK_COLUMNS)
    assert column(table, "section") == ["status", "geometry"] and column(table, "item") == ["clean", GEOMETRY]
    assert column(table, "site") == ["all", "brats2021"]
    assert check_table(scene, report) is table and scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1


def test_label_prevalence_per_site_and_warnings_are_shown_and_training_is_allowed(download, tmp_path, scene):
    """A manifest picked directly (no import): positive / negative / missing per site; warnings pass."""
    cases = sorted(download.iterdir())
    rows = []
    for index, (case, site, mgmt) in enumerate([(cases[0], "A", "1"), (cases[1], "A", "0"), (cases[0], "B", ""),
                                                (cases[1], "B", "1")]):
        rows.append({"case_id": f"case{index}", "site": site, "subject_id": f"s{index // 2}", "dataset": "d",
                     "timepoint": str(index % 2),
                     **{k: str(case / f"{case.name}_{k}.nii.gz") for k in ("t1", "t1ce", "t2", "flair")},
                     "mgmt": mgmt})
    manifest = write_manifest(tmp_path / "cohort" / "manifest.csv", rows)
    check = run_check(cohort_source(manifest.parent))
    assert check.manifest == manifest and check.status == "warnings" and not check.report.errors
    labels = {(r["site"], r["marker"]): (r["positive"], r["negative"], r["missing"])
              for r in check_rows(check.report) if r["section"] == "labels"}
    assert labels[("A", "mgmt")] == (1, 1, 0) and labels[("B", "mgmt")] == (1, 0, 1)
    label_row = next(r for r in check_rows(check.report) if r["section"] == "labels" and r["site"] == "B")
    assert label_row["item"] == "MGMT promoter"
    assert label_row["value"] == "1 positive (methylated), 0 negative (unmethylated), 1 missing"
    warnings = [r["value"] for r in check_rows(check.report) if r["section"] == "warning"]
    assert warnings == check.report.warnings and any("timepoints" in w for w in warnings)
    assert check.summary().startswith("Cohort check: ") and "training allowed" in check.summary()
    table = check_table(scene, check.report)
    assert "labels" in column(table, "section") and "warning" in column(table, "section")

    settings = TrainingSettings(manifest, tmp_path / "bundle", epochs=1, device="cpu", cohort_check=check)
    assert training_steps(settings)  # warnings: training may start
    manifest.write_text(manifest.read_text() + "\n")  # the manifest changed since the check: check again
    with pytest.raises(CohortError, match="changed since it was checked"):
        training_steps(settings)
    with pytest.raises(CohortError, match="check this cohort first"):
        other = write_manifest(tmp_path / "other.csv", rows)
        training_steps(TrainingSettings(other, tmp_path / "bundle", cohort_check=check))


def test_a_folder_without_cases_is_a_clear_error_and_nothing_is_written(tmp_path):
    root = tmp_path / "downloads" / "not-brats"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "readme.txt").write_text("no cases here")
    out = tmp_path / "out"
    before = files_under(tmp_path)
    with pytest.raises(CohortError, match=r"brats2021 import: .*not-brats: holds no brats2021 case"):
        import_and_check(root, "brats2021", None, out)
    job = CohortCheckJob(cohort_source(root, "brats2021", "", out), python=sys.executable).start()
    job.wait(timeout=120)
    with pytest.raises(CohortError, match="not-brats: holds no brats2021 case") as raised:
        job.result()
    assert not str(raised.value).startswith("error:")
    assert files_under(tmp_path) == before and not out.exists()

    with pytest.raises(CohortError, match="choose an output folder"):
        import_and_check(root, "brats2021", None, "")
    with pytest.raises(CohortError, match="unknown dataset layout 'brats1999'"):
        cohort_source(root, "brats1999", None, out)
    with pytest.raises(CohortError, match="choose a cohort: the brats2021 dataset folder"):
        cohort_source("  ", "brats2021", None, out)
    with pytest.raises(CohortError, match="not imported yet"):
        cohort_source(root, "brats2021", None, out).manifest(imported=True)
    assert not out.exists()


def test_training_is_refused_while_the_check_has_errors(download, tmp_path):
    out = tmp_path / "out"
    check = run_check(cohort_source(download, "brats2021", None, out))
    assert check.status == "clean" and check.current()
    (download / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz").unlink()  # deleted after the import
    rechecked = run_check(cohort_source(check.manifest))
    assert rechecked.status == "errors" and rechecked.report.exit_status() == 2
    assert "BraTS2021_00002: flair file not found" in rechecked.report.errors[0]
    assert rechecked.summary().startswith("Cohort check: 1 error; training is refused until fixed")
    rows = check_rows(rechecked.report)
    assert rows[0]["item"] == "errors" and [r["value"] for r in rows if r["section"] == "error"] == \
        rechecked.report.errors

    settings = TrainingSettings(check.manifest, out / "bundle", epochs=1, device="cpu", cohort_check=rechecked)
    with pytest.raises(TrainingError, match="training refused: the cohort check of .* found 1 error: "
                                            "BraTS2021_00002: flair file not found") as refused:
        TrainingJob(settings, python=sys.executable)  # before any process starts
    assert isinstance(refused.value, CohortError)
    assert not (out / "bundle").exists() and not list(out.glob("bundle*"))


def test_the_widget_job_imports_and_checks_out_of_process(download, tmp_path):
    out = tmp_path / "out"
    job = CohortCheckJob(cohort_source(download, "brats2021", None, out), python=sys.executable)
    assert job.arguments == ["--root", str(download), "--layout", "brats2021", "--out-folder", str(out)]
    events = job.start().wait(timeout=120)
    assert job.process.command[1:3] == ["-m", "NeuroRADFMLib.cohorts"]
    assert [e.stage for e in events][0] == "import" and events[-1].stage == "done" and events[-1].progress == 1.0
    check = job.result()
    assert check.manifest == out.resolve() / "brats2021-manifest.csv" and check.current()
    assert check.status == "clean" and check.report.geometry == {"brats2021": {GEOMETRY: 2}}
    in_process = run_check(cohort_source(check.manifest))
    assert check.report == in_process.report
    assert report_from_json(json.loads(json.dumps(report_to_json(in_process.report)))) == in_process.report

    other = tmp_path / "other"
    cancelled = CohortCheckJob(cohort_source(download, "brats2021", None, other), python=sys.executable).start()
    cancelled.cancel()
    assert cancelled.finished and cancelled.cancel_summary().startswith("Cohort import and check cancelled")
    with pytest.raises(CohortError, match="cancelled"):
        cancelled.result()
    assert not other.exists() or not list(other.glob(".*partial*"))  # no half-written manifest left behind
