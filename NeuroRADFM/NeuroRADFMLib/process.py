"""One background process running the core (``PythonSlicer -m neuroradfm ...``), polled without blocking.

The core reports progress as one JSON object per stdout line (``{"stage", "progress", "message"}``).
Reader threads collect stdout and stderr so that ``poll()`` never blocks: the widget calls it from a
QTimer, the console or a test in a loop (``wait``). ``cancel()`` terminates the whole process group
(then kills it) and removes the job's temporary folder.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORE_PARENT = Path(__file__).resolve().parents[1]
"""The folder holding the bundled core package ``neuroradfm`` (the module folder, in source and installed trees)."""
CANCEL_GRACE_S = 5.0


@dataclass
class ProgressEvent:
    stage: str
    progress: float
    message: str = ""


def parse_progress_line(line: str) -> ProgressEvent | None:
    """A ProgressEvent for a JSON progress line, None for any other output."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "stage" not in data or "progress" not in data:
        return None
    try:
        fraction = min(max(float(data["progress"]), 0.0), 1.0)
    except (TypeError, ValueError):
        return None
    return ProgressEvent(str(data["stage"]), fraction, str(data.get("message", "")))


def python_executable() -> str:
    """PythonSlicer inside Slicer (it runs Slicer's Python without the GUI), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def core_environment(core_parent: Path = CORE_PARENT) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(core_parent), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class CoreProcess:
    """``python -m neuroradfm <arguments>`` in its own process group, with non-blocking progress polling.

    ``module``: another module run the same way (``NeuroRADFMLib.cohorts``: cohort import and check, whose result
    is one JSON line the caller reads from ``output_lines``)."""

    def __init__(self, arguments: Sequence[str], python: str | None = None, temp_dir: str | Path | None = None,
                 cwd: str | Path | None = None, module: str = "neuroradfm") -> None:
        self.command = [python or python_executable(), "-m", module, *map(str, arguments)]
        self.temp_dir = None if temp_dir is None else Path(temp_dir)
        self.cwd = cwd
        self.output_lines: list[str] = []
        """stdout lines that are not progress (e.g. the paths the CLI prints at the end)."""
        self.error_lines: list[str] = []
        self.cancelled = False
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> CoreProcess:
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         encoding="utf-8", errors="replace", bufsize=1, env=core_environment(),
                                         cwd=self.cwd, **kwargs)
        self._threads = [threading.Thread(target=self._read, args=(self._process.stdout, self._lines), daemon=True),
                         threading.Thread(target=self._read_errors, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    @staticmethod
    def _read(stream, sink: queue.Queue) -> None:
        for line in stream:
            sink.put(line)
        sink.put(None)

    def _read_errors(self) -> None:
        for line in self._process.stderr:
            self.error_lines.append(line.rstrip("\n"))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def finished(self) -> bool:
        """True once the process has exited and all its output has been read."""
        if self._process is None or self._process.poll() is None:
            return False
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def poll(self) -> list[ProgressEvent]:
        """Progress events printed since the last call; never blocks."""
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                continue
            event = parse_progress_line(line)
            if event is not None:
                events.append(event)
            elif line.strip():
                self.output_lines.append(line.rstrip("\n"))
        return events

    def error_message(self, lines: int = 12) -> str:
        """The core's own error lines (``error: ...``) when there are any, else the end of stderr."""
        errors = [line for line in self.error_lines if line.startswith(("error:", "FAILED"))]
        return "\n".join(errors or self.error_lines[-lines:])

    def wait(self, timeout: float | None = None, on_events: Callable[[list[ProgressEvent]], None] | None = None,
             interval: float = 0.1) -> int:
        """Poll until the process ends (for the console and tests); returns its exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{' '.join(self.command[2:4])} did not finish within {timeout} s; cancelled")
            events = self.poll()
            if events and on_events is not None:
                on_events(events)
            time.sleep(interval)
        events = self.poll()
        if events and on_events is not None:
            on_events(events)
        return self.returncode

    def cancel(self) -> None:
        """Terminate the process group, kill it if it does not stop, then remove the temporary folder."""
        self.cancelled = True
        process = self._process
        if process is not None and process.poll() is None:
            self._signal(signal.SIGTERM if os.name != "nt" else None)
            try:
                process.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL if os.name != "nt" else None, kill=True)
                process.wait()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.cleanup()

    def _signal(self, signum, kill: bool = False) -> None:
        process = self._process
        try:
            if os.name == "nt":
                process.kill() if kill else process.terminate()
            else:
                os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def cleanup(self) -> None:
        if self.temp_dir is not None and self.temp_dir.exists():
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_for(job: Any, what: str, timeout: float | None = None, interval: float = 0.2) -> list[ProgressEvent]:
    """Poll ``job`` (anything with ``finished``, ``poll()`` and ``cancel()``: a training or an evaluation) until it
    finishes, from the console or a test; returns every event. A timeout cancels it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    events: list[ProgressEvent] = []
    while not job.finished:
        if deadline is not None and time.monotonic() > deadline:
            job.cancel()
            raise TimeoutError(f"{what} did not finish within {timeout} s; cancelled")
        events += job.poll()
        time.sleep(interval)
    return events + job.poll()


def remove_new(paths: Iterable[Path], before: set[Path]) -> None:
    """Remove what a cancelled job left half-written: the staging files and folders not there when it started."""
    for path in set(paths) - before:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class ProcessJob:
    """What a job running one CoreProcess (``self.process``) shares with the others: poll / finished / returncode /
    wait / cancel, polled by the widgets like a TrainingJob."""

    what = "job"
    process: CoreProcess | None = None
    cancelled = False

    def poll(self) -> list[ProgressEvent]:
        """Progress since the last call; never blocks."""
        return [] if self.process is None else self.process.poll()

    @property
    def finished(self) -> bool:
        if self.process is None:
            return self.cancelled
        return self.cancelled or self.process.finished

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> list[ProgressEvent]:
        """Poll until finished (console and tests); returns every event. Cancels on timeout."""
        return wait_for(self, self.what, timeout, interval)

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is not None:
            self.process.cancel()

