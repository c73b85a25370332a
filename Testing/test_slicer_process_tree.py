"""Cancel stops the whole process tree of a launcher-started core, without blocking; messages arrive in UTF-8.

In Slicer the command is PythonSlicer, a launcher that runs the real interpreter as a child and forwards its
output. Here a small Python script plays the launcher; real processes throughout, no mocks. The Windows branch
(taskkill) cannot run here: its command and the choice of strategy are pure functions, tested as such.
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

from NeuroRADFMLib.process import (  # noqa: E402
    CANCEL_GRACE_S,
    CoreProcess,
    _psutil,
    core_environment,
    stop_strategy,
    taskkill_command,
)

HAS_PSUTIL = _psutil() is not None
posix_only = pytest.mark.skipif(os.name == "nt", reason="a shebang launcher and POSIX signals")
needs_psutil = pytest.mark.skipif(not HAS_PSUTIL, reason="psutil is not installed (it is optional)")
STRATEGIES = ["group", pytest.param("psutil", marks=needs_psutil)]

LAUNCHER = '''#!{python}
"""Like PythonSlicer: start the real interpreter as a CHILD (no exec), forward its stdout and stderr, wait."""
import subprocess
import sys
import threading

child = subprocess.Popen([sys.executable, *sys.argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session={new_session})


def forward(source, target):
    for line in source:
        target.write(line)
        target.flush()


threads = [threading.Thread(target=forward, args=(child.stdout, sys.stdout.buffer)),
           threading.Thread(target=forward, args=(child.stderr, sys.stderr.buffer))]
for thread in threads:
    thread.start()
code = child.wait()
for thread in threads:
    thread.join()
sys.exit(code)
'''

WORKER = '''"""A stand-in for the core: a progress line, its PID and its parent's in a file, then work until stopped."""
import json
import os
import signal
import sys
import time

pid_file, *options = sys.argv[1:]
if "--ignore-term" in options:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"stage": "work", "progress": 0.5, "message": "forwarded by the launcher"}), flush=True)
if "--exit" in options:
    sys.exit(0)
with open(pid_file + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()} {os.getppid()}")
os.replace(pid_file + ".tmp", pid_file)
time.sleep(300)
'''


def gone(pid: int) -> bool:
    """The process has exited: no such process, or (Linux) a zombie waiting for an init that may never reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    if not Path("/proc/self/stat").is_file():
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def tree(tmp_path):
    """start(strategy, *options, new_session=False) -> (CoreProcess, launcher pid, child pid); kills leftovers."""
    started: list[int] = []
    (tmp_path / "worker.py").write_text(WORKER, encoding="utf-8")

    def start(strategy: str, *options: str, new_session: bool = False):
        launcher = tmp_path / "launcher"
        launcher.write_text(LAUNCHER.format(python=sys.executable, new_session=new_session), encoding="utf-8")
        launcher.chmod(0o755)
        temp = tmp_path / "job-temp"
        temp.mkdir(exist_ok=True)
        (temp / "input.nrrd").write_bytes(b"half")
        pid_file = tmp_path / "worker.pid"
        process = CoreProcess([pid_file, *options], python=str(launcher), module="worker", cwd=tmp_path,
                              temp_dir=temp)
        process.strategy = strategy
        process.start()
        started.append(process.pid)
        assert wait_until(pid_file.is_file, 60), process.error_lines
        child, parent = map(int, pid_file.read_text().split())
        started.append(child)
        assert parent == process.pid != child  # the launcher's child, not the launcher itself (no exec)
        return process, process.pid, child

    yield start
    for pid in started:  # only what this test started, and only if a failed test left it running
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


@posix_only
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cancel_stops_the_launcher_and_its_child_without_blocking(tree, strategy):
    process, launcher, child = tree(strategy)
    assert os.getsid(launcher) == os.getpgid(launcher) == launcher != os.getpgid(0)  # start(): its own session
    events = []
    assert wait_until(lambda: events.extend(process.poll()) or events, 30)  # output comes through the launcher
    assert events[0].message == "forwarded by the launcher"

    began = time.monotonic()
    process.cancel()
    took = time.monotonic() - began
    assert took < 1.0  # cancel() does not wait out the grace period (a generous bound: this is about not blocking)

    assert wait_until(lambda: gone(launcher) and gone(child), 10)
    assert process.wait(timeout=10) == -signal.SIGTERM  # the launcher ended by the terminate signal
    assert process.finished and process.cancelled and not process.temp_dir.exists()


@posix_only
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(tree, strategy):
    process, launcher, child = tree(strategy, "--ignore-term")
    process.grace_s = 2.0
    assert process.grace_s < CANCEL_GRACE_S
    child_gone_when_then_ran = []

    began = time.monotonic()
    process.cancel(then=lambda: child_gone_when_then_ran.append(gone(child)))
    assert time.monotonic() - began < 1.0
    assert not gone(child) and not process.finished  # within the grace period: the child ignores SIGTERM

    assert process.wait(timeout=20) == -signal.SIGTERM  # the launcher took the terminate signal ...
    assert gone(child) and gone(launcher)  # ... the child did not, and was killed after the grace period
    assert child_gone_when_then_ran == [True]  # the callback runs once the tree is gone
    assert not process.temp_dir.exists()


@posix_only
@needs_psutil
def test_psutil_reaches_a_child_that_left_the_process_group(tree):
    process, launcher, child = tree("psutil", new_session=True)
    assert os.getpgid(child) != os.getpgid(launcher)  # the group signal cannot reach it; the tree walk does
    process.cancel()
    assert wait_until(lambda: gone(launcher) and gone(child), 10)
    process.wait(timeout=10)
    assert process.finished


@posix_only
def test_cancel_after_the_end_keeps_the_result_and_removes_the_folder(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER, encoding="utf-8")
    temp = tmp_path / "job-temp"
    temp.mkdir()
    process = CoreProcess([tmp_path / "unused.pid", "--exit"], python=sys.executable, module="worker", cwd=tmp_path,
                          temp_dir=temp).start()
    assert process.wait(timeout=60) == 0 and process.finished
    process.cancel()
    assert process.finished and process.returncode == 0 and not temp.exists()
    ran = []
    process.cancel(then=lambda: ran.append(True))  # again: only the callback, at once
    assert ran == [True]


def test_a_non_ascii_path_in_an_error_message_survives_an_ascii_locale(tmp_path):
    """The parent runs under LC_ALL=C with UTF-8 mode off (its locale cannot encode the name); the child names the
    missing folder in its error line; error_message() has it intact, neither escaped nor replaced."""
    missing = tmp_path / "Müller_Ωmega"
    parent = tmp_path / "parent.py"  # ASCII source: it gets the path from its argv, as the OS hands it over
    parent.write_text(
        "import json, locale, sys\n"
        "from NeuroRADFMLib.process import CoreProcess\n"
        "process = CoreProcess(['info', sys.argv[1]], python=sys.executable).start()\n"
        "code = process.wait(timeout=120)\n"
        "print(json.dumps({'code': code, 'message': process.error_message(),\n"
        "                  'encoding': locale.getpreferredencoding(False)}))\n", encoding="ascii")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LC_") and k not in ("LANG", "LANGUAGE", "PYTHONUTF8", "PYTHONIOENCODING")}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))
    run = subprocess.run([sys.executable, str(parent), str(missing)], env=env, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode("utf-8", "replace")
    result = json.loads(run.stdout.decode("ascii"))
    assert codecs.lookup(result["encoding"]).name == "ascii"  # the premise: an ASCII parent
    assert result["code"] == 2
    assert "Müller_Ωmega" in result["message"] and "does not exist" in result["message"]


def test_the_child_environment_asks_for_utf8(monkeypatch):
    monkeypatch.setenv("PYTHONUTF8", "0")
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    env = core_environment()
    assert env["PYTHONUTF8"] == "1" and env["PYTHONIOENCODING"] == "utf-8"


def test_stop_strategy_per_system():
    assert stop_strategy("nt", has_psutil=False) == "taskkill"
    assert stop_strategy("posix", has_psutil=False) == "group"
    assert stop_strategy("nt", has_psutil=True) == stop_strategy("posix", has_psutil=True) == "psutil"
    assert CoreProcess(["--version"]).strategy == stop_strategy(os.name, HAS_PSUTIL)


def test_taskkill_command_ends_the_whole_tree_forcefully():
    assert taskkill_command(4321) == ["taskkill", "/PID", "4321", "/T", "/F"]
