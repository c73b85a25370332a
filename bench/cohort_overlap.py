"""Cohort throughput with and without overlap (issue 18): ``neuroradfm predict MANIFEST`` with ``--workers 0`` (one
case after another) against ``--workers N`` (the next cases prepared in N processes while the model runs and the
previous case is written), each as a fresh process, side by side on the same cases, with the peak memory of the
whole process tree (the command and its workers) sampled off /proc.

    .venv/bin/python bench/cohort_overlap.py MANIFEST [--workers N] [--model BUNDLE] [--device cpu]

prints the dict ``measure`` returns; bench/perf.py imports ``measure``. Cases per minute are of the whole command
(start-up, the workers' start-up and the tables included): what a user waits for. Only the standard library here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.1


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; PSS shares each page among the processes that map it (torch's libraries
    are mapped by every worker), so the tree's PSS is what it really takes; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss


def run_command(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``command``; its wall time, the CPU time of its process tree over the wall time (cores kept busy) and the
    peak summed RSS and PSS (MB) of the tree."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            totals = [_memory_kb(pid) for pid in _tree(process.pid)]
            peak["rss"] = max(peak["rss"], sum(rss for rss, _ in totals))
            peak["pss"] = max(peak["pss"], sum(pss for _, pss in totals))
            time.sleep(SAMPLE_SECONDS)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {err[-2000:]}")
    return {"seconds": seconds, "cores_busy": cpu / seconds, "peak_rss_mb": peak["rss"] / 1024,
            "peak_pss_mb": peak["pss"] / 1024}


def _cases(manifest: Path) -> int:
    with open(manifest, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip()) - 1


def measure(manifest: str | Path, workers: int | None = None, model: str | Path | None = None,
            device: str = "cpu", python: str = sys.executable) -> dict[str, float]:
    """Serial against overlapped on the cases of ``manifest`` (``workers`` None: predict's default), each a fresh
    ``python -m neuroradfm predict`` process with --no-overview and no progress; returns the cases per minute of
    both, their ratio, the cores each kept busy (CPU time over wall time: overlap can only gain what one case
    after another leaves idle), the machine's load average at the end (others' work slows both runs), and the
    overlapped run's peak memory (``peak_rss_mb``: summed RSS of the process tree, which
    counts shared library pages once per process; ``peak_pss_mb``: the same with shared pages split)."""
    manifest = Path(manifest)
    cases = _cases(manifest)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "NeuroRADFM") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    work = Path(tempfile.mkdtemp(prefix="cohort-overlap-"))
    try:
        base = [python, "-m", "neuroradfm", "predict", str(manifest), "--device", device, "--progress", "none",
                "--no-overview", *(["--model", str(model)] if model else [])]
        serial = run_command([*base, "--out", str(work / "serial"), "--workers", "0"], env)
        overlap = run_command([*base, "--out", str(work / "overlap"),
                               *([] if workers is None else ["--workers", str(workers)])], env)
        used = json.loads((work / "overlap" / "run.json").read_text())["workers"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    serial_rate, overlap_rate = 60 * cases / serial["seconds"], 60 * cases / overlap["seconds"]
    return {"cases": cases, "workers": used, "cpus": len(os.sched_getaffinity(0)),
            "serial_seconds": round(serial["seconds"], 1), "overlap_seconds": round(overlap["seconds"], 1),
            "serial_cases_per_min": round(serial_rate, 2), "overlap_cases_per_min": round(overlap_rate, 2),
            "cohort_overlap_speedup": round(overlap_rate / serial_rate, 2),
            "serial_cores_busy": round(serial["cores_busy"], 2), "overlap_cores_busy": round(overlap["cores_busy"], 2),
            "load_average": round(os.getloadavg()[0], 1),
            "peak_rss_mb": round(overlap["peak_rss_mb"]), "peak_pss_mb": round(overlap["peak_pss_mb"]),
            "serial_peak_rss_mb": round(serial["peak_rss_mb"]), "serial_peak_pss_mb": round(serial["peak_pss_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--workers", type=int, help="predict's --workers for the overlapped run (default: its own)")
    parser.add_argument("--model", type=Path, help="bundle (default: the demo bundle)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(measure(args.manifest, args.workers, args.model, args.device), indent=1))


if __name__ == "__main__":
    main()
