"""One background process running the core (``PythonSlicer -m neuroradfm ...``), polled without blocking.

The core reports progress as one JSON object per stdout line (``{"stage", "progress", "message"}``).
Reader threads collect stdout and stderr so that ``poll()`` never blocks: the widget calls it from a
QTimer, the console or a test in a loop (``wait``).

``cancel()`` stops the whole process tree: in Slicer the command is the PythonSlicer launcher, which runs the real
interpreter (``python-real``) as a child, so stopping the launcher alone leaves the work running (on Windows; on
Linux/macOS the child is in the launcher's process group). With psutil importable the tree is walked
(``children(recursive=True)``), terminated, and whatever is left after the grace period is killed; without psutil,
Windows runs ``taskkill /PID <pid> /T /F`` and Linux/macOS signal the process group that ``start()`` creates
(SIGTERM, then SIGKILL after the grace period). ``cancel()`` only sends the first signal and waits a moment
(``CANCEL_SETTLE_S``) for the usual quick exit; the wait, the kill and the removal of the temporary folder happen in
a background thread, so a Cancel button never freezes the GUI. ``finished`` turns True once the tree is gone and the
folder removed; ``wait()`` after ``cancel()`` blocks until then (console, tests).

The child runs in Python's UTF-8 mode and the parent reads its output as UTF-8, so a message naming a path with
non-ASCII characters arrives intact whatever the locale (Windows code pages, ``LC_ALL=C``).
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
"""How long a cancelled tree may take to unwind after the terminate signal (the core removes what it half wrote)
before the survivors are killed."""
CANCEL_SETTLE_S = 0.3
"""How long ``cancel()`` itself waits for the tree to go (it mostly goes at once); a background thread does the rest."""
KILL_WAIT_S = 5.0
"""How long the background thread waits for killed processes to disappear before it gives up on them."""


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
    env["PYTHONUTF8"] = "1"  # file names, argv and stdio in UTF-8 whatever the locale (read back as UTF-8 below)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def stop_strategy(os_name: str, has_psutil: bool) -> str:
    """How ``cancel()`` stops a process tree: ``psutil`` (walk the descendants; any system), ``taskkill`` (Windows
    without psutil) or ``group`` (the process group ``start()`` creates; Linux and macOS without psutil)."""
    if has_psutil:
        return "psutil"
    return "taskkill" if os_name == "nt" else "group"


def taskkill_command(pid: int) -> list[str]:
    """Windows without psutil: end ``pid`` and all its descendants (/T), forcefully (/F)."""
    return ["taskkill", "/PID", str(pid), "/T", "/F"]


def _psutil():
    """psutil when it is installed (Slicer extensions often bring it), else None: it is not a dependency."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _group_alive(pgid: int) -> bool:
    """Whether the process group still has a member that has not exited (Linux, macOS)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        return True  # macOS: no /proc; its init reaps orphans at once, so a zombie does not linger there
    for stat in proc.glob("[0-9]*/stat"):  # Linux: an orphan's zombie may wait for an init that never reaps it
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if group == str(pgid) and state not in ("Z", "X"):
            return True
    return False


class CoreProcess:
    """``python -m neuroradfm <arguments>`` in its own process group, with non-blocking progress polling.

    ``python``: the interpreter, or a launcher that runs it (PythonSlicer; anything that takes ``-m module args``).
    ``module``: another module run the same way (``NeuroRADFMLib.cohorts``: cohort import and check, whose result
    is one JSON line the caller reads from ``output_lines``). ``grace_s``, ``settle_s`` and ``strategy`` (see
    ``stop_strategy``) say how ``cancel()`` stops the tree; they are attributes so that a test can change them."""

    def __init__(self, arguments: Sequence[str], python: str | None = None, temp_dir: str | Path | None = None,
                 cwd: str | Path | None = None, module: str = "neuroradfm") -> None:
        self.command = [python or python_executable(), "-m", module, *map(str, arguments)]
        self.temp_dir = None if temp_dir is None else Path(temp_dir)
        self.cwd = cwd
        self.output_lines: list[str] = []
        """stdout lines that are not progress (e.g. the paths the CLI prints at the end)."""
        self.error_lines: list[str] = []
        self.cancelled = False
        self.grace_s = CANCEL_GRACE_S
        self.settle_s = CANCEL_SETTLE_S
        self.strategy = stop_strategy(os.name, _psutil() is not None)
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._after_stop: list[Callable[[], None]] = []
        self._tree: list = []  # psutil: the descendants found when cancel() began
        self._taskkill: subprocess.Popen | None = None

    def start(self) -> CoreProcess:
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # setsid(): a new session and process group whose id is the pid
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
        """True once the process has exited and all its output has been read; after ``cancel()``: once the whole
        tree is gone and the temporary folder removed."""
        if self._stopped.is_set():
            return True
        if self._process is None or self.cancelled or self._process.poll() is None:
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
        """Poll until the process ends (for the console and tests); returns its exit status. After ``cancel()``
        it waits until the tree is gone and the temporary folder removed."""
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

    def cancel(self, then: Callable[[], None] | None = None) -> None:
        """Stop the whole process tree and remove the temporary folder, without blocking the caller.

        Sends the terminate signal to the tree and returns once it is gone or after ``settle_s``, whichever comes
        first; a background thread waits up to ``grace_s``, kills what is left, then removes the folder and runs
        ``then`` (e.g. removing half-written outputs: after the tree, so nothing writes them again). ``finished``
        turns True at the end. Calling it again only adds ``then`` (run at once when the tree is already gone)."""
        with self._lock:
            if then is not None and not self._stopped.is_set():
                self._after_stop.append(then)
                then = None
            first, self.cancelled = not self.cancelled, True
        if then is not None:
            then()
        if not first:
            return
        process = self._process
        signalled = process is not None and process.poll() is None
        if signalled:
            self._terminate_tree()
        threading.Thread(target=self._stop, args=(signalled,), name="NeuroRADFM cancel", daemon=True).start()
        self._stopped.wait(self.settle_s)

    def _terminate_tree(self) -> None:
        """The first, polite signal to every process of the tree (quick: nothing here waits)."""
        process = self._process
        if self.strategy == "psutil":
            psutil = _psutil()
            try:  # before any signal: once the launcher is gone, its child is no longer its child
                self._tree = psutil.Process(process.pid).children(recursive=True)
            except psutil.Error:
                self._tree = []
            for child in self._tree:
                try:
                    child.terminate()
                except psutil.Error:
                    pass
            process.terminate()  # our own child through Popen, which knows whether it has reaped it
        elif self.strategy == "taskkill":
            try:
                self._taskkill = subprocess.Popen(taskkill_command(process.pid), stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL,
                                                  creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            except OSError:
                process.kill()  # no taskkill: at least the process itself
        if os.name != "nt":  # the group: the mechanism without psutil, a sweep for late children with it
            self._signal_group(signal.SIGTERM)

    def _kill_tree(self) -> None:
        """What survived the grace period: SIGKILL / TerminateProcess, children started since included."""
        process = self._process
        if self.strategy == "psutil":
            psutil = _psutil()
            survivors = [child for child in self._tree if self._alive(child)]
            roots = list(survivors)
            try:
                roots.append(psutil.Process(process.pid))
            except psutil.Error:
                pass
            for root in roots:
                try:
                    survivors += root.children(recursive=True)
                except psutil.Error:
                    pass
            for child in survivors:
                try:
                    child.kill()
                except psutil.Error:
                    pass
            self._tree = survivors
        if process.poll() is None:
            process.kill()
        if os.name != "nt":
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self._process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _alive(child) -> bool:
        psutil = _psutil()
        try:
            return child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # ZombieProcess included
            return False
        except psutil.Error:
            return True

    def _tree_alive(self) -> bool:
        process = self._process
        if process.poll() is None:
            return True
        if self.strategy == "psutil" and any(self._alive(child) for child in self._tree):
            return True
        if self._taskkill is not None and self._taskkill.poll() is None:
            return True
        return os.name != "nt" and _group_alive(process.pid)

    def _wait_tree(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._tree_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _stop(self, signalled: bool) -> None:
        """The background half of ``cancel()``: wait, kill what is left, read the rest, clean up, tell."""
        process = self._process
        try:
            if signalled and not self._wait_tree(self.grace_s):
                self._kill_tree()
                self._wait_tree(KILL_WAIT_S)
            if process is not None:
                process.wait(KILL_WAIT_S)
        except Exception as error:  # noqa: BLE001 - whatever happens, the folder goes and ``finished`` turns True
            self.error_lines.append(f"cancel: {error!r}")
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.cleanup()
        with self._lock:
            self._stopped.set()
            callbacks, self._after_stop = self._after_stop, []
        for callback in callbacks:
            try:
                callback()
            except Exception as error:  # noqa: BLE001 - a background thread: keep it where error_message shows it
                self.error_lines.append(f"after cancel: {error!r}")

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

    def cancel(self, then: Callable[[], None] | None = None) -> None:
        """Stop the process tree (CoreProcess.cancel, not blocking); ``then`` runs once it is gone."""
        self.cancelled = True
        if self.process is not None:
            self.process.cancel(then=then)
        elif then is not None:
            then()

