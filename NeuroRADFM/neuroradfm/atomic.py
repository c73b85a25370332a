"""Write under a temporary name, rename when complete: a failure leaves the old result or nothing.

Staging names say which process made them (``.<name>.partial-<host><pid>-<random>``; an earlier result being
swapped out is ``.<name>.old-...``), so that a later run can tell the leftovers of a killed run from a running
one's and remove them (``clean_stale``). Nothing but these names, directly inside the folder written to, is
ever removed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from neuroradfm.errors import OutputError

HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
"""Staging names carry the host, so that processes on another machine sharing the folder are left alone."""
STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?:(?P<host>[0-9a-f]{6})(?P<pid>\d+)-)?"
                          r"[a-z0-9_]{8}(?:\..*)?$")
"""Staging names; those without host and process (``.<name>.partial-<random>``) come from neuroradfm 0.1 before
they had them, and are always leftovers."""


def _prefix(name: str, kind: str) -> str:
    return f".{name}.{kind}-{HOST_TAG}{os.getpid()}-"


def _umask_mode(full: int) -> int:
    """The mode a plain mkdir/open would give (temp files are created private: 0700/0600)."""
    current = os.umask(0)
    os.umask(current)
    return full & ~current


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (when unsure: yes, so that nothing live is removed)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        running = kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) and code.value == 259  # STILL_ACTIVE
        kernel32.CloseHandle(handle)
        return bool(running)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder tree; best effort."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except OSError:
        pass  # what is left keeps its staging name and is removed by a later run


def clean_stale(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove staging leftovers of killed runs of this tool directly inside ``folder`` (only for ``name`` when
    given); returns what was removed. An earlier result that a killed swap had moved aside comes back."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = STAGING_NAME.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if match["pid"] is not None and (match["host"] != HOST_TAG or _pid_alive(int(match["pid"]))):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and entry.is_dir() and not entry.is_symlink() and not os.path.lexists(target):
            try:
                os.rename(entry, target)
                continue
            except OSError:
                pass
        _remove(entry)
        removed.append(entry)
    return removed


def probe_writable(folder: Path) -> None:
    """Create and remove one file in ``folder`` (an OSError when it takes none); its staging name lets a later run
    remove it should this process die in between."""
    handle, name = tempfile.mkstemp(prefix=_prefix("write-test", "partial"), dir=folder)
    os.close(handle)
    os.unlink(name)


def check_replaceable(path: Path, own: Sequence[str], inputs: Iterable[str | Path] = ()) -> None:
    """An existing ``path`` is replaced only when it is an empty folder or an earlier result: it holds ``own[0]`` and
    nothing but files named as ``own`` says (glob patterns), none of them one of this run's ``inputs``. A user's
    folder, or a result a user has put files into, is never deleted to make room for a new result."""
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise OutputError(path, "exists as a symbolic link; not replaced (remove it or choose another output)")
    if not path.is_dir():
        raise OutputError(path, "exists and is a file, not an earlier result; not replaced")
    try:
        entries = list(path.iterdir())
    except OSError as error:
        raise OutputError(path, f"exists and cannot be read ({error.strerror or error}); not replaced") from None
    if entries and not (path / own[0]).is_file():
        raise OutputError(path, f"exists and is not an earlier result of neuroradfm (no {own[0]}); not replaced: "
                                "remove it or choose another output folder")
    foreign = sorted(entry.name for entry in entries if entry.is_symlink() or not entry.is_file()
                     or not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in own))
    if foreign:
        raise OutputError(path, f"is an earlier result but also holds {', '.join(foreign[:5])}"
                                f"{' ...' if len(foreign) > 5 else ''}, which neuroradfm did not write there; not "
                                "replaced: move them or choose another output folder")
    folder = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source == folder or folder in source.parents:
            raise OutputError(path, f"holds an input of this run ({item}); not replaced: choose another output "
                                    "folder")


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C or a cancel (SIGTERM) that arrives while a result is swapped in or a staging folder removed takes
    effect right after, so that neither is left half done (an earlier result moved aside, the new one not in place).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: received.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])


def _swap_in(staging: Path, path: Path) -> None:
    """Put the complete ``staging`` folder at ``path``; an earlier result is moved aside first and removed last."""
    if not os.path.lexists(path):
        try:
            os.rename(staging, path)
        except OSError as error:
            raise OutputError(path, f"the result could not be put in place ({error.strerror})") from None
        return
    old = path.parent / (_prefix(path.name, "old") + secrets.token_hex(4))
    try:
        os.rename(path, old)
    except OSError as error:
        raise OutputError(path, f"the earlier result could not be moved aside ({error.strerror}); it is unchanged "
                                "and the new result was not kept") from None
    try:
        os.rename(staging, path)
    except OSError as error:
        try:
            os.rename(old, path)
        except OSError:
            raise OutputError(path, f"the new result could not be put in place ({error.strerror}); the earlier "
                                    f"result is complete in {old}") from None
        raise OutputError(path, f"the new result could not be put in place ({error.strerror}); the earlier result "
                                "is unchanged") from None
    _remove(old)


@contextmanager
def atomic_folder(path: str | Path, own: Sequence[str], inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; on success it replaces ``path`` as a whole.

    ``own``: the names (glob patterns) of what a complete result holds, the first one in every result; an existing
    ``path`` that is not such a result (a user's folder) is refused before anything is written, as is one holding
    any of ``inputs`` (see ``check_replaceable``).
    A write that fails (disk full, no permission) is an OutputError naming the file.
    """
    path = Path(path)
    check_replaceable(path, own, inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path.parent, path.name)
        staging = Path(tempfile.mkdtemp(prefix=_prefix(path.name, "partial"), dir=path.parent))
    except OSError as error:
        raise OutputError(path.parent, f"cannot write here ({error.strerror or error})") from None
    try:
        staging.chmod(_umask_mode(0o777))
        yield staging
        for item in staging.rglob("*"):  # some writers (safetensors) create private 0600 files
            if item.is_file() and not item.is_symlink():
                item.chmod(_umask_mode(0o666))
        check_replaceable(path, own, inputs)  # the folder may have changed while the result was computed
        with _signals_held():
            _swap_in(staging, path)
    except OSError as error:
        with _signals_held():
            _remove(staging)
        raise OutputError(_final_name(error.filename, staging, path),
                          f"could not be written ({error.strerror or error})") from None
    except OutputError as error:
        with _signals_held():
            _remove(staging)
        raise OutputError(_final_name(error.path, staging, path), error.problem) from None
    except BaseException:
        with _signals_held():
            _remove(staging)
        raise


def _final_name(filename: str | None, staging: Path, path: Path) -> Path:
    """The name a file written into ``staging`` would have had in ``path`` (what the user knows)."""
    if not filename:
        return path
    try:
        return path / Path(filename).relative_to(staging)
    except ValueError:
        return Path(filename)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffixes); on success it replaces ``path``."""
    path = Path(path)
    try:
        clean_stale(path.parent, path.name)
        handle, name = tempfile.mkstemp(prefix=_prefix(path.name, "partial"), suffix="".join(path.suffixes),
                                        dir=path.parent)
    except OSError as error:
        raise OutputError(path, f"cannot write here ({error.strerror or error})") from None
    os.close(handle)
    try:
        os.chmod(name, _umask_mode(0o666))
        yield Path(name)
        os.replace(name, path)
    except OSError as error:
        Path(name).unlink(missing_ok=True)
        raise OutputError(path, f"could not be written ({error.strerror or error})") from None
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
