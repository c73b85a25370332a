"""Where results go: case ids made into safe folder names, and the output folder checked before a run.

A case id comes from a manifest cell, a folder name or ``--case-id``: anything a user or a spreadsheet can
type. It becomes exactly one folder name directly inside the output folder: separators, white space, control
and reserved characters become ``_``, and ``_`` and dots are stripped from both ends (so no ``.``, ``..`` or
hidden names, which are also the staging namespace of neuroradfm.atomic); Windows device names and the names of
the batch's own tables get a ``_`` prefix, long ids are shortened with a hash. Ids whose folder names would
collide (``P1`` and ``P1/``; also on case-insensitive file systems, ``P1`` and ``p1``) are refused together,
before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from neuroradfm.atomic import check_replaceable, probe_writable
from neuroradfm.errors import InputError, OutputError, SettingsError

PREDICTIONS_TABLE = "predictions.csv"
FAILURES_TABLE = "failures.csv"
RUN_FILE = "run.json"
ERRORS_LOG = "neuroradfm-errors.log"
"""Tracebacks of cases that failed with an internal error (a bug), for the report."""
COHORT_FILES = (PREDICTIONS_TABLE, FAILURES_TABLE, RUN_FILE, ERRORS_LOG)
"""What a batch writes beside its case folders: no case folder may take one of these names."""

MAX_NAME_BYTES = 150
"""Longest folder name (UTF-8 bytes) made from a case id; file systems allow 255, the result files add none."""
_RESERVED_CHARACTERS = set('<>:"/\\|?*')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def _allowed(character: str) -> bool:
    return (character not in _RESERVED_CHARACTERS and not character.isspace()
            and not unicodedata.category(character).startswith(("C", "Z")))


def safe_folder_name(case_id: str) -> str:
    """The one folder name a case id maps to; an InputError when nothing usable is left (``..``, ``/``, ``""``)."""
    text = unicodedata.normalize("NFC", str(case_id))
    name = "".join(c if _allowed(c) else "_" for c in text).strip("._")
    if not name:
        raise InputError(None, f"case id {case_id!r} gives no usable folder name (it must contain a letter or digit "
                               "besides separators, dots and control characters)")
    if name.split(".")[0].upper() in _WINDOWS_DEVICES or name.casefold() in {f.casefold() for f in COHORT_FILES}:
        name = "_" + name  # a device on Windows; a table of the batch beside the case folders
    if len(name.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        name = name.encode()[:MAX_NAME_BYTES - 13].decode(errors="ignore").rstrip("._") + "-" + digest
    return name


def case_folders(case_ids: Sequence[str], where: Mapping[str, str] | None = None,
                 source: str | Path | None = None) -> dict[str, str]:
    """case id -> folder name for a whole run; unusable ids and collisions are refused together, before anything
    is written. ``where``: how to point at each id in messages (e.g. "line 7"); ``source``: the manifest."""
    where = where or {}
    folders: dict[str, str] = {}
    unusable: list[str] = []
    for case_id in case_ids:
        try:
            folders[case_id] = safe_folder_name(case_id)
        except InputError:
            unusable.append(f"{case_id!r}" + (f" ({where[case_id]})" if case_id in where else ""))
    problems = []
    if unusable:
        problems.append("case id(s) that give no usable folder name (nothing is left once separators, dots, white "
                        "space and control characters are removed): " + ", ".join(unusable))
    by_folder: dict[str, list[str]] = {}
    for case_id in case_ids:
        if case_id in folders:
            by_folder.setdefault(folders[case_id].casefold(), []).append(case_id)
    collisions = ["; ".join(f"{c!r}" + (f" ({where[c]})" if c in where else "") for c in ids)
                  + f" -> {folders[ids[0]]!r}" for ids in by_folder.values() if len(ids) > 1]
    if collisions:
        problems.append("case ids that would share one output folder (separators and control characters become '_', "
                        "dots and '_' at either end go, letter case is ignored): " + " | ".join(collisions))
    if problems:
        raise InputError(source, "; ".join(problems))
    return folders


def inside(folder: Path, path: Path) -> Path:
    """``path`` if it lies strictly inside ``folder`` once links are followed, else an OutputError."""
    root, target = folder.resolve(), path.resolve()
    if root not in target.parents:
        raise OutputError(path, f"lies outside the output folder {folder} (a link?); nothing is written there")
    return path


def _existing_folder(path: Path, setting: str, shown: Path | None = None) -> Path:
    """The nearest existing folder at or above ``path``; a SettingsError naming ``shown`` (default ``path``) when a
    file stands in the way."""
    shown = shown or path
    for place in (path, *path.parents):
        if os.path.lexists(place):
            if not place.is_dir():
                raise SettingsError(setting, f"{shown} exists and is not a folder" if place == shown
                                    else f"{shown}: {place} is a file, not a folder")
            return place
    return Path.cwd()


def check_destinations(files: Mapping[str, str | Path | None] | None = None,
                       folders: Mapping[str, str | Path | None] | None = None) -> None:
    """Before a run starts: each file it will write (``--metrics``, ``--checkpoint``) is not a folder and each folder
    it will fill (``--cache``) is not a file, and no file stands where their folders go."""
    for setting, file in (files or {}).items():
        if file is not None:
            if Path(file).is_dir():
                raise SettingsError(setting, f"{file} is a folder; a file is written here")
            _existing_folder(Path(file).parent, setting, Path(file))
    for setting, folder in (folders or {}).items():
        if folder is not None:
            _existing_folder(Path(folder), setting)


def check_destination(path: str | Path, own: Sequence[str], inputs: Sequence[str | Path | None] = (),
                      setting: str = "--out") -> None:
    """Before hours of training: ``path`` can later be replaced by the result (see atomic.check_replaceable: an
    earlier result, an empty folder or nothing, holding none of ``inputs``) and its parent can be created."""
    path = Path(path)
    parent = _existing_folder(path.parent, setting, path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SettingsError(setting, f"{path}: {parent} is not writable")
    try:
        check_replaceable(path, own, [item for item in inputs if item is not None])
    except OutputError as error:
        raise SettingsError(setting, str(error)) from None


def prepare_output_folder(out: str | Path, setting: str = "--out") -> list[Path]:
    """Create ``out`` (and missing parents) and check that it takes files; returns the folders created here, so
    that a run that writes nothing can remove them again (``remove_created``). A SettingsError otherwise."""
    out = Path(out)
    existing = _existing_folder(out, setting)
    missing = [folder for folder in (out, *out.parents) if existing in folder.parents]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_writable(out)
    except OSError as error:
        remove_created(missing)
        raise SettingsError(setting, f"{out} is not a writable folder ({error.strerror or error})") from None
    return missing


def remove_created(created: Sequence[Path]) -> None:
    """Remove the folders ``prepare_output_folder`` created, innermost first, as long as they are empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def check_new_folder(out: str | Path, marker: str, kind: str) -> None:
    """Teaching packs and lessons go into a new or empty folder (``--out``): an earlier ``kind`` (a folder holding
    ``marker``) or a user's files are never replaced."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = f"holds an earlier {kind}" if (out / marker).is_file() else "is not an empty folder"
        raise SettingsError("--out", f"{out} {what}; a {kind} is written into a new or empty folder (nothing there "
                                     "is replaced): choose another folder or remove it")
