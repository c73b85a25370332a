"""Cohort mode with worker processes (issue 18): preparing the next cases in workers while the model runs and the
previous case is written gives exactly what one case after another gives: the same numbers, maps and files, the same
failures with the same kinds and messages, progress that never goes back, and a Ctrl-C that stops the workers and
leaves every case folder whole or absent. ``--resume`` keeps what an earlier run of the same bundle and settings
finished, and only that."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import write_manifest
from neuroradfm.batch import finished_result, predict_cases
from neuroradfm.cli import main
from neuroradfm.cohort_pipeline import CohortProgress, Failure, default_workers
from neuroradfm.errors import BundleError, InputError, OutputError, SettingsError, describe_failure
from neuroradfm.io import read_manifest
from neuroradfm.io.manifest import CaseEntry
from neuroradfm.models.bundle import load_bundle
from neuroradfm.outputs import RESULT_MARKER

QUICK = ["--progress", "none", "--no-overview", "--device", "cpu"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def entries(phantom_cohort):
    return read_manifest(phantom_cohort)[:3]


def _fail(kind: str):
    """Loaders that fail the way real cases do; module functions, so that they pickle into a worker."""
    if kind == "bug":
        return {}["no such key"]
    if kind == "memory":
        raise MemoryError("cannot allocate 4.4 GB")
    if kind == "unreadable":
        raise PermissionError(13, "Permission denied", "/data/P4/t1.nii.gz")
    raise InputError("/data/P5/flair.nii.gz", "is truncated")


class _Unpicklable(Exception):
    def __init__(self, a, b):  # pickle calls it again with args=(message,): it cannot come back
        super().__init__(f"{a} {b}")


def test_errors_and_failures_survive_pickling():
    for error in (InputError("/data/P1/t1.nii.gz", "is truncated"), InputError(None, "no T1ce"),
                  BundleError("/b", "content hash does not match"), SettingsError("--out", "not writable"),
                  OutputError("/o/P1", "no space left")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error)
        assert describe_failure(back) == describe_failure(error)
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(_Unpicklable(1, 2)))
    try:
        raise _Unpicklable(1, 2)
    except _Unpicklable as error:
        failure = pickle.loads(pickle.dumps(Failure.of(error)))  # what a worker sends: plain text
    assert failure.kind == "internal" and failure.message.endswith("_Unpicklable: 1 2") and "Traceback" in failure.trace


def test_progress_of_cases_reported_in_any_order_never_goes_back():
    seen = []
    progress = CohortProgress(lambda stage, fraction, message="": seen.append(fraction), 4)
    progress.report(2, "n4", 0.8)
    progress.report(0, "n4", 0.4)
    progress.report(2, "n4", 0.1)  # an earlier event of case 2 arriving late
    progress.case(1, 0.0, 0.8)("resample", 0.5)
    for index in range(4):
        progress.report(index, "predict", 1.0)
    assert seen == sorted(seen) and seen[0] == pytest.approx(0.2) and seen[-1] == 1.0
    assert 1 <= default_workers() <= 4 and default_workers(processes_per_node=64) == 1


HEAVY_MODULES = "sorted(m for m in ('torch', 'monai', 'neuroradfm.predict') if m in __import__('sys').modules)"
"""Evaluated in a worker (a function of this module would import it there, and with it torch)."""


def test_a_worker_prepares_what_prepare_case_prepares_without_torch(bundle, entries):
    """A worker holds the bundle's card, not its weights, and never imports torch or MONAI (~450 MB each)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import replace

    from neuroradfm.cohort_pipeline import _prepare, _start_worker
    from neuroradfm.predict import prepare_case

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker,
                             initargs=(replace(bundle, encoder=None, heads=None), False, context.Queue())) as pool:
        ready = pool.submit(_prepare, 0, entries[0].load).result()
        assert pool.submit(eval, HEAVY_MODULES).result() == []
    expected = prepare_case(entries[0].load(), bundle)
    assert ready.failure is None and ready.inputs == tuple(str(p) for p in entries[0].load().inputs)
    np.testing.assert_array_equal(ready.prepared.channels, expected.channels)
    np.testing.assert_array_equal(ready.prepared.mask, expected.mask)
    assert ready.prepared.steps == expected.steps and ready.prepared.available == expected.available
    assert ready.prepared.template_to_reference.GetParameters() == expected.template_to_reference.GetParameters()


def _maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nrrd"))}


def test_workers_give_exactly_what_one_case_after_another_gives(bundle, entries, tmp_path):
    cases = [(entry.case_id, entry.load) for entry in entries]
    serial = predict_cases(cases, bundle, tmp_path / "serial", device="cpu", overview=False, keep_predictions=True)
    seen: list[tuple[str, float]] = []
    overlapped = predict_cases(cases, bundle, tmp_path / "workers", device="cpu", overview=False,
                               keep_predictions=True, workers=2,
                               progress=lambda stage, fraction, message="": seen.append((stage, fraction)))
    assert overlapped.run["workers"] == 2 and serial.run["workers"] == 0
    assert list(overlapped.outputs) == list(serial.outputs) == [entry.case_id for entry in entries]
    for case_id, expected in serial.predictions.items():
        got = overlapped.predictions[case_id]
        np.testing.assert_array_equal(got.embedding, expected.embedding)
        assert [m.probability for m in got.markers] == [m.probability for m in expected.markers]
        assert got.survival == expected.survival and got.ood_distance == expected.ood_distance
        assert list(got.cams) == list(expected.cams) and got.cam_scales == expected.cam_scales
        for key in expected.cams:
            np.testing.assert_allclose(got.cams[key], expected.cams[key], rtol=0, atol=1e-6)
        a, b = serial.outputs[case_id], overlapped.outputs[case_id]
        assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
        assert json.loads((a / RESULT_MARKER).read_text()) == json.loads((b / RESULT_MARKER).read_text())
        maps_a, maps_b = _maps(a), _maps(b)
        assert list(maps_a) == list(maps_b) and len(maps_a) > 2
        for name, array in maps_a.items():
            np.testing.assert_array_equal(maps_b[name], array, err_msg=name)
    assert (tmp_path / "serial" / "predictions.csv").read_bytes() == (tmp_path / "workers" / "predictions.csv"
                                                                        ).read_bytes()
    fractions = [fraction for _, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"n4", "resample", "encode", "cam"} <= {stage for stage, _ in seen}  # the workers' stages came through
    assert not list((tmp_path / "workers").glob(".*"))

    # loaders that cannot go to a worker (a lambda) run one after another: same results
    lambdas = [(entry.case_id, lambda entry=entry: entry.load()) for entry in entries[:2]]
    fallback = predict_cases(lambdas, bundle, tmp_path / "lambdas", device="cpu", overview=False, workers=2)
    assert fallback.run["workers"] == 0 and list(fallback.outputs) == [entry.case_id for entry in entries[:2]]


def test_cases_prepared_together_share_one_forward_pass_with_each_case_s_own_result(bundle, entries, tmp_path):
    """--batch-size: the prepared cases go through predict_prepared_batch together; each gets what it gets alone, a
    case that failed to prepare stays failed, and the run's tables are those of one case at a time."""
    from neuroradfm.cohort_pipeline import Job, Prepared, _predict
    from neuroradfm.predict import predict_prepared
    from neuroradfm.preprocess import prepare_case

    progress = CohortProgress(lambda *args: None, len(entries))
    batch = [(Job(i, e.case_id, e.load, tmp_path / e.case_id), Prepared(i, prepare_case(e.load(), bundle)))
             for i, e in enumerate(entries)]
    lost = Failure("input", "could not be read")
    batch.insert(1, (Job(9, "lost", None, tmp_path / "lost"), Prepared(9, failure=lost)))
    results = _predict(batch, bundle, "cpu", progress, None, "float32")
    assert results[1] is lost and len(results) == len(entries) + 1
    for (job, ready), got in [(batch[i], results[i]) for i in range(len(batch)) if i != 1]:
        alone = predict_prepared(job.case_id, ready.prepared, bundle, "cpu", precision="float32")
        np.testing.assert_allclose(got.embedding, alone.embedding, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose([m.probability for m in got.markers], [m.probability for m in alone.markers],
                                   atol=1e-5)
        for key in alone.cams:
            np.testing.assert_allclose(got.cams[key], alone.cams[key], rtol=0, atol=1e-5)

    cases = [(entry.case_id, entry.load) for entry in entries]
    one = predict_cases(cases, bundle, tmp_path / "one", device="cpu", overview=False, workers=2, maps="none")
    together = predict_cases(cases, bundle, tmp_path / "together", device="cpu", overview=False, workers=2,
                             batch_size=3, maps="none")
    assert together.run["batch_size"] == 3 and list(together.outputs) == list(one.outputs)
    with open(tmp_path / "one" / "predictions.csv") as a, open(tmp_path / "together" / "predictions.csv") as b:
        rows_a, rows_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["case_id"] for r in rows_a] == [r["case_id"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):  # written to 4 decimals: equal, or one step apart at a rounding tie
        for column in ("probability", "risk_score"):
            if ra[column]:
                assert abs(float(ra[column]) - float(rb[column])) <= 1e-4
    with pytest.raises(SettingsError, match="--batch-size"):
        predict_cases(cases, bundle, tmp_path / "zero", device="cpu", batch_size=0)


def test_a_case_failing_in_a_worker_is_recorded_as_one_after_another_records_it(bundle, entries, tmp_path):
    broken = tmp_path / "broken-flair.nii.gz"
    broken.write_bytes(entries[1].paths["flair"].read_bytes()[:200])
    truncated = CaseEntry(entries[1].case_id, entries[1].site, {**entries[1].paths, "flair": broken}).load
    cases = [("P1", partial(_fail, "bug")), ("P2", entries[0].load), ("P3", partial(_fail, "memory")),
             ("P4", partial(_fail, "unreadable")), ("P5", partial(_fail, "input")), ("P6", truncated)]
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        results[workers] = predict_cases(cases, bundle, out, device="cpu", overview=False, workers=workers)
        assert results[workers].run["workers"] == workers and list(results[workers].outputs) == ["P2"]
    serial, overlapped = results[0], results[2]
    assert overlapped.failure_kinds == serial.failure_kinds == {"P1": "internal", "P3": "resources", "P4": "system",
                                                                "P5": "input", "P6": "input"}
    for case_id, message in serial.failures.items():
        assert overlapped.failures[case_id] == message.replace(str(tmp_path / "out0"), str(tmp_path / "out2"))
    assert "broken-flair.nii.gz" in overlapped.failures["P6"] and "/data/P5/flair.nii.gz: is truncated" == \
        overlapped.failures["P5"]
    log = (tmp_path / "out2" / "neuroradfm-errors.log").read_text()
    assert "KeyError: 'no such key'" in log and "_fail" in log  # the worker's traceback, in the main log
    with open(tmp_path / "out2" / "failures.csv", newline="") as handle:
        assert [row["case_id"] for row in csv.DictReader(handle)] == ["P1", "P3", "P4", "P5", "P6"]


def _folders(out: Path) -> dict[str, int]:
    """Each case folder's predictions.json: its inode and modification time (changed by a new result)."""
    return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob(f"*/{RESULT_MARKER}"))}


def test_resume_keeps_finished_results_of_the_same_bundle_and_settings_only(phantom_cohort, tiny_bundle, bundle,
                                                                            tmp_path):
    manifest = write_manifest(tmp_path / "manifest.csv", [{"case_id": e.case_id, "site": e.site,
                                                            **{k: str(v) for k, v in e.paths.items()}}
                                                           for e in read_manifest(phantom_cohort)[:4]])
    ids = [entry.case_id for entry in read_manifest(manifest)]
    out = tmp_path / "out"
    common = ["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK, "--workers", "0"]
    assert main(common) == 0
    first, table = _folders(out), (out / "predictions.csv").read_bytes()
    assert main([*common, "--resume"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["skipped"] == ids and run["resume"] is True and run["succeeded"] == 4 and run["workers"] == 0
    assert _folders(out) == first and (out / "predictions.csv").read_bytes() == table

    # a case folder lost (a rank that died before finishing it) and one replaced by a result of another bundle
    import shutil

    shutil.rmtree(out / ids[1])
    summary = json.loads((out / ids[2] / RESULT_MARKER).read_text())
    summary["model"]["content_hash"] = "sha256:another-bundle"
    (out / ids[2] / RESULT_MARKER).write_text(json.dumps(summary))
    assert main([*common, "--resume", "--workers", "2"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["skipped"] == [ids[0], ids[3]] and run["workers"] == 2
    now = _folders(out)
    assert now[ids[0]] == first[ids[0]] and now[ids[3]] == first[ids[3]] and now[ids[2]] != first[ids[2]]
    assert (out / "predictions.csv").read_bytes() == table  # the same rows, in manifest order

    # settings that change the outputs are not resumed across
    assert not finished_result(out / ids[0], ids[0], bundle, cam_layer="layer4")
    assert not finished_result(out / ids[0], ids[0], bundle, maps="labels")
    assert not finished_result(out / ids[0], ids[0], bundle, overview=True)  # this run had --no-overview
    assert not finished_result(out / ids[0], ids[1], bundle)  # another case's result
    assert not finished_result(out / ids[0], ids[0], bundle, overview=False, precision="bfloat16")
    assert json.loads((out / ids[0] / RESULT_MARKER).read_text())["inference"] == {"precision": "float32"}
    assert finished_result(out / ids[0], ids[0], bundle, allow_missing=True, overview=False)  # nothing was left out
    (out / ids[0] / "predictions.csv").unlink()
    assert not finished_result(out / ids[0], ids[0], bundle, overview=False)
    assert main([*common, "--resume", "--cam-layer", "layer4"]) == 0
    assert json.loads((out / "run.json").read_text())["skipped"] == []
    # the encoder in bfloat16 (autocast; on a GPU --precision auto is float16): recomputed, and said so
    assert main([*common, "--resume", "--cam-layer", "layer4", "--precision", "bfloat16"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["skipped"] == [] and run["precision"] == "bfloat16"
    assert json.loads((out / ids[3] / RESULT_MARKER).read_text())["inference"] == {"precision": "bfloat16"}
    assert main([*common]) == 0 and json.loads((out / "run.json").read_text())["skipped"] == []  # no --resume


def _env() -> dict[str, str]:
    core = str(Path(__file__).resolve().parents[1] / "NeuroRADFM")
    return {**os.environ, "PYTHONPATH": core + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started, read off /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table off /proc")
def test_ctrl_c_with_workers_stops_them_and_leaves_nothing_half_written(phantom_cohort, tiny_bundle, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "neuroradfm", "predict", str(phantom_cohort), "--model",
                                str(tiny_bundle), "--out", str(out), "--progress", "json", "--device", "cpu",
                                "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env())
    encoded = 0
    for line in process.stdout:  # the model has started on the second case the workers prepared
        encoded += '"stage": "encode"' in line
        if encoded == 2:
            break
    workers = _children(process.pid)
    assert workers, "no worker processes"
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    err = process.stderr.read()
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers), "worker processes outlived the run"
    assert not [p for p in out.rglob(".*")], "a staging folder survived Ctrl-C"
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] is True and run["cases"] == 16 and run["succeeded"] + run["failed"] < 16
    finished = sorted(p.parent.name for p in out.glob(f"*/{RESULT_MARKER}"))
    assert finished and len(finished) == run["succeeded"]  # the write under way when Ctrl-C came was completed
    with open(out / "predictions.csv", newline="") as handle:
        assert sorted({row["case_id"] for row in csv.DictReader(handle)}) == finished  # the tables say what is there
