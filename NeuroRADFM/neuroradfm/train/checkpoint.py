"""Training checkpoints: written atomically (temporary file + rename), read with ``weights_only=True``.

A checkpoint holds everything a resumed run needs to continue exactly: the method's state (student,
teacher, heads, DINO centre), optimizer, scheduler, AMP scaler, Group-DRO q, the step, RNG states (as
tensors and plain types) and the run's fingerprint (the settings that must match to resume). A corrupt,
truncated or foreign file, or one from a different run, is a CheckpointError and nothing is overwritten.

torch's zip reader does not verify the members' CRCs, so a damaged checkpoint could resume silently with wrong
weights. Each checkpoint therefore gets a SHA-256 sidecar (``<checkpoint>.sha256``, in ``sha256sum`` format,
written after the checkpoint), and a resume checks the zip's CRCs and then the sidecar before torch reads a byte.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from neuroradfm.atomic import atomic_file
from neuroradfm.errors import InputError
from neuroradfm.hashing import file_sha256

FORMAT = "neuroradfm-pretrain-checkpoint"
VERSION = 1


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed from."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checksum_path(path: str | Path) -> Path:
    """The sidecar holding ``path``'s SHA-256: ``<checkpoint>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_checksum(path: str | Path, digest: str | None = None) -> Path:
    """Write ``path``'s sidecar atomically (``sha256sum -c`` can check it too); ``digest`` if already known."""
    path = Path(path)
    sidecar = checksum_path(path)
    line = f"{digest or file_sha256(path)}  {path.name}\n"
    with atomic_file(sidecar) as tmp:
        tmp.write_text(line, encoding="utf-8")
    return sidecar


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the checkpoint atomically, then its checksum sidecar (see ``load_checkpoint``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        digest = file_sha256(tmp)
    write_checksum(path, digest)
    return path


_WHAT_TO_DO = "start again without --resume, or restore the file (and its .sha256) from a backup"


def _verify(path: Path) -> None:
    """Refuse a damaged checkpoint before torch reads it: the zip's own CRCs first (they need nothing but the
    file), then the SHA-256 sidecar written with it (which also catches damage outside the members' data)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as error:
        raise CheckpointError(path, f"corrupt or truncated checkpoint: not a complete checkpoint archive ({error}); "
                                    f"{_WHAT_TO_DO}") from None
    except OSError as error:
        raise CheckpointError(path, f"checkpoint cannot be read ({error.strerror or error}); {_WHAT_TO_DO}") from None
    if bad is not None:
        raise CheckpointError(path, f"corrupt checkpoint: its member {bad!r} fails its CRC check (the file was "
                                    f"damaged on disk or in a copy); {_WHAT_TO_DO}")
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        raise CheckpointError(path, f"its checksum file {sidecar.name} is missing, so the checkpoint cannot be "
                                    "verified (not written by this version of neuroradfm, or the checksum was "
                                    f"removed); {_WHAT_TO_DO}")
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise CheckpointError(sidecar, f"the checkpoint's checksum file cannot be read ({error.strerror or error}); "
                                       f"{_WHAT_TO_DO}") from None
    found = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    if found is None:
        raise CheckpointError(sidecar, f"not a SHA-256 checksum file (expected 64 hex digits and the file name); "
                                       f"{_WHAT_TO_DO}")
    if found[1].lower() != file_sha256(path):
        raise CheckpointError(path, f"does not match its checksum in {sidecar.name}: the checkpoint was changed or "
                                    "damaged after it was written (or a run was stopped while writing it); "
                                    f"{_WHAT_TO_DO}")


def _torch_problem(error: BaseException) -> str:
    """torch's reason in words, without its advice to load with weights_only=False (never right for us: that
    would run whatever code the file names)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if isinstance(error, pickle.UnpicklingError):
        name = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({name[1]})" if name else ""
        return (f"it holds Python objects{what} besides tensors and plain values, which neuroradfm never loads "
                "from a checkpoint (a file from another program?)")
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_checkpoint(path: str | Path, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's state; a clear CheckpointError when it is missing, corrupt, foreign or from another run.

    Nothing is ever written here: a refused checkpoint (and its sidecar) stays as it was.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no checkpoint to resume from")
    _verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise CheckpointError(path, f"corrupt or unreadable checkpoint ({_torch_problem(error)}); "
                                    f"{_WHAT_TO_DO}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(path, f"not a {FORMAT} file")
    if state.get("version") != VERSION:
        raise CheckpointError(path, f"checkpoint version {state.get('version')!r}; this neuroradfm reads {VERSION}")
    if fingerprint is not None:
        saved = state.get("fingerprint", {})
        differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        if differ:
            detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in differ)
            raise CheckpointError(path, f"checkpoint belongs to a different run ({detail})")
    return state
