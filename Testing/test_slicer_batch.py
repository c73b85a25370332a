"""The console batch API (process a folder or manifest, one results table node) and the first-use device list.
The dependency checks are in test_slicer_dependencies.py."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it


from NeuroRADFMLib.batch import COHORT_COLUMNS, cohort_cases, process_cohort  # noqa: E402
from NeuroRADFMLib.devices import list_devices  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cell(table, row: int, name: str):
    return table.GetTable().GetValueByName(row, name)


def test_process_cohort_writes_one_table_with_every_case_and_failure(scene, phantom_cohort, tiny_bundle, tmp_path):
    cohort = tmp_path / "cohort"
    for name in ("BraTS-PHN-00003-000", "BraTS-PHN-00004-000"):
        shutil.copytree(phantom_cohort.parent / name, cohort / name)
    broken = cohort / "BraTS-PHN-99999-000"
    broken.mkdir()
    (broken / "BraTS-PHN-99999-000-t1n.nii.gz").write_bytes(b"not an image")

    assert [case_id for case_id, _ in cohort_cases(cohort)] == [
        "BraTS-PHN-00003-000", "BraTS-PHN-00004-000", "BraTS-PHN-99999-000"]
    result = process_cohort(cohort, tiny_bundle, tmp_path / "out", device="cpu", scene=scene)

    assert sorted(result.outputs) == ["BraTS-PHN-00003-000", "BraTS-PHN-00004-000"]
    assert list(result.failures) == ["BraTS-PHN-99999-000"] and "BraTS-PHN-99999-000" in result.failures[
        "BraTS-PHN-99999-000"]
    table = result.table
    assert table.IsA("vtkMRMLTableNode") and table.GetScene() is scene
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(COHORT_COLUMNS)

    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        written = list(csv.DictReader(handle))  # the core's gathered table, one row per case and output
    assert table.GetNumberOfRows() == len(written) + 1
    for row, expected in enumerate(written):
        assert cell(table, row, "case_id").ToString() == expected["case_id"]
        assert cell(table, row, "Output").ToString() == expected["output"]
        assert cell(table, row, "Call").ToString() == expected["call"]
        if expected["probability"]:
            assert cell(table, row, "Probability").ToDouble() == pytest.approx(float(expected["probability"]),
                                                                              abs=5e-5)
        assert cell(table, row, "Error").ToString() == ""
    last = table.GetNumberOfRows() - 1
    assert cell(table, last, "case_id").ToString() == "BraTS-PHN-99999-000"
    assert "BraTS-PHN-99999-000" in cell(table, last, "Error").ToString()
    assert (tmp_path / "out" / "failures.csv").is_file()

    with pytest.raises(ValueError, match="not a manifest .csv file or a folder"):
        cohort_cases(tmp_path / "nothing-here")


def test_devices_list_cpu_and_each_cuda_gpu():
    import torch

    devices = list_devices()
    assert devices[-1] == ("cpu", "CPU")
    gpus = [d for d, _ in devices if d.startswith("cuda:")]
    assert gpus == [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    for device, label in devices[:-1]:
        assert torch.cuda.get_device_name(int(device.split(":")[1])) in label


def test_demo_case_files(tmp_path):
    from neuroradfm.io import classify_series
    from NeuroRADFMLib.demo_case import demo_case

    files = demo_case(tmp_path / "demo")
    assert {classify_series(path.name) for path in files.values()} == set(files) == {"t1", "t1ce", "t2", "flair"}
    for sequence, path in files.items():
        assert path.is_file() and classify_series(path.name) == sequence
    stamp = files["t1ce"].stat().st_mtime_ns
    assert demo_case(tmp_path / "demo") == files and files["t1ce"].stat().st_mtime_ns == stamp  # reused
