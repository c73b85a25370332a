"""``neuroradfm predict`` under torchrun (issue 18): 2 gloo processes on the CPU share a cohort, rank 0 merges one
predictions.csv, failures.csv and run.json holding every case once; a rerun with --resume computes nothing that was
finished; a rank that dies loses only its unfinished cases, which a rerun with --resume completes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import neuroradfm
from conftest import write_manifest
from neuroradfm.batch import finished_result
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.outputs import RESULT_MARKER

QUICK = ["--progress", "none", "--no-overview", "--device", "cpu"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(neuroradfm.__file__).parents[1]), OMP_NUM_THREADS="1")


def _torchrun(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *arguments], env=_env(), capture_output=True, text=True, timeout=600)


def _cohort(phantom_cohort: Path, folder: Path, broken: bool = False) -> tuple[Path, list[str]]:
    """Four phantom cases (and a fifth with a truncated FLAIR when ``broken``) in a manifest of absolute paths."""
    entries = read_manifest(phantom_cohort)[:5 if broken else 4]
    rows = [{"case_id": e.case_id, "site": e.site, **{k: str(v) for k, v in e.paths.items()}} for e in entries]
    if broken:
        truncated = folder / "truncated-flair.nii.gz"
        folder.mkdir(parents=True, exist_ok=True)
        truncated.write_bytes(entries[4].paths["flair"].read_bytes()[:200])
        rows[4]["flair"] = str(truncated)
    return write_manifest(folder / "manifest.csv", rows), [e.case_id for e in entries]


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob(f"*/{RESULT_MARKER}"))}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_two_ranks_share_the_cases_and_merge_one_set_of_tables(phantom_cohort, tiny_bundle, tmp_path):
    manifest, ids = _cohort(phantom_cohort, tmp_path / "cohort", broken=True)
    good, bad = ids[:4], ids[4]

    refused = tmp_path / "refused"  # rank 0 checks the folder for everyone: both ranks stop, nothing is written
    refused.mkdir()
    (refused / "predictions.csv").write_text("my own table")
    result = _torchrun("-m", "neuroradfm", "predict", str(manifest), "--model", str(tiny_bundle), "--out",
                       str(refused), *QUICK, "--workers", "0")
    assert result.returncode != 0 and result.stderr.count("was not written by a neuroradfm run") >= 2
    assert sorted(p.name for p in refused.iterdir()) == ["predictions.csv"]

    out = tmp_path / "out"
    command = ["-m", "neuroradfm", "predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), *QUICK,
               "--workers", "0"]
    result = _torchrun(*command)
    assert result.returncode != 0, result.stderr[-3000:]  # exit status 1 on both ranks: one case failed
    assert "1 of 5 cases failed" in result.stdout + result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["ranks"] == 2 and run["devices"] == ["cpu", "cpu"] and run["skipped"] == []
    assert run["succeeded"] == 4 and run["failed"] == 1 and run["cases"] == 5 and "interrupted" not in run
    merged = _rows(out / "predictions.csv")
    assert merged == [row for case_id in good for row in _rows(out / case_id / "predictions.csv")]
    assert [(row["case_id"], row["kind"]) for row in _rows(out / "failures.csv")] == [(bad, "input")]
    assert sorted(p.name for p in out.iterdir()) == sorted([*good, "failures.csv", "predictions.csv", "run.json"])

    first = _stamps(out)
    result = _torchrun(*command, "--resume")
    run = json.loads((out / "run.json").read_text())
    assert run["skipped"] == good and run["succeeded"] == 4 and run["failed"] == 1, result.stderr[-3000:]
    assert _stamps(out) == first  # nothing finished was computed again
    assert _rows(out / "predictions.csv") == merged


DRIVER = '''
import os, sys, time
from pathlib import Path
from neuroradfm.batch import predict_cases
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.sharding import start_shard

manifest, bundle, out = sys.argv[1:4]
entries = read_manifest(manifest)
doomed, others = entries[3], [entries[0], entries[2]]  # rank 1 has cases 1 and 3; rank 0 has 0 and 2


def loader(entry):
    def load():
        if entry is doomed:  # rank 1 dies once rank 0 has finished its cases
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                    (Path(out) / e.case_id / "predictions.json").is_file() for e in others):
                time.sleep(0.1)
            os._exit(9)
        return entry.load()
    return load


predict_cases([(e.case_id, loader(e)) for e in entries], load_bundle(bundle), out, device="cpu", overview=False,
              shard=start_shard("cpu"))
'''


def test_a_rank_that_dies_loses_only_its_unfinished_cases(phantom_cohort, tiny_bundle, tmp_path):
    manifest, ids = _cohort(phantom_cohort, tmp_path / "cohort")
    out = tmp_path / "out"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    result = _torchrun(str(driver), str(manifest), str(tiny_bundle), str(out))
    assert result.returncode != 0
    bundle = load_bundle(tiny_bundle)
    assert sorted(_stamps(out)) == sorted(ids[:3])  # the dead rank's finished case 1 and rank 0's cases are kept
    for case_id in ids[:3]:
        assert finished_result(out / case_id, case_id, bundle, overview=False)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    run = json.loads((out / "run.json").read_text())  # rank 0 said a run started; no table of an older run stays
    assert run["finished"] is None and not (out / "predictions.csv").exists()

    before = _stamps(out)
    result = _torchrun("-m", "neuroradfm", "predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out),
                       *QUICK, "--workers", "0", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["skipped"] == ids[:3] and run["succeeded"] == 4 and run["failed"] == 0
    after = _stamps(out)
    assert {i: after[i] for i in ids[:3]} == before and ids[3] in after
    assert sorted({row["case_id"] for row in _rows(out / "predictions.csv")}) == sorted(ids)


@pytest.mark.parametrize("workers", [2])
def test_ranks_with_workers_of_their_own(phantom_cohort, tiny_bundle, tmp_path, workers):
    manifest, ids = _cohort(phantom_cohort, tmp_path / "cohort")
    out = tmp_path / "out"
    result = _torchrun("-m", "neuroradfm", "predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out),
                       *QUICK, "--workers", str(workers))
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["workers"] == [workers, workers] and run["succeeded"] == 4
    assert sorted({row["case_id"] for row in _rows(out / "predictions.csv")}) == sorted(ids)
