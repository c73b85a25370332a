"""Write under a temporary name, rename when complete: a failure leaves the old result or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask_mode(full: int) -> int:
    """The mode a plain mkdir/open would give (temp files are created private: 0700/0600)."""
    current = os.umask(0)
    os.umask(current)
    return full & ~current


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        staging.chmod(_umask_mode(0o777))
        yield staging
        for item in staging.rglob("*"):  # some writers (safetensors) create private 0600 files
            if item.is_file() and not item.is_symlink():
                item.chmod(_umask_mode(0o666))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffixes); on success it replaces ``path``."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(handle)
    try:
        os.chmod(name, _umask_mode(0o666))
        yield Path(name)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
