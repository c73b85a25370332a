"""Write under a temporary name, rename when complete: a failure leaves the old result or nothing.

Staging names say which process made them (``.<name>.partial-<host><pid>-<random>``; an earlier result being
swapped out is ``.<name>.old-...``), so that a later run can tell the leftovers of a killed run from a running
one's and remove them (``clean_stale``). Nothing but these names, directly inside the folder written to, is
ever removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from neuroradfm.errors import OutputError

HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
"""Staging names carry the host, so that processes on another machine sharing the folder are left alone."""
STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[0-9a-f]{6})(?P<pid>\d+)-"
                          r"[a-z0-9_]{8}(?:\..*)?$")


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
        if (not match or (name is not None and match["name"] != name) or match["host"] != HOST_TAG
                or _pid_alive(int(match["pid"]))):
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


def check_replaceable(path: Path, marker: str, inputs: Iterable[str | Path] = ()) -> None:
    """An existing ``path`` is replaced only when it is an earlier result (holds ``marker``) or an empty folder,
    and holds none of ``inputs``: a user's own folder is never deleted to make room for a result."""
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise OutputError(path, "exists as a symbolic link; not replaced (remove it or choose another output)")
    if not path.is_dir():
        raise OutputError(path, "exists and is a file, not an earlier result; not replaced")
    try:
        empty = next(path.iterdir(), None) is None
    except OSError as error:
        raise OutputError(path, f"exists and cannot be read ({error.strerror}); not replaced") from None
    if not empty and not (path / marker).is_file():
        raise OutputError(path, f"exists and is not an earlier result of neuroradfm (no {marker}); not replaced: "
                                "remove it or choose another output folder")
    folder = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source == folder or folder in source.parents:
            raise OutputError(path, f"holds an input of this run ({item}); not replaced: choose another output "
                                    "folder")


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
def atomic_folder(path: str | Path, marker: str, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; on success it replaces ``path`` as a whole.

    ``marker``: the file every complete result holds; an existing ``path`` without it (a user's folder) is
    refused before anything is written, as is one holding any of ``inputs`` (see ``check_replaceable``).
    A write that fails (disk full, no permission) is an OutputError naming the file.
    """
    path = Path(path)
    check_replaceable(path, marker, inputs)
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
        check_replaceable(path, marker, inputs)  # the folder may have changed while the result was computed
        _swap_in(staging, path)
    except OSError as error:
        _remove(staging)
        raise OutputError(_final_name(error.filename, staging, path),
                          f"could not be written ({error.strerror or error})") from None
    except OutputError as error:
        _remove(staging)
        raise OutputError(_final_name(error.path, staging, path), error.problem) from None
    except BaseException:
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
