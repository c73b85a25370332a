"""SHA-256 of files, streamed (weights, checkpoints and wheels are too large to read at once)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, prefix: bytes = b"") -> str:
    """Hex SHA-256 of ``prefix`` followed by the file's bytes."""
    digest = hashlib.sha256(prefix)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
