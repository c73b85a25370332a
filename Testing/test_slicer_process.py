"""The out-of-process core run: JSON progress parsing, a real subprocess, failures and cancellation."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it


from neuroradfm import SEQUENCES  # noqa: E402
from NeuroRADFMLib.prediction import PredictionError, PredictionJob  # noqa: E402
from NeuroRADFMLib.process import CORE_PARENT, CoreProcess, ProgressEvent, parse_progress_line  # noqa: E402
from NeuroRADFMLib.scene_io import SceneIOError, read_volume  # noqa: E402

FILE_KEYS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def case_nodes(scene, folder: Path) -> dict:
    nodes = {}
    for sequence in SEQUENCES:
        path = next(folder.glob(f"*-{FILE_KEYS[sequence]}.nii.gz"))
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name[: -len(".nii.gz")])
        read_volume(path, node)
        nodes[sequence] = node
    return nodes


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_parse_progress_lines():
    line = '{"stage": "n4", "progress": 0.25, "message": "t1"}\n'
    assert parse_progress_line(line) == ProgressEvent("n4", 0.25, "t1")
    assert parse_progress_line('{"stage": "done", "progress": 1}') == ProgressEvent("done", 1.0, "")
    assert parse_progress_line('{"stage": "x", "progress": 7}').progress == 1.0  # clamped
    for other in ["BraTS-PHN-00000-000: /out/BraTS-PHN-00000-000", "", "{not json", '{"stage": "x"}',
                  '["stage", "progress"]', '{"stage": "x", "progress": "soon"}']:
        assert parse_progress_line(other) is None


def test_a_real_prediction_process_reports_progress(phantom_cohort, tiny_bundle, tmp_path):
    case = phantom_cohort.parent / "BraTS-PHN-00001-000"
    process = CoreProcess(["predict", case, "--model", tiny_bundle, "--out", tmp_path, "--device", "cpu",
                           "--progress", "json", "--no-overview"], python=sys.executable).start()
    assert process.command[:3] == [sys.executable, "-m", "neuroradfm"]
    events: list[ProgressEvent] = []
    polls = 0
    while not process.finished:
        events += process.poll()  # never blocks
        polls += 1
        time.sleep(0.05)
    events += process.poll()
    assert process.returncode == 0, process.error_message()
    assert polls > 3
    fractions = [e.progress for e in events]
    assert len(events) >= 5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"encode", "cam"} <= {e.stage for e in events}
    assert process.output_lines == [f"BraTS-PHN-00001-000: {tmp_path / 'BraTS-PHN-00001-000'}"]
    assert (tmp_path / "BraTS-PHN-00001-000" / "predictions.json").is_file()


def test_the_core_runs_from_the_module_folder():
    """PYTHONPATH starts with the folder holding the bundled core, so the process uses the module's copy."""
    process = CoreProcess(["--version"], python=sys.executable).start()
    process.wait(timeout=60)
    assert process.returncode == 0 and process.output_lines[-1].startswith("neuroradfm ")
    assert (CORE_PARENT / "neuroradfm" / "cli.py").is_file()
    assert (CORE_PARENT / "NeuroRADFMLib" / "process.py").is_file()


def test_a_failing_prediction_names_the_problem_and_changes_nothing(scene, phantom_cohort, tmp_path):
    nodes = case_nodes(scene, phantom_cohort.parent / "BraTS-PHN-00002-000")
    before = node_ids(scene)
    work = tmp_path / "work"
    work.mkdir()
    not_a_bundle = tmp_path / "no-bundle"
    not_a_bundle.mkdir()
    job = PredictionJob(nodes, not_a_bundle, device="cpu", work_dir=work, python=sys.executable).start()
    job.process.wait(timeout=120)
    assert job.returncode == 2
    with pytest.raises(PredictionError, match=rf"exit status 2.*{not_a_bundle}"):
        job.load_results(scene)
    assert node_ids(scene) == before and list(work.iterdir()) == []

    with pytest.raises(SceneIOError, match="select a volume for at least one of T1, T1CE, T2, FLAIR"):
        PredictionJob(dict.fromkeys(nodes), not_a_bundle, work_dir=work)
    subset = PredictionJob({**nodes, "flair": None, "t1ce": None}, not_a_bundle, work_dir=work)  # selectors left empty
    assert subset.reference is nodes["t1"] and sorted(subset.volumes) == ["t1", "t2"]
    assert "--flair" not in subset.process.command and "--t1ce" not in subset.process.command
    assert sorted(p.name for p in (subset.temp_dir / "inputs").iterdir()) == ["t1.nrrd", "t2.nrrd"]
    subset._remove_temp()
    with pytest.raises(SceneIOError, match="is selected for more than one sequence"):
        PredictionJob({**nodes, "t2": nodes["t1"]}, not_a_bundle, work_dir=work)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty volume")
    with pytest.raises(SceneIOError, match="volume 'empty volume': no 3D image data"):
        PredictionJob({**nodes, "t2": empty}, not_a_bundle, work_dir=work)
    assert list(work.iterdir()) == []


def test_cancel_kills_the_process_and_leaves_the_scene_and_disk_clean(scene, native_case_dir, tiny_bundle, tmp_path):
    nodes = case_nodes(scene, native_case_dir)
    before = node_ids(scene)
    work = tmp_path / "work"
    work.mkdir()
    job = PredictionJob(nodes, tiny_bundle, device="cpu", work_dir=work, python=sys.executable).start()
    assert len(list(work.iterdir())) == 1  # the job's temporary folder with the four input files
    deadline = time.monotonic() + 120
    events = []
    while not events and time.monotonic() < deadline:
        events = job.poll()
        time.sleep(0.05)
    assert events and not job.finished  # cancelled while running (the native case takes several seconds)
    pid = job.process.pid
    began = time.monotonic()
    job.cancel()
    assert time.monotonic() - began < 1.0  # the GUI does not wait: the core unwinds in the background ...
    job.process.wait(timeout=60)  # ... and this waits until the tree is gone and the folder removed
    assert job.finished and job.returncode not in (None, 0)  # SIGTERM: the core unwinds, exits with 143
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(PredictionError, match="cancelled"):
        job.load_results(scene)
    assert node_ids(scene) == before
    assert list(work.iterdir()) == []
