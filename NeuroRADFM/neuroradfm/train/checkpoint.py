"""Training checkpoints: written atomically (temporary file + rename), read with ``weights_only=True``.

A checkpoint holds everything a resumed run needs to continue exactly: the method's state (student,
teacher, heads, DINO centre), optimizer, scheduler, AMP scaler, Group-DRO q, the step, RNG states (as
tensors and plain types) and the run's fingerprint (the settings that must match to resume). A corrupt,
truncated or foreign file, or one from a different run, is a CheckpointError and nothing is overwritten.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import torch

from neuroradfm.atomic import atomic_file
from neuroradfm.errors import InputError

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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    return path


def load_checkpoint(path: str | Path, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's state; a clear CheckpointError when it is missing, corrupt, foreign or from another run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise CheckpointError(path, f"corrupt or unreadable checkpoint ({type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''})") from None
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
