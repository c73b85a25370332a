"""Where results go and what a run may delete: case ids as folder names, replacing a result, cohort tables that
describe their run, stale staging, batches that go on, settings checked once, exit statuses (issue 12)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroradfm import SEQUENCES, atomic
from neuroradfm.atomic import HOST_TAG, atomic_folder, clean_stale
from neuroradfm.batch import ERRORS_LOG, predict_cases
from neuroradfm.cli import main
from neuroradfm.errors import InputError, OutputError, SettingsError
from neuroradfm.io import load_case, read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.output_paths import case_folders, safe_folder_name
from neuroradfm.outputs import RESULT_FILES, RESULT_MARKER, write_outputs
from neuroradfm.predict import predict_case

CASE = "BraTS-PHN-00001-000"
QUICK = ["--progress", "none", "--no-overview", "--device", "cpu"]


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, int]:
    """Every file and folder under ``root`` (outside ``skip``) with its size: what a run must leave alone."""
    found = {}
    for path in root.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        found[str(path.relative_to(root))] = -1 if path.is_dir() else path.stat().st_size
    return found


def _files(cohort: Path, case: str = CASE) -> list[str]:
    tags = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    return [a for s in SEQUENCES for a in (f"--{s}", str(cohort / case / f"{case}-{tags[s]}.nii.gz"))]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def prediction(phantom_cohort, tiny_bundle):
    return predict_case(load_case(phantom_cohort.parent / CASE), load_bundle(tiny_bundle), device="cpu")


# --- case ids as folder names -------------------------------------------------------------------------------

@pytest.mark.parametrize("case_id", ["..", ".", "", "/", "../..", "\x00", " "])
def test_case_ids_that_name_no_folder_are_refused_and_nothing_is_touched(case_id, phantom_cohort, tiny_bundle,
                                                                         tmp_path, capsys):
    parent = tmp_path / "parent"
    out = parent / "out"
    out.mkdir(parents=True)
    (parent / "keep.txt").write_text("user data")
    (out / "earlier.txt").write_text("user data")
    before = _snapshot(tmp_path)
    code = main(["predict", *_files(phantom_cohort.parent), "--case-id", case_id, "--model", str(tiny_bundle),
                 "--out", str(out), *QUICK])
    assert code == 2
    err = capsys.readouterr().err
    assert "no usable folder name" in err and repr(case_id) in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("case_id, folder", [("../victim", "victim"), ("a/b", "a_b"), ("..\\..\\victim", "victim"),
                                             ("/abs/victim", "abs_victim"), ("CON", "_CON"),
                                             ("P\x1b[31m7\n", "P_[31m7")])
def test_hostile_case_ids_become_one_folder_inside_out(case_id, folder, phantom_cohort, tiny_bundle, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("user data")
    out = tmp_path / "out"
    outside = _snapshot(tmp_path, skip=out)
    assert main(["predict", *_files(phantom_cohort.parent), "--case-id", case_id, "--model", str(tiny_bundle),
                 "--out", str(out), *QUICK]) == 0
    assert [p.name for p in out.iterdir()] == [folder]
    summary = json.loads((out / folder / RESULT_MARKER).read_text())
    assert summary["case_id"] == case_id  # the id itself is kept in the results; only the folder name is made safe
    assert _snapshot(tmp_path, skip=out) == outside


def test_an_absolute_case_id_in_a_manifest_stays_inside_out(phantom_cohort, tiny_bundle, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("user data")
    source = read_manifest(phantom_cohort)[0]
    manifest = tmp_path / "m.csv"
    rows = [["case_id", "site", *SEQUENCES], [str(victim), "s", *(str(source.paths[s]) for s in SEQUENCES)],
            ["..", "s", *(str(source.paths[s]) for s in SEQUENCES)]]
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(InputError, match=r"m.csv: case id\(s\) that give no usable folder name .*: '\.\.' \(line 3\)"):
        read_manifest(manifest)
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows(rows[:2])
    out = tmp_path / "out"
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK]) == 0
    assert (victim / "precious.txt").read_text() == "user data" and sorted(p.name for p in victim.iterdir()) == [
        "precious.txt"]
    assert (out / safe_folder_name(str(victim)) / RESULT_MARKER).is_file()


def test_ids_that_collide_as_folders_refuse_the_manifest_listing_them(phantom_cohort, tiny_bundle, tmp_path, capsys):
    source = read_manifest(phantom_cohort)[0]
    manifest = tmp_path / "m.csv"
    paths = [str(source.paths[s]) for s in SEQUENCES]
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["case_id", "site", *SEQUENCES], ["P1", "s", *paths], ["P2", "s", *paths],
                                      ["P1/", "s", *paths], ["p2", "s", *paths]])
    out = tmp_path / "out"
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "would share one output folder" in err
    assert "'P1' (line 2); 'P1/' (line 4) -> 'P1'" in err and "'P2' (line 3); 'p2' (line 5) -> 'P2'" in err
    assert not out.exists()


def test_two_case_folders_of_one_name_are_refused_before_anything_is_written(phantom_cohort, tiny_bundle,
                                                                             tmp_path, capsys):
    for parent in ("a", "b"):
        shutil.copytree(phantom_cohort.parent / CASE, tmp_path / parent / CASE)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a" / CASE), str(tmp_path / "b" / CASE), "--model", str(tiny_bundle),
                 "--out", str(out), *QUICK]) == 2
    assert "would share one output folder" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(tmp_path / "a" / CASE), "--case-id", "P1", "--model", str(tiny_bundle),
                 "--out", str(out), *QUICK]) == 2  # a folder's id is its name: --case-id would be ignored
    assert "--case-id names a case given with --t1" in capsys.readouterr().err and not out.exists()


def test_folder_names_are_safe_unique_and_bounded():
    assert case_folders(["UPENN-GBM-00001_11", "BraTS-GLI-00002-000"]) == {
        "UPENN-GBM-00001_11": "UPENN-GBM-00001_11", "BraTS-GLI-00002-000": "BraTS-GLI-00002-000"}
    long = safe_folder_name("x" * 400)
    assert len(long.encode()) <= 150 and long != safe_folder_name("x" * 401)
    assert safe_folder_name("Straße/ü") == "Straße_ü"
    with pytest.raises(InputError, match="'ID'; 'id' -> 'ID'"):
        case_folders(["ID", "id"])


# --- replacing a result -------------------------------------------------------------------------------------

def test_a_result_replaces_only_an_earlier_result_never_a_users_folder(prediction, tmp_path):
    folder = tmp_path / "out" / "P1"
    write_outputs(prediction, folder, overview=False)
    first = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    write_outputs(prediction, folder, overview=False)  # an earlier result: replaced as a whole
    assert set(first) == {p.name for p in folder.iterdir()}

    users = tmp_path / "out" / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("user data")
    with pytest.raises(OutputError, match="mine: exists and is not an earlier result of neuroradfm"):
        write_outputs(prediction, users, overview=False)
    assert [p.name for p in users.iterdir()] == ["notes.txt"]
    link = tmp_path / "out" / "link"
    link.symlink_to(users)
    with pytest.raises(OutputError, match="link: exists as a symbolic link"):
        write_outputs(prediction, link, overview=False)
    assert [p.name for p in users.iterdir()] == ["notes.txt"]
    inputs = tmp_path / "out" / "P2"
    write_outputs(prediction, inputs, overview=False)
    (inputs / "t1.nii.gz").write_bytes(b"an input")  # another case's input, kept in an earlier result's folder
    with pytest.raises(OutputError, match="P2: is an earlier result but also holds t1.nii.gz, which neuroradfm did "
                                          "not write there; not replaced"):
        write_outputs(prediction, inputs, overview=False)
    assert (inputs / "t1.nii.gz").read_bytes() == b"an input"
    (inputs / "t1.nii.gz").unlink()
    with pytest.raises(OutputError, match="P2: holds an input of this run"):
        write_outputs(prediction, inputs, overview=False, inputs=[inputs / "predictions.csv"])
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_predicting_into_the_cases_own_parent_leaves_the_case_folder_alone(phantom_cohort, tiny_bundle, tmp_path,
                                                                          capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom_cohort.parent / CASE, data / CASE)
    before = _snapshot(data)
    assert main(["predict", str(data / CASE), "--model", str(tiny_bundle), "--out", str(data), *QUICK]) == 2
    assert "not an earlier result" in capsys.readouterr().err
    assert _snapshot(data) == before


def test_a_failed_removal_of_the_old_result_keeps_the_new_one_and_is_cleaned_later(prediction, tmp_path,
                                                                                    monkeypatch):
    folder = tmp_path / "out" / "P1"
    write_outputs(prediction, folder, overview=False)
    (folder / "heatmap_from-the-first-run.nrrd").write_text("old")  # marks the earlier result
    real_rmtree = shutil.rmtree

    def half_rmtree(path, *args, **kwargs):  # removes one file, then fails like a busy network share
        next(p for p in Path(path).iterdir() if p.is_file()).unlink()
        raise OSError(16, "Device or resource busy", str(path))

    monkeypatch.setattr(atomic.shutil, "rmtree", half_rmtree)
    write_outputs(prediction, folder, overview=False)
    assert not (folder / "heatmap_from-the-first-run.nrrd").exists() and (folder / RESULT_MARKER).is_file()
    leftovers = [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and ".P1.old-" in leftovers[0].name  # hidden, never mixed into the result
    monkeypatch.setattr(atomic.shutil, "rmtree", real_rmtree)
    monkeypatch.setattr(atomic, "_pid_alive", lambda pid: False)  # as seen by a later run, after this one ended
    assert clean_stale(folder.parent) == leftovers
    assert sorted(p.name for p in folder.parent.iterdir()) == ["P1"]


def test_a_failed_swap_keeps_the_complete_earlier_result_and_says_so(prediction, tmp_path, monkeypatch):
    folder = tmp_path / "out" / "P1"
    write_outputs(prediction, folder, overview=False)
    before = _snapshot(folder)
    real_rename = os.rename
    calls = []

    def rename(source, target):  # the new folder cannot be renamed into place (second rename of the swap)
        calls.append(source)
        if len(calls) == 2:
            raise OSError(13, "Permission denied", str(source))
        return real_rename(source, target)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OutputError, match="P1: the new result could not be put in place .*the earlier result is "
                                          "unchanged"):
        write_outputs(prediction, folder, overview=False)
    assert _snapshot(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["P1"]


def test_ctrl_c_during_the_swap_takes_effect_after_it(prediction, tmp_path, monkeypatch):
    folder = tmp_path / "out" / "P1"
    write_outputs(prediction, folder, overview=False)
    real_rename = os.rename

    def rename(source, target):  # Ctrl-C arrives between moving the earlier result aside and the new one in
        real_rename(source, target)
        if ".old-" in str(target):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(prediction, folder, overview=False)
    assert (folder / RESULT_MARKER).is_file()  # the swap completed before the interruption took effect
    assert sorted(p.name for p in folder.parent.iterdir()) == ["P1"]


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(phantom_cohort, tiny_bundle, tmp_path):
    """A file-size limit makes every write past 8 kB fail in the operating system, like a full disk."""
    out = tmp_path / "out"
    out.mkdir()
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); "
              "from neuroradfm.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "predict", *_files(phantom_cohort.parent), "--case-id",
                             "P1", "--model", str(tiny_bundle), "--out", str(out), "--progress", "none",
                             "--device", "cpu"], capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 2, result.stderr
    assert f"{out / 'P1'}/heatmap_" in result.stderr and "could not be written" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(out.iterdir()) == []


# --- cohort tables, stale staging ---------------------------------------------------------------------------

def _cohort(phantom_cohort: Path, tmp_path: Path, n: int = 3) -> Path:
    cohort = tmp_path / "cohort"
    entries = read_manifest(phantom_cohort)[:n]
    for entry in entries:
        shutil.copytree(entry.paths["t1"].parent, cohort / entry.paths["t1"].parent.name)
    lines = phantom_cohort.read_text().splitlines()
    (cohort / "manifest.csv").write_text("\n".join(lines[:n + 1]) + "\n")
    return cohort / "manifest.csv"


def test_a_rerun_replaces_the_cohort_tables_and_says_which_run_made_them(phantom_cohort, tiny_bundle, tmp_path):
    manifest = _cohort(phantom_cohort, tmp_path)
    broken = read_manifest(manifest)[1]
    good = broken.paths["flair"].read_bytes()
    broken.paths["flair"].write_bytes(good[:200])
    out = tmp_path / "out"
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK]) == 1
    first = json.loads((out / "run.json").read_text())
    with open(out / "failures.csv", newline="") as handle:
        (failure,) = list(csv.DictReader(handle))
    assert failure["case_id"] == broken.case_id and failure["kind"] == "input" and "truncated" in failure["error"]
    assert first["failed"] == 1 and first["succeeded"] == 2 and first["tables"]["failures.csv"].startswith("sha256:")

    broken.paths["flair"].write_bytes(good)
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK]) == 0
    run = json.loads((out / "run.json").read_text())
    assert not (out / "failures.csv").exists() and run["tables"]["failures.csv"] is None
    assert run["run_id"] != first["run_id"] and run["failed"] == 0 and run["succeeded"] == 3
    assert run["bundle"]["content_hash"] == load_bundle(tiny_bundle).card["content_hash"]
    assert run["folders"] == {e.case_id: e.case_id for e in read_manifest(manifest)}
    with open(out / "predictions.csv", newline="") as handle:
        assert len({r["case_id"] for r in csv.DictReader(handle)}) == 3
    import hashlib

    assert run["tables"]["predictions.csv"] == "sha256:" + hashlib.sha256((out / "predictions.csv").read_bytes()
                                                                          ).hexdigest()


def test_stale_staging_of_killed_runs_is_cleaned_at_start_and_live_ones_are_kept(phantom_cohort, tiny_bundle,
                                                                                 tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale = out / f".{CASE}.partial-{HOST_TAG}{dead}-abcd1234"
    stale.mkdir()
    (stale / "heatmap_mgmt.nrrd").write_bytes(b"half")
    stale_file = out / f".predictions.csv.partial-{HOST_TAG}{dead}-zz_12345.csv"
    stale_file.write_text("half")
    moved_aside = out / f".P9.old-{HOST_TAG}{dead}-abcdefgh"  # a swap killed between its two renames
    moved_aside.mkdir()
    (moved_aside / RESULT_MARKER).write_text("{}")
    live = out / f".P8.partial-{HOST_TAG}{os.getppid()}-abcdefgh"
    live.mkdir()
    other_host = out / f".P7.partial-{'0' * 6 if HOST_TAG != '0' * 6 else '1' * 6}{dead}-abcdefgh"
    other_host.mkdir()
    users = out / ".partial-notes"
    users.mkdir()
    legacy = out / f".{CASE}.partial-k2j3h4g5"  # the staging name before it carried host and process
    legacy.mkdir()
    assert main(["predict", *_files(phantom_cohort.parent), "--case-id", CASE, "--model", str(tiny_bundle),
                 "--out", str(out), *QUICK]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([CASE, "P9", live.name, other_host.name, users.name])
    assert (out / "P9" / RESULT_MARKER).is_file()  # the earlier result came back


# --- batches go on; settings are checked once --------------------------------------------------------------

def test_any_exception_in_one_case_is_recorded_and_the_batch_goes_on(phantom_cohort, tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    good = read_manifest(phantom_cohort)[0]

    def bug():
        return {}["no such key"]

    def memory():
        raise MemoryError("cannot allocate 4.4 GB")

    def unreadable():
        raise PermissionError(13, "Permission denied", "/data/P4/t1.nii.gz")

    out = tmp_path / "out"
    (out / "P5").mkdir(parents=True)
    (out / "P5" / "notes.txt").write_text("user data")  # the case's folder is taken by a user's folder
    result = predict_cases([("P1", bug), ("P2", good.load), ("P3", memory), ("P4", unreadable), ("P5", good.load)],
                           bundle, out, device="cpu", overview=False)
    assert list(result.outputs) == ["P2"]
    assert result.failure_kinds == {"P1": "internal", "P3": "resources", "P4": "system", "P5": "system"}
    assert "P5: exists and is not an earlier result" in result.failures["P5"]
    assert [p.name for p in (out / "P5").iterdir()] == ["notes.txt"]
    assert "internal error (a bug in neuroradfm; please report it): KeyError" in result.failures["P1"]
    assert str(out / ERRORS_LOG) in result.failures["P1"] and "KeyError" in (out / ERRORS_LOG).read_text()
    assert "out of memory" in result.failures["P3"] and "/data/P4/t1.nii.gz: Permission denied" == result.failures["P4"]
    with open(out / "failures.csv", newline="") as handle:
        assert [r["case_id"] for r in csv.DictReader(handle)] == ["P1", "P3", "P4", "P5"]


@pytest.mark.parametrize("device, message", [("cuda:0", "no CUDA GPU is available"), ("nonsense", "unknown device"),
                                             ("meta", "unknown device 'meta'"), ("cuda:-1", "unknown device")])
def test_a_device_that_cannot_work_fails_once_before_any_case(device, message, phantom_cohort, tiny_bundle, tmp_path,
                                                              capsys):
    out = tmp_path / "out"
    assert main(["predict", str(phantom_cohort), "--model", str(tiny_bundle), "--out", str(out), "--device", device,
                 "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device: ") and message in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(SettingsError):
        predict_cases([("P1", lambda: pytest.fail("a case was read"))], load_bundle(tiny_bundle), out, device=device)


def test_an_output_folder_that_cannot_take_files_fails_before_any_case(phantom_cohort, tiny_bundle, tmp_path,
                                                                       capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("user data")
    for out, message in ((a_file, "exists and is not a folder"), (a_file / "sub", "is a file, not a folder"),
                         (Path("/proc/neuroradfm-results"), "is not a writable folder")):
        assert main(["predict", str(phantom_cohort), "--model", str(tiny_bundle), "--out", str(out),
                     *QUICK]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out: ") and message in err and "Traceback" not in err
    assert a_file.read_text() == "user data"


def test_a_failed_single_case_leaves_no_folder_it_created(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "new" / "nested" / "out"
    broken = tmp_path / "P1.nii.gz"
    broken.write_bytes(b"not an image")
    args = [a for s in SEQUENCES for a in (f"--{s}", str(broken))]
    assert main(["predict", *args, "--model", str(tiny_bundle), "--out", str(out), *QUICK]) == 2
    assert "P1.nii.gz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P1.nii.gz"]
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["predict", *args, "--model", str(tiny_bundle), "--out", str(existing), *QUICK]) == 2
    assert existing.is_dir() and list(existing.iterdir()) == []  # a folder the user made stays


def test_an_internal_error_exits_3_and_points_at_the_log(phantom_cohort, tiny_bundle, tmp_path, monkeypatch,
                                                         capsys):
    import neuroradfm.batch

    def broken_predict(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(neuroradfm.batch, "predict_case", broken_predict)
    out = tmp_path / "out"
    assert main(["predict", *_files(phantom_cohort.parent), "--model", str(tiny_bundle), "--out", str(out),
                 *QUICK]) == 3
    err = capsys.readouterr().err
    assert "internal error (a bug in neuroradfm; please report it): ZeroDivisionError: a bug" in err
    assert str(out / ERRORS_LOG) in err and "Traceback" not in err
    assert "ZeroDivisionError: a bug" in (out / ERRORS_LOG).read_text()
    monkeypatch.setattr("neuroradfm.cli._info", lambda args: 1 / 0)
    assert main(["info", str(tiny_bundle)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (a bug in neuroradfm; please report it): ZeroDivisionError" in err
    log = Path(err.split("(traceback in ")[1].strip().rstrip(")"))
    assert "ZeroDivisionError" in log.read_text()
    log.unlink()


def test_a_missing_model_path_says_it_does_not_exist(phantom_cohort, tmp_path, capsys):
    assert main(["predict", str(phantom_cohort), "--model", str(tmp_path / "no-such-bundle"), "--out",
                 str(tmp_path / "out"), *QUICK]) == 2
    assert "no-such-bundle: does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _env() -> dict[str, str]:
    core = str(Path(__file__).resolve().parents[1] / "NeuroRADFM")
    return {**os.environ, "PYTHONPATH": core + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing_half_written(phantom_cohort, tiny_bundle, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "neuroradfm", "predict", str(phantom_cohort), "--model",
                                str(tiny_bundle), "--out", str(out), "--progress", "json", "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    for line in process.stdout:  # wait until the first case is under way
        if '"stage": "n4"' in line or '"stage": "brain"' in line or '"stage": "encode"' in line:
            break
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    err = process.stderr.read()
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")
    assert not [p for p in out.rglob(".*")], "a staging folder survived Ctrl-C"
    run = json.loads((out / "run.json").read_text())  # the tables say what was done before the interruption
    assert run["interrupted"] is True and run["cases"] == 16 and run["succeeded"] + run["failed"] < 16


# --- manifests --------------------------------------------------------------------------------------------

def test_manifest_messages_count_lines_as_an_editor_does(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('case_id,site,t1,t1ce,t2,flair,note\n\nA,s,a,b,c,d,"two\nlines"\n\nB,s,,,,,\n')
    with pytest.raises(InputError, match="m.csv: line 6: empty image paths"):
        read_manifest(manifest)
    manifest.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a,b,c,d\n\nA,s,a,b,c,d\n")
    with pytest.raises(InputError, match=r"duplicated case_id\(s\): A \(lines 2, 4\)"):
        read_manifest(manifest)
    manifest.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a,b,c,d\nB,s,a,b,c,d,e,f\n")
    with pytest.raises(InputError, match="line 3: 8 cells for 6 columns"):
        read_manifest(manifest)
    manifest.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a\x00b,b,c,d\n")
    with pytest.raises(InputError, match="line 2: (control characters in t1|not a readable CSV)"):
        read_manifest(manifest)
    manifest.write_bytes(b"case_id,site,t1,t1ce,t2,flair\nA,s,\xff,b,c,d\n")
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_manifest(manifest)


def test_atomic_folder_never_leaves_its_parent(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out / "x", RESULT_FILES) as staging:
        assert staging.parent == out and staging.name.startswith(".x.partial-")
        (staging / RESULT_MARKER).write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["x"]


# --- property: nothing outside the output folder is ever written or deleted ---------------------------------

HOSTILE_TEXT = st.text(alphabet=st.sampled_from(list("./\\:*?\"<>|~ \t\n\r\x00\x1b_-aAzZ09éß\u202e\u200b"))
                       | st.characters(), max_size=24)
"""Separators, dots, quotes, control and bidi characters, letters that fold, and any other character."""


def _layout(root: Path) -> Path:
    """A user's tree around the output folder: everything here but OUT must survive any run."""
    for folder in ("victim", "out", "data/P1"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "victim" / "precious.txt").write_text("user data")
    (root / "data" / "P1" / "t1.nii.gz").write_text("an input")
    (root / "out" / "earlier.txt").write_text("kept")
    return root / "out"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case_ids=st.lists(HOSTILE_TEXT, min_size=1, max_size=4))
def test_property_case_ids_never_write_or_delete_outside_out(case_ids, tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    out = _layout(root)
    outside = _snapshot(root, skip=out)
    try:
        folders = case_folders(case_ids)
    except InputError:
        assert _snapshot(root, skip=out) == outside
        return
    assert len({f.casefold() for f in folders.values()}) == len(set(case_ids))
    for _ in range(2):  # the second pass replaces the first pass's results
        for case_id, name in folders.items():
            assert "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(".")
            with atomic_folder(out / name, RESULT_FILES) as staging:
                (staging / RESULT_MARKER).write_text(json.dumps({"case_id": case_id}))
    assert _snapshot(root, skip=out) == outside
    assert sorted(p.name for p in out.iterdir()) == sorted({*folders.values(), "earlier.txt"})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.lists(HOSTILE_TEXT, min_size=6, max_size=7), min_size=1, max_size=3))
def test_property_manifest_cells_never_write_or_delete_outside_out(cells, tiny_bundle, tmp_path_factory):
    """Random cells (ids, sites, paths) through the manifest reader and a whole predict run: a refused manifest,
    or failed cases, but never a file touched outside OUT."""
    root = tmp_path_factory.mktemp("cells")
    out = _layout(root)
    manifest = root / "data" / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
        csv.writer(handle).writerows([["case_id", "site", *SEQUENCES], *cells])
    outside = _snapshot(root, skip=out)
    code = main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK])
    assert code in (0, 1, 2)
    assert _snapshot(root, skip=out) == outside
    assert (out / "earlier.txt").read_text() == "kept"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(HOSTILE_TEXT, min_size=1, max_size=2), sites=st.lists(HOSTILE_TEXT, min_size=2, max_size=2))
def test_property_predictions_with_hostile_ids_stay_inside_out(ids, sites, phantom_cohort, tiny_bundle,
                                                               tmp_path_factory):
    """Real predictions written (twice: the second run replaces the first) under random case ids and sites."""
    root = tmp_path_factory.mktemp("predict")
    out = _layout(root)
    source = read_manifest(phantom_cohort)[0]
    manifest = root / "data" / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
        paths = [str(source.paths[q]) for q in SEQUENCES]
        csv.writer(handle).writerows([["case_id", "site", *SEQUENCES], *([i, s, *paths] for i, s in zip(ids, sites))])
    outside = _snapshot(root, skip=out)
    for _ in range(2):
        assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK]) in (0, 2)
    assert _snapshot(root, skip=out) == outside
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    for folder in (p for p in out.iterdir() if p.is_dir()):
        # the manifest reader strips the white space around a cell, as spreadsheet exports leave it
        assert json.loads((folder / RESULT_MARKER).read_text(encoding="utf-8"))["case_id"] in [i.strip() for i in ids]


# --- training outputs ---------------------------------------------------------------------------------------

def test_training_refuses_an_output_it_could_not_replace_before_any_work(phantom_cohort, tiny_bundle, tmp_path,
                                                                         capsys):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("user data")
    a_file = tmp_path / "file.txt"
    a_file.write_text("user data")
    commands = {
        "train-baseline": ["train-baseline", "--manifest", str(phantom_cohort), "--epochs", "1", "--size", "16",
                           "--device", "cpu"],
        "fit-heads": ["fit-heads", "--model", str(tiny_bundle), "--manifest", str(phantom_cohort), "--device", "cpu"],
        "pretrain": ["pretrain", "--manifest", str(phantom_cohort), "--method", "byol", "--device", "cpu"],
    }
    before = _snapshot(tmp_path)
    for name, command in commands.items():
        for out, message in ((users, "exists and is not an earlier result of neuroradfm (no card.json)"),
                             (a_file, "exists and is a file"), (a_file / "bundle", "is a file, not a folder")):
            assert main([*command, "--out", str(out), "--progress", "none"]) == 2, name
            err = capsys.readouterr().err  # a SettingsError of --out: raised at the start, not when saving
            assert err.startswith("error: --out: ") and message in err, (name, err)
    assert main([*commands["fit-heads"], "--out", str(tiny_bundle), "--progress", "none"]) == 2
    assert "holds an input of this run" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    assert load_bundle(tiny_bundle).heads is not None


def test_non_ascii_case_ids_are_written_whatever_the_process_locale(phantom_cohort, tiny_bundle, tmp_path):
    """A library (GDCM's writer, an embedding application) may switch the process to the C locale, where text files
    opened without an encoding are ASCII: every table and card is written and read as UTF-8."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    locale.setlocale(locale.LC_ALL, "C")
    try:
        assert locale.getpreferredencoding(False) != "UTF-8"
        out = tmp_path / "out"
        assert main(["predict", *_files(phantom_cohort.parent), "--case-id", "Müller-東京", "--model",
                     str(tiny_bundle), "--out", str(out), *QUICK]) == 0
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    with open(out / "Müller-東京" / "predictions.csv", newline="", encoding="utf-8") as handle:
        assert {row["case_id"] for row in csv.DictReader(handle)} == {"Müller-東京"}


def test_an_empty_path_argument_is_a_usage_error_not_the_current_folder(phantom_cohort, tiny_bundle, capsys):
    for args in (["--out", ""], ["--out", "out", "--model", " "]):
        with pytest.raises(SystemExit) as exit_status:
            main(["predict", str(phantom_cohort), *args, *QUICK])
        assert exit_status.value.code == 2 and "an empty path" in capsys.readouterr().err


def test_a_card_nested_too_deeply_is_a_bundle_error(tiny_bundle, tmp_path, capsys):
    bundle = tmp_path / "deep"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "card.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["info", str(bundle)]) == 2
    assert "card.json: card is not a bundle card (nested too deeply to read)" in capsys.readouterr().err


def test_odd_arguments_found_by_a_hostile_tester_are_clear_errors(phantom_cohort, tiny_bundle, tmp_path, capsys):
    """Each of these was an internal error (exit 3) or a late, misleading failure."""
    manifest = tmp_path / "tilde.csv"
    manifest.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,~nosuchuser_xyz/t1.nii.gz,b,c,d\n")
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(tmp_path / "o1"), *QUICK]) == 2
    assert "tilde.csv: line 2: a path cannot be expanded" in capsys.readouterr().err

    assert main(["predict", str(phantom_cohort), str(phantom_cohort.parent / CASE), "--model", str(tiny_bundle),
                 "--out", str(tmp_path / "o2"), *QUICK]) == 2
    assert "give one manifest .csv alone, or case folders" in capsys.readouterr().err

    out = tmp_path / "o3"
    (out / "failures.csv").mkdir(parents=True)  # a table the batch writes at its end is taken by a folder
    assert main(["predict", str(phantom_cohort), "--model", str(tiny_bundle), "--out", str(out), *QUICK]) == 2
    assert "--out (failures.csv): " in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == [
        "failures.csv"]

    bundle = tmp_path / "digits"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "card.json").write_text('{"format": ' + "9" * 5000 + "}")
    assert main(["info", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "card is not valid JSON (a number of thousands of digits)" in err and "set_int_max_str_digits" not in err

    a_file = tmp_path / "file.txt"
    a_file.write_text("user data")
    base = ["pretrain", "--manifest", str(phantom_cohort), "--method", "byol", "--out", str(tmp_path / "enc"),
            "--progress", "none", "--device", "cpu"]
    for option, value, message in (("--cache", a_file, "--cache: " + str(a_file) + " exists and is not a folder"),
                                   ("--metrics", tmp_path, "--metrics: " + str(tmp_path) + " is a folder"),
                                   ("--checkpoint", tmp_path, "--checkpoint: " + str(tmp_path) + " is a folder")):
        assert main([*base, option, str(value)]) == 2
        assert message in capsys.readouterr().err
    assert a_file.read_text() == "user data"


def test_a_card_whose_grid_does_not_fit_its_encoder_is_a_bundle_error(tiny_bundle, tmp_path, capsys):
    import torch

    from neuroradfm.models.bundle import CARD, WEIGHTS, content_hash

    bundle = tmp_path / "strided"
    shutil.copytree(tiny_bundle, bundle)
    card = json.loads((bundle / CARD).read_text())
    card["architecture"]["conv1_stride"] = 1000
    card["content_hash"] = content_hash(card, bundle / WEIGHTS)
    (bundle / CARD).write_text(json.dumps(card))
    assert torch.get_default_device().type == "cpu"
    assert main(["info", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "card.json: " in err and ("does not fit this encoder's strides" in err or "cam_reference" in err)


def test_table_names_as_case_ids_and_a_users_tables_found_by_a_hostile_tester(phantom_cohort, tiny_bundle,
                                                                              tmp_path, capsys):
    source = read_manifest(phantom_cohort)[0]
    paths = [str(source.paths[s]) for s in SEQUENCES]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["case_id", "site", *SEQUENCES], ["run.json", "s", *paths],
                                      ["Predictions.CSV", "s", *paths]])
    out = tmp_path / "out"
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_Predictions.CSV", "_run.json", "predictions.csv", "run.json"]
    assert json.loads((out / "run.json").read_text())["folders"] == {"run.json": "_run.json",
                                                                     "Predictions.CSV": "_Predictions.CSV"}

    users = tmp_path / "users"
    users.mkdir()
    (users / "failures.csv").write_text("my notes")
    before = _snapshot(users)
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(users), *QUICK]) == 2
    assert "failures.csv was not written by a neuroradfm run" in capsys.readouterr().err
    assert _snapshot(users) == before


def test_more_hostile_inputs_found_by_a_red_team(phantom_cohort, tiny_bundle, tmp_path, capsys, monkeypatch):
    files = _files(phantom_cohort.parent)
    common = ["--model", str(tiny_bundle), *QUICK]

    # --out NEW/deeper/..: a failed case leaves none of the folders the path names
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(tmp_path / "nowhere"), "--out", "NEW/deeper/..", *common]) == 2
    assert not (tmp_path / "NEW").exists()
    capsys.readouterr()

    # one file given for two sequences
    twice = list(files)
    twice[3] = twice[1]  # --t1ce is the --t1 file
    assert main(["predict", *twice, "--out", str(tmp_path / "o1"), *common]) == 2
    assert "the same file is given for several sequences (t1 and t1ce: " in capsys.readouterr().err

    # a manifest quote that is never closed; a dangling link as an image
    manifest = tmp_path / "quote.csv"
    manifest.write_text('case_id,site,t1,t1ce,t2,flair\n"A,s,a,b,c,d\nB,s,a,b,c,d\n')
    assert main(["predict", str(manifest), "--out", str(tmp_path / "o2"), *common]) == 2
    assert "line 3: not a readable CSV manifest" in capsys.readouterr().err
    dangling = tmp_path / "t1.nii.gz"
    dangling.symlink_to(tmp_path / "gone.nii.gz")
    assert main(["predict", *files[:1], str(dangling), *files[2:], "--out", str(tmp_path / "o3"), *common]) == 2
    assert "t1.nii.gz: is a symbolic link to nothing" in capsys.readouterr().err

    # one sequence forced twice
    assert main(["predict", str(tmp_path), "--series", "t1ce=A", "--series", "t1ce=B", "--out",
                 str(tmp_path / "o4"), *common]) == 2
    assert "--series gives t1ce twice ('A' and 'B')" in capsys.readouterr().err

    # the root folder as a case folder
    assert main(["predict", "/", "--out", str(tmp_path / "o4"), *common]) == 2
    assert "root is not a case folder" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_heads_that_overflow_are_refused_not_reported_as_in_distribution(phantom_cohort, tiny_bundle, tmp_path,
                                                                        capsys):
    from neuroradfm.models.bundle import CARD, WEIGHTS, content_hash

    bundle = tmp_path / "tiny-scale"
    shutil.copytree(tiny_bundle, bundle)
    card = json.loads((bundle / CARD).read_text())
    card["heads"]["feature_scale"] = [1e-308] * len(card["heads"]["feature_scale"])
    card["content_hash"] = content_hash(card, bundle / WEIGHTS)
    (bundle / CARD).write_text(json.dumps(card))
    out = tmp_path / "out"
    assert main(["predict", *_files(phantom_cohort.parent), "--model", str(bundle), "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "its heads give non-finite values" in err and "RuntimeWarning" not in err
    assert not out.exists()


def test_a_console_that_cannot_show_the_case_id_does_not_crash_the_run(phantom_cohort, tiny_bundle, tmp_path):
    result = subprocess.run([sys.executable, "-m", "neuroradfm", "predict", *_files(phantom_cohort.parent),
                             "--case-id", "Müller-東京", "--model", str(tiny_bundle), "--out", str(tmp_path / "out"),
                             *QUICK], capture_output=True, text=True, timeout=300,
                            env={**_env(), "PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "M\\xfcller-\\u6771\\u4eac" in result.stdout and (tmp_path / "out" / "Müller-東京").is_dir()


def test_a_cancel_says_so_and_a_single_case_leaves_no_folder_it_created(phantom_cohort, tiny_bundle, tmp_path):
    for number, status, said in ((signal.SIGTERM, 128 + signal.SIGTERM, "terminated (cancelled)"),
                                 (signal.SIGINT, 130, "interrupted (Ctrl-C)")):
        out = tmp_path / f"new-{number}" / "out"
        process = subprocess.Popen([sys.executable, "-m", "neuroradfm", "predict", *_files(phantom_cohort.parent),
                                    "--model", str(tiny_bundle), "--out", str(out), "--progress", "json",
                                    "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=_env())
        for line in process.stdout:
            if '"stage": "n4"' in line or '"stage": "brain"' in line or '"stage": "encode"' in line:
                break
        process.send_signal(number)
        assert process.wait(60) == status
        err = process.stderr.read()
        assert said in err and "Traceback" not in err
        assert not (tmp_path / f"new-{number}").exists()
