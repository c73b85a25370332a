"""The command line as a process: what the Slicer modules rely on when they start and cancel it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from neuroradfm import cli


def _env() -> dict[str, str]:
    core = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "NeuroRADFM")
    return {**os.environ, "PYTHONPATH": core + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_sigterm_unwinds_and_leaves_no_half_written_file(tmp_path):
    out = tmp_path / "cohort"
    process = subprocess.Popen([sys.executable, "-m", "neuroradfm", "phantom", "--n", "400", "--spacing", "4",
                                "--out", str(out), "--progress", "none"], env=_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/*-t2f.nii.gz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(out.glob("*/*-t2f.nii.gz")), "the phantom command never wrote a case"
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 128 + signal.SIGTERM
    assert "Traceback" not in process.stderr.read().decode()
    assert not [p for p in out.rglob(".*")], "a temporary file survived the cancel"
    assert not (out / "manifest.csv").exists()


def test_commands_lists_the_subcommands():
    assert {"predict", "phantom", "train-baseline", "demo", "info"} <= set(cli.commands())


def test_sequence_rules_import_without_the_imaging_packages():
    """The Slicer module classifies loaded volumes before SimpleITK/pandas are installed (first start)."""
    code = ("import sys; sys.modules.update(pandas=None, SimpleITK=None, numpy=None); "
            "from neuroradfm.io.sequence_names import classify_series; print(classify_series('AX T2 FLAIR'))")
    result = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "flair"
